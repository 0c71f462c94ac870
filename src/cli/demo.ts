/**
 * `weft demo`: a whole overlay on one machine, explained as it runs.
 *
 * Why: the quickest way to understand an overlay is to watch one come up. This builds N
 * nodes in network namespaces on a shared underlay (198.18.0.0/24), starts one weftd per
 * node on the embedded lease store (a shared directory, no etcd needed), attaches pods once
 * each node holds a lease, then shows the leases, a ping matrix between pods on different
 * nodes and a TCP throughput figure. Everything is torn down at the end, on failure and on
 * Ctrl-C (NetnsRun's signal hooks). Exit code 1 if any ping between nodes failed.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { NetnsRun, cleanupStale } from '../netns/netns.ts';
import { Cluster, TopologyError, WEFT_TUN, summarizeLog } from '../netns/topology.ts';
import type { ClusterNode, Pod } from '../netns/topology.ts';
import { formatCidr } from '../routing/ipv4.ts';
import type { CliIo } from './weft.ts';

export interface DemoOptions {
  readonly nodes: number;
  readonly podsPerNode: number;
  readonly backend: string;
  readonly offloads: boolean;
  /** iperf3 duration, seconds (0 skips the throughput test). */
  readonly duration: number;
}

export const DEMO_USAGE = `Usage: weft demo [options]

Builds a small cluster inside network namespaces (nothing touches the host's network),
runs weftd on every node and shows pods on different nodes talking through the overlay.
Needs root (network namespaces).

Options:
  --nodes N           nodes (default 3)
  --pods-per-node N   pods behind each node's cni0 bridge (default 1)
  --backend TYPE      Backend.Type in net-conf.json (default udp)
  --no-offloads       run weftd without TUN/UDP offloads (slower, same behaviour)
  --duration S        iperf3 duration in seconds; 0 skips it (default 3)
  -h, --help          this help
`;

/** Parses demo flags; returns a message instead of options when they are invalid. */
export function parseDemoArgs(args: readonly string[]): DemoOptions | { help: true } | { error: string } {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...args],
      options: {
        nodes: { type: 'string' },
        'pods-per-node': { type: 'string' },
        backend: { type: 'string' },
        'no-offloads': { type: 'boolean' },
        duration: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: false,
    });
  } catch (err) {
    return { error: (err as Error).message };
  }
  const v = parsed.values;
  if (v.help) return { help: true };
  const int = (
    name: string,
    text: string | undefined,
    def: number,
    min: number,
    max: number,
  ): number | string => {
    if (text === undefined) return def;
    const n = Number(text);
    if (!Number.isInteger(n) || n < min || n > max)
      return `--${name} must be a whole number from ${min} to ${max}`;
    return n;
  };
  const nodes = int('nodes', v.nodes, 3, 2, 20);
  const pods = int('pods-per-node', v['pods-per-node'], 1, 1, 8);
  const duration = int('duration', v.duration, 3, 0, 60);
  for (const x of [nodes, pods, duration]) if (typeof x === 'string') return { error: x };
  return {
    nodes: nodes as number,
    podsPerNode: pods as number,
    backend: v.backend ?? 'udp',
    offloads: !v['no-offloads'],
    duration: duration as number,
  };
}

function table(rows: readonly (readonly string[])[], indent = '  '): string {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows
    .map(
      (r) =>
        indent +
        r
          .map((c, i) => c.padEnd(widths[i] ?? 0))
          .join('  ')
          .trimEnd(),
    )
    .join('\n');
}

interface StatusJson {
  backendStats?: {
    counters?: Record<string, number>;
    drops?: Record<string, number>;
    connIo?: Record<string, number>;
  };
}

/** A node's forwarder counters from weftd's /status, as table cells (undefined if unavailable). */
async function dataPathCounters(cluster: Cluster, node: ClusterNode): Promise<string[] | undefined> {
  const r = await cluster.httpGet(node, '/status');
  if (r.code !== 0) return undefined;
  try {
    const st = (JSON.parse(r.stdout) as StatusJson).backendStats;
    const c = st?.counters;
    if (!c) return undefined;
    const drops = Object.entries(st.drops ?? {}).filter(([, v]) => v > 0);
    const cell = (k: string): string => String(c[k] ?? '-');
    return [
      cell('tunReadBatches'),
      cell('tunReadPackets'),
      cell('recvBatches'),
      cell('recvPackets'),
      String(st.connIo?.['tunnelWrites'] ?? '-'),
      drops.length ? drops.map(([k, v]) => `${k}=${v}`).join(' ') : '0',
    ];
  } catch {
    return undefined;
  }
}

/** Runs the demo; resolves with the exit code. */
export async function runDemo(opts: DemoOptions, io: CliIo): Promise<number> {
  const say = (t = ''): void => io.out(t);
  const stale = cleanupStale();
  if (stale.length > 0) say(`(removed ${stale.length} namespace(s) left by an earlier interrupted run)`);

  const run = new NetnsRun();
  say(
    `weft demo: ${opts.nodes} nodes, ${opts.podsPerNode} pod(s) per node, backend ${opts.backend}, ` +
      `offloads ${opts.offloads ? 'on' : 'off'}`,
  );
  say(`namespaces are named ${run.prefix}-*; everything is removed at the end (also on Ctrl-C).`);
  say();

  let cluster: Cluster | undefined;
  let failed = false;
  try {
    say('1. Underlay: a bridge in namespace "sw" joins the nodes, like a top-of-rack switch.');
    const cl = await Cluster.create(run, { nodes: opts.nodes, podsPerNode: opts.podsPerNode });
    cluster = cl;
    for (const n of cluster.nodes) say(`     node ${n.name}: eth0 ${n.underlayIp}/24`);
    say();

    say('2. Network config (net-conf.json), shared by all nodes through the embedded lease store:');
    const conf = cluster.writeNetConf(opts.backend);
    for (const line of conf.trimEnd().split('\n')) say(`     ${line}`);
    say();

    say('3. Starting weftd on every node: each acquires a subnet lease, writes its subnet file,');
    say(`   creates the ${WEFT_TUN} TUN device and learns the other nodes' leases.`);
    const t0 = Date.now();
    for (const n of cluster.nodes)
      cluster.startWeftd(n, { backend: opts.backend, noOffloads: !opts.offloads });
    await Promise.all(cluster.nodes.map((n) => cl.waitWeftdReady(n)));
    say(`   all ${opts.nodes} nodes ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    say();

    say('4. Leases, and pods attached behind bridge cni0 (gateway = FLANNEL_SUBNET, MTU = FLANNEL_MTU):');
    const leaseRows: string[][] = [
      ['node', 'public ip', 'subnet (lease)', 'MTU', `${WEFT_TUN} addr`, 'pods'],
    ];
    for (const n of cluster.nodes) {
      const info = n.subnet;
      if (!info) continue;
      await cluster.attachPods(n, info);
      leaseRows.push([
        n.name,
        n.underlayIp,
        formatCidr(info.subnet),
        String(info.mtu),
        await cluster.tunAddress(n).catch(() => '-'),
        n.pods.map((p) => p.addr).join(' '),
      ]);
    }
    // Kernel backends (vxlan kernel plane, host-gw) have no TUN: drop the empty column.
    const showTun = leaseRows.slice(1).some((r) => r[4] !== '-');
    say(table(showTun ? leaseRows : leaseRows.map((r) => r.filter((_, i) => i !== 4)), '     '));
    const n1 = cluster.node(1);
    say(`   ${n1.name}'s subnet file (what the CNI plugin reads to configure pods):`);
    for (const line of readFileSync(n1.subnetFile, 'utf8').trimEnd().split('\n')) say(`     ${line}`);
    say();

    const pods = cluster.pods();
    // Peers' routes appear within about a second of their leases; wait for first contact.
    const first = pods[0] as Pod;
    await Promise.all(
      pods
        .filter((p) => p.node !== first.node)
        .map((p) => cl.waitForPing(first, p.addr, 10_000).catch(() => undefined)),
    );

    say('5. Ping matrix between pods on different nodes (average RTT of 3 pings, ms; X = no reply):');
    const header = ['from \\ to', ...pods.map((p) => `${p.name} ${p.addr}`)];
    const rows: string[][] = [header];
    const failures: string[] = [];
    for (const a of pods) {
      const row = [`${a.name} ${a.addr}`];
      for (const b of pods) {
        if (a.node === b.node) {
          row.push('·');
          continue;
        }
        const r = await cluster.ping(a, b.addr, { count: 3, intervalS: 0.2, waitS: 1 });
        if (r.received === 0) {
          row.push('X');
          failures.push(`${a.name} -> ${b.name}${r.errors[0] ? ` (${r.errors[0]})` : ''}`);
        } else {
          const avg = r.rtts.reduce((s, x) => s + x, 0) / r.rtts.length;
          row.push(`${avg.toFixed(3)}${r.received < r.sent ? ` (${r.received}/${r.sent})` : ''}`);
        }
      }
      rows.push(row);
    }
    say(table(rows, '     '));
    say('     (· = same node: traffic stays on cni0 and never reaches the overlay)');
    if (failures.length > 0) {
      failed = true;
      say(`     FAILED: ${failures.join('; ')}`);
    }
    say();

    const n2 = cluster.node(2);
    const [a, b] = [n1.pods[0], n2.pods[0]];
    if (opts.duration > 0 && a && b) {
      say(
        `6. TCP throughput, iperf3, 1 stream, ${opts.duration} s: ${a.name} (${a.addr}) -> ${b.name} (${b.addr})`,
      );
      if (opts.backend === 'udp') {
        say(
          `   path: pod eth0 -> cni0 -> ${WEFT_TUN} (TUN) -> weftd on ${n1.name}: route, wrap in UDP to ${n2.underlayIp}:8285`,
        );
        say(`         -> underlay -> weftd on ${n2.name}: unwrap, check -> ${WEFT_TUN} -> cni0 -> pod eth0`);
        say(
          `         (tunnel GSO: a whole 64 KiB TCP super-packet at a time goes out through ${WEFT_TUN}-gso, and the kernel cuts it into those datagrams)`,
        );
      }
      try {
        const r = await cluster.iperf(a, b, opts.duration);
        say(`     ${r.gbps.toFixed(2)} Gbit/s, ${r.retransmits} TCP retransmits`);
      } catch (err) {
        failed = true;
        say(`     FAILED: ${(err as Error).message}`);
      }
      say();
    }

    if (opts.backend === 'udp') {
      say(
        '7. What the data path counted (weftd GET /status; one syscall moves a whole batch; "whole to TAP": super-packets sent by tunnel GSO):',
      );
      const rows: string[][] = [
        ['node', 'TUN reads', 'pkts from TUN', 'UDP recv calls', 'datagrams in', 'whole to TAP', 'drops'],
      ];
      for (const n of cluster.nodes) {
        const st = await dataPathCounters(cluster, n);
        if (st) rows.push([n.name, ...st]);
      }
      if (rows.length > 1) say(table(rows, '     '));
      say();
    }

    say(
      failed
        ? 'Result: some traffic did not get through (see above).'
        : 'Result: every pod reached every pod on the other nodes.',
    );
    return failed ? 1 : 0;
  } catch (err) {
    const e = err as { code?: string; message?: string };
    io.err(`weft demo failed: ${e.code ? `[${e.code}] ` : ''}${e.message ?? String(err)}`);
    if (!(err instanceof TopologyError)) {
      for (const n of cluster?.nodes ?? []) {
        const out = n.weftd?.output().trim();
        if (out) io.err(`--- weftd on ${n.name}, last lines ---\n${summarizeLog(out, 8)}`);
      }
    }
    return 1;
  } finally {
    if (cluster) await cluster.destroy();
    else await run.destroy();
    say('Torn down: weftd stopped, namespaces and temp files removed.');
  }
}

/** `weft demo` entry: parses flags, checks for root, runs the demo. */
export async function demoMain(args: string[], io: CliIo): Promise<number> {
  const parsed = parseDemoArgs(args);
  if ('help' in parsed) {
    io.out(DEMO_USAGE);
    return 0;
  }
  if ('error' in parsed) {
    io.err(`weft demo: ${parsed.error}\n\n${DEMO_USAGE}`);
    return 2;
  }
  if (process.getuid?.() !== 0) {
    io.err('weft demo: needs root to create network namespaces; run it with sudo (or as root).');
    return 2;
  }
  return runDemo(parsed, io);
}
