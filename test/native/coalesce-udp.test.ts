// Coalescing UDP datagrams of one flow into one USO TUN write (VIRTIO_NET_HDR_GSO_UDP_L4),
// through the addon's test hook: the bytes tunWrite would hand the kernel, what the kernel's
// segmentation gives back from them (the addon's own segmenter, which numbers IP IDs and
// fixes lengths and checksums the way the kernel does), and every case that must not merge.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PacketBatch } from '../../src/tun/batch.ts';
import { batchOf, coalesceBatch, segmentInto } from './fixtures/hooks.ts';
import {
  fold,
  ipChecksumOk,
  l4ChecksumOk,
  pattern,
  pseudoSum,
  sum16,
  udpPacket,
} from './fixtures/packets.ts';

type UdpSpec = Parameters<typeof udpPacket>[0];

function coalesce(packets: Buffer[]): Buffer[] {
  return coalesceBatch(batchOf(packets));
}

/** Datagrams of one flow with consecutive IP IDs: sizes[i] payload bytes each. */
function train(sizes: number[], base: Partial<UdpSpec> = {}, id0 = 700): Buffer[] {
  return sizes.map((n, i) => udpPacket({ ...base, id: (id0 + i) & 0xffff, payload: pattern(n, i + 3) }));
}

/** Clears DF (and fixes the IP header checksum). */
function noDf(p: Buffer): Buffer {
  const q = Buffer.from(p);
  q.writeUInt16BE(0, 6);
  q.writeUInt16BE(0, 10);
  q.writeUInt16BE(~fold(sum16(q, 0, 20)) & 0xffff, 10);
  return q;
}

/** What the kernel does with a USO write: cut it back into datagrams (the addon's segmenter). */
function resegment(write: Buffer, expected: number): Buffer[] {
  const batch = PacketBatch.forSlots(expected + 1, 2048, 16);
  const n = segmentInto(write, batch);
  return Array.from({ length: n }, (_, i) => Buffer.from(batch.view(i)));
}

function assertPlain(w: Buffer | undefined, pkt: Buffer): void {
  assert.ok(w);
  assert.deepEqual(w.subarray(0, 10), Buffer.alloc(10), 'zero vnet header');
  assert.deepEqual(w.subarray(10), pkt, 'packet unchanged');
}

void test('a train of one flow becomes one USO write that the kernel cuts back into the same datagrams', () => {
  const pkts = train([64, 64, 64, 64, 64, 20]);
  const writes = coalesce(pkts);
  assert.equal(writes.length, 1);
  const w = writes[0] as Buffer;
  assert.equal(w[0], 1, 'NEEDS_CSUM');
  assert.equal(w[1], 5, 'GSO_UDP_L4');
  assert.equal(w.readUInt16LE(2), 28, 'hdr_len');
  assert.equal(w.readUInt16LE(4), 64, 'gso_size = the first datagram payload');
  assert.equal(w.readUInt16LE(6), 20, 'csum_start');
  assert.equal(w.readUInt16LE(8), 6, 'csum_offset');
  const sup = w.subarray(10);
  const total = 28 + 5 * 64 + 20;
  assert.equal(sup.length, total);
  assert.equal(sup.readUInt16BE(2), total, 'IP total length');
  assert.equal(sup.readUInt16BE(4), 700, 'first IP id');
  assert.ok(ipChecksumOk(sup));
  assert.equal(sup.readUInt16BE(24), total - 20, 'UDP length of the whole');
  assert.equal(sup.readUInt16BE(26), fold(pseudoSum(sup, 17, total - 20)), 'pseudo-header sum in place');
  assert.deepEqual(
    sup.subarray(28),
    Buffer.concat(pkts.map((p) => p.subarray(28))),
    'payloads in order, untouched',
  );
  const back = resegment(w, pkts.length);
  assert.equal(back.length, pkts.length);
  for (let i = 0; i < pkts.length; i++) {
    const p = back[i] as Buffer;
    assert.ok(ipChecksumOk(p) && l4ChecksumOk(p), `datagram ${i} checksums`);
    assert.deepEqual(p, pkts[i], `datagram ${i} is exactly what was sent`);
  }
});

void test('the same ports, addresses, TTL, TOS and DF are needed; a change starts a new write', () => {
  for (const diff of [{ sport: 1 }, { dport: 2 }, { src: 0x0a000009 }, { dst: 0x0a000209 }]) {
    const [a, b] = [
      udpPacket({ id: 1, payload: pattern(100) }),
      udpPacket({ id: 2, payload: pattern(100), ...diff }),
    ];
    const w = coalesce([a, b]);
    assert.equal(w.length, 2, JSON.stringify(diff));
    assertPlain(w[0], a);
    assertPlain(w[1], b);
  }
  for (const [off, v] of [
    [1, 8],
    [8, 3],
  ] as const) {
    const a = udpPacket({ id: 1, payload: pattern(100) });
    const b = udpPacket({ id: 2, payload: pattern(100) });
    b[off] = v;
    b.writeUInt16BE(0, 10);
    b.writeUInt16BE(~fold(sum16(b, 0, 20)) & 0xffff, 10);
    const w = coalesce([a, b]);
    assert.equal(w.length, 2, `header byte ${off}`);
  }
  const a = udpPacket({ id: 1, payload: pattern(100) });
  const b = noDf(udpPacket({ id: 2, payload: pattern(100) }));
  assert.equal(coalesce([a, b]).length, 2, 'DF differs');
});

void test('sizes: a shorter datagram ends the train, a larger one never joins, empty ones stay alone', () => {
  const w = coalesce(train([300, 300, 100, 300]));
  assert.equal(w.length, 2);
  assert.equal(w[0]?.[1], 5);
  assert.equal(w[0]?.length, 10 + 28 + 700);
  assert.equal(w[1]?.[1], 0);
  const w2 = coalesce(train([100, 300]));
  assert.equal(w2.length, 2);
  assert.equal(w2[0]?.[1], 0);
  const empty = train([0, 0]);
  const w3 = coalesce(empty);
  assert.equal(w3.length, 2);
  assertPlain(w3[0], empty[0] as Buffer);
});

void test('without DF the IP IDs must be consecutive (they matter to reassembly); with DF they need not be', () => {
  const consecutive = train([200, 200, 200]).map(noDf);
  const w = coalesce(consecutive);
  assert.equal(w.length, 1, 'consecutive IDs merge');
  assert.deepEqual(resegment(w[0] as Buffer, 3), consecutive, 'and come back exactly');
  const gap = [
    noDf(udpPacket({ id: 5, payload: pattern(200) })),
    noDf(udpPacket({ id: 9, payload: pattern(200) })),
  ];
  assert.equal(coalesce(gap).length, 2, 'an ID gap without DF does not');
  // DF with the same ID on every datagram (Linux's unconnected UDP sockets send ID 0): merged;
  // the kernel's segments carry counted IDs, everything else is identical.
  const same = [0, 1, 2].map((i) => udpPacket({ id: 0, payload: pattern(200, i) }));
  const w2 = coalesce(same);
  assert.equal(w2.length, 1);
  const back = resegment(w2[0] as Buffer, 3);
  for (let i = 0; i < 3; i++) {
    const p = back[i] as Buffer;
    assert.equal(p.readUInt16BE(4), i);
    assert.ok(ipChecksumOk(p) && l4ChecksumOk(p));
    assert.deepEqual(p.subarray(12), (same[i] as Buffer).subarray(12));
  }
});

void test('fragments, bad lengths and truncated headers are never merged', () => {
  const frag = (p: Buffer, flags: number): Buffer => {
    const q = Buffer.from(p);
    q.writeUInt16BE(flags, 6);
    return q;
  };
  const a = train([200, 200, 200]);
  const mf = [frag(a[0] as Buffer, 0x2000), frag(a[1] as Buffer, 0x2000)];
  assert.equal(coalesce(mf).length, 2, 'more-fragments');
  const off = [frag(a[0] as Buffer, 0x4010), frag(a[1] as Buffer, 0x4010)];
  assert.equal(coalesce(off).length, 2, 'fragment offset');
  const badLen = train([200, 200]).map((p) => {
    const q = Buffer.from(p);
    q.writeUInt16BE(100, 24); // UDP length disagrees with the IP length
    return q;
  });
  assert.equal(coalesce(badLen).length, 2);
  const short = [Buffer.from(a[0] as Buffer).subarray(0, 24), Buffer.from(a[1] as Buffer).subarray(0, 24)];
  assert.equal(coalesce(short).length, 2);
});

void test('a write carries at most 64 datagrams and at most 65535 bytes', () => {
  const w = coalesce(train(Array.from({ length: 150 }, () => 64)));
  assert.deepEqual(
    w.map((x) => (x.length - 10 - 28) / 64),
    [64, 64, 22],
  );
  const big = coalesce(train(Array.from({ length: 60 }, () => 1400)));
  const n0 = ((big[0] as Buffer).length - 10 - 28) / 1400;
  assert.equal(n0, Math.floor((65535 - 28) / 1400));
  assert.equal(big.length, 2);
  assert.equal(
    (big[1] as Buffer).subarray(10).readUInt16BE(4),
    700 + n0,
    'the next write starts with the next ID',
  );
});

void test('a train interleaved with another flow coalesces only the adjacent runs', () => {
  const a = train([100, 100], { sport: 1000 });
  const b = train([100, 100], { sport: 2000 }, 900);
  const w = coalesce([a[0] as Buffer, a[1] as Buffer, b[0] as Buffer, b[1] as Buffer, a[0] as Buffer]);
  assert.deepEqual(
    w.map((x) => x[1]),
    [5, 5, 0],
  );
});
