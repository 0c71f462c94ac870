import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DropReason } from '../../src/encap/drop-reason.ts';
import {
  ipv4DecrementTtl,
  ipv4Dst,
  ipv4HeaderLength,
  ipv4IsFirstFragment,
  ipv4Src,
  ipv4Validate,
  ipv4WriteHeader,
} from '../../src/encap/ipv4.ts';
import { buildIpv4, headerChecksumOk, ip } from './packets.ts';

const A = ip('10.244.1.5');
const B = ip('192.168.200.7');

void test('a valid packet validates to its total length; src/dst read as uint32', () => {
  const p = buildIpv4({ src: A, dst: B });
  const arena = Buffer.alloc(p.length + 30);
  p.copy(arena, 10);
  assert.equal(ipv4Validate(arena, 10, p.length), p.length);
  assert.equal(ipv4Src(arena, 10), A);
  assert.equal(ipv4Dst(arena, 10), B);
  assert.ok(ipv4Dst(arena, 10) > 0x7fffffff, 'high addresses stay unsigned');
  assert.equal(ipv4HeaderLength(arena, 10), 20);
});

void test('trailing bytes beyond total length are trimmed', () => {
  const p = buildIpv4({ src: A, dst: B });
  const padded = Buffer.concat([p, Buffer.alloc(17, 0xee)]);
  assert.equal(ipv4Validate(padded, 0, padded.length), p.length);
});

void test('each header defect is reported', () => {
  const good = buildIpv4({ src: A, dst: B });
  const v6 = Buffer.from(good);
  v6[0] = 0x60;
  assert.equal(ipv4Validate(v6, 0, v6.length), -DropReason.notIpv4);
  const ihl4 = Buffer.from(good);
  ihl4[0] = 0x44;
  assert.equal(ipv4Validate(ihl4, 0, ihl4.length), -DropReason.malformed);
  assert.equal(ipv4Validate(good, 0, 19), -DropReason.malformed, 'shorter than a header');
  assert.equal(ipv4Validate(good, 0, 0), -DropReason.malformed, 'empty');
  const longTotal = Buffer.from(good);
  longTotal.writeUInt16BE(good.length + 1, 2);
  assert.equal(ipv4Validate(longTotal, 0, longTotal.length), -DropReason.malformed);
  const shortTotal = Buffer.from(good);
  shortTotal.writeUInt16BE(19, 2);
  assert.equal(ipv4Validate(shortTotal, 0, shortTotal.length), -DropReason.malformed);
  const badSum = Buffer.from(good);
  badSum[10] = (badSum[10] as number) ^ 0x01;
  assert.equal(ipv4Validate(badSum, 0, badSum.length), -DropReason.malformed);
  const ihlBeyond = buildIpv4({ src: A, dst: B, options: new Uint8Array(8), payload: new Uint8Array(0) });
  assert.equal(ipv4Validate(ihlBeyond, 0, 24), -DropReason.malformed, 'IHL*4 beyond available');
  assert.equal(ipv4Validate(good, 5, good.length), -DropReason.malformed, 'range beyond the buffer');
});

void test('header options are accepted', () => {
  const p = buildIpv4({ src: A, dst: B, options: Buffer.from([1, 1, 1, 0]) });
  assert.equal(ipv4Validate(p, 0, p.length), p.length);
  assert.equal(ipv4HeaderLength(p, 0), 24);
});

void test('TTL decrement keeps the checksum valid; TTL 1 and 0 are refused untouched', () => {
  const p = buildIpv4({ src: A, dst: B, ttl: 64 });
  assert.equal(ipv4DecrementTtl(p, 0), true);
  assert.equal(p[8], 63);
  assert.ok(headerChecksumOk(p));
  for (const ttl of [1, 0]) {
    const q = buildIpv4({ src: A, dst: B, ttl });
    const before = Buffer.from(q);
    assert.equal(ipv4DecrementTtl(q, 0), false);
    assert.deepEqual(q, before);
  }
});

void test('property: TTL decrement equals rebuilding the header with TTL-1', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 2, max: 255 }),
      fc.integer({ min: 0, max: 255 }),
      fc.integer({ min: 0, max: 0xffffffff }),
      fc.integer({ min: 0, max: 0xffffffff }),
      fc.integer({ min: 0, max: 0xffff }),
      (ttl, protocol, src, dst, id) => {
        const p = buildIpv4({ src, dst, ttl, protocol, id });
        const expect = buildIpv4({ src, dst, ttl: ttl - 1, protocol, id });
        assert.equal(ipv4DecrementTtl(p, 0), true);
        assert.ok(headerChecksumOk(p));
        // Same bytes as a fresh build, except 0x0000 vs 0xffff are both valid encodings of zero.
        const a = p.readUInt16BE(10);
        const b = expect.readUInt16BE(10);
        assert.ok(a === b || (a ^ b) === 0xffff, `checksum ${a.toString(16)} vs ${b.toString(16)}`);
        assert.deepEqual(p.subarray(0, 10), expect.subarray(0, 10));
        assert.equal(ipv4Validate(p, 0, p.length), p.length);
      },
    ),
    { numRuns: 1000 },
  );
});

void test('first-fragment test: offset 0 (with or without MF) yes, later fragments no', () => {
  assert.equal(ipv4IsFirstFragment(buildIpv4({ src: A, dst: B }), 0), true);
  assert.equal(ipv4IsFirstFragment(buildIpv4({ src: A, dst: B, moreFragments: true }), 0), true);
  assert.equal(ipv4IsFirstFragment(buildIpv4({ src: A, dst: B, fragOffset: 185 }), 0), false);
  assert.equal(
    ipv4IsFirstFragment(buildIpv4({ src: A, dst: B, fragOffset: 1, moreFragments: true }), 0),
    false,
  );
});

void test('ipv4WriteHeader writes a header that validates', () => {
  const b = Buffer.alloc(40);
  ipv4WriteHeader(b, 4, 30, 1, 64, A, B, 7);
  assert.equal(ipv4Validate(b, 4, 36), 30);
  assert.ok(headerChecksumOk(b.subarray(4)));
  assert.equal(ipv4Src(b, 4), A);
  assert.equal(ipv4Dst(b, 4), B);
});

void test('property: random bytes never throw and always yield a length or a drop reason', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), fc.nat(300), (bytes, avail) => {
      const buf = Buffer.from(bytes);
      const r = ipv4Validate(buf, 0, Math.min(avail, buf.length));
      assert.ok(r === -DropReason.malformed || r === -DropReason.notIpv4 || (r >= 20 && r <= buf.length));
    }),
    { numRuns: 2000 },
  );
});
