/**
 * The DataplaneInfo of a userspace backend (udp, userspace vxlan): the forwarder's
 * counters (summed over the worker pool when there is one) and which offloads its TUN
 * device and socket ended up with.
 */
import type { DataplaneInfo } from './backend.ts';
import type { ForwarderSnapshot } from '../dataplane/forwarder.ts';
import type { TunDevice } from '../tun/tun.ts';
import type { PacketConn } from '../conn/conn.ts';
import type { WorkerPool } from '../dataplane/workers/pool.ts';

export function userspaceDataplaneInfo(
  /** The forwarder, or a worker pool (whose snapshot sums all its workers). */
  fwd: { snapshot(): ForwarderSnapshot } | undefined,
  tun: TunDevice | undefined,
  conn: PacketConn | undefined,
): DataplaneInfo {
  const t = tun?.offloads;
  const c = conn?.offloads;
  const io = nativeIoStats(undefined, conn).connIo;
  return {
    dataplane: 'userspace',
    forwarder: fwd?.snapshot(),
    offloads: {
      tunVnetHdr: t?.vnetHdr ?? false,
      tunTso: t?.tso ?? false,
      tunUso: t?.uso ?? false,
      tunGro: t?.gro ?? false,
      udpGso: c?.gso ?? false,
      udpGro: c?.gro ?? false,
      // whole super-packets to the kernel through a TAP (weftd --tunnel-gso), while attached
      tunnelGso: (io?.['tunnelAttached'] ?? 0) === 1,
    },
  };
}

/**
 * The native layer's own counters of a userspace backend's devices (super-packets,
 * coalesced writes, GSO sends, whole tunnel super-packets received...), as `tunIo` and
 * `connIo` in its stats; devices without counters (the in-memory twins) add nothing. With
 * a worker pool, every worker's figures are added in (as of its latest report).
 */
export function nativeIoStats(
  tun: TunDevice | undefined,
  conn: PacketConn | undefined,
  pool?: WorkerPool,
): { tunIo?: Record<string, number>; connIo?: Record<string, number> } {
  const io = (d: unknown): Record<string, number> | undefined =>
    typeof (d as { stats?: unknown } | undefined)?.stats === 'function'
      ? { ...(d as { stats(): Record<string, number> }).stats() }
      : undefined;
  const tunIo = io(tun);
  const connIo = io(conn);
  const main = { ...(tunIo ? { tunIo } : {}), ...(connIo ? { connIo } : {}) };
  if (!pool) return main;
  return pool.ioStats(main);
}
