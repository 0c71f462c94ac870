// vxlan backend, kernel data plane, in network namespaces: two nodes each running the
// backend in a fixture process. Ping and a TCP echo both ways between pods; the device as
// flannel creates it; a tshark capture decodes as VXLAN with our VNI and the two VTEP
// MACs; peer removal removes its neighbour, FDB entry and route; a deleted device comes back.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { VNI, assertCapturedVxlan, bothWays, vtepMac, withCluster } from './fixtures/vxlan-checks.ts';

void describe('vxlan in network namespaces (kernel data plane)', () => {
  void test('kernel <-> kernel: ping + TCP both ways, tshark decode, peer removal', async () => {
    const be = { Type: 'vxlan', VNI, Dataplane: 'kernel' };
    await withCluster([be, be], async (c) => {
      const [a, b] = [c.node(0), c.node(1)];
      assert.equal(a.mtu, 1450);
      const link = JSON.parse(await c.run.exec(a.ns, 'ip', ['-d', '-j', 'link', 'show', `weft.${VNI}`])) as {
        address: string;
        mtu: number;
        linkinfo: {
          info_kind: string;
          info_data: { id: number; port: number; learning: boolean; local: string };
        };
      }[];
      assert.equal(link[0]?.linkinfo.info_kind, 'vxlan');
      assert.equal(link[0]?.linkinfo.info_data.id, VNI);
      assert.equal(link[0]?.linkinfo.info_data.port, 8472);
      assert.equal(link[0]?.linkinfo.info_data.learning, false);
      assert.equal(link[0]?.linkinfo.info_data.local, '198.18.0.1');
      assert.equal(link[0]?.address, vtepMac(a));
      assert.equal(link[0]?.mtu, 1450);

      await bothWays(c);

      await assertCapturedVxlan(c, a, b);

      // Peer removal: B forgets A -> its neighbour, FDB entry and route are gone.
      const dev = `weft.${VNI}`;
      assert.match(
        await c.run.exec(b.ns, 'ip', ['route', 'show', 'dev', dev]),
        /10\.5\.1\.0\/24 via 10\.5\.1\.0/,
      );
      await b.removePeer(a);
      assert.equal((await c.run.exec(b.ns, 'ip', ['route', 'show', 'dev', dev])).trim(), '');
      assert.equal((await c.run.exec(b.ns, 'ip', ['neigh', 'show', 'dev', dev])).trim(), '');
      assert.equal(
        (await c.run.exec(b.ns, 'bridge', ['fdb', 'show', 'dev', dev])).includes(vtepMac(a)),
        false,
      );
      assert.equal(await c.ping(a, b, 1), 0, 'no path once B removed A');

      // Device deleted behind B's back: recreated with peers within the check interval.
      await b.addPeer(a);
      await c.run.exec(b.ns, 'ip', ['link', 'del', dev]);
      const t0 = Date.now();
      let ok = 0;
      while (Date.now() - t0 < 8000 && ok === 0) ok = await c.ping(a, b, 1);
      assert.equal(ok, 1, 'traffic recovers after the device was deleted');
      const st = await b.stats();
      assert.equal(st['deviceRecreated'], 1);
    });
  });
});
