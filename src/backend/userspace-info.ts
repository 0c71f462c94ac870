/**
 * The DataplaneInfo of a userspace backend (udp, userspace vxlan): the forwarder's
 * counters (summed over the worker pool when there is one) and which offloads its TUN
 * device and socket ended up with.
 */
import type { DataplaneInfo } from './backend.ts';
import type { ForwarderSnapshot } from '../dataplane/forwarder.ts';
import type { TunDevice } from '../tun/tun.ts';
import type { PacketConn } from '../conn/conn.ts';

export function userspaceDataplaneInfo(
  /** The forwarder, or a worker pool (whose snapshot sums all its workers). */
  fwd: { snapshot(): ForwarderSnapshot } | undefined,
  tun: TunDevice | undefined,
  conn: PacketConn | undefined,
): DataplaneInfo {
  const t = tun?.offloads;
  const c = conn?.offloads;
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
    },
  };
}
