/**
 * Smoke test of the data-path benchmark (bench/run.ts): one short run over direct routing,
 * weft udp and the nebula outside reference prints the table, writes the JSON and the SVG
 * chart, and every figure it promises is a positive number. Needs root (namespaces).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { projectRoot } from '../../src/util/self.ts';

interface Stat {
  median: number;
  min: number;
  max: number;
  runs: number[];
}
interface Row {
  id: string;
  name: string;
  userspace: boolean;
  figures: Record<string, Stat | undefined>;
  error?: string;
}

const IDS = ['direct', 'udp', 'nebula'];

void test('bench/run.ts --runs 1 --seconds 1 --only direct,udp,nebula prints the table, JSON and SVG', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-bench-smoke-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const jsonFile = join(dir, 'bench.json');
  const chartFile = join(dir, 'bench.svg');
  const r = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve, reject) => {
    execFile(
      process.execPath,
      [
        '--import',
        'tsx',
        join(projectRoot, 'bench', 'run.ts'),
        ...['--runs', '1', '--seconds', '1', '--pings', '20', '--no-install'],
        ...['--only', IDS.join(','), '--json', jsonFile, '--chart', chartFile],
      ],
      { cwd: projectRoot, timeout: 150_000, maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err !== null && typeof err.code !== 'number')
          reject(new Error(`bench did not finish: ${err.message}\n${stderr}`));
        else resolve({ code: err === null ? 0 : (err.code as number), stdout, stderr });
      },
    );
  });
  assert.equal(r.code, 0, `bench exited ${r.code}\n${r.stdout}\n${r.stderr}`);

  // The table: a header with every column, one line per row with numbers in it.
  const lines = r.stdout.split('\n');
  const header = lines.find((l) => l.startsWith('path '));
  assert.ok(header, `no table header in:\n${r.stdout}`);
  for (const col of [
    'TCP 1 Gbit/s',
    'TCP 4 Gbit/s',
    'ping p50 / p99 µs',
    'UDP RR p50 / p99 µs',
    '64B kpps',
    'to pod kpps',
    'loss %',
    'CPU s/Gbit',
    'x4 CPU s/Gbit',
    '64B CPU µs/pkt',
  ])
    assert.ok(header.includes(col), `column "${col}" missing from: ${header}`);
  for (const name of ['direct routing', 'weft udp', 'nebula (reference)']) {
    const line = lines.find((l) => l.startsWith(`${name} `));
    assert.ok(line, `no table line for ${name}:\n${r.stdout}`);
    assert.doesNotMatch(line, /FAILED/);
    const tcp = Number(line.slice(header.indexOf('TCP 1 Gbit/s')).trim().split(/\s+/)[0]);
    assert.ok(tcp > 0, `TCP figure of ${name} is not positive: ${line}`);
  }

  // The JSON: each row's figures present, positive, one run each.
  const report = JSON.parse(readFileSync(jsonFile, 'utf8')) as { rows: Row[]; test: { runs: number } };
  assert.equal(report.test.runs, 1);
  assert.deepEqual(
    report.rows.map((x) => x.id),
    IDS,
  );
  for (const row of report.rows) {
    assert.equal(row.error, undefined, `${row.name} failed: ${row.error}`);
    const need = [
      'tcpGbps',
      'tcp4Gbps',
      'rttP50Us',
      'rttP99Us',
      'udpRttP50Us',
      'udpRttP99Us',
      'smallPps',
      'smallDeliveredPps',
    ];
    if (row.userspace)
      need.push('cpuSecondsPerGbit', 'cpuSecondsPerGbit4', 'cpuUsPerSmallPacket', 'forwarderCpu');
    for (const f of need) {
      const s = row.figures[f];
      assert.ok(s, `${row.name}: no ${f}`);
      assert.equal(s.runs.length, 1, `${row.name}: ${f} should have one run`);
      assert.ok(s.median > 0 && Number.isFinite(s.median), `${row.name}: ${f} = ${s.median}`);
      assert.ok(s.min <= s.median && s.median <= s.max);
    }
    assert.ok(row.figures.rttP99Us!.median >= row.figures.rttP50Us!.median);
    assert.ok(row.figures.udpRttP99Us!.median >= row.figures.udpRttP50Us!.median);
    assert.ok(row.figures.smallLossPct && row.figures.smallLossPct.median >= 0);
    // What reached the pod's UDP stack includes what its program read.
    assert.ok(row.figures.smallDeliveredPps!.median >= 0.99 * row.figures.smallPps!.median, row.name);
  }
  assert.equal(report.rows.find((x) => x.id === 'direct')?.userspace, false);

  // The chart: an SVG with a panel per measured metric and a bar per row.
  const svg = readFileSync(chartFile, 'utf8');
  assert.match(svg, /^<svg /);
  assert.match(svg, /<\/svg>\s*$/);
  for (const title of [
    'TCP throughput, 1 stream',
    'TCP throughput, 4 streams',
    'Ping RTT',
    'UDP request/response RTT',
    '64-byte UDP',
  ])
    assert.ok(svg.includes(title), `chart has no "${title}" panel`);
  for (const name of ['direct routing', 'weft udp', 'nebula (reference)'])
    assert.ok(svg.includes(`>${name}<`), `chart has no ${name}`);
  assert.equal((svg.match(/<rect x=/g) ?? []).length, 5 * IDS.length, 'one bar per row and panel');
  assert.doesNotMatch(svg, /failed|n\/a/);
});
