/**
 * Smoke test of the benchmark scripts: bench/micro.ts (--quick) and bench/fuzz.ts (a few
 * thousand cases) run to completion and print what they promise; the fuzz run's failure
 * path (seed, failing input in hex, exit code 1) is exercised with its self-test fault.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { DROP_REASON_NAMES } from '../../src/encap/drop-reason.ts';
import { projectRoot } from '../../src/util/self.ts';

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function runScript(script: string, args: string[], timeoutMs = 120_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', join(projectRoot, 'bench', script), ...args],
      { cwd: projectRoot, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err !== null && typeof err.code !== 'number') {
          reject(new Error(`${script} did not finish: ${err.message}\n${stderr}`));
          return;
        }
        resolve({ code: err === null ? 0 : (err.code as number), stdout, stderr });
      },
    );
  });
}

function jsonLine(out: string): Record<string, unknown> {
  const line = out.split('\n').find((l) => l.startsWith('JSON '));
  assert.ok(line !== undefined, `no JSON summary line in:\n${out}`);
  return JSON.parse(line.slice(5)) as Record<string, unknown>;
}

interface MicroRow {
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

void test('bench/micro.ts --quick prints ops/s, ns/op, ±% and bytes/op for every case, and a JSON summary', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-micro-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'micro.json');
  const r = await runScript('micro.ts', ['--quick', '--json', file]);
  assert.equal(r.code, 0, `exit code ${r.code}\n${r.stdout}\n${r.stderr}`);
  const expected = [
    'checksum 20 B',
    'checksum 1500 B',
    'checksum 65536 B',
    'checksum RFC 1624 TTL update',
    'ipv4 validate + TTL decrement',
    'udp encapsulate + decapsulate 1400 B',
    'vxlan encapsulate + decapsulate 1400 B',
    'route lookup 10 peers hit',
    'route lookup 10 peers miss',
    'route lookup 1000 peers hit',
    'route lookup 1000 peers miss',
    'route lookup 5000 peers hit',
    'route lookup 5000 peers miss',
    'native segment 64 KiB TCP super-packet (46 segments)',
    'native coalesce 44 TCP segments',
    'forwarder udp TUN->socket, batches of 64',
    'forwarder udp socket->TUN, batches of 64',
    'forwarder vxlan TUN->socket, batches of 64',
    'forwarder vxlan socket->TUN, batches of 64',
  ];
  const lines = r.stdout.split('\n');
  for (const name of expected) {
    const line = lines.find((l) => l.startsWith(name));
    assert.ok(line !== undefined, `no line for "${name}" in:\n${r.stdout}`);
    assert.match(line, /[\d,]+ ops\/s +[\d,.]+ ns\/op ±[\d.]+% \(\d+ runs\)/, line);
    assert.match(line, /alloc\/op heap (?:[\d,.]+ B|n\/a \(GC ran\)), buffers /, line);
  }
  for (const l of lines.filter((x) => x.startsWith('forwarder ')))
    assert.match(l, /Mpps, [\d,.]+ ns\/packet/, l);

  const summary = jsonLine(r.stdout);
  assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), summary, '--json FILE holds the summary line');
  const rows = summary.results as MicroRow[];
  assert.deepEqual(
    rows.map((x) => x.name),
    expected,
  );
  for (const row of rows) {
    assert.equal(row.error, undefined, `${row.name} failed: ${row.error}`);
    assert.ok(row.opsPerSec > 0 && Number.isFinite(row.opsPerSec), `${row.name} ops/s ${row.opsPerSec}`);
    assert.ok(Math.abs(row.nsPerOp - 1e9 / row.opsPerSec) < 1e-6 * row.nsPerOp, `${row.name} ns/op`);
    assert.ok(row.samples >= 1 && row.rmePct >= 0);
    if (row.name.startsWith('forwarder ')) {
      assert.equal(row.rate?.unit, 'packets/s');
      assert.equal(row.rate.perSec, row.opsPerSec * 64);
      // A batch of 64 packets through the loop: the design rule is no allocation per
      // packet or batch, so anything near a small object per op means a regression.
      if (row.heapBytesPerOp !== null)
        assert.ok(row.heapBytesPerOp < 32, `${row.name}: ${row.heapBytesPerOp} B/op`);
    }
  }
  // The filter selects cases by name.
  const f = await runScript('micro.ts', ['--quick', '--filter', '^route lookup 10 ']);
  assert.equal(f.code, 0, f.stderr);
  assert.deepEqual(
    (jsonLine(f.stdout).results as MicroRow[]).map((x) => x.name),
    ['route lookup 10 peers hit', 'route lookup 10 peers miss'],
  );
});

void test('bench/fuzz.ts runs N seeded cases through both directions and passes', async () => {
  const r = await runScript('fuzz.ts', ['--cases', '3000', '--seed', '12345']);
  assert.equal(r.code, 0, `exit code ${r.code}\n${r.stdout}\n${r.stderr}`);
  assert.match(r.stdout, /seed 12345/);
  assert.match(
    r.stdout,
    /^udp: 1500 cases \(\d+ valid interleaved\) in [\d.]+ s: \d+ cases\/s(?:; \d+ NAT keepalives counted as such)?$/m,
  );
  assert.match(
    r.stdout,
    /^vxlan: 1500 cases \(\d+ valid interleaved\) in [\d.]+ s: \d+ cases\/s(?:; \d+ NAT keepalives counted as such)?$/m,
  );
  assert.match(r.stdout, /^total: 3000 cases in [\d.]+ s, \d+ cases\/s$/m);
  assert.match(r.stdout, /^PASS$/m);
  // The drop-reason table: one row per reason, and it agrees with the JSON summary.
  const summary = jsonLine(r.stdout) as {
    cases: number;
    pass: boolean;
    perKind: Record<
      string,
      { cases: number; valid: number; casesPerSec: number; drops: Record<string, number> }
    >;
  };
  assert.equal(summary.cases, 3000);
  assert.equal(summary.pass, true);
  for (const name of DROP_REASON_NAMES.slice(1)) {
    const m = new RegExp(`^${name} +(\\d+)$`, 'm').exec(r.stdout);
    assert.ok(m !== null, `no table row for ${name}`);
    const sum = (summary.perKind.udp?.drops[name] ?? 0) + (summary.perKind.vxlan?.drops[name] ?? 0);
    assert.equal(Number(m[1]), sum, name);
  }
  // The generator reaches every kind of drop each encapsulation can produce.
  const vx = summary.perKind.vxlan?.drops ?? {};
  for (const name of [
    'malformed',
    'notIpv4',
    'ttlExpired',
    'noRoute',
    'truncated',
    'badVxlanFlags',
    'wrongVni',
    'wrongMac',
    'wrongEtherType',
    'unknownPeer',
    'spoofedSource',
    'notForUs',
    'noPeerMac',
  ]) {
    assert.ok((vx[name] ?? 0) > 0, `vxlan: no ${name} drops`);
  }
  assert.ok((summary.perKind.udp?.valid ?? 0) > 300, 'valid packets interleaved');
  // Reproducible: the vxlan half of that run used stream seed 12346; alone it gives the same books.
  const again = await runScript('fuzz.ts', ['--cases', '1500', '--seed', '12346', '--encap', 'vxlan']);
  assert.equal(again.code, 0, again.stdout);
  const s2 = jsonLine(again.stdout) as typeof summary;
  assert.deepEqual(s2.perKind.vxlan, {
    ...summary.perKind.vxlan,
    casesPerSec: s2.perKind.vxlan?.casesPerSec,
  });
});

void test('bench/fuzz.ts reports a failure with the seed and the failing input in hex, exit code 1', async () => {
  const r = await runScript('fuzz.ts', ['--cases', '2000', '--seed', '99', '--selftest-fault']);
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stdout, /^FAIL udp (?:tun|socket) burst in round 0 \(seed 99,/m);
  assert.match(r.stdout, /not (?:sent|delivered) intact; expected [0-9a-f]+/);
  assert.match(r.stdout, /failing input \(valid[^)]*, expected (?:sent to peer \d|delivered)/);
  const hexLine = r.stdout.split('\n').find((l, i, all) => i > 0 && /failing input/.test(all[i - 1] ?? ''));
  assert.ok(
    hexLine !== undefined && /^ {2}4[5-9a-f][0-9a-f]+$/.test(hexLine),
    `hex of the input: ${hexLine}`,
  );
  assert.match(r.stdout, /^FAIL \(rerun with --seed 99\)$/m);
});
