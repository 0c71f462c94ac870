// NativeConn on loopback: batched sends (UDP_SEGMENT for same-peer same-size runs),
// batched receives (UDP_GRO messages split into per-datagram descriptors without copying),
// sender address/port, and the same without offloads.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { openConn } from '../../src/conn/native-conn.ts';
import type { NativeConn } from '../../src/conn/native-conn.ts';
import { PacketBatch } from '../../src/tun/batch.ts';
import { pattern } from './fixtures/packets.ts';

const LO = 0x7f000001;

async function recvAll(conn: NativeConn, want: number, batch: PacketBatch): Promise<Buffer[]> {
  const got: Buffer[] = [];
  const until = Date.now() + 5000;
  while (got.length < want && Date.now() < until) {
    const n = conn.recv(batch);
    for (let i = 0; i < n; i++) {
      assert.equal(batch.addr[i], LO);
      got.push(Buffer.from(batch.view(i)));
    }
    if (n === 0) await new Promise((r) => setTimeout(r, 5));
  }
  return got;
}

for (const offloads of [true, false]) {
  void test(`batched send and receive on loopback, offloads ${offloads ? 'on' : 'off'}`, async (t) => {
    const a = openConn({ bindAddr: LO, port: 0, offloads });
    const b = openConn({ bindAddr: LO, port: 0, offloads });
    const c = openConn({ bindAddr: LO, port: 0, offloads });
    t.after(() => {
      a.close();
      b.close();
      c.close();
    });
    assert.deepEqual(a.offloads, { gso: offloads, gro: offloads });

    // 20 x 1200 + 1 x 300 to b (one GSO run), then 3 to c, then 2 more to b of another size.
    const sizes: [number, number][] = [];
    for (let i = 0; i < 20; i++) sizes.push([b.localPort, 1200]);
    sizes.push([b.localPort, 300]);
    for (let i = 0; i < 3; i++) sizes.push([c.localPort, 700]);
    sizes.push([b.localPort, 500], [b.localPort, 500]);
    const tx = PacketBatch.forSlots(sizes.length, 2048, 0);
    sizes.forEach(([port, len], i) => {
      const p = pattern(len, i + 1);
      p.writeUInt32BE(i, 0); // sequence number in the payload
      assert.equal(tx.pushCopy(p, LO, port), i);
    });
    assert.equal(a.send(tx), sizes.length);

    const rx = PacketBatch.forReceive(4);
    const atB = await recvAll(b, 23, rx);
    const atC = await recvAll(c, 3, rx);
    assert.equal(atB.length, 23);
    assert.equal(atC.length, 3);
    const check = (got: Buffer[], idx: number[]): void => {
      got.forEach((d, k) => {
        const i = idx[k] as number;
        const want = pattern((sizes[i] as [number, number])[1], i + 1);
        want.writeUInt32BE(i, 0);
        assert.deepEqual(d, want, `datagram ${i}`);
      });
    };
    check(atB, [...Array.from({ length: 21 }, (_, i) => i), 24, 25]);
    check(atC, [21, 22, 23]);

    const sa = a.stats();
    const sb = b.stats();
    assert.equal(sa.datagramsOut, 26);
    assert.equal(sa.sendCalls, 1, 'one sendmmsg for the batch');
    assert.equal(sb.datagramsIn, 23);
    if (offloads) {
      assert.equal(sa.messagesOut, 3, 'three runs: 21 to b, 3 to c, 2 to b');
      assert.equal(sa.gsoMessages, 3);
      assert.ok(sb.groMessages >= 1, 'the receiver got coalesced messages');
      assert.ok(sb.messagesIn < 23);
    } else {
      assert.equal(sa.messagesOut, 26);
      assert.equal(sa.gsoMessages, 0);
      assert.equal(sb.groMessages, 0);
      assert.equal(sb.messagesIn, 23);
    }
  });
}

void test('readiness callback fires when a datagram arrives and stops after stopReading', async (t) => {
  const a = openConn({ bindAddr: LO, port: 0 });
  const b = openConn({ bindAddr: LO, port: 0 });
  t.after(() => {
    a.close();
    b.close();
  });
  const rx = PacketBatch.forReceive(2);
  let calls = 0;
  const got = new Promise<number>((resolve) => {
    b.startReading(() => {
      calls++;
      const n = b.recv(rx);
      if (n > 0) resolve(n);
    });
  });
  const tx = PacketBatch.forSlots(1, 256, 0);
  tx.pushCopy(Buffer.from('hello'), LO, b.localPort);
  assert.equal(a.send(tx), 1);
  assert.equal(await got, 1);
  assert.equal(rx.view(0).toString(), 'hello');
  assert.equal(rx.port[0], a.localPort);
  b.stopReading();
  const before = calls;
  assert.equal(a.send(tx), 1);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(calls, before, 'no callback while stopped');
  assert.equal(b.recv(rx), 1, 'the datagram waited in the socket');
});
