/**
 * Tunnel GSO (weftd --tunnel-gso, on by default): the send side of a userspace data path
 * without segmentation.
 *
 * Normally the native TUN read cuts every 64 KiB TCP super-packet into MTU-sized packets
 * (a copy and a checksum per byte), JS handles each of them, and the socket sends them as
 * a UDP GSO message. With tunnel GSO the TUN hands the super-packet up whole, JS routes and
 * encapsulates it once, and the socket writes it, behind Ethernet + outer IPv4 + UDP
 * headers, to a TAP device with a vnet header that marks it as a UDP-tunnel GSO packet
 * (kernel 6.17+). The node's stack forwards it like kernel VXLAN's own packets and the
 * egress device, or the kernel's software GSO, cuts it into ordinary datagrams of the wire
 * format (flannel udp, or VXLAN): peers see exactly what they saw before.
 *
 * Except on an underlay that carries GSO packets whole (veth, bridges: containers as nodes,
 * kind, these tests): there the peer's socket receives the super-packet as one 64 KiB
 * datagram. weft with offloads writes it to its TUN as one GSO write, and Linux's vxlan
 * takes it as it takes its own, but flannel's udp proxy (or a weft without offloads) cannot.
 * So a node says in its lease that it takes them (BackendData `"TunnelGSO": true`, see
 * takesTunnelGso) and only such peers get whole super-packets; for every other peer the
 * socket segments them (connIo.tunnelPeerSegmented).
 *
 * What it needs from the node, checked here (weft falls back to segmenting, with a
 * warning, when one is missing): the kernel accepts the TAP's tunnel offload, IPv4
 * forwarding is on (it is on every overlay node), and reverse-path filtering is not strict
 * for all interfaces (the packets enter on the TAP with one of the node's own addresses as
 * their source). What it cannot check up front: a FORWARD chain that drops traffic between
 * the node's own addresses would drop these packets; the guard (TunnelGsoGuard) sees the
 * underlay send less than went to the TAP and detaches it within a few seconds. It is tried
 * again only with weftd --tunnel-gso-retry (each retry against a firewall that still drops
 * stalls bulk flows while the guard judges); a TAP deleted, replaced or set down is put
 * right and attached again at the next check (TunnelGsoTap.maintain).
 *
 * Without a TAP (tunnel GSO off, or the guard or a failed write detached it) the TUN still
 * hands super-packets up whole whenever it has offloads, and the socket cuts them into UDP
 * GSO messages itself (connIo.tunnelOff / tunnelFallbacks): one pass in JS per super-packet
 * instead of one per segment.
 *
 * With forwarding workers (weftd --workers N) the TAP is multi-queue: every worker opens its
 * own queue and attaches it to its own socket, and the guard adds up what all of them wrote
 * (asking the workers for current figures first) and detaches it from all of them.
 */
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import type { KernelNet } from '../kernel/kernel.ts';
import type { NativeHandle } from '../native/addon.ts';
import type { PacketConn } from '../conn/conn.ts';
import type { Logger } from '../util/log.ts';

/** The BackendData key by which a node's lease says it takes whole tunnel-GSO datagrams. */
export const TUNNEL_GSO_LEASE_KEY = 'TunnelGSO';

/**
 * Whether a peer's lease BackendData says it takes whole tunnel-GSO datagrams (up to 64 KiB,
 * one TCP super-packet each). Anything but `"TunnelGSO": true` means no: flannel's udp
 * backend publishes null, its vxlan backend {"VNI","VtepMAC"}.
 */
export function takesTunnelGso(backendData: unknown): boolean {
  return (
    typeof backendData === 'object' &&
    backendData !== null &&
    (backendData as Record<string, unknown>)[TUNNEL_GSO_LEASE_KEY] === true
  );
}

/**
 * The forwarding workers beyond the main thread (src/dataplane/workers/pool.ts), as the
 * guard sees them: each has its own queue of the TAP attached to its own socket.
 */
export interface TunnelGsoWorkers {
  /** Bytes the workers' sockets wrote to the TAP, as of their latest report. */
  tunnelBytes(): number;
  /** Detaches the TAP from every worker's socket (they segment from then on). */
  detachTunnel(): void;
  /** The TAP named `name` is (again) in use: every worker attaches its own queue of it. */
  attachTunnel(name: string): void;
}

/** The TAP device (the socket keeps its own duplicate of its fd). */
export interface TunnelGsoDevice {
  readonly name: string;
  readonly handle: NativeHandle;
  /**
   * Attaches the TAP to the backend's socket (or says why not: the socket then segments
   * whole super-packets itself) and guards what leaves the underlay device from then on.
   */
  attach(conn: PacketConn, underlayIface: string): void;
  /**
   * The worker pool whose sockets also write to this TAP (undefined: none), so the guard
   * counts their bytes and detaches them too. Set again when the pool is rebuilt.
   */
  setWorkers(workers: TunnelGsoWorkers | undefined): void;
  /** Whether the TAP is in use (false while the guard has given up on it, or it is lost). */
  readonly usable: boolean;
  /**
   * One check (the backend's device check calls it every tick; `full` also reads the TAP's
   * link): the guard's judgement while the TAP is in use; a TAP deleted, replaced or set
   * down made right and attached again (tunnelRestored); after the guard gave up, or the
   * TAP refused a write, the TAP tried again once the retry delay has passed
   * (tunnelRetries). Never throws.
   */
  maintain(full: boolean): Promise<void>;
  /** tunnelGuardTrips, tunnelRetries, tunnelRestored. */
  stats(): Record<string, number>;
  close(): void;
}

/**
 * The first retry of the TAP after the guard gave up (weftd --tunnel-gso-retry), ms: none
 * by default. A retry against a firewall that still drops the packets black-holes bulk
 * traffic for the seconds the guard needs to see it again, so it is the operator's choice.
 */
export const DEFAULT_TUNNEL_RETRY_MS = 0;
/** Each further give-up doubles the wait, up to this. */
export const TUNNEL_RETRY_MAX_MS = 3_600_000;
/**
 * Judged intervals in which the underlay sent what went to a retried TAP before the retry
 * counts as a success: the next give-up waits the first delay again.
 */
export const TUNNEL_RETRY_GOOD_INTERVALS = 10;

/** A socket that can send whole super-packets through a tunnel-GSO TAP (NativeConn). */
export interface TunnelGsoConn {
  attachTunnel(tap: Pick<TunnelGsoDevice, 'handle'> | undefined): void;
}

export function canTunnel(conn: PacketConn): conn is PacketConn & TunnelGsoConn {
  return typeof (conn as Partial<TunnelGsoConn>).attachTunnel === 'function';
}

/** The TAP's name for a TUN device: `<tun>-gso`, within the 15-byte limit. */
export function tunnelGsoName(tunName: string): string {
  return `${tunName.slice(0, 11)}-gso`;
}

/**
 * The TAP's hardware address: derived from its name, so a restarted weftd's TAP is the same
 * device as before to anyone comparing `ip link` (locally administered, unicast). Frames on
 * the TAP never leave the node: the address only has to be the TAP's own.
 */
export function tunnelGsoMac(tapName: string): string {
  const h = createHash('sha256').update(`weft tunnel-gso ${tapName}`).digest();
  h[0] = ((h[0] as number) & 0xfe) | 0x02;
  return [...h.subarray(0, 6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** The /proc/sys files read and written here (a seam for tests). */
export interface Sysctl {
  read(path: string): string | undefined;
  write(path: string, value: string): void;
}

const procSys: Sysctl = {
  read(path) {
    try {
      return readFileSync(`/proc/sys/${path}`, 'utf8').trim();
    } catch {
      return undefined;
    }
  },
  write(path, value) {
    writeFileSync(`/proc/sys/${path}`, `${value}\n`);
  },
};

/** Why this node cannot use tunnel GSO, or undefined when it can (before opening anything). */
export function tunnelGsoBlocker(sys: Sysctl = procSys): string | undefined {
  if (sys.read('net/ipv4/ip_forward') !== '1') return 'IPv4 forwarding is off (net.ipv4.ip_forward=0)';
  if (sys.read('net/ipv4/conf/all/rp_filter') === '1') {
    return "strict reverse-path filtering for all interfaces (net.ipv4.conf.all.rp_filter=1) would drop the node's own tunnel packets";
  }
  return undefined;
}

/** An open, set-up TAP: its handle and what the kernel calls it. */
interface OpenTap {
  readonly handle: NativeHandle;
  readonly name: string;
  readonly mac: string;
  /** Its ifindex (-1 when the kernel twin cannot tell): a new one under the name is not ours. */
  readonly index: number;
  /** Closes weft's fd of it (the sockets keep their own duplicates until detached). */
  close(): void;
}

/**
 * Opens the TAP `name` and sets it up (sysctls, link up), or says why not and returns
 * undefined.
 */
async function createTap(
  kernel: KernelNet,
  name: string,
  log: Logger,
  sys: Sysctl,
  multiQueue: boolean,
): Promise<OpenTap | undefined> {
  const addon = (await import('../native/addon.ts')).loadAddon();
  let r: { handle: NativeHandle; name: string; mac: string };
  try {
    r = addon.tapOpen(name, tunnelGsoMac(name), multiQueue);
  } catch (err) {
    log.warn(
      { device: name, err: (err as Error).message },
      'the kernel refused a UDP-tunnel GSO TAP (needs Linux 6.17+); segmenting in userspace',
    );
    return undefined;
  }
  const handle = r.handle;
  try {
    // The TAP takes the node's own packets in: they must not be dropped as martians or by
    // reverse-path filtering, and IPv6 has no business there.
    sys.write(`net/ipv4/conf/${r.name}/accept_local`, '1');
    sys.write(`net/ipv4/conf/${r.name}/rp_filter`, '0');
    if (sys.read(`net/ipv6/conf/${r.name}/disable_ipv6`) !== undefined) {
      sys.write(`net/ipv6/conf/${r.name}/disable_ipv6`, '1');
    }
    await kernel.apply([{ op: 'link-up', name: r.name }]);
    const index = (await kernel.getLink(r.name))?.index ?? -1;
    return { handle, name: r.name, mac: r.mac, index, close: () => addon.close(handle) };
  } catch (err) {
    addon.close(handle);
    log.warn(
      { device: r.name, err: (err as Error).message },
      'setting up the tunnel-GSO TAP failed; segmenting in userspace',
    );
    return undefined;
  }
}

/**
 * Opens and sets up the tunnel-GSO TAP for `tunName`, or returns undefined (after logging
 * why) when this node or kernel cannot use it. `retryMs`: how long after the guard gave up
 * (or the TAP refused a write) the TAP is tried again, doubling at each further give-up up
 * to TUNNEL_RETRY_MAX_MS; 0 = never.
 */
export async function openTunnelGso(
  kernel: KernelNet,
  tunName: string,
  log: Logger,
  sys: Sysctl = procSys,
  opts: { readonly multiQueue?: boolean; readonly retryMs?: number } = {},
): Promise<TunnelGsoDevice | undefined> {
  const multiQueue = opts.multiQueue ?? false;
  const name = tunnelGsoName(tunName);
  const blocker = tunnelGsoBlocker(sys);
  if (blocker !== undefined) {
    log.warn({ reason: blocker }, 'tunnel GSO is not possible on this node; segmenting in userspace');
    return undefined;
  }
  const tap = await createTap(kernel, name, log, sys, multiQueue);
  if (!tap) return undefined;
  log.info(
    { device: tap.name, mac: tap.mac },
    'tunnel GSO: whole TCP super-packets go to the kernel through the TAP',
  );
  return new TunnelGsoTap(tap, {
    kernel,
    log,
    sys,
    multiQueue,
    retryMs: opts.retryMs ?? DEFAULT_TUNNEL_RETRY_MS,
  });
}

/**
 * Where the TAP stands: in use by the sockets; lost (deleted, replaced or set down: made
 * right in the same check); given up on (the guard saw the node drop its packets, it
 * refused writes, or making it right failed: tried again at `retryAt`); never usable (the
 * socket cannot send through a TAP); closed.
 */
type TapState = 'attached' | 'lost' | 'given-up' | 'off' | 'closed';

class TunnelGsoTap implements TunnelGsoDevice {
  readonly name: string;
  private tap: OpenTap;
  private state: TapState = 'off';
  private conn: (PacketConn & TunnelGsoConn) | undefined;
  private underlay = '';
  private guard: TunnelGsoGuard | undefined;
  private workers: TunnelGsoWorkers | undefined;
  /** The wait before the next retry after a give-up (doubles, up to TUNNEL_RETRY_MAX_MS). */
  private waitMs: number;
  private retryAt = 0;
  private readonly counters = { tunnelGuardTrips: 0, tunnelRetries: 0, tunnelRestored: 0 };

  constructor(
    tap: OpenTap,
    private readonly o: {
      readonly kernel: KernelNet;
      readonly log: Logger;
      readonly sys: Sysctl;
      readonly multiQueue: boolean;
      readonly retryMs: number;
    },
  ) {
    this.tap = tap;
    this.name = tap.name;
    this.waitMs = o.retryMs;
  }

  get handle(): NativeHandle {
    return this.tap.handle;
  }

  get usable(): boolean {
    return this.state === 'attached';
  }

  attach(conn: PacketConn, underlayIface: string): void {
    this.underlay = underlayIface;
    if (!canTunnel(conn)) {
      this.o.log.warn({ device: this.name }, 'tunnel GSO: the socket cannot send through a TAP; segmenting');
      this.state = 'off';
      return;
    }
    this.conn = conn;
    this.state = attachTunnelOrSegment(conn, this, this.o.log) ? 'attached' : 'off';
    this.guard = this.state === 'attached' ? this.newGuard(conn) : undefined;
  }

  setWorkers(w: TunnelGsoWorkers | undefined): void {
    this.workers = w;
    // A pool started (or rebuilt) while the TAP is not in use must not use it either.
    if (w && this.state !== 'attached') w.detachTunnel();
  }

  stats(): Record<string, number> {
    return { ...this.counters };
  }

  async maintain(full: boolean): Promise<void> {
    const conn = this.conn;
    if (!conn) return;
    try {
      if (this.state === 'attached') {
        // The socket lets go of the TAP itself when a write fails.
        const dropped = connStat(conn, 'tunnelAttached') === 0;
        if (dropped || full) {
          const problem = await this.tapProblem();
          if (problem !== undefined) {
            this.state = 'lost';
            this.o.log.warn(
              { device: this.name, problem },
              `tunnel GSO: the TAP was ${problem}; making it right`,
            );
          } else if (dropped) {
            this.giveUp('tunnel GSO: the TAP refused a write; segmenting in the socket', {});
            return;
          }
        }
        if (this.state === 'attached') {
          this.guard?.check();
          if ((this.guard?.goodIntervals ?? 0) >= TUNNEL_RETRY_GOOD_INTERVALS) this.waitMs = this.o.retryMs;
          return;
        }
      }
      if (this.state === 'lost') {
        if (await this.restore()) {
          this.counters.tunnelRestored++;
          this.o.log.info({ device: this.name }, 'tunnel GSO: the TAP is back in use');
        } else this.scheduleRetry(); // not again every second: at the retry delay
        return;
      }
      if (this.state === 'given-up' && this.o.retryMs > 0 && Date.now() >= this.retryAt) {
        this.counters.tunnelRetries++;
        this.o.log.info({ device: this.name }, 'tunnel GSO: trying the TAP again');
        if (!(await this.restore())) this.scheduleRetry();
      }
    } catch (err) {
      this.o.log.warn(
        { err, device: this.name },
        'tunnel GSO: checking the TAP failed; trying again at the next check',
      );
    }
  }

  close(): void {
    this.state = 'closed';
    this.guard = undefined;
    this.workers = undefined;
    this.tap.close();
  }

  /** What is wrong with the TAP's link, or undefined. */
  private async tapProblem(): Promise<string | undefined> {
    const link = await this.o.kernel.getLink(this.name);
    if (!link) return 'deleted';
    if (this.tap.index >= 0 && link.index !== this.tap.index) return 'replaced';
    if (!link.up) return 'set down';
    return undefined;
  }

  /**
   * Puts the TAP right (re-created when deleted or replaced, set up when down) and
   * attaches it to every socket again under a new guard. False when it could not.
   */
  private async restore(): Promise<boolean> {
    const conn = this.conn;
    if (!conn) return false;
    const problem = await this.tapProblem();
    if (problem === 'deleted' || problem === 'replaced') {
      conn.attachTunnel(undefined);
      this.workers?.detachTunnel();
      if (problem === 'replaced') await this.o.kernel.apply([{ op: 'link-del', name: this.name }]);
      const fresh = await createTap(this.o.kernel, this.name, this.o.log, this.o.sys, this.o.multiQueue);
      if (!fresh) return false;
      this.tap.close();
      this.tap = fresh;
    } else if (problem === 'set down') {
      await this.o.kernel.apply([{ op: 'link-up', name: this.name }]);
    }
    if (!attachTunnelOrSegment(conn, this, this.o.log)) return false;
    this.workers?.attachTunnel(this.name);
    this.guard = this.newGuard(conn);
    this.state = 'attached';
    return true;
  }

  private giveUp(message: string, fields: Record<string, unknown>): void {
    try {
      this.conn?.attachTunnel(undefined);
    } catch {
      // the socket is gone: nothing left to detach
    }
    this.workers?.detachTunnel();
    this.guard = undefined;
    this.scheduleRetry();
    this.o.log.warn(
      {
        ...fields,
        device: this.name,
        ...(this.o.retryMs > 0 ? { retryInSeconds: Math.round(this.waitMs / 1000) } : {}),
      },
      message,
    );
    if (this.o.retryMs > 0) this.waitMs = Math.min(this.waitMs * 2, TUNNEL_RETRY_MAX_MS);
  }

  private scheduleRetry(): void {
    this.state = 'given-up';
    this.retryAt = Date.now() + this.waitMs;
  }

  private newGuard(conn: PacketConn): TunnelGsoGuard {
    return new TunnelGsoGuard(
      {
        tunnelBytes: () => {
          const own = connStat(conn, 'tunnelBytes');
          return own === undefined ? undefined : own + (this.workers?.tunnelBytes() ?? 0);
        },
        underlayTxBytes: () => deviceTxBytes(this.underlay),
      },
      (written, sent) => {
        this.counters.tunnelGuardTrips++;
        this.giveUp(
          'tunnel GSO: the node did not send what weft wrote to the TAP (a FORWARD firewall rule?); segmenting in the socket',
          { writtenBytes: written, underlaySentBytes: sent, underlay: this.underlay },
        );
      },
    );
  }
}

/**
 * Attaches the TAP to the socket; when that fails (a socket bound to no address) says why
 * and leaves the socket to segment whole super-packets itself, which is slower but loses
 * nothing. True when attached.
 */
function attachTunnelOrSegment(conn: TunnelGsoConn, tap: TunnelGsoDevice, log: Logger): boolean {
  try {
    conn.attachTunnel(tap);
    return true;
  } catch (err) {
    log.warn(
      { device: tap.name, err: (err as Error).message },
      'tunnel GSO: attaching the TAP failed; segmenting in the socket',
    );
    return false;
  }
}

/** A counter of the socket's native stats (undefined when it has none or is gone). */
function connStat(conn: PacketConn, key: string): number | undefined {
  const stats = (conn as Partial<{ stats(): Record<string, number> }>).stats;
  try {
    return stats?.call(conn)[key];
  } catch {
    return undefined;
  }
}

/** What the guard reads: bytes weft wrote to the TAP, bytes the underlay device sent. */
export interface TunnelGsoGuardSources {
  /** connIo.tunnelBytes of the socket (undefined when it is gone). */
  tunnelBytes(): number | undefined;
  /** The underlay device's tx_bytes (undefined when unreadable). */
  underlayTxBytes(): number | undefined;
}

/**
 * Bytes written to the TAP in one check interval before the guard judges the interval: any
 * at all. A TCP flow stalled by the drops only retransmits now and then, a few KiB at a
 * time (a threshold of 16 KiB left such a flow stuck for minutes in a test); and a write
 * that was forwarded is always in the underlay's count by the time the guard reads it.
 */
export const GUARD_MIN_BYTES = 1;
/**
 * The share of the bytes written to the TAP that the underlay must have sent in the same
 * interval. Forwarded packets are counted as sent before the write returns, so anything
 * well below 1 means drops (small packets sent by the socket around them keep the figure
 * from falling to 0: a stalled TCP flow's retransmits are such packets).
 */
export const GUARD_SENT_SHARE = 0.9;

/**
 * Watches that what weft writes to the TAP leaves the node. Tunnel-GSO packets pass the
 * node's FORWARD hook, and a firewall there can drop them without weft seeing an error;
 * small packets, sent by the socket, still pass, so TCP connects and then stalls. Each
 * check compares the bytes written to the TAP since the last check with what the underlay
 * device transmitted in the same time, which includes all of them (segmented or not) and
 * whatever else the node sent: two judged intervals in which the device sent less than
 * GUARD_SENT_SHARE of it, with no good one in between
 * (intervals with too little written are not judged), mean the node drops them, and
 * `onDropped` runs once (the TAP is detached and the sockets segment; a retry, if any,
 * comes with a new guard).
 */
export class TunnelGsoGuard {
  private lastWritten: number | undefined;
  private lastTx: number | undefined;
  private strikes = 0;
  private tripped = false;
  /** Judged intervals in which the underlay sent what went to the TAP. */
  goodIntervals = 0;

  constructor(
    private readonly sources: TunnelGsoGuardSources,
    private readonly onDropped: (writtenBytes: number, sentBytes: number) => void,
  ) {}

  /** True once the guard has given up on the TAP. */
  get dropped(): boolean {
    return this.tripped;
  }

  check(): void {
    if (this.tripped) return;
    const w = this.sources.tunnelBytes();
    const t = this.sources.underlayTxBytes();
    if (w === undefined || t === undefined) return;
    const lw = this.lastWritten;
    const lt = this.lastTx;
    this.lastWritten = w;
    this.lastTx = t;
    if (lw === undefined || lt === undefined) return;
    const written = w - lw;
    const sent = t - lt;
    if (written < GUARD_MIN_BYTES) return;
    if (sent >= written * GUARD_SENT_SHARE) {
      this.strikes = 0;
      this.goodIntervals++;
      return;
    }
    if (++this.strikes >= 2) {
      this.tripped = true;
      this.onDropped(written, sent);
    }
  }
}

/** tx_bytes of a device in this network namespace, or undefined. */
export function deviceTxBytes(iface: string): number | undefined {
  try {
    const v = Number(readFileSync(`/sys/class/net/${iface}/statistics/tx_bytes`, 'utf8'));
    return Number.isFinite(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

/** How long a device check waits for the workers' current counters before judging (ms). */
const WORKER_REPORT_WAIT_MS = 250;

/**
 * One check of a backend's TAP (its periodic device check calls this; `full`: the full
 * check, which also reads the TAP's link): with workers and the TAP in use, their current
 * counters are asked for first, so the bytes they wrote are compared with the underlay's
 * count of the same moment.
 */
export async function maintainTunnelGso(
  tunnel: TunnelGsoDevice | undefined,
  pool: { refreshStats(timeoutMs?: number): Promise<void> } | undefined,
  full: boolean,
): Promise<void> {
  if (!tunnel) return;
  if (pool && tunnel.usable) await pool.refreshStats(WORKER_REPORT_WAIT_MS);
  await tunnel.maintain(full);
}
