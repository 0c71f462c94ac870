// The udp backend against twins (RecordingKernel, MemoryTun, MemoryConn on a MemoryNetwork):
// flannel's kernel setup as commands, peers into the forwarder, a packet from one node's TUN
// to the other's, teardown. (The real devices are covered by test/daemon/weftd-netns.test.ts.)
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { BackendContext } from '../../src/backend/backend.ts';
import { createBackend } from '../../src/backend/registry.ts';
import { UdpBackend } from '../../src/backend/udp/udp.ts';
import { MemoryNetwork } from '../../src/conn/memory-conn.ts';
import type { ConnOptions } from '../../src/conn/conn.ts';
import { validateNetConfig } from '../../src/daemon/netconf.ts';
import { RecordingKernel } from '../../src/kernel/recording.ts';
import type { Lease } from '../../src/lease/types.ts';
import { parseCidr, parseIpv4 } from '../../src/routing/ipv4.ts';
import { MemoryTun } from '../../src/tun/memory-tun.ts';
import { ConfigError } from '../../src/util/errors.ts';
import { silentLogger } from '../../src/util/log.ts';
import { buildIpv4 } from '../encap/packets.ts';

const network = validateNetConfig({ Network: '10.50.0.0/16', Backend: { Type: 'udp', Port: 9285 } });

function ctxFor(addr: string, mtu = 1500, offloads = true): BackendContext {
  return {
    network,
    underlay: { iface: 'eth0', addr: parseIpv4(addr), mtu },
    publicIp: parseIpv4(addr),
    stateDir: '/nonexistent',
    log: silentLogger(),
    offloads,
  };
}

function node(net: MemoryNetwork, addr: string, offloads = true) {
  const kernel = new RecordingKernel();
  let tun: MemoryTun | undefined;
  const opened: {
    tun?: { name: string; mtu: number; offloads: boolean; keepSuperPackets?: boolean };
    conn?: ConnOptions;
  } = {};
  const backend = new UdpBackend(ctxFor(addr, 1500, offloads), {
    kernel,
    tunName: 'wtest0',
    openTun: async (o) => {
      opened.tun = o;
      // Opening a TUN creates the device unless it survived a previous run.
      if (!(await kernel.listLinks()).some((l) => l.name === o.name)) {
        kernel.addDevice(o.name, [], 1500);
        kernel.externalModify(o.name, { kind: 'tun' });
      }
      tun = new MemoryTun({ name: o.name, mtu: o.mtu });
      return tun;
    },
    openConn: (o) => {
      opened.conn = o;
      return net.bind(o.bindAddr, o.port);
    },
  });
  return { kernel, backend, opened, tun: () => tun as MemoryTun };
}

const lease = (subnet: string, ip: string, backendType = 'udp'): Lease => ({
  subnet: parseCidr(subnet),
  attrs: { publicIp: ip, backendType, backendData: null },
  expiresAt: Infinity,
});

void test('prepare publishes flannel udp attrs and MTU underlay - 28; tiny underlays are refused', async () => {
  const b = new UdpBackend(ctxFor('198.18.0.1'), { kernel: new RecordingKernel() });
  // With offloads the node takes whole tunnel-GSO datagrams and says so; without, flannel's null.
  assert.deepEqual(await b.prepare(), { backendType: 'udp', backendData: { TunnelGSO: true }, mtu: 1472 });
  const plain = new UdpBackend(ctxFor('198.18.0.1', 1500, false), { kernel: new RecordingKernel() });
  assert.deepEqual(await plain.prepare(), { backendType: 'udp', backendData: null, mtu: 1472 });
  assert.equal(b.port, 9285);
  const dflt = new UdpBackend(
    { ...ctxFor('198.18.0.1'), network: validateNetConfig({ Network: '10.0.0.0/16' }) },
    { kernel: new RecordingKernel() },
  );
  assert.equal(dflt.port, 8285, 'flannel default port');
  await assert.rejects(
    Promise.resolve().then(() =>
      new UdpBackend(ctxFor('198.18.0.1', 600), { kernel: new RecordingKernel() }).prepare(),
    ),
    (err: unknown) => err instanceof ConfigError && /MTU 600/.test(err.message),
  );
});

void test('start configures the TUN like flannel, peers forward packets both ways, stop removes the device', async () => {
  const net = new MemoryNetwork();
  const a = node(net, '198.18.0.1');
  const b = node(net, '198.18.0.2', false);
  const la = lease('10.50.1.0/24', '198.18.0.1');
  const lb = lease('10.50.2.0/24', '198.18.0.2');
  for (const [n, l] of [
    [a, la],
    [b, lb],
  ] as const) {
    await n.backend.prepare();
    await n.backend.start(l, new AbortController().signal);
  }
  assert.deepEqual(a.kernel.ops, [
    'ip addr replace 10.50.1.0/32 dev wtest0',
    'ip link set wtest0 mtu 1472 txqueuelen 2000 up',
    'ip route replace 10.50.0.0/16 dev wtest0',
    'sysctl -w net/ipv4/conf/wtest0/accept_local=1',
  ]);
  // With offloads, TCP super-packets come up whole (sent whole or segmented by the socket).
  assert.deepEqual(a.opened.tun, { name: 'wtest0', mtu: 1472, offloads: true, keepSuperPackets: true });
  assert.deepEqual(a.opened.conn, { bindAddr: parseIpv4('198.18.0.1'), port: 9285, offloads: true });
  assert.equal(b.opened.tun?.offloads, false, '--no-offloads reaches the TUN');
  assert.equal(b.opened.tun?.keepSuperPackets, undefined, 'no super-packets without offloads');
  assert.equal(b.opened.conn?.offloads, false, '--no-offloads reaches the socket');

  a.backend.applyPeers([
    { type: 'added', lease: lb },
    { type: 'added', lease: lease('10.50.9.0/24', '198.18.0.9', 'vxlan') },
  ]);
  b.backend.applyPeers([{ type: 'added', lease: la }]);
  assert.equal(a.backend.stats().peers, 1, 'the vxlan peer is ignored');
  assert.equal(a.backend.stats().ignoredPeerEvents, 1);

  a.tun().inject(buildIpv4({ src: parseIpv4('10.50.1.5'), dst: parseIpv4('10.50.2.7'), ttl: 64 }));
  const deadline = Date.now() + 1000;
  while (b.tun().written.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  assert.equal(b.tun().written.length, 1, 'delivered to the peer TUN');
  const got = b.tun().written[0]!;
  assert.equal(got.readUInt32BE(16), parseIpv4('10.50.2.7'));
  assert.ok(got[8]! < 64, 'TTL decremented');

  // Removing the peer: packets to it are no longer sent.
  a.backend.applyPeers([{ type: 'removed', lease: lb }]);
  assert.equal(a.backend.stats().peers, 0);
  const counters = a.backend.stats().counters as Record<string, number>;
  assert.equal(typeof counters, 'object');

  a.kernel.clearOps();
  await a.backend.stop();
  await b.backend.stop();
  assert.deepEqual(a.kernel.ops, ['ip link del wtest0']);
  assert.equal((await a.kernel.getLink('wtest0')) === undefined, true);
  assert.equal(a.backend.stats().running, 0);
});

void test('a restarted backend replaces an old lease address on an existing TUN', async () => {
  const net = new MemoryNetwork();
  const n = node(net, '198.18.0.1');
  // Pretend weftd died and left wtest0 with the previous lease's address.
  n.kernel.addDevice('wtest0', [{ addr: parseIpv4('10.50.7.0'), prefix: 32 }]);
  n.kernel.externalModify('wtest0', { kind: 'tun' });
  await n.backend.start(lease('10.50.1.0/24', '198.18.0.1'), new AbortController().signal);
  assert.deepEqual(n.kernel.ops.slice(0, 2), [
    'ip addr del 10.50.7.0/32 dev wtest0',
    'ip addr replace 10.50.1.0/32 dev wtest0',
  ]);
  await n.backend.stop();
});

void test('the registry builds udp and refuses unknown types naming Backend.Type', async () => {
  const b = await createBackend('udp', ctxFor('198.18.0.1'), { tunName: 'wx0' });
  assert.ok(b instanceof UdpBackend);
  assert.equal(b.tunName, 'wx0');
  await assert.rejects(createBackend('ipip', ctxFor('198.18.0.1')), (err: unknown) => {
    assert.ok(err instanceof ConfigError);
    assert.equal(err.key, 'Backend.Type');
    assert.match(err.message, /"ipip" is not a backend weft has; use one of .*udp/);
    return true;
  });
});
