// `weft demo` as a user runs it: a child process that builds the cluster, prints leases, a
// ping matrix and a throughput figure, exits 0 and leaves nothing behind; and the same
// interrupted with SIGINT half-way, which must still remove every namespace, process and
// temp file of the run.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { rootSnapshot } from '../../src/netns/netns.ts';
import { programCommand } from '../../src/util/self.ts';
import { main } from '../../src/cli/weft.ts';
import type { CliIo } from '../../src/cli/weft.ts';
import { parseDemoArgs } from '../../src/cli/demo.ts';

function captureIo(): CliIo & { text: () => string } {
  let text = '';
  return { out: (t) => (text += t), err: (t) => (text += t), text: () => text };
}

void test('weft: help, --version, unknown commands; demo flags are checked', async () => {
  const help = captureIo();
  assert.equal(await main(['help'], help), 0);
  assert.match(help.text(), /demo\s+build a cluster/);
  const v = captureIo();
  assert.equal(await main(['--version'], v), 0);
  assert.match(v.text(), /^weft \d+\.\d+\.\d+/);
  const bad = captureIo();
  assert.equal(await main(['frobnicate'], bad), 2);
  assert.match(bad.text(), /unknown command "frobnicate"/);
  assert.equal(await main(['demo', '--nodes', '1'], captureIo()), 2);

  assert.deepEqual(parseDemoArgs([]), {
    nodes: 3,
    podsPerNode: 1,
    backend: 'udp',
    offloads: true,
    duration: 3,
  });
  assert.deepEqual(
    parseDemoArgs(['--nodes', '4', '--no-offloads', '--backend', 'vxlan', '--duration', '0']),
    {
      nodes: 4,
      podsPerNode: 1,
      backend: 'vxlan',
      offloads: false,
      duration: 0,
    },
  );
  assert.match(
    (parseDemoArgs(['--nodes', 'x']) as { error: string }).error,
    /--nodes must be a whole number/,
  );
  assert.ok('error' in parseDemoArgs(['--bogus']));
  assert.deepEqual(parseDemoArgs(['-h']), { help: true });
});

interface DemoRun {
  readonly code: number | null;
  readonly signal: string | null;
  readonly out: string;
  readonly err: string;
}

/** Starts `weft demo args`; `onOutput` sees stdout as it grows and may signal the child. */
function runDemo(args: string[], onOutput?: (out: string, pid: number) => void): Promise<DemoRun> {
  const { cmd, args: pre } = programCommand('weft');
  const child = spawn(cmd, [...pre, 'demo', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const killer = setTimeout(() => child.kill('SIGKILL'), 120_000);
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    if (onOutput && child.pid) onOutput(out, child.pid);
  });
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      clearTimeout(killer);
      resolve({ code, signal, out, err });
    });
  });
}

function prefixOf(out: string): string {
  const m = /namespaces are named (wft\d+x[0-9a-f]{4})-\*/.exec(out);
  assert.ok(m, `the demo did not print its namespace prefix:\n${out}`);
  return m[1] as string;
}

/** Namespaces, temp dirs and processes that still carry the run's prefix. */
function traces(prefix: string): string[] {
  const left: string[] = [];
  try {
    left.push(...readdirSync('/run/netns').filter((n) => n.startsWith(`${prefix}-`)));
  } catch {
    /* no namespaces at all */
  }
  left.push(...readdirSync(tmpdir()).filter((n) => n.startsWith(`${prefix}-`)));
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (cmdline.includes(prefix)) left.push(`pid ${pid}: ${cmdline.replace(/\0/g, ' ')}`);
    } catch {
      /* exited meanwhile */
    }
  }
  return left;
}

void test('weft demo --nodes 2: leases, a full ping matrix and a throughput figure, then nothing left', async () => {
  const before = rootSnapshot();
  const r = await runDemo(['--nodes', '2', '--duration', '1']);
  assert.equal(r.code, 0, `${r.out}\n${r.err}`);
  const prefix = prefixOf(r.out);
  // One lease row per node: name, underlay address, a /24 of 10.244.0.0/16, MTU 1472.
  assert.match(r.out, /n1\s+198\.18\.0\.1\s+10\.244\.\d+\.0\/24\s+1472/);
  assert.match(r.out, /n2\s+198\.18\.0\.2\s+10\.244\.\d+\.0\/24\s+1472/);
  assert.match(r.out, /FLANNEL_SUBNET=10\.244\.\d+\.1\/24/);
  // Ping matrix: each row has one cross-node RTT and no X.
  const rows = r.out.split('\n').filter((l) => /^\s+n[12]p0 10\.244\./.test(l));
  assert.equal(rows.length, 2, r.out);
  for (const row of rows) {
    assert.doesNotMatch(row, /\bX\b/);
    assert.match(row, /\d+\.\d{3}/);
  }
  assert.match(r.out, /\d+\.\d\d Gbit\/s/);
  // n1 sent the iperf3 stream: whole super-packets through its tunnel-GSO TAP (the default).
  assert.match(r.out, /^\s+n1\s+\d+\s+\d+\s+\d+\s+\d+\s+[1-9]\d*\s+/m);
  assert.match(r.out, /Result: every pod reached every pod/);
  assert.deepEqual(traces(prefix), []);
  assert.equal(rootSnapshot(), before);
});

void test('weft demo interrupted with SIGINT removes namespaces, weftd processes and temp files', async () => {
  const before = rootSnapshot();
  let sent = false;
  let prefix = '';
  let tracesAtSignal: string[] = [];
  const r = await runDemo(['--nodes', '2', '--duration', '30'], (out, pid) => {
    if (!sent && out.includes('6. TCP throughput')) {
      sent = true;
      prefix = prefixOf(out);
      tracesAtSignal = traces(prefix);
      process.kill(pid, 'SIGINT');
    }
  });
  assert.ok(sent, `the demo never reached the throughput step:\n${r.out}\n${r.err}`);
  // While running, the run had namespaces, weftd processes and a temp dir.
  assert.ok(
    tracesAtSignal.some((x) => x.startsWith(`${prefix}-n1`)),
    tracesAtSignal.join('\n'),
  );
  assert.ok(
    tracesAtSignal.some((x) => x.startsWith('pid ') && x.includes('weftd')),
    tracesAtSignal.join('\n'),
  );
  assert.equal(r.code, 130, `${r.out}\n${r.err}`);
  assert.deepEqual(traces(prefix), []);
  assert.equal(rootSnapshot(), before);
});
