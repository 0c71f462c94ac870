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
    { accepted: number; gsoWrites: number; sizes: number[]; checksOk: boolean[]; payloadIntact: boolean }
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
});
