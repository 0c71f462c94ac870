// TUN writes of TCP packets larger than the device MTU (whole super-packets, as a kernel
// VXLAN peer on a veth underlay delivers them) go to the kernel as one GSO packet; forwarded
// to a TUN without offloads, the kernel splits it into MTU-sized segments whose checksums
// all verify, whether the packet's own checksum was partial or complete.
import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { test } from 'node:test';
import { NetnsRun } from '../../src/netns/netns.ts';
import { projectRoot } from '../../src/util/self.ts';

void test('an oversize TCP packet is written as GSO and arrives as valid MTU-sized segments', async (t) => {
  const run = new NetnsRun();
  t.after(() => run.destroy());
  const ns = await run.addNamespace('gso');
  const out = await run.exec(
    ns,
    process.execPath,
    ['--import', 'tsx', resolve(projectRoot, 'test/native/fixtures/gso-write-check.ts')],
    { timeoutMs: 30000 },
  );
  const r = JSON.parse(out.trim().split('\n').pop() as string) as Record<
    string,
    {
      accepted: number;
      gsoWrites: number;
      segmentedWrites: number;
      partialCsumWrites: number;
      sizes: number[];
      checksOk: boolean[];
      payloadIntact: boolean;
    }
  >;
  // 8000 bytes of payload at MTU 1400 (40 bytes of headers per segment): 5 x 1360 + 1200.
  for (const kind of ['partial', 'complete']) {
    const x = r[kind];
    assert.ok(x, kind);
    assert.equal(x.accepted, 1, `${kind}: the TUN accepted the write`);
    assert.equal(x.gsoWrites, 1, `${kind}: written as one GSO packet`);
    assert.deepEqual(x.sizes, [1400, 1400, 1400, 1400, 1400, 1240], `${kind}: MTU-sized segments`);
    assert.ok(
      x.checksOk.every((ok) => ok),
      `${kind}: every IP and TCP checksum verifies: ${JSON.stringify(x.checksOk)}`,
    );
    assert.ok(x.payloadIntact, `${kind}: the segments carry the payload, in order`);
  }
  // A TUN without a vnet header (offloads off) cannot take GSO: the addon cuts the packet
  // into the same segments itself, and completes a small packet's partial checksum.
  for (const kind of ['plainPartial', 'plainComplete']) {
    const x = r[kind];
    assert.ok(x, kind);
    assert.equal(x.accepted, 1, `${kind}: the write counts once`);
    assert.equal(x.gsoWrites, 0, kind);
    assert.equal(x.segmentedWrites, 1, `${kind}: segmented by the addon`);
    assert.deepEqual(x.sizes, [1400, 1400, 1400, 1400, 1400, 1240], `${kind}: MTU-sized segments`);
    assert.ok(
      x.checksOk.every((ok) => ok),
      `${kind}: checksums verify: ${JSON.stringify(x.checksOk)}`,
    );
    assert.ok(x.payloadIntact, `${kind}: payload intact, in order`);
  }
  const small = r['plainSmallPartial'];
  assert.ok(small);
  assert.equal(small.segmentedWrites, 0);
  assert.equal(small.partialCsumWrites, 1, 'the partial checksum was completed');
  assert.deepEqual(small.sizes, [640]);
  assert.deepEqual(small.checksOk, [true]);
  assert.ok(small.payloadIntact);
});
