// --public-ip differing from the local underlay address, and NAT keepalives, through real
// weftd processes (udp backend, embedded store) in network namespaces. Node 2 sits "behind a
// 1:1 NAT": it keeps 198.18.0.2 as its underlay address (its socket binds there) and
// advertises a second address, 198.18.0.102, which an nftables NAT in its namespace maps
// to 198.18.0.2 (inbound DNAT, outbound SNAT), as a cloud provider's public IP would. Node 1
// must send to the advertised address: tcpdump on node 2's eth0 sees node 1's datagrams
// (data and keepalives) addressed to 198.18.0.102 only. With PersistentKeepaliveInterval 1
// both daemons send and count keepalives, and nothing is dropped as malformed.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { NetnsRun, rootSnapshot } from '../../src/netns/netns.ts';
import { Cluster } from '../../src/netns/topology.ts';
import type { ClusterNode } from '../../src/netns/topology.ts';
import { cidrToKey } from '../../src/routing/ipv4.ts';
import { readFileSync } from 'node:fs';

const ADVERTISED = '198.18.0.102';

interface Status {
  peers: { subnet: string; publicIp: string }[];
  lease?: { publicIp: string };
  backendStats: { counters?: Record<string, number>; drops?: Record<string, number> };
}

async function status(c: Cluster, n: ClusterNode): Promise<Status> {
  const r = await c.httpGet(n, '/status');
  assert.equal(r.code, 0, r.stdout);
  return JSON.parse(r.stdout) as Status;
}

void test('udp: --public-ip behind a 1:1 NAT is what peers send to; keepalives flow at the interval', async (t) => {
  const before = rootSnapshot();
  const run = new NetnsRun();
  const cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 1 });
  t.after(async () => {
    await cluster.destroy();
    assert.equal(rootSnapshot(), before, 'root namespace unchanged');
  });
  const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
  await run.ip(n2.ns, 'addr', 'add', `${ADVERTISED}/24`, 'dev', 'eth0');
  const rules = join(cluster.dir, 'nat.nft');
  writeFileSync(
    rules,
    [
      'table ip hybridnat {',
      '  chain pre { type nat hook prerouting priority -100; ',
      `    ip daddr ${ADVERTISED} udp dport 8285 dnat to ${n2.underlayIp}`,
      '  }',
      '  chain post { type nat hook postrouting priority 100; ',
      `    ip saddr ${n2.underlayIp} udp sport 8285 snat to ${ADVERTISED}`,
      '  }',
      '}',
      '',
    ].join('\n'),
  );
  await run.exec(n2.ns, 'nft', ['-f', rules]);
  // No IPv6 on the TUNs: the kernel's router solicitations would be notIpv4 drops on the TUN
  // side, and notIpv4 must stay 0 to show no keepalive was taken for a packet.
  for (const n of [n1, n2]) {
    await run.exec(n.ns, 'sysctl', ['-qw', 'net.ipv6.conf.default.disable_ipv6=1']);
    await run.exec(n.ns, 'sysctl', ['-qw', 'net.ipv6.conf.all.disable_ipv6=1']);
  }

  cluster.writeNetConf('udp', { PersistentKeepaliveInterval: 1 });
  cluster.startWeftd(n1, { backend: 'udp' });
  cluster.startWeftd(n2, { backend: 'udp', extraArgs: ['--public-ip', ADVERTISED] });
  const [s1, s2] = await Promise.all([cluster.waitWeftdReady(n1), cluster.waitWeftdReady(n2)]);
  await cluster.attachPods(n1, s1);
  await cluster.attachPods(n2, s2);

  // The lease advertises the public address, not the local one.
  const lease2 = JSON.parse(
    readFileSync(join(cluster.storeDir, 'subnets', cidrToKey(s2.subnet)), 'utf8'),
  ) as {
    PublicIP: string;
  };
  assert.equal(lease2.PublicIP, ADVERTISED);
  const st2 = await status(cluster, n2);
  assert.equal(st2.lease?.publicIp, ADVERTISED);

  const cap = run.spawn(n2.ns, 'tcpdump', ['-i', 'eth0', '-n', '-l', 'udp', 'port', '8285']);
  t.after(() => cap.stop('SIGINT', 2000));
  const deadline = Date.now() + 10_000;
  while (!cap.output().includes('listening on')) {
    if (Date.now() > deadline || cap.child.exitCode !== null) throw new Error(`tcpdump: ${cap.output()}`);
    await sleep(50);
  }

  const a = n1.pods[0]!;
  const b = n2.pods[0]!;
  await cluster.waitForPing(a, b.addr, 15_000);
  assert.equal((await cluster.ping(b, a.addr, { count: 3 })).received, 3);
  const t0 = Date.now();
  const x = await cluster.tcpTransfer(a, b, 256 * 1024);
  t.diagnostic(`256 KiB over TCP in ${Date.now() - t0} ms`);
  assert.equal(x.receivedSha256, x.sentSha256);
  const st1 = await status(cluster, n1);
  assert.deepEqual(
    st1.peers.map((p) => p.publicIp),
    [ADVERTISED],
    'node 1 knows node 2 by its advertised address',
  );

  // Datagrams that arrive before the receiver has the sender's lease are unknownPeer drops;
  // from here on (both leases known) there must be none.
  const unknownBefore = new Map<string, number>();
  for (const n of [n1, n2]) {
    unknownBefore.set(n.name, (await status(cluster, n)).backendStats.drops?.unknownPeer ?? 0);
  }
  const kaBefore = (await status(cluster, n1)).backendStats.counters?.keepaliveSent ?? 0;
  // Keepalives every second, both ways, counted and not delivered.
  await sleep(3200);
  await cap.stop('SIGINT', 2000);
  const lines = cap
    .output()
    .split('\n')
    .filter((l) => l.includes(' IP '));
  const fromN1 = lines.filter((l) => l.includes(`IP ${n1.underlayIp}.8285 > `));
  assert.ok(fromN1.length > 10, `node 1's datagrams were captured:\n${lines.slice(0, 5).join('\n')}`);
  for (const l of fromN1)
    assert.ok(l.includes(`> ${ADVERTISED}.8285:`), `sent to the advertised address: ${l}`);
  const fromN2 = lines.filter((l) => l.includes(` > ${n1.underlayIp}.8285:`));
  assert.ok(fromN2.length > 10);
  for (const l of fromN2) assert.ok(l.includes(`IP ${ADVERTISED}.8285 >`), `NAT'd source: ${l}`);
  // The keepalive is the 4-byte datagram.
  assert.ok(
    fromN1.some((l) => /UDP, length 4$/.test(l)),
    'keepalives (4-byte datagrams) on the wire',
  );

  const kaAfter = (await status(cluster, n1)).backendStats.counters?.keepaliveSent ?? 0;
  // One peer, one per second: about 3 in 3.2 s (timer phase and scheduling allow 2..5).
  assert.ok(kaAfter - kaBefore >= 2 && kaAfter - kaBefore <= 5, `keepalives in 3.2 s: ${kaAfter - kaBefore}`);
  for (const n of [n1, n2]) {
    const s = await status(cluster, n);
    const c = s.backendStats.counters ?? {};
    const d = s.backendStats.drops ?? {};
    assert.ok((c.keepaliveSent ?? 0) >= 2, `${n.name} sent keepalives: ${JSON.stringify(c)}`);
    assert.ok((c.keepaliveReceived ?? 0) >= 2, `${n.name} received keepalives: ${JSON.stringify(c)}`);
    assert.equal(c.keepaliveSendFailed, 0);
    assert.equal(d.malformed, 0, `${n.name}: nothing counted as malformed`);
    assert.equal(d.notIpv4, 0);
    assert.equal(d.truncated, 0);
    assert.equal(
      d.unknownPeer,
      unknownBefore.get(n.name),
      `${n.name}: every datagram came from the advertised address`,
    );
  }
});
