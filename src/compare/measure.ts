/**
 * Measures one path (src/compare/paths.ts) on a fresh 2-node cluster: ping RTT p50/p99,
 * TCP throughput (iperf3, 1 stream), small-packet rate (iperf3 UDP, 64-byte payloads,
 * unlimited offered load: packets/s received and loss), the effective pod MTU, and the
 * CPU the forwarder processes (weftd on both nodes) spent per second and per Gbit/s.
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
  readonly smallPps?: number;
  readonly smallLossPct?: number;
  /** CPU of the forwarder processes during the TCP test, in cores (1.0 = one core busy). */
  readonly forwarderCpu?: number;
  /** Forwarder CPU seconds per Gbit transferred (lower is better). */
  readonly cpuSecondsPerGbit?: number;
  readonly error?: string;
}

export interface MeasureOptions {
  /** Seconds per throughput test. */
  readonly seconds: number;
  /** Pings for the RTT percentiles. */
  readonly pings: number;
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
function cpuSeconds(pid: number | undefined): number {
  if (!pid || pid < 0) return 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

async function udpSmallPackets(
  cluster: Cluster,
  from: Pod,
  to: Pod,
  seconds: number,
): Promise<{ pps: number; lossPct: number }> {
  const port = 5999;
  const server = cluster.run.spawn(to.ns, 'iperf3', ['-s', '-1', '--forceflush', '-p', String(port)]);
  try {
    const deadline = Date.now() + 10_000;
    while (!server.output().includes('listening')) {
      if (Date.now() > deadline || server.child.exitCode !== null)
        throw new Error(`iperf3 server: ${server.output()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const out = await cluster.run.exec(
      from.ns,
      'iperf3',
      ['-c', to.addr, '-p', String(port), '-u', '-l', '64', '-b', '0', '-t', String(seconds), '-J'],
      { timeoutMs: (seconds + 20) * 1000 },
    );
    const j = JSON.parse(out) as {
      end?: { sum?: { packets?: number; lost_packets?: number; seconds?: number } };
      error?: string;
    };
    const sum = j.end?.sum;
    if (j.error || !sum?.packets || !sum.seconds) throw new Error(`iperf3 UDP: ${j.error ?? 'no result'}`);
    const received = sum.packets - (sum.lost_packets ?? 0);
    return { pps: received / sum.seconds, lossPct: ((sum.lost_packets ?? 0) / sum.packets) * 100 };
  } finally {
    await server.stop('SIGKILL', 1000);
  }
}

export async function measurePath(path: PathSpec, opts: MeasureOptions): Promise<PathResult> {
  const base = { id: path.id, name: path.name, how: path.how, overheadBytes: path.overheadBytes };
  const progress = opts.progress ?? (() => undefined);
  const run = new NetnsRun();
  let cluster: Cluster | undefined;
  try {
    progress('building 2 nodes');
    cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 1 });
    progress('starting');
    await path.setup(cluster);
    const a = cluster.node(1).pods[0];
    const b = cluster.node(2).pods[0];
    if (!a || !b) throw new Error('the topology has no pods');
    await cluster.waitForPing(a, b.addr, 15_000);
    const mtu = cluster.node(1).subnet?.mtu;

    progress(`ping x${opts.pings}`);
    const ping = await cluster.ping(a, b.addr, { count: opts.pings, intervalS: 0.01, waitS: 1 });
    if (ping.rtts.length === 0) throw new Error(`no ping replies:\n${ping.output}`);

    progress(`TCP ${opts.seconds} s`);
    const pids = cluster.nodes.map((n) => n.weftd?.pid);
    const cpu0 = pids.reduce<number>((s, p) => s + cpuSeconds(p), 0);
    const t0 = process.hrtime.bigint();
    const tcp = await cluster.iperf(a, b, opts.seconds);
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = pids.reduce<number>((s, p) => s + cpuSeconds(p), 0) - cpu0;

    progress(`64-byte UDP ${opts.seconds} s`);
    const small = await udpSmallPackets(cluster, a, b, opts.seconds);
    const userspace = path.userspace && pids.every((p) => p !== undefined);
    return {
      ...base,
      mtu,
      rttP50Us: percentile(ping.rtts, 50) * 1000,
      rttP99Us: percentile(ping.rtts, 99) * 1000,
      tcpGbps: tcp.gbps,
      tcpRetransmits: tcp.retransmits,
      smallPps: small.pps,
      smallLossPct: small.lossPct,
      ...(userspace
        ? { forwarderCpu: cpu / wall, cpuSecondsPerGbit: cpu / Math.max(1e-9, tcp.gbps * opts.seconds) }
        : {}),
    };
  } catch (err) {
    return { ...base, error: (err as Error).message.split('\n')[0] ?? String(err) };
  } finally {
    await (cluster ? cluster.destroy() : run.destroy());
  }
}
