// weftd's /metrics after known traffic: two nodes on the udp backend, pods behind each.
// 100 pings of a known size from pod A to pod B move the data-path and per-peer counters on
// both nodes by exactly the packets and bytes sent; one UDP datagram to
// an unleased address of the Network moves no_route drops and ICMP unreachables by exactly
// one (and the ICMP net unreachable reaches the pod). The
// exposition follows Prometheus conventions and carries Node's process metrics.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { NetnsRun } from '../../src/netns/netns.ts';
import { Cluster } from '../../src/netns/topology.ts';
import { formatCidr } from '../../src/routing/ipv4.ts';
import type { Exposition } from './helpers.ts';
import { capture, sampleValue, scrape, UDP_SEND, until, within } from './helpers.ts';

const PINGS = 100;
/** ICMP payload; the IP packet is 20 + 8 + 100 = 128 bytes (the udp backend adds no header). */
const PING_PAYLOAD = 100;
const IP_PACKET = 20 + 8 + PING_PAYLOAD;

void test('metrics move by exactly the traffic sent; names follow Prometheus conventions', async (t) => {
  const run = new NetnsRun();
  const cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 1 });
  t.after(() => cluster.destroy());
  await cluster.startWeftdAll({ backend: 'udp' });
  const n1 = cluster.node(1);
  const n2 = cluster.node(2);
  const a = n1.pods[0];
  const b = n2.pods[0];
  assert.ok(a && b && n1.subnet && n2.subnet);
  await cluster.waitForPing(a, b.addr, 15_000);

  const dp = (e: Exposition, direction: string): number =>
    sampleValue(e, 'weft_dataplane_packets_total', { direction });
  const db = (e: Exposition, direction: string): number =>
    sampleValue(e, 'weft_dataplane_bytes_total', { direction });
  const peer = (e: Exposition, what: 'packets' | 'bytes', subnet: string, direction: string): number =>
    sampleValue(e, `weft_peer_${what}_total`, { peer_subnet: subnet, direction });
  const s1 = formatCidr(n1.subnet.subnet);
  const s2 = formatCidr(n2.subnet.subnet);

  const a0 = await scrape(n1);
  const b0 = await scrape(n2);
  const ping = await cluster.ping(a, b.addr, { count: PINGS, intervalS: 0.01, size: PING_PAYLOAD });
  assert.equal(ping.received, PINGS, ping.output);
  const a1 = await scrape(n1);
  const b1 = await scrape(n2);

  // Node A: 100 echo requests out to B, 100 replies in from B.
  assert.equal(dp(a1, 'sent') - dp(a0, 'sent'), PINGS);
  assert.equal(db(a1, 'sent') - db(a0, 'sent'), PINGS * IP_PACKET);
  assert.equal(dp(a1, 'received') - dp(a0, 'received'), PINGS);
  assert.equal(db(a1, 'received') - db(a0, 'received'), PINGS * IP_PACKET);
  assert.equal(dp(a1, 'tun_write') - dp(a0, 'tun_write'), PINGS);
  assert.ok(dp(a1, 'tun_read') - dp(a0, 'tun_read') >= PINGS, 'every request was read from weft0');
  assert.equal(peer(a1, 'packets', s2, 'tx') - peer(a0, 'packets', s2, 'tx'), PINGS);
  assert.equal(peer(a1, 'bytes', s2, 'tx') - peer(a0, 'bytes', s2, 'tx'), PINGS * IP_PACKET);
  assert.equal(peer(a1, 'packets', s2, 'rx') - peer(a0, 'packets', s2, 'rx'), PINGS);
  assert.equal(peer(a1, 'bytes', s2, 'rx') - peer(a0, 'bytes', s2, 'rx'), PINGS * IP_PACKET);
  // The peer series carry the peer's public IP as a label too.
  assert.ok(
    a1.samples.some(
      (s) =>
        s.name === 'weft_peer_packets_total' &&
        s.labels.peer_subnet === s2 &&
        s.labels.peer_ip === n2.underlayIp,
    ),
  );
  // Node B: the mirror image.
  assert.equal(dp(b1, 'received') - dp(b0, 'received'), PINGS);
  assert.equal(db(b1, 'received') - db(b0, 'received'), PINGS * IP_PACKET);
  assert.equal(dp(b1, 'sent') - dp(b0, 'sent'), PINGS);
  assert.equal(peer(b1, 'packets', s1, 'rx') - peer(b0, 'packets', s1, 'rx'), PINGS);
  assert.equal(peer(b1, 'packets', s1, 'tx') - peer(b0, 'packets', s1, 'tx'), PINGS);
  assert.equal(peer(b1, 'bytes', s1, 'rx') - peer(b0, 'bytes', s1, 'rx'), PINGS * IP_PACKET);

  // One UDP datagram to an address of the Network no node leases: one drop, one ICMP.
  const unleased = cluster.unleasedAddress();
  const noRoute = (e: Exposition): number =>
    sampleValue(e, 'weft_dataplane_drops_total', { reason: 'no_route' });
  const unreach = (e: Exposition): number => sampleValue(e, 'weft_dataplane_icmp_unreachable_total');
  const sendOne = async (): Promise<void> => {
    const udp = await capture(a.ns, process.execPath, ['-e', UDP_SEND], {
      env: { ...process.env, HOST: unleased, PORT: '9', COUNT: '1', SIZE: '32' },
    });
    assert.equal(udp.code, 0, udp.stderr);
  };
  await sendOne();
  const a2 = await scrape(n1);
  assert.equal(noRoute(a2) - noRoute(a1), 1);
  assert.equal(unreach(a2) - unreach(a1), 1);
  assert.equal(dp(a2, 'sent') - dp(a1, 'sent'), 0, 'nothing was sent to a peer');
  const a3 = a2;

  // Conventions: every family has HELP and TYPE; counters end in _total, nothing else does.
  for (const f of a3.families.values()) {
    assert.ok(f.help && f.help.length > 0, `${f.name} has HELP`);
    assert.ok(f.type, `${f.name} has TYPE`);
    if (f.type === 'counter') assert.match(f.name, /_total$/, `counter ${f.name} ends in _total`);
    else if (f.name.startsWith('weft_'))
      assert.doesNotMatch(f.name, /_total$/, `${f.type} ${f.name} must not end in _total`);
  }
  for (const s of a3.samples) {
    const fam = a3.families.get(s.name) ?? a3.families.get(s.name.replace(/_(bucket|sum|count)$/, ''));
    assert.ok(fam, `sample ${s.name} belongs to a declared family`);
    assert.ok(Number.isFinite(s.value) || s.labels.le === '+Inf', `${s.name} has a number`);
  }
  const weft = [...a3.families.values()].filter((f) => f.name.startsWith('weft_'));
  for (const name of [
    'weft_dataplane_packets_total',
    'weft_dataplane_bytes_total',
    'weft_dataplane_drops_total',
    'weft_dataplane_icmp_unreachable_total',
    'weft_peer_packets_total',
    'weft_peer_bytes_total',
    'weft_lease_acquisitions_total',
    'weft_ready',
    'weft_peers',
    'weft_info',
  ]) {
    assert.ok(
      weft.some((f) => f.name === name),
      `${name} is exposed`,
    );
  }
  assert.equal(sampleValue(a3, 'weft_ready'), 1);
  assert.equal(sampleValue(a3, 'weft_peers'), 1);
  assert.equal(sampleValue(a3, 'weft_lease_acquisitions_total'), 1);
  assert.equal(sampleValue(a3, 'weft_info', { backend: 'udp', store: 'embedded' }), 1);
  // Node's process metrics (prom-client defaults).
  for (const name of [
    'process_cpu_seconds_total',
    'process_resident_memory_bytes',
    'process_start_time_seconds',
    'nodejs_heap_size_used_bytes',
    'nodejs_eventloop_lag_seconds',
  ]) {
    assert.ok(a3.families.has(name), `${name} is exposed`);
  }
  assert.ok(sampleValue(a3, 'process_resident_memory_bytes') > 1_000_000);
});

// The ICMP the forwarder writes back must reach the pod, or the sender learns nothing and
// waits for timeouts. It is written to weft0 with weft0's own address as its source, which
// the node's kernel drops as a "martian source" unless weft0 has accept_local set; a counter
// cannot tell, so this captures on the pod's eth0.
void test('the ICMP net unreachable for an unleased address reaches the pod', async (t) => {
  const run = new NetnsRun();
  const cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 1 });
  t.after(() => cluster.destroy());
  await cluster.startWeftdAll({ backend: 'udp' });
  const a = cluster.node(1).pods[0];
  assert.ok(a);
  const unleased = cluster.unleasedAddress();
  const dump = run.spawn(a.ns, 'tcpdump', ['-n', '-l', '-i', 'eth0', '-c', '1', '--immediate-mode', 'icmp']);
  await until('tcpdump to listen', 10_000, () =>
    Promise.resolve(dump.output().includes('listening on') ? true : undefined),
  );
  const udp = await capture(a.ns, process.execPath, ['-e', UDP_SEND], {
    env: { ...process.env, HOST: unleased, PORT: '9', COUNT: '1', SIZE: '32' },
  });
  assert.equal(udp.code, 0, udp.stderr);
  const st = JSON.parse((await cluster.httpGet(cluster.node(1), '/status')).stdout) as {
    backendStats?: { counters?: { icmpUnreachableSent?: number } };
  };
  assert.equal(st.backendStats?.counters?.icmpUnreachableSent, 1, 'weftd wrote one ICMP to weft0');
  const dumped = await within(dump.exited, 3000, 'nothing captured');
  assert.equal(
    dumped,
    0,
    `weftd counted the ICMP as sent but pod ${a.name} never received it ` +
      `(a martian source for the node's kernel: is accept_local on for weft0?):\n${dump.output()}`,
  );
  assert.match(dump.output(), /ICMP net [\d.]+ unreachable/);
});

// NAT keepalives (Backend.PersistentKeepaliveInterval) show in /metrics on both ends, and
// are not counted as forwarded packets.
void test('keepalives are counted as sent on one node and received on the other', async (t) => {
  const run = new NetnsRun();
  const cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 0 });
  t.after(() => cluster.destroy());
  await cluster.startWeftdAll({ backend: 'udp', backendOptions: { PersistentKeepaliveInterval: 1 } });
  const ka = (e: Exposition, direction: string): number =>
    sampleValue(e, 'weft_dataplane_keepalives_total', { direction });
  const [e1, e2] = await until(
    'two keepalives each way',
    20_000,
    async () => {
      const x = await scrape(cluster.node(1));
      const y = await scrape(cluster.node(2));
      return ka(x, 'sent') >= 2 && ka(y, 'received') >= 2 && ka(y, 'sent') >= 2 && ka(x, 'received') >= 2
        ? [x, y]
        : undefined;
    },
    250,
  );
  for (const e of [e1, e2]) {
    assert.equal(ka(e, 'send_failed'), 0);
    assert.equal(
      sampleValue(e, 'weft_dataplane_packets_total', { direction: 'sent' }),
      0,
      'keepalives are not forwarded packets',
    );
    assert.equal(e.families.get('weft_dataplane_keepalives_total')?.type, 'counter');
  }
});
