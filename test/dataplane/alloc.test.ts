/**
 * udp: the data path allocates nothing per packet or per batch (see alloc-harness.ts), and
 * on MemoryTun/MemoryConn (which do allocate) the forwarders retain nothing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { PacketBatch } from '../../src/tun/batch.ts';
import { buildIpv4, ip } from '../encap/packets.ts';
import { allocCheck, gc } from './alloc-harness.ts';
import { makePair, waitFor } from './twins.ts';

void test('udp: 10^6 packets through two forwarders allocate nothing per packet', () => allocCheck('udp'));

void test('memory twins: 10^5 packets A -> B, the forwarders retain nothing', async (t) => {
  const { a, b, close } = makePair('vxlan');
  t.after(close);
  const template = buildIpv4({ src: ip('10.244.1.5'), dst: ip('10.244.2.9'), payload: Buffer.alloc(500) });
  let delivered = 0;
  // Count instead of collecting copies.
  b.tun.written.length = 0;
  const origWrite = b.tun.write.bind(b.tun);
  b.tun.write = (batch: PacketBatch): number => {
    const n = origWrite(batch);
    delivered += n;
    b.tun.written.length = 0;
    return n;
  };
  gc();
  const before = process.memoryUsage().heapUsed;
  const N = 100_000;
  const t0 = process.hrtime.bigint();
  for (let sent = 0; sent < N; sent += 1000) {
    for (let i = 0; i < 1000; i++) a.tun.inject(template);
    await waitFor(() => delivered === sent + 1000, 10000);
  }
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  gc();
  const after = process.memoryUsage().heapUsed;
  console.log(
    `# memory twins vxlan: ${N} packets in ${ms.toFixed(0)} ms (${((N / ms) * 1000).toFixed(0)} packets/s), ` +
      `heap delta ${((after - before) / 1024).toFixed(0)} KiB`,
  );
  assert.equal(delivered, N);
  assert.ok(after - before < 4 << 20, `heap grew by ${after - before} bytes`);
});
