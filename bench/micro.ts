/**
 * Micro-benchmarks of the data path's building blocks, side by side in one run.
 *
 * Why: the design rule is "batch, count, allocate nothing per packet", and the pieces a
 * packet goes through (checksum, header validation, encap, route lookup, the native
 * segmentation/coalescing hooks, the whole Forwarder loop) each have a cost worth
 * watching. Every case works on realistic packets built once up front; next to its speed
 * the script prints the bytes it allocates per op (heap and ArrayBuffer memory, measured
 * with the GC quiet around a fixed number of ops), because speed without the allocation
 * figure hides the cost the garbage collector pays later.
 *
 *   npm run bench:micro [-- --filter REGEX] [--quick] [--json FILE]
 *
 * Absolute numbers depend on the machine and its load; compare ratios within one run.
 */
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, loadavg } from 'node:os';
import { PerformanceObserver } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { ConnOffloadState, PacketConn } from '../src/conn/conn.ts';
import { checksumUpdate16, internetChecksum } from '../src/encap/checksum.ts';
import { UdpEncap, VxlanEncap } from '../src/encap/encap.ts';
import type { Encap } from '../src/encap/encap.ts';
import { ipv4DecrementTtl, ipv4Validate } from '../src/encap/ipv4.ts';
import { Forwarder } from '../src/dataplane/forwarder.ts';
import { Counter } from '../src/dataplane/stats.ts';
import { loadAddon } from '../src/native/addon.ts';
import type { WeftIoAddon } from '../src/native/addon.ts';
import { cidrToKey, parseCidr } from '../src/routing/ipv4.ts';
import { RouteTable } from '../src/routing/route-table.ts';
import { PacketBatch } from '../src/tun/batch.ts';
import type { TunDevice, TunOffloadState } from '../src/tun/tun.ts';
import { buildIpv4, ip } from '../test/encap/packets.ts';
import { pattern, tcpPacket, vnetHdr } from '../test/native/fixtures/packets.ts';

// --- the benchmark package (CommonJS, no bundled types): the part of its API used here ---

interface BenchStats {
  readonly rme: number;
  readonly mean: number;
  readonly sample: readonly number[];
}
interface BenchTarget {
  readonly name: string;
  readonly hz: number;
  readonly stats: BenchStats;
  readonly error?: unknown;
}
interface BenchSuite {
  add(name: string, fn: () => void, options?: Record<string, unknown>): BenchSuite;
  on(event: string, listener: (event: { target: BenchTarget }) => void): BenchSuite;
  run(options?: { async?: boolean }): BenchSuite;
}
interface BenchmarkModule {
  Suite: new (name?: string) => BenchSuite;
}
const Benchmark = createRequire(import.meta.url)('benchmark') as BenchmarkModule;

// --- options ---

const { values: args } = parseArgs({
  options: {
    filter: { type: 'string' },
    quick: { type: 'boolean', default: false },
    json: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (args.help) {
  console.log('usage: node --import tsx bench/micro.ts [--filter REGEX] [--quick] [--json FILE]');
  process.exit(0);
}
const filter = args.filter !== undefined ? new RegExp(args.filter) : undefined;
const quick = args.quick;
const benchOptions = quick ? { maxTime: 0.05, minSamples: 3, initCount: 1 } : { maxTime: 1, minSamples: 10 };
/** Ops per allocation measurement (small enough that the young generation does not fill). */
const ALLOC_OPS = quick ? 500 : 5000;

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Results are folded into this so no case can be optimised away. */
let sink = 0;

// --- allocation measurement ---

let gcEvents = 0;
new PerformanceObserver((list) => {
  gcEvents += list.getEntries().length;
}).observe({ entryTypes: ['gc'] });

interface AllocResult {
  /** Heap bytes per op, or null when a GC ran during the measurement (figure unusable). */
  readonly heapPerOp: number | null;
  /** ArrayBuffer (Buffer) bytes per op. */
  readonly externalPerOp: number | null;
}

/**
 * Runs `fn` ALLOC_OPS times between two memory readings with a full GC before; without a
 * collection in between, the growth is what the ops allocated (null when every attempt saw
 * a GC). GC entries are delivered asynchronously, so the check waits a little on both sides.
 */
let readingCost = 0;

async function calibrateAlloc(): Promise<void> {
  let least = Infinity;
  for (let i = 0; i < 5; i++) {
    gc();
    await new Promise<void>((r) => setTimeout(r, 5));
    const m0 = process.memoryUsage();
    const m1 = process.memoryUsage();
    least = Math.min(least, m1.heapUsed - m0.heapUsed);
  }
  readingCost = Math.max(0, least);
}

async function measureAlloc(fn: () => void, ops = ALLOC_OPS): Promise<AllocResult> {
  for (let i = 0; i < ops; i++) fn(); // warm (JIT tier-ups allocate code, not per op)
  // The least of a few runs: a run that overlaps an optimising compile or a deopt carries
  // its one-off allocations; a real per-op allocation shows up in every run.
  let heap: number | null = null;
  let external: number | null = null;
  for (let rep = 0; rep < 3; rep++) {
    gc();
    // GC entries arrive on a later turn: let the forced one land before reading the count.
    await new Promise<void>((r) => setTimeout(r, 20));
    const before = gcEvents;
    const m0 = process.memoryUsage();
    for (let i = 0; i < ops; i++) fn();
    const m1 = process.memoryUsage();
    await new Promise<void>((r) => setTimeout(r, 20));
    if (gcEvents !== before) continue;
    // process.memoryUsage() itself allocates between the readings: subtract an empty run's growth.
    const h = Math.max(0, (m1.heapUsed - m0.heapUsed - readingCost) / ops);
    const e = Math.max(0, (m1.arrayBuffers - m0.arrayBuffers) / ops);
    heap = heap === null ? h : Math.min(heap, h);
    external = external === null ? e : Math.min(external, e);
  }
  return { heapPerOp: heap, externalPerOp: external };
}

// --- cases ---

interface Case {
  readonly name: string;
  readonly fn: () => void;
  /** Packets (or bytes, see unit) handled per op, for the derived rate. */
  readonly perOp?: number;
  readonly unit?: 'packets' | 'bytes';
  /** Ops per allocation measurement when an op allocates by design (default ALLOC_OPS). */
  readonly allocOps?: number;
}

const cases: Case[] = [];
const skipped: { name: string; why: string }[] = [];
function add(c: Case): void {
  if (filter === undefined || filter.test(c.name)) cases.push(c);
}

// Checksums over realistic sizes: a bare header, an MTU-sized packet, a 64 KiB super-packet.
for (const size of [20, 1500, 65536]) {
  const buf = Buffer.allocUnsafeSlow(size);
  for (let i = 0; i < size; i++) buf[i] = (i * 131 + 7) & 0xff;
  add({
    name: `checksum ${size} B`,
    fn: () => {
      sink ^= internetChecksum(buf, 0, size);
    },
    perOp: size,
    unit: 'bytes',
  });
}

{
  // RFC 1624 update for a TTL decrement, over a table of real headers (TTL/proto/checksum).
  const n = 256;
  const csum = new Uint16Array(n);
  const oldW = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    const p = buildIpv4({ src: ip('10.244.1.5'), dst: ip('10.244.2.9'), ttl: 2 + (i % 250), id: i });
    csum[i] = p.readUInt16BE(10);
    oldW[i] = p.readUInt16BE(8);
  }
  let k = 0;
  add({
    name: 'checksum RFC 1624 TTL update',
    fn: () => {
      const i = k++ & (n - 1);
      const o = oldW[i] as number;
      sink ^= checksumUpdate16(csum[i] as number, o, o - 0x100);
    },
  });
}

{
  // Validation + TTL decrement of a 1500-byte packet in place; a pristine copy of the
  // header is kept in the same arena and restored (copyWithin, no allocation) when TTL runs out.
  const arena = Buffer.allocUnsafeSlow(4096);
  const pkt = buildIpv4({
    src: ip('10.244.1.5'),
    dst: ip('10.244.2.9'),
    ttl: 255,
    payload: Buffer.alloc(1480, 1),
  });
  pkt.copy(arena, 0);
  pkt.copy(arena, 2048, 0, 20);
  add({
    name: 'ipv4 validate + TTL decrement',
    fn: () => {
      const total = ipv4Validate(arena, 0, 1500);
      if (!ipv4DecrementTtl(arena, 0)) arena.copyWithin(0, 2048, 2068);
      sink ^= total;
    },
  });
}

{
  const headroom = 64;
  const arena = Buffer.allocUnsafeSlow(2048);
  const inner = buildIpv4({ src: ip('10.244.1.5'), dst: ip('10.244.2.9'), payload: Buffer.alloc(1380, 3) });
  inner.copy(arena, headroom);
  const len = inner.length;
  const localMac = Buffer.from([2, 0, 0, 0, 0, 1]);
  const peerMac = Buffer.from([2, 0, 0, 0, 0, 2]);
  const encaps: [string, Encap, Encap][] = [
    ['udp', new UdpEncap(), new UdpEncap()],
    // Encapsulate as node 1 towards node 2, decapsulate as node 2 (VTEP MAC must match).
    ['vxlan', new VxlanEncap(1, localMac), new VxlanEncap(1, peerMac)],
  ];
  const peer = { vtepMac: peerMac };
  for (const [name, tx, rx] of encaps) {
    add({
      name: `${name} encapsulate + decapsulate 1400 B`,
      fn: () => {
        const start = tx.encapsulate(arena, headroom, len, peer);
        sink ^= rx.decapsulate(arena, start, len + tx.headroom) + start;
      },
    });
  }
}

for (const peers of [10, 1000, 5000]) {
  // /24 leases out of 10.0.0.0/8, as flannel hands them out.
  const table = new RouteTable<number>();
  for (let i = 0; i < peers; i++) table.add({ addr: (0x0a000000 + (i << 8)) >>> 0, prefix: 24 }, i);
  const hits = new Uint32Array(1024);
  const misses = new Uint32Array(1024);
  for (let i = 0; i < hits.length; i++) {
    hits[i] = (0x0a000000 + ((i * 7919) % peers << 8) + 1 + (i % 250)) >>> 0;
    misses[i] = (0x0b000000 + (i << 8) + 9) >>> 0;
  }
  let h = 0;
  let m = 0;
  add({
    name: `route lookup ${peers} peers hit`,
    fn: () => {
      sink ^= table.lookup(hits[h++ & 1023] as number) ?? -1;
    },
  });
  add({
    name: `route lookup ${peers} peers miss`,
    fn: () => {
      sink ^= table.lookup(misses[m++ & 1023] as number) ?? -1;
    },
  });
}

// Native TSO segmentation and receive-side coalescing, through the addon's test hooks.
let addon: WeftIoAddon | undefined;
try {
  addon = loadAddon();
} catch (err) {
  skipped.push({ name: 'native segment/coalesce', why: (err as Error).message });
}
if (addon !== undefined) {
  const a = addon;
  const mss = 1448;
  const sup = tcpPacket({ payload: pattern(65535 - 40), partialCsum: true, id: 1 });
  const input = Buffer.concat([
    vnetHdr({ flags: 1, gsoType: 1, hdrLen: 40, gsoSize: mss, csumStart: 20, csumOffset: 16 }),
    sup,
  ]);
  const seg = PacketBatch.forSlots(64, 2048, 64);
  const segments = a.segment(
    input,
    seg.arena,
    seg.headroom,
    seg.slotSize,
    seg.capacity,
    seg.offset,
    seg.length,
  );
  if (segments !== Math.ceil((65535 - 40) / mss)) throw new Error(`segment produced ${segments} segments`);
  add({
    name: `native segment 64 KiB TCP super-packet (${segments} segments)`,
    fn: () => {
      sink ^= a.segment(input, seg.arena, seg.headroom, seg.slotSize, seg.capacity, seg.offset, seg.length);
    },
    perOp: segments,
    unit: 'packets',
  });

  const n = 44;
  const co = PacketBatch.forSlots(n, 2048, 64);
  for (let i = 0; i < n; i++) {
    co.pushCopy(tcpPacket({ seq: 5000 + i * mss, id: 100 + i, payload: pattern(mss, i + 1) }));
  }
  // coalesce() fixes the first packet's headers in place; restore that slot before each op.
  const first = Buffer.from(co.arena.subarray(co.slotStart(0), co.slotStart(0) + 40 + mss));
  const firstAt = co.slotStart(0);
  const writes = a.coalesce(co.arena, co.offset, co.length, co.count);
  if (writes.length !== 1) throw new Error(`coalesce produced ${writes.length} writes for one flow`);
  add({
    name: `native coalesce ${n} TCP segments`,
    fn: () => {
      co.arena.set(first, firstAt);
      sink ^= a.coalesce(co.arena, co.offset, co.length, co.count).length;
    },
    perOp: n,
    unit: 'packets',
    // The test hook returns each write as a new Buffer (~64 KiB here): fewer ops, or the GC runs.
    allocOps: 20,
  });
}

// --- the whole Forwarder loop on allocation-free in-memory twins ---

const NO_TUN_OFFLOADS: TunOffloadState = { vnetHdr: false, tso: false, uso: false, gro: false };
const NO_CONN_OFFLOADS: ConnOffloadState = { gso: false, gro: false };

/** A TUN that yields one batch of copies of a template per read() and counts writes. */
class TemplateTun implements TunDevice {
  readonly name = 'bench-tun';
  readonly offloads = NO_TUN_OFFLOADS;
  budget = 0;
  written = 0;
  constructor(
    readonly mtu: number,
    private readonly template: Buffer,
  ) {}
  read(batch: PacketBatch): number {
    batch.count = 0;
    while (this.budget > 0 && batch.count < batch.capacity) {
      const at = batch.slotStart(batch.count);
      batch.arena.set(this.template, at);
      batch.push(at, this.template.length);
      this.budget--;
    }
    return batch.count;
  }
  write(batch: PacketBatch): number {
    this.written += batch.count;
    return batch.count;
  }
  startReading(): void {}
  stopReading(): void {}
  close(): void {}
}

/** A socket that counts sends and receives `budget` copies of a template datagram. */
class TemplateConn implements PacketConn {
  readonly offloads = NO_CONN_OFFLOADS;
  budget = 0;
  sent = 0;
  constructor(
    readonly localAddr: number,
    readonly localPort: number,
    private readonly template: Buffer,
    private readonly from: number,
    private readonly fromPort: number,
  ) {}
  send(batch: PacketBatch): number {
    this.sent += batch.count;
    return batch.count;
  }
  recv(batch: PacketBatch): number {
    batch.count = 0;
    const stride = (this.template.length + 7) & ~7;
    let at = 0;
    while (this.budget > 0 && batch.count < batch.capacity && at + stride <= batch.arena.length) {
      batch.arena.set(this.template, at);
      batch.push(at, this.template.length, this.from, this.fromPort);
      at += stride;
      this.budget--;
    }
    return batch.count;
  }
  startReading(): void {}
  stopReading(): void {}
  close(): void {}
}

const BATCH = 64;
for (const kind of ['udp', 'vxlan'] as const) {
  const port = kind === 'udp' ? 8285 : 8472;
  const localSubnet = parseCidr('10.244.1.0/24');
  const peerSubnet = parseCidr('10.244.2.0/24');
  const localMac = Buffer.from([2, 0, 0, 0, 0, 1]);
  const peerMac = Buffer.from([2, 0, 0, 0, 0, 2]);
  const peerIp = ip('198.18.0.2');
  const mtu = kind === 'udp' ? 1472 : 1450;
  const encap = kind === 'udp' ? new UdpEncap() : new VxlanEncap(1, localMac);
  const outbound = buildIpv4({
    src: ip('10.244.1.5'),
    dst: ip('10.244.2.9'),
    payload: Buffer.alloc(1380, 5),
  });
  const inner = buildIpv4({ src: ip('10.244.2.9'), dst: ip('10.244.1.5'), payload: Buffer.alloc(1380, 6) });
  const datagram =
    kind === 'udp'
      ? inner
      : Buffer.concat([
          Buffer.from([0x08, 0, 0, 0, 0, 0, 1, 0]),
          localMac,
          peerMac,
          Buffer.from([0x08, 0x00]),
          inner,
        ]);
  const tun = new TemplateTun(mtu, outbound);
  const conn = new TemplateConn(ip('198.18.0.1'), port, datagram, peerIp, port);
  const fwd = new Forwarder({
    tun,
    conn,
    encap,
    local: { subnet: localSubnet, tunAddr: localSubnet.addr, vtepMac: localMac },
    port,
    tunBatchSize: BATCH,
    recvMessages: 1,
  });
  fwd.setPeers([
    {
      id: 0,
      subnet: peerSubnet,
      publicIp: peerIp,
      port: 0,
      vtepMac: peerMac,
      leaseKey: cidrToKey(peerSubnet),
    },
  ]);
  fwd.start();
  add({
    name: `forwarder ${kind} TUN->socket, batches of ${BATCH}`,
    fn: () => {
      tun.budget = BATCH;
      fwd.onTunReadable();
    },
    perOp: BATCH,
    unit: 'packets',
  });
  add({
    name: `forwarder ${kind} socket->TUN, batches of ${BATCH}`,
    fn: () => {
      conn.budget = BATCH;
      fwd.onConnReadable();
    },
    perOp: BATCH,
    unit: 'packets',
  });
  // Guard: the loop really forwards (nothing dropped) before its speed means anything.
  tun.budget = BATCH;
  fwd.onTunReadable();
  conn.budget = BATCH;
  fwd.onConnReadable();
  if (conn.sent !== BATCH || tun.written !== BATCH || fwd.stats.totalDrops() !== 0) {
    throw new Error(
      `forwarder ${kind} bench setup drops packets: ${JSON.stringify(fwd.stats.snapshot().drops)}`,
    );
  }
  if (fwd.stats.get(Counter.sendPackets) !== BATCH) throw new Error('send counter mismatch');
}

// --- run ---

interface Row {
  name: string;
  opsPerSec: number;
  nsPerOp: number;
  rmePct: number;
  samples: number;
  rate?: { unit: string; perSec: number };
  heapBytesPerOp: number | null;
  externalBytesPerOp: number | null;
  error?: string;
}

function fmt(n: number, digits = 0): string {
  return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function rateText(c: Case, hz: number): string {
  if (c.perOp === undefined || c.unit === undefined) return '';
  const r = hz * c.perOp;
  return c.unit === 'bytes' ? `${fmt(r / 1e9, 2)} GB/s` : `${fmt(r / 1e6, 2)} Mpps`;
}

function allocText(v: number | null): string {
  return v === null ? 'n/a (GC ran)' : `${fmt(v, v < 10 ? 1 : 0)} B`;
}

async function main(): Promise<number> {
  console.log(
    `# weft micro-benchmarks: node ${process.version}, ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), ` +
      `load ${loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')}${quick ? ', --quick' : ''}`,
  );
  for (const s of skipped) console.log(`# skipped ${s.name}: ${s.why}`);
  if (cases.length === 0) {
    console.error('no case matches the filter');
    return 1;
  }
  await calibrateAlloc();
  const rows: Row[] = [];
  for (const c of cases) {
    const result = await new Promise<BenchTarget>((resolve) => {
      let target: BenchTarget | undefined;
      new Benchmark.Suite()
        .add(c.name, c.fn, benchOptions)
        .on('cycle', (e) => {
          target = e.target;
        })
        .on('complete', () => resolve(target as BenchTarget))
        .run({ async: false });
    });
    if (result.error !== undefined) {
      const msg = result.error instanceof Error ? result.error.message : JSON.stringify(result.error);
      console.log(`${c.name}: ERROR ${msg}`);
      rows.push({
        name: c.name,
        opsPerSec: 0,
        nsPerOp: 0,
        rmePct: 0,
        samples: 0,
        heapBytesPerOp: null,
        externalBytesPerOp: null,
        error: msg,
      });
      continue;
    }
    const alloc = await measureAlloc(c.fn, c.allocOps);
    const hz = result.hz;
    const row: Row = {
      name: c.name,
      opsPerSec: hz,
      nsPerOp: 1e9 / hz,
      rmePct: result.stats.rme,
      samples: result.stats.sample.length,
      heapBytesPerOp: alloc.heapPerOp,
      externalBytesPerOp: alloc.externalPerOp,
    };
    if (c.perOp !== undefined && c.unit !== undefined)
      row.rate = { unit: `${c.unit}/s`, perSec: hz * c.perOp };
    rows.push(row);
    const perPacket =
      c.unit === 'packets' && c.perOp !== undefined ? `, ${fmt(1e9 / (hz * c.perOp), 1)} ns/packet` : '';
    console.log(
      `${c.name.padEnd(52)} ${fmt(hz).padStart(14)} ops/s ${fmt(1e9 / hz, 1).padStart(12)} ns/op ` +
        `±${result.stats.rme.toFixed(2)}% (${row.samples} runs)` +
        `${rateText(c, hz) ? `  ${rateText(c, hz)}` : ''}${perPacket}` +
        `  alloc/op heap ${allocText(alloc.heapPerOp)}, buffers ${allocText(alloc.externalPerOp)}`,
    );
  }
  const summary = {
    node: process.version,
    cpus: cpus().length,
    loadavg: loadavg(),
    quick,
    sink,
    results: rows,
  };
  const line = JSON.stringify(summary);
  console.log(`JSON ${line}`);
  if (args.json !== undefined) writeFileSync(args.json, `${line}\n`);
  return rows.some((r) => r.error !== undefined) ? 1 : 0;
}

process.exitCode = await main();
