/**
 * What a node's kernel churn that weft does not own costs weftd.
 *
 * Why: weftd listens for the kernel's link, address, route (and, for kernel VXLAN,
 * neighbour) notifications so that damage to its own state is put right at once
 * (src/kernel/monitor.ts). A busy node announces far more than that: pods' ARP entries on
 * cni0, bridge learning, the underlay's ARP, veths coming and going. Notifications about
 * anything the backend does not look after must be read and dropped, not turned into
 * checks. Method: a 2-node cluster in network namespaces on the chosen backend; in node 1's
 * namespace a bridge of its own (not weft's) gets `--rate` neighbour changes a second
 * (replace, then delete, in one `ip -batch` every 100 ms) for `--seconds`; printed:
 * weftd's checks started by notifications (kernelEventChecks), notifications it read and
 * dropped (kernelEventsIgnored), kernel VXLAN's verifying passes, and weftd's CPU over the
 * window (/proc/<pid>/stat), as one JSON line. Expect 0 checks.
 *
 *   node --import tsx bench/kernel-churn.ts [--backend vxlan-kernel|host-gw|udp] [--seconds 20] [--rate 60]
 */
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { NetnsRun } from '../src/netns/netns.ts';
import { Cluster } from '../src/netns/topology.ts';
import type { WeftdOptions } from '../src/netns/topology.ts';
import { useCompiledDaemons } from './refs/setup.ts';

const { values } = parseArgs({
  options: {
    backend: { type: 'string', default: 'vxlan-kernel' },
    seconds: { type: 'string', default: '20' },
    rate: { type: 'string', default: '60' },
  },
});
const BACKENDS: Record<string, WeftdOptions> = {
  'vxlan-kernel': { backend: 'vxlan', backendOptions: { Dataplane: 'kernel' } },
  'host-gw': { backend: 'host-gw' },
  udp: { backend: 'udp' },
};
const weftd = BACKENDS[values.backend];
if (!weftd) throw new Error(`--backend: one of ${Object.keys(BACKENDS).join(', ')}`);
const seconds = Number(values.seconds);
/** Neighbour entries replaced (and as many deleted) per 100 ms batch. */
const perBatch = Math.max(1, Math.round(Number(values.rate) / 20));

/** user + system CPU ticks of a process. */
function cpuTicks(pid: number): number {
  const f = (readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1] ?? '').split(' ');
  return Number(f[11]) + Number(f[12]);
}

const neighbour = (x: number): string => `198.19.${x >> 8}.${x & 255}`;
const mac = (x: number): string =>
  `02:00:00:00:${(x >> 8).toString(16).padStart(2, '0')}:${(x & 255).toString(16).padStart(2, '0')}`;

useCompiledDaemons((l) => process.stderr.write(`${l}\n`));
const run = new NetnsRun();
const cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 1 });
try {
  await cluster.startWeftdAll(weftd);
  const n1 = cluster.node(1);
  const [a] = n1.pods;
  const [b] = cluster.node(2).pods;
  if (!a || !b || !n1.weftd?.child.pid) throw new Error('the cluster has no pods or no weftd');
  await cluster.waitForPing(a, b.addr, 15_000);
  const pid = n1.weftd.child.pid;
  const stats = async (): Promise<Record<string, number>> =>
    (JSON.parse((await cluster.httpGet(n1, '/status')).stdout) as { backendStats: Record<string, number> })
      .backendStats;
  await run.ip(n1.ns, 'link', 'add', 'churn0', 'type', 'bridge');
  await run.ip(n1.ns, 'link', 'set', 'churn0', 'up');
  await sleep(1000);
  const s0 = await stats();
  const t0 = cpuTicks(pid);
  const started = Date.now();
  const end = started + seconds * 1000;
  let next = 0;
  while (Date.now() < end) {
    const xs = Array.from({ length: perBatch }, () => (next++ % 200) + 10);
    const lines = [
      ...xs.map((x) => `neigh replace ${neighbour(x)} lladdr ${mac(x)} dev churn0`),
      ...xs.map((x) => `neigh del ${neighbour(x)} dev churn0`),
    ];
    await run.exec(n1.ns, 'ip', ['-batch', '-'], { input: lines.join('\n') + '\n' });
    await sleep(100);
  }
  const elapsed = (Date.now() - started) / 1000;
  const s1 = await stats();
  const t1 = cpuTicks(pid);
  const d = (k: string): number => (s1[k] ?? 0) - (s0[k] ?? 0);
  console.log(
    JSON.stringify({
      backend: values.backend,
      seconds: Number(elapsed.toFixed(1)),
      neighbourChanges: next * 2,
      kernelEventChecks: d('kernelEventChecks'),
      kernelEventsIgnored: d('kernelEventsIgnored'),
      kernelPasses: d('kernelPasses'),
      // USER_HZ is 100: ticks per second are percent of one core.
      weftdCpuPercentOfCore: Number(((t1 - t0) / elapsed).toFixed(2)),
    }),
  );
} finally {
  await cluster.destroy();
}
