/**
 * Measures one path (src/compare/paths.ts) on a fresh 2-node cluster: ping RTT p50/p99,
 * TCP throughput (iperf3, 1 stream, and optionally 4 streams), optionally a UDP
 * request/response RTT p50/p99 (sockperf ping-pong), small-packet rate (iperf3 UDP, 64-byte
 * payloads, unlimited offered load: packets/s received and loss), the effective pod MTU,
 * and the CPU the forwarder processes (weftd and its children on both nodes, or what the
 * path names) spent per second and per Gbit/s. `measureRounds` repeats the measurements on
 * one cluster (bench/run.ts takes medians); `measurePath` is one round (`weft compare`).
 */
import { readFileSync } from 'node:fs';
import { NetnsRun } from '../netns/netns.ts';
import { Cluster } from '../netns/topology.ts';
import type { Pod } from '../netns/topology.ts';
import type { PathSpec } from './paths.ts';

export interface PathResult {
  readonly id: string;
  readonly name: string;
  readonly how: string;
  readonly overheadBytes: number;
  readonly mtu?: number;
  readonly rttP50Us?: number;
  readonly rttP99Us?: number;
  readonly tcpGbps?: number;
  readonly tcpRetransmits?: number;
  /** iperf3 -P 4 (only when MeasureOptions.tcp4). */
  readonly tcp4Gbps?: number;
  /** UDP request/response round trip, 64-byte messages (only when MeasureOptions.udpRr). */
  readonly udpRttP50Us?: number;
  readonly udpRttP99Us?: number;
  /** 64-byte UDP packets/s read by the receiving iperf3. */
  readonly smallPps?: number;
  /**
   * 64-byte UDP packets/s the path delivered to the receiving pod's UDP stack: read, or
   * dropped there because the receiving program's socket buffer was full (the pod's
   * InDatagrams + RcvbufErrors). Above `smallPps` when the receiving program is short of CPU.
   */
  readonly smallDeliveredPps?: number;
  readonly smallLossPct?: number;
  /**
   * Loss of 64-byte packets offered at a fixed rate (MeasureOptions.smallRatePps, the
   * reference path's packets/s in bench/run.ts): "no loss below the kernel's rate".
   */
  readonly smallAtRateLossPct?: number;
  /** CPU of the forwarder processes during the TCP test, in cores (1.0 = one core busy). */
  readonly forwarderCpu?: number;
  /** Forwarder CPU seconds per Gbit transferred (lower is better). */
  readonly cpuSecondsPerGbit?: number;
  /** The same during the 4-stream test (only when MeasureOptions.tcp4). */
  readonly cpuSecondsPerGbit4?: number;
  /** Forwarder CPU µs per 64-byte packet delivered to the receiving pod (unlimited rate). */
  readonly cpuUsPerSmallPacket?: number;
  readonly error?: string;
}

/** The figures of one round of measurements (PathResult without the path's description). */
export type RoundResult = Omit<PathResult, 'id' | 'name' | 'how' | 'overheadBytes' | 'mtu' | 'error'>;

export interface MeasureOptions {
  /** Seconds per throughput test. */
  readonly seconds: number;
  /** Pings for the RTT percentiles. */
  readonly pings: number;
  /** Also measure TCP with 4 parallel streams. */
  readonly tcp4?: boolean;
  /** Also measure UDP request/response RTT (sockperf ping-pong, `seconds` long). */
  readonly udpRr?: boolean;
  /** Also offer 64-byte packets at this rate (packets/s) and report the loss. */
  readonly smallRatePps?: number;
  readonly progress?: (step: string) => void;
}

export function percentile(xs: readonly number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const idx = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[idx] as number;
}

const CLK_TCK = 100;

/** utime+stime of a process (all threads), in seconds; 0 if it is gone. */
function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

/** `pid` and all its live descendants (weftd's wireguard-go, a shell's background job). */
function withDescendants(pid: number): number[] {
  const out: number[] = [];
  const todo = [pid];
  while (todo.length > 0) {
    const p = todo.pop() as number;
    out.push(p);
    let tids: string[] = [];
    try {
      tids = readFileSync(`/proc/${p}/task/${p}/children`, 'utf8').trim().split(/\s+/);
    } catch {
      continue;
    }
    for (const c of tids) if (Number(c) > 0) todo.push(Number(c));
  }
  return out;
}

function forwarderPids(path: PathSpec, cluster: Cluster): number[] {
  const roots = path.forwarderPids
    ? path.forwarderPids(cluster)
    : cluster.nodes.map((n) => n.weftd?.pid ?? -1);
  return roots.filter((p) => p > 0).flatMap(withDescendants);
}

/** The Udp counters of a network namespace's /proc/net/snmp that tell delivered from read. */
export interface UdpSnmp {
  readonly inDatagrams: number;
  readonly rcvbufErrors: number;
}

/** Parses the "Udp:" header and value lines of /proc/net/snmp. */
export function parseUdpSnmp(text: string): UdpSnmp {
  const lines = text.split('\n').filter((l) => l.startsWith('Udp: '));
  const [names, values] = lines.map((l) => l.slice(5).trim().split(/\s+/));
  if (!names || !values || names.length !== values.length)
    throw new Error('/proc/net/snmp has no Udp counters');
  const get = (k: string): number => {
    const i = names.indexOf(k);
    const v = i >= 0 ? Number(values[i]) : NaN;
    if (!Number.isFinite(v)) throw new Error(`/proc/net/snmp has no Udp ${k}`);
    return v;
  };
  return { inDatagrams: get('InDatagrams'), rcvbufErrors: get('RcvbufErrors') };
}

async function udpSnmp(cluster: Cluster, pod: Pod): Promise<UdpSnmp> {
  return parseUdpSnmp(await cluster.run.exec(pod.ns, 'cat', ['/proc/net/snmp']));
}

/**
 * iperf3 UDP with 64-byte payloads at `ratePps` packets/s (0 = as fast as iperf3 can send).
 * At a fixed rate the sockets get 4 MiB buffers (-w): the question there is whether the path
 * loses packets, and with iperf3's default 208 KiB receive buffer the losses seen at that
 * rate were all at the receiving pod's socket (UdpRcvbufErrors in the pod, none in the
 * nodes), i.e. the receiving program briefly off the CPU, not the path.
 */
async function udpSmallPackets(
  cluster: Cluster,
  from: Pod,
  to: Pod,
  seconds: number,
  ratePps = 0,
): Promise<{ pps: number; deliveredPps: number; lossPct: number }> {
  // iperf3 -b counts payload bits.
  const args = ['-u', '-l', '64', '-b', String(Math.round(ratePps * 64 * 8)), '-t', String(seconds)];
  const before = await udpSnmp(cluster, to);
  const j = await cluster.iperf3(from, to, ratePps > 0 ? [...args, '-w', '4M'] : args, seconds);
  const after = await udpSnmp(cluster, to);
  const sum = j.end?.sum;
  if (!sum?.packets || !sum.seconds) throw new Error('iperf3 UDP: no result');
  const lost = sum.lost_packets ?? 0;
  const delivered = after.inDatagrams - before.inDatagrams + (after.rcvbufErrors - before.rcvbufErrors);
  return {
    pps: (sum.packets - lost) / sum.seconds,
    deliveredPps: delivered / sum.seconds,
    lossPct: (lost / sum.packets) * 100,
  };
}

/** iperf3 TCP with `streams` parallel streams; Gbit/s received. */
async function tcpStreams(
  cluster: Cluster,
  from: Pod,
  to: Pod,
  seconds: number,
  streams: number,
): Promise<number> {
  const j = await cluster.iperf3(from, to, ['-P', String(streams), '-t', String(seconds)], seconds);
  const bps = j.end?.sum_received?.bits_per_second;
  if (bps === undefined) throw new Error(`iperf3 -P ${streams}: no result`);
  return bps / 1e9;
}

/** Parses sockperf ping-pong output ("---> percentile 50.000 =   29.059", µs). */
export function parseSockperf(out: string): { p50Us: number; p99Us: number } {
  const pct = (p: string): number => {
    const m = new RegExp(`percentile ${p.replace('.', '\\.')} =\\s*([\\d.]+)`).exec(out);
    if (!m)
      throw new Error(`sockperf printed no ${p} percentile: ${out.trim().split('\n').slice(-3).join(' / ')}`);
    return Number(m[1]);
  };
  return { p50Us: pct('50.000'), p99Us: pct('99.000') };
}

/** UDP request/response RTT: sockperf ping-pong, 64-byte messages, full round trip. */
async function udpRequestResponse(
  cluster: Cluster,
  from: Pod,
  to: Pod,
  seconds: number,
): Promise<{ p50Us: number; p99Us: number }> {
  const port = 5997;
  const server = cluster.run.spawn(to.ns, 'sockperf', ['server', '-i', to.addr, '-p', String(port)]);
  try {
    // sockperf's stdout is block-buffered into a pipe: watch for its socket instead.
    const deadline = Date.now() + 10_000;
    while ((await cluster.run.exec(to.ns, 'ss', ['-Hlun', `sport = :${port}`])).trim() === '') {
      if (Date.now() > deadline || server.child.exitCode !== null)
        throw new Error(`sockperf server did not start: ${server.output()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const out = await cluster.run.exec(
      from.ns,
      'sockperf',
      [
        'ping-pong',
        '-i',
        to.addr,
        '-p',
        String(port),
        '-t',
        String(seconds),
        '--msg-size',
        '64',
        '--full-rtt',
      ],
      { timeoutMs: (seconds + 20) * 1000 },
    );
    return parseSockperf(out);
  } finally {
    await server.stop('SIGKILL', 1000);
  }
}

/** Back-to-back pings before each round's latency measurement (see measureRound). */
const WARMUP_PINGS = 2000;

/** One round of every measurement on a wired cluster, from pod `a` to pod `b`. */
async function measureRound(
  path: PathSpec,
  cluster: Cluster,
  a: Pod,
  b: Pod,
  opts: MeasureOptions,
  progress: (step: string) => void,
): Promise<RoundResult> {
  // Steady state first: back-to-back pings (the next one leaves when the reply is in) warm
  // every path the same way. A userspace forwarder that has just started runs its first
  // packets unoptimised (measured: weft udp's 10 ms ping p50 ~40 µs higher before this).
  progress(`warm-up: ${WARMUP_PINGS} back-to-back pings`);
  const warm = await cluster.ping(a, b.addr, { count: WARMUP_PINGS, adaptive: true, waitS: 1 });
  if (warm.received === 0) throw new Error(`no ping replies during the warm-up:\n${warm.output}`);
  progress(`ping x${opts.pings}`);
  const ping = await cluster.ping(a, b.addr, { count: opts.pings, intervalS: 0.01, waitS: 1 });
  if (ping.rtts.length === 0) throw new Error(`no ping replies:\n${ping.output}`);

  progress(`TCP ${opts.seconds} s`);
  const pids = forwarderPids(path, cluster);
  // Forwarder CPU seconds (all its processes and threads) used while `f` runs.
  const withCpu = async <T>(f: () => Promise<T>): Promise<{ r: T; cpu: number; wall: number }> => {
    const c0 = pids.reduce((s, p) => s + cpuSeconds(p), 0);
    const t0 = process.hrtime.bigint();
    const r = await f();
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    return { r, cpu: pids.reduce((s, p) => s + cpuSeconds(p), 0) - c0, wall };
  };
  const { r: tcp, cpu, wall } = await withCpu(() => cluster.iperf(a, b, opts.seconds));

  let tcp4Gbps: number | undefined;
  let cpu4 = 0;
  if (opts.tcp4) {
    progress(`TCP x4 ${opts.seconds} s`);
    const m = await withCpu(() => tcpStreams(cluster, a, b, opts.seconds, 4));
    tcp4Gbps = m.r;
    cpu4 = m.cpu;
  }
  let rr: { p50Us: number; p99Us: number } | undefined;
  if (opts.udpRr) {
    progress(`UDP request/response ${opts.seconds} s`);
    rr = await udpRequestResponse(cluster, a, b, opts.seconds);
  }
  progress(`64-byte UDP ${opts.seconds} s`);
  const { r: small, cpu: smallCpu } = await withCpu(() => udpSmallPackets(cluster, a, b, opts.seconds));
  let atRate: { lossPct: number } | undefined;
  if (opts.smallRatePps !== undefined && opts.smallRatePps > 0) {
    progress(`64-byte UDP at ${Math.round(opts.smallRatePps)} packets/s, ${opts.seconds} s`);
    atRate = await udpSmallPackets(cluster, a, b, opts.seconds, opts.smallRatePps);
  }
  const userspace = path.userspace && pids.length > 0;
  return {
    rttP50Us: percentile(ping.rtts, 50) * 1000,
    rttP99Us: percentile(ping.rtts, 99) * 1000,
    tcpGbps: tcp.gbps,
    tcpRetransmits: tcp.retransmits,
    ...(tcp4Gbps !== undefined ? { tcp4Gbps } : {}),
    ...(rr ? { udpRttP50Us: rr.p50Us, udpRttP99Us: rr.p99Us } : {}),
    smallPps: small.pps,
    smallDeliveredPps: small.deliveredPps,
    smallLossPct: small.lossPct,
    ...(atRate ? { smallAtRateLossPct: atRate.lossPct } : {}),
    ...(userspace
      ? {
          forwarderCpu: cpu / wall,
          cpuSecondsPerGbit: cpu / Math.max(1e-9, tcp.gbps * opts.seconds),
          ...(tcp4Gbps !== undefined
            ? { cpuSecondsPerGbit4: cpu4 / Math.max(1e-9, tcp4Gbps * opts.seconds) }
            : {}),
          cpuUsPerSmallPacket: (smallCpu * 1e6) / Math.max(1, small.deliveredPps * opts.seconds),
        }
      : {}),
  };
}

export interface RoundsResult {
  readonly id: string;
  readonly name: string;
  readonly how: string;
  readonly overheadBytes: number;
  readonly mtu?: number;
  /** The rounds that completed (all of them unless `error` is set). */
  readonly rounds: RoundResult[];
  readonly error?: string;
}

/**
 * Builds a fresh 2-node cluster, wires it for `path` and runs `runs` rounds of
 * measurements on it; the cluster is torn down whatever happens.
 */
export async function measureRounds(
  path: PathSpec,
  runs: number,
  opts: MeasureOptions,
): Promise<RoundsResult> {
  const base = { id: path.id, name: path.name, how: path.how, overheadBytes: path.overheadBytes };
  const progress = opts.progress ?? (() => undefined);
  const run = new NetnsRun();
  const rounds: RoundResult[] = [];
  let cluster: Cluster | undefined;
  let mtu: number | undefined;
  try {
    progress('building 2 nodes');
    cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 1 });
    progress('starting');
    await path.setup(cluster);
    const a = cluster.node(1).pods[0];
    const b = cluster.node(2).pods[0];
    if (!a || !b) throw new Error('the topology has no pods');
    await cluster.waitForPing(a, b.addr, 15_000);
    mtu = cluster.node(1).subnet?.mtu;
    for (let i = 0; i < runs; i++) {
      const prefix = runs > 1 ? `run ${i + 1}/${runs}: ` : '';
      rounds.push(await measureRound(path, cluster, a, b, opts, (s) => progress(prefix + s)));
    }
    return { ...base, ...(mtu !== undefined ? { mtu } : {}), rounds };
  } catch (err) {
    return {
      ...base,
      ...(mtu !== undefined ? { mtu } : {}),
      rounds,
      error: (err as Error).message.replace(/\s*\n\s*/g, ' | ').slice(0, 800),
    };
  } finally {
    await (cluster ? cluster.destroy() : run.destroy());
  }
}

export async function measurePath(path: PathSpec, opts: MeasureOptions): Promise<PathResult> {
  const r = await measureRounds(path, 1, opts);
  const { rounds, ...rest } = r;
  if (r.error !== undefined) return rest;
  return { ...rest, ...rounds[0] };
}
