// Property tests: for random payload sizes, segment sizes, options and odd lengths, the
// addon's segmentation yields segments whose checksums verify (independent JS check), and
// coalescing those segments gives back the original super-packet in one GSO write.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { PacketBatch } from '../../src/tun/batch.ts';
import { coalesceBatch, segmentInto } from './fixtures/hooks.ts';
import {
  TCP,
  TS_OPTION,
  fold,
  ipChecksumOk,
  l4ChecksumOk,
  pattern,
  sum16,
  tcpPacket,
  vnetHdr,
} from './fixtures/packets.ts';

void test('segment then coalesce is the identity on the payload and verifies every checksum', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 60000 }),
      fc.integer({ min: 200, max: 1460 }),
      fc.boolean(),
      fc.integer({ min: 0, max: 0xffffffff }),
      fc.integer({ min: 1, max: 1000 }),
      (payloadLen, gso, withOpts, seq, seed) => {
        const opts = withOpts ? TS_OPTION : new Uint8Array(0);
        const hdrLen = 40 + opts.length;
        const payload = pattern(payloadLen, seed);
        const sup = tcpPacket({ payload, seq, options: opts, flags: TCP.ACK, partialCsum: true });
        const input = Buffer.concat([
          vnetHdr({ flags: 1, gsoType: 1, hdrLen, gsoSize: gso, csumStart: 20, csumOffset: 16 }),
          sup,
        ]);
        const segs = Math.ceil(payloadLen / gso);
        const batch = PacketBatch.forSlots(segs, 2048, 16);
        const n = segmentInto(input, batch);
        assert.equal(n, segs);
        for (let i = 0; i < n; i++) {
          const p = batch.view(i);
          assert.ok(ipChecksumOk(p) && l4ChecksumOk(p), `segment ${i}`);
          assert.equal(p.readUInt32BE(24), (seq + i * gso) >>> 0);
        }
        const writes = coalesceBatch(batch);
        // Runs end at 256 segments (and before 65535 bytes, never reached here).
        assert.equal(writes.length, Math.ceil(n / 256));
        let got = Buffer.alloc(0);
        let nextSeq = seq;
        for (const w of writes) {
          const out = w.subarray(10);
          const body = out.subarray(hdrLen);
          assert.equal(out.readUInt16BE(2), out.length);
          assert.ok(ipChecksumOk(out));
          assert.equal(out.readUInt32BE(24), nextSeq >>> 0);
          if (body.length > gso) {
            assert.equal(w[1], 1, 'GSO_TCPV4');
            assert.equal(w.readUInt16LE(4), gso);
            const done = Buffer.from(out);
            done.writeUInt16BE(~fold(sum16(done, 20, done.length)) & 0xffff, 36);
            assert.ok(l4ChecksumOk(done));
          } else {
            assert.equal(w[1], 0, 'a single segment is written plain');
            assert.ok(l4ChecksumOk(out));
          }
          nextSeq = (nextSeq + body.length) >>> 0;
          got = Buffer.concat([got, body]);
        }
        assert.deepEqual(got, payload);
      },
    ),
    { numRuns: 300 },
  );
});

void test('NEEDS_CSUM completion matches the JS checksum for odd and even lengths', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 1400 }), fc.integer({ min: 1, max: 1000 }), (len, seed) => {
      const pkt = tcpPacket({ payload: pattern(len, seed), partialCsum: true });
      const batch = PacketBatch.forSlots(1, 2048, 0);
      const n = segmentInto(
        Buffer.concat([vnetHdr({ flags: 1, csumStart: 20, csumOffset: 16 }), pkt]),
        batch,
      );
      assert.equal(n, 1);
      assert.ok(l4ChecksumOk(batch.view(0)));
    }),
    { numRuns: 300 },
  );
});
