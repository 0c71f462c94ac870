// End to end over the udp backend: two nodes in network namespaces, one weftd each on the
// embedded lease store, pods behind cni0. Pods on different nodes ping both ways and move a
// few MB over TCP intact (sha256 on both ends); a destination inside the Network that no
// node leases gets "Destination Net Unreachable" from the node's TUN address. Everything
// again with --no-offloads. Afterwards the root namespace is unchanged and no namespace
// with the run's prefix is left.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { NetnsRun, rootSnapshot } from '../../src/netns/netns.ts';
import { Cluster, WEFT_TUN } from '../../src/netns/topology.ts';
import { cidrContains, cidrOverlaps, formatIpv4, parseIpv4 } from '../../src/routing/ipv4.ts';

const MB = 1024 * 1024;

function leftovers(prefix: string): string[] {
  try {
    return readdirSync('/run/netns').filter((n) => n.startsWith(`${prefix}-`));
  } catch {
    return [];
  }
}

for (const offloads of [true, false]) {
  const label = offloads ? 'offloads on' : '--no-offloads';
  void test(`udp backend, ${label}: two nodes, weftd on the embedded store`, async (t) => {
    const before = rootSnapshot();
    const run = new NetnsRun();
    const cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 2 });
    try {
      const [s1, s2] = await cluster.startWeftdAll({ backend: 'udp', noOffloads: !offloads });
      const n1 = cluster.node(1);
      const n2 = cluster.node(2);
      const [a0, a1] = n1.pods;
      const [b0, b1] = n2.pods;
      assert.ok(s1 && s2 && a0 && a1 && b0 && b1);

      await t.test(
        'each node leases its own subnet; subnet file, TUN and pods use MTU 1500 - 28',
        async () => {
          assert.ok(!cidrOverlaps(s1.subnet, s2.subnet), 'the two nodes got overlapping subnets');
          for (const s of [s1, s2]) {
            assert.ok(cidrContains(cluster.network, s.subnet.addr));
            assert.equal(s.mtu, 1472);
          }
          assert.equal(a0.addr, formatIpv4((s1.subnet.addr + 10) >>> 0));
          assert.equal((await run.exec(n1.ns, 'cat', [`/sys/class/net/${WEFT_TUN}/mtu`])).trim(), '1472');
          assert.equal((await cluster.execPod(b1, 'cat', ['/sys/class/net/eth0/mtu'])).trim(), '1472');
        },
      );

      await t.test('pods on different nodes ping both ways, also with full-size packets', async () => {
        // Peers' routes come from the lease watch: wait for first contact, then measure.
        await cluster.waitForPing(a0, b0.addr, 15_000);
        const there = await cluster.ping(a0, b0.addr, { count: 5 });
        assert.equal(there.received, 5, there.output);
        const back = await cluster.ping(b1, a1.addr, { count: 5 });
        assert.equal(back.received, 5, back.output);
        assert.ok([...there.rtts, ...back.rtts].every((r) => r > 0 && r < 500));
        const big = await cluster.ping(a1, b0.addr, { count: 3, size: 1472 - 28 });
        assert.equal(big.received, 3, big.output);
      });

      await t.test('4 MB over TCP each way arrive intact (sha256 on both ends)', async () => {
        const [x, y] = await Promise.all([
          cluster.tcpTransfer(a0, b1, 4 * MB),
          cluster.tcpTransfer(b0, a1, 4 * MB),
        ]);
        assert.equal(x.bytes, 4 * MB);
        assert.equal(x.receivedBytes, 4 * MB);
        assert.equal(x.receivedSha256, x.sentSha256);
        assert.equal(y.receivedBytes, 4 * MB);
        assert.equal(y.receivedSha256, y.sentSha256);
      });

      await t.test(
        'a destination in the Network without a lease: Destination Net Unreachable from the TUN address',
        async () => {
          const unknown = cluster.unleasedAddress();
          assert.ok(cidrContains(cluster.network, parseIpv4(unknown)));
          const tunAddr = await cluster.tunAddress(n1);
          const nr = await cluster.ping(a0, unknown, { count: 2, waitS: 1 });
          const status = (await cluster.httpGet(n1, '/status')).stdout;
          const counters = JSON.stringify(
            (JSON.parse(status) as { backendStats?: { counters?: { icmpUnreachableSent?: number } } })
              .backendStats?.counters?.icmpUnreachableSent,
          );
          const why = `weftd on n1 counted icmpUnreachableSent=${counters}; ping said:\n${nr.output}`;
          assert.equal(nr.received, 0, nr.output);
          assert.ok(
            nr.errors.some((e) => /Destination Net Unreachable/.test(e)),
            why,
          );
          assert.ok(
            nr.errorSources.every((src) => src === tunAddr),
            `ICMP not from ${tunAddr}: ${why}`,
          );
        },
      );

      await t.test('weftd stays up throughout', () => {
        for (const n of cluster.nodes) assert.equal(n.weftd?.child.exitCode, null, n.weftd?.output());
      });
    } finally {
      await cluster.destroy();
    }
    assert.deepEqual(leftovers(run.prefix), []);
    assert.equal(rootSnapshot(), before);
  });
}
