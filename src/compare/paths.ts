/**
 * The ways pod traffic can cross between two nodes, as `weft compare` and bench/ measure
 * them. Each path wires a fresh 2-node Cluster (src/netns/topology.ts) one way; weft's
 * backends run real weftd processes on the embedded lease store, the kernel references are
 * programmed directly. Adding a path is one entry.
 */
import type { Cluster } from '../netns/topology.ts';

export interface PathSpec {
  /** Short id used on the command line (`--only udp,vxlan-user`). */
  readonly id: string;
  readonly name: string;
  /** Bytes each packet carries on the wire beyond the inner IP packet. */
  readonly overheadBytes: number;
  /** How the packet is carried, for the explanation column. */
  readonly how: string;
  /** True when a weftd process forwards (so its CPU time is the forwarder's). */
  readonly userspace: boolean;
  setup(cluster: Cluster): Promise<void>;
  /**
   * PIDs of the forwarder processes once `setup` has run (their descendants count too).
   * Default: weftd on every node. Paths that forward with other programs (bench/refs/) say so.
   */
  forwarderPids?(cluster: Cluster): number[];
}

/** wireguard with per-node device names, so several wireguard-go instances share one host. */
async function startWireguard(cluster: Cluster): Promise<void> {
  cluster.writeNetConf('wireguard');
  for (const n of cluster.nodes) {
    cluster.startWeftd(n, { backend: 'wireguard', extraArgs: ['--tun-name', `wg-${n.name}`] });
  }
  for (const n of cluster.nodes) await cluster.attachPods(n, await cluster.waitWeftdReady(n));
}

export const PATHS: readonly PathSpec[] = [
  {
    id: 'direct',
    name: 'direct routing',
    overheadBytes: 0,
    how: 'kernel routes, no encapsulation (the upper bound)',
    userspace: false,
    setup: (c) => c.setupDirectRouting(),
  },
  {
    id: 'kernel-vxlan',
    name: 'kernel VXLAN',
    overheadBytes: 50,
    how: 'Linux vxlan device programmed by hand (the reference)',
    userspace: false,
    setup: (c) => c.setupKernelVxlan(),
  },
  {
    id: 'udp',
    name: 'weft udp',
    overheadBytes: 28,
    how: 'TUN -> weftd -> UDP 8285 (IP packet as payload); TCP super-packets whole through a tunnel-GSO TAP',
    userspace: true,
    setup: async (c) => void (await c.startWeftdAll({ backend: 'udp' })),
  },
  {
    id: 'udp-w2',
    name: 'weft udp, 2 workers',
    overheadBytes: 28,
    how: 'weft udp with --workers 2: two TUN queues, two threads, reuseport steering',
    userspace: true,
    setup: async (c) => void (await c.startWeftdAll({ backend: 'udp', extraArgs: ['--workers', '2'] })),
  },
  {
    id: 'udp-seg',
    name: 'weft udp, no tunnel GSO',
    overheadBytes: 28,
    how: 'weft udp with --tunnel-gso=false: weftd segments every TCP super-packet itself (UDP GSO)',
    userspace: true,
    setup: async (c) => void (await c.startWeftdAll({ backend: 'udp', extraArgs: ['--tunnel-gso=false'] })),
  },
  {
    id: 'vxlan-user',
    name: 'weft vxlan (userspace)',
    overheadBytes: 50,
    how: 'TUN -> weftd -> VXLAN 8472 (RFC 7348)',
    userspace: true,
    setup: async (c) =>
      void (await c.startWeftdAll({ backend: 'vxlan', backendOptions: { Dataplane: 'userspace' } })),
  },
  {
    id: 'vxlan-user-w2',
    name: 'weft vxlan (userspace), 2 workers',
    overheadBytes: 50,
    how: 'weft userspace vxlan with --workers 2',
    userspace: true,
    setup: async (c) =>
      void (await c.startWeftdAll({
        backend: 'vxlan',
        backendOptions: { Dataplane: 'userspace' },
        extraArgs: ['--workers', '2'],
      })),
  },
  {
    id: 'vxlan-user-seg',
    name: 'weft vxlan (userspace), no tunnel GSO',
    overheadBytes: 50,
    how: 'weft userspace vxlan with --tunnel-gso=false',
    userspace: true,
    setup: async (c) =>
      void (await c.startWeftdAll({
        backend: 'vxlan',
        backendOptions: { Dataplane: 'userspace' },
        extraArgs: ['--tunnel-gso=false'],
      })),
  },
  {
    id: 'vxlan-kernel',
    name: 'weft vxlan (kernel)',
    overheadBytes: 50,
    how: 'weftd programs a kernel vxlan device, FDB and neighbours',
    userspace: false,
    setup: async (c) =>
      void (await c.startWeftdAll({ backend: 'vxlan', backendOptions: { Dataplane: 'kernel' } })),
  },
  {
    id: 'host-gw',
    name: 'weft host-gw',
    overheadBytes: 0,
    how: 'weftd programs plain routes via peer node addresses',
    userspace: false,
    setup: async (c) => void (await c.startWeftdAll({ backend: 'host-gw' })),
  },
  {
    id: 'wireguard',
    name: 'weft wireguard',
    overheadBytes: 60,
    how: 'weftd configures wireguard-go (encrypted, userspace)',
    userspace: true,
    setup: startWireguard,
  },
];

export function selectPaths(only: string | undefined): PathSpec[] {
  if (!only) return [...PATHS];
  const ids = only.split(',').map((s) => s.trim());
  const unknown = ids.filter((id) => !PATHS.some((p) => p.id === id));
  if (unknown.length > 0) {
    throw new Error(`unknown path ${unknown.join(', ')}; choose from ${PATHS.map((p) => p.id).join(', ')}`);
  }
  return PATHS.filter((p) => ids.includes(p.id));
}
