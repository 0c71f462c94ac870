// The cluster builder on its own (no weftd): the kernel baselines the benchmark compares
// against carry pings and a checksummed TCP transfer, the subnet-file parser and the ping
// parser read real output, and nothing is left in the root namespace afterwards.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { existsSync } from 'node:fs';
import { NetnsRun, rootSnapshot } from '../../src/netns/netns.ts';
import {
  BASELINE_VXLAN,
  Cluster,
  parsePing,
  parseSubnetFile,
  summarizeLog,
} from '../../src/netns/topology.ts';
import { formatCidr, formatIpv4 } from '../../src/routing/ipv4.ts';

function leftovers(prefix: string): string[] {
  try {
    return readdirSync('/run/netns').filter((n) => n.startsWith(`${prefix}-`));
  } catch {
    return [];
  }
}

void test('parseSubnetFile reads flannel subnet.env', () => {
  const info = parseSubnetFile(
    'FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n',
  );
  assert.equal(formatCidr(info.network), '10.244.0.0/16');
  assert.equal(formatCidr(info.subnet), '10.244.3.0/24');
  assert.equal(formatIpv4(info.gateway), '10.244.3.1');
  assert.equal(info.mtu, 1472);
  assert.equal(info.ipMasq, false);
  assert.throws(() => parseSubnetFile('FLANNEL_NETWORK=10.244.0.0/16\n'), /FLANNEL_SUBNET/);
});

void test('parsePing reads replies and ICMP errors', () => {
  const out = [
    'PING 10.244.2.10 (10.244.2.10) 56(84) bytes of data.',
    '64 bytes from 10.244.2.10: icmp_seq=1 ttl=62 time=0.215 ms',
    'From 10.244.1.0 icmp_seq=2 Destination Net Unreachable',
    '64 bytes from 10.244.2.10: icmp_seq=3 ttl=62 time=1.50 ms',
  ].join('\n');
  const r = parsePing(out, 3);
  assert.deepEqual(r.rtts, [0.215, 1.5]);
  assert.equal(r.received, 2);
  assert.deepEqual(r.errorSources, ['10.244.1.0']);
  assert.match(r.errors[0] ?? '', /Destination Net Unreachable/);
});

void test('summarizeLog turns pino lines into level: msg: error', () => {
  const out = [
    'plain line',
    '{"level":30,"msg":"starting"}',
    '{"level":60,"msg":"weftd failed","err":{"message":"Backend.Type: bad"}}',
  ].join('\n');
  assert.equal(summarizeLog(out, 2), 'info: starting\nfatal: weftd failed: Backend.Type: bad');
  assert.equal(summarizeLog(out, 5).split('\n')[0], 'plain line');
});

for (const variant of ['direct routing', 'kernel VXLAN'] as const) {
  void test(`${variant}: pods on two nodes ping and move 2 MB intact; nothing left behind`, async () => {
    const before = rootSnapshot();
    const run = new NetnsRun();
    const cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 2 });
    try {
      if (variant === 'direct routing') await cluster.setupDirectRouting();
      else await cluster.setupKernelVxlan();

      const [a0, a1] = cluster.node(1).pods;
      const [b0] = cluster.node(2).pods;
      assert.ok(a0 && a1 && b0);
      assert.equal(a0.addr, '10.244.1.10');
      assert.equal(a1.addr, '10.244.1.11');
      assert.equal(b0.addr, '10.244.2.10');
      const mtu = (await cluster.execPod(b0, 'cat', ['/sys/class/net/eth0/mtu'])).trim();
      assert.equal(mtu, variant === 'kernel VXLAN' ? '1450' : '1500');
      if (variant === 'kernel VXLAN') {
        const link = await run.ip(cluster.node(1).ns, '-d', 'link', 'show', BASELINE_VXLAN);
        assert.match(link, /vxlan id 1 .*dstport 8472/);
      }

      const there = await cluster.ping(a0, b0.addr, { count: 3 });
      assert.equal(there.received, 3, there.output);
      assert.ok(there.rtts.every((r) => r > 0 && r < 1000));
      const back = await cluster.ping(b0, a1.addr, { count: 2 });
      assert.equal(back.received, 2, back.output);
      // Same node, through cni0 only.
      const local = await cluster.ping(a0, a1.addr, { count: 1 });
      assert.equal(local.received, 1, local.output);

      const x = await cluster.tcpTransfer(a0, b0, 2 * 1024 * 1024);
      assert.equal(x.bytes, 2 * 1024 * 1024);
      assert.equal(x.receivedBytes, x.bytes);
      assert.match(x.sentSha256, /^[0-9a-f]{64}$/);
      assert.equal(x.receivedSha256, x.sentSha256);
    } finally {
      await cluster.destroy();
    }
    assert.deepEqual(leftovers(run.prefix), []);
    assert.equal(existsSync(cluster.dir), false);
    assert.equal(rootSnapshot(), before);
  });
}

void test('iperf3 between pods reports a throughput', async () => {
  const run = new NetnsRun();
  const cluster = await Cluster.create(run, { nodes: 2 });
  try {
    await cluster.setupDirectRouting();
    const [a] = cluster.node(1).pods;
    const [b] = cluster.node(2).pods;
    assert.ok(a && b);
    const r = await cluster.iperf(a, b, 1);
    assert.ok(r.gbps > 0.1, `iperf3 gave ${r.gbps} Gbit/s`);
  } finally {
    await cluster.destroy();
  }
  assert.deepEqual(leftovers(run.prefix), []);
});
