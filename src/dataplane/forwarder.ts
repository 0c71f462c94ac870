/**
 * The userspace data path: TUN <-> encapsulation <-> UDP socket, in batches.
 *
 * TUN side: read a batch of IPv4 packets, validate, route (longest prefix match on the
 * destination) to a peer, decrement TTL, write the encap header into each slot's
 * headroom and send the whole batch to the peers' public addresses. No route: an ICMP
 * net unreachable goes back into the TUN. Socket side: receive a batch of datagrams,
 * check the sender is a known peer, strip the encap header, check the inner source is
 * that peer's and the destination ours, decrement TTL and write the batch to the TUN.
 *
 * Everything the loops touch is allocated in the constructor: batches, descriptor arrays,
 * bound handlers. Drops are compacted out of a batch by rewriting descriptors in place and
 * counted by reason; nothing throws or logs per packet. Devices are assumed level-triggered
 * (uv_poll semantics: onReadable fires again while data remains), and each turn handles at
 * most maxBatchesPerTurn batches per side so one busy direction cannot starve the event
 * loop; if a turn ends on a full batch it also schedules one continuation.
 *
 * The forwarder does not own the devices: stop() stops reading, the caller closes them.
 *
 * Busy polling (busyPollUs > 0, native devices only; src/dataplane/busy-poll.ts): after a
 * readiness handler has moved a few packets (BUSY_POLL_SMALL: latency-bound traffic, not
 * bulk), the forwarder keeps checking both devices for up to busyPollUs (yielding the CPU
 * between checks) and handles whatever arrives without going back to sleep; a window that
 * finds nothing, or a bulk turn, ends the session; after a bulk turn in either direction
 * there are no windows for BUSY_POLL_BULK_QUIET_MS (a stream's ACKs are small turns, and
 * spinning between its super-packets only takes CPU from it). A session is bounded
 * (BUSY_POLL_MAX_ROUNDS windows of small turns, BUSY_POLL_MAX_MS of waiting) so timers and
 * I/O of the rest of the daemon still run; level-triggered readiness picks up whatever is
 * left. Windows that find nothing are capped at BUSY_POLL_BUDGET of wall time; turns over
 * budget are counted as skipped.
 *
 * NAT keepalives (keepaliveIntervalMs > 0): every interval one small datagram goes to each
 * peer's advertised endpoint so NAT and firewall mappings in front of either node stay open.
 * It can never be taken for a packet of the wire format:
 *   - udp:   4 bytes 00 57 4b 41 ("\0WKA"): shorter than any IPv4 header, version nibble 0;
 *   - vxlan: 8 bytes, a bare VXLAN header (flags 0x08, our VNI) with no inner frame, which
 *            the Linux vxlan driver and our decap drop as too short.
 * A keepalive from a known peer is counted (keepaliveReceived) and dropped silently: never
 * written to the TUN, never counted as malformed or truncated. From an unknown sender it is
 * an unknownPeer drop like any other datagram. Traffic always goes to the peer's advertised
 * address (its lease): the source of a received datagram, keepalive or not, is never learned
 * as a new endpoint, because nothing in udp/vxlan authenticates it.
 */
import { DropReason } from '../encap/drop-reason.ts';
import type { Encap } from '../encap/encap.ts';
import { VXLAN_FLAG_I, VXLAN_HEADER } from '../encap/encap.ts';
import { buildIcmpUnreachable, ICMP_UNREACHABLE_MAX } from '../encap/icmp.ts';
import { ipv4DecrementTtl, ipv4Dst, ipv4Src, ipv4Validate } from '../encap/ipv4.ts';
import type { PacketConn } from '../conn/conn.ts';
import { ConfigError } from '../util/errors.ts';
import { cidrToKey, formatCidr, formatIpv4, prefixMask } from '../routing/ipv4.ts';
import type { Ipv4Cidr } from '../routing/ipv4.ts';
import { RouteTable } from '../routing/route-table.ts';
import { PacketBatch } from '../tun/batch.ts';
import type { TunDevice } from '../tun/tun.ts';
import type { Peer } from './peer.ts';
import { busyPollFor, BusyPollReady } from './busy-poll.ts';
import type { BusyPoll } from './busy-poll.ts';
import { batchBucket, Counter, ForwarderStats } from './stats.ts';
import type { StatsSnapshot } from './stats.ts';

export interface ForwarderLocal {
  /** Our pod subnet (the lease). Decapsulated packets must be addressed inside it. */
  readonly subnet: Ipv4Cidr;
  /** The TUN device's address: source of ICMP replies, also accepted as a destination. */
  readonly tunAddr: number;
  /** Our VTEP MAC (vxlan; informational here, the VxlanEncap carries it). */
  readonly vtepMac?: Buffer | undefined;
}

export interface ForwarderOptions {
  readonly tun: TunDevice;
  readonly conn: PacketConn;
  readonly encap: Encap;
  readonly local: ForwarderLocal;
  /** Destination port for peers whose `port` is 0 (flannel: one port per backend). */
  readonly port: number;
  /** Counters to fill (default: a new ForwarderStats). */
  readonly stats?: ForwarderStats;
  /**
   * Also require the sender's port to equal the peer's port (default: true for udp, whose
   * peers send from their fixed listening port; false for vxlan, where the kernel varies
   * the source port per flow).
   */
  readonly checkPeerPort?: boolean;
  /**
   * Answer ICMP queries (ping) for unrouted destinations with net unreachable too
   * (default false: like flannel, never answer ICMP; ICMP errors are never answered).
   */
  readonly icmpForIcmpQueries?: boolean;
  /** Packets per TUN read (default 64). */
  readonly tunBatchSize?: number;
  /** Receive buffers per socket receive, 64 KiB each (default 4; up to 64 datagrams each with GRO). */
  readonly recvMessages?: number;
  /** Batches per side per event-loop turn (default 16). */
  readonly maxBatchesPerTurn?: number;
  /** NAT keepalive to every peer this often (ms); 0 or absent = off. */
  readonly keepaliveIntervalMs?: number;
  /**
   * Busy-poll window after traffic, in microseconds (0 = off, sleep in the event loop at
   * once). Default DEFAULT_BUSY_POLL_US. Only native devices can be busy-polled.
   */
  readonly busyPollUs?: number;
  /** The poller for busy-poll windows (default: the native one over tun and conn; tests inject one). */
  readonly busyPoller?: BusyPoll;
}

/**
 * Default busy-poll window (µs). 100 µs covers a request/response round trip through a
 * peer on a warm path: measured here (docs/performance.md) it cut the UDP request/response
 * p50 from 93 to 61 µs with no measurable change in TCP throughput (BUSY_POLL_SMALL), and
 * BUSY_POLL_BUDGET caps what it can cost when small packets arrive just too slowly to hit.
 */
export const DEFAULT_BUSY_POLL_US = 100;
/**
 * Indexes of Forwarder.pollTimes: the start of the budget's current one-second epoch (the
 * first window starts one: the poller's clock may start anywhere), the ms that empty
 * windows took in it, and the end of the quiet period after bulk traffic.
 */
const Poll = { epoch: 0, spent: 1, quietUntil: 2 } as const;
/** Upper bound of busyPollUs (a window longer than this is a spinning daemon, not a window). */
export const MAX_BUSY_POLL_US = 10_000;
/** Windows per busy-poll session, and the time its windows may wait in all, before the event loop runs. */
const BUSY_POLL_MAX_ROUNDS = 32;
const BUSY_POLL_MAX_MS = 2;
/**
 * Busy-poll only after a turn that moved at most this many packets: request/response and
 * other latency-bound traffic. After a bulk turn (a TCP super-packet is ~46 packets) the
 * next readiness arrives on its own, and spinning would only take CPU from the traffic's
 * own processes (measured: -17% one-stream TCP on 2 shared cores without this rule, no
 * measurable loss with it). A turn's size also counts its bytes in 2 KiB units, so a turn
 * of whole 64 KiB super-packets (tunnel GSO: one descriptor each) is bulk too.
 */
const BUSY_POLL_SMALL = 8;
/** At most this share of wall time (per second) is spent in busy-poll windows that find nothing. */
const BUSY_POLL_BUDGET = 0.1;
/**
 * No busy poll for this long after a bulk turn in either direction. A TCP stream's small
 * turns are its ACKs going the other way, and the window after each of them mostly ends
 * in the stream's next super-packet, ~60 µs later: a hit, so the budget never stops it,
 * but every one of those spins (a poll and a sched_yield per check) is CPU taken from the
 * stream's own processes. Measured on the project's machine kind (system calls ~1 µs,
 * page-table isolation without PCID): a receiving weftd made 53% of its system calls in
 * such windows, one-stream TCP lost ~10% and CPU per Gbit rose ~35% against no busy
 * polling (docs/performance.md). Request/response traffic has no bulk turns and keeps
 * its windows.
 */
export const BUSY_POLL_BULK_QUIET_MS = 2;

/** udp keepalive payload: "\0WKA" (too short for IPv4, version nibble 0). */
export const UDP_KEEPALIVE = Buffer.from([0x00, 0x57, 0x4b, 0x41]);

/** The keepalive datagram for an encapsulation (a private copy). */
export function keepalivePayload(encap: Encap): Buffer {
  if (encap.name === 'udp') return Buffer.from(UDP_KEEPALIVE);
  const vni = (encap as Encap & { readonly vni: number }).vni;
  const h = Buffer.alloc(VXLAN_HEADER);
  h[0] = VXLAN_FLAG_I;
  h[4] = vni >>> 16;
  h[5] = (vni >>> 8) & 0xff;
  h[6] = vni & 0xff;
  return h;
}

export interface PeerStatus {
  readonly id: number;
  readonly leaseKey: string;
  readonly subnet: string;
  readonly publicIp: string;
  readonly port: number;
  /** The peer takes whole tunnel-GSO datagrams (its lease says so). */
  readonly tunnelGso: boolean;
  readonly txPackets: number;
  readonly txBytes: number;
  readonly rxPackets: number;
  readonly rxBytes: number;
}

export interface ForwarderSnapshot extends Omit<StatsSnapshot, 'peers'> {
  readonly running: boolean;
  readonly encap: string;
  readonly routes: number;
  readonly peers: readonly PeerStatus[];
}

export class Forwarder {
  readonly stats: ForwarderStats;
  readonly encap: Encap;
  readonly local: ForwarderLocal;
  readonly port: number;
  readonly checkPeerPort: boolean;
  readonly maxBatchesPerTurn: number;
  readonly icmpForIcmpQueries: boolean;
  readonly busyPollUs: number;

  private readonly tun: TunDevice;
  private readonly conn: PacketConn;
  private readonly routes = new RouteTable<Peer>();
  private readonly peersById = new Map<number, Peer>();
  /** Keyed by publicIp | 0 (a small integer to V8). */
  private readonly peersByIp = new Map<number, Peer>();
  private readonly localNet: number;
  private readonly localMask: number;

  private readonly tunBatch: PacketBatch;
  private readonly icmpBatch: PacketBatch;
  private readonly rxBatch: PacketBatch;
  /** Peer id of each outgoing descriptor, for per-peer counters after send. */
  private readonly txPeer: Int32Array;
  private readonly rxFullAt: number;

  private readonly onTun: () => void;
  private readonly onConn: () => void;
  private readonly continueTun: () => void;
  private readonly continueConn: () => void;
  private tunPending = false;
  private connPending = false;
  private readonly poller: BusyPoll | undefined;
  private polling = false;
  /** Size of the current readiness turn (or busy-poll round): packets + 2 KiB units of bytes. */
  private moved = 0;
  /**
   * Busy-poll bookkeeping, in ms of the poller's clock (see the Poll indexes): kept in a
   * typed array, where a value never changes a field's representation. Plain fields would
   * start as small integers and turn into doubles at the first fraction of a millisecond,
   * which invalidates the JIT's code for the whole loop (measured: deoptimised several
   * times over a few million packets, allocating while it ran unoptimised).
   */
  private readonly pollTimes = Float64Array.of(Number.NEGATIVE_INFINITY, 0, 0);
  private isRunning = false;

  /** Keepalive interval (ms, 0 = off), datagram, its send batch and counters. */
  readonly keepaliveIntervalMs: number;
  private readonly ka: Buffer;
  private readonly kaBatch: PacketBatch;
  /** [sent, received, send failures]. */
  private readonly kaCounters = new Float64Array(3);
  private kaTimer: NodeJS.Timeout | undefined;

  constructor(opts: ForwarderOptions) {
    this.tun = opts.tun;
    this.conn = opts.conn;
    this.encap = opts.encap;
    this.local = opts.local;
    this.port = opts.port;
    this.stats = opts.stats ?? new ForwarderStats();
    this.checkPeerPort = opts.checkPeerPort ?? opts.encap.name === 'udp';
    this.icmpForIcmpQueries = opts.icmpForIcmpQueries ?? false;
    this.maxBatchesPerTurn = positiveInt(opts.maxBatchesPerTurn ?? 16, 'maxBatchesPerTurn');
    this.localMask = prefixMask(opts.local.subnet.prefix);
    this.localNet = (opts.local.subnet.addr & this.localMask) >>> 0;

    const slots = positiveInt(opts.tunBatchSize ?? 64, 'tunBatchSize');
    // Headroom for the encap header, rounded up to 8 bytes (at least 8) so packets start aligned.
    const headroom = align(Math.max(opts.encap.headroom, 0), 8) || 8;
    const mtu = positiveInt(opts.tun.mtu, 'tun.mtu');
    this.tunBatch = PacketBatch.forTunRead(slots, align(headroom + mtu, 64), headroom);
    this.icmpBatch = PacketBatch.forSlots(slots, align(ICMP_UNREACHABLE_MAX, 32), 0);
    this.txPeer = new Int32Array(slots);
    const messages = positiveInt(opts.recvMessages ?? 4, 'recvMessages');
    this.rxBatch = PacketBatch.forReceive(messages);
    this.rxFullAt = messages;

    const kaMs = opts.keepaliveIntervalMs ?? 0;
    if (!Number.isInteger(kaMs) || kaMs < 0) {
      throw new ConfigError('keepaliveIntervalMs', `must be a non-negative integer, got ${kaMs}`);
    }
    this.keepaliveIntervalMs = kaMs;
    this.ka = keepalivePayload(opts.encap);
    this.kaBatch = PacketBatch.forSlots(64, 16, 0);
    for (let i = 0; i < this.kaBatch.capacity; i++)
      this.ka.copy(this.kaBatch.arena, this.kaBatch.slotStart(i));

    const bp = opts.busyPollUs ?? DEFAULT_BUSY_POLL_US;
    if (!Number.isInteger(bp) || bp < 0 || bp > MAX_BUSY_POLL_US) {
      throw new ConfigError('busyPollUs', `must be an integer from 0 to ${MAX_BUSY_POLL_US}, got ${bp}`);
    }
    this.busyPollUs = bp;
    this.poller = bp > 0 ? (opts.busyPoller ?? busyPollFor(opts.tun, opts.conn)) : undefined;

    this.onTun = () => {
      this.moved = 0;
      this.onTunReadable();
      this.afterTurn();
    };
    this.onConn = () => {
      this.moved = 0;
      this.onConnReadable();
      this.afterTurn();
    };
    this.continueTun = () => {
      this.tunPending = false;
      this.onTunReadable();
    };
    this.continueConn = () => {
      this.connPending = false;
      this.onConnReadable();
    };
  }

  get running(): boolean {
    return this.isRunning;
  }

  /** Starts reading both devices. Idempotent. */
  start(): void {
    if (this.isRunning) return;
    this.isRunning = true;
    this.tun.startReading(this.onTun);
    this.conn.startReading(this.onConn);
    if (this.keepaliveIntervalMs > 0) {
      this.kaTimer = setInterval(() => this.sendKeepalives(), this.keepaliveIntervalMs);
      this.kaTimer.unref();
    }
  }

  /** Stops reading both devices (does not close them). Idempotent. */
  stop(): void {
    if (!this.isRunning) return;
    this.isRunning = false;
    if (this.kaTimer !== undefined) clearInterval(this.kaTimer);
    this.kaTimer = undefined;
    this.tun.stopReading();
    this.conn.stopReading();
  }

  /**
   * Sends one keepalive to every peer's advertised endpoint now (the interval timer calls
   * this; public for tests). Returns how many went out.
   */
  sendKeepalives(): number {
    if (!this.isRunning) return 0;
    const b = this.kaBatch;
    const len = this.ka.length;
    let total = 0;
    let j = 0;
    const flush = (): void => {
      b.count = j;
      let sent = this.conn.send(b);
      if (sent < 0) sent = 0;
      if (sent > j) sent = j;
      total += sent;
      (this.kaCounters[0] as number) += sent;
      (this.kaCounters[2] as number) += j - sent;
      j = 0;
    };
    for (const p of this.peersById.values()) {
      b.offset[j] = b.slotStart(j);
      b.length[j] = len;
      b.addr[j] = p.publicIp;
      b.port[j] = p.port || this.port;
      j++;
      if (j === b.capacity) flush();
    }
    if (j > 0) flush();
    return total;
  }

  /** Replaces the whole peer set. Counters of peers that disappear are zeroed. */
  setPeers(peers: Iterable<Peer>): void {
    const next = new Map<number, Peer>();
    for (const p of peers) next.set(p.id, p);
    for (const id of this.peersById.keys()) if (!next.has(id)) this.stats.resetPeer(id);
    this.routes.clear();
    this.peersById.clear();
    this.peersByIp.clear();
    for (const p of next.values()) this.addPeer(p);
  }

  /**
   * Adds a peer, or replaces the one with the same id (e.g. its public IP changed; its
   * counters are kept). A different peer holding the same subnet is displaced.
   */
  addPeer(peer: Peer): void {
    checkPeer(peer);
    this.stats.ensurePeer(peer.id);
    const old = this.peersById.get(peer.id);
    if (old !== undefined) this.unlink(old);
    const displaced = this.routes.get(peer.subnet);
    if (displaced !== undefined && displaced.id !== peer.id) this.unlink(displaced);
    this.routes.replace(peer.subnet, peer);
    this.peersById.set(peer.id, peer);
    this.peersByIp.set(peer.publicIp | 0, peer);
  }

  /** Removes a peer (by id or by the Peer); its counters are zeroed. Returns whether it was present. */
  removePeer(peer: Peer | number): boolean {
    const id = typeof peer === 'number' ? peer : peer.id;
    const p = this.peersById.get(id);
    if (p === undefined) return false;
    this.unlink(p);
    this.stats.resetPeer(id);
    return true;
  }

  private unlink(p: Peer): void {
    this.peersById.delete(p.id);
    if (this.routes.get(p.subnet) === p) this.routes.remove(p.subnet);
    const key = p.publicIp | 0;
    if (this.peersByIp.get(key) === p) {
      this.peersByIp.delete(key);
      for (const other of this.peersById.values()) {
        if ((other.publicIp | 0) === key) {
          this.peersByIp.set(key, other);
          break;
        }
      }
    }
  }

  /** Current peers (allocates; for status). */
  peers(): Peer[] {
    return Array.from(this.peersById.values());
  }

  /** The peer a destination address routes to (longest prefix match). */
  lookup(addr: number): Peer | undefined {
    return this.routes.lookup(addr);
  }

  snapshot(): ForwarderSnapshot {
    const s = this.stats.snapshot();
    const st = this.stats;
    const peers: PeerStatus[] = [];
    for (const p of this.peersById.values()) {
      peers.push({
        id: p.id,
        leaseKey: p.leaseKey || cidrToKey(p.subnet),
        subnet: formatCidr(p.subnet),
        publicIp: formatIpv4(p.publicIp),
        port: p.port || this.port,
        tunnelGso: p.tunnelGso === true,
        txPackets: st.peerTxPackets[p.id] ?? 0,
        txBytes: st.peerTxBytes[p.id] ?? 0,
        rxPackets: st.peerRxPackets[p.id] ?? 0,
        rxBytes: st.peerRxBytes[p.id] ?? 0,
      });
    }
    peers.sort((a, b) => a.id - b.id);
    const ka = this.kaCounters;
    return {
      counters: {
        ...s.counters,
        keepaliveSent: ka[0] as number,
        keepaliveReceived: ka[1] as number,
        keepaliveSendFailed: ka[2] as number,
      },
      drops: s.drops,
      batchSizes: s.batchSizes,
      running: this.isRunning,
      encap: this.encap.name,
      routes: this.routes.size,
      peers,
    };
  }

  /** TUN readiness handler (public for benchmarks and tests that drive the loop by hand). */
  onTunReadable(): void {
    if (!this.isRunning) return;
    const batch = this.tunBatch;
    for (let turn = 0; turn < this.maxBatchesPerTurn; turn++) {
      batch.count = 0;
      const n = this.tun.read(batch);
      if (n <= 0) return;
      this.forwardFromTun(n);
      if (n < batch.capacity) return;
    }
    (this.stats.counters[Counter.tunTurnYields] as number)++;
    if (!this.tunPending) {
      this.tunPending = true;
      setImmediate(this.continueTun);
    }
  }

  /**
   * After a readiness turn: a bulk turn starts (or extends) a quiet period without busy
   * polling; a small turn outside one starts a busy-poll session.
   */
  private afterTurn(): void {
    const poller = this.poller;
    if (poller === undefined || this.polling || !this.isRunning) return;
    poller.wait(0); // only reads the clock (no system call): the budget's epoch needs it fresh too
    const now = poller.clock[0] as number;
    if (this.moved > BUSY_POLL_SMALL) {
      this.pollTimes[Poll.quietUntil] = now + BUSY_POLL_BULK_QUIET_MS;
      return;
    }
    if (now < (this.pollTimes[Poll.quietUntil] as number)) {
      (this.stats.counters[Counter.busyPollBulk] as number)++;
      return;
    }
    this.busyPoll();
  }

  /**
   * One busy-poll session (see the header): windows of busyPollUs until one finds nothing,
   * or the session's bounds are reached. Re-entry (a handler called from inside) is a no-op.
   */
  private busyPoll(): void {
    const poller = this.poller;
    if (poller === undefined || this.polling || !this.isRunning) return;
    const counters = this.stats.counters;
    // The poller's clock (written by each wait, allocation-free): the time the last window
    // ended, fresh enough to start a new one-second epoch of the budget.
    const clock = poller.clock;
    const t = this.pollTimes;
    if ((clock[0] as number) - (t[Poll.epoch] as number) >= 1000) {
      t[Poll.epoch] = clock[0] as number;
      t[Poll.spent] = 0;
    }
    if ((t[Poll.spent] as number) >= 1000 * BUSY_POLL_BUDGET) {
      poller.wait(0); // only reads the clock: has the epoch run out since the last window?
      if ((clock[0] as number) - (t[Poll.epoch] as number) < 1000) {
        (counters[Counter.busyPollSkipped] as number)++;
        return;
      }
      t[Poll.epoch] = clock[0] as number;
      t[Poll.spent] = 0;
    }
    this.polling = true;
    let waitedMs = 0;
    try {
      for (let round = 0; round < BUSY_POLL_MAX_ROUNDS && this.isRunning; round++) {
        const ready = poller.wait(this.busyPollUs);
        const took = clock[1] as number;
        waitedMs += took;
        if (ready === 0) {
          // Only windows that found nothing count against the budget: a hit handled
          // traffic that would otherwise have cost a sleep and a wake-up.
          (t[Poll.spent] as number) += took;
          (counters[Counter.busyPollMisses] as number)++;
          return;
        }
        (counters[Counter.busyPollHits] as number)++;
        this.moved = 0;
        if ((ready & BusyPollReady.tun) !== 0) this.onTunReadable();
        if ((ready & BusyPollReady.conn) !== 0) this.onConnReadable();
        if (this.moved > BUSY_POLL_SMALL) {
          // The window found bulk traffic: the quiet period starts (see afterTurn).
          t[Poll.quietUntil] = (clock[0] as number) + BUSY_POLL_BULK_QUIET_MS;
          return;
        }
        if (waitedMs >= BUSY_POLL_MAX_MS) return;
      }
    } finally {
      this.polling = false;
    }
  }

  /** Socket readiness handler (public for benchmarks and tests that drive the loop by hand). */
  onConnReadable(): void {
    if (!this.isRunning) return;
    const batch = this.rxBatch;
    for (let turn = 0; turn < this.maxBatchesPerTurn; turn++) {
      batch.count = 0;
      const n = this.conn.recv(batch);
      if (n <= 0) return;
      this.forwardFromConn(n);
      if (n < this.rxFullAt) return;
    }
    (this.stats.counters[Counter.recvTurnYields] as number)++;
    if (!this.connPending) {
      this.connPending = true;
      setImmediate(this.continueConn);
    }
  }

  private forwardFromTun(n: number): void {
    const batch = this.tunBatch;
    const arena = batch.arena;
    const offsets = batch.offset;
    const lengths = batch.length;
    const encap = this.encap;
    const headroom = encap.headroom;
    const routes = this.routes;
    const stats = this.stats;
    const counters = stats.counters;
    const drops = stats.drops;
    const txPeer = this.txPeer;
    const icmp = this.icmpBatch;
    icmp.count = 0;
    let readBytes = 0;
    let j = 0;
    // The segments of one super-packet share their destination: look a run up once. The
    // cache lives for one batch only, so route changes between batches always apply.
    let lastDst = -1;
    let lastPeer: Peer | undefined;
    for (let i = 0; i < n; i++) {
      const off = offsets[i] as number;
      const len = lengths[i] as number;
      readBytes += len;
      const total = ipv4Validate(arena, off, len);
      if (total <= 0) {
        (drops[-total] as number)++;
        continue;
      }
      if ((arena[off + 8] as number) <= 1) {
        (drops[DropReason.ttlExpired] as number)++;
        continue;
      }
      const dst = ipv4Dst(arena, off);
      if (dst !== lastDst) {
        lastDst = dst;
        lastPeer = routes.lookup(dst);
      }
      const peer = lastPeer;
      if (peer === undefined) {
        (drops[DropReason.noRoute] as number)++;
        const k = icmp.count;
        if (k < icmp.capacity) {
          const at = icmp.slotStart(k);
          const rlen = buildIcmpUnreachable(
            arena,
            off,
            total,
            icmp.arena,
            at,
            this.local.tunAddr,
            this.icmpForIcmpQueries,
          );
          if (rlen > 0) icmp.push(at, rlen);
        }
        continue;
      }
      ipv4DecrementTtl(arena, off);
      const start = encap.encapsulate(arena, off, total, peer);
      if (start < 0) {
        (drops[-start] as number)++;
        continue;
      }
      // A whole super-packet (tunnel GSO) goes out whole only to a peer that takes it.
      if (peer.tunnelGso === true) batch.sendWhole(start);
      offsets[j] = start;
      lengths[j] = total + headroom;
      batch.addr[j] = peer.publicIp;
      batch.port[j] = peer.port || this.port;
      txPeer[j] = peer.id;
      j++;
    }
    (counters[Counter.tunReadPackets] as number) += n;
    (counters[Counter.tunReadBytes] as number) += readBytes;
    // A turn's size for busy polling: packets, and 2 KiB units of bytes (a whole
    // super-packet from tunnel GSO is one descriptor, but bulk).
    this.moved += n + (readBytes >> 11);
    (counters[Counter.tunReadBatches] as number)++;
    (stats.tunReadSizes[batchBucket(n)] as number)++;
    batch.count = j;
    if (j > 0) {
      let sent = this.conn.send(batch);
      if (sent < 0) sent = 0;
      if (sent > j) sent = j;
      let bytes = 0;
      const pTx = stats.peerTxPackets;
      const pTxB = stats.peerTxBytes;
      for (let k = 0; k < sent; k++) {
        const id = txPeer[k] as number;
        const l = lengths[k] as number;
        bytes += l;
        (pTx[id] as number)++;
        (pTxB[id] as number) += l;
      }
      (counters[Counter.sendPackets] as number) += sent;
      (counters[Counter.sendBytes] as number) += bytes;
      if (sent < j) (drops[DropReason.send] as number) += j - sent;
    }
    if (icmp.count > 0) this.writeTun(icmp, true);
  }

  private forwardFromConn(n: number): void {
    const batch = this.rxBatch;
    const arena = batch.arena;
    const offsets = batch.offset;
    const lengths = batch.length;
    const addrs = batch.addr;
    const ports = batch.port;
    const encap = this.encap;
    const headroom = encap.headroom;
    const byIp = this.peersByIp;
    const checkPort = this.checkPeerPort;
    const defaultPort = this.port;
    const localNet = this.localNet;
    const localMask = this.localMask;
    const tunAddr = this.local.tunAddr;
    const stats = this.stats;
    const counters = stats.counters;
    const drops = stats.drops;
    const pRx = stats.peerRxPackets;
    const pRxB = stats.peerRxBytes;
    const ka = this.ka;
    const kaLen = ka.length;
    let recvBytes = 0;
    let j = 0;
    // The datagrams of one GRO message share their sender: look a run up once per batch.
    let lastSrc = -1;
    let lastSender: Peer | undefined;
    for (let i = 0; i < n; i++) {
      const off = offsets[i] as number;
      const len = lengths[i] as number;
      recvBytes += len;
      const src = addrs[i] as number;
      if (src !== lastSrc) {
        lastSrc = src;
        lastSender = byIp.get(src | 0);
      }
      const peer = lastSender;
      if (
        peer === undefined ||
        peer.publicIp !== src ||
        (checkPort && ports[i] !== (peer.port || defaultPort))
      ) {
        (drops[DropReason.unknownPeer] as number)++;
        continue;
      }
      if (len === kaLen && isKeepalive(arena, off, ka)) {
        (this.kaCounters[1] as number)++;
        continue;
      }
      const why = encap.decapsulate(arena, off, len);
      if (why !== DropReason.none) {
        (drops[why] as number)++;
        continue;
      }
      const ioff = off + headroom;
      const total = ipv4Validate(arena, ioff, len - headroom);
      if (total <= 0) {
        (drops[-total] as number)++;
        continue;
      }
      const isrc = ipv4Src(arena, ioff);
      const sub = peer.subnet;
      if ((isrc & prefixMask(sub.prefix)) >>> 0 !== sub.addr && isrc !== peer.publicIp) {
        (drops[DropReason.spoofedSource] as number)++;
        continue;
      }
      const idst = ipv4Dst(arena, ioff);
      if ((idst & localMask) >>> 0 !== localNet && idst !== tunAddr) {
        (drops[DropReason.notForUs] as number)++;
        continue;
      }
      if (!ipv4DecrementTtl(arena, ioff)) {
        (drops[DropReason.ttlExpired] as number)++;
        continue;
      }
      offsets[j] = ioff;
      lengths[j] = total;
      j++;
      const id = peer.id;
      (pRx[id] as number)++;
      (pRxB[id] as number) += total;
    }
    (counters[Counter.recvPackets] as number) += n;
    (counters[Counter.recvBytes] as number) += recvBytes;
    this.moved += n + (recvBytes >> 11);
    (counters[Counter.recvBatches] as number)++;
    (stats.recvSizes[batchBucket(n)] as number)++;
    batch.count = j;
    if (j > 0) this.writeTun(batch, false);
  }

  private writeTun(batch: PacketBatch, icmp: boolean): void {
    const j = batch.count;
    let w = this.tun.write(batch);
    if (w < 0) w = 0;
    if (w > j) w = j;
    let bytes = 0;
    for (let k = 0; k < w; k++) bytes += batch.length[k] as number;
    const counters = this.stats.counters;
    (counters[Counter.tunWritePackets] as number) += w;
    (counters[Counter.tunWriteBytes] as number) += bytes;
    if (icmp) (counters[Counter.icmpUnreachableSent] as number) += w;
    if (w < j) (this.stats.drops[DropReason.tunWrite] as number) += j - w;
  }
}

function isKeepalive(arena: Buffer, off: number, ka: Buffer): boolean {
  for (let k = 0; k < ka.length; k++) if (arena[off + k] !== ka[k]) return false;
  return true;
}

function align(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

function positiveInt(n: number, what: string): number {
  if (!Number.isInteger(n) || n <= 0) throw new ConfigError(what, `must be a positive integer, got ${n}`);
  return n;
}

function checkPeer(p: Peer): void {
  if (!Number.isInteger(p.id) || p.id < 0) {
    throw new ConfigError('peer.id', `peer ${p.leaseKey} has id ${p.id}; use PeerIdAllocator for dense ids`);
  }
  if (p.vtepMac !== undefined && p.vtepMac.length !== 6) {
    throw new ConfigError(
      'peer.vtepMac',
      `peer ${p.leaseKey} has a ${p.vtepMac.length}-byte VTEP MAC; it must have 6`,
    );
  }
}
