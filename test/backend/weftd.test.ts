// End to end through the real daemon: two nodes in network namespaces, one weftd each on
// the embedded lease store (src/netns/topology.ts), pods behind cni0, for the vxlan backend
// (kernel and userspace data planes, DirectRouting) and host-gw. Pods ping both ways and move 2 MB each
// way over TCP intact; the subnet file carries the backend's MTU; weftd's kernel state is
// what flannel would program. Afterwards the root namespace is unchanged.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { NetnsRun, rootSnapshot } from '../../src/netns/netns.ts';
import { Cluster } from '../../src/netns/topology.ts';
import { formatCidr, formatIpv4 } from '../../src/routing/ipv4.ts';

const MB = 1024 * 1024;

const cases = [
  { name: 'vxlan, kernel data plane', backend: 'vxlan', options: { Dataplane: 'kernel' }, mtu: 1450 },
  { name: 'vxlan, userspace data plane', backend: 'vxlan', options: { Dataplane: 'userspace' }, mtu: 1450 },
  {
    name: 'vxlan, kernel data plane, DirectRouting',
    backend: 'vxlan',
    options: { Dataplane: 'kernel', DirectRouting: true },
    mtu: 1450,
  },
  { name: 'host-gw', backend: 'host-gw', options: {}, mtu: 1500 },
] as const;

for (const c of cases) {
  void test(`weftd ${c.name}: pods ping both ways and move 2 MB each way intact`, async () => {
    const before = rootSnapshot();
    const run = new NetnsRun();
    const cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 1 });
    try {
      const [s1, s2] = await cluster.startWeftdAll({ backend: c.backend, backendOptions: c.options });
      assert.ok(s1 && s2);
      assert.equal(s1.mtu, c.mtu);
      const n1 = cluster.node(1);
      const n2 = cluster.node(2);
      const a = n1.pods[0];
      const b = n2.pods[0];
      assert.ok(a && b);
      await cluster.waitForPing(a, b.addr, 15_000);
      const there = await cluster.ping(a, b.addr, { count: 3 });
      assert.equal(there.received, 3, there.output);
      const back = await cluster.ping(b, a.addr, { count: 3 });
      assert.equal(back.received, 3, back.output);
      const x = await cluster.tcpTransfer(a, b, 2 * MB);
      assert.equal(x.receivedBytes, 2 * MB);
      assert.equal(x.receivedSha256, x.sentSha256);
      const y = await cluster.tcpTransfer(b, a, 2 * MB);
      assert.equal(y.receivedBytes, 2 * MB);
      assert.equal(y.receivedSha256, y.sentSha256);

      const routes = await run.ip(n1.ns, 'route', 'show', formatCidr(s2.subnet));
      if (c.backend === 'host-gw' || 'DirectRouting' in c.options) {
        // Same L2 segment: a plain route via the peer's underlay address, no VXLAN state.
        assert.equal(routes.trim(), `${formatCidr(s2.subnet)} via ${n2.underlayIp} dev eth0`);
        if (c.backend === 'vxlan') {
          assert.equal((await run.ip(n1.ns, 'neigh', 'show', 'dev', 'weft.1')).trim(), '');
        }
      } else if (c.options.Dataplane === 'kernel') {
        const gw = formatIpv4(s2.subnet.addr);
        assert.equal(routes.trim(), `${formatCidr(s2.subnet)} via ${gw} dev weft.1 onlink`);
        const neigh = await run.ip(n1.ns, 'neigh', 'show', 'dev', 'weft.1');
        assert.match(neigh, new RegExp(`^${gw.replace(/\./g, '\\.')} lladdr [0-9a-f:]{17} PERMANENT`, 'm'));
      } else {
        assert.match(await run.ip(n1.ns, '-d', 'link', 'show', 'weft.1'), /tun/);
      }
    } finally {
      await cluster.destroy();
      assert.equal(rootSnapshot(), before, 'root namespace unchanged');
    }
  });
}
