import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DropReason } from '../../src/encap/drop-reason.ts';
import { createEncap, UdpEncap, VxlanEncap, VXLAN_OVERHEAD } from '../../src/encap/encap.ts';
import { WeftError } from '../../src/util/errors.ts';
import { buildIpv4, ip } from './packets.ts';

const OUR_MAC = Buffer.from('02aabbccdd01', 'hex');
const PEER_MAC = Buffer.from('02aabbccdd02', 'hex');
const inner = buildIpv4({ src: ip('10.244.1.5'), dst: ip('10.244.2.9') });

/** The RFC 7348 frame for VNI 0x0a0b0c from PEER to US, written out byte by byte. */
function handFrame(): Buffer {
  const hdr = [
    // VXLAN: flags (I), 3 reserved, VNI (24 bits), 1 reserved
    0x08, 0x00, 0x00, 0x00, 0x0a, 0x0b, 0x0c, 0x00,
    // Ethernet: dst = our VTEP MAC, src = the peer's, type IPv4
    0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x01, 0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x02, 0x08, 0x00,
  ];
  return Buffer.concat([Buffer.from(hdr), inner]);
}

void test('vxlan encapsulate writes exactly the RFC 7348 frame into the headroom', () => {
  // The sender is the peer: its local MAC is PEER_MAC, sending to our MAC.
  const sender = new VxlanEncap(0x0a0b0c, PEER_MAC);
  assert.equal(sender.headroom, 22);
  const arena = Buffer.alloc(100 + inner.length, 0x77);
  const off = 60;
  inner.copy(arena, off);
  const start = sender.encapsulate(arena, off, inner.length, { vtepMac: OUR_MAC });
  assert.equal(start, off - VXLAN_OVERHEAD);
  assert.deepEqual(arena.subarray(start, off + inner.length), handFrame());
  assert.equal(arena[start - 1], 0x77, 'nothing written before the header');
});

void test('vxlan decapsulate accepts the hand-built frame; inner packet at +22', () => {
  const us = new VxlanEncap(0x0a0b0c, OUR_MAC);
  const f = handFrame();
  assert.equal(us.decapsulate(f, 0, f.length), DropReason.none);
  assert.deepEqual(f.subarray(us.headroom), inner);
});

void test('vxlan decap: each defect has its own reason', () => {
  const us = new VxlanEncap(0x0a0b0c, OUR_MAC);
  const mutate = (fn: (b: Buffer) => void): Buffer => {
    const b = handFrame();
    fn(b);
    return b;
  };
  const cases: [string, Buffer, number][] = [
    ['no I flag', mutate((b) => (b[0] = 0x00)), DropReason.badVxlanFlags],
    ['wrong VNI', mutate((b) => (b[6] = 0x0d)), DropReason.wrongVni],
    ['wrong MAC', mutate((b) => (b[13] = 0x09)), DropReason.wrongMac],
    ['broadcast MAC', mutate((b) => b.fill(0xff, 8, 14)), DropReason.wrongMac],
    ['ARP EtherType', mutate((b) => b.writeUInt16BE(0x0806, 20)), DropReason.wrongEtherType],
    ['VLAN tag', mutate((b) => b.writeUInt16BE(0x8100, 20)), DropReason.wrongEtherType],
  ];
  for (const [name, frame, reason] of cases)
    assert.equal(us.decapsulate(frame, 0, frame.length), reason, name);
  const f = handFrame();
  assert.equal(us.decapsulate(f, 0, 22), DropReason.truncated, 'header only');
  assert.equal(us.decapsulate(f, 0, 10), DropReason.truncated, 'cut inside Ethernet');
  // Reserved bits are ignored on receipt (RFC 7348 section 5).
  const reserved = mutate((b) => {
    b[0] = 0x0f;
    b[1] = 0xff;
    b[7] = 0xff;
  });
  assert.equal(us.decapsulate(reserved, 0, reserved.length), DropReason.none);
});

void test('vxlan encapsulate refuses a peer without a 6-byte MAC', () => {
  const us = new VxlanEncap(1, OUR_MAC);
  const arena = Buffer.alloc(200);
  assert.equal(us.encapsulate(arena, 50, 20, {}), -DropReason.noPeerMac);
  assert.equal(us.encapsulate(arena, 50, 20, { vtepMac: Buffer.alloc(5) }), -DropReason.noPeerMac);
});

void test('vxlan rejects bad configuration with WeftErrors', () => {
  assert.throws(
    () => new VxlanEncap(1 << 24, OUR_MAC),
    (e) => e instanceof WeftError && e.code === 'WEFT_CONFIG',
  );
  assert.throws(
    () => new VxlanEncap(1, Buffer.alloc(4)),
    (e) => e instanceof WeftError && e.code === 'WEFT_CONFIG',
  );
});

void test('udp encap adds nothing; empty datagrams are truncated', () => {
  const u = createEncap({ type: 'udp' });
  assert.ok(u instanceof UdpEncap);
  assert.equal(u.headroom, 0);
  const arena = Buffer.from(inner);
  assert.equal(u.encapsulate(arena, 0, inner.length, {}), 0);
  assert.deepEqual(arena, inner);
  assert.equal(u.decapsulate(arena, 0, arena.length), DropReason.none);
  assert.equal(u.decapsulate(arena, 0, 0), DropReason.truncated);
});

void test('property: vxlan round trip, and random datagrams never throw', () => {
  const us = new VxlanEncap(42, OUR_MAC);
  const peer = new VxlanEncap(42, PEER_MAC);
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 1, maxLength: 300 }), (payload) => {
      const arena = Buffer.alloc(400);
      arena.set(payload, 40);
      const s = peer.encapsulate(arena, 40, payload.length, { vtepMac: OUR_MAC });
      assert.equal(us.decapsulate(arena, s, payload.length + 22), DropReason.none);
      assert.deepEqual(arena.subarray(s + 22, s + 22 + payload.length), Buffer.from(payload));
    }),
    { numRuns: 300 },
  );
  const valid = new Set<number>(Object.values(DropReason));
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 120 }), (bytes) => {
      const b = Buffer.from(bytes);
      const r = us.decapsulate(b, 0, b.length);
      assert.ok(valid.has(r));
    }),
    { numRuns: 2000 },
  );
});
