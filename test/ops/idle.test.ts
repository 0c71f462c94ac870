// An idle weftd stays idle: with its lease held, peers known and no pod traffic, its main
// thread (the data path's event loop) sleeps between rare timers instead of waking on a
// fast tick. (prom-client's event-loop delay sampler woke it 100 times a second by default;
// the daemon now samples every EVENT_LOOP_SAMPLE_MS.) Measured from the kernel's own
// accounting: /proc/<pid>/task/<pid>/status context switches and /proc/<pid>/stat CPU ticks.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { EVENT_LOOP_SAMPLE_MS } from '../../src/metrics/metrics.ts';
import { NetnsRun } from '../../src/netns/netns.ts';
import { Cluster } from '../../src/netns/topology.ts';
import { scrape } from './helpers.ts';

/** Main-thread wake-ups per second an idle weftd may have (it had ~120 with the 10 ms sampler). */
const MAX_WAKEUPS_PER_S = 40;
/** Share of one core an idle weftd may use, all threads. */
const MAX_CPU_SHARE = 0.02;
/**
 * Both nodes are measured over the same window. CPU time comes in 10 ms ticks, so a short
 * window rounds a few ms of work (every fifth device check reads link, addresses and route
 * over netlink; it used to start `ip` processes) into a large share of a core.
 */
const WINDOW_MS = 6000;

function mainThreadSwitches(pid: number): number {
  const status = readFileSync(`/proc/${pid}/task/${pid}/status`, 'utf8');
  const get = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
  return get('voluntary_ctxt_switches') + get('nonvoluntary_ctxt_switches');
}

/** utime + stime of the whole process, in clock ticks (USER_HZ, 100 on Linux). */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

void test('an idle weftd wakes rarely and uses almost no CPU', async (t) => {
  assert.ok(
    1000 / EVENT_LOOP_SAMPLE_MS < MAX_WAKEUPS_PER_S,
    'the event-loop sampler alone must fit the bound',
  );
  const run = new NetnsRun();
  const cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 1 });
  t.after(() => cluster.destroy());
  await cluster.startWeftdAll({ backend: 'udp' });
  const a = cluster.node(1).pods[0];
  const b = cluster.node(2).pods[0];
  assert.ok(a && b);
  await cluster.waitForPing(a, b.addr, 15_000);
  // The metrics endpoint works (the sampler's series are there) before we measure.
  const e = await scrape(cluster.node(1));
  assert.ok(
    e.samples.some((s) => s.name === 'nodejs_eventloop_lag_p99_seconds'),
    'the event-loop delay series are exported',
  );
  await sleep(1000); // start-up work (first full device check, JIT) settles

  const nodes = [cluster.node(1), cluster.node(2)].map((node) => {
    const pid = node.weftd?.child.pid;
    assert.ok(pid !== undefined, `${node.ns}: weftd is running`);
    return { node, pid, s0: mainThreadSwitches(pid), c0: cpuTicks(pid) };
  });
  const t0 = performance.now();
  await sleep(WINDOW_MS);
  const secs = (performance.now() - t0) / 1000;
  for (const { node, pid, s0, c0 } of nodes) {
    const wakeups = (mainThreadSwitches(pid) - s0) / secs;
    const cpu = (cpuTicks(pid) - c0) / 100 / secs;
    t.diagnostic(
      `${node.ns}: ${wakeups.toFixed(1)} main-thread switches/s, ${(cpu * 100).toFixed(2)}% of a core`,
    );
    assert.ok(
      wakeups < MAX_WAKEUPS_PER_S,
      `${node.ns}: ${wakeups.toFixed(1)} main-thread wake-ups per second`,
    );
    assert.ok(cpu < MAX_CPU_SHARE, `${node.ns}: ${(cpu * 100).toFixed(2)}% of a core while idle`);
  }
});
