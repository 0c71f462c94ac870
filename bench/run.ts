/**
 * Pod-to-pod TCP throughput across two nodes, for each way of carrying the traffic.
 *
 * Why: a userspace overlay is only worth running if it stays close to the kernel's own
 * VXLAN. Each row builds the same 2-node topology (src/netns/topology.ts) from scratch,
 * wires it one way, and runs iperf3 (TCP, 1 stream) `runs` times; the table shows the
 * median with the min-max spread and the ratio to kernel VXLAN, and the raw figures go to
 * bench/results/<timestamp>.json. Adding a backend is one entry in ROWS (usually the id of
 * a path `weft compare` already knows).
 *
 *   npm run bench [-- --runs 3 --seconds 5 --only udp]
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { NetnsRun, cleanupStale } from '../src/netns/netns.ts';
import { Cluster } from '../src/netns/topology.ts';
import { PATHS } from '../src/compare/paths.ts';
import { projectRoot } from '../src/util/self.ts';

interface BenchRow {
  readonly name: string;
  /** Wires a fresh 2-node cluster (pods attached by the end). */
  setup(cluster: Cluster): Promise<void>;
}

/** A row for one of the paths `weft compare` knows (src/compare/paths.ts), by id. */
function pathRow(id: string): BenchRow {
  const p = PATHS.find((x) => x.id === id);
  if (!p)
    throw new Error(
      `bench: no path "${id}" in src/compare/paths.ts (have ${PATHS.map((x) => x.id).join(', ')})`,
    );
  return { name: p.name, setup: (c) => p.setup(c) };
}

/**
 * The rows, in print order: paths from src/compare/paths.ts by id (add a backend with one
 * id here), plus what only the benchmark measures. REFERENCE names the row the ratios use.
 */
const ROWS: readonly BenchRow[] = [
  pathRow('direct'),
  pathRow('kernel-vxlan'),
  pathRow('udp'),
  {
    name: 'weft udp --no-offloads',
    setup: async (c) => void (await c.startWeftdAll({ backend: 'udp', noOffloads: true })),
  },
];
const REFERENCE = 'kernel VXLAN';

interface RowResult {
  readonly name: string;
  readonly gbps: number[];
  readonly retransmits: number[];
  readonly median?: number;
  readonly min?: number;
  readonly max?: number;
  readonly ratio?: number;
  readonly error?: string;
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

async function measure(row: BenchRow, runs: number, seconds: number): Promise<RowResult> {
  const run = new NetnsRun();
  const cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 1 });
  const gbps: number[] = [];
  const retransmits: number[] = [];
  try {
    await row.setup(cluster);
    const [a] = cluster.node(1).pods;
    const [b] = cluster.node(2).pods;
    if (!a || !b) throw new Error('the topology has no pods');
    await cluster.waitForPing(a, b.addr, 10_000);
    for (let i = 0; i < runs; i++) {
      const r = await cluster.iperf(a, b, seconds);
      gbps.push(r.gbps);
      retransmits.push(r.retransmits);
      process.stderr.write(`  ${row.name}: run ${i + 1}/${runs}: ${r.gbps.toFixed(2)} Gbit/s\n`);
    }
    return {
      name: row.name,
      gbps,
      retransmits,
      median: median(gbps),
      min: Math.min(...gbps),
      max: Math.max(...gbps),
    };
  } catch (err) {
    const out = cluster.nodes
      .map((n) => n.weftd?.output().trim().split('\n').slice(-5).join('\n') ?? '')
      .join('\n');
    return {
      name: row.name,
      gbps,
      retransmits,
      error: `${(err as Error).message}${out.trim() ? `\n${out}` : ''}`,
    };
  } finally {
    await cluster.destroy();
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '3' },
      seconds: { type: 'string', default: '5' },
      only: { type: 'string' },
    },
  });
  const runs = Number(values.runs);
  const seconds = Number(values.seconds);
  if (!(Number.isInteger(runs) && runs >= 1 && Number.isInteger(seconds) && seconds >= 1)) {
    process.stderr.write('bench: --runs and --seconds must be positive whole numbers\n');
    return 2;
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write('bench: needs root (network namespaces)\n');
    return 2;
  }
  cleanupStale();
  const only = values.only;
  const rows = ROWS.filter((r) => !only || r.name.includes(only) || r.name === REFERENCE);
  process.stderr.write(
    `bench: ${rows.length} rows x ${runs} runs x ${seconds} s of iperf3 (TCP, 1 stream)\n`,
  );

  const loadBefore = loadavg()[0] ?? 0;
  const results: RowResult[] = [];
  for (const row of rows) results.push(await measure(row, runs, seconds));
  const ref = results.find((r) => r.name === REFERENCE)?.median;
  const final = results.map((r) => (r.median !== undefined && ref ? { ...r, ratio: r.median / ref } : r));

  const head = ['path', 'Gbit/s (median)', 'min-max', `vs ${REFERENCE}`, 'retransmits (median)'];
  const body = final.map((r) =>
    r.error !== undefined
      ? [r.name, 'FAILED', '', '', r.error.split('\n')[0] ?? '']
      : [
          r.name,
          (r.median ?? 0).toFixed(2),
          `${(r.min ?? 0).toFixed(2)}-${(r.max ?? 0).toFixed(2)}`,
          r.ratio !== undefined ? `${r.ratio.toFixed(2)}x` : '-',
          String(median(r.retransmits)),
        ],
  );
  const all = [head, ...body];
  const widths = head.map((_, i) => Math.max(...all.map((row) => (row[i] ?? '').length)));
  const line = (row: readonly string[]): string =>
    row
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  process.stdout.write(
    `\nPod-to-pod TCP, iperf3 1 stream, ${seconds} s, median of ${runs} (2 nodes in network namespaces, veth underlay MTU 1500)\n`,
  );
  process.stdout.write(
    `(1-min load average ${loadBefore.toFixed(1)} before, ${(loadavg()[0] ?? 0).toFixed(1)} after, on ${cpus().length} CPUs: other work on the machine lowers every row)\n`,
  );
  process.stdout.write(`${line(head)}\n${widths.map((w) => '-'.repeat(w)).join('  ')}\n`);
  for (const row of body) process.stdout.write(`${line(row)}\n`);

  const dir = join(projectRoot, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const file = join(dir, `${stamp}.json`);
  const report = {
    date: new Date().toISOString(),
    machine: {
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model,
      kernel: release(),
      node: process.version,
      loadavg1mBefore: loadBefore,
      loadavg1mAfter: loadavg()[0] ?? 0,
    },
    test: { tool: 'iperf3', protocol: 'tcp', streams: 1, seconds, runs, reference: REFERENCE },
    rows: final,
  };
  writeFileSync(file, JSON.stringify(report, null, 2) + '\n');
  process.stdout.write(`\nraw figures: ${file}\n`);
  return final.some((r) => r.error !== undefined) ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
