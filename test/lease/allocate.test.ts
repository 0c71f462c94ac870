// flannel's acquisition policy as a pure function: reuse > previous > random free, or full.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { validateNetConfig } from '../../src/daemon/netconf.ts';
import {
  allocate,
  freeSubnets,
  MAX_CANDIDATES,
  subnetCapacity,
  subnetFitsConfig,
} from '../../src/lease/allocate.ts';
import type { Lease, LeaseAttrs } from '../../src/lease/types.ts';
import type { Ipv4Cidr } from '../../src/routing/ipv4.ts';
import { cidrOverlaps, formatCidr, parseCidr, parseIpv4 } from '../../src/routing/ipv4.ts';

const cfg = validateNetConfig({ Network: '10.1.0.0/16' }); // /24s, 10.1.1.0 .. 10.1.255.0
const tiny = validateNetConfig({ Network: '10.2.0.0/28', SubnetLen: 30 }); // .4 .8 .12
const NOW = 1_000_000;
const attrs = (ip: string): LeaseAttrs => ({ publicIp: ip, backendType: 'udp', backendData: null });
const lease = (subnet: string, ip: string, expiresAt = NOW + 1000): Lease => ({
  subnet: parseCidr(subnet),
  attrs: attrs(ip),
  expiresAt,
});
const fixedRandom = (v: number) => (): number => v;

void test('reuses a live lease carrying our public IP (ignores previousSubnet)', () => {
  const mine = lease('10.1.7.0/24', '198.18.0.1');
  const r = allocate({
    config: cfg,
    existing: [lease('10.1.3.0/24', '198.18.0.2'), mine],
    attrs: attrs('198.18.0.1'),
    previousSubnet: parseCidr('10.1.9.0/24'),
    now: NOW,
    random: Math.random,
  });
  assert.deepEqual(r, { kind: 'reuse', lease: mine });
});

void test('reuses a reservation (no expiry) for our public IP', () => {
  const res = lease('10.1.50.0/24', '198.18.0.1', Infinity);
  const r = allocate({
    config: cfg,
    existing: [res],
    attrs: attrs('198.18.0.1'),
    now: NOW,
    random: Math.random,
  });
  assert.deepEqual(r, { kind: 'reuse', lease: res });
});

void test('our lease that no longer fits the config is discarded, then previous/random is used', () => {
  const old = lease('10.9.0.0/24', '198.18.0.1'); // outside Network
  const r = allocate({
    config: cfg,
    existing: [old],
    attrs: attrs('198.18.0.1'),
    previousSubnet: parseCidr('10.1.4.0/24'),
    now: NOW,
    random: Math.random,
  });
  assert.deepEqual(r, { kind: 'previous', subnet: parseCidr('10.1.4.0/24'), discard: old });
  const wrongLen = lease('10.1.8.0/25', '198.18.0.1');
  const r2 = allocate({
    config: cfg,
    existing: [wrongLen],
    attrs: attrs('198.18.0.1'),
    now: NOW,
    random: () => 0,
  });
  assert.equal(r2.kind, 'random');
  assert.equal(r2.kind === 'random' && r2.discard, wrongLen);
  // The discarded lease's space counts as free again.
  assert.deepEqual(r2.kind === 'random' && r2.subnet, parseCidr('10.1.1.0/24'));
});

void test('an expired lease with our IP is not reused, and its subnet is free', () => {
  const expired = lease('10.1.7.0/24', '198.18.0.1', NOW);
  const r = allocate({
    config: cfg,
    existing: [expired],
    attrs: attrs('198.18.0.1'),
    previousSubnet: parseCidr('10.1.7.0/24'),
    now: NOW,
    random: Math.random,
  });
  assert.deepEqual(r, { kind: 'previous', subnet: parseCidr('10.1.7.0/24') });
});

void test('previous subnet: used when free and fitting; otherwise a random one', () => {
  const base = { config: cfg, attrs: attrs('198.18.0.1'), now: NOW, random: () => 0 };
  const held = [lease('10.1.4.0/24', '198.18.0.2')];
  assert.equal(
    allocate({ ...base, existing: held, previousSubnet: parseCidr('10.1.4.0/24') }).kind,
    'random',
  );
  assert.equal(
    allocate({ ...base, existing: [], previousSubnet: parseCidr('10.1.0.0/24') }).kind,
    'random',
    'below SubnetMin',
  );
  assert.equal(
    allocate({ ...base, existing: [], previousSubnet: parseCidr('10.1.4.0/25') }).kind,
    'random',
    'wrong len',
  );
  assert.equal(
    allocate({ ...base, existing: [], previousSubnet: parseCidr('10.3.4.0/24') }).kind,
    'random',
    'outside',
  );
  // A reservation (another node's) blocks the previous subnet too.
  const res = [lease('10.1.4.0/24', '198.18.0.9', Infinity)];
  assert.equal(allocate({ ...base, existing: res, previousSubnet: parseCidr('10.1.4.0/24') }).kind, 'random');
  // A larger lease overlapping it blocks it.
  const big = [lease('10.1.4.0/23', '198.18.0.9')];
  assert.equal(allocate({ ...base, existing: big, previousSubnet: parseCidr('10.1.5.0/24') }).kind, 'random');
});

void test('random choice is among the first 100 free subnets from SubnetMin', () => {
  const picks = new Set<string>();
  for (const v of [0, 0.5, 0.999999]) {
    const r = allocate({
      config: cfg,
      existing: [],
      attrs: attrs('198.18.0.1'),
      now: NOW,
      random: fixedRandom(v),
    });
    assert.equal(r.kind, 'random');
    if (r.kind === 'random') picks.add(formatCidr(r.subnet));
  }
  assert.deepEqual([...picks], ['10.1.1.0/24', '10.1.51.0/24', '10.1.100.0/24']);
  assert.equal(MAX_CANDIDATES, 100);
});

void test('full network -> "full" with a message naming the network and the fix', () => {
  const existing = [lease('10.2.0.4/30', 'a'), lease('10.2.0.8/30', 'b'), lease('10.2.0.12/30', 'c')];
  const r = allocate({ config: tiny, existing, attrs: attrs('198.18.0.1'), now: NOW, random: Math.random });
  assert.equal(r.kind, 'full');
  assert.match(
    r.kind === 'full' ? r.message : '',
    /no free \/30 subnet left in 10\.2\.0\.0\/28 .*widen Network/,
  );
});

void test('SubnetMin/SubnetMax bound the choice', () => {
  const c = validateNetConfig({ Network: '10.5.0.0/16', SubnetMin: '10.5.10.0', SubnetMax: '10.5.12.0' });
  assert.equal(subnetCapacity(c), 3);
  const got = freeSubnets(c, [lease('10.5.11.0/24', 'x')], 100).map(formatCidr);
  assert.deepEqual(got, ['10.5.10.0/24', '10.5.12.0/24']);
  assert.ok(subnetFitsConfig(c, parseCidr('10.5.12.0/24')));
  assert.ok(!subnetFitsConfig(c, parseCidr('10.5.13.0/24')));
});

void test('property: the choice never overlaps a live lease and always fits the config', () => {
  const c = validateNetConfig({ Network: '10.4.0.0/22', SubnetLen: 27 }); // 31 usable /27s
  const slots = subnetCapacity(c);
  fc.assert(
    fc.property(
      fc.uniqueArray(fc.integer({ min: 0, max: slots - 1 }), { maxLength: slots }),
      fc.array(fc.boolean(), { minLength: slots, maxLength: slots }),
      fc.option(fc.integer({ min: 0, max: slots + 3 }), { nil: undefined }),
      fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
      (held, expired, prevSlot, rnd) => {
        const at = (i: number): Ipv4Cidr => ({ addr: (c.subnetMin + i * 32) >>> 0, prefix: 27 });
        const existing = held.map((i, k) => ({
          subnet: at(i),
          attrs: attrs(`198.18.1.${k}`),
          expiresAt: expired[i] ? NOW - 1 : NOW + 1,
        }));
        const r = allocate({
          config: c,
          existing,
          attrs: attrs('198.18.9.9'),
          previousSubnet: prevSlot === undefined ? undefined : at(prevSlot),
          now: NOW,
          random: () => rnd,
        });
        const live = existing.filter((l) => l.expiresAt > NOW);
        if (r.kind === 'full') return live.length === slots;
        assert.notEqual(r.kind, 'reuse');
        if (r.kind === 'reuse') return false;
        assert.ok(subnetFitsConfig(c, r.subnet));
        assert.ok(live.every((l) => !cidrOverlaps(l.subnet, r.subnet)));
        if (
          prevSlot !== undefined &&
          prevSlot < slots &&
          live.every((l) => l.subnet.addr !== at(prevSlot).addr)
        ) {
          assert.equal(r.kind, 'previous');
        }
        return true;
      },
    ),
    { numRuns: 300 },
  );
});

void test('freeSubnets skips large and unaligned foreign leases correctly', () => {
  const c = validateNetConfig({ Network: '10.6.0.0/24', SubnetLen: 28, SubnetMin: '10.6.0.0' });
  const taken = [lease('10.6.0.32/27', 'a'), lease('10.6.0.128/25', 'b'), lease('10.6.0.16/28', 'c')];
  assert.deepEqual(freeSubnets(c, taken, 100).map(formatCidr), [
    '10.6.0.0/28',
    '10.6.0.64/28',
    '10.6.0.80/28',
    '10.6.0.96/28',
    '10.6.0.112/28',
  ]);
  assert.deepEqual(freeSubnets(c, taken, 2).map(formatCidr), ['10.6.0.0/28', '10.6.0.64/28']);
  assert.equal(parseIpv4('10.6.0.0'), c.subnetMin);
});
