// End to end on a real etcd: three weftd nodes (udp backend) in network namespaces share
// one etcd member that sits on the underlay; the net-conf is put at <prefix>/config with
// etcdctl, as for flanneld. Pods ping across nodes; a 4th node joins and node 1's pod reaches
// it within 1 s of its lease key appearing in etcd; the 4th node leaves (--release-on-exit +
// SIGTERM) and every other node drops it within 1 s of the key's deletion; a restarted
// daemon keeps its subnet and traffic to it resumes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseCidr, formatIpv4 } from '../../src/routing/ipv4.ts';
import { createEtcdWorld, keyOf, until } from './fixture.ts';
import { setTimeout as sleep } from 'node:timers/promises';

void test('weftd on a real etcd: join, leave and restart under traffic', { timeout: 120_000 }, async (t) => {
  const w = await createEtcdWorld(t, { nodes: 4, members: 1 });
  const { cluster } = w;
  const [n1, n2, n3, n4] = [cluster.node(1), cluster.node(2), cluster.node(3), cluster.node(4)];

  const subnets = await Promise.all([n1, n2, n3].map((n) => w.startNode(n)));
  for (const n of [n1, n2, n3]) await cluster.attachPods(n, n.subnet!);
  const [a, b, c] = [n1.pods[0]!, n2.pods[0]!, n3.pods[0]!];

  await t.test('three nodes hold distinct leases in etcd, and pods ping each other', async () => {
    const keys = await w.leaseKeys();
    const want = subnets.map((s) => keyOf(`${formatIpv4(s.subnet.addr)}/${s.subnet.prefix}`)).sort();
    assert.deepEqual(keys.sort(), want);
    assert.equal(new Set(want).size, 3);
    for (const [from, to] of [
      [a, b],
      [b, c],
      [c, a],
    ] as const) {
      await cluster.waitForPing(from, to.addr, 10_000);
      const r = await cluster.ping(from, to.addr, { count: 3 });
      assert.equal(r.received, 3, r.output);
    }
  });

  let joinedKey = '';
  await t.test('a 4th node joins: node 1 reaches it within 1 s of its lease appearing', async () => {
    const before = new Set(await w.leaseKeys());
    cluster.startWeftd(n4, w.weftdOptions(['--release-on-exit']));
    // t0 = start of the last poll that did not see the key yet: the key appeared after it,
    // so the measured time is an upper bound.
    let t0 = Date.now();
    joinedKey = await until('the 4th lease key', 30_000, async () => {
      const polled = Date.now();
      const k = (await w.leaseKeys()).find((x) => !before.has(x));
      if (k === undefined) t0 = polled;
      return k;
    });
    // The node's TUN holds its subnet's network address: reachable once the data paths of
    // both ends and node 1's peer table know the lease (no pods needed on the new node).
    const tunAddr = formatIpv4(parseCidr(joinedKey.replace('-', '/'), 'lease key').addr);
    await until(
      `a ping reply from ${tunAddr}`,
      5_000,
      async () =>
        (await cluster.ping(a, tunAddr, { count: 1, waitS: 0.2 })).received > 0 ? true : undefined,
      0,
    );
    const ms = Date.now() - t0;
    t.diagnostic(`join: lease key seen -> first ping reply from node 4: ${ms} ms`);
    assert.ok(ms <= 1000, `node 4 became reachable ${ms} ms after its lease appeared (limit 1000 ms)`);

    const s4 = await cluster.waitWeftdReady(n4);
    assert.equal(keyOf(`${formatIpv4(s4.subnet.addr)}/${s4.subnet.prefix}`), joinedKey);
    await cluster.attachPods(n4, s4);
    for (const from of [a, b, c]) {
      const r = await cluster.ping(from, n4.pods[0]!.addr, { count: 2 });
      assert.equal(r.received, 2, r.output);
    }
  });

  await t.test('the 4th node leaves: the others drop it within 1 s of its key going away', async () => {
    const subnet4 = joinedKey.replace('-', '/');
    for (const n of [n1, n2, n3]) {
      const s = await w.status(n);
      assert.ok(
        s.peers.some((p) => p.subnet === subnet4),
        `${n.name} does not list ${subnet4} before it leaves`,
      );
    }
    const gone = [n1, n2, n3].map((n) => w.whenPeerGone(n, subnet4, 10_000));
    await sleep(300); // the pollers are running
    const sigterm = Date.now();
    const stopped = cluster.stopWeftd(n4);
    // t0 = start of the last poll that still saw the key (an upper bound again).
    let t0 = sigterm;
    await until('the 4th lease key to be deleted', 10_000, async () => {
      const polled = Date.now();
      if (!(await w.leaseKeys()).includes(joinedKey)) return true;
      t0 = polled;
      return undefined;
    });
    assert.equal(await stopped, 0, 'weftd on node 4 did not exit cleanly on SIGTERM');
    const dropped = await Promise.all(gone);
    const ms = Math.max(...dropped) - t0;
    t.diagnostic(
      `leave: key deleted -> dropped everywhere ${ms} ms (last poll still seeing the key: ${t0 - sigterm} ms after SIGTERM)`,
    );
    assert.ok(ms <= 1000, `the other nodes kept node 4's route ${ms} ms after its key went away`);
    // Traffic to the departed subnet now ends at node 1's forwarder: dropped for "no route".
    const noRoute = 'weft_dataplane_drops_total{reason="no_route"}';
    const before = (await w.metrics(n1)).get(noRoute) ?? 0;
    const r = await cluster.ping(a, n4.pods[0]!.addr, { count: 3, waitS: 1 });
    assert.equal(r.received, 0, r.output);
    const after = (await w.metrics(n1)).get(noRoute) ?? 0;
    assert.ok(after - before >= 3, `node 1 counted ${after - before} no-route drops for 3 pings`);
  });

  await t.test('a restarted daemon keeps its subnet, and traffic to it resumes', async () => {
    const before = n2.subnet!;
    const keysBefore = (await w.leaseKeys()).sort();
    assert.equal(await cluster.stopWeftd(n2), 0);
    // Without --release-on-exit the lease stays in etcd while the daemon is down.
    assert.deepEqual((await w.leaseKeys()).sort(), keysBefore);
    const after = await w.startNode(n2);
    assert.equal(after.subnet.addr, before.subnet.addr);
    assert.equal(after.subnet.prefix, before.subnet.prefix);
    assert.deepEqual((await w.leaseKeys()).sort(), keysBefore);
    const s = await w.status(n2);
    assert.equal(s.lease?.subnet, `${formatIpv4(before.subnet.addr)}/${before.subnet.prefix}`);
    await cluster.waitForPing(a, b.addr, 10_000);
    const r = await cluster.ping(c, b.addr, { count: 3 });
    assert.equal(r.received, 3, r.output);
  });
});
