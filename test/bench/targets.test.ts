// bench/targets.ts: the #2/#6 verdicts from a run's medians (ratios, loss, latency deltas,
// rows missing from the run), and the C udp proxy's latency shown next to weft's.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { TargetFigure } from '../../bench/targets.ts';
import { renderTargets, targetChecks } from '../../bench/targets.ts';

type Rows = Record<string, Partial<Record<TargetFigure, number>>>;
const lookup = (rows: Rows) => (id: string, f: TargetFigure) => rows[id]?.[f];

const FULL: Rows = {
  'kernel-vxlan': {
    tcpGbps: 10,
    tcp4Gbps: 12,
    smallPps: 70_000,
    smallDeliveredPps: 71_000,
    rttP50Us: 44,
    udpRttP50Us: 36,
  },
  udp: {
    tcpGbps: 8.5,
    tcp4Gbps: 8,
    smallPps: 63_000,
    smallDeliveredPps: 142_000,
    smallAtRateLossPct: 0,
    rttP50Us: 160,
    udpRttP50Us: 56,
  },
  'udp-w2': { tcp4Gbps: 9.5 },
  'udp-seg': { tcpGbps: 9, tcp4Gbps: 9.8 },
  'vxlan-user': { tcpGbps: 10.5 },
  'vxlan-user-seg': { tcpGbps: 7.5 },
  'udp-proxy': { tcpGbps: 1, rttP50Us: 139, udpRttP50Us: 62 },
};

void test('every target gets its measured figure and verdict', () => {
  const checks = targetChecks(lookup(FULL));
  const by = (prefix: string) => {
    const c = checks.find((x) => x.target.startsWith(prefix));
    assert.ok(c, prefix);
    return c;
  };
  assert.deepEqual(
    checks.map((c) => [c.measured, c.met]),
    [
      ['0.85x', true], // the default udp row vs 0.8x (not the faster udp-seg row: not the default)
      ['0.85x', false], // the same vs 1.0x
      ['1.05x', true], // the default vxlan-user row vs 1.0x
      ['8.50x', true], // udp vs the C proxy, >= 8x
      ['0.79x', true], // best of 1/2 workers: 9.5 / 12 (udp-seg's 9.8 is not a candidate)
      ['0.90x', false], // 64-byte packets/s read by the receiving iperf3
      ['2.00x', true], // 64-byte packets/s delivered to the receiving pod
      ['0.00% lost', true],
      ['+116 µs', false], // ping
      ['+20 µs', true], // UDP request/response
    ],
  );
  assert.equal(by('weft udp ping').context, 'the C udp proxy: +95 µs');
  assert.equal(by('weft udp UDP request/response').context, 'the C udp proxy: +26 µs');
  assert.equal(by('weft udp TCP 1 stream').context, undefined);
});

void test('rows missing from the run leave their targets not measured', () => {
  const checks = targetChecks(lookup({ 'kernel-vxlan': FULL['kernel-vxlan'] as Rows[string] }));
  assert.ok(checks.length > 0);
  for (const c of checks) {
    assert.equal(c.met, undefined, c.target);
    assert.equal(c.measured, '-', c.target);
    assert.equal(c.context, undefined, c.target);
  }
  const text = renderTargets(checks);
  assert.equal(text.split('\n').length, checks.length);
  assert.ok(
    text.split('\n').every((l) => l.endsWith('not measured')),
    text,
  );
});

void test('loss above zero and a faster-than-kernel latency are reported as such', () => {
  const rows: Rows = {
    ...FULL,
    udp: { ...FULL.udp, smallAtRateLossPct: 0.01, rttP50Us: 40 },
  };
  const checks = targetChecks(lookup(rows));
  const loss = checks.find((c) => c.target.includes('loses no'));
  assert.deepEqual([loss?.measured, loss?.met], ['0.01% lost', false]);
  const ping = checks.find((c) => c.target.startsWith('weft udp ping'));
  assert.deepEqual([ping?.measured, ping?.met], ['-4 µs', true]);
});

void test('the rendered block aligns verdicts in one column and ends lines with the context', () => {
  const lines = renderTargets(targetChecks(lookup(FULL))).split('\n');
  const col = (l: string) => l.search(/ (met|NOT met)( |$)/);
  const cols = new Set(lines.map(col));
  assert.equal(cols.size, 1, lines.join('\n'));
  const ping = lines.find((l) => l.startsWith('weft udp ping'));
  assert.ok(ping?.endsWith('NOT met       the C udp proxy: +95 µs'), ping);
});
