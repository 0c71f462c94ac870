// Segmentation of TUN super-packets (TSO/USO) and checksum completion, driven through the
// addon's test hook with hand-built packets (no device). Checksums are verified with the
// independent JS implementation in fixtures/packets.ts.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PacketBatch } from '../../src/tun/batch.ts';
import { segmentInto } from './fixtures/hooks.ts';
import {
  TCP,
  TS_OPTION,
  ipChecksumOk,
  l4ChecksumOk,
  pattern,
  tcpPacket,
  udpPacket,
  vnetHdr,
} from './fixtures/packets.ts';

const segment = segmentInto;

void test('TCP super-packet is split into MTU-sized segments with every field fixed', () => {
  const gso = 1000;
  const payload = pattern(3500, 7);
  const seq0 = 0xfffff000; // crosses the 2^32 wrap
  const flags = TCP.CWR | TCP.ACK | TCP.PSH | TCP.FIN;
  const sup = tcpPacket({
    payload,
    seq: seq0,
    ack: 0x01020304,
    id: 0xfffe, // crosses the 16-bit wrap
    flags,
    window: 4321,
    ttl: 63,
    tos: 0x10,
    options: TS_OPTION,
    partialCsum: true,
  });
  const hdrLen = 20 + 20 + TS_OPTION.length;
  const input = Buffer.concat([
    vnetHdr({ flags: 1, gsoType: 1, hdrLen, gsoSize: gso, csumStart: 20, csumOffset: 16 }),
    sup,
  ]);
  const batch = PacketBatch.forSlots(16, 2048, 64);
  batch.arena.fill(0xee);
  const n = segment(input, batch);
  assert.equal(n, 4);
  let reassembled = Buffer.alloc(0);
  for (let i = 0; i < n; i++) {
    assert.equal(batch.offset[i], batch.slotStart(i), `segment ${i} lives in slot ${i}`);
    const p = batch.view(i);
    const chunk = i < 3 ? gso : 500;
    assert.equal(p.length, hdrLen + chunk);
    assert.equal(p[0], 0x45);
    assert.equal(p[1], 0x10, 'TOS kept');
    assert.equal(p.readUInt16BE(2), hdrLen + chunk, 'IP total length');
    assert.equal(p.readUInt16BE(4), (0xfffe + i) & 0xffff, 'IP id + i');
    assert.equal(p.readUInt16BE(6), 0x4000, 'DF kept');
    assert.equal(p[8], 63, 'TTL kept');
    assert.equal(p[9], 6);
    assert.equal(p.readUInt32BE(12), 0x0a000001);
    assert.equal(p.readUInt32BE(16), 0x0a000102);
    assert.ok(ipChecksumOk(p), `IP header checksum of segment ${i}`);
    assert.equal(p.readUInt16BE(20), 40000);
    assert.equal(p.readUInt16BE(22), 5201);
    assert.equal(p.readUInt32BE(24), (seq0 + i * gso) >>> 0, 'seq + i*gso_size');
    assert.equal(p.readUInt32BE(28), 0x01020304, 'ack kept');
    assert.equal(p[32], 0x80, 'data offset kept');
    const f = p[33] as number;
    assert.equal((f & TCP.CWR) !== 0, i === 0, 'CWR only on the first');
    assert.equal((f & TCP.PSH) !== 0, i === 3, 'PSH only on the last');
    assert.equal((f & TCP.FIN) !== 0, i === 3, 'FIN only on the last');
    assert.ok((f & TCP.ACK) !== 0);
    assert.equal(p.readUInt16BE(34), 4321, 'window kept');
    assert.deepEqual(p.subarray(40, hdrLen), Buffer.from(TS_OPTION), 'options kept');
    assert.ok(l4ChecksumOk(p), `TCP checksum of segment ${i}`);
    reassembled = Buffer.concat([reassembled, p.subarray(hdrLen)]);
  }
  assert.deepEqual(reassembled, payload, 'payload split without loss or reordering');
  // Nothing written past the last slot used.
  assert.equal(batch.arena[batch.slotStart(4)], 0xee);
});

void test('segmentation recomputes the header length instead of trusting hdr_len', () => {
  const sup = tcpPacket({ payload: pattern(2000), partialCsum: true });
  const input = Buffer.concat([
    vnetHdr({ flags: 1, gsoType: 1, hdrLen: 99, gsoSize: 1448, csumStart: 20, csumOffset: 16 }),
    sup,
  ]);
  const batch = PacketBatch.forSlots(8, 2048, 0);
  assert.equal(segment(input, batch), 2);
  assert.equal(batch.length[0], 40 + 1448);
  assert.equal(batch.length[1], 40 + 552);
  assert.ok(l4ChecksumOk(batch.view(0)) && l4ChecksumOk(batch.view(1)));
});

void test('UDP (USO) super-packet is split into datagrams with length and checksum fixed', () => {
  const payload = pattern(2500, 3);
  const sup = udpPacket({ payload, partialCsum: true, id: 10 });
  const input = Buffer.concat([
    vnetHdr({ flags: 1, gsoType: 5, hdrLen: 28, gsoSize: 1200, csumStart: 20, csumOffset: 6 }),
    sup,
  ]);
  const batch = PacketBatch.forSlots(8, 2048, 32);
  const n = segment(input, batch);
  assert.equal(n, 3);
  const sizes = [1200, 1200, 100];
  let all = Buffer.alloc(0);
  for (let i = 0; i < n; i++) {
    const p = batch.view(i);
    assert.equal(p.length, 28 + (sizes[i] as number));
    assert.equal(p.readUInt16BE(2), p.length, 'IP total length');
    assert.equal(p.readUInt16BE(4), 10 + i, 'IP id + i');
    assert.ok(ipChecksumOk(p));
    assert.equal(p.readUInt16BE(24), 8 + (sizes[i] as number), 'UDP length');
    assert.equal(p.readUInt16BE(20), 9999);
    assert.equal(p.readUInt16BE(22), 8472);
    assert.ok(l4ChecksumOk(p), `UDP checksum of datagram ${i}`);
    all = Buffer.concat([all, p.subarray(28)]);
  }
  assert.deepEqual(all, payload);
});

void test('NEEDS_CSUM without GSO: the checksum is completed (TCP and UDP)', () => {
  const batch = PacketBatch.forSlots(4, 2048, 16);
  const tcp = tcpPacket({ payload: pattern(333), partialCsum: true });
  assert.ok(!l4ChecksumOk(tcp), 'the input really carries only the pseudo-header sum');
  assert.equal(segment(Buffer.concat([vnetHdr({ flags: 1, csumStart: 20, csumOffset: 16 }), tcp]), batch), 1);
  const out = batch.view(0);
  assert.ok(l4ChecksumOk(out));
  assert.deepEqual(out.subarray(0, 36), tcp.subarray(0, 36), 'only the checksum changed');
  assert.deepEqual(out.subarray(38), tcp.subarray(38));

  const udp = udpPacket({ payload: pattern(77), partialCsum: true });
  assert.equal(segment(Buffer.concat([vnetHdr({ flags: 1, csumStart: 20, csumOffset: 6 }), udp]), batch), 1);
  assert.ok(l4ChecksumOk(batch.view(0)));
});

void test('plain and non-IPv4 packets pass through unchanged', () => {
  const batch = PacketBatch.forSlots(4, 2048, 16);
  const tcp = tcpPacket({ payload: pattern(100) });
  assert.equal(segment(Buffer.concat([vnetHdr({}), tcp]), batch), 1);
  assert.deepEqual(batch.view(0), tcp);
  const v6 = Buffer.alloc(60);
  v6[0] = 0x60;
  v6.writeUInt16BE(20, 4);
  v6[6] = 59;
  assert.equal(segment(Buffer.concat([vnetHdr({}), v6]), batch), 1);
  assert.deepEqual(batch.view(0), v6);
});

void test('super-packets that cannot be segmented here are dropped, not passed up', () => {
  const batch = PacketBatch.forSlots(64, 2048, 0);
  // IPv6 TSO (gso_type TCPV6): not handled by the IPv4 data path.
  const v6 = Buffer.alloc(3000);
  v6[0] = 0x60;
  assert.equal(
    segment(
      Buffer.concat([vnetHdr({ flags: 1, gsoType: 4, gsoSize: 1000, csumStart: 40, csumOffset: 16 }), v6]),
      batch,
    ),
    0,
  );
  // TSO header on a UDP packet: malformed.
  const udp = udpPacket({ payload: pattern(3000) });
  assert.equal(segment(Buffer.concat([vnetHdr({ flags: 1, gsoType: 1, gsoSize: 1000 }), udp]), batch), 0);
});

void test('a batch too small for the super-packet is reported', () => {
  const batch = PacketBatch.forSlots(2, 2048, 0);
  const sup = tcpPacket({ payload: pattern(5000), partialCsum: true });
  assert.throws(
    () =>
      segment(
        Buffer.concat([vnetHdr({ flags: 1, gsoType: 1, gsoSize: 1000, csumStart: 20, csumOffset: 16 }), sup]),
        batch,
      ),
    /batch too small/,
  );
});
