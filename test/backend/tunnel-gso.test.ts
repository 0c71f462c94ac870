// src/backend/tunnel-gso.ts without a kernel: the TAP's name, what stops a node from using
// tunnel GSO (read from /proc/sys through a fake), and that a blocked node opens nothing.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  TunnelGsoGuard,
  openTunnelGso,
  tunnelGsoBlocker,
  tunnelGsoName,
} from '../../src/backend/tunnel-gso.ts';
import type { Sysctl } from '../../src/backend/tunnel-gso.ts';
import { RecordingKernel } from '../../src/kernel/recording.ts';
import { pino } from 'pino';
import { loadAddon } from '../../src/native/addon.ts';
import { JUMBO_REGION_BYTES, PacketBatch } from '../../src/tun/batch.ts';

function fakeSys(values: Record<string, string>): Sysctl & { writes: string[] } {
  const writes: string[] = [];
  return {
    writes,
    read: (p) => values[p],
    write: (p, v) => void writes.push(`${p}=${v}`),
  };
}

void test('the TAP is named after its TUN device, within 15 bytes', () => {
  assert.equal(tunnelGsoName('weft0'), 'weft0-gso');
  assert.equal(tunnelGsoName('weft.1'), 'weft.1-gso');
  const long = tunnelGsoName('a-very-long-tun');
  assert.equal(long, 'a-very-long-gso');
  assert.ok(long.length <= 15);
});

void test('a node needs IPv4 forwarding and no strict rp_filter for all interfaces', () => {
  assert.equal(
    tunnelGsoBlocker(fakeSys({ 'net/ipv4/ip_forward': '1', 'net/ipv4/conf/all/rp_filter': '0' })),
    undefined,
  );
  assert.equal(
    tunnelGsoBlocker(fakeSys({ 'net/ipv4/ip_forward': '1', 'net/ipv4/conf/all/rp_filter': '2' })),
    undefined,
  );
  assert.match(tunnelGsoBlocker(fakeSys({ 'net/ipv4/ip_forward': '0' })) ?? '', /forwarding is off/);
  assert.match(tunnelGsoBlocker(fakeSys({})) ?? '', /forwarding is off/);
  assert.match(
    tunnelGsoBlocker(fakeSys({ 'net/ipv4/ip_forward': '1', 'net/ipv4/conf/all/rp_filter': '1' })) ?? '',
    /rp_filter=1/,
  );
});

void test('a blocked node opens no TAP, changes no sysctl and says why', async () => {
  const lines: string[] = [];
  const log = pino({ level: 'warn' }, { write: (l: string) => void lines.push(l) });
  const kernel = new RecordingKernel();
  const sys = fakeSys({ 'net/ipv4/ip_forward': '0' });
  assert.equal(await openTunnelGso(kernel, 'weft0', log, sys), undefined);
  assert.deepEqual(sys.writes, []);
  assert.deepEqual(kernel.ops, []);
  assert.ok(
    lines.some((l) => /tunnel GSO is not possible/.test(l) && /forwarding is off/.test(l)),
    lines.join(''),
  );
});

void test('the guard trips after two judged checks in which the underlay sent under 90% of what went to the TAP', () => {
  const MB = 1024 * 1024;
  let written = 0;
  let sent = 0;
  const trips: [number, number][] = [];
  const g = new TunnelGsoGuard(
    { tunnelBytes: () => written, underlayTxBytes: () => sent },
    (w, s) => void trips.push([w, s]),
  );
  g.check(); // first reading
  // Idle, and traffic that leaves: fine.
  g.check();
  written += 10 * MB;
  sent += 9.5 * MB; // forwarded, counted a little late
  g.check();
  // Nothing written: not judged.
  g.check();
  // One bad interval, then a good one: the count starts again.
  written += 10 * MB;
  sent += 1 * MB;
  g.check();
  written += 10 * MB;
  sent += 10 * MB;
  g.check();
  assert.equal(trips.length, 0);
  assert.equal(g.dropped, false);
  // Two bad intervals with only unjudged (idle) ones between, as a stalled TCP flow's
  // retransmits look: tripped once, with the second bad interval's figures.
  written += 10 * MB;
  sent += 1 * MB;
  g.check();
  g.check();
  written += 8 * MB;
  sent += 6 * MB; // the socket's own packets keep it from 0
  g.check();
  assert.deepEqual(trips, [[8 * MB, 6 * MB]]);
  assert.equal(g.dropped, true);
  written += 10 * MB;
  g.check();
  g.check();
  assert.equal(trips.length, 1, 'only once');
});

void test('the guard does nothing while either counter is unreadable', () => {
  let calls = 0;
  const g = new TunnelGsoGuard(
    { tunnelBytes: () => undefined, underlayTxBytes: () => 0 },
    () => void calls++,
  );
  for (let i = 0; i < 5; i++) g.check();
  assert.equal(calls, 0);
});

void test('a TUN read batch reserves exactly the jumbo region the native reader fills', () => {
  assert.equal(loadAddon().jumboRegionBytes, JUMBO_REGION_BYTES);
  const b = PacketBatch.forTunRead(4, 2048, 64);
  assert.equal(b.arena.length, 4 * 2048 + JUMBO_REGION_BYTES);
});
