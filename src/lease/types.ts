/**
 * Leases: who owns which pod subnet, and how to reach them.
 *
 * A LeaseStore is the only thing the daemon knows about where leases live. One folder per
 * store: src/lease/embedded (file-backed, no server, for the demo and tests),
 * src/lease/etcd (flannel's etcd v3 layout), src/lease/kube (Node spec.podCIDR + annotations).
 * Policy (which subnet to pick, when to renew) lives apart from storage where it can.
 */
import type { Ipv4Cidr } from '../routing/ipv4.ts';

/** flannel's net-conf.json, validated (see src/daemon/netconf.ts). */
export interface NetworkConfig {
  readonly network: Ipv4Cidr;
  readonly subnetLen: number;
  readonly subnetMin: number;
  readonly subnetMax: number;
  readonly enableIPv4: boolean;
  readonly backend: BackendConfig;
  /** The JSON as given, for stores that must write it back verbatim. */
  readonly raw: Readonly<Record<string, unknown>>;
}

/** `Backend` of net-conf.json: Type plus backend-specific options (Port, VNI, ...). */
export interface BackendConfig {
  readonly type: string;
  readonly [option: string]: unknown;
}

/** What a node publishes about itself in its lease (flannel's LeaseAttrs). */
export interface LeaseAttrs {
  /** Underlay address peers send to (dotted quad). */
  readonly publicIp: string;
  readonly publicIpv6?: string | null;
  readonly backendType: string;
  /** Backend-specific JSON, e.g. {"VNI":1,"VtepMAC":"aa:bb:.."} for vxlan. */
  readonly backendData: unknown;
}

export interface Lease {
  readonly subnet: Ipv4Cidr;
  readonly attrs: LeaseAttrs;
  /** Expiry in ms since the epoch; Infinity when the store has no expiry (kube, reservations). */
  readonly expiresAt: number;
}

/** One change to the peer set, as produced by reconcile (src/lease/reconcile.ts). */
export type LeaseEvent =
  | { readonly type: 'added'; readonly lease: Lease }
  | { readonly type: 'removed'; readonly lease: Lease };

export interface AcquireOptions {
  /** Subnet from the previous subnet file, reused when still free. */
  readonly previousSubnet?: Ipv4Cidr;
  readonly signal?: AbortSignal;
}

export interface WatchOptions {
  readonly signal: AbortSignal;
  /**
   * Called with each batch of peer changes (never with our own lease). The first call
   * carries the full current peer set as `added` events (possibly empty).
   */
  readonly onEvents: (events: readonly LeaseEvent[]) => void;
  /** Called when our own lease disappears or changes under us (deleted, expired, taken). */
  readonly onOwnLeaseLost?: (subnet: Ipv4Cidr) => void;
}

export interface LeaseStore {
  /** Short name for logs and metrics: "embedded", "etcd", "kube". */
  readonly name: string;
  /** The network config this store serves (etcd: <prefix>/config; others: local file). */
  getNetworkConfig(signal?: AbortSignal): Promise<NetworkConfig>;
  /** Acquires (or reuses) a lease for `attrs`. */
  acquire(attrs: LeaseAttrs, opts?: AcquireOptions): Promise<Lease>;
  /** Extends `lease`; returns the lease with its new expiry. */
  renew(lease: Lease, signal?: AbortSignal): Promise<Lease>;
  /** Gives the lease back (graceful shutdown with release requested). Idempotent. */
  release(lease: Lease): Promise<void>;
  /**
   * Watches peers' leases (excluding `ownSubnet`) until `opts.signal` aborts. Resolves
   * when aborted; reconnects/relists internally on transient failures.
   */
  watch(ownSubnet: Ipv4Cidr, opts: WatchOptions): Promise<void>;
  close(): Promise<void>;
}
