/**
 * The data-path benchmark: every way pod traffic can cross between two nodes, in one table.
 *
 * Why: a userspace overlay is only worth running if it stays close to the kernel's own
 * VXLAN, and only credible next to other userspace overlays. Each row builds the same
 * 2-node topology (src/netns/topology.ts) from scratch, wires it one way (weft's paths from
 * src/compare/paths.ts, plus wireguard-go and nebula as outside references from
 * bench/refs/), and measures it `--runs` times on that cluster: TCP 1 and 4 streams
 * (iperf3), ping RTT p50/p99, UDP request/response RTT p50/p99 (sockperf ping-pong),
 * 64-byte UDP packets/s with loss, and the forwarder's CPU per Gbit/s (userspace rows).
 * Every figure is the median of the runs with its min-max spread; throughput figures carry
 * their ratio to kernel VXLAN. The table goes to stdout, the chart (SVG) and the raw
 * figures (JSON) to bench/results/ unless --chart/--json say otherwise. Adding a row is
 * one entry in ROWS.
 *
 *   npm run bench [-- --runs 3 --seconds 5 --only direct,udp,nebula --json F --chart F]
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { cleanupStale } from '../src/netns/netns.ts';
import { PATHS } from '../src/compare/paths.ts';
import type { PathSpec } from '../src/compare/paths.ts';
import { measureRounds } from '../src/compare/measure.ts';
import type { PathResult, RoundResult, RoundsResult } from '../src/compare/measure.ts';
import { renderChart } from '../src/compare/chart.ts';
import { projectRoot } from '../src/util/self.ts';
import { ensureBenchPackages, useCompiledDaemons } from './refs/setup.ts';
import { WIREGUARD_GO_REF } from './refs/wireguard-go.ts';
import { NEBULA_REF } from './refs/nebula.ts';
import { UDP_PROXY_REF } from './refs/udp-proxy.ts';
import { renderTargets, TARGET_REFERENCE, targetChecks } from './targets.ts';
import { describeCosts, describeWake, machineCosts, wakeCosts } from './machine.ts';

function pathById(id: string): PathSpec {
  const p = PATHS.find((x) => x.id === id);
  if (!p)
    throw new Error(
      `bench: no path "${id}" in src/compare/paths.ts (have ${PATHS.map((x) => x.id).join(', ')})`,
    );
  return p;
}

/** The rows, in print order. REFERENCE is the id the ratios divide by. */
const ROWS: readonly PathSpec[] = [
  pathById('direct'),
  pathById('kernel-vxlan'),
  pathById('udp'),
  pathById('udp-w2'),
  pathById('udp-seg'),
  pathById('vxlan-user'),
  pathById('vxlan-user-w2'),
  pathById('vxlan-user-seg'),
  pathById('vxlan-kernel'),
  pathById('host-gw'),
  pathById('wireguard'),
  WIREGUARD_GO_REF,
  NEBULA_REF,
  UDP_PROXY_REF,
];
const REFERENCE = TARGET_REFERENCE;

/** Fields of a round that become median/min/max figures. */
const FIGURES = [
  'tcpGbps',
  'tcp4Gbps',
  'rttP50Us',
  'rttP99Us',
  'udpRttP50Us',
  'udpRttP99Us',
  'smallPps',
  'smallDeliveredPps',
  'smallLossPct',
  'smallAtRateLossPct',
  'tcpRetransmits',
  'forwarderCpu',
  'cpuSecondsPerGbit',
  'cpuSecondsPerGbit4',
  'cpuUsPerSmallPacket',
] as const satisfies readonly (keyof RoundResult)[];
type Figure = (typeof FIGURES)[number];
/** Throughput figures, which get a ratio to the reference row. */
const THROUGHPUT = [
  'tcpGbps',
  'tcp4Gbps',
  'smallPps',
  'smallDeliveredPps',
] as const satisfies readonly Figure[];

interface Stat {
  readonly median: number;
  readonly min: number;
  readonly max: number;
  readonly runs: number[];
  /** median / the reference row's median (throughput figures only). */
  ratio?: number;
}

interface RowSummary {
  readonly id: string;
  readonly name: string;
  readonly how: string;
  readonly overheadBytes: number;
  readonly userspace: boolean;
  readonly mtu?: number;
  readonly figures: Partial<Record<Figure, Stat>>;
  readonly error?: string;
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

function summarize(row: PathSpec, r: RoundsResult): RowSummary {
  const figures: Partial<Record<Figure, Stat>> = {};
  for (const f of FIGURES) {
    const runs = r.rounds.map((x) => x[f]).filter((v): v is number => v !== undefined && Number.isFinite(v));
    if (runs.length > 0)
      figures[f] = { median: median(runs), min: Math.min(...runs), max: Math.max(...runs), runs };
  }
  return {
    id: r.id,
    name: r.name,
    how: r.how,
    overheadBytes: r.overheadBytes,
    userspace: row.userspace,
    ...(r.mtu !== undefined ? { mtu: r.mtu } : {}),
    figures,
    ...(r.error !== undefined ? { error: r.error } : {}),
  };
}

function addRatios(rows: RowSummary[]): void {
  const ref = rows.find((r) => r.id === REFERENCE && r.error === undefined);
  if (!ref) return;
  for (const row of rows) {
    for (const f of THROUGHPUT) {
      const s = row.figures[f];
      const base = ref.figures[f]?.median;
      if (s && base) s.ratio = s.median / base;
    }
  }
}

function num(v: number, digits: number): string {
  return v.toFixed(digits);
}

/** "2.31 (2.10-2.50)"; the spread only when there was more than one run. */
function withSpread(s: Stat | undefined, digits: number, scale = 1): string {
  if (!s) return '-';
  const m = num(s.median / scale, digits);
  return s.runs.length > 1 ? `${m} (${num(s.min / scale, digits)}-${num(s.max / scale, digits)})` : m;
}

function pair(p50: Stat | undefined, p99: Stat | undefined): string {
  if (!p50 || !p99) return '-';
  const spread = (s: Stat): string => (s.runs.length > 1 ? ` (${num(s.min, 0)}-${num(s.max, 0)})` : '');
  return `${num(p50.median, 0)}${spread(p50)} / ${num(p99.median, 0)}${spread(p99)}`;
}

function ratio(s: Stat | undefined): string {
  return s?.ratio !== undefined ? `${s.ratio.toFixed(2)}x` : '-';
}

function renderBenchTable(rows: readonly RowSummary[]): string {
  const head = [
    'path',
    'TCP 1 Gbit/s',
    'vs kVX',
    'TCP 4 Gbit/s',
    'vs kVX',
    'ping p50 / p99 µs',
    'UDP RR p50 / p99 µs',
    '64B kpps',
    'vs kVX',
    'to pod kpps',
    'vs kVX',
    'loss %',
    'loss % at kVX rate',
    'CPU s/Gbit',
    'x4 CPU s/Gbit',
    '64B CPU µs/pkt',
  ];
  const body = rows.map((r) => {
    if (r.error !== undefined) return [r.name, `FAILED: ${r.error.slice(0, 100)}`];
    const f = r.figures;
    return [
      r.name,
      withSpread(f.tcpGbps, 2),
      ratio(f.tcpGbps),
      withSpread(f.tcp4Gbps, 2),
      ratio(f.tcp4Gbps),
      pair(f.rttP50Us, f.rttP99Us),
      pair(f.udpRttP50Us, f.udpRttP99Us),
      withSpread(f.smallPps, 0, 1000),
      ratio(f.smallPps),
      withSpread(f.smallDeliveredPps, 0, 1000),
      ratio(f.smallDeliveredPps),
      withSpread(f.smallLossPct, 1),
      withSpread(f.smallAtRateLossPct, 2),
      r.userspace ? withSpread(f.cpuSecondsPerGbit, 3) : 'kernel',
      r.userspace ? withSpread(f.cpuSecondsPerGbit4, 3) : 'kernel',
      r.userspace ? withSpread(f.cpuUsPerSmallPacket, 2) : 'kernel',
    ];
  });
  // A failed row's message spans the figure columns, so it does not set their widths.
  const widths = head.map((h, i) =>
    Math.max(h.length, ...body.filter((b) => b.length === head.length).map((b) => (b[i] ?? '').length)),
  );
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n');
}

/** A PathResult of the medians, for the chart. */
function chartRow(r: RowSummary): PathResult {
  const m = (f: Figure): number | undefined => r.figures[f]?.median;
  const out: Record<string, unknown> = { id: r.id, name: r.name, how: r.how, overheadBytes: r.overheadBytes };
  for (const f of FIGURES) if (m(f) !== undefined) out[f] = m(f);
  if (r.error !== undefined) out.error = r.error;
  return out as unknown as PathResult;
}

const USAGE = `Usage: node --import tsx bench/run.ts [options]
  --runs N        rounds of measurements per row; figures are their median (default 3)
  --seconds N     length of each throughput / RTT test (default 5)
  --pings N       pings per round for the ping RTT percentiles (default 100, 10 ms apart, after 2000 back-to-back warm-up pings)
  --only IDS      comma-separated rows (default all): ${ROWS.map((r) => r.id).join(', ')}
  --json FILE     raw figures (default bench/results/<time>.json)
  --chart FILE    SVG chart (default bench/results/<time>.svg)
  --no-install    do not apt-get install missing tools (wireguard-go, nebula, sockperf, iperf3)`;

async function main(): Promise<number> {
  let values;
  try {
    values = parseArgs({
      options: {
        runs: { type: 'string', default: '3' },
        seconds: { type: 'string', default: '5' },
        pings: { type: 'string', default: '100' },
        only: { type: 'string' },
        json: { type: 'string' },
        chart: { type: 'string' },
        'no-install': { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }).values;
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const runs = Number(values.runs);
  const seconds = Number(values.seconds);
  const pings = Number(values.pings);
  if (
    !(Number.isInteger(runs) && runs >= 1) ||
    !(Number.isInteger(seconds) && seconds >= 1) ||
    !(Number.isInteger(pings) && pings >= 5)
  ) {
    process.stderr.write('bench: --runs and --seconds must be positive whole numbers, --pings at least 5\n');
    return 2;
  }
  let rows = [...ROWS];
  if (values.only) {
    const ids = values.only.split(',').map((s) => s.trim());
    const unknown = ids.filter((id) => !ROWS.some((r) => r.id === id));
    if (unknown.length > 0) {
      process.stderr.write(
        `bench: unknown row ${unknown.join(', ')}; choose from ${ROWS.map((r) => r.id).join(', ')}\n`,
      );
      return 2;
    }
    rows = ROWS.filter((r) => ids.includes(r.id));
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write('bench: needs root (network namespaces)\n');
    return 2;
  }
  if (!values['no-install']) ensureBenchPackages((l) => process.stderr.write(`${l}\n`));
  const daemons = useCompiledDaemons((l) => process.stderr.write(`${l}\n`), {
    build: !values['no-install'],
  });
  cleanupStale();

  process.stderr.write(`bench: ${rows.length} rows x ${runs} runs, ${seconds} s per test\n`);
  const costs = machineCosts();
  const wake = await wakeCosts();
  const loadBefore = loadavg()[0] ?? 0;
  const started = Date.now();
  const summaries: RowSummary[] = [];
  // Rows after the reference also get 64-byte packets offered at the reference's rate.
  let refPps: number | undefined;
  for (const [i, row] of rows.entries()) {
    const head = `[${i + 1}/${rows.length}] ${row.name}`;
    const r = await measureRounds(row, runs, {
      seconds,
      pings,
      tcp4: true,
      udpRr: true,
      ...(refPps !== undefined ? { smallRatePps: refPps } : {}),
      progress: (step) => process.stderr.write(`${head}: ${step}\n`),
    });
    const s = summarize(row, r);
    if (row.id === REFERENCE) refPps = s.figures.smallPps?.median;
    process.stderr.write(
      s.error !== undefined
        ? `${head}: FAILED: ${s.error}\n`
        : `${head}: TCP ${withSpread(s.figures.tcpGbps, 2)} Gbit/s, x4 ${withSpread(s.figures.tcp4Gbps, 2)} Gbit/s\n`,
    );
    summaries.push(s);
  }
  addRatios(summaries);
  const loadAfter = loadavg()[0] ?? 0;

  process.stdout.write(
    `\nPod to pod across 2 nodes in network namespaces (veth underlay, MTU 1500); each figure is the median of ${runs} run${runs > 1 ? 's' : ''} (min-max)\n` +
      `TCP: iperf3 ${seconds} s, 1 and 4 streams; ping: ${pings} x 10 ms after 2000 back-to-back; UDP RR: sockperf ping-pong 64 B, ${seconds} s, full RTT;\n` +
      `64B: iperf3 UDP 64-byte payloads, unlimited rate, ${seconds} s, and (rows after kernel VXLAN) at kernel VXLAN's rate with 4 MiB socket buffers; vs kVX = ratio to kernel VXLAN; to pod = delivered to the receiving pod's UDP stack (read or dropped at its full socket);\nCPU = the forwarder processes' CPU (all threads) during TCP 1 stream, TCP 4 streams, and per 64-byte packet delivered at unlimited rate\n` +
      `(1-min load average ${loadBefore.toFixed(1)} before, ${loadAfter.toFixed(1)} after, on ${cpus().length} CPUs: other work on the machine lowers every row)\n` +
      (daemons === 'compiled'
        ? `(weft's daemons ran compiled, from dist/, as bin/weftd.js runs them)\n`
        : `(weft's daemons ran under tsx because dist/ is older than the sources and --no-install was given: slower, and not comparable with a compiled run)\n`) +
      `(${describeCosts(costs)};\n ${describeWake(wake)})\n\n`,
  );
  process.stdout.write(`${renderBenchTable(summaries)}\n`);
  const targets = targetChecks(
    (id, f) => summaries.find((r) => r.id === id && r.error === undefined)?.figures[f]?.median,
  );
  process.stdout.write(`\nTargets (issues #2 and #6), from the medians above:\n${renderTargets(targets)}\n`);

  const stamp = new Date(started).toISOString().replace(/[:.]/g, '-');
  const resultsDir = join(projectRoot, 'bench', 'results');
  const jsonFile = values.json ?? join(resultsDir, `${stamp}.json`);
  const chartFile = values.chart ?? join(resultsDir, `${stamp}.svg`);
  mkdirSync(dirname(jsonFile), { recursive: true });
  mkdirSync(dirname(chartFile), { recursive: true });
  const report = {
    date: new Date(started).toISOString(),
    durationS: (Date.now() - started) / 1000,
    machine: {
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model,
      kernel: release(),
      node: process.version,
      loadavg1mBefore: loadBefore,
      loadavg1mAfter: loadAfter,
      ...costs,
      ...(wake ? { wake } : {}),
    },
    test: {
      daemons,
      runs,
      seconds,
      pings,
      reference: REFERENCE,
      tcp: 'iperf3, 1 and 4 streams',
      udpRr: 'sockperf ping-pong, 64-byte messages, full RTT, µs',
      smallPackets:
        "iperf3 UDP, 64-byte payloads, -b 0; packets/s received, loss %; then offered at the reference row's packets/s (rows after it): loss %",
      cpu: 'forwarder CPU seconds per Gbit during the 1-stream TCP test (userspace rows)',
    },
    rows: summaries,
    targets,
  };
  writeFileSync(jsonFile, `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(
    chartFile,
    renderChart(
      summaries.map(chartRow),
      `weft bench: median of ${runs}, 2 nodes, veth underlay, ${release()}`,
    ),
  );
  process.stdout.write(`\nchart: ${chartFile}\ndata: ${jsonFile}\n`);
  return summaries.some((r) => r.error !== undefined) ? 1 : 0;
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
