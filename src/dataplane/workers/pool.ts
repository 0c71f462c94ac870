/**
 * The userspace data path on several cores: the main thread's Forwarder is worker 0 and
 * N-1 worker threads (worker.ts) each run another Forwarder over their own queue of the
 * same multi-queue TUN device and their own SO_REUSEPORT socket on the same address and
 * port. Once the group is complete a classic BPF program (src/conn/steering.ts) is attached
 * to it so received datagrams go to the socket of their INNER flow's worker; outgoing flows
 * are spread over the TUN queues by the kernel (and stick to the queue that last wrote the
 * flow, i.e. the same worker).
 *
 * Why a pool object: the backends keep their single-forwarder code (workers = 1 is exactly
 * that, no threads) and only route peer changes and counters through here. Peer changes go
 * to the main forwarder and are posted to every worker. Counters: every worker posts its
 * snapshot every statsIntervalMs (and on refreshStats()), so snapshot() is synchronous and
 * never waits on a thread; it sums all workers and adds a per-worker breakdown.
 *
 * A worker that dies is logged, counted and started again after restartDelayMs with the
 * current peers and its last counters. close() stops every worker (they close their
 * handles) and terminates any that do not exit within a second.
 */
import { Worker } from 'node:worker_threads';
import type { PacketConn } from '../../conn/conn.ts';
import { steeringProgram, UDP_INNER_OFFSET, VXLAN_INNER_OFFSET } from '../../conn/steering.ts';
import { VxlanEncap } from '../../encap/encap.ts';
import { ConfigError, DeviceError } from '../../util/errors.ts';
import type { Logger } from '../../util/log.ts';
import type { Forwarder, ForwarderSnapshot, PeerStatus } from '../forwarder.ts';
import type { Peer } from '../peer.ts';
import type { EncapSpec, FromWorker, RawStats, ToWorker, WorkerInit, WorkerIo } from './messages.ts';

/** Most forwarding threads (main included) weftd accepts. */
export const MAX_WORKERS = 64;

/** Per-worker figures (worker 0 is the main thread). */
export interface WorkerFigures {
  readonly worker: number;
  readonly alive: boolean;
  /** Times this worker was started again after dying. */
  readonly restarts: number;
  /** Packets read from the TUN queue / sent on the socket / received / written to the TUN. */
  readonly fromTun: number;
  readonly toNetwork: number;
  readonly fromNetwork: number;
  readonly toTun: number;
  /** fromTun + fromNetwork, and toNetwork + toTun. */
  readonly packetsIn: number;
  readonly packetsOut: number;
  /** Whole super-packets its socket wrote to the tunnel-GSO TAP (its own queue). */
  readonly tunnelWrites: number;
}

export interface PoolSnapshot extends ForwarderSnapshot {
  readonly workers: readonly WorkerFigures[];
}

/** What a pool hands to the pool that replaces it (counters continue). */
export interface PoolCarry {
  /** Last counters of worker i (index 1..N-1; index 0 unused). */
  readonly raw: readonly (RawStats | undefined)[];
  readonly restarts: readonly number[];
  readonly deaths: number;
}

export interface WorkerPoolOptions {
  /** Forwarding threads in all, the main thread's included (2..64). */
  readonly workers: number;
  /** Worker 0: the backend's forwarder on the main thread (already started). */
  readonly main: Forwarder;
  /** Worker 0's socket, opened with reusePort; the steering program is attached through it. */
  readonly mainConn: PacketConn;
  /** The TUN device, opened multi-queue by the main thread. */
  readonly tun: { readonly name: string; readonly mtu: number; readonly offloads: boolean };
  /** Where the socket is bound (every worker binds the same, with reusePort). */
  readonly conn: { readonly bindAddr: number; readonly port: number; readonly offloads: boolean };
  readonly log: Logger;
  /** From the pool this one replaces (device repair). */
  readonly carry?: PoolCarry;
  /** How often workers report counters unasked (ms, default 500). */
  readonly statsIntervalMs?: number;
  /** Delay before a dead worker is started again (ms, default 1000). */
  readonly restartDelayMs?: number;
  /** Restarts per worker before giving up on it (default 10). */
  readonly maxRestarts?: number;
  /** How long a worker may take to open its devices (ms, default 10000). */
  readonly startTimeoutMs?: number;
  /** Attaches the steering program (default: SO_ATTACH_REUSEPORT_CBPF through the addon). */
  readonly attachSteering?: (conn: PacketConn, program: Buffer) => void;
  /**
   * The main thread's multi-queue tunnel-GSO TAP: every worker opens its own queue of it
   * and sends whole super-packets there (src/backend/tunnel-gso.ts). Absent: none.
   */
  readonly tunnel?: { readonly name: string } | undefined;
}

const fromSource = import.meta.url.endsWith('.ts');

/** The worker entry next to this module: worker.ts under tsx, worker.js when compiled. */
export const WORKER_URL = new URL(fromSource ? './worker.ts' : './worker.js', import.meta.url);

/**
 * What to start a worker thread from. Compiled: worker.js itself. Under tsx: Node 20 does
 * not apply the inherited `--import tsx` to worker threads, so a tiny bootstrap registers
 * tsx's loader in the thread first and then imports worker.ts.
 */
function workerStartUrl(): URL {
  if (!fromSource) return WORKER_URL;
  const api = import.meta.resolve('tsx/esm/api');
  const code =
    `const { register } = await import(${JSON.stringify(api)});\n` +
    `register();\n` +
    `await import(${JSON.stringify(WORKER_URL.href)});\n`;
  return new URL(`data:text/javascript,${encodeURIComponent(code)}`);
}

/** SO_ATTACH_REUSEPORT_CBPF on a native socket. */
async function nativeAttach(conn: PacketConn, program: Buffer): Promise<(c: PacketConn, p: Buffer) => void> {
  const { NativeConn } = await import('../../conn/native-conn.ts');
  const attach = (c: PacketConn, p: Buffer): void => {
    if (!(c instanceof NativeConn)) {
      throw new DeviceError('cannot steer: the socket is not a native socket');
    }
    c.attachSteering(p);
  };
  attach(conn, program);
  return attach;
}

interface Slot {
  readonly index: number;
  worker: Worker | undefined;
  alive: boolean;
  /** close() asked it to stop (an exit is not a death). */
  stopping: boolean;
  restarts: number;
  snapshot: ForwarderSnapshot | undefined;
  raw: RawStats | undefined;
  /** The native counters of its TUN queue and socket, as of its latest report. */
  io: WorkerIo | undefined;
  restartTimer: NodeJS.Timeout | undefined;
  /** Waiters for an answer to a stats request, by seq. */
  readonly waiting: Map<number, () => void>;
}

export class WorkerPool {
  readonly size: number;
  readonly main: Forwarder;
  /** Workers that died unasked, and how often one was started again. */
  readonly counters = { deaths: 0, restarts: 0, steeringAttached: 0 };
  private readonly opts: WorkerPoolOptions;
  private readonly slots: Slot[] = [];
  private readonly encap: EncapSpec;
  private readonly program: Buffer;
  private readonly statsIntervalMs: number;
  private attach: ((c: PacketConn, p: Buffer) => void) | undefined;
  /** The tunnel-GSO TAP workers attach (undefined: none, or the guard detached it for good). */
  private tunnel: { readonly name: string } | undefined;
  private seq = 0;
  private closing = false;

  private constructor(opts: WorkerPoolOptions) {
    if (!Number.isInteger(opts.workers) || opts.workers < 2 || opts.workers > MAX_WORKERS) {
      throw new ConfigError('workers', `a worker pool needs 2..${MAX_WORKERS} workers, got ${opts.workers}`);
    }
    this.opts = opts;
    this.size = opts.workers;
    this.main = opts.main;
    this.statsIntervalMs = opts.statsIntervalMs ?? 500;
    const e = opts.main.encap;
    this.encap =
      e instanceof VxlanEncap
        ? { kind: 'vxlan', vni: e.vni, localMac: Uint8Array.from(e.localMac) }
        : { kind: 'udp' };
    this.program = steeringProgram({
      innerOffset: this.encap.kind === 'vxlan' ? VXLAN_INNER_OFFSET : UDP_INNER_OFFSET,
      workers: opts.workers,
    });
    this.attach = opts.attachSteering;
    this.tunnel = opts.tunnel;
    if (opts.carry) this.counters.deaths = opts.carry.deaths;
  }

  /**
   * Starts workers 1..N-1 one after the other (so socket i of the reuseport group is worker
   * i) and attaches the steering program. Throws (after stopping what it started) when a
   * worker cannot open its devices.
   */
  static async start(opts: WorkerPoolOptions): Promise<WorkerPool> {
    const pool = new WorkerPool(opts);
    try {
      for (let i = 1; i < pool.size; i++) {
        const slot: Slot = {
          index: i,
          worker: undefined,
          alive: false,
          stopping: false,
          restarts: opts.carry?.restarts[i] ?? 0,
          snapshot: undefined,
          raw: opts.carry?.raw[i],
          io: undefined,
          restartTimer: undefined,
          waiting: new Map(),
        };
        pool.slots.push(slot);
        await pool.spawn(slot);
      }
      await pool.steer();
    } catch (err) {
      await pool.close();
      throw err;
    }
    return pool;
  }

  private async steer(): Promise<void> {
    if (this.attach) this.attach(this.opts.mainConn, this.program);
    else this.attach = await nativeAttach(this.opts.mainConn, this.program);
    this.counters.steeringAttached++;
  }

  private init(slot: Slot): WorkerInit {
    const m = this.main;
    const vtep = m.local.vtepMac;
    return {
      index: slot.index,
      tun: this.opts.tun,
      conn: this.opts.conn,
      encap: this.encap,
      local: {
        subnet: m.local.subnet,
        tunAddr: m.local.tunAddr,
        ...(vtep !== undefined ? { vtepMac: Uint8Array.from(vtep) } : {}),
      },
      port: m.port,
      checkPeerPort: m.checkPeerPort,
      icmpForIcmpQueries: m.icmpForIcmpQueries,
      maxBatchesPerTurn: m.maxBatchesPerTurn,
      busyPollUs: m.busyPollUs,
      peers: m.peers(),
      seed: slot.raw ? this.withoutStalePeers(slot.raw) : undefined,
      statsIntervalMs: this.statsIntervalMs,
      tunnel: this.tunnel,
    };
  }

  /** A copy of `raw` with the per-peer counters of ids no current peer holds zeroed. */
  private withoutStalePeers(raw: RawStats): RawStats {
    const live = new Set(this.main.peers().map((p) => p.id));
    const keep = (a: Float64Array): Float64Array => {
      const b = a.slice();
      for (let id = 0; id < b.length; id++) if (!live.has(id)) b[id] = 0;
      return b;
    };
    return {
      ...raw,
      peerTxPackets: keep(raw.peerTxPackets),
      peerTxBytes: keep(raw.peerTxBytes),
      peerRxPackets: keep(raw.peerRxPackets),
      peerRxBytes: keep(raw.peerRxBytes),
    };
  }

  /** Starts `slot`'s thread and waits until it forwards (or fails to open its devices). */
  private spawn(slot: Slot): Promise<void> {
    const w = new Worker(workerStartUrl(), { workerData: this.init(slot), name: `weft-fwd-${slot.index}` });
    slot.worker = w;
    slot.stopping = false;
    const timeoutMs = this.opts.startTimeoutMs ?? 10_000;
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const settle = (err?: Error): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) {
          slot.stopping = true;
          void w.terminate();
          reject(err);
        } else resolve();
      };
      const timer = setTimeout(
        () => settle(new DeviceError(`forwarding worker ${slot.index} did not start within ${timeoutMs} ms`)),
        timeoutMs,
      );
      w.on('message', (m: FromWorker) => {
        switch (m.type) {
          case 'ready':
            slot.alive = true;
            if (m.tunnelError !== undefined) {
              this.opts.log.warn(
                { worker: slot.index, err: m.tunnelError },
                'tunnel GSO: a forwarding worker could not attach the TAP; it segments in its socket',
              );
            }
            settle();
            break;
          case 'failed':
            settle(
              new DeviceError(`forwarding worker ${slot.index} could not open its devices: ${m.message}`),
            );
            break;
          case 'tunnelError':
            this.opts.log.warn(
              { worker: slot.index, err: m.message },
              'tunnel GSO: a forwarding worker could not attach the TAP again; it segments in its socket',
            );
            break;
          case 'stats':
          case 'stopped':
            slot.snapshot = m.snapshot;
            slot.raw = m.raw;
            slot.io = m.io;
            if (m.type === 'stats' && m.seq >= 0) {
              const done = slot.waiting.get(m.seq);
              slot.waiting.delete(m.seq);
              done?.();
            }
            break;
        }
      });
      w.on('error', (err) => {
        this.opts.log.error({ err, worker: slot.index }, 'forwarding worker failed');
        settle(err);
      });
      w.on('exit', (code) => {
        const wasAlive = slot.alive;
        slot.alive = false;
        if (slot.worker === w) slot.worker = undefined;
        for (const done of slot.waiting.values()) done();
        slot.waiting.clear();
        settle(new DeviceError(`forwarding worker ${slot.index} exited (${code}) while starting`));
        if (slot.stopping || this.closing || !wasAlive) return;
        this.counters.deaths++;
        this.opts.log.error(
          { worker: slot.index, code, restarts: slot.restarts },
          'a forwarding worker died; its flows are on the other workers until it is back',
        );
        this.scheduleRestart(slot);
      });
      // Never let a forwarding thread alone keep the process alive.
      w.unref();
    });
  }

  private scheduleRestart(slot: Slot): void {
    if (slot.restarts >= (this.opts.maxRestarts ?? 10)) {
      this.opts.log.error({ worker: slot.index }, 'a forwarding worker died too often; not restarting it');
      return;
    }
    slot.restartTimer = setTimeout(() => {
      slot.restartTimer = undefined;
      if (this.closing) return;
      slot.restarts++;
      this.counters.restarts++;
      this.spawn(slot)
        .then(() => this.steer())
        .then(() => this.opts.log.warn({ worker: slot.index }, 'forwarding worker restarted'))
        .catch((err: unknown) => {
          this.opts.log.error({ err, worker: slot.index }, 'could not restart a forwarding worker');
          if (!this.closing) this.scheduleRestart(slot);
        });
    }, this.opts.restartDelayMs ?? 1000);
    slot.restartTimer.unref();
  }

  private broadcast(m: ToWorker): void {
    for (const s of this.slots) if (s.alive) s.worker?.postMessage(m);
  }

  /** Replaces the peer set on every worker. */
  setPeers(peers: Iterable<Peer>): void {
    const list = Array.from(peers);
    this.main.setPeers(list);
    this.broadcast({ type: 'setPeers', peers: list });
  }

  /** Adds or replaces a peer on every worker. */
  addPeer(peer: Peer): void {
    this.main.addPeer(peer);
    this.broadcast({ type: 'addPeer', peer });
  }

  /** Removes a peer on every worker; returns whether the main forwarder had it. */
  removePeer(peer: Peer | number): boolean {
    const id = typeof peer === 'number' ? peer : peer.id;
    const had = this.main.removePeer(id);
    this.broadcast({ type: 'removePeer', id });
    return had;
  }

  /**
   * Bytes the workers' sockets wrote to the tunnel-GSO TAP, as of their latest reports
   * (refreshStats() first for current figures). For the tunnel-GSO guard.
   */
  tunnelBytes(): number {
    let sum = 0;
    for (const s of this.slots) sum += s.io?.connIo?.['tunnelBytes'] ?? 0;
    return sum;
  }

  /**
   * The TAP is not in use (the guard gave up on it, or it is lost): every worker's socket
   * detaches it and segments, and workers started meanwhile (restarts, a rebuilt pool) do
   * not attach it.
   */
  detachTunnel(): void {
    this.tunnel = undefined;
    this.broadcast({ type: 'detachTunnel' });
  }

  /** The TAP `name` is (again) in use: every worker, and every worker started later, attaches a queue of it. */
  attachTunnel(name: string): void {
    this.tunnel = { name };
    this.broadcast({ type: 'attachTunnel', name });
  }

  /**
   * The native counters of the main thread's devices (`main`, as nativeIoStats gives them)
   * with every worker's added in, as of their latest reports. Flags (gsoEnabled,
   * tunnelAttached) stay the main thread's.
   */
  ioStats(main: WorkerIo): { tunIo?: Record<string, number>; connIo?: Record<string, number> } {
    const FLAGS = new Set(['gsoEnabled', 'tunnelAttached']);
    const sum = (
      base: Readonly<Record<string, number>> | undefined,
      pick: (io: WorkerIo) => Readonly<Record<string, number>> | undefined,
    ): Record<string, number> | undefined => {
      if (!base) return undefined;
      const out = { ...base };
      for (const s of this.slots) {
        const add = s.io ? pick(s.io) : undefined;
        if (!add) continue;
        for (const [k, v] of Object.entries(add)) if (!FLAGS.has(k)) out[k] = (out[k] ?? 0) + v;
      }
      return out;
    };
    const tunIo = sum(main.tunIo, (io) => io.tunIo);
    const connIo = sum(main.connIo, (io) => io.connIo);
    return { ...(tunIo ? { tunIo } : {}), ...(connIo ? { connIo } : {}) };
  }

  /** Asks every live worker for its counters now and waits for the answers (at most 2 s). */
  async refreshStats(timeoutMs = 2000): Promise<void> {
    const seq = ++this.seq;
    const waits = this.slots
      .filter((s) => s.alive && s.worker)
      .map(
        (s) =>
          new Promise<void>((resolve) => {
            const t = setTimeout(() => {
              s.waiting.delete(seq);
              resolve();
            }, timeoutMs);
            s.waiting.set(seq, () => {
              clearTimeout(t);
              resolve();
            });
            s.worker?.postMessage({ type: 'stats', seq } satisfies ToWorker);
          }),
      );
    await Promise.all(waits);
  }

  /** Per-worker figures from the latest reports (worker 0 = main thread, always current). */
  workerFigures(): WorkerFigures[] {
    const fig = (
      worker: number,
      alive: boolean,
      restarts: number,
      s: ForwarderSnapshot | undefined,
      io: WorkerIo | undefined,
    ): WorkerFigures => {
      const c = s?.counters ?? {};
      const fromTun = c.tunReadPackets ?? 0;
      const toNetwork = c.sendPackets ?? 0;
      const fromNetwork = c.recvPackets ?? 0;
      const toTun = c.tunWritePackets ?? 0;
      return {
        worker,
        alive,
        restarts,
        fromTun,
        toNetwork,
        fromNetwork,
        toTun,
        packetsIn: fromTun + fromNetwork,
        packetsOut: toNetwork + toTun,
        tunnelWrites: io?.connIo?.['tunnelWrites'] ?? 0,
      };
    };
    const mainConn = this.opts.mainConn as Partial<{ stats(): Record<string, number> }>;
    let mainIo: WorkerIo | undefined;
    try {
      mainIo = typeof mainConn.stats === 'function' ? { connIo: mainConn.stats() } : undefined;
    } catch {
      mainIo = undefined; // closed
    }
    return [
      fig(0, this.main.running, 0, this.main.snapshot(), mainIo),
      ...this.slots.map((s) => fig(s.index, s.alive, s.restarts, s.snapshot, s.io)),
    ];
  }

  /** Ends worker `index` (1..N-1) abruptly, as a crash would (tests of the restart). */
  async crashWorker(index: number): Promise<void> {
    const s = this.slots.find((x) => x.index === index);
    if (!s?.worker) throw new DeviceError(`no live forwarding worker ${index}`);
    await s.worker.terminate();
  }

  /** The sum over all workers, shaped like Forwarder.snapshot(), plus the per-worker figures. */
  snapshot(): PoolSnapshot {
    const base = this.main.snapshot();
    const parts = this.slots.map((s) => s.snapshot).filter((s): s is ForwarderSnapshot => s !== undefined);
    return { ...sumSnapshots(base, parts), workers: this.workerFigures() };
  }

  /** What a replacement pool needs to continue the counters (call before close()). */
  carry(): PoolCarry {
    const raw: (RawStats | undefined)[] = [undefined];
    const restarts: number[] = [0];
    for (const s of this.slots) {
      raw[s.index] = s.raw;
      restarts[s.index] = s.restarts;
    }
    return { raw, restarts, deaths: this.counters.deaths };
  }

  /**
   * The same pool over a new TUN device (device repair): stops these workers, whose queues
   * belonged to the old device, and starts as many on the new one around `main`, their
   * counters carried over. Returns undefined (logged) when the new workers cannot start:
   * forwarding goes on in `main` alone.
   */
  async rebuild(main: Forwarder): Promise<WorkerPool | undefined> {
    await this.close(); // final counters first: a stopping worker reports them
    const carry = this.carry();
    try {
      const pool = await WorkerPool.start({ ...this.opts, main, carry, tunnel: this.tunnel });
      this.opts.log.warn({ workers: pool.size }, 'forwarding workers restarted on the new TUN device');
      return pool;
    } catch (err) {
      this.opts.log.error(
        { err },
        'could not restart the forwarding workers on the new TUN device; forwarding on the main thread only',
      );
      return undefined;
    }
  }

  /** Stops every worker thread (each closes its queue and socket). Does not touch `main`. */
  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(
      this.slots.map(async (s) => {
        if (s.restartTimer) clearTimeout(s.restartTimer);
        s.restartTimer = undefined;
        const w = s.worker;
        if (!w) return;
        s.stopping = true;
        const exited = new Promise<void>((resolve) => w.once('exit', () => resolve()));
        w.postMessage({ type: 'stop' } satisfies ToWorker);
        const timer = setTimeout(() => void w.terminate(), 1000);
        await exited;
        clearTimeout(timer);
      }),
    );
  }
}

function addInto(into: Record<string, number>, from: Readonly<Record<string, number>>): void {
  for (const [k, v] of Object.entries(from)) into[k] = (into[k] ?? 0) + v;
}

/**
 * `base` (the main forwarder: peers, routes, encap) with the counters, drops, batch sizes
 * and per-peer figures of `others` added in.
 */
export function sumSnapshots(
  base: ForwarderSnapshot,
  others: readonly ForwarderSnapshot[],
): ForwarderSnapshot {
  const counters = { ...base.counters };
  const drops = { ...base.drops };
  const tunRead = [...base.batchSizes.tunRead];
  const recv = [...base.batchSizes.recv];
  const byId = new Map<number, { txPackets: number; txBytes: number; rxPackets: number; rxBytes: number }>();
  for (const o of others) {
    addInto(counters, o.counters);
    addInto(drops, o.drops);
    o.batchSizes.tunRead.forEach((v, i) => (tunRead[i] = (tunRead[i] ?? 0) + v));
    o.batchSizes.recv.forEach((v, i) => (recv[i] = (recv[i] ?? 0) + v));
    for (const p of o.peers) {
      const a = byId.get(p.id) ?? { txPackets: 0, txBytes: 0, rxPackets: 0, rxBytes: 0 };
      a.txPackets += p.txPackets;
      a.txBytes += p.txBytes;
      a.rxPackets += p.rxPackets;
      a.rxBytes += p.rxBytes;
      byId.set(p.id, a);
    }
  }
  const peers: PeerStatus[] = base.peers.map((p) => {
    const a = byId.get(p.id);
    if (!a) return p;
    return {
      ...p,
      txPackets: p.txPackets + a.txPackets,
      txBytes: p.txBytes + a.txBytes,
      rxPackets: p.rxPackets + a.rxPackets,
      rxBytes: p.rxBytes + a.rxBytes,
    };
  });
  return { ...base, counters, drops, batchSizes: { tunRead, recv }, peers };
}

/**
 * The per-worker figures as one flat record for a backend's stats() ("workers"):
 * count, deaths, restarts and `<i>.<figure>` for every worker i.
 */
export function workersStat(pool: WorkerPool): Record<string, number> {
  const out: Record<string, number> = {
    count: pool.size,
    deaths: pool.counters.deaths,
    restarts: pool.counters.restarts,
  };
  for (const f of pool.workerFigures()) {
    out[`${f.worker}.alive`] = f.alive ? 1 : 0;
    out[`${f.worker}.packetsIn`] = f.packetsIn;
    out[`${f.worker}.packetsOut`] = f.packetsOut;
    out[`${f.worker}.fromTun`] = f.fromTun;
    out[`${f.worker}.toNetwork`] = f.toNetwork;
    out[`${f.worker}.fromNetwork`] = f.fromNetwork;
    out[`${f.worker}.toTun`] = f.toTun;
    out[`${f.worker}.tunnelWrites`] = f.tunnelWrites;
  }
  return out;
}
