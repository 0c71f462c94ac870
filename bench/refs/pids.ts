/**
 * Forwarder processes of the reference overlays, per cluster: the setups record the PIDs of
 * what they start so the measurement can read its CPU time (measure.ts counts descendants).
 */
import type { Cluster } from '../../src/netns/topology.ts';

const pids = new WeakMap<Cluster, number[]>();

export function recordForwarder(cluster: Cluster, pid: number): void {
  const list = pids.get(cluster) ?? [];
  list.push(pid);
  pids.set(cluster, list);
}

export function forwardersOf(cluster: Cluster): number[] {
  return pids.get(cluster) ?? [];
}
