/**
 * `weft compare`: every way of carrying pod traffic between two nodes, side by side, on a
 * local network-namespace cluster: ping RTT p50/p99, TCP throughput, 64-byte packet rate,
 * per-packet overhead and effective MTU, and the forwarder's CPU. A progress line while it
 * runs, a table at the end, a chart (SVG) and JSON written to files. docs/compare.md
 * explains why each number is what it is.
 *
 *   weft compare [--only udp,kernel-vxlan,...] [--seconds 3] [--pings 100]
 *                [--chart weft-compare.svg] [--json weft-compare.json]
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { cpus, release } from 'node:os';
import { PATHS, selectPaths } from '../compare/paths.ts';
import { measurePath } from '../compare/measure.ts';
import type { PathResult } from '../compare/measure.ts';
import { renderChart } from '../compare/chart.ts';
import { table } from './status.ts';
import type { CliIo } from './weft.ts';

const USAGE = `Usage: weft compare [options]
  --only IDS        comma-separated paths (default all): ${PATHS.map((p) => p.id).join(', ')}
  --seconds N       length of each throughput test (default 3)
  --pings N         pings for the RTT percentiles (default 100, 10 ms apart)
  --chart FILE      SVG chart to write (default weft-compare.svg)
  --json FILE       results as JSON (default weft-compare.json)
Builds a fresh 2-node cluster in network namespaces for each path, so it needs root.`;

function fmt(v: number | undefined, digits: number, suffix = ''): string {
  return v === undefined || !Number.isFinite(v) ? '-' : `${v.toFixed(digits)}${suffix}`;
}

export function renderTable(results: readonly PathResult[], reference = 'kernel-vxlan'): string {
  const ref = results.find((r) => r.id === reference)?.tcpGbps;
  return table(
    [
      'path',
      'TCP Gbit/s',
      'vs kernel VXLAN',
      'RTT p50 µs',
      'RTT p99 µs',
      '64B kpps',
      'to pod kpps',
      'loss %',
      'overhead B',
      'MTU',
      'fwd CPU',
      'CPU s/Gbit',
    ],
    results.map((r) =>
      r.error
        ? [
            r.name,
            `failed: ${r.error.slice(0, 60)}`,
            '',
            '',
            '',
            '',
            '',
            '',
            String(r.overheadBytes),
            '',
            '',
            '',
          ]
        : [
            r.name,
            fmt(r.tcpGbps, 2),
            ref && r.tcpGbps !== undefined ? `${(r.tcpGbps / ref).toFixed(2)}x` : '-',
            fmt(r.rttP50Us, 0),
            fmt(r.rttP99Us, 0),
            fmt(r.smallPps !== undefined ? r.smallPps / 1000 : undefined, 0),
            fmt(r.smallDeliveredPps !== undefined ? r.smallDeliveredPps / 1000 : undefined, 0),
            fmt(r.smallLossPct, 1),
            String(r.overheadBytes),
            r.mtu !== undefined ? String(r.mtu) : '-',
            r.forwarderCpu !== undefined ? `${(r.forwarderCpu * 100).toFixed(0)}%` : 'kernel',
            fmt(r.cpuSecondsPerGbit, 3),
          ],
    ),
  );
}

export async function compareMain(args: string[], io: CliIo): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args,
      options: {
        only: { type: 'string' },
        seconds: { type: 'string', default: '3' },
        pings: { type: 'string', default: '100' },
        chart: { type: 'string', default: 'weft-compare.svg' },
        json: { type: 'string', default: 'weft-compare.json' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }).values;
  } catch (err) {
    io.err(`weft compare: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    io.out(USAGE);
    return 0;
  }
  const seconds = Number(values.seconds);
  const pings = Number(values.pings);
  if (!(seconds >= 1 && seconds <= 60) || !(pings >= 5 && pings <= 10_000)) {
    io.err('weft compare: --seconds must be 1..60 and --pings 5..10000');
    return 2;
  }
  let paths;
  try {
    paths = selectPaths(values.only);
  } catch (err) {
    io.err(`weft compare: ${(err as Error).message}`);
    return 2;
  }
  const results: PathResult[] = [];
  const tty = process.stderr.isTTY;
  for (const [i, path] of paths.entries()) {
    const head = `[${i + 1}/${paths.length}] ${path.name}`;
    const t0 = Date.now();
    const r = await measurePath(path, {
      seconds,
      pings,
      progress: (step) => {
        const line = `${head}: ${step} (${((Date.now() - t0) / 1000).toFixed(0)} s)`;
        if (tty) process.stderr.write(`\r\x1b[2K${line}`);
        else io.err(line);
      },
    });
    if (tty) process.stderr.write('\r\x1b[2K');
    io.err(
      r.error
        ? `${head}: FAILED: ${r.error}`
        : `${head}: ${fmt(r.tcpGbps, 2)} Gbit/s, RTT p50 ${fmt(r.rttP50Us, 0)} µs, ${fmt((r.smallPps ?? NaN) / 1000, 0)} kpps`,
    );
    results.push(r);
  }
  io.out('');
  io.out(renderTable(results));
  io.out('');
  const meta = { date: new Date().toISOString(), kernel: release(), cpus: cpus().length, seconds, pings };
  writeFileSync(values.json, `${JSON.stringify({ ...meta, results }, null, 2)}\n`);
  writeFileSync(values.chart, renderChart(results, `weft compare: 2 nodes, veth underlay, ${meta.kernel}`));
  io.out(`chart: ${values.chart}   data: ${values.json}   why these numbers: docs/compare.md`);
  return results.some((r) => r.error) ? 1 : 0;
}
