/**
 * Harness for the allocation tests: two forwarders wired back to back through devices that
 * themselves allocate nothing (a TUN that refills its batch from a template, a "wire" that
 * copies datagrams through preallocated slots), ~10^6 packets pushed through while the
 * garbage collector is watched. One encapsulation per process (one test file each), as in
 * weftd, so the JIT sees the call sites it will see in production.
 */
import assert from 'node:assert/strict';
import { Session } from 'node:inspector/promises';
import { PerformanceObserver, constants as perfConstants } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { ConnOffloadState, PacketConn } from '../../src/conn/conn.ts';
import { createEncap } from '../../src/encap/encap.ts';
import type { BusyPoll } from '../../src/dataplane/busy-poll.ts';
import { BusyPollReady } from '../../src/dataplane/busy-poll.ts';
import { Forwarder } from '../../src/dataplane/forwarder.ts';
import { Counter } from '../../src/dataplane/stats.ts';
import { cidrToKey, parseCidr } from '../../src/routing/ipv4.ts';
import type { PacketBatch } from '../../src/tun/batch.ts';
import type { TunDevice, TunOffloadState } from '../../src/tun/tun.ts';
import { buildIpv4, ip } from '../encap/packets.ts';
import type { Kind } from './twins.ts';

setFlagsFromString('--expose-gc');
export const gc = runInNewContext('gc') as () => void;

const WARMUP = 300_000;
/** Keeps calibration objects alive long enough not to be optimised away. */
let sink: { i: number; prev: number } | undefined;

const NO_TUN_OFFLOADS: TunOffloadState = { vnetHdr: false, tso: false, uso: false, gro: false };
const NO_CONN_OFFLOADS: ConnOffloadState = { gso: false, gro: false };

/**
 * Yields `budget` copies of a template packet, a full batch at a time (or at most `trickle`
 * per read, as request/response traffic arrives); counts writes.
 */
class TemplateTun implements TunDevice {
  readonly name = 'tpl';
  readonly mtu = 1500;
  readonly offloads = NO_TUN_OFFLOADS;
  budget = 0;
  trickle = 0;
  writtenPackets = 0;
  /**
   * Bytes written, in a typed array: a plain field would overflow V8's small integers after
   * ~1.5 million packets and change representation, deoptimising everything that touches
   * this object mid-run (and the forwarder's code with it).
   */
  readonly writtenBytes = new Float64Array(1);
  /** The forwarder's readiness handler, as a native device's poll callback would call it. */
  onReadable: () => void = () => undefined;
  constructor(private readonly template: Buffer) {}
  read(batch: PacketBatch): number {
    batch.count = 0;
    const max = this.trickle > 0 ? Math.min(this.trickle, batch.capacity) : batch.capacity;
    while (this.budget > 0 && batch.count < max) {
      const at = batch.slotStart(batch.count);
      this.template.copy(batch.arena, at);
      batch.push(at, this.template.length);
      this.budget--;
    }
    return batch.count;
  }
  write(batch: PacketBatch): number {
    for (let i = 0; i < batch.count; i++) (this.writtenBytes[0] as number) += batch.length[i] as number;
    this.writtenPackets += batch.count;
    return batch.count;
  }
  startReading(cb: () => void): void {
    this.onReadable = cb;
  }
  stopReading(): void {}
  close(): void {}
}

/**
 * Exact-length views, made once and reused: Buffer#copy allocates a temporary view when
 * it copies part of its source, but not when it copies a whole Buffer.
 */
class ViewCache {
  private readonly views = new Map<number, Buffer>();
  get(buf: Buffer, offset: number, length: number): Buffer {
    let v = this.views.get(offset);
    if (v === undefined || v.length !== length || v.buffer !== buf.buffer) {
      v = buf.subarray(offset, offset + length);
      this.views.set(offset, v);
    }
    return v;
  }
}

const WIRE_SLOT = 2048;

/** One direction of a wire: send() copies into fixed slots, the peer's recv() drains them. */
class Wire {
  readonly slots = 8192;
  readonly store = Buffer.allocUnsafeSlow(this.slots * WIRE_SLOT);
  readonly len = new Int32Array(this.slots);
  readonly views = new ViewCache();
  count = 0;
  head = 0;
}

class WireConn implements PacketConn {
  readonly offloads = NO_CONN_OFFLOADS;
  private readonly sendViews = new ViewCache();
  peerAddr = 0;
  peerPort = 0;
  /** At most this many datagrams per recv when > 0. */
  trickle = 0;
  onReadable: () => void = () => undefined;
  constructor(
    readonly localAddr: number,
    readonly localPort: number,
    private readonly out: Wire,
    private readonly inbox: Wire,
  ) {}
  send(batch: PacketBatch): number {
    const w = this.out;
    let i = 0;
    for (; i < batch.count && w.count < w.slots; i++) {
      const l = batch.length[i] as number;
      this.sendViews.get(batch.arena, batch.offset[i] as number, l).copy(w.store, w.count * WIRE_SLOT);
      w.len[w.count] = l;
      w.count++;
    }
    return i;
  }
  recv(batch: PacketBatch): number {
    const w = this.inbox;
    batch.count = 0;
    let at = 0;
    const max = this.trickle > 0 ? Math.min(this.trickle, batch.capacity) : batch.capacity;
    while (w.head < w.count && batch.count < max) {
      const l = w.len[w.head] as number;
      if (at + l > batch.arena.length) break;
      w.views.get(w.store, w.head * WIRE_SLOT, l).copy(batch.arena, at);
      batch.push(at, l, this.peerAddr, this.peerPort);
      at += l;
      w.head++;
    }
    if (w.head === w.count) {
      w.head = 0;
      w.count = 0;
    }
    return batch.count;
  }
  /** Datagrams waiting in this side's inbox. */
  pending(): boolean {
    return this.inbox.head < this.inbox.count;
  }
  startReading(cb: () => void): void {
    this.onReadable = cb;
  }
  stopReading(): void {}
  close(): void {}
}

/** Reports readiness from the twins' own state, as the native poller reports the fds'. */
class TwinPoller implements BusyPoll {
  /**
   * Like the native poller's: milliseconds of a monotonic clock that started long ago (not
   * small integers, which V8 would keep as Smis where real times are heap doubles), moving
   * 1 µs per call.
   */
  readonly clock = Float64Array.of(86_400_000.123, 0);
  constructor(
    private readonly tun: TemplateTun,
    private readonly conn: WireConn,
  ) {}
  wait(maxUs: number): number {
    const c = this.clock;
    (c[0] as number) += 0.001;
    c[1] = maxUs > 0 ? 0.001 : 0;
    return (this.tun.budget > 0 ? BusyPollReady.tun : 0) | (this.conn.pending() ? BusyPollReady.conn : 0);
  }
}

/**
 * `handlers`: the forwarders' handlers are called directly with full batches (bulk).
 * `busy-poll`: devices hand over at most 4 packets per call (request/response sized), the
 * readiness callbacks are called as the native devices call them, and each small turn runs
 * a busy-poll session whose windows find the next packets.
 */
export type AllocMode = 'handlers' | 'busy-poll';

function wiredPair(kind: Kind, template: Buffer, mode: AllocMode) {
  const port = kind === 'udp' ? 8285 : 8472;
  const ab = new Wire();
  const ba = new Wire();
  const nodes = [0, 1].map((id) => {
    const n = id + 1;
    const subnet = parseCidr(`10.244.${n}.0/24`);
    const mac = Buffer.from([2, 0, 0, 0, 0, n]);
    const publicIp = ip(`198.18.0.${n}`);
    const tun = new TemplateTun(template);
    const conn = new WireConn(publicIp, port, id === 0 ? ab : ba, id === 0 ? ba : ab);
    const encap =
      kind === 'udp' ? createEncap({ type: 'udp' }) : createEncap({ type: 'vxlan', vni: 1, localMac: mac });
    // Small batches (8 packets, one 64 KiB receive buffer) so that even one allocation per
    // batch would add up to megabytes over the run.
    const fwd = new Forwarder({
      tun,
      conn,
      encap,
      local: { subnet, tunAddr: subnet.addr },
      port,
      tunBatchSize: 8,
      // busy-poll: a 4-datagram receive must read as a short one (fewer than asked for), as
      // from a socket with little waiting, so the turn ends and its busy poll runs.
      recvMessages: mode === 'busy-poll' ? 8 : 1,
      ...(mode === 'busy-poll'
        ? { busyPollUs: 100, busyPoller: new TwinPoller(tun, conn) }
        : { busyPollUs: 0 }),
    });
    if (mode === 'busy-poll') {
      tun.trickle = 4;
      conn.trickle = 4;
    }
    const peer = { id, subnet, publicIp, port: 0, vtepMac: mac, leaseKey: cidrToKey(subnet) };
    return { tun, conn, fwd, peer };
  });
  const [a, b] = nodes as [(typeof nodes)[0], (typeof nodes)[0]];
  a.conn.peerAddr = b.peer.publicIp;
  b.conn.peerAddr = a.peer.publicIp;
  a.conn.peerPort = port;
  b.conn.peerPort = port;
  a.fwd.setPeers([b.peer]);
  b.fwd.setPeers([a.peer]);
  a.fwd.start();
  b.fwd.start();
  return { a, b };
}

/**
 * Bytes allocated by weft's own code (call frames from src/) while sampling, garbage
 * included: V8's sampling heap profiler with objects collected since counted. Unlike
 * heapUsed it is not blurred by a scavenge, nor by the code and feedback the JIT adds.
 */
export async function sampleAllocations(): Promise<{ stop: () => Promise<number> }> {
  const session = new Session();
  session.connect();
  await session.post('HeapProfiler.enable');
  await session.post('HeapProfiler.startSampling', {
    samplingInterval: 1024,
    includeObjectsCollectedByMajorGC: true,
    includeObjectsCollectedByMinorGC: true,
  } as never);
  return {
    stop: async () => {
      const { profile } = await session.post('HeapProfiler.stopSampling');
      await session.post('HeapProfiler.disable');
      session.disconnect();
      let bytes = 0;
      const walk = (n: (typeof profile)['head']): void => {
        if (n.callFrame.url.includes('/src/')) bytes += n.selfSize;
        for (const c of n.children) walk(c);
      };
      walk(profile.head);
      return bytes;
    },
  };
}

export function countScavenges(): { stop: () => Promise<{ minor: number; major: number }> } {
  let minor = 0;
  let major = 0;
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = (e as unknown as { detail?: { kind?: number } }).detail?.kind;
      if (kind === perfConstants.NODE_PERFORMANCE_GC_MINOR) minor++;
      else major++;
    }
  });
  obs.observe({ entryTypes: ['gc'] });
  return {
    stop: async () => {
      await new Promise<void>((r) => setTimeout(r, 50));
      obs.disconnect();
      return { minor, major };
    },
  };
}

/** Pushes 10^6 packets A -> B and asserts no per-packet or per-batch allocation. */
export async function allocCheck(kind: Kind, mode: AllocMode = 'handlers'): Promise<void> {
  const template = buildIpv4({ src: ip('10.244.1.5'), dst: ip('10.244.2.9'), payload: Buffer.alloc(1372) });
  const { a, b } = wiredPair(kind, template, mode);
  const pump =
    mode === 'handlers'
      ? (packets: number): void => {
          a.tun.budget = packets;
          while (a.tun.budget > 0) {
            a.fwd.onTunReadable();
            b.fwd.onConnReadable();
          }
        }
      : (packets: number): void => {
          a.tun.budget = packets;
          while (a.tun.budget > 0) {
            a.tun.onReadable();
            // B drains what A sent (each call a turn plus its busy-poll session, which ends
            // on its time bound now and then), so the wire never backs up.
            while (b.conn.pending()) b.conn.onReadable();
          }
        };
  pump(WARMUP); // warm up: let the JIT settle
  gc();
  const heapBefore = process.memoryUsage().heapUsed;
  // The busy-poll path runs more, smaller calls per packet and settles later in the JIT: a
  // longer run keeps its warm-up's leftovers well below one object per turn.
  const N = mode === 'busy-poll' ? 4_000_000 : 1_000_000;
  const sampler = await sampleAllocations();
  const watch = countScavenges();
  const t0 = process.hrtime.bigint();
  pump(N);
  const ns = Number(process.hrtime.bigint() - t0);
  const gcs = await watch.stop();
  const allocated = await sampler.stop();
  gc();
  const heapAfter = process.memoryUsage().heapUsed;
  const pps = N / (ns / 1e9);
  const gbps = (pps * template.length * 8) / 1e9;
  console.log(
    `# ${kind}: ${N} packets of ${template.length} B A->B in ${(ns / 1e6).toFixed(0)} ms: ` +
      `${(pps / 1e6).toFixed(2)} Mpps (${gbps.toFixed(1)} Gbit/s of inner packets), ` +
      `scavenges ${gcs.minor}, major GCs ${gcs.major}, allocated by src/ ${(allocated / 1024).toFixed(0)} KiB (${(allocated / N).toFixed(2)} B/packet), retained ${((heapAfter - heapBefore) / 1024).toFixed(0)} KiB`,
  );
  assert.equal(b.tun.writtenPackets, WARMUP + N, 'every packet delivered');
  assert.equal(a.fwd.stats.totalDrops() + b.fwd.stats.totalDrops(), 0);
  assert.equal(b.fwd.stats.get(Counter.tunWritePackets), WARMUP + N);
  if (mode === 'busy-poll') {
    // The path under test ran: most packets were found by busy-poll windows, on both sides.
    for (const f of [a.fwd, b.fwd]) {
      const hits = f.stats.get(Counter.busyPollHits);
      const misses = f.stats.get(Counter.busyPollMisses);
      console.log(`# busy poll: ${hits} windows found packets, ${misses} found none`);
      assert.ok(hits * 4 > (WARMUP + N) / 2, `busy-poll hits ${hits}`);
      assert.ok(misses > 0, 'sessions end on an empty window');
    }
  }
  // Calibration: the same number of small objects, one per packet.
  const cal = countScavenges();
  for (let i = 0; i < N; i++) sink = { i, prev: sink === undefined ? 0 : 1 };
  const perPacketObject = (await cal.stop()).minor;
  console.log(`# calibration: one small object per packet would cost ${perPacketObject} scavenges`);
  // One small object per batch (125,000 batches per side) would cost several scavenges;
  // one per packet many more. A few are tolerated for JIT warm-up and deoptimisations.
  assert.ok(gcs.minor <= 4, `scavenges during the run: ${gcs.minor}`);
  // What weft's own code allocated, garbage included: one 16-byte object per batch or per
  // busy-poll turn of 4 packets would be 2-4 bytes per packet; JIT tier-ups and
  // deoptimisations leave a few hundred KiB to ~2 MB in the window.
  assert.ok(allocated < N, `weft's code allocated ${allocated} bytes for ${N} packets`);
  assert.ok(
    gcs.minor * 2 < perPacketObject,
    `scavenges ${gcs.minor} vs ${perPacketObject} for one object per packet`,
  );
  assert.ok(heapAfter - heapBefore < 1 << 20, `heap grew by ${heapAfter - heapBefore} bytes`);
}
