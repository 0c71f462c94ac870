/**
 * Backend: one way of carrying pod traffic between nodes. One folder per backend
 * (src/backend/udp, src/backend/vxlan, src/backend/hostgw), selected by the network
 * config's Backend.Type through src/backend/registry.ts.
 *
 * Life cycle, driven by the daemon:
 *   1. prepare()          -> what to publish in our lease (BackendType/BackendData) and the MTU
 *   2. (daemon acquires the lease with those attrs)
 *   3. start(lease)       -> devices up, data path running
 *   4. applyPeers(events) -> many times, as peers' leases come and go (within 1 s)
 *   5. stop()             -> removes everything start() created
 */
import type { Lease, LeaseEvent, NetworkConfig } from '../lease/types.ts';
import type { Logger } from '../util/log.ts';
import type { ForwarderSnapshot } from '../dataplane/forwarder.ts';

export interface BackendContext {
  readonly network: NetworkConfig;
  /** Underlay interface name and its address (uint32) and MTU. */
  readonly underlay: { readonly iface: string; readonly addr: number; readonly mtu: number };
  /** Address to advertise to peers (uint32); differs from underlay.addr behind NAT. */
  readonly publicIp: number;
  /** Directory for state kept across restarts (VTEP MAC, keys). */
  readonly stateDir: string;
  readonly log: Logger;
  /** Turns off TUN/UDP offloads (everything still works, slower). */
  readonly offloads: boolean;
  /**
   * Forwarding threads of a userspace data path (weftd --workers; default 1 = the main
   * thread only). Kernel data paths ignore it.
   */
  readonly workers?: number;
  /**
   * Busy-poll window of a userspace forwarder after traffic, in µs (weftd --busy-poll-us;
   * default DEFAULT_BUSY_POLL_US; 0 = off). Kernel data paths ignore it.
   */
  readonly busyPollUs?: number;
  /**
   * Tunnel GSO (weftd --tunnel-gso): whole TCP super-packets go to the kernel as one
   * UDP-tunnel GSO packet each, through a TAP device, and the kernel cuts them into the
   * wire format (src/backend/tunnel-gso.ts), for peers whose lease says they take them.
   * Userspace data paths only; absent = off (weftd turns it on unless --tunnel-gso=false).
   */
  readonly tunnelGso?: boolean;
  /**
   * How long after tunnel GSO's guard gave up on the TAP (the node dropped its packets) it
   * is tried again, ms, doubling at each further give-up up to an hour (weftd
   * --tunnel-gso-retry; default DEFAULT_TUNNEL_RETRY_MS; 0 = never).
   */
  readonly tunnelGsoRetryMs?: number;
}

export interface PreparedBackend {
  readonly backendType: string;
  readonly backendData: unknown;
  /** MTU pods must use (written to the subnet file as FLANNEL_MTU). */
  readonly mtu: number;
}

/** Counters a backend exposes; userspace backends fill all, kernel ones what they can. */
export interface BackendStats {
  readonly [name: string]: number | Readonly<Record<string, number>>;
}

/** What metrics and status need to know about a backend's data path. */
export interface DataplaneInfo {
  /** Who moves the packets: weft's userspace forwarder, or the kernel. */
  readonly dataplane: 'userspace' | 'kernel';
  /** The userspace forwarder's counters (undefined for kernel data paths or before start). */
  readonly forwarder?: ForwarderSnapshot;
  /** Offloads in use (tunVnetHdr, tunTso, tunUso, udpGso, udpGro, ...). */
  readonly offloads: Readonly<Record<string, boolean>>;
}

export interface Backend {
  readonly type: string;
  /** Data path facts for metrics (optional: backends without one report none). */
  dataplaneInfo?(): DataplaneInfo;
  prepare(): Promise<PreparedBackend>;
  start(lease: Lease, signal: AbortSignal): Promise<void>;
  applyPeers(events: readonly LeaseEvent[]): void;
  stats(): BackendStats;
  stop(): Promise<void>;
}

export type BackendFactory = (ctx: BackendContext) => Backend;
