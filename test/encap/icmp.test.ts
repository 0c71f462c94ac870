import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildIcmpUnreachable, ICMP_UNREACHABLE_MAX } from '../../src/encap/icmp.ts';
import { ipv4Validate } from '../../src/encap/ipv4.ts';
import { buildIpv4, headerChecksumOk, ip, refChecksum } from './packets.ts';

const POD = ip('10.244.1.5');
const FAR = ip('10.99.0.1');
const TUN = ip('10.244.1.0');

void test('net unreachable: IP header to the sender, ICMP 3/0 quoting header + 8 bytes', () => {
  const payload = Buffer.from('0123456789abcdefXYZ');
  const bad = buildIpv4({ src: POD, dst: FAR, protocol: 6, payload, ttl: 17 });
  const out = Buffer.alloc(200, 0xaa);
  const n = buildIcmpUnreachable(bad, 0, bad.length, out, 50, TUN);
  assert.equal(n, 20 + 8 + 20 + 8);
  const r = out.subarray(50, 50 + n);
  assert.equal(ipv4Validate(out, 50, n), n);
  assert.ok(headerChecksumOk(r));
  assert.equal(r[0], 0x45);
  assert.equal(r[8], 64, 'TTL 64');
  assert.equal(r[9], 1, 'protocol ICMP');
  assert.equal(r.readUInt32BE(12), TUN);
  assert.equal(r.readUInt32BE(16), POD);
  const icmp = r.subarray(20);
  assert.equal(icmp[0], 3);
  assert.equal(icmp[1], 0);
  assert.equal(icmp.readUInt32BE(4), 0, 'unused field is zero');
  assert.equal(refChecksum(icmp), 0, 'ICMP checksum verifies');
  assert.deepEqual(icmp.subarray(8), bad.subarray(0, 28), 'offending header + 8 payload bytes');
  assert.equal(out[49], 0xaa, 'nothing written before the slot');
  assert.equal(out[50 + n], 0xaa, 'nothing written after the reply');
});

void test('quotes options and short payloads as they are', () => {
  const opts = buildIpv4({ src: POD, dst: FAR, options: new Uint8Array(40), payload: Buffer.from('abc') });
  const out = Buffer.alloc(ICMP_UNREACHABLE_MAX);
  const n = buildIcmpUnreachable(opts, 0, opts.length, out, 0, TUN);
  assert.equal(n, 20 + 8 + 60 + 3);
  assert.ok(n <= ICMP_UNREACHABLE_MAX);
  assert.deepEqual(out.subarray(28, n), opts);
  assert.equal(refChecksum(out.subarray(20, n)), 0);
});

void test('silent for ICMP input, non-first fragments, non-unicast source/destination, or no room', () => {
  const out = Buffer.alloc(200);
  const icmpIn = buildIpv4({ src: POD, dst: FAR, protocol: 1 });
  assert.equal(buildIcmpUnreachable(icmpIn, 0, icmpIn.length, out, 0, TUN), 0);
  const frag = buildIpv4({ src: POD, dst: FAR, fragOffset: 3 });
  assert.equal(buildIcmpUnreachable(frag, 0, frag.length, out, 0, TUN), 0);
  const first = buildIpv4({ src: POD, dst: FAR, moreFragments: true });
  assert.ok(buildIcmpUnreachable(first, 0, first.length, out, 0, TUN) > 0, 'first fragment gets a reply');
  const mcast = buildIpv4({ src: POD, dst: ip('239.1.2.3') });
  assert.equal(buildIcmpUnreachable(mcast, 0, mcast.length, out, 0, TUN), 0);
  const bcast = buildIpv4({ src: POD, dst: 0xffffffff });
  assert.equal(buildIcmpUnreachable(bcast, 0, bcast.length, out, 0, TUN), 0);
  const zero = buildIpv4({ src: 0, dst: FAR });
  assert.equal(buildIcmpUnreachable(zero, 0, zero.length, out, 0, TUN), 0);
  const ok = buildIpv4({ src: POD, dst: FAR });
  assert.equal(buildIcmpUnreachable(ok, 0, ok.length, out, 190, TUN), 0, 'no room in the slot');
});

void test('allowIcmpQueries: echo requests get a reply, ICMP errors never do', () => {
  const out = Buffer.alloc(200);
  const echo = buildIpv4({
    src: POD,
    dst: FAR,
    protocol: 1,
    payload: Buffer.from('0800f7ff00000000', 'hex'),
  });
  assert.equal(buildIcmpUnreachable(echo, 0, echo.length, out, 0, TUN), 0, 'off by default');
  const n = buildIcmpUnreachable(echo, 0, echo.length, out, 0, TUN, true);
  assert.equal(n, 20 + 8 + 28);
  assert.deepEqual(out.subarray(28, n), echo);
  for (const type of [3, 4, 5, 11, 12]) {
    const err = buildIpv4({
      src: POD,
      dst: FAR,
      protocol: 1,
      payload: Buffer.from([type, 0, 0, 0, 0, 0, 0, 0]),
    });
    assert.equal(buildIcmpUnreachable(err, 0, err.length, out, 0, TUN, true), 0, `ICMP type ${type}`);
  }
  const empty = buildIpv4({ src: POD, dst: FAR, protocol: 1, payload: Buffer.alloc(0) });
  assert.equal(buildIcmpUnreachable(empty, 0, empty.length, out, 0, TUN, true), 0, 'no ICMP header to read');
});
