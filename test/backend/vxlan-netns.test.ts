// vxlan backend in network namespaces, two nodes each running the backend in a fixture
// process: kernel <-> kernel, userspace <-> userspace and mixed (userspace <-> Linux's
// vxlan driver). Each: ping and a TCP echo both ways between pod addresses. Kernel: peer
// removal removes its neighbour, FDB entry and route; a tshark capture decodes as VXLAN
// with our VNI and the two VTEP MACs.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { rootSnapshot } from '../../src/netns/netns.ts';
import { Cluster } from './fixtures/cluster.ts';
import type { FixtureNode } from './fixtures/cluster.ts';

const VNI = 42;

async function bothWays(c: Cluster): Promise<void> {
  const [a, b] = [c.node(0), c.node(1)];
  assert.equal(await c.ping(a, b), 3, 'ping A -> B');
  assert.equal(await c.ping(b, a), 3, 'ping B -> A');
  const ab = await c.tcp(a, b);
  assert.ok(ab.ok, `TCP A -> B: ${JSON.stringify(ab)}`);
  const ba = await c.tcp(b, a);
  assert.ok(ba.ok, `TCP B -> A: ${JSON.stringify(ba)}`);
  console.log(`# TCP echo 4 MiB each way: A->B ${ab.ms} ms, B->A ${ba.ms} ms`);
}

function vtepMac(n: FixtureNode): string {
  return (n.backendData as { VtepMAC: string }).VtepMAC;
}

async function withCluster(
  backends: Record<string, unknown>[],
  body: (c: Cluster) => Promise<void>,
): Promise<void> {
  const before = rootSnapshot();
  const c = await Cluster.create(backends);
  try {
    await body(c);
  } finally {
    await c.destroy();
    assert.equal(rootSnapshot(), before, 'root namespace unchanged');
  }
}

/**
 * Captures one datagram from `a` to `b` on b's underlay with tshark while a's pod pings b's,
 * and checks it decodes as VXLAN with our VNI, inner dst = b's VTEP MAC, src = a's, IPv4.
 */
async function assertCapturedVxlan(c: Cluster, a: FixtureNode, b: FixtureNode): Promise<void> {
  const cap = c.run.spawn(b.ns, 'tshark', [
    '-i',
    'eth0',
    '-c',
    '1',
    '-f',
    `udp dst port 8472 and src host ${a.underlayIp}`,
    '-d',
    'udp.port==8472,vxlan',
    '-T',
    'json',
    '--no-duplicate-keys',
    '-l',
  ]);
  let stdout = '';
  cap.child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  const started = Date.now();
  while (!cap.output().includes('Capturing on') && Date.now() - started < 15_000) {
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(await c.ping(a, b, 2), 2);
  const code = await Promise.race([cap.exited, new Promise((r) => setTimeout(() => r('timeout'), 15_000))]);
  assert.equal(code, 0, `tshark: ${cap.output()}`);
  const json = JSON.parse(stdout) as { _source: { layers: Record<string, unknown> } }[];
  const layers = json[0]?._source.layers as Record<string, Record<string, string> | Record<string, string>[]>;
  const vx = layers['vxlan'] as Record<string, string>;
  assert.equal(vx['vxlan.vni'], String(VNI));
  const eth = layers['eth'] as Record<string, string>[];
  assert.ok(Array.isArray(eth) && eth.length === 2, 'outer and inner Ethernet');
  assert.equal(eth[1]?.['eth.dst'], vtepMac(b), 'inner dst = receiver VTEP MAC');
  assert.equal(eth[1]?.['eth.src'], vtepMac(a), 'inner src = sender VTEP MAC');
  assert.equal(eth[1]?.['eth.type'], '0x0800');
  const ips = layers['ip'] as Record<string, string>[];
  assert.equal(ips[0]?.['ip.src'], a.underlayIp);
  assert.equal(ips[1]?.['ip.src'], a.podIp);
  assert.equal(ips[1]?.['ip.dst'], b.podIp);
}

void describe('vxlan in network namespaces', () => {
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
    await withCluster(
      [
        { Type: 'vxlan', VNI, Dataplane: 'userspace' },
        { Type: 'vxlan', VNI, Dataplane: 'kernel' },
      ],
      async (c) => {
        await bothWays(c);
        // What the userspace node writes decodes as VXLAN, and Linux's driver answered it.
        await assertCapturedVxlan(c, c.node(0), c.node(1));
        const a = await c.node(0).stats();
        const b = await c.node(1).stats();
        assert.deepEqual(a['dataplane'], { kernel: 0, userspace: 1 });
        assert.deepEqual(b['dataplane'], { kernel: 1, userspace: 0 });
      },
    );
  });
});
