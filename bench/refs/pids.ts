/**
 * Forwarder processes of the reference overlays, per cluster: the setups record the PIDs of
 * what they start so the measurement can read its CPU time (measure.ts counts descendants).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { SpawnedProcess } from '../../src/netns/netns.ts';
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

/**
 * Waits until `ready()` holds for a reference forwarder started on a node, failing with its
 * output if it exits first or takes longer than `timeoutMs`.
 */
export async function waitForForwarder(
  what: string,
  proc: SpawnedProcess,
  ready: () => boolean | Promise<boolean>,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ready())) {
    if (proc.child.exitCode !== null || proc.child.signalCode !== null || Date.now() > deadline)
      throw new Error(`${what} did not come up: ${proc.output().trim()}`);
    await sleep(20);
  }
}
