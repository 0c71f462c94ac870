// NAT keepalives in the userspace forwarder (udp and vxlan), on the in-memory twins: sent to
// every peer's advertised endpoint at the configured interval, recognized and counted by the
// receiver, never written to the TUN and never counted as a drop of the data path; and a
// datagram from an address that is not a peer's advertised one neither reaches the TUN nor
// redirects our traffic to that peer (udp/vxlan are unauthenticated: no endpoint learning).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MemoryNetwork } from '../../src/conn/memory-conn.ts';
import { Forwarder, keepalivePayload, UDP_KEEPALIVE } from '../../src/dataplane/forwarder.ts';
import { DropReason } from '../../src/dataplane/stats.ts';
import { createEncap } from '../../src/encap/encap.ts';
import { cidrToKey, parseCidr } from '../../src/routing/ipv4.ts';
import { MemoryTun } from '../../src/tun/memory-tun.ts';
import { buildIpv4, ip } from '../encap/packets.ts';
import { ipv4Validate } from '../../src/encap/ipv4.ts';

type Kind = 'udp' | 'vxlan';
const VNI = 9;

function node(net: MemoryNetwork, kind: Kind, n: number, keepaliveIntervalMs: number) {
  const publicIp = ip(`198.18.0.${n}`);
  const subnet = parseCidr(`10.244.${n}.0/24`);
  const mac = Buffer.from([0x02, 0, 0, 0, 0, n]);
  const port = kind === 'udp' ? 8285 : 8472;
  const tun = new MemoryTun({ name: `t${n}`, mtu: 1400 });
  const conn = net.bind(publicIp, port);
  const encap =
    kind === 'udp' ? createEncap({ type: 'udp' }) : createEncap({ type: 'vxlan', vni: VNI, localMac: mac });
  const fwd = new Forwarder({
    tun,
    conn,
    encap,
    local: { subnet, tunAddr: subnet.addr, vtepMac: mac },
    port,
    keepaliveIntervalMs,
  });
  const asPeer = {
    id: n - 1,
    subnet,
    publicIp,
    port: 0,
    vtepMac: kind === 'vxlan' ? mac : undefined,
    leaseKey: cidrToKey(subnet),
  };
  return { publicIp, subnet, port, tun, conn, encap, fwd, asPeer, mac };
}

async function until(cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting for a condition');
    await new Promise((r) => setTimeout(r, 5));
  }
}

void test('the keepalive datagrams cannot be taken for packets of the wire format', () => {
  const udp = keepalivePayload(createEncap({ type: 'udp' }));
  assert.deepEqual(udp, UDP_KEEPALIVE);
  assert.equal(udp.length, 4, 'shorter than the 20-byte IPv4 header');
  assert.ok(ipv4Validate(udp, 0, udp.length) <= 0, 'not a valid IPv4 packet');
  assert.equal((udp[0] as number) >> 4, 0, 'version nibble 0');
  const vx = createEncap({ type: 'vxlan', vni: 0x123456, localMac: Buffer.alloc(6, 2) });
  const v = keepalivePayload(vx);
  assert.deepEqual([...v], [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
  assert.notEqual(vx.decapsulate(v, 0, v.length), DropReason.none, 'vxlan decap refuses a bare header');
});

for (const kind of ['udp', 'vxlan'] as const) {
  void test(`${kind}: keepalives go to every peer at the interval and are counted, not delivered`, async (t) => {
    const net = new MemoryNetwork();
    const a = node(net, kind, 1, 40);
    const b = node(net, kind, 2, 0);
    const c = node(net, kind, 3, 0);
    t.after(() => {
      for (const x of [a, b, c]) {
        x.fwd.stop();
        x.tun.close();
        x.conn.close();
      }
    });
    a.fwd.setPeers([b.asPeer, c.asPeer]);
    b.fwd.setPeers([a.asPeer]);
    c.fwd.setPeers([a.asPeer]);
    const started = Date.now();
    for (const x of [a, b, c]) x.fwd.start();

    await until(() => (b.fwd.snapshot().counters.keepaliveReceived ?? 0) >= 3);
    const elapsed = Date.now() - started;
    // 3 intervals of 40 ms have passed: not sent in a burst, not late by much.
    assert.ok(elapsed >= 3 * 40 - 5, `3 keepalives after ${elapsed} ms`);
    await until(() => (c.fwd.snapshot().counters.keepaliveReceived ?? 0) >= 3);
    a.fwd.stop();
    await new Promise((r) => setTimeout(r, 60));
    const sa = a.fwd.snapshot();
    const sb = b.fwd.snapshot();
    const sc = c.fwd.snapshot();
    assert.equal(sa.counters.keepaliveSendFailed, 0);
    assert.equal(
      sa.counters.keepaliveSent,
      (sb.counters.keepaliveReceived ?? 0) + (sc.counters.keepaliveReceived ?? 0),
      'every keepalive sent was received and counted',
    );
    assert.equal((sa.counters.keepaliveSent ?? 0) % 2, 0, 'one per peer per interval');
    for (const [x, s] of [
      [b, sb],
      [c, sc],
    ] as const) {
      assert.equal(x.tun.written.length, 0, 'nothing written to the TUN');
      assert.equal(x.fwd.stats.totalDrops(), 0, `no drop counted: ${JSON.stringify(s.drops)}`);
      assert.equal(s.counters.tunWritePackets, 0);
      assert.equal(s.counters.recvPackets, s.counters.keepaliveReceived, 'they were received');
    }
    // A stopped forwarder sends none.
    const sent = sa.counters.keepaliveSent;
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(a.fwd.snapshot().counters.keepaliveSent, sent);
    assert.equal(a.fwd.sendKeepalives(), 0);
  });

  void test(`${kind}: keepalives are off by default; data still flows next to them`, async (t) => {
    const net = new MemoryNetwork();
    const a = node(net, kind, 1, 0);
    const b = node(net, kind, 2, 30);
    t.after(() => {
      for (const x of [a, b]) {
        x.fwd.stop();
        x.tun.close();
        x.conn.close();
      }
    });
    a.fwd.setPeers([b.asPeer]);
    b.fwd.setPeers([a.asPeer]);
    a.fwd.start();
    b.fwd.start();
    assert.equal(a.fwd.keepaliveIntervalMs, 0);
    await until(() => (a.fwd.snapshot().counters.keepaliveReceived ?? 0) >= 2);
    a.tun.inject(buildIpv4({ src: ip('10.244.1.5'), dst: ip('10.244.2.7'), payload: Buffer.from('data') }));
    await until(() => b.tun.written.length === 1);
    assert.equal(a.fwd.snapshot().counters.keepaliveSent, 0, 'a sends none');
    assert.equal(a.fwd.stats.totalDrops() + b.fwd.stats.totalDrops(), 0);
    // An explicit send works even with the timer off.
    assert.equal(a.fwd.sendKeepalives(), 1);
    await until(() => (b.fwd.snapshot().counters.keepaliveReceived ?? 0) === 1);
  });

  void test(`${kind}: a datagram from an unknown source is dropped and never redirects traffic`, async (t) => {
    const net = new MemoryNetwork();
    const a = node(net, kind, 1, 0);
    const b = node(net, kind, 2, 0);
    const evil = ip('203.0.113.66');
    // Where b's traffic would go if a learned endpoints from sources.
    const trap = net.bind(evil, b.port);
    t.after(() => {
      for (const x of [a, b]) {
        x.fwd.stop();
        x.tun.close();
        x.conn.close();
      }
      trap.close();
    });
    a.fwd.setPeers([b.asPeer]);
    b.fwd.setPeers([a.asPeer]);
    a.fwd.start();
    b.fwd.start();

    // From b's subnet, correctly encapsulated for a, but sent from evil's address.
    const inner = buildIpv4({ src: ip('10.244.2.7'), dst: ip('10.244.1.5'), payload: Buffer.from('x') });
    const h = b.encap.headroom;
    const arena = Buffer.alloc(h + inner.length);
    inner.copy(arena, h);
    const start = b.encap.encapsulate(arena, h, inner.length, { vtepMac: a.mac });
    const dgram = arena.subarray(start);
    for (const port of [b.port, 40000]) net.inject(dgram, evil, port, a.publicIp, a.port);
    net.inject(keepalivePayload(b.encap), evil, b.port, a.publicIp, a.port);
    await until(() => a.fwd.stats.dropped(DropReason.unknownPeer) === 3);
    assert.equal(a.tun.written.length, 0, 'not delivered');
    assert.equal(
      a.fwd.snapshot().counters.keepaliveReceived,
      0,
      'an unknown keepalive is not counted as one',
    );

    // a's traffic to b's pods still goes to b's advertised address.
    a.tun.inject(buildIpv4({ src: ip('10.244.1.5'), dst: ip('10.244.2.7'), payload: Buffer.from('y') }));
    await until(() => b.tun.written.length === 1);
    const peer = a.fwd.snapshot().peers[0];
    assert.equal(peer?.publicIp, '198.18.0.2');
    assert.equal(a.fwd.lookup(ip('10.244.2.7'))?.publicIp, b.publicIp);
    assert.equal(trap.pending, 0, 'nothing was sent to the unknown source');
    assert.equal(net.lost, 0);
  });
}
