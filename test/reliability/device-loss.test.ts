// Device deleted under the daemon: `ip link del` of weft0 (udp) or weft.1 (vxlan userspace)
// while weftd runs and n2's pod pings n1's pod. The backend notices at once (the kernel's
// notification starts a check; its 1 s check is the safety net),
// opens a new TUN with the same address, MTU and route, swaps it into a new forwarder with
// the same peers, counts deviceRecreated, and traffic resumes (outage measured from ping's
// timestamps) with TCP intact both ways. Then the lighter damage (device set down, address
// flushed, overlay route deleted) is put right in place at once (deviceRepaired, started by
// a notification: kernelEventChecks). After each, n1's
// links, addresses and routes equal those before the damage. Changes of other devices and
// of routes outside the Network start no check (kernelEventsIgnored).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatCidr } from '../../src/routing/ipv4.ts';
import type { BackendCase } from './helpers.ts';
import {
  BACKENDS,
  nsSnapshot,
  overlayDevice,
  pingTrace,
  stat,
  status,
  until,
  pingingPair,
  unrelatedChurn,
} from './helpers.ts';

/** The check runs every second; allow it, the rebuild and a loaded machine. */
const RECOVER_WITHIN_MS = 3000;

for (const [name, b] of [
  ['udp', BACKENDS.udp],
  ['vxlan userspace', BACKENDS.vxlanUserspace],
] as const satisfies readonly (readonly [string, BackendCase])[]) {
  void test(`${name}: the TUN device deleted under weftd is recreated and traffic resumes`, async (t) => {
    const { run, cluster, n1, n2, a, bp } = await pingingPair(t, b);
    const dev = overlayDevice(b);
    const clean = await nsSnapshot(run, n1.ns);
    const network = formatCidr(cluster.network);
    assert.ok(
      clean.routes.some((r) => r.startsWith(`${network} dev ${dev}`)),
      clean.routes.join('\n'),
    );
    await t.test('changes of other devices and routes outside the Network start no check', async () => {
      const { checks, ignored } = await unrelatedChurn(run, cluster, n1);
      assert.equal(checks, 0, 'no check was started');
      assert.ok(ignored >= 5, `the notifications were read and dropped (${ignored})`);
      assert.deepEqual(await nsSnapshot(run, n1.ns), clean);
    });

    const s0 = await status(cluster, n1);
    assert.equal(stat(s0, 'deviceRecreated'), 0);

    await t.test(`ip link del ${dev}: recreated with address, MTU and route; traffic resumes`, async () => {
      const trace = pingTrace(run, bp, a.addr);
      try {
        await until('replies before the deletion', 5000, () =>
          trace.replies().length >= 3 ? true : undefined,
        );
        const deletedAt = Date.now();
        await run.ip(n1.ns, 'link', 'del', dev);
        const s1 = await until('deviceRecreated to count 1', RECOVER_WITHIN_MS + 2000, async () => {
          const s = await status(cluster, n1);
          return stat(s, 'deviceRecreated') >= 1 ? s : undefined;
        });
        assert.equal(stat(s1, 'deviceRecreated'), 1);
        assert.equal(stat(s1, 'deviceRepairFailures'), 0);
        assert.ok(stat(s1, 'kernelEventChecks') >= 1, 'a kernel notification started a check');
        const back = await until('a reply after the deletion', RECOVER_WITHIN_MS + 2000, () =>
          trace.replies().find((r) => r > deletedAt + 50),
        );
        const outage = back - deletedAt;
        t.diagnostic(`${name}: traffic back ${outage.toFixed(0)} ms after ip link del ${dev}`);
        assert.ok(outage < RECOVER_WITHIN_MS, `traffic back only after ${outage} ms`);
      } finally {
        await trace.stop();
      }
      assert.deepEqual(await nsSnapshot(run, n1.ns), clean);
      const metrics = (await cluster.httpGet(n1, '/metrics')).stdout;
      assert.match(metrics, /^weft_repairs_total\{what="device_recreated"\} 1$/m);
      assert.match(metrics, /^weft_kernel_event_checks_total [1-9]/m);
      // The new forwarder kept the peers and the counters.
      const s2 = await status(cluster, n1);
      assert.ok(stat(s2, 'counters.recvPackets') >= stat(s0, 'counters.recvPackets'));
      const x = await cluster.tcpTransfer(a, bp, 1024 * 1024);
      const y = await cluster.tcpTransfer(bp, a, 1024 * 1024);
      assert.equal(x.receivedSha256, x.sentSha256);
      assert.equal(y.receivedSha256, y.sentSha256);
      assert.equal(x.receivedBytes, 1024 * 1024);
    });

    // Each is seen at once: the kernel announces the change and weftd checks right away
    // (kernelEventChecks), not at its next tick (a lost route alone would wait for the full
    // check, every FULL_CHECK_EVERY-th tick: 5 s).
    const damage: [string, string[]][] = [
      ['set down', ['link', 'set', dev, 'down']],
      ['address flushed', ['addr', 'flush', 'dev', dev]],
      ['route deleted', ['route', 'del', network, 'dev', dev]],
    ];
    for (const [what, cmd] of damage) {
      await t.test(`${dev} ${what}: put right in place at once, traffic resumes`, async () => {
        const before = await status(cluster, n1);
        const r0 = stat(before, 'deviceRepaired');
        const e0 = stat(before, 'kernelEventChecks');
        const at = Date.now();
        await run.ip(n1.ns, ...cmd);
        const s1 = await until(`deviceRepaired after "${what}"`, RECOVER_WITHIN_MS + 2000, async () => {
          const s = await status(cluster, n1);
          return stat(s, 'deviceRepaired') > r0 ? s : undefined;
        });
        const took = Date.now() - at;
        t.diagnostic(`${name}: ${what}: put right within ${took} ms`);
        assert.ok(took < RECOVER_WITHIN_MS, `put right only after ${took} ms`);
        assert.ok(stat(s1, 'kernelEventChecks') > e0, 'a kernel notification started the check');
        await cluster.waitForPing(a, bp.addr, RECOVER_WITHIN_MS);
        await cluster.waitForPing(bp, a.addr, RECOVER_WITHIN_MS);
        assert.deepEqual(await nsSnapshot(run, n1.ns), clean);
        const s = await status(cluster, n1);
        assert.equal(stat(s, 'deviceRecreated'), 1, 'fixed in place, not recreated');
      });
    }

    await t.test('weftd stayed up', () => {
      for (const n of [n1, n2]) assert.equal(n.weftd?.child.exitCode, null, n.weftd?.output().slice(-2000));
    });
  });
}
