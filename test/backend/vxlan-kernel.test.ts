// Unit tests of the vxlan backend against RecordingKernel: exact kernel operations per
// peer add/remove, DirectRouting, device replacement and recreation, VTEP MAC persistence,
// data plane selection and option validation.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { RecordingKernel } from '../../src/kernel/recording.ts';
import { parseIpv4 } from '../../src/routing/ipv4.ts';
import { parseVxlanOptions } from '../../src/backend/vxlan/options.ts';
import type { UserspacePlaneFactory } from '../../src/backend/vxlan/vxlan.ts';
import { createVxlanBackend } from '../../src/backend/vxlan/vxlan.ts';
import { isUsableMac, loadOrCreateVtepMac, randomVtepMac } from '../../src/backend/vxlan/vtep-mac.ts';
import type { VxlanDataplane } from '../../src/backend/vxlan/dataplane.ts';
import type { VxlanPeerPlan } from '../../src/backend/vxlan/plan.ts';
import { macBytes, planVxlanPeer, samePlan } from '../../src/backend/vxlan/plan.ts';
import { sameAsPeer } from '../../src/backend/vxlan/userspace-plane.ts';
import { ConfigError } from '../../src/util/errors.ts';
import { context, lease } from './fixtures/context.ts';

const MAC_B = '0a:00:00:00:00:0b';
const MAC_C = '0a:00:00:00:00:0c';

function kernelWithUnderlay(): RecordingKernel {
  const k = new RecordingKernel();
  k.addDevice('eth0', [{ addr: parseIpv4('198.18.0.1'), prefix: 24 }]);
  return k;
}

async function started(backend: Record<string, unknown>, k: RecordingKernel, stateDir?: string) {
  const ctx = context({ Type: 'vxlan', ...backend }, stateDir ? { stateDir } : {});
  const b = createVxlanBackend(ctx, { kernel: k, checkIntervalMs: 0, retryMs: 20 });
  const prepared = await b.prepare();
  const ac = new AbortController();
  await b.start(lease('10.5.1.0/24', '198.18.0.1', 'vxlan', prepared.backendData), ac.signal);
  return { b, prepared, ac, mac: b.vtepMac as string };
}

void test('prepare publishes flannel BackendData (plus TunnelGSO) and MTU underlay - 50', async () => {
  const k = kernelWithUnderlay();
  const { b, prepared } = await started({}, k);
  assert.equal(prepared.backendType, 'vxlan');
  assert.equal(prepared.mtu, 1450);
  const data = prepared.backendData as { VNI: number; VtepMAC: string };
  // flannel's two keys first; weft adds that Linux's vxlan takes whole tunnel-GSO datagrams
  // (flannel ignores keys it does not know).
  assert.deepEqual(Object.keys(data), ['VNI', 'VtepMAC', 'TunnelGSO']);
  assert.equal(data.VNI, 1);
  assert.ok(isUsableMac(data.VtepMAC));
  assert.equal(JSON.stringify(data), `{"VNI":1,"VtepMAC":"${data.VtepMAC}","TunnelGSO":true}`);
  await b.stop();
});

void test('a peer plan says whether the peer takes whole tunnel-GSO datagrams; only the forwarder peer depends on it', () => {
  const ctx = { dev: 'weft.1', underlay: 'eth0', vni: 1, directRouting: false, connected: [] };
  const plan = (data: unknown): VxlanPeerPlan => {
    const r = planVxlanPeer(lease('10.5.2.0/24', '198.18.0.2', 'vxlan', data), ctx);
    assert.ok('plan' in r, JSON.stringify(r));
    return r.plan;
  };
  const flannel = plan({ VNI: 1, VtepMAC: MAC_B });
  const weft = plan({ VNI: 1, VtepMAC: MAC_B, TunnelGSO: true });
  assert.equal(flannel.tunnelGso, false);
  assert.equal(weft.tunnelGso, true);
  assert.equal(samePlan(flannel, weft), true, 'the same kernel state');
  // The userspace plane replaces its forwarder peer when the flag changes.
  const peer = { id: 0, subnet: weft.subnet, publicIp: weft.publicIp, port: 0, leaseKey: weft.key };
  const asPeer = (p: VxlanPeerPlan, tunnelGso: boolean) => ({ ...peer, vtepMac: macBytes(p.mac), tunnelGso });
  assert.equal(sameAsPeer(weft, asPeer(weft, true)), true);
  assert.equal(sameAsPeer(weft, asPeer(weft, false)), false);
  assert.equal(sameAsPeer(flannel, asPeer(flannel, true)), false);
  assert.equal(sameAsPeer(flannel, { ...peer, vtepMac: macBytes(flannel.mac) }), true, 'absent = no');
});

void test('device creation: exact operations, as flannel', async () => {
  const k = kernelWithUnderlay();
  const { b, mac } = await started({ VNI: 7, Port: 4789 }, k);
  assert.deepEqual(k.ops, [
    `ip link add weft.7 address ${mac} mtu 1450 type vxlan id 7 local 198.18.0.1 dev eth0 dstport 4789 nolearning`,
    'ip addr replace 10.5.1.0/32 dev weft.7',
    'ip link set weft.7 mtu 1450 up',
  ]);
  const link = await k.getLink('weft.7');
  assert.equal(link?.vxlan?.vni, 7);
  assert.equal(link?.up, true);
  await b.stop();
  assert.equal(await k.getLink('weft.7'), undefined);
  assert.equal(k.ops.at(-1), 'ip link del weft.7');
});

void test('peer add and remove: neighbour, FDB, onlink route, then the reverse', async () => {
  const k = kernelWithUnderlay();
  const { b } = await started({}, k);
  k.clearOps();
  const peer = lease('10.5.2.0/24', '198.18.0.2', 'vxlan', { VNI: 1, VtepMAC: MAC_B });
  b.applyPeers([{ type: 'added', lease: peer }]);
  await b.settled();
  assert.deepEqual(k.ops, [
    `ip neigh replace 10.5.2.0 lladdr ${MAC_B} dev weft.1 nud permanent`,
    `bridge fdb append ${MAC_B} dev weft.1 dst 198.18.0.2`,
    'ip route replace 10.5.2.0/24 via 10.5.2.0 dev weft.1 onlink',
  ]);
  assert.equal(b.stats()['peers'], 1);
  k.clearOps();
  b.applyPeers([{ type: 'removed', lease: peer }]);
  await b.settled();
  assert.deepEqual(k.ops, [
    'ip route del 10.5.2.0/24 via 10.5.2.0 dev weft.1 onlink',
    `bridge fdb del ${MAC_B} dev weft.1 dst 198.18.0.2`,
    'ip neigh del 10.5.2.0 dev weft.1',
  ]);
  assert.deepEqual(await k.listRoutes('weft.1'), []);
  assert.deepEqual(await k.listNeighs('weft.1'), []);
  assert.deepEqual(await k.listFdb('weft.1'), []);
  assert.equal(b.stats()['peers'], 0);
  await b.stop();
});

/** The kernel operations when peer 10.5.2.0/24's BackendData changes from `before` to `after`. */
async function opsOfChange(before: unknown, after: unknown): Promise<string[]> {
  const k = kernelWithUnderlay();
  const { b } = await started({}, k);
  const peer = (data: unknown) => lease('10.5.2.0/24', '198.18.0.2', 'vxlan', data);
  b.applyPeers([{ type: 'added', lease: peer(before) }]);
  await b.settled();
  k.clearOps();
  b.applyPeers([{ type: 'added', lease: peer(after) }]);
  await b.settled();
  const ops = [...k.ops];
  await b.stop();
  return ops;
}

void test('a peer whose lease only starts saying TunnelGSO changes nothing in the kernel', async () => {
  const ops = await opsOfChange({ VNI: 1, VtepMAC: MAC_B }, { VNI: 1, VtepMAC: MAC_B, TunnelGSO: true });
  assert.deepEqual(ops, [], 'route, neighbour and FDB entry stay as they are');
});

void test('a peer whose VTEP MAC changes is removed with the old MAC and added with the new', async () => {
  assert.deepEqual(await opsOfChange({ VNI: 1, VtepMAC: MAC_B }, { VNI: 1, VtepMAC: MAC_C }), [
    'ip route del 10.5.2.0/24 via 10.5.2.0 dev weft.1 onlink',
    `bridge fdb del ${MAC_B} dev weft.1 dst 198.18.0.2`,
    'ip neigh del 10.5.2.0 dev weft.1',
    `ip neigh replace 10.5.2.0 lladdr ${MAC_C} dev weft.1 nud permanent`,
    `bridge fdb append ${MAC_C} dev weft.1 dst 198.18.0.2`,
    'ip route replace 10.5.2.0/24 via 10.5.2.0 dev weft.1 onlink',
  ]);
});

void test('DirectRouting: same-L2 peer gets a plain route, a remote peer gets VXLAN', async () => {
  const k = kernelWithUnderlay();
  const { b } = await started({ DirectRouting: true }, k);
  k.clearOps();
  const near = lease('10.5.2.0/24', '198.18.0.2', 'vxlan', { VNI: 1, VtepMAC: MAC_B });
  const far = lease('10.5.3.0/24', '203.0.113.9', 'vxlan', { VNI: 1, VtepMAC: MAC_C });
  b.applyPeers([
    { type: 'added', lease: near },
    { type: 'added', lease: far },
  ]);
  await b.settled();
  assert.deepEqual(k.ops, [
    'ip route replace 10.5.2.0/24 via 198.18.0.2 dev eth0',
    `ip neigh replace 10.5.3.0 lladdr ${MAC_C} dev weft.1 nud permanent`,
    `bridge fdb append ${MAC_C} dev weft.1 dst 203.0.113.9`,
    'ip route replace 10.5.3.0/24 via 10.5.3.0 dev weft.1 onlink',
  ]);
  k.clearOps();
  b.applyPeers([{ type: 'removed', lease: near }]);
  await b.settled();
  assert.deepEqual(k.ops, ['ip route del 10.5.2.0/24 via 198.18.0.2 dev eth0']);
  await b.stop();
});

void test('peers that are not vxlan, have no MAC or another VNI are ignored and counted', async () => {
  const k = kernelWithUnderlay();
  const { b } = await started({}, k);
  k.clearOps();
  b.applyPeers([
    { type: 'added', lease: lease('10.5.2.0/24', '198.18.0.2', 'udp', null) },
    { type: 'added', lease: lease('10.5.3.0/24', '198.18.0.3', 'vxlan', { VNI: 1 }) },
    { type: 'added', lease: lease('10.5.4.0/24', '198.18.0.4', 'vxlan', { VNI: 2, VtepMAC: MAC_B }) },
    {
      type: 'added',
      lease: lease('10.5.5.0/24', '198.18.0.5', 'vxlan', { VNI: 1, VtepMAC: 'ff:ff:ff:ff:ff:ff' }),
    },
  ]);
  await b.settled();
  assert.deepEqual(k.ops, []);
  assert.equal(b.stats()['peersIgnored'], 4);
  await b.stop();
});

void test('an existing device with wrong settings is replaced; a compatible one is kept', async () => {
  const k = kernelWithUnderlay();
  const first = await started({}, k);
  // Stop the backend without deleting the device: simulate a crash by dropping it.
  first.ac.abort();
  k.clearOps();
  const again = await started({}, k, undefined);
  // A new state dir means a new MAC: the device must be replaced.
  assert.equal(k.ops[0], 'ip link del weft.1');
  assert.match(k.ops[1] as string, /^ip link add weft\.1 address /);
  await again.b.stop();

  const stateDir = mkdtempSync(join(tmpdir(), 'weft-vx-'));
  const k2 = kernelWithUnderlay();
  const a = await started({}, k2, stateDir);
  a.ac.abort();
  k2.clearOps();
  const b = await started({}, k2, stateDir);
  assert.deepEqual(k2.ops, [], 'same MAC, same settings: the device is kept untouched');
  k2.externalModify('weft.1', {
    vxlan: { vni: 1, local: parseIpv4('198.18.0.1'), dev: 'eth0', port: 4789, learning: false },
  });
  k2.clearOps();
  const c = await started({}, k2, stateDir);
  assert.equal(k2.ops[0], 'ip link del weft.1');
  await Promise.all([b.b.stop(), c.b.stop()]);
});

void test('a deleted device is recreated and every peer reinstalled', async () => {
  const k = kernelWithUnderlay();
  const { b, mac } = await started({}, k);
  b.applyPeers([
    { type: 'added', lease: lease('10.5.2.0/24', '198.18.0.2', 'vxlan', { VNI: 1, VtepMAC: MAC_B }) },
  ]);
  await b.settled();
  k.externalDelete('weft.1');
  k.clearOps();
  b.check();
  await b.settled();
  assert.deepEqual(k.ops, [
    `ip link add weft.1 address ${mac} mtu 1450 type vxlan id 1 local 198.18.0.1 dev eth0 dstport 8472 nolearning`,
    'ip addr replace 10.5.1.0/32 dev weft.1',
    'ip link set weft.1 mtu 1450 up',
    `ip neigh replace 10.5.2.0 lladdr ${MAC_B} dev weft.1 nud permanent`,
    `bridge fdb append ${MAC_B} dev weft.1 dst 198.18.0.2`,
    'ip route replace 10.5.2.0/24 via 10.5.2.0 dev weft.1 onlink',
  ]);
  assert.equal(b.stats()['deviceRecreated'], 1);
  await b.stop();
});

void test('a vanished route is reinstalled and stale entries are swept by the periodic check', async () => {
  const k = kernelWithUnderlay();
  const { b } = await started({}, k);
  b.applyPeers([
    { type: 'added', lease: lease('10.5.2.0/24', '198.18.0.2', 'vxlan', { VNI: 1, VtepMAC: MAC_B }) },
  ]);
  await b.settled();
  // Someone removes our route and adds a stray neighbour + FDB entry.
  await k.apply([
    { op: 'route-del', route: { dst: { addr: parseIpv4('10.5.2.0'), prefix: 24 } } },
    { op: 'neigh-replace', neigh: { addr: parseIpv4('10.5.9.0'), lladdr: MAC_C, dev: 'weft.1' } },
    { op: 'fdb-append', fdb: { mac: MAC_C, dev: 'weft.1', dst: parseIpv4('198.18.0.9') } },
  ]);
  k.clearOps();
  b.check();
  await b.settled();
  assert.deepEqual(k.ops, [
    `bridge fdb del ${MAC_C} dev weft.1 dst 198.18.0.9`,
    'ip neigh del 10.5.9.0 dev weft.1',
    `ip neigh replace 10.5.2.0 lladdr ${MAC_B} dev weft.1 nud permanent`,
    `bridge fdb append ${MAC_B} dev weft.1 dst 198.18.0.2`,
    'ip route replace 10.5.2.0/24 via 10.5.2.0 dev weft.1 onlink',
  ]);
  await b.stop();
});

void test('a failing kernel operation is retried without blocking other peers', async () => {
  const k = kernelWithUnderlay();
  const { b } = await started({}, k);
  k.failOnce = /10\.5\.2\.0\/24/;
  b.applyPeers([
    { type: 'added', lease: lease('10.5.2.0/24', '198.18.0.2', 'vxlan', { VNI: 1, VtepMAC: MAC_B }) },
    { type: 'added', lease: lease('10.5.3.0/24', '198.18.0.3', 'vxlan', { VNI: 1, VtepMAC: MAC_C }) },
  ]);
  await b.settled();
  assert.equal(b.stats()['peers'], 1);
  assert.equal(b.stats()['kernelFailures'], 1);
  const deadline = Date.now() + 2000;
  while (b.stats()['peers'] !== 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  await b.settled();
  assert.equal(b.stats()['peers'], 2);
  assert.equal((await k.listRoutes('weft.1')).length, 2);
  await b.stop();
});

void test('VTEP MAC is generated once, locally administered unicast, and kept across restarts', () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-mac-'));
  const m1 = loadOrCreateVtepMac(dir);
  const first = parseInt(m1.slice(0, 2), 16);
  assert.equal(first & 0x02, 0x02, 'locally administered bit set');
  assert.equal(first & 0x01, 0, 'unicast');
  assert.equal(readFileSync(join(dir, 'vtep-mac'), 'utf8').trim(), m1);
  assert.equal(loadOrCreateVtepMac(dir), m1);
  writeFileSync(join(dir, 'vtep-mac'), 'garbage\n');
  const m2 = loadOrCreateVtepMac(dir);
  assert.notEqual(m2, m1);
  assert.ok(isUsableMac(m2));
  for (let i = 0; i < 200; i++) assert.ok(isUsableMac(randomVtepMac()));
});

void test('VTEP MAC survives a backend restart (same lease data)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-mac-'));
  const k = kernelWithUnderlay();
  const a = await started({}, k, dir);
  await a.b.stop();
  const b = await started({}, k, dir);
  assert.deepEqual(b.prepared.backendData, a.prepared.backendData);
  await b.b.stop();
});

function fakeUserspace(calls: string[]): UserspacePlaneFactory {
  return (p) => {
    calls.push(`userspace ${p.plan.dev} mtu ${p.mtu}`);
    const peers = new Map<string, VxlanPeerPlan>();
    const plane: VxlanDataplane = {
      kind: 'userspace',
      device: p.plan.dev,
      start: () => Promise.resolve(),
      setPeer: (key, plan) => (plan ? peers.set(key, plan) : peers.delete(key)),
      commit: () => undefined,
      settled: () => Promise.resolve(),
      stats: () => ({ peers: peers.size }),
      stop: () => Promise.resolve(),
    };
    return Promise.resolve(plane);
  };
}

void test('Dataplane selection: auto follows the vxlan module, explicit values are obeyed', async () => {
  for (const [dp, module, want] of [
    ['auto', true, 'kernel'],
    ['auto', false, 'userspace'],
    ['kernel', false, 'kernel'],
    ['userspace', true, 'userspace'],
    [undefined, true, 'kernel'],
  ] as const) {
    const k = kernelWithUnderlay();
    k.vxlanModule = module;
    const calls: string[] = [];
    const ctx = context({ Type: 'vxlan', ...(dp ? { Dataplane: dp } : {}) });
    const b = createVxlanBackend(ctx, {
      kernel: k,
      checkIntervalMs: 0,
      userspacePlane: fakeUserspace(calls),
    });
    const prepared = await b.prepare();
    assert.equal(b.dataplane, want, `${dp} with module=${module}`);
    const stats = b.stats()['dataplane'] as Record<string, number>;
    assert.equal(stats[want], 1);
    assert.equal(stats[want === 'kernel' ? 'userspace' : 'kernel'], 0);
    await b.start(
      lease('10.5.1.0/24', '198.18.0.1', 'vxlan', prepared.backendData),
      new AbortController().signal,
    );
    if (want === 'userspace') {
      assert.deepEqual(calls, ['userspace weft.1 mtu 1450']);
      assert.deepEqual(k.ops, [], 'the userspace plane creates no VXLAN device');
      b.applyPeers([
        { type: 'added', lease: lease('10.5.2.0/24', '198.18.0.2', 'vxlan', { VNI: 1, VtepMAC: MAC_B }) },
      ]);
      assert.equal(b.stats()['peers'], 1);
    } else {
      assert.deepEqual(calls, []);
      assert.match(k.ops[0] as string, /^ip link add weft\.1 /);
    }
    await b.stop();
  }
});

void test('options: defaults, explicit MTU and clear errors', () => {
  assert.deepEqual(parseVxlanOptions({ type: 'vxlan' }), {
    vni: 1,
    port: 8472,
    directRouting: false,
    mtu: undefined,
    dataplane: 'auto',
  });
  assert.equal(parseVxlanOptions({ type: 'vxlan', MTU: 1400 }).mtu, 1400);
  assert.throws(() => parseVxlanOptions({ type: 'vxlan', VNI: -1 }), ConfigError);
  assert.throws(() => parseVxlanOptions({ type: 'vxlan', Port: 70000 }), /Backend\.Port/);
  assert.throws(() => parseVxlanOptions({ type: 'vxlan', Dataplane: 'dpdk' }), /Backend\.Dataplane/);
  assert.throws(() => parseVxlanOptions({ type: 'vxlan', DirectRouting: 'yes' }), /DirectRouting/);
});

void test('explicit MTU reaches the device and the prepared MTU', async () => {
  const k = kernelWithUnderlay();
  const { b, prepared } = await started({ MTU: 1400 }, k);
  assert.equal(prepared.mtu, 1400);
  assert.equal((await k.getLink('weft.1'))?.mtu, 1400);
  await b.stop();
});
