/**
 * The messages between the worker pool (main thread, pool.ts) and its forwarding threads
 * (worker.ts), typed in one place so both sides agree.
 *
 * Why plain data: everything crosses postMessage by structured clone, so Buffers arrive as
 * Uint8Array (the worker turns them back into Buffers) and counters travel as copies of the
 * ForwarderStats arrays, which also let a restarted or rebuilt worker continue them.
 */
import type { ForwarderSnapshot } from '../forwarder.ts';
import type { Peer } from '../peer.ts';
import type { Ipv4Cidr } from '../../routing/ipv4.ts';

/** The encapsulation a worker builds (the main forwarder's, described as data). */
export type EncapSpec =
  | { readonly kind: 'udp' }
  | { readonly kind: 'vxlan'; readonly vni: number; readonly localMac: Uint8Array };

/** A Peer after structured clone: vtepMac is a Uint8Array. */
export interface WirePeer extends Omit<Peer, 'vtepMac'> {
  readonly vtepMac?: Uint8Array | undefined;
}

/** ForwarderStats' arrays, copied. */
export interface RawStats {
  readonly counters: Float64Array;
  readonly drops: Float64Array;
  readonly tunReadSizes: Float64Array;
  readonly recvSizes: Float64Array;
  readonly peerTxPackets: Float64Array;
  readonly peerTxBytes: Float64Array;
  readonly peerRxPackets: Float64Array;
  readonly peerRxBytes: Float64Array;
}

/** What a worker needs to open its queue and socket and build its forwarder (workerData). */
export interface WorkerInit {
  /** 1..N-1 (0 is the main thread's forwarder). */
  readonly index: number;
  readonly tun: { readonly name: string; readonly mtu: number; readonly offloads: boolean };
  readonly conn: {
    readonly bindAddr: number;
    readonly port: number;
    readonly offloads: boolean;
    readonly rcvbuf?: number;
    readonly sndbuf?: number;
  };
  readonly encap: EncapSpec;
  readonly local: { readonly subnet: Ipv4Cidr; readonly tunAddr: number; readonly vtepMac?: Uint8Array };
  readonly port: number;
  readonly checkPeerPort: boolean;
  readonly icmpForIcmpQueries: boolean;
  readonly maxBatchesPerTurn: number;
  /** The main forwarder's busy-poll window (µs), where forwarders have one. */
  readonly busyPollUs?: number | undefined;
  readonly peers: readonly WirePeer[];
  /** Counters to continue (a restarted worker, or a pool rebuilt after a device repair). */
  readonly seed?: RawStats | undefined;
  /** How often the worker posts its counters unasked (ms). */
  readonly statsIntervalMs: number;
  /**
   * The main thread's multi-queue tunnel-GSO TAP (src/backend/tunnel-gso.ts): the worker
   * opens its own queue and attaches it to its socket. Absent: no tunnel GSO.
   */
  readonly tunnel?: { readonly name: string } | undefined;
}

/** The native layer's counters of a worker's TUN queue and socket (NativeTun/NativeConn stats()). */
export interface WorkerIo {
  readonly tunIo?: Readonly<Record<string, number>>;
  readonly connIo?: Readonly<Record<string, number>>;
}

/** Main thread -> worker. */
export type ToWorker =
  | { readonly type: 'setPeers'; readonly peers: readonly WirePeer[] }
  | { readonly type: 'addPeer'; readonly peer: WirePeer }
  | { readonly type: 'removePeer'; readonly id: number }
  | { readonly type: 'stats'; readonly seq: number }
  /** The TAP is not in use (the guard gave up on it, or it is lost): segment. */
  | { readonly type: 'detachTunnel' }
  /** The TAP `name` is (again) in use: open a queue of it and attach it to the socket. */
  | { readonly type: 'attachTunnel'; readonly name: string }
  | { readonly type: 'stop' };

/** A worker's counters at one moment. */
export interface WorkerStatsMessage {
  readonly type: 'stats';
  /** The request answered, or -1 for the periodic report. */
  readonly seq: number;
  readonly snapshot: ForwarderSnapshot;
  readonly raw: RawStats;
  readonly io: WorkerIo;
}

/** Worker -> main thread. */
export type FromWorker =
  | {
      readonly type: 'ready';
      readonly localPort: number;
      readonly tunOffloads: Readonly<Record<string, boolean>>;
      readonly connOffloads: Readonly<Record<string, boolean>>;
      /** Why the worker could not attach its queue of the tunnel-GSO TAP (it segments instead). */
      readonly tunnelError?: string;
    }
  | { readonly type: 'failed'; readonly message: string }
  /** Attaching a queue of the TAP (attachTunnel) failed: the worker segments in its socket. */
  | { readonly type: 'tunnelError'; readonly message: string }
  | WorkerStatsMessage
  | {
      readonly type: 'stopped';
      readonly snapshot: ForwarderSnapshot;
      readonly raw: RawStats;
      readonly io: WorkerIo;
    };
