// weftd's readiness as a kubelet probe sees it, made deterministic by holding the embedded
// store's lock file (what another weftd writing to the store would do):
//   - while the lock is held at start, no lease can be taken: /readyz 503 ("starting", no
//     lease, no subnet file), /healthz 200;
//   - once the lock is free: lease, subnet file, data path up -> /readyz 200;
//   - SIGTERM with --release-on-exit while the lock is held again: the data path is torn
//     down (weft0 gone) and the release waits for the lock: /readyz 503 ("stopping",
//     dataPathUp false), /healthz still 200; freeing the lock lets weftd exit 0, its lease
//     and subnet file released.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { NetnsRun } from '../../src/netns/netns.ts';
import { Cluster, summarizeLog, WEFT_TUN } from '../../src/netns/topology.ts';
import { httpGet, until, within } from './helpers.ts';

interface Readyz {
  ready: boolean;
  reason?: string;
  state?: string;
  checks: { leaseHeld: boolean; subnetFileWritten: boolean; dataPathUp: boolean };
}

void test('/readyz: 503 without a lease, 200 when up, 503 while stopping; /healthz 200 throughout', async (t) => {
  const run = new NetnsRun();
  const cluster = await Cluster.create(run, { nodes: 1, podsPerNode: 0 });
  t.after(() => cluster.destroy());
  const node = cluster.node(1);
  const lock = join(cluster.storeDir, 'lock');
  const holdLock = (): void => writeFileSync(lock, `${process.pid} ${Date.now()} ops-test\n`, { flag: 'wx' });
  const freeLock = (): void => {
    if (existsSync(lock)) unlinkSync(lock);
  };
  t.after(freeLock);

  cluster.writeNetConf('udp');
  holdLock();
  const proc = cluster.startWeftd(node, { extraArgs: ['--release-on-exit'], logLevel: 'info' });
  const why = (): string => summarizeLog(proc.output(), 8);

  // The health server comes up while the daemon waits for the lock.
  await until('/healthz to answer', 20_000, async () =>
    (await httpGet(node, '/healthz')).status === 200 ? true : undefined,
  );
  for (let i = 0; i < 5; i++) {
    const r = await httpGet(node, '/readyz');
    assert.equal(r.status, 503, `readyz while no lease can be taken: ${r.body}\n${why()}`);
    const body = JSON.parse(r.body) as Readyz;
    assert.equal(body.ready, false);
    assert.equal(body.state, 'starting');
    assert.match(body.reason ?? '', /starting/);
    assert.equal(body.checks.leaseHeld, false);
    assert.equal(body.checks.subnetFileWritten, false);
    assert.equal((await httpGet(node, '/healthz')).status, 200);
    assert.equal(existsSync(node.subnetFile), false, 'no subnet file before the lease');
    await sleep(200);
  }
  assert.equal(proc.child.exitCode, null, why());

  // Free the lock: the lease is taken and everything comes up.
  freeLock();
  const ready = await until('/readyz 200', 20_000, async () => {
    const r = await httpGet(node, '/readyz');
    return r.status === 200 ? (JSON.parse(r.body) as Readyz) : undefined;
  });
  assert.deepEqual(ready.checks, { leaseHeld: true, subnetFileWritten: true, dataPathUp: true });
  assert.ok(existsSync(node.subnetFile));
  assert.match(await run.ip(node.ns, '-o', 'link', 'show'), new RegExp(`: ${WEFT_TUN}:`));
  assert.equal(readdirSync(join(cluster.storeDir, 'subnets')).length, 1, 'one lease in the store');
  assert.equal((await httpGet(node, '/healthz')).status, 200);

  // Stop while the lock is held: the release (last step) waits, the data path is down.
  holdLock();
  process.kill(proc.pid, 'SIGTERM');
  const stopping = await until('/readyz to report the data path down while stopping', 10_000, async () => {
    const r = await httpGet(node, '/readyz');
    assert.notEqual(r.status, 200, `ready again after SIGTERM: ${r.body}`);
    if (r.status !== 503) return undefined;
    const b = JSON.parse(r.body) as Readyz;
    return b.checks.dataPathUp ? undefined : b;
  });
  assert.equal(stopping.ready, false);
  assert.equal(stopping.state, 'stopping');
  assert.match(stopping.reason ?? '', /stopping/);
  assert.doesNotMatch(await run.ip(node.ns, '-o', 'link', 'show'), new RegExp(`: ${WEFT_TUN}:`));
  for (let i = 0; i < 3; i++) {
    assert.equal((await httpGet(node, '/healthz')).status, 200, 'alive while stopping');
    assert.equal((await httpGet(node, '/readyz')).status, 503);
    await sleep(100);
  }
  assert.equal(proc.child.exitCode, null, 'still releasing the lease');

  freeLock();
  const code = await within(proc.exited, 15_000, 'still running');
  assert.equal(code, 0, why());
  assert.equal(existsSync(node.subnetFile), false, '--release-on-exit removed the subnet file');
  assert.deepEqual(readdirSync(join(cluster.storeDir, 'subnets')), [], 'lease released');
  assert.equal((await httpGet(node, '/healthz')).status, 0, 'the health server is gone');
});
