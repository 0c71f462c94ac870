// host-gw backend in network namespaces: two nodes on one L2 segment, each running the
// backend in a fixture process. Ping and TCP both ways between pods, the exact route in
// the kernel, its removal when the peer goes, a route someone deletes comes back, and a
// peer off the segment is refused without touching the kernel.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { rootSnapshot } from '../../src/netns/netns.ts';
import { Cluster } from './fixtures/cluster.ts';

void test('host-gw: ping + TCP both ways, routes follow the peer set', async () => {
  const before = rootSnapshot();
  const be = { Type: 'host-gw' };
  const c = await Cluster.create([be, be]);
  try {
    const [a, b] = [c.node(0), c.node(1)];
    assert.equal(a.mtu, 1500, 'host-gw MTU = underlay MTU');
    assert.equal(
      (await c.run.exec(a.ns, 'ip', ['route', 'show', '10.5.2.0/24'])).trim(),
      '10.5.2.0/24 via 198.18.0.2 dev eth0',
    );
    assert.equal(await c.ping(a, b), 3, 'ping A -> B');
    assert.equal(await c.ping(b, a), 3, 'ping B -> A');
    const ab = await c.tcp(a, b);
    assert.ok(ab.ok, `TCP A -> B: ${JSON.stringify(ab)}`);
    const ba = await c.tcp(b, a);
    assert.ok(ba.ok, `TCP B -> A: ${JSON.stringify(ba)}`);
    console.log(`# host-gw TCP echo 4 MiB each way: A->B ${ab.ms} ms, B->A ${ba.ms} ms`);

    // Someone deletes A's route: the periodic check (1 s in the fixture) puts it back.
    await c.run.exec(a.ns, 'ip', ['route', 'del', '10.5.2.0/24']);
    const t0 = Date.now();
    let route = '';
    while (Date.now() - t0 < 5000 && route === '') {
      await new Promise((r) => setTimeout(r, 200));
      route = (await c.run.exec(a.ns, 'ip', ['route', 'show', '10.5.2.0/24'])).trim();
    }
    assert.equal(route, '10.5.2.0/24 via 198.18.0.2 dev eth0', 'route reinstalled');

    // A peer off our L2 segment is refused: counted, and no route reaches the kernel.
    const far = await a.addLease({
      subnet: '10.5.9.0/24',
      attrs: { publicIp: '203.0.113.9', backendType: 'host-gw', backendData: null },
    });
    const farStats = far['stats'] as Record<string, number>;
    assert.equal(farStats['peersRefused'], 1);
    assert.equal(farStats['kernelFailures'], 0);
    assert.equal((await c.run.exec(a.ns, 'ip', ['route', 'show', '10.5.9.0/24'])).trim(), '');

    await a.removePeer(b);
    assert.equal((await c.run.exec(a.ns, 'ip', ['route', 'show', '10.5.2.0/24'])).trim(), '');
    const st = await a.stats();
    assert.equal(st['peers'], 0);
    assert.equal(st['peersRefused'], 1);
    assert.equal(await c.ping(a, b, 1), 0, 'no path once A removed B');

    // Stopping B removes its route to A.
    await b.stop();
    assert.equal((await c.run.exec(b.ns, 'ip', ['route', 'show', '10.5.1.0/24'])).trim(), '');
  } finally {
    await c.destroy();
    assert.equal(rootSnapshot(), before, 'root namespace unchanged');
  }
});
