// Unit tests of the host-gw backend against RecordingKernel: exact route operations, the
// refusal of peers that are not on a connected subnet, route repair and stale sweep.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createHostGwBackend, planHostGwPeer } from '../../src/backend/hostgw/hostgw.ts';
import { RecordingKernel } from '../../src/kernel/recording.ts';
import { parseCidr, parseIpv4 } from '../../src/routing/ipv4.ts';
import { context, lease } from './fixtures/context.ts';

function kernelWithUnderlay(): RecordingKernel {
  const k = new RecordingKernel();
  k.addDevice('eth0', [{ addr: parseIpv4('198.18.0.1'), prefix: 24 }], 9000);
  return k;
}

async function started(k: RecordingKernel) {
  const ctx = context({ Type: 'host-gw' }, { mtu: 9000 });
  const b = createHostGwBackend(ctx, { kernel: k, checkIntervalMs: 0, retryMs: 20 });
  const prepared = await b.prepare();
  await b.start(lease('10.5.1.0/24', '198.18.0.1', 'host-gw', null), new AbortController().signal);
  return { b, prepared };
}

void test('prepare: host-gw, null BackendData, MTU = underlay MTU', async () => {
  const { b, prepared } = await started(kernelWithUnderlay());
  assert.deepEqual(prepared, { backendType: 'host-gw', backendData: null, mtu: 9000 });
  await b.stop();
});

void test('peer add/remove: route via the peer public IP, removed when the peer goes', async () => {
  const k = kernelWithUnderlay();
  const { b } = await started(k);
  const peer = lease('10.5.2.0/24', '198.18.0.2', 'host-gw', null);
  b.applyPeers([{ type: 'added', lease: peer }]);
  await b.settled();
  assert.deepEqual(k.ops, ['ip route replace 10.5.2.0/24 via 198.18.0.2 dev eth0']);
  assert.deepEqual(await k.listRoutes('eth0'), [
    { dst: parseCidr('10.5.2.0/24'), via: parseIpv4('198.18.0.2'), dev: 'eth0' },
  ]);
  k.clearOps();
  b.applyPeers([{ type: 'removed', lease: peer }]);
  await b.settled();
  assert.deepEqual(k.ops, ['ip route del 10.5.2.0/24 via 198.18.0.2 dev eth0']);
  assert.deepEqual(await k.listRoutes('eth0'), []);
  assert.equal(b.stats()['routesRemoved'], 1);
  await b.stop();
});

void test('a peer that is not on a connected subnet is refused: counted, no route', async () => {
  const k = kernelWithUnderlay();
  const { b } = await started(k);
  b.applyPeers([
    { type: 'added', lease: lease('10.5.3.0/24', '203.0.113.7', 'host-gw', null) },
    {
      type: 'added',
      lease: lease('10.5.4.0/24', '198.18.0.4', 'vxlan', { VNI: 1, VtepMAC: '0a:00:00:00:00:04' }),
    },
  ]);
  await b.settled();
  assert.deepEqual(k.ops, []);
  const s = b.stats();
  assert.equal(s['peersRefused'], 1);
  assert.equal(s['peerEventsRefused'], 1);
  assert.equal(s['peersIgnored'], 1);
  assert.equal(s['kernelFailures'], 0);
  const r = planHostGwPeer(lease('10.5.3.0/24', '203.0.113.7', 'host-gw', null), [
    { addr: parseIpv4('198.18.0.1'), prefix: 24 },
  ]);
  assert.ok('refused' in r && /not on a directly connected subnet/.test(r.refused));
  // The refused peer later moves onto our segment: now it is routed.
  b.applyPeers([{ type: 'added', lease: lease('10.5.3.0/24', '198.18.0.3', 'host-gw', null) }]);
  await b.settled();
  assert.deepEqual(k.ops, ['ip route replace 10.5.3.0/24 via 198.18.0.3 dev eth0']);
  assert.equal(b.stats()['peersRefused'], 0);
  await b.stop();
});

void test('stop removes every route it installed', async () => {
  const k = kernelWithUnderlay();
  const { b } = await started(k);
  b.applyPeers([
    { type: 'added', lease: lease('10.5.2.0/24', '198.18.0.2', 'host-gw', null) },
    { type: 'added', lease: lease('10.5.3.0/24', '198.18.0.3', 'host-gw', null) },
  ]);
  await b.settled();
  assert.equal((await k.listRoutes('eth0')).length, 2);
  await b.stop();
  assert.deepEqual(await k.listRoutes('eth0'), []);
});

void test('periodic check reinstalls a deleted route and sweeps stale routes inside the Network', async () => {
  const k = kernelWithUnderlay();
  const { b } = await started(k);
  b.applyPeers([{ type: 'added', lease: lease('10.5.2.0/24', '198.18.0.2', 'host-gw', null) }]);
  await b.settled();
  await k.apply([
    { op: 'route-del', route: { dst: parseCidr('10.5.2.0/24') } },
    {
      op: 'route-replace',
      route: { dst: parseCidr('10.5.9.0/24'), via: parseIpv4('198.18.0.9'), dev: 'eth0' },
    },
    {
      op: 'route-replace',
      route: { dst: parseCidr('172.16.0.0/24'), via: parseIpv4('198.18.0.9'), dev: 'eth0' },
    },
  ]);
  k.clearOps();
  b.check();
  await b.settled();
  assert.deepEqual(k.ops, [
    'ip route del 10.5.9.0/24 via 198.18.0.9 dev eth0',
    'ip route replace 10.5.2.0/24 via 198.18.0.2 dev eth0',
  ]);
  assert.equal(b.stats()['staleRemoved'], 1);
  await b.stop();
});
