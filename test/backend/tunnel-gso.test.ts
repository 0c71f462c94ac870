// src/backend/tunnel-gso.ts without a kernel: the TAP's name, what stops a node from using
// tunnel GSO (read from /proc/sys through a fake), and that a blocked node opens nothing.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  TunnelGsoGuard,
  openTunnelGso,
  takesTunnelGso,
  tunnelGsoBlocker,
  tunnelGsoMac,
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
  assert.equal(g.goodIntervals, 2, 'the two judged intervals the underlay sent what went to the TAP');
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

void test('only a lease whose BackendData says "TunnelGSO": true gets whole super-packets', () => {
  assert.equal(takesTunnelGso({ TunnelGSO: true }), true);
  assert.equal(takesTunnelGso({ VNI: 1, VtepMAC: 'aa:bb:cc:dd:ee:ff', TunnelGSO: true }), true);
  // flannel's udp (null) and vxlan BackendData, and anything that is not exactly true.
  for (const d of [
    null,
    undefined,
    {},
    { VNI: 1, VtepMAC: 'aa:bb:cc:dd:ee:ff' },
    { TunnelGSO: 'true' },
    { TunnelGSO: 1 },
    'TunnelGSO',
    [true],
  ]) {
    assert.equal(takesTunnelGso(d), false, JSON.stringify(d));
  }
});

void test('sendWhole sets the send-whole byte of the jumbo slot a descriptor starts in, and nothing else', () => {
  const slot = JUMBO_REGION_BYTES / 4;
  const b = PacketBatch.forTunRead(4, 2048, 64);
  assert.equal(b.jumboStart, 4 * 2048);
  b.arena.fill(0);
  // A descriptor in slot k starts after the 16-byte meta and up to 256 bytes of headroom.
  for (const [k, into] of [
    [0, 16 + 256 - 8],
    [2, 16 + 200],
    [3, 16],
  ] as const) {
    b.sendWhole(b.jumboStart + k * slot + into);
    assert.equal(b.arena[b.jumboStart + k * slot + 11], 1, `slot ${k}`);
  }
  b.sendWhole(b.slotStart(1)); // an ordinary slot: no meta, nothing written
  let set = 0;
  for (const v of b.arena) set += v;
  assert.equal(set, 3);
  const plain = PacketBatch.forSlots(2, 2048, 64);
  assert.equal(plain.jumboStart, plain.arena.length);
  plain.arena.fill(0);
  plain.sendWhole(plain.slotStart(1));
  assert.equal(plain.arena.indexOf(1), -1);
});

void test('the TAP has a fixed, locally administered unicast address per name (the same after a restart)', () => {
  const mac = tunnelGsoMac('weft0-gso');
  assert.match(mac, /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
  assert.equal(mac, tunnelGsoMac('weft0-gso'));
  assert.notEqual(mac, tunnelGsoMac('weft.1-gso'));
  const first = parseInt(mac.slice(0, 2), 16);
  assert.equal(first & 0x02, 0x02, 'locally administered');
  assert.equal(first & 0x01, 0, 'unicast');
});
