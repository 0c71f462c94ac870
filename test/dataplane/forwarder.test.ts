import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DropReason } from '../../src/dataplane/stats.ts';
import { Counter } from '../../src/dataplane/stats.ts';
import { VxlanEncap } from '../../src/encap/encap.ts';
import { BusyPollReady } from '../../src/dataplane/busy-poll.ts';
import { buildIpv4, headerChecksumOk, ip, refChecksum } from '../encap/packets.ts';
import { makePair, portFor, settle, VNI, waitFor } from './twins.ts';
import type { Kind, Node } from './twins.ts';

const POD_A = ip('10.244.1.5');
const POD_B = ip('10.244.2.9');

/** Builds the datagram node `from` would send for `inner` (using its encap), as bytes. */
function datagram(from: Node, inner: Buffer, toMac: Buffer, encap = from.encap): Buffer {
  const h = encap.headroom;
  const arena = Buffer.alloc(h + inner.length);
  inner.copy(arena, h);
  const s = encap.encapsulate(arena, h, inner.length, { vtepMac: toMac });
  return arena.subarray(s);
}

for (const kind of ['udp', 'vxlan'] as Kind[]) {
  void test(`${kind}: a pod packet crosses A -> B with TTL - 2 and a valid checksum, and back`, async (t) => {
    const { a, b, close } = makePair(kind);
    t.after(close);
    const payload = Buffer.from('ping from pod A');
    const p = buildIpv4({ src: POD_A, dst: POD_B, ttl: 64, payload, protocol: 6 });
    a.tun.inject(p);
    await waitFor(() => b.tun.written.length === 1);
    const got = b.tun.written[0] as Buffer;
    assert.equal(got.length, p.length);
    assert.equal(got[8], 62, 'TTL decremented on encap and decap');
    assert.ok(headerChecksumOk(got), 'header checksum valid');
    assert.deepEqual(got.subarray(12), p.subarray(12), 'addresses and payload unchanged');
    assert.deepEqual(got.subarray(0, 8), p.subarray(0, 8));

    b.tun.inject(buildIpv4({ src: POD_B, dst: POD_A, ttl: 64 }));
    await waitFor(() => a.tun.written.length === 1);
    assert.equal((a.tun.written[0] as Buffer)[8], 62);

    const sa = a.fwd.snapshot();
    assert.equal(sa.counters.sendPackets, 1);
    assert.equal(sa.counters.tunWritePackets, 1);
    assert.equal(sa.encap, kind);
    assert.equal(sa.routes, 1);
    const peerB = sa.peers[0];
    assert.equal(peerB?.leaseKey, '10.244.2.0-24');
    assert.equal(peerB?.txPackets, 1);
    assert.equal(peerB?.txBytes, p.length + a.encap.headroom);
    assert.equal(peerB?.rxPackets, 1);
    assert.equal(a.fwd.stats.totalDrops(), 0);
    assert.equal(b.fwd.stats.totalDrops(), 0);
  });

  void test(`${kind}: a burst of 3000 packets arrives complete and in order, in batches`, async (t) => {
    const { a, b, close } = makePair(kind);
    t.after(close);
    const N = 3000;
    for (let i = 0; i < N; i++) {
      const payload = Buffer.alloc(100 + (i % 1000));
      payload.writeUInt32BE(i, 0);
      a.tun.inject(buildIpv4({ src: POD_A, dst: ip(`10.244.2.${1 + (i % 250)}`), payload }));
    }
    await waitFor(() => b.tun.written.length === N, 10000);
    for (let i = 0; i < N; i++) {
      const g = b.tun.written[i] as Buffer;
      assert.equal(g.readUInt32BE(20), i);
      assert.equal(g.length, 120 + (i % 1000));
    }
    const s = a.fwd.stats;
    assert.equal(s.get(Counter.tunReadPackets), N);
    assert.ok(s.get(Counter.tunReadBatches) < N / 10, `batched: ${s.get(Counter.tunReadBatches)} reads`);
    assert.ok((s.tunReadSizes[6] as number) > 0, 'some reads filled 64 slots');
    assert.ok(b.fwd.stats.get(Counter.recvBatches) < N / 2);
  });

  void test(`${kind}: no route -> ICMP net unreachable into A's TUN, but not for ICMP or later fragments`, async (t) => {
    const { a, b, close } = makePair(kind);
    t.after(close);
    const far = ip('10.99.0.1');
    const offending = buildIpv4({ src: POD_A, dst: far, protocol: 17, ttl: 30 });
    a.tun.inject(buildIpv4({ src: POD_A, dst: far, protocol: 1 }));
    a.tun.inject(buildIpv4({ src: POD_A, dst: far, fragOffset: 100 }));
    a.tun.inject(offending);
    a.tun.inject(buildIpv4({ src: POD_A, dst: POD_B }));
    await waitFor(() => b.tun.written.length === 1);
    await waitFor(() => a.tun.written.length === 1);
    await settle();
    assert.equal(a.tun.written.length, 1, 'exactly one ICMP reply');
    const r = a.tun.written[0] as Buffer;
    assert.ok(headerChecksumOk(r));
    assert.equal(r[9], 1);
    assert.equal(r.readUInt32BE(12), a.tunAddr, 'from the TUN address');
    assert.equal(r.readUInt32BE(16), POD_A, 'to the sender');
    assert.equal(r[20], 3);
    assert.equal(r[21], 0);
    assert.equal(refChecksum(r.subarray(20)), 0);
    assert.deepEqual(r.subarray(28), offending.subarray(0, 28), 'quotes the packet as it arrived');
    assert.equal(a.fwd.stats.dropped(DropReason.noRoute), 3);
    assert.equal(a.fwd.stats.get(Counter.icmpUnreachableSent), 1);
    assert.equal(a.fwd.stats.get(Counter.sendPackets), 1);
  });

  void test(`${kind}: TTL 1 dies at A, TTL 2 dies at B; invalid TUN input is counted`, async (t) => {
    const { a, b, close } = makePair(kind);
    t.after(close);
    a.tun.inject(buildIpv4({ src: POD_A, dst: POD_B, ttl: 1 }));
    a.tun.inject(buildIpv4({ src: POD_A, dst: POD_B, ttl: 2 }));
    a.tun.inject(Buffer.from('6000000000000000', 'hex'));
    a.tun.inject(Buffer.from([0x45, 0, 0]));
    a.tun.inject(buildIpv4({ src: POD_A, dst: POD_B, ttl: 3 }));
    await waitFor(() => b.tun.written.length === 1);
    await settle();
    assert.equal((b.tun.written[0] as Buffer)[8], 1);
    assert.equal(a.fwd.stats.dropped(DropReason.ttlExpired), 1);
    assert.equal(a.fwd.stats.dropped(DropReason.notIpv4), 1);
    assert.equal(a.fwd.stats.dropped(DropReason.malformed), 1);
    assert.equal(b.fwd.stats.dropped(DropReason.ttlExpired), 1);
    assert.equal(b.tun.written.length, 1);
  });

  void test(`${kind}: bad datagrams are dropped by reason while valid ones around them flow`, async (t) => {
    const { net, a, b, close } = makePair(kind);
    t.after(close);
    const port = portFor(kind);
    const good = (i: number): Buffer => datagram(a, buildIpv4({ src: POD_A, dst: POD_B, id: i }), b.mac);
    const send = (d: Uint8Array, src = a.publicIp, sport = port): void => {
      net.inject(d, src, sport, b.publicIp, port);
    };
    const expected = new Map<number, number>();
    const expect = (r: number): void => {
      expected.set(r, (expected.get(r) ?? 0) + 1);
    };
    let goodCount = 0;
    const sendGood = (): void => {
      send(good(goodCount++));
    };

    sendGood();
    send(good(900), ip('198.18.0.99'));
    expect(DropReason.unknownPeer);
    sendGood();
    send(datagram(a, buildIpv4({ src: ip('10.244.7.7'), dst: POD_B }), b.mac));
    expect(DropReason.spoofedSource);
    sendGood();
    send(datagram(a, buildIpv4({ src: POD_A, dst: ip('10.244.1.77') }), b.mac));
    expect(DropReason.notForUs);
    sendGood();
    send(datagram(a, Buffer.from('6000000000140640', 'hex'), b.mac));
    expect(DropReason.notIpv4);
    sendGood();
    const cut = good(901);
    send(cut.subarray(0, cut.length - 30));
    expect(DropReason.malformed);
    sendGood();
    if (kind === 'udp') {
      send(Buffer.alloc(0));
      expect(DropReason.truncated);
      send(good(902), a.publicIp, 40000);
      expect(DropReason.unknownPeer);
    } else {
      send(good(903).subarray(0, 12));
      expect(DropReason.truncated);
      const otherVni = new VxlanEncap(VNI + 1, a.mac);
      send(datagram(a, buildIpv4({ src: POD_A, dst: POD_B }), b.mac, otherVni));
      expect(DropReason.wrongVni);
      send(datagram(a, buildIpv4({ src: POD_A, dst: POD_B }), Buffer.from('02000000ffff', 'hex')));
      expect(DropReason.wrongMac);
      const arp = Buffer.from(good(904));
      arp.writeUInt16BE(0x0806, 20);
      send(arp);
      expect(DropReason.wrongEtherType);
      const noFlag = Buffer.from(good(905));
      noFlag[0] = 0;
      send(noFlag);
      expect(DropReason.badVxlanFlags);
      // vxlan senders vary the source port per flow: accepted.
      send(good(goodCount++), a.publicIp, 51234);
    }
    sendGood();
    // The peer's public IP is an acceptable inner source (host-originated traffic).
    send(datagram(a, buildIpv4({ src: a.publicIp, dst: b.tunAddr }), b.mac));
    goodCount++;

    await waitFor(() => b.tun.written.length === goodCount);
    await settle();
    assert.equal(b.tun.written.length, goodCount);
    for (const w of b.tun.written) assert.ok(headerChecksumOk(w));
    const s = b.fwd.stats;
    let total = 0;
    for (const [reason, n] of expected) {
      assert.equal(s.dropped(reason as DropReason), n, `reason ${reason}`);
      total += n;
    }
    assert.equal(s.totalDrops(), total, 'no other drops');
    assert.equal(b.fwd.snapshot().peers[0]?.rxPackets, goodCount);
  });

  void test(`${kind}: removing and re-adding peers changes routing; partial writes are counted`, async (t) => {
    const { a, b, close } = makePair(kind);
    t.after(close);
    assert.equal(a.fwd.removePeer(b.asPeer.id), true);
    assert.equal(a.fwd.removePeer(b.asPeer.id), false);
    a.tun.inject(buildIpv4({ src: POD_A, dst: POD_B }));
    await waitFor(() => a.tun.written.length === 1);
    assert.equal(a.fwd.stats.dropped(DropReason.noRoute), 1);
    // B no longer accepts A's datagrams when A is removed there either.
    b.fwd.setPeers([]);
    a.fwd.addPeer(b.asPeer);
    a.tun.inject(buildIpv4({ src: POD_A, dst: POD_B }));
    await waitFor(() => b.fwd.stats.dropped(DropReason.unknownPeer) === 1);
    b.fwd.addPeer(a.asPeer);
    a.conn.sendLimit = 2;
    for (let i = 0; i < 5; i++) a.tun.inject(buildIpv4({ src: POD_A, dst: POD_B }));
    b.tun.writeLimit = 1;
    await waitFor(() => b.tun.written.length === 1 && a.fwd.stats.dropped(DropReason.send) === 3);
    await settle();
    assert.equal(b.fwd.stats.dropped(DropReason.tunWrite), 1);
    assert.equal(b.tun.written.length, 1);
  });
}

void test('stop() stops forwarding; start() resumes with what queued meanwhile', async (t) => {
  const { a, b, close } = makePair('udp');
  t.after(close);
  a.fwd.stop();
  assert.equal(a.fwd.running, false);
  a.tun.inject(buildIpv4({ src: POD_A, dst: POD_B }));
  await settle();
  assert.equal(b.tun.written.length, 0);
  a.fwd.start();
  await waitFor(() => b.tun.written.length === 1);
});

void test('vxlan: a peer without a VTEP MAC is dropped as noPeerMac', async (t) => {
  const { a, b, close } = makePair('vxlan');
  t.after(close);
  a.fwd.addPeer({ ...b.asPeer, vtepMac: undefined });
  a.tun.inject(buildIpv4({ src: POD_A, dst: POD_B }));
  await waitFor(() => a.fwd.stats.dropped(DropReason.noPeerMac) === 1);
  assert.equal(a.fwd.stats.get(Counter.sendPackets), 0);
});

void test('a peer replacing another on the same subnet takes over its route and sender address', async (t) => {
  const { a, b, close } = makePair('udp');
  t.after(close);
  const moved = { ...b.asPeer, id: 5, publicIp: ip('198.18.0.50'), leaseKey: 'moved' };
  a.fwd.addPeer(moved);
  assert.equal(a.fwd.lookup(POD_B)?.id, 5);
  assert.equal(a.fwd.peers().length, 1);
  a.tun.inject(buildIpv4({ src: POD_A, dst: POD_B }));
  await waitFor(() => a.fwd.stats.get(Counter.sendPackets) === 1);
  assert.equal(a.fwd.snapshot().peers[0]?.txPackets, 1);
  assert.equal(b.tun.written.length, 0, 'old address no longer used');
});

void test('small batches and one batch per turn: both directions share the loop and everything arrives', async (t) => {
  const { a, b, close } = makePair('udp', { tunBatchSize: 4, recvMessages: 1, maxBatchesPerTurn: 1 });
  t.after(close);
  const N = 400;
  for (let i = 0; i < N; i++) {
    a.tun.inject(buildIpv4({ src: POD_A, dst: POD_B, id: i }));
    b.tun.inject(buildIpv4({ src: POD_B, dst: POD_A, id: i }));
  }
  await waitFor(() => b.tun.written.length === N && a.tun.written.length === N, 10000);
  for (let i = 0; i < N; i++) assert.equal((b.tun.written[i] as Buffer).readUInt16BE(4), i, 'in order');
  assert.ok(a.fwd.stats.get(Counter.tunTurnYields) > 0, 'turns were bounded');
  assert.equal(a.fwd.stats.get(Counter.tunReadBatches), N / 4);
  assert.equal(a.fwd.stats.totalDrops() + b.fwd.stats.totalDrops(), 0);
});

void test('icmpForIcmpQueries: a ping to an unrouted address gets net unreachable', async (t) => {
  const { a, b, close } = makePair('udp', { icmpForIcmpQueries: true });
  t.after(close);
  const echo = buildIpv4({
    src: POD_A,
    dst: ip('10.99.0.1'),
    protocol: 1,
    payload: Buffer.from('0800f7ff00000000', 'hex'),
  });
  const errorIn = buildIpv4({
    src: POD_A,
    dst: ip('10.99.0.1'),
    protocol: 1,
    payload: Buffer.from('0300fcff00000000', 'hex'),
  });
  a.tun.inject(errorIn);
  a.tun.inject(echo);
  a.tun.inject(buildIpv4({ src: POD_A, dst: POD_B }));
  await waitFor(() => b.tun.written.length === 1 && a.tun.written.length === 1);
  await settle();
  assert.equal(a.tun.written.length, 1, 'only the echo request is answered');
  assert.deepEqual((a.tun.written[0] as Buffer).subarray(28), echo);
  assert.equal(a.fwd.stats.dropped(DropReason.noRoute), 2);
});

/**
 * A busy poller whose clock moves only when the test moves `now`; wait(0) only reads the
 * clock (as the native poller's does), every other call is a window answered by `window`.
 */
function manualPoller(start: number, window: (maxUs: number) => number) {
  const p = {
    now: start,
    windows: 0,
    clock: new Float64Array(2),
    wait(maxUs: number): number {
      p.clock[0] = p.now;
      p.clock[1] = 0;
      if (maxUs === 0) return 0;
      p.windows++;
      return window(maxUs);
    },
  };
  return p;
}

void test('busy poll: windows after small turns only, traffic found in a window is forwarded, empty windows stay within budget', async (t) => {
  const A_TO_B = (i: number): Buffer =>
    buildIpv4({ src: POD_A, dst: POD_B, payload: Buffer.from(`bp ${i}`), protocol: 17 });
  let mode: 'miss' | 'hit-once' = 'miss';
  let injectIn: ((p: Buffer) => void) | undefined;
  const poller = manualPoller(1000, (maxUs) => {
    assert.equal(maxUs, 100, 'each window is --busy-poll-us long');
    if (mode === 'hit-once' && injectIn) {
      const inject = injectIn;
      injectIn = undefined;
      inject(A_TO_B(999));
      return BusyPollReady.tun;
    }
    return 0;
  });
  const { a, b, close } = makePair('udp', { busyPollUs: 100, busyPoller: poller });
  t.after(close);
  const c = a.fwd.stats;

  // One packet: a small turn, then one empty window.
  a.tun.inject(A_TO_B(0));
  await waitFor(() => b.tun.written.length === 1);
  await settle();
  assert.ok(c.get(Counter.busyPollMisses) >= 1, 'an empty window after a small turn');
  assert.equal(c.get(Counter.busyPollHits), 0);

  // 40 packets in one turn: bulk, no window on A.
  const before = poller.windows;
  const missesBefore = c.get(Counter.busyPollMisses);
  for (let i = 1; i <= 40; i++) a.tun.inject(A_TO_B(i));
  await waitFor(() => b.tun.written.length === 41);
  await settle();
  assert.equal(c.get(Counter.busyPollMisses), missesBefore, 'no window after a 40-packet turn on A');
  assert.ok(poller.windows >= before, 'B may poll after its own small turns');

  // A packet that arrives during a window is forwarded from inside it (once the quiet
  // period after the bulk turn is over).
  poller.now += 10;
  mode = 'hit-once';
  injectIn = (p) => a.tun.inject(p);
  a.tun.inject(A_TO_B(100));
  await waitFor(() => b.tun.written.length === 43);
  assert.equal(c.get(Counter.busyPollHits), 1, 'the window found the packet');
  assert.equal((b.tun.written[42] as Buffer).subarray(20).toString(), 'bp 999');
});

void test('busy poll: no windows while bulk traffic flows in either direction, back once it stops', async (t) => {
  const small = (i: number): Buffer =>
    buildIpv4({ src: POD_A, dst: POD_B, payload: Buffer.from(`q ${i}`), protocol: 17 });
  const back = (i: number): Buffer =>
    buildIpv4({ src: POD_B, dst: POD_A, payload: Buffer.from(`r ${i}`), protocol: 17 });
  let onWindow: (() => number) | undefined;
  const poller = manualPoller(5000, () => {
    const f = onWindow;
    onWindow = undefined;
    return f ? f() : 0;
  });
  const { a, b, close } = makePair('udp', { busyPollUs: 100, busyPoller: poller });
  t.after(close);
  const c = a.fwd.stats;
  let toB = 0;
  let toA = 0;
  const sendSmall = async (): Promise<void> => {
    a.tun.inject(small(toB++));
    await waitFor(() => b.tun.written.length === toB);
    await settle();
  };

  // Bulk arrives at A from the network (B's TUN -> A's TUN: a stream towards A's pod).
  for (let i = 0; i < 40; i++) b.tun.inject(back(toA++));
  await waitFor(() => a.tun.written.length === toA);
  await settle();
  // A's pod answers with a small packet (an ACK) 1 ms later: no window on A.
  poller.now += 1;
  await sendSmall();
  assert.equal(c.get(Counter.busyPollBulk), 1, 'the small turn ran no window: bulk is flowing');
  assert.equal(c.get(Counter.busyPollMisses) + c.get(Counter.busyPollHits), 0);

  // Bulk from A's own TUN counts the same way.
  poller.now += 5;
  for (let i = 0; i < 40; i++) a.tun.inject(small(toB++));
  await waitFor(() => b.tun.written.length === toB);
  await settle();
  poller.now += 1.5;
  await sendSmall();
  assert.equal(c.get(Counter.busyPollBulk), 2);

  // 2 ms after the last bulk turn the windows are back.
  poller.now += 1;
  const w = poller.windows;
  const missesBefore = c.get(Counter.busyPollMisses);
  await sendSmall();
  assert.equal(c.get(Counter.busyPollBulk), 2);
  assert.ok(c.get(Counter.busyPollMisses) > missesBefore, 'a window ran after the small turn');
  assert.ok(poller.windows > w);

  // A window that finds bulk traffic ends the session and starts a quiet period too.
  poller.now += 10;
  const hitsBefore = c.get(Counter.busyPollHits);
  onWindow = () => {
    for (let i = 0; i < 40; i++) a.tun.inject(small(toB++));
    return BusyPollReady.tun;
  };
  await sendSmall();
  assert.equal(c.get(Counter.busyPollHits), hitsBefore + 1, 'the window found the 40 packets');
  const bulkBefore = c.get(Counter.busyPollBulk);
  const missesBefore2 = c.get(Counter.busyPollMisses);
  poller.now += 0.5;
  await sendSmall();
  assert.ok(c.get(Counter.busyPollBulk) > bulkBefore, 'no window 0.5 ms after a window found bulk');
  assert.equal(c.get(Counter.busyPollMisses), missesBefore2);
});

void test('busy poll: empty windows use at most 10% of wall time, then turns are skipped', async (t) => {
  const A_TO_B = buildIpv4({ src: POD_A, dst: POD_B, payload: Buffer.from('budget'), protocol: 17 });
  // Like the native poller: spins the window, then writes its clock (end time, time taken).
  const clock = new Float64Array(2);
  const poller = {
    clock,
    wait(maxUs: number): number {
      const t0 = performance.now();
      const end = t0 + maxUs / 1000;
      while (performance.now() < end);
      clock[0] = performance.now();
      clock[1] = clock[0] - t0;
      return 0;
    },
  };
  // 10 ms windows: ten empty ones fill the budget of 100 ms per second.
  const { a, b, close } = makePair('udp', { busyPollUs: 10_000, busyPoller: poller });
  t.after(close);
  const TURNS = 30;
  const started = performance.now();
  for (let i = 0; i < TURNS; i++) {
    a.tun.inject(A_TO_B);
    await waitFor(() => b.tun.written.length === i + 1);
  }
  // The budget is per one-second epoch; a slow run may span more than one.
  const epochs = Math.floor((performance.now() - started) / 1000) + 1;
  const c = a.fwd.stats;
  const misses = c.get(Counter.busyPollMisses);
  const skipped = c.get(Counter.busyPollSkipped);
  assert.equal(misses + skipped, TURNS, 'every small turn either polled or was skipped');
  assert.ok(
    misses <= 11 * epochs,
    `at most ~100 ms of empty windows per second (${misses} x 10 ms in ${epochs} epoch(s))`,
  );
  assert.ok(skipped >= TURNS - 11 * epochs, `the rest skipped (${skipped})`);
  assert.ok(epochs <= 2, `30 turns took ${epochs} s; the budget would not have been tested`);
  assert.equal(b.tun.written.length, TURNS, 'every packet was forwarded all the same');
});
