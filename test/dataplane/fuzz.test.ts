/**
 * Garbage never throws and is always accounted for: every packet read from the TUN is
 * either sent or counted as a drop, and every datagram received is either written to the
 * TUN or counted as a drop.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Counter } from '../../src/dataplane/stats.ts';
import { buildIpv4, ip } from '../encap/packets.ts';
import { makePair, portFor, settle, waitFor } from './twins.ts';
import type { Kind } from './twins.ts';

/** Random bytes, sometimes starting like an IPv4 header so deeper checks are reached. */
const garbage = fc.oneof(
  fc.uint8Array({ maxLength: 300 }),
  fc.uint8Array({ minLength: 20, maxLength: 300 }).map((b) => {
    const c = Buffer.from(b);
    c[0] = 0x45;
    c.writeUInt16BE(c.length, 2);
    return c;
  }),
  fc
    .record({
      src: fc.integer({ min: 0, max: 0xffffffff }),
      dst: fc.integer({ min: 0, max: 0xffffffff }),
      ttl: fc.nat(255),
    })
    .map((r) => buildIpv4(r)),
);

for (const kind of ['udp', 'vxlan'] as Kind[]) {
  void test(`${kind}: random TUN packets and datagrams are all sent, delivered or counted`, async (t) => {
    const { net, a, b, close } = makePair(kind);
    t.after(close);
    const tunInputs = fc.sample(garbage, { numRuns: 600, seed: 42 });
    const wireInputs = fc.sample(garbage, { numRuns: 600, seed: 7 });
    for (const p of tunInputs) a.tun.inject(p);
    const port = portFor(kind);
    for (const d of wireInputs) {
      // Prefix a valid-looking vxlan header half of the time so inner checks run too.
      const withHdr =
        kind === 'vxlan' && d.length % 2 === 0
          ? Buffer.concat([
              Buffer.from('0800000000000700', 'hex'),
              b.mac,
              a.mac,
              Buffer.from('0800', 'hex'),
              d,
            ])
          : d;
      net.inject(withHdr, a.publicIp, port, b.publicIp, port);
    }
    const sa = a.fwd.stats;
    const sb = b.fwd.stats;
    const txAccounted = (): boolean =>
      sa.get(Counter.tunReadPackets) === tunInputs.filter((p) => p.length <= a.tun.mtu).length &&
      sa.get(Counter.tunReadPackets) === sa.get(Counter.sendPackets) + sa.totalDrops();
    await waitFor(txAccounted, 5000);
    const expectedRx = wireInputs.length + sa.get(Counter.sendPackets);
    await waitFor(() => sb.get(Counter.recvPackets) === expectedRx, 5000);
    await settle();
    const delivered = sb.get(Counter.tunWritePackets) - sb.get(Counter.icmpUnreachableSent);
    assert.equal(sb.get(Counter.recvPackets), delivered + sb.totalDrops());
    assert.ok(sb.totalDrops() >= wireInputs.length - 5, 'garbage was dropped');
    assert.ok(sa.totalDrops() > 0);
    // Valid packets still flow afterwards.
    const before = b.tun.written.length;
    a.tun.inject(buildIpv4({ src: ip('10.244.1.5'), dst: ip('10.244.2.9') }));
    await waitFor(() => b.tun.written.length === before + 1);
  });
}
