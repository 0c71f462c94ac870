/**
 * Forwarder counters: plain typed arrays bumped in the data path (no objects, no logging
 * per packet), turned into plain numbers by snapshot() at the edges (metrics, status).
 */
import { DROP_REASON_COUNT, DROP_REASON_NAMES, DropReason } from '../encap/drop-reason.ts';

export { DropReason, DROP_REASON_COUNT, DROP_REASON_NAMES };

/** Indexes into ForwarderStats.counters. */
export const Counter = {
  /** Packets / bytes read from the TUN device. */
  tunReadPackets: 0,
  tunReadBytes: 1,
  /** Packets / bytes written to the TUN device (decapsulated, plus ICMP replies). */
  tunWritePackets: 2,
  tunWriteBytes: 3,
  /** Datagrams / bytes (UDP payload) sent on the socket. */
  sendPackets: 4,
  sendBytes: 5,
  /** Datagrams / bytes received on the socket. */
  recvPackets: 6,
  recvBytes: 7,
  /** ICMP net-unreachable replies written to the TUN. */
  icmpUnreachableSent: 8,
  /** Non-empty TUN reads / socket receives (batches). */
  tunReadBatches: 9,
  recvBatches: 10,
  /** Turns that stopped at maxBatchesPerTurn with data still coming (fairness yields). */
  tunTurnYields: 11,
  recvTurnYields: 12,
  /** Busy-poll windows that found traffic (handled without sleeping) / that ran out. */
  busyPollHits: 13,
  busyPollMisses: 14,
  /** Turns after which empty busy-poll windows had already used their budget (10% of wall time). */
  busyPollSkipped: 15,
  /** Small turns after which no window ran because bulk traffic was flowing (BUSY_POLL_BULK_QUIET_MS). */
  busyPollBulk: 16,
} as const;
export type Counter = (typeof Counter)[keyof typeof Counter];
const COUNTER_COUNT = 17;
const COUNTER_NAMES: readonly string[] = (() => {
  const names = new Array<string>(COUNTER_COUNT).fill('');
  for (const [name, i] of Object.entries(Counter)) names[i] = name;
  return names;
})();

/** Batch-size histogram buckets: [1], [2,3], [4,7], ..., [128, inf). */
export const BATCH_BUCKETS = 8;
export const BATCH_BUCKET_LABELS: readonly string[] = [
  '1',
  '2-3',
  '4-7',
  '8-15',
  '16-31',
  '32-63',
  '64-127',
  '128+',
];

export interface PeerCounters {
  readonly id: number;
  readonly txPackets: number;
  readonly txBytes: number;
  readonly rxPackets: number;
  readonly rxBytes: number;
}

export interface StatsSnapshot {
  readonly counters: Readonly<Record<string, number>>;
  readonly drops: Readonly<Record<string, number>>;
  /** Histograms of batch sizes, bucket i as in BATCH_BUCKET_LABELS. */
  readonly batchSizes: { readonly tunRead: readonly number[]; readonly recv: readonly number[] };
  /** Peers with a non-zero counter. */
  readonly peers: readonly PeerCounters[];
}

export class ForwarderStats {
  readonly counters = new Float64Array(COUNTER_COUNT);
  readonly drops = new Float64Array(DROP_REASON_COUNT);
  readonly tunReadSizes = new Float64Array(BATCH_BUCKETS);
  readonly recvSizes = new Float64Array(BATCH_BUCKETS);
  /** Per-peer counters indexed by Peer.id; grown by ensurePeer (outside the data path). */
  peerTxPackets: Float64Array = new Float64Array(16);
  peerTxBytes: Float64Array = new Float64Array(16);
  peerRxPackets: Float64Array = new Float64Array(16);
  peerRxBytes: Float64Array = new Float64Array(16);

  /** Makes room for per-peer counters up to `id`. Called when peers change. */
  ensurePeer(id: number): void {
    if (!Number.isInteger(id) || id < 0) throw new RangeError(`peer id ${id} must be a non-negative integer`);
    let n = this.peerTxPackets.length;
    if (id < n) return;
    while (n <= id) n *= 2;
    this.peerTxPackets = grow(this.peerTxPackets, n);
    this.peerTxBytes = grow(this.peerTxBytes, n);
    this.peerRxPackets = grow(this.peerRxPackets, n);
    this.peerRxBytes = grow(this.peerRxBytes, n);
  }

  /** Zeroes a peer's counters (its id is being freed). */
  resetPeer(id: number): void {
    if (id < 0 || id >= this.peerTxPackets.length) return;
    this.peerTxPackets[id] = 0;
    this.peerTxBytes[id] = 0;
    this.peerRxPackets[id] = 0;
    this.peerRxBytes[id] = 0;
  }

  drop(reason: DropReason, n = 1): void {
    (this.drops[reason] as number) += n;
  }

  dropped(reason: DropReason): number {
    return this.drops[reason] as number;
  }

  get(counter: Counter): number {
    return this.counters[counter] as number;
  }

  /** Total drops over all reasons. */
  totalDrops(): number {
    let s = 0;
    for (let i = 0; i < this.drops.length; i++) s += this.drops[i] as number;
    return s;
  }

  snapshot(): StatsSnapshot {
    const counters: Record<string, number> = {};
    for (let i = 0; i < COUNTER_COUNT; i++) counters[COUNTER_NAMES[i] as string] = this.counters[i] as number;
    const drops: Record<string, number> = {};
    for (let i = 1; i < DROP_REASON_COUNT; i++)
      drops[DROP_REASON_NAMES[i] as string] = this.drops[i] as number;
    const peers: PeerCounters[] = [];
    for (let id = 0; id < this.peerTxPackets.length; id++) {
      const txPackets = this.peerTxPackets[id] as number;
      const rxPackets = this.peerRxPackets[id] as number;
      if (txPackets === 0 && rxPackets === 0) continue;
      peers.push({
        id,
        txPackets,
        txBytes: this.peerTxBytes[id] as number,
        rxPackets,
        rxBytes: this.peerRxBytes[id] as number,
      });
    }
    return {
      counters,
      drops,
      batchSizes: { tunRead: Array.from(this.tunReadSizes), recv: Array.from(this.recvSizes) },
      peers,
    };
  }
}

function grow(a: Float64Array, n: number): Float64Array {
  const b = new Float64Array(n);
  b.set(a);
  return b;
}

/** Histogram bucket for a batch of n >= 1 packets. */
export function batchBucket(n: number): number {
  const b = 31 - Math.clz32(n);
  return b < BATCH_BUCKETS ? b : BATCH_BUCKETS - 1;
}
