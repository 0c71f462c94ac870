// The userspace data path on several threads, end to end through weftd --workers 2: two
// nodes in namespaces, 4 parallel TCP flows between pods (sha256-checked) and pings both
// ways, for the udp backend and the userspace vxlan plane. Per-worker counters from /status
// prove that both threads forwarded traffic on both nodes, each sending whole super-packets
// through its own queue of the tunnel-GSO TAP; the TUN device and the TAP are multi-queue.
// The udp case also deletes the device under weftd (all queues come back). Finally weftd
// with workers exits promptly on SIGTERM and removes its device.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { helpText, parseOptions } from '../../src/daemon/options.ts';
import { NetnsRun } from '../../src/netns/netns.ts';
import { Cluster } from '../../src/netns/topology.ts';
import type { ClusterNode, Pod } from '../../src/netns/topology.ts';

const MB = 1024 * 1024;

interface Status {
  backendStats?: {
    workers?: Record<string, number>;
    counters?: Record<string, number>;
    connIo?: Record<string, number>;
    deviceRecreated?: number;
  };
}

async function status(cluster: Cluster, node: ClusterNode): Promise<Status> {
  const r = await cluster.httpGet(node, '/status');
  assert.equal(r.code, 0, `GET /status on ${node.name}: ${r.stdout}`);
  return JSON.parse(r.stdout) as Status;
}

/** Per-worker figures of a node: [{packetsIn, packetsOut, fromNetwork, toTun, ...}] by worker. */
function figures(s: Status): Record<string, number>[] {
  const w = s.backendStats?.workers;
  assert.ok(w, `no "workers" in the backend stats: ${JSON.stringify(s.backendStats)}`);
  const out: Record<string, number>[] = [];
  for (let i = 0; i < (w.count ?? 0); i++) {
    const f: Record<string, number> = {};
    for (const [k, v] of Object.entries(w)) if (k.startsWith(`${i}.`)) f[k.slice(String(i).length + 1)] = v;
    out.push(f);
  }
  return out;
}

/** Both workers of every node received from the network and sent to it (per the latest reports). */
async function bothWorkersBusy(cluster: Cluster): Promise<boolean> {
  for (const n of cluster.nodes) {
    const f = figures(await status(cluster, n));
    if (f.length !== 2) return false;
    if (!f.every((x) => (x.fromNetwork ?? 0) > 0 && (x.toTun ?? 0) > 0 && (x.fromTun ?? 0) > 0)) return false;
    // Tunnel GSO (on by default) on every worker: each sent whole super-packets to the TAP.
    if (!f.every((x) => (x.tunnelWrites ?? 0) > 0)) return false;
  }
  return true;
}

async function waitBusy(cluster: Cluster, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  for (;;) {
    if (await bothWorkersBusy(cluster)) return true;
    if (Date.now() > until) return false;
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function parallelFlows(cluster: Cluster, a: Pod, b: Pod, bytes: number): Promise<void> {
  // Two each way, each on its own server port (and client port).
  const xs = await Promise.all([
    cluster.tcpTransfer(a, b, bytes),
    cluster.tcpTransfer(b, a, bytes),
    cluster.tcpTransfer(a, b, bytes),
    cluster.tcpTransfer(b, a, bytes),
  ]);
  for (const x of xs) {
    assert.equal(x.receivedBytes, bytes);
    assert.equal(x.receivedSha256, x.sentSha256);
  }
}

async function pingBothWays(cluster: Cluster, a: Pod, b: Pod): Promise<void> {
  await cluster.waitForPing(a, b.addr, 15_000);
  const there = await cluster.ping(a, b.addr, { count: 3 });
  assert.equal(there.received, 3, there.output);
  const back = await cluster.ping(b, a.addr, { count: 3 });
  assert.equal(back.received, 3, back.output);
}

void test('--workers / WEFT_WORKERS: 1..64, default 1, the flag wins', () => {
  assert.equal(parseOptions([], {}).workers, 1);
  assert.equal(parseOptions(['--workers', '4'], {}).workers, 4);
  assert.equal(parseOptions(['--workers=64'], {}).workers, 64);
  assert.equal(parseOptions([], { WEFT_WORKERS: '3' }).workers, 3);
  assert.equal(parseOptions([], { WEFTD_WORKERS: '5', WEFT_WORKERS: '3' }).workers, 5);
  assert.equal(parseOptions(['--workers', '2'], { WEFT_WORKERS: '3' }).workers, 2);
  for (const bad of ['0', '65', '-1', 'two', '1.5']) {
    assert.throws(() => parseOptions(['--workers', bad], {}), /workers/);
  }
  assert.throws(() => parseOptions([], { WEFT_WORKERS: '100' }), /1\.\.64/);
  assert.match(helpText(), /--workers=N[\s\S]*WEFT_WORKERS/);
});

const cases = [
  { name: 'udp', backend: 'udp', options: {}, dev: 'weft0' },
  { name: 'vxlan userspace plane', backend: 'vxlan', options: { Dataplane: 'userspace' }, dev: 'weft.1' },
] as const;

for (const c of cases) {
  void test(`weftd --workers 2, ${c.name}: 4 parallel flows intact, both workers busy on both nodes`, async () => {
    const run = new NetnsRun();
    const cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 1 });
    try {
      await cluster.startWeftdAll({
        backend: c.backend,
        backendOptions: c.options,
        extraArgs: ['--workers', '2'],
      });
      const n1 = cluster.node(1);
      const n2 = cluster.node(2);
      const a = n1.pods[0];
      const b = n2.pods[0];
      assert.ok(a && b);
      for (const n of [n1, n2]) {
        const link = await run.ip(n.ns, '-d', 'link', 'show', c.dev);
        assert.match(link, /multi_queue/, link);
        assert.match(link, /numqueues 2/, link);
        // The tunnel-GSO TAP: one queue per worker too.
        const tap = await run.ip(n.ns, '-d', 'link', 'show', `${c.dev}-gso`);
        assert.match(tap, /multi_queue/, tap);
        assert.match(tap, /numqueues 2/, tap);
      }
      await pingBothWays(cluster, a, b);
      await parallelFlows(cluster, a, b, 4 * MB);
      let busy = await waitBusy(cluster, 2000);
      const first = await Promise.all([n1, n2].map(async (n) => figures(await status(cluster, n))));
      // Which worker a flow lands on is a hash: should both flows leaving a node have hashed
      // to one worker (1 in 2 per node and round), more flows make the point.
      for (let round = 0; round < 14 && !busy; round++) {
        await parallelFlows(cluster, a, b, 256 * 1024);
        busy = await waitBusy(cluster, 1500);
      }
      const figs = await Promise.all([n1, n2].map(async (n) => figures(await status(cluster, n))));
      console.log(`per-worker figures after the 4 flows (${c.name}): ${JSON.stringify(first)}`);
      console.log(`per-worker figures at the end (${c.name}): ${JSON.stringify(figs)}`);
      assert.ok(busy, `a worker forwarded nothing: ${JSON.stringify(figs)}`);
      // The summed counters are the per-worker figures added up (reports can lag by up to
      // 500 ms, so compare with a fresh status after the traffic stopped).
      await new Promise((r) => setTimeout(r, 700));
      for (const n of [n1, n2]) {
        const s = await status(cluster, n);
        const f = figures(s);
        const sum = (k: string): number => f.reduce((t, x) => t + (x[k] ?? 0), 0);
        assert.equal(s.backendStats?.counters?.recvPackets, sum('fromNetwork'));
        assert.equal(s.backendStats?.counters?.tunReadPackets, sum('fromTun'));
        assert.equal(s.backendStats?.workers?.deaths, 0);
        // connIo sums every worker's socket: the TAP writes of all of them.
        assert.equal(s.backendStats?.connIo?.tunnelWrites, sum('tunnelWrites'));
      }

      if (c.backend === 'udp') {
        // Delete the device under weftd: it comes back with both queues and traffic resumes.
        await run.ip(n1.ns, 'link', 'del', c.dev);
        const until = Date.now() + 10_000;
        for (;;) {
          const s = await status(cluster, n1);
          if ((s.backendStats?.deviceRecreated ?? 0) >= 1 && figures(s).every((x) => x.alive === 1)) break;
          assert.ok(Date.now() < until, `device not recreated: ${JSON.stringify(s.backendStats)}`);
          await new Promise((r) => setTimeout(r, 200));
        }
        const link = await run.ip(n1.ns, '-d', 'link', 'show', c.dev);
        assert.match(link, /numqueues 2/, link);
        await pingBothWays(cluster, a, b);
        await parallelFlows(cluster, a, b, MB);
        const after = figures(await status(cluster, n1));
        // Counters continued across the rebuild (never below what they were before it).
        after.forEach((x, i) => assert.ok((x.packetsIn ?? 0) >= (figs[0]?.[i]?.packetsIn ?? 0)));
      }
    } finally {
      await cluster.destroy();
    }
  });
}

void test('weftd --workers 2 exits promptly on SIGTERM and removes its TUN device', async () => {
  const run = new NetnsRun();
  const cluster = await Cluster.create(run, { nodes: 1, podsPerNode: 0 });
  try {
    await cluster.startWeftdAll({ backend: 'udp', extraArgs: ['--workers', '2'] });
    const n1 = cluster.node(1);
    assert.match(await run.ip(n1.ns, '-d', 'link', 'show', 'weft0'), /numqueues 2/);
    const t0 = Date.now();
    const code = await cluster.stopWeftd(n1, 10_000);
    const ms = Date.now() - t0;
    assert.equal(code, 0, n1.weftd?.output());
    assert.ok(ms < 4000, `weftd took ${ms} ms to exit`);
    await assert.rejects(run.ip(n1.ns, 'link', 'show', 'weft0'), /does not exist|Cannot find/);
  } finally {
    await cluster.destroy();
  }
});
