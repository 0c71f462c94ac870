// Coalescing of TCP segments into one GSO TUN write, driven through the addon's test hook
// (the exact bytes tunWrite would hand the kernel), plus the cases that must not coalesce.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { batchOf, coalesceBatch as coalesce } from './fixtures/hooks.ts';
import type { TcpSpec } from './fixtures/packets.ts';
import {
  TCP,
  TS_OPTION,
  fold,
  ipChecksumOk,
  l4ChecksumOk,
  pattern,
  pseudoSum,
  sum16,
  tcpPacket,
} from './fixtures/packets.ts';

/** A flow of segments: sizes[i] bytes each, contiguous sequence numbers. */
function flow(sizes: number[], base: Partial<TcpSpec> = {}, seq0 = 5000): Buffer[] {
  let seq = seq0;
  return sizes.map((n, i) => {
    const p = tcpPacket({ ...base, seq, id: 100 + i, payload: pattern(n, i + 1) });
    seq += n;
    return p;
  });
}

/** Checks a zero-vnet-header write carrying exactly `pkt`. */
function assertPlain(w: Buffer | undefined, pkt: Buffer): void {
  assert.ok(w);
  assert.deepEqual(w.subarray(0, 10), Buffer.alloc(10), 'zero vnet header');
  assert.deepEqual(w.subarray(10), pkt, 'packet unchanged');
}

void test('a run of one flow becomes one GSO write with the right vnet header and headers', () => {
  const sizes = [1000, 1000, 1000, 1000, 400];
  const pkts = flow(sizes, { options: TS_OPTION, ttl: 61, tos: 8, window: 999 });
  // PSH on the last segment only, and a newer window there.
  const last = tcpPacket({
    seq: 5000 + 4000,
    id: 104,
    payload: pattern(400, 5),
    options: TS_OPTION,
    ttl: 61,
    tos: 8,
    window: 1001,
    flags: TCP.ACK | TCP.PSH,
  });
  pkts[4] = last;
  const writes = coalesce(batchOf(pkts));
  assert.equal(writes.length, 1);
  const w = writes[0] as Buffer;
  const hdrLen = 20 + 20 + TS_OPTION.length;
  // virtio_net_hdr
  assert.equal(w[0], 1, 'NEEDS_CSUM');
  assert.equal(w[1], 1, 'GSO_TCPV4');
  assert.equal(w.readUInt16LE(2), hdrLen, 'hdr_len');
  assert.equal(w.readUInt16LE(4), 1000, 'gso_size');
  assert.equal(w.readUInt16LE(6), 20, 'csum_start = IHL');
  assert.equal(w.readUInt16LE(8), 16, 'csum_offset');
  const sup = w.subarray(10);
  const total = hdrLen + 4400;
  assert.equal(sup.length, total);
  assert.equal(sup.readUInt16BE(2), total, 'IP total length of the super-packet');
  assert.equal(sup.readUInt16BE(4), 100, 'first IP id');
  assert.equal(sup[1], 8);
  assert.equal(sup[8], 61);
  assert.ok(ipChecksumOk(sup), 'IP header checksum recomputed');
  assert.equal(sup.readUInt32BE(24), 5000, 'first sequence number');
  assert.equal(sup[33], TCP.ACK | TCP.PSH, 'PSH taken from the last');
  assert.equal(sup.readUInt16BE(34), 1001, 'newest window');
  assert.deepEqual(sup.subarray(40, hdrLen), Buffer.from(TS_OPTION));
  // The checksum field holds the (uncomplemented) pseudo-header sum.
  assert.equal(sup.readUInt16BE(36), fold(pseudoSum(sup, 6, total - 20)));
  // What the kernel will do: complete it over header + payload, which must then verify.
  const completed = Buffer.from(sup);
  completed.writeUInt16BE(~fold(sum16(completed, 20, total)) & 0xffff, 36);
  assert.ok(l4ChecksumOk(completed));
  const payload = Buffer.concat(pkts.map((p) => p.subarray(hdrLen)));
  assert.deepEqual(sup.subarray(hdrLen), payload, 'payloads in order, untouched');
});

void test('sequence gap ends the run', () => {
  const a = flow([1000, 1000]);
  const b = flow([1000, 1000], {}, 5000 + 2000 + 1); // one byte missing
  const writes = coalesce(batchOf([...a, ...b]));
  assert.equal(writes.length, 2);
  assert.equal(writes[0]?.[1], 1);
  assert.equal(writes[1]?.[1], 1);
  assert.equal(writes[1]?.subarray(10).readUInt32BE(24), 7001);
});

void test('segments of another flow are not merged', () => {
  const a = flow([1000], { sport: 1 });
  const b = flow([1000], { sport: 2 }, 6000);
  const c = flow([1000], { dst: 0x0a000103 }, 6000);
  const writes = coalesce(batchOf([a[0] as Buffer, b[0] as Buffer, c[0] as Buffer]));
  assert.equal(writes.length, 3);
  assertPlain(writes[0], a[0] as Buffer);
  assertPlain(writes[1], b[0] as Buffer);
  assertPlain(writes[2], c[0] as Buffer);
});

void test('different TTL, TOS, ack or options end the run', () => {
  for (const diff of [{ ttl: 5 }, { tos: 4 }, { ack: 778 }, { options: TS_OPTION }, { df: false }]) {
    const a = tcpPacket({ seq: 1, payload: pattern(500) });
    const b = tcpPacket({ seq: 501, payload: pattern(500), ...diff });
    const writes = coalesce(batchOf([a, b]));
    assert.equal(writes.length, 2, JSON.stringify(diff));
    assertPlain(writes[0], a);
    assertPlain(writes[1], b);
  }
});

void test('flags: PSH ends a run, FIN/SYN/RST/URG/ECE/CWR segments are never merged', () => {
  // PSH on the second: [1,2] merge, 3 stands alone.
  const p = flow([800, 800, 800]);
  const psh = tcpPacket({ seq: 5800, id: 101, payload: pattern(800, 2), flags: TCP.ACK | TCP.PSH });
  const w = coalesce(batchOf([p[0] as Buffer, psh, p[2] as Buffer]));
  assert.equal(w.length, 2);
  assert.equal(w[0]?.[1], 1);
  assert.equal(w[0]?.length, 10 + 40 + 1600);
  assertPlain(w[1], p[2] as Buffer);
  for (const f of [TCP.FIN, TCP.SYN, TCP.RST, TCP.URG, TCP.ECE, TCP.CWR]) {
    const a = tcpPacket({ seq: 1, payload: pattern(500) });
    const b = tcpPacket({ seq: 501, payload: pattern(500), flags: TCP.ACK | f });
    const writes = coalesce(batchOf([a, b]));
    assert.equal(writes.length, 2, `flag ${f}`);
    assertPlain(writes[1], b);
  }
});

void test('a different size in the middle ends the run; a larger one never joins', () => {
  const w = coalesce(batchOf(flow([1000, 500, 1000])));
  assert.equal(w.length, 2);
  assert.equal(w[0]?.[1], 1);
  assert.equal(w[0]?.readUInt16LE(4), 1000);
  assert.equal(w[0]?.length, 10 + 40 + 1500);
  assert.equal(w[1]?.[1], 0);
  const w2 = coalesce(batchOf(flow([500, 1000])));
  assert.equal(w2.length, 2);
  assert.equal(w2[0]?.[1], 0);
});

void test('pure ACKs and other protocols are written one by one with a zero header', () => {
  const ack1 = tcpPacket({ seq: 1, payload: new Uint8Array(0) });
  const ack2 = tcpPacket({ seq: 1, payload: new Uint8Array(0) });
  const icmp = Buffer.from(ack1);
  icmp[9] = 1;
  const icmp2 = Buffer.from(icmp);
  const w = coalesce(batchOf([ack1, ack2, icmp, icmp2]));
  assert.equal(w.length, 4);
  assertPlain(w[0], ack1);
  assertPlain(w[1], ack2);
  assertPlain(w[2], icmp);
  assertPlain(w[3], icmp2);
});

void test('a run stops before the super-packet would exceed 65535 bytes', () => {
  const sizes = Array.from({ length: 50 }, () => 1400);
  const w = coalesce(batchOf(flow(sizes)));
  assert.equal(w.length, 2);
  const first = w[0] as Buffer;
  const n0 = (first.length - 10 - 40) / 1400;
  assert.equal(n0, Math.floor((65535 - 40) / 1400));
  assert.ok(first.length - 10 <= 65535);
  assert.equal(w[1]?.subarray(10).readUInt32BE(24), 5000 + n0 * 1400);
});
