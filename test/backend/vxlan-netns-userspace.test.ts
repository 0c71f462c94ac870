// vxlan backend, userspace data plane, in network namespaces: userspace <-> userspace
// (ping + TCP both ways, hand-made bad frames dropped by reason) and mixed, userspace
// node A <-> Linux's vxlan driver on node B (ping + TCP both ways, tshark decode of what the
// userspace node sends; bursts of UDP datagrams both ways, coalesced into USO writes on the
// userspace node): wire compatibility with the kernel.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Cluster, FixtureNode } from './fixtures/cluster.ts';
import { VNI, assertCapturedVxlan, bothWays, vtepMac, withCluster } from './fixtures/vxlan-checks.ts';
import { takesTunnelGso } from '../../src/backend/tunnel-gso.ts';
import { udpTrain } from '../../src/netns/topology.ts';

/**
 * Userspace node A, Linux's vxlan driver on node B: ping and TCP both ways, and what A
 * writes decodes as VXLAN (tshark) and was answered; then `body`.
 */
async function withMixedCluster(body: (c: Cluster) => Promise<void>): Promise<void> {
  await withCluster(
    [
      { Type: 'vxlan', VNI, Dataplane: 'userspace' },
      { Type: 'vxlan', VNI, Dataplane: 'kernel' },
    ],
    async (c) => {
      await bothWays(c);
      await assertCapturedVxlan(c, c.node(0), c.node(1));
      await body(c);
    },
  );
}

void describe('vxlan in network namespaces (userspace data plane)', () => {
  void test('userspace <-> userspace: ping + TCP both ways, bad frames dropped by reason', async () => {
    const be = { Type: 'vxlan', VNI, Dataplane: 'userspace' };
    await withCluster([be, be], async (c) => {
      const link = await c.run.exec(c.node(0).ns, 'ip', ['-d', 'link', 'show', `weft.${VNI}`]);
      assert.match(link, /tun/);
      assert.match(link, /mtu 1450/);
      await bothWays(c);
      const st = await c.node(0).stats();
      const counters = st['counters'] as Record<string, number>;
      assert.ok(
        Object.values(counters).some((v) => v > 0),
        'forwarder counted traffic',
      );
      assert.deepEqual(st['dataplane'], { kernel: 0, userspace: 1 });

      // Bad frames from B's address reach A's forwarder and are dropped by reason.
      const [a, b] = [c.node(0), c.node(1)];
      const before = st['drops'] as Record<string, number>;
      const mac = (n: FixtureNode): string => vtepMac(n).replace(/:/g, '');
      const vni = (v: number): string => `08000000${v.toString(16).padStart(6, '0')}00`;
      // A minimal IPv4/ICMP header from B's pod to A's pod (never validated: dropped first).
      const inner = '450000240000400040010000' + '0a050202' + '0a050102' + '0800f7ff00000000';
      const frames = [
        vni(VNI + 1) + mac(a) + mac(b) + '0800' + inner, // wrong VNI
        vni(VNI) + '020000000001' + mac(b) + '0800' + inner, // not our VTEP MAC
        vni(VNI) + 'ffffffffffff' + mac(b) + '0800' + inner, // broadcast
        vni(VNI) + mac(a) + mac(b) + '0806' + inner, // ARP, not IPv4
        vni(VNI) + mac(a).slice(0, 8), // truncated
      ];
      const sender = new URL('./fixtures/send-udp.mjs', import.meta.url).pathname;
      assert.match(
        await c.run.exec(b.ns, process.execPath, [sender, a.underlayIp, '8472', ...frames]),
        /sent 5/,
      );
      let after: Record<string, number> = before;
      const t0 = Date.now();
      while (Date.now() - t0 < 3000) {
        after = (await a.stats())['drops'] as Record<string, number>;
        if ((after['truncated'] ?? 0) > (before['truncated'] ?? 0)) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      const delta = (k: string): number => (after[k] ?? 0) - (before[k] ?? 0);
      assert.equal(delta('wrongVni'), 1);
      assert.equal(delta('wrongMac'), 2);
      assert.equal(delta('wrongEtherType'), 1);
      assert.equal(delta('truncated'), 1);
    });
  });

  void test('mixed: userspace node A <-> kernel VXLAN node B, ping + TCP both ways, tshark decode', async () => {
    await withMixedCluster(async (c) => {
      const a = await c.node(0).stats();
      const b = await c.node(1).stats();
      assert.deepEqual(a['dataplane'], { kernel: 0, userspace: 1 });
      assert.deepEqual(b['dataplane'], { kernel: 1, userspace: 0 });
      // On veth, Linux's vxlan hands the userspace node whole TCP super-packets (one
      // datagram each, inner checksum partial): they must have gone to the TUN as GSO writes.
      const io = a as { tunIo?: Record<string, number> };
      assert.ok((io.tunIo?.['gsoWrites'] ?? 0) > 0, `written as GSO: ${JSON.stringify(io.tunIo)}`);
    });
  });

  void test('mixed: bursts of UDP datagrams both ways arrive intact; the userspace node writes runs from Linux vxlan as one USO write', async () => {
    await withMixedCluster(async (c) => {
      const [a, b] = [c.node(0), c.node(1)];
      const at = (n: FixtureNode) => ({ name: `pod of node ${n.index}`, ns: n.podNs, addr: n.podIp });
      const coalesced = async (): Promise<{ writes: number; segments: number }> => {
        const io = (await a.stats()) as { tunIo?: Record<string, number> };
        return {
          writes: io.tunIo?.['coalescedWrites'] ?? NaN,
          segments: io.tunIo?.['coalescedSegments'] ?? NaN,
        };
      };
      // Linux's vxlan over veth leaves small packets' inner checksums partial: the runs
      // must still arrive with every checksum right (the receiver's kernel checks them).
      const sizes = [64, 1400, 200, 4, 900, 64];
      const before = await coalesced();
      const toA = await udpTrain(c.run, at(b), at(a), sizes, 64, 21000);
      const after = await coalesced();
      const toB = await udpTrain(c.run, at(a), at(b), sizes, 64, 21001);
      for (const [dir, r] of [
        ['kernel -> userspace', toA],
        ['userspace -> kernel', toB],
      ] as const) {
        assert.equal(r.sent, sizes.length * 64, dir);
        assert.equal(r.corrupt, 0, `${dir}: every datagram has its own length and contents`);
        assert.equal(r.duplicates, 0, dir);
        assert.equal(r.received, r.sent, `${dir}: none lost`);
      }
      const writes = after.writes - before.writes;
      if (process.env.WEFT_TEST_OFFLOADS !== '0') {
        assert.ok(writes > 0, 'runs from Linux vxlan were coalesced');
        assert.ok(after.segments - before.segments >= 2 * writes);
      }
    });
  });

  void test("mixed, the userspace node without offloads: Linux vxlan's whole super-packets are cut before its TUN", async () => {
    process.env.WEFT_TEST_OFFLOADS = '0';
    try {
      await withMixedCluster(async (c) => {
        // Its TUN takes no vnet header: each whole datagram from B was segmented here, and
        // B's partial checksums (small packets) were completed here.
        const io = (await c.node(0).stats()) as { tunIo?: Record<string, number> };
        assert.ok((io.tunIo?.['segmentedWrites'] ?? 0) > 0, `segmented: ${JSON.stringify(io.tunIo)}`);
        assert.ok((io.tunIo?.['partialCsumWrites'] ?? 0) > 0, `completed: ${JSON.stringify(io.tunIo)}`);
        assert.equal(io.tunIo?.['gsoWrites'], 0);
        assert.equal(
          takesTunnelGso(c.node(0).lease.attrs.backendData),
          false,
          'it does not say it takes them',
        );
      });
    } finally {
      delete process.env.WEFT_TEST_OFFLOADS;
    }
  });

  void test('mixed, the userspace node with tunnel GSO: Linux vxlan takes its whole super-packets', async () => {
    process.env.WEFT_TEST_TUNNEL_GSO = '1';
    try {
      await withMixedCluster(async (c) => {
        // A's TCP left as whole super-packets through its TAP, and B's kernel vxlan device
        // (the only reader there) delivered them: bothWays checked every byte came back.
        const io = (await c.node(0).stats()) as { connIo?: Record<string, number> };
        assert.ok((io.connIo?.['tunnelWrites'] ?? 0) > 0, `tunnel writes: ${JSON.stringify(io.connIo)}`);
        assert.equal(io.connIo?.['tunnelErrors'], 0);
        assert.equal(io.connIo?.['tunnelFallbacks'], 0);
      });
    } finally {
      delete process.env.WEFT_TEST_TUNNEL_GSO;
    }
  });
});
