// Kernel backends' per-peer state removed behind weftd's back (kernel VXLAN: the peer's
// route, neighbour and FDB entry on weft.1; host-gw: the route to the peer's subnet) is put
// back at once: the kernel's notification starts weftd's check (kernelEventChecks), so it
// does not wait for the periodic one (every 5 s for kernel VXLAN, 10 s for host-gw). After
// each, n1's state equals what it was and pods reach each other both ways. Changes of
// things the backend does not look after (another device, routes outside the Network) are
// read and dropped (kernelEventsIgnored) without starting a pass.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IpRouteKernel } from '../../src/kernel/iproute.ts';
import { cidrEquals, formatCidr, formatIpv4 } from '../../src/routing/ipv4.ts';
import type { BackendCase } from './helpers.ts';
import { BACKENDS, pingingPair, stat, status, unrelatedChurn, until } from './helpers.ts';

/** Well under both timers: only a notification-started check puts it back this soon. */
const PUT_BACK_WITHIN_MS = 3000;

const HOST_GW: BackendCase = { backend: 'host-gw', port: 0 };

for (const [name, b] of [
  ['vxlan kernel', BACKENDS.vxlanKernel],
  ['host-gw', HOST_GW],
] as const) {
  void test(`${name}: a peer's kernel state deleted behind weftd is put back at once`, async (t) => {
    const { run, cluster, n1, n2, a, bp } = await pingingPair(t, b);

    const vxlan = b.device !== undefined;
    const dev = b.device ?? 'eth0';
    const k = new IpRouteKernel({ netns: n1.ns });
    const read = async (): Promise<string> =>
      JSON.stringify({
        routes: (await k.listRoutes())
          .map((r) => `${formatCidr(r.dst)} ${r.via ?? ''} ${r.dev ?? ''}`)
          .sort(),
        neighs: vxlan ? await k.listNeighs(dev) : [],
        fdb: vxlan ? await k.listFdb(dev) : [],
      });
    const clean = await read();
    const peerSubnet = n2.subnet?.subnet;
    assert.ok(peerSubnet);
    const route = (await k.listRoutes(dev)).find((r) => cidrEquals(r.dst, peerSubnet));
    assert.ok(route, `a route to ${formatCidr(peerSubnet)} on ${dev}`);

    const damage: [string, string, string[]][] = [
      ['route', 'ip', ['route', 'del', formatCidr(peerSubnet), 'dev', dev]],
    ];
    if (vxlan) {
      const neigh = (await k.listNeighs(dev)).find((x) => x.addr === peerSubnet.addr);
      const fdb = (await k.listFdb(dev))[0];
      assert.ok(neigh && fdb, 'the peer has a neighbour and an FDB entry');
      damage.push(['neighbour', 'ip', ['neigh', 'del', formatIpv4(neigh.addr), 'dev', dev]]);
      damage.push(['FDB entry', 'bridge', ['fdb', 'del', fdb.mac, 'dev', dev, 'dst', formatIpv4(fdb.dst)]]);
    }
    await t.test('changes of what the backend does not look after start no pass', async () => {
      const { checks, ignored } = await unrelatedChurn(run, cluster, n1);
      assert.equal(checks, 0, 'no pass was started');
      assert.ok(ignored >= 5, `the notifications were read and dropped (${ignored})`);
      assert.equal(await read(), clean);
    });

    for (const [what, tool, args] of damage) {
      await t.test(`${what} deleted: put back at once, traffic flows`, async () => {
        const e0 = stat(await status(cluster, n1), 'kernelEventChecks');
        const at = Date.now();
        await run.exec(n1.ns, tool, args);
        await until(`the ${what} back`, PUT_BACK_WITHIN_MS + 2000, async () =>
          (await read()) === clean ? true : undefined,
        );
        const took = Date.now() - at;
        t.diagnostic(`${name}: ${what} put back within ${took} ms`);
        assert.ok(took < PUT_BACK_WITHIN_MS, `put back only after ${took} ms`);
        assert.ok(
          stat(await status(cluster, n1), 'kernelEventChecks') > e0,
          'a kernel notification started the check',
        );
        await cluster.waitForPing(a, bp.addr, PUT_BACK_WITHIN_MS);
        await cluster.waitForPing(bp, a.addr, PUT_BACK_WITHIN_MS);
      });
    }

    await t.test('weftd stayed up', () => {
      for (const n of [n1, n2]) assert.equal(n.weftd?.child.exitCode, null, n.weftd?.output().slice(-2000));
    });
  });
}
