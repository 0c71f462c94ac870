// weftd --busy-poll-us: two nodes on the udp backend with a 300 µs busy-poll window. Pods
// ping both ways and move 2 MB over TCP intact, and both forwarders report windows that
// found traffic (busyPollHits) and windows that ran out (busyPollMisses), so the window is
// really in the loop; the daemon still answers /status while traffic flows.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { NetnsRun } from '../../src/netns/netns.ts';
import { Cluster } from '../../src/netns/topology.ts';
import type { ClusterNode } from '../../src/netns/topology.ts';

async function pollCounters(cluster: Cluster, node: ClusterNode): Promise<{ hits: number; misses: number }> {
  const s = JSON.parse((await cluster.httpGet(node, '/status')).stdout) as {
    backendStats?: { counters?: { busyPollHits?: number; busyPollMisses?: number } };
  };
  const c = s.backendStats?.counters;
  return { hits: c?.busyPollHits ?? -1, misses: c?.busyPollMisses ?? -1 };
}

void test('udp backend with --busy-poll-us 300: traffic flows and the window is used', async (t) => {
  const run = new NetnsRun();
  const cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 1 });
  t.after(() => cluster.destroy());
  await cluster.startWeftdAll({ backend: 'udp', extraArgs: ['--busy-poll-us', '300'] });
  const [a] = cluster.node(1).pods;
  const [b] = cluster.node(2).pods;
  assert.ok(a && b);
  await cluster.waitForPing(a, b.addr, 15_000);
  const there = await cluster.ping(a, b.addr, { count: 20, intervalS: 0.005 });
  assert.equal(there.received, 20, there.output);
  const back = await cluster.ping(b, a.addr, { count: 20, intervalS: 0.005 });
  assert.equal(back.received, 20, back.output);
  const x = await cluster.tcpTransfer(a, b, 2 * 1024 * 1024);
  assert.equal(x.receivedBytes, x.bytes);
  assert.equal(x.receivedSha256, x.sentSha256);
  for (const n of cluster.nodes) {
    const c = await pollCounters(cluster, n);
    assert.ok(c.hits > 0, `${n.name}: busy-poll windows that found traffic: ${c.hits}`);
    assert.ok(c.misses > 0, `${n.name}: busy-poll windows that ran out: ${c.misses}`);
  }
});
