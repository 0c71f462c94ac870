import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { checksumUpdate16, internetChecksum, onesSum, foldSum } from '../../src/encap/checksum.ts';
import { refChecksum } from './packets.ts';

void test('RFC 1071 example: words 0001 f203 f4f5 f6f7 sum to ddf2', () => {
  const b = Buffer.from([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
  assert.equal(foldSum(onesSum(b, 0, b.length)), 0xddf2);
  assert.equal(internetChecksum(b, 0, b.length), 0x220d);
});

void test('a known IPv4 header checksums to b861 and then verifies to 0', () => {
  // Classic example header: 4500 0073 0000 4000 4011 [b861] c0a8 0001 c0a8 00c7
  const h = Buffer.from('450000730000400040110000c0a80001c0a800c7', 'hex');
  assert.equal(internetChecksum(h, 0, 20), 0xb861);
  h.writeUInt16BE(0xb861, 10);
  assert.equal(internetChecksum(h, 0, 20), 0);
});

void test('odd lengths pad with a zero byte; offsets are honoured', () => {
  const b = Buffer.from([0xff, 0xab, 0xcd, 0xef, 0x12]);
  assert.equal(internetChecksum(b, 1, 3), refChecksum(Buffer.from([0xab, 0xcd, 0xef])));
});

void test('property: internetChecksum agrees with an independent implementation', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 3000 }), fc.nat(7), (bytes, lead) => {
      const buf = Buffer.alloc(bytes.length + lead);
      buf.set(bytes, lead);
      assert.equal(internetChecksum(buf, lead, bytes.length), refChecksum(bytes));
    }),
    { numRuns: 300 },
  );
});

void test('property: RFC 1624 incremental update equals a full recomputation', () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 20, maxLength: 60 }),
      fc.nat(9),
      fc.integer({ min: 0, max: 0xffff }),
      (raw, w, nw) => {
        const bytes = Buffer.from(raw.subarray(0, raw.length & ~1));
        const at = (w * 2) % bytes.length;
        // Checksum field at [0,2): compute it over the rest, then change word `at` (not the field).
        const pos = at === 0 ? 2 : at;
        bytes.writeUInt16BE(0, 0);
        bytes.writeUInt16BE(internetChecksum(bytes, 0, bytes.length), 0);
        const old = bytes.readUInt16BE(pos);
        const inc = checksumUpdate16(bytes.readUInt16BE(0), old, nw);
        bytes.writeUInt16BE(nw, pos);
        bytes.writeUInt16BE(inc, 0);
        // The patched packet must verify (a full sum over it, field included, folds to 0).
        assert.equal(internetChecksum(bytes, 0, bytes.length), 0);
        assert.equal(refChecksum(bytes), 0);
      },
    ),
    { numRuns: 500 },
  );
});
