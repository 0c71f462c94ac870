// Opening devices: multi-queue TUN, plain TUN, UDP socket options, closed handles, and a
// worker thread that exits with open polled handles (the addon's env cleanup hook).
import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { test } from 'node:test';
import { NetnsRun } from '../../src/netns/netns.ts';
import { projectRoot } from '../../src/util/self.ts';

void test('multi-queue, plain, socket and worker-thread handles open and close', async (t) => {
  const run = new NetnsRun();
  t.after(() => run.destroy());
  const ns = await run.addNamespace('open');
  const out = await run.exec(
    ns,
    process.execPath,
    ['--import', 'tsx', resolve(projectRoot, 'test/native/fixtures/open-check.ts')],
    { timeoutMs: 30000 },
  );
  const r = JSON.parse(out.trim().split('\n').pop() as string) as {
    mq: {
      names: string[];
      offloads: { vnetHdr: boolean; tso: boolean; uso: boolean; gro: boolean }[];
      bits: number;
    };
    plain: { name: string; offloads: { vnetHdr: boolean; tso: boolean } };
    closedReadThrows: boolean;
    conn: { port: number; offloads: { gso: boolean; gro: boolean }; rcvbuf: number; sndbuf: number };
    worker: { msg: { tun: string; port: number }; code: number; ms: number };
    reopen: string;
  };
  assert.deepEqual(r.mq.names, ['mq0', 'mq0']);
  assert.equal(r.mq.bits, 0x67, 'CSUM|TSO4|TSO6|USO4|USO6 accepted on this kernel');
  for (const o of r.mq.offloads) assert.deepEqual(o, { vnetHdr: true, tso: true, uso: true, gro: true });
  assert.match(r.plain.name, /^pl\d+$/);
  assert.equal(r.plain.offloads.vnetHdr, false);
  assert.equal(r.plain.offloads.tso, false);
  assert.ok(r.closedReadThrows, 'a closed device raises DeviceError');
  assert.ok(r.conn.port > 0);
  assert.deepEqual(r.conn.offloads, { gso: true, gro: true });
  assert.ok(r.conn.rcvbuf >= 16 * 1024 * 1024, `rcvbuf ${r.conn.rcvbuf}`);
  assert.ok(r.conn.sndbuf >= 8 * 1024 * 1024, `sndbuf ${r.conn.sndbuf}`);
  assert.equal(r.worker.msg.tun, 'wk0');
  assert.equal(r.worker.code, 0, 'the worker exited cleanly with polled handles open');
  assert.ok(r.worker.ms < 10000);
  assert.equal(r.reopen, 'wk0');
});
