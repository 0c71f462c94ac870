// SIGKILL and restart: weftd on n1 is killed with SIGKILL while n2's pod pings n1's pod
// (ping -D, so every reply has a timestamp), then started again with the same flags. The
// restarted weftd keeps its subnet (subnet file, /status, n2's view of it) and, for vxlan,
// its VTEP MAC (state dir file, lease BackendData as n2 sees it); traffic is back less than
// 2 s after it reports ready (measured from ping's own timestamps); and n1's links,
// addresses and routes are exactly those of the clean start (nothing left over from the
// killed process, nothing duplicated). Run for udp, vxlan userspace and vxlan kernel (whose
// device outlives the process and must be adopted, not duplicated).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { formatCidr } from '../../src/routing/ipv4.ts';
import type { BackendCase } from './helpers.ts';
import {
  BACKENDS,
  nsSnapshot,
  overlayDevice,
  pingTrace,
  stateDir,
  status,
  until,
  pingingPair,
  weftdOptions,
} from './helpers.ts';

/** Traffic must be back this soon after the restarted weftd reports ready. */
const BACK_WITHIN_MS = 2000;

for (const [name, b] of [
  ['udp', BACKENDS.udp],
  ['vxlan userspace', BACKENDS.vxlanUserspace],
  ['vxlan kernel', BACKENDS.vxlanKernel],
] as const satisfies readonly (readonly [string, BackendCase])[]) {
  void test(`${name}: SIGKILL weftd under traffic, restart: same subnet/MAC, traffic back < 2 s, no leftovers`, async (t) => {
    const { run, cluster, n1, n2, a, bp } = await pingingPair(t, b);
    const dev = overlayDevice(b);
    const isVxlan = b.backend === 'vxlan';

    const subnetFile0 = readFileSync(n1.subnetFile, 'utf8');
    const st0 = await status(cluster, n1);
    const n2view0 = (await status(cluster, n2)).peers;
    const mac0 = isVxlan ? readFileSync(join(stateDir(n1), 'vtep-mac'), 'utf8').trim() : undefined;
    const clean = await nsSnapshot(run, n1.ns);
    assert.ok(
      clean.links.some((l) => l.startsWith(`${dev} `)),
      `${dev} exists after a clean start: ${clean.links.join('; ')}`,
    );

    const trace = pingTrace(run, bp, a.addr);
    t.after(() => trace.stop());
    await until('replies before the kill', 5000, () => (trace.replies().length >= 3 ? true : undefined));

    const killedAt = Date.now();
    assert.equal(await n1.weftd!.stop('SIGKILL', 1000), 'SIGKILL');
    await sleep(500);
    const repliesWhileDead = trace.replies().filter((r) => r > killedAt + 200);
    const kernelPlane = b === BACKENDS.vxlanKernel;
    if (!kernelPlane) {
      // A TUN dies with its process: the data path is really down while weftd is.
      assert.deepEqual(repliesWhileDead, [], 'no replies while weftd is dead');
    }

    const spawnedAt = Date.now();
    cluster.startWeftd(n1, weftdOptions(b));
    await cluster.waitWeftdReady(n1);
    const readyAt = Date.now();
    const firstReply = await until('a reply after the restart', 5000, () =>
      trace.replies().find((r) => r > killedAt + 500),
    );
    // Negative: traffic was back before /readyz was seen to answer (it is polled).
    const backMs = firstReply - readyAt;
    t.diagnostic(
      `${name}: restart -> ready ${readyAt - spawnedAt} ms; first reply ${backMs.toFixed(0)} ms after ready ` +
        `(${(firstReply - spawnedAt).toFixed(0)} ms after the restart, ${(firstReply - killedAt).toFixed(0)} ms after the kill)`,
    );
    assert.ok(backMs < BACK_WITHIN_MS, `traffic back only ${backMs} ms after ready`);
    if (kernelPlane) {
      // The kernel's VXLAN device outlives weftd: the restart must not interrupt traffic.
      await sleep(500);
      const r = trace.replies().filter((x) => x > killedAt - 500);
      const gaps = r.slice(1).map((x, i) => x - (r[i] as number));
      assert.ok(Math.max(...gaps) < 1000, `a gap of ${Math.max(...gaps)} ms in replies across the restart`);
    }
    // And the other way, from the restarted node.
    assert.equal((await cluster.ping(a, bp.addr, { count: 3, intervalS: 0.1 })).received, 3);

    await t.test('same subnet (subnet file, lease) and, for vxlan, same VTEP MAC', async () => {
      assert.equal(readFileSync(n1.subnetFile, 'utf8'), subnetFile0);
      const st1 = await status(cluster, n1);
      assert.equal(st1.lease?.subnet, st0.lease?.subnet);
      assert.deepEqual(st1.lease?.backendData, st0.lease?.backendData);
      assert.equal(st1.lease?.subnet, formatCidr(n1.subnet!.subnet));
      if (mac0 !== undefined) {
        assert.equal(readFileSync(join(stateDir(n1), 'vtep-mac'), 'utf8').trim(), mac0);
        assert.equal((st1.lease?.backendData as { VtepMAC?: string }).VtepMAC, mac0);
      }
      // n2 sees n1 exactly as before.
      assert.deepEqual((await status(cluster, n2)).peers, n2view0);
    });

    await t.test('links, addresses and routes of n1 equal those of the clean start', async () => {
      const now = await until('n1 to settle', 3000, async () => {
        const s = await nsSnapshot(run, n1.ns);
        return JSON.stringify(s) === JSON.stringify(clean) ? s : undefined;
      }).catch(() => nsSnapshot(run, n1.ns));
      assert.deepEqual(now, clean);
      assert.equal(now.links.filter((l) => l.startsWith(`${dev} `)).length, 1);
      if (kernelPlane) {
        // Per-peer kernel entries: exactly one neighbour and one FDB entry for n2.
        const neigh = (await run.ip(n1.ns, 'neigh', 'show', 'dev', dev)).trim().split('\n');
        assert.equal(neigh.length, 1, neigh.join('\n'));
        const fdb = (await run.exec(n1.ns, 'bridge', ['fdb', 'show', 'dev', dev]))
          .split('\n')
          .filter((l) => l.includes(`dst ${n2.underlayIp}`));
        assert.equal(fdb.length, 1, fdb.join('\n'));
      }
    });
  });
}
