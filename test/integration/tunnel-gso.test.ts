// weftd --tunnel-gso (src/backend/tunnel-gso.ts, on by default), two nodes in network namespaces:
//  - udp and userspace vxlan, default options: TCP both ways intact, the sender wrote whole
//    super-packets to its TAP (tunnelWrites, wholeSuperPackets) and the receiver took them
//    whole (gsoWrites); the TAP is gone after SIGTERM;
//  - a peer of flannel's udp design (bench/refs/udp-proxy.c) whose lease does not say
//    "TunnelGSO": true: it gets ordinary datagrams (tunnelPeerSegmented), TCP intact;
//  - --tunnel-gso=false: no TAP, weftd segments every super-packet itself;
//  - an underlay that cannot carry tunnel GSO (veth offload off): the kernel segments, and
//    what crosses the wire is ordinary flannel-format datagrams no larger than the MTU;
//  - the TAP deleted or set down under a running weftd: made again (or set up) and used
//    again (tunnelRestored), and no byte is lost;
//  - a node with strict reverse-path filtering: weftd says why and segments in userspace;
//  - a node whose FORWARD hook drops the tunnel packets: the guard sees the underlay send
//    less than went to the TAP, weftd says so and segments in the socket; TCP recovers;
//  - the same rule removed later: weftd tries the TAP again after --tunnel-gso-retry
//    (doubling while the rule stays) and uses it once the packets leave.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { NetnsRun } from '../../src/netns/netns.ts';
import { Cluster } from '../../src/netns/topology.ts';
import type { ClusterNode, Pod, WeftdOptions } from '../../src/netns/topology.ts';
import { EmbeddedLeaseStore } from '../../src/lease/embedded/store.ts';
import { startUdpProxy } from '../../bench/refs/udp-proxy.ts';
import { tunnelGsoMac } from '../../src/backend/tunnel-gso.ts';

const TAP = 'weft0-gso';
const MB = 1024 * 1024;

interface Io {
  tunIo: Record<string, number>;
  connIo: Record<string, number>;
}

async function io(cluster: Cluster, node: ClusterNode): Promise<Io> {
  const s = JSON.parse((await cluster.httpGet(node, '/status')).stdout) as { backendStats?: Partial<Io> };
  const b = s.backendStats;
  assert.ok(b?.tunIo && b.connIo, `native counters in /status of ${node.name}`);
  return { tunIo: b.tunIo, connIo: b.connIo };
}

async function transferBothWays(cluster: Cluster, a: Pod, b: Pod, bytes: number): Promise<void> {
  for (const [from, to] of [
    [a, b],
    [b, a],
  ] as const) {
    const x = await cluster.tcpTransfer(from, to, bytes);
    assert.equal(x.receivedBytes, x.bytes, `${from.name} -> ${to.name}`);
    assert.equal(x.receivedSha256, x.sentSha256, `${from.name} -> ${to.name}`);
  }
}

async function twoNodes(
  t: { after: (fn: () => Promise<void>) => void },
  opts: WeftdOptions,
  beforeStart?: (c: Cluster) => Promise<void>,
): Promise<{ cluster: Cluster; a: Pod; b: Pod }> {
  const run = new NetnsRun();
  const cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 1 });
  t.after(() => cluster.destroy());
  await beforeStart?.(cluster);
  await cluster.startWeftdAll(opts);
  const [a] = cluster.node(1).pods;
  const [b] = cluster.node(2).pods;
  assert.ok(a && b);
  await cluster.waitForPing(a, b.addr, 15_000);
  await cluster.waitForPing(b, a.addr, 15_000);
  return { cluster, a, b };
}

for (const [label, opts, tap] of [
  ['udp', { backend: 'udp' }, TAP],
  ['vxlan (userspace)', { backend: 'vxlan', backendOptions: { Dataplane: 'userspace' } }, 'weft.1-gso'],
] as const) {
  void test(`${label}, default options: whole super-packets through the TAP, TCP intact both ways`, async (t) => {
    const { cluster, a, b } = await twoNodes(t, opts);
    const n1 = cluster.node(1);
    const link = await cluster.run.exec(n1.ns, 'ip', ['-d', 'link', 'show', tap]);
    assert.match(link, /tun type tap/, link);
    assert.ok(link.includes(`link/ether ${tunnelGsoMac(tap)} `), `the TAP's fixed address: ${link}`);
    await transferBothWays(cluster, a, b, 16 * MB);
    for (const [sender, receiver] of [
      [cluster.node(1), cluster.node(2)],
      [cluster.node(2), cluster.node(1)],
    ] as const) {
      const s = await io(cluster, sender);
      const r = await io(cluster, receiver);
      assert.ok((s.tunIo['wholeSuperPackets'] ?? 0) > 0, `${sender.name}: ${JSON.stringify(s.tunIo)}`);
      assert.ok((s.connIo['tunnelWrites'] ?? 0) > 0, `${sender.name}: ${JSON.stringify(s.connIo)}`);
      assert.equal(s.connIo['tunnelErrors'], 0);
      assert.equal(s.connIo['tunnelFallbacks'], 0);
      assert.equal(s.connIo['tunnelPeerSegmented'], 0, 'weft peers say they take them whole');
      assert.ok(
        (r.tunIo['gsoWrites'] ?? 0) > 0,
        `${receiver.name} took them whole: ${JSON.stringify(r.tunIo)}`,
      );
    }
    const st = JSON.parse((await cluster.httpGet(n1, '/status')).stdout) as {
      backendStats?: Record<string, unknown>;
    };
    assert.equal(st.backendStats?.['tunnelGsoPeers'], 1, 'the peer said it takes them whole');
    const metrics = (await cluster.httpGet(cluster.node(1), '/metrics')).stdout;
    assert.match(metrics, /weft_dataplane_offload\{feature="tunnel_gso"\} 1/);
    assert.match(metrics, /weft_dataplane_tunnel_gso_total\{outcome="written"\} [1-9]/);
    // Small packets still take the socket: ping both ways.
    assert.equal((await cluster.ping(a, b.addr, { count: 5, intervalS: 0.05 })).received, 5);
    assert.equal((await cluster.ping(b, a.addr, { count: 5, intervalS: 0.05 })).received, 5);
    const code = await cluster.stopWeftd(n1);
    assert.equal(code, 0, 'weftd exits 0 on SIGTERM');
    const links = await cluster.run.exec(n1.ns, 'ip', ['-br', 'link']);
    assert.ok(!links.includes(tap), `the TAP is gone after SIGTERM:\n${links}`);
  });
}

void test('a flannel udp peer (no "TunnelGSO" in its lease) gets ordinary datagrams; TCP intact both ways', async (t) => {
  // On this veth underlay a tunnel-GSO packet would reach the peer as one 64 KiB datagram,
  // which flannel's proxy (one read, one TUN write) cannot forward to its pods.
  const run = new NetnsRun();
  const cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 1 });
  t.after(() => cluster.destroy());
  cluster.writeNetConf('udp');
  const n1 = cluster.node(1);
  const n2 = cluster.node(2);
  const store = await EmbeddedLeaseStore.open({ dir: cluster.storeDir });
  t.after(() => store.close());
  const flannel = await store.acquire({ publicIp: n2.underlayIp, backendType: 'udp', backendData: null });
  cluster.startWeftd(n1);
  const info = await cluster.waitWeftdReady(n1);
  await cluster.attachPods(n1, info);
  await startUdpProxy(cluster, n2, flannel.subnet, [{ subnet: info.subnet, ip: n1.underlayIp }]);
  const [a] = n1.pods;
  const [b] = n2.pods;
  assert.ok(a && b);
  await cluster.waitForPing(a, b.addr, 15_000);
  await cluster.waitForPing(b, a.addr, 15_000);
  await transferBothWays(cluster, a, b, 8 * MB);
  const s = await io(cluster, n1);
  assert.ok((s.tunIo['wholeSuperPackets'] ?? 0) > 0, JSON.stringify(s.tunIo));
  assert.ok((s.connIo['tunnelPeerSegmented'] ?? 0) > 0, JSON.stringify(s.connIo));
  // ... as UDP GSO messages: at least one per super-packet.
  assert.ok(
    (s.connIo['gsoMessages'] ?? 0) >= (s.connIo['tunnelPeerSegmented'] ?? 0),
    `segmented super-packets go out as GSO messages: ${JSON.stringify(s.connIo)}`,
  );
  assert.equal(s.connIo['tunnelWrites'], 0, 'nothing went whole to a peer that cannot take it');
  assert.equal(s.connIo['tunnelAttached'], 1, 'the TAP stays for peers that can');
  const st = JSON.parse((await cluster.httpGet(n1, '/status')).stdout) as {
    backendStats?: Record<string, unknown>;
  };
  assert.equal(st.backendStats?.['peers'], 1);
  assert.equal(st.backendStats?.['tunnelGsoPeers'], 0);
  const metrics = (await cluster.httpGet(n1, '/metrics')).stdout;
  assert.match(metrics, /weft_dataplane_tunnel_gso_total\{outcome="peer_segmented"\} [1-9]/);
});

void test('--tunnel-gso=false: no TAP; weftd segments the super-packets itself', async (t) => {
  const { cluster, a, b } = await twoNodes(t, { backend: 'udp', extraArgs: ['--tunnel-gso=false'] });
  await transferBothWays(cluster, a, b, 4 * MB);
  const links = await cluster.run.exec(cluster.node(1).ns, 'ip', ['-br', 'link']);
  assert.ok(!links.includes(TAP), links);
  const s = await io(cluster, cluster.node(1));
  // The TUN still hands super-packets up whole; the socket cuts them into GSO messages.
  assert.ok((s.tunIo['wholeSuperPackets'] ?? 0) > 0, JSON.stringify(s.tunIo));
  assert.equal(s.connIo['tunnelWrites'], 0);
  assert.equal(s.connIo['tunnelOff'], s.tunIo['wholeSuperPackets'], JSON.stringify(s.connIo));
  assert.equal(s.connIo['tunnelFallbacks'], 0, 'not a fallback: the feature is off');
  assert.ok((s.connIo['gsoMessages'] ?? 0) >= (s.connIo['tunnelOff'] ?? 0), JSON.stringify(s.connIo));
  const metrics = (await cluster.httpGet(cluster.node(1), '/metrics')).stdout;
  assert.match(metrics, /weft_dataplane_tunnel_gso_total\{outcome="off"\} [1-9]/);
});

void test('--tunnel-gso over an underlay without tunnel offload: ordinary datagrams on the wire', async (t) => {
  const { cluster, a, b } = await twoNodes(t, { backend: 'udp', extraArgs: ['--tunnel-gso'] }, async (c) => {
    // Node 1's underlay can no longer carry UDP-tunnel GSO packets: the kernel must cut
    // them before they leave, as it would for a NIC without that offload.
    await c.run.exec(c.node(1).ns, 'ethtool', [
      '-K',
      'eth0',
      'tx-udp_tnl-segmentation',
      'off',
      'tx-udp_tnl-csum-segmentation',
      'off',
    ]);
  });
  const n1 = cluster.node(1);
  const n2 = cluster.node(2);
  const cap = cluster.run.spawn(n2.ns, 'tcpdump', [
    '-i',
    'eth0',
    '-nn',
    '-l',
    '-c',
    '400',
    `udp and src host ${n1.underlayIp} and dst port 8285`,
  ]);
  await new Promise((r) => setTimeout(r, 1000));
  const x = await cluster.tcpTransfer(a, b, 8 * MB);
  assert.equal(x.receivedSha256, x.sentSha256);
  await Promise.race([cap.exited, new Promise((r) => setTimeout(r, 5000))]);
  await cap.stop('SIGTERM', 1000);
  const lengths = [...cap.output().matchAll(/UDP, length (\d+)/g)].map((m) => Number(m[1]));
  assert.ok(lengths.length >= 100, `captured datagrams:\n${cap.output().slice(0, 2000)}`);
  const mtu = 1500 - 28;
  assert.ok(
    lengths.every((l) => l <= mtu),
    `every datagram fits the underlay: max ${Math.max(...lengths)}`,
  );
  assert.ok(
    lengths.some((l) => l === mtu),
    'full-sized segments',
  );
  const s = await io(cluster, n1);
  assert.ok(
    (s.connIo['tunnelWrites'] ?? 0) > 0,
    `still written whole to the TAP: ${JSON.stringify(s.connIo)}`,
  );
  assert.equal(s.connIo['tunnelErrors'], 0);
});

/** /status's backend counters of `node` (tunnelRestored, tunnelGuardTrips, ...). */
async function backendStat(cluster: Cluster, node: ClusterNode, key: string): Promise<number> {
  const s = JSON.parse((await cluster.httpGet(node, '/status')).stdout) as {
    backendStats?: Record<string, unknown>;
  };
  const v = s.backendStats?.[key];
  return typeof v === 'number' ? v : 0;
}

async function until<T>(what: string, ms: number, probe: () => Promise<T | undefined>): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const tapIndex = async (cluster: Cluster, node: ClusterNode): Promise<number> =>
  (JSON.parse(await cluster.run.exec(node.ns, 'ip', ['-j', 'link', 'show', TAP])) as { ifindex: number }[])[0]
    ?.ifindex ?? -1;

void test('--tunnel-gso: the TAP deleted or set down under a running weftd is put right and used again, no byte lost', async (t) => {
  const { cluster, a, b } = await twoNodes(t, { backend: 'udp', extraArgs: ['--tunnel-gso'] });
  const n1 = cluster.node(1);
  const first = await tapIndex(cluster, n1);
  await cluster.run.exec(n1.ns, 'ip', ['link', 'del', TAP]);
  // Whatever the transfer meets (the socket's write failing, or the TAP already made
  // again), every byte arrives.
  const x = await cluster.tcpTransfer(a, b, 8 * MB);
  assert.equal(x.receivedSha256, x.sentSha256);
  await until('tunnelRestored 1', 10_000, async () =>
    (await backendStat(cluster, n1, 'tunnelRestored')) >= 1 ? true : undefined,
  );
  const again = await tapIndex(cluster, n1);
  assert.ok(again > 0 && again !== first, `a new TAP (ifindex ${first} -> ${again})`);
  const s1 = await io(cluster, n1);
  assert.equal(s1.connIo['tunnelAttached'], 1, JSON.stringify(s1.connIo));
  const y = await cluster.tcpTransfer(a, b, 8 * MB);
  assert.equal(y.receivedSha256, y.sentSha256);
  const s2 = await io(cluster, n1);
  assert.ok(
    (s2.connIo['tunnelWrites'] ?? 0) > (s1.connIo['tunnelWrites'] ?? 0),
    `written whole to the new TAP: ${JSON.stringify(s2.connIo)}`,
  );

  // Set down: a write fails (EIO) or the check sees it first; it is set up and used again.
  await cluster.run.exec(n1.ns, 'ip', ['link', 'set', TAP, 'down']);
  const z = await cluster.tcpTransfer(a, b, 8 * MB);
  assert.equal(z.receivedSha256, z.sentSha256);
  await until('tunnelRestored 2', 10_000, async () =>
    (await backendStat(cluster, n1, 'tunnelRestored')) >= 2 ? true : undefined,
  );
  const links = await cluster.run.exec(n1.ns, 'ip', ['-j', 'link', 'show', TAP]);
  assert.match(links, /"UP"/, links);
  assert.equal(await tapIndex(cluster, n1), again, 'the same TAP, set up again');
  const s3 = await io(cluster, n1);
  const w = await cluster.tcpTransfer(a, b, 8 * MB);
  assert.equal(w.receivedSha256, w.sentSha256);
  const s4 = await io(cluster, n1);
  assert.ok((s4.connIo['tunnelWrites'] ?? 0) > (s3.connIo['tunnelWrites'] ?? 0), JSON.stringify(s4.connIo));
  assert.equal(await backendStat(cluster, n1, 'tunnelGuardTrips'), 0);
  assert.match(n1.weftd?.output() ?? '', /the TAP was deleted; making it right/);
  assert.ok(n1.weftd?.child.exitCode === null, 'weftd keeps running');
});

void test('--tunnel-gso on a node with strict rp_filter: weftd says why and segments in userspace', async (t) => {
  const { cluster, a, b } = await twoNodes(t, { backend: 'udp', extraArgs: ['--tunnel-gso'] }, async (c) => {
    await c.run.exec(c.node(1).ns, 'sysctl', ['-qw', 'net.ipv4.conf.all.rp_filter=1']);
  });
  const n1 = cluster.node(1);
  await transferBothWays(cluster, a, b, 4 * MB);
  const s = await io(cluster, n1);
  assert.equal(s.connIo['tunnelWrites'], 0);
  assert.ok((s.connIo['tunnelOff'] ?? 0) > 0, `segmented in the socket: ${JSON.stringify(s.connIo)}`);
  assert.match(n1.weftd?.output() ?? '', /tunnel GSO is not possible on this node/);
  const links = await cluster.run.exec(n1.ns, 'ip', ['-br', 'link']);
  assert.ok(!links.includes(TAP), `no TAP:\n${links}`);
});

for (const workers of [1, 2]) {
  void test(`--tunnel-gso on a node whose FORWARD hook drops the tunnel packets, ${workers} worker(s): detected, segmented, TCP recovers`, async (t) => {
    // With 2 workers the flow may well be on worker 1: the guard must count what every
    // worker's socket wrote to the TAP, and detach it from all of them.
    const extraArgs = ['--tunnel-gso', '--workers', String(workers)];
    const { cluster, a, b } = await twoNodes(t, { backend: 'udp', extraArgs }, async (c) => {
      // A firewall that drops forwarded UDP to the overlay port: the TAP's packets are
      // forwarded, the socket's own are not, so only whole super-packets are lost.
      await c.run.exec(c.node(1).ns, 'nft', ['-f', '-'], {
        input:
          'table inet weftfwtest { chain weftfwd { type filter hook forward priority 0; policy accept; udp dport 8285 drop; }; }\n',
      });
    });
    const n1 = cluster.node(1);
    // One flow; with workers, 8 at once so that the other worker carries some of them (all
    // 8 on one worker: 1 in 128).
    const flows = workers === 1 ? [32 * MB] : Array.from({ length: 8 }, () => 4 * MB);
    const xs = await Promise.all(flows.map((bytes) => cluster.tcpTransfer(a, b, bytes, 90_000))).catch(
      async (err: unknown) => {
        throw new Error(
          `${(err as Error).message}\nconnIo: ${JSON.stringify((await io(cluster, n1)).connIo)}\n${n1.weftd?.output().slice(-3000) ?? ''}`,
        );
      },
    );
    for (const x of xs) assert.equal(x.receivedSha256, x.sentSha256);
    await new Promise((r) => setTimeout(r, 700)); // the workers' next reports
    const s = await io(cluster, n1);
    assert.ok((s.connIo['tunnelWrites'] ?? 0) > 0, 'it did try the TAP');
    if (workers === 2) {
      const w = (
        JSON.parse((await cluster.httpGet(n1, '/status')).stdout) as {
          backendStats: { workers: Record<string, number> };
        }
      ).backendStats.workers;
      assert.ok(
        (w['0.tunnelWrites'] ?? 0) > 0 && (w['1.tunnelWrites'] ?? 0) > 0,
        `both workers used the TAP: ${JSON.stringify(w)}`,
      );
    }
    assert.ok(
      (s.connIo['tunnelFallbacks'] ?? 0) > 0,
      `then segmented in the socket: ${JSON.stringify(s.connIo)}`,
    );
    assert.match(n1.weftd?.output() ?? '', /did not send what weft wrote to the TAP/);
    const metrics = (await cluster.httpGet(n1, '/metrics')).stdout;
    assert.match(metrics, /weft_dataplane_offload\{feature="tunnel_gso"\} 0/, 'no longer in use');
    assert.match(metrics, /weft_dataplane_tunnel_gso_total\{outcome="segmented"\} [1-9]/);
    const again = await cluster.tcpTransfer(a, b, 8 * MB);
    assert.equal(again.receivedSha256, again.sentSha256);
    const s2 = await io(cluster, n1);
    assert.equal(s2.connIo['tunnelWrites'], s.connIo['tunnelWrites'], 'the TAP is no longer used');
    if (workers === 1) {
      // Segmented in the socket as UDP GSO messages, not one datagram per message.
      const d = (k: string): number => (s2.connIo[k] ?? 0) - (s.connIo[k] ?? 0);
      const perMessage = d('datagramsOut') / Math.max(1, d('messagesOut'));
      assert.ok(
        perMessage >= 10,
        `datagrams per message ${perMessage.toFixed(1)}: ${JSON.stringify(s2.connIo)}`,
      );
    }
  });

  void test(`--tunnel-gso-retry, ${workers} worker(s): tried again while the FORWARD rule drops (the wait doubles), used again once it is gone`, async (t) => {
    const extraArgs = ['--tunnel-gso', '--workers', String(workers), '--tunnel-gso-retry', '2'];
    const rule =
      'table inet weftfwtest { chain weftfwd { type filter hook forward priority 0; policy accept; udp dport 8285 drop; }; }\n';
    const { cluster, a, b } = await twoNodes(t, { backend: 'udp', extraArgs }, async (c) => {
      await c.run.exec(c.node(1).ns, 'nft', ['-f', '-'], { input: rule });
    });
    const n1 = cluster.node(1);
    const transfer = async (flows: readonly number[]): Promise<void> => {
      const xs = await Promise.all(flows.map((bytes) => cluster.tcpTransfer(a, b, bytes, 90_000)));
      for (const x of xs) assert.equal(x.receivedSha256, x.sentSha256);
    };
    const stat = (key: string): Promise<number> => backendStat(cluster, n1, key);
    const attached = async (): Promise<true | undefined> =>
      (await io(cluster, n1)).connIo['tunnelAttached'] === 1 ? true : undefined;
    // While the rule drops: each retry puts the TAP back, traffic shows it still fails, and
    // the guard gives up again, for twice as long.
    await transfer([4 * MB]);
    assert.ok((await stat('tunnelGuardTrips')) >= 1, 'the guard gave up');
    while ((await stat('tunnelGuardTrips')) < 2) {
      await until('a retry', 15_000, attached);
      await transfer([1 * MB]);
    }
    assert.ok((await stat('tunnelRetries')) >= 1);
    assert.match(n1.weftd?.output() ?? '', /"retryInSeconds":4/, 'the wait doubled');
    // The rule goes: the next retry sticks and super-packets go whole again.
    await cluster.run.exec(n1.ns, 'nft', ['delete', 'table', 'inet', 'weftfwtest']);
    await until('the TAP tried again', 20_000, attached);
    const trips = await stat('tunnelGuardTrips');
    const workerWrites = async (): Promise<Record<string, number>> =>
      (
        JSON.parse((await cluster.httpGet(n1, '/status')).stdout) as {
          backendStats: { workers?: Record<string, number> };
        }
      ).backendStats.workers ?? {};
    const s0 = await io(cluster, n1);
    const w0 = await workerWrites();
    await transfer(workers === 1 ? [16 * MB] : Array.from({ length: 8 }, () => 2 * MB));
    await new Promise((r) => setTimeout(r, 2500)); // two more guard checks, the workers' reports
    const s1 = await io(cluster, n1);
    assert.equal(
      await stat('tunnelGuardTrips'),
      trips,
      `no further give-up:\n${(n1.weftd?.output() ?? '')
        .split('\n')
        .filter((l) => l.includes('tunnel GSO'))
        .join('\n')}`,
    );
    assert.equal(s1.connIo['tunnelAttached'], 1, JSON.stringify(s1.connIo));
    const metrics = (await cluster.httpGet(n1, '/metrics')).stdout;
    assert.match(metrics, /weft_dataplane_offload\{feature="tunnel_gso"\} 1/, 'in use again');
    if (workers === 1) {
      assert.ok(
        (s1.connIo['tunnelWrites'] ?? 0) > (s0.connIo['tunnelWrites'] ?? 0),
        `written whole again: ${JSON.stringify(s1.connIo)}`,
      );
    } else {
      const w1 = await workerWrites();
      const d = (k: string): number => (w1[k] ?? 0) - (w0[k] ?? 0);
      assert.ok(
        d('0.tunnelWrites') > 0 && d('1.tunnelWrites') > 0,
        `both workers wrote whole again: ${JSON.stringify(w0)} -> ${JSON.stringify(w1)}`,
      );
    }
  });
}
