// The etcd store on a real 3-member cluster: kill the leader (SIGKILL) while two nodes hold
// leases and watch. Nothing may be lost: both leases stay, renew succeeds after the
// election (etcd stalls a request ~7 s), and the watches resume and see a node joining later.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EtcdLeaseStore } from '../../src/lease/etcd/store.ts';
import { subnetKey } from '../../src/lease/etcd/codec.ts';
import type { LeaseAttrs } from '../../src/lease/types.ts';
import { cidrToKey } from '../../src/routing/ipv4.ts';
import { startEtcd } from '../support/etcd.ts';
import { EventLog } from './contract.ts';

const attrs = (n: number): LeaseAttrs => ({
  publicIp: `198.18.7.${n}`,
  publicIpv6: null,
  backendType: 'vxlan',
  backendData: { VNI: 1, VtepMAC: `aa:bb:cc:dd:ee:0${n}` },
});

void test('leader killed: no lease lost, renew succeeds after the election, watches resume', async (t) => {
  const cluster = await startEtcd({ members: 3 });
  t.after(() => cluster.stop());
  const prefix = '/coreos.com/network';
  await cluster.etcdctl([
    'put',
    `${prefix}/config`,
    JSON.stringify({ Network: '10.70.0.0/16', Backend: { Type: 'vxlan' } }),
  ]);
  const make = (): EtcdLeaseStore => new EtcdLeaseStore({ endpoints: cluster.endpoints, prefix });
  const a = make();
  const b = make();
  const c = make();
  t.after(() => Promise.all([a.close(), b.close(), c.close()]));

  const la = await a.acquire(attrs(1));
  const lb = await b.acquire(attrs(2));
  const logA = new EventLog();
  const logB = new EventLog();
  const ac = new AbortController();
  const watches = [
    a.watch(la.subnet, { signal: ac.signal, onEvents: logA.onEvents, onOwnLeaseLost: logA.onOwnLeaseLost }),
    b.watch(lb.subnet, { signal: ac.signal, onEvents: logB.onEvents, onOwnLeaseLost: logB.onOwnLeaseLost }),
  ];
  t.after(async () => {
    ac.abort();
    await Promise.all(watches);
  });
  await logA.waitFor('A sees B', () => logA.peers().has(cidrToKey(lb.subnet)), 3000);
  await logB.waitFor('B sees A', () => logB.peers().has(cidrToKey(la.subnet)), 3000);

  const leader = await cluster.leader();
  await leader.kill();
  const t0 = Date.now();
  const [ra, rb] = await Promise.all([a.renew(la), b.renew(lb)]);
  const renewMs = Date.now() - t0;
  t.diagnostic(`renew after killing leader ${leader.name}: ${renewMs} ms`);
  assert.ok(renewMs < 15_000, `renew finished within the election stall allowance (${renewMs} ms)`);
  assert.ok(ra.expiresAt > Date.now() + 23 * 3600_000 && rb.expiresAt > Date.now() + 23 * 3600_000);
  const newLeader = await cluster.leader();
  assert.notEqual(newLeader.name, leader.name, 'a new leader was elected');

  // Both leases are still in etcd with our values.
  for (const [l, n] of [
    [la, 1],
    [lb, 2],
  ] as const) {
    const v = (await cluster.etcdctl(['get', subnetKey(prefix, l.subnet), '--print-value-only'])).trim();
    assert.equal(
      (JSON.parse(v) as { PublicIP: string }).PublicIP,
      `198.18.7.${n}`,
      `lease of node ${n} still held`,
    );
  }

  // The watches carry on: a node joining after the election is seen by both.
  const lc = await c.acquire(attrs(3));
  await logA.waitFor('A sees C', () => logA.peers().has(cidrToKey(lc.subnet)), 10_000);
  await logB.waitFor('B sees C', () => logB.peers().has(cidrToKey(lc.subnet)), 10_000);
  assert.deepEqual(logA.lost, [], 'A never lost its lease');
  assert.deepEqual(logB.lost, [], 'B never lost its lease');
  assert.ok(
    logA.peers().has(cidrToKey(lb.subnet)) && logB.peers().has(cidrToKey(la.subnet)),
    'no peer dropped',
  );
  // A second renewal right after the election is quick again.
  const t1 = Date.now();
  await a.renew(ra);
  assert.ok(Date.now() - t1 < 5000, `second renew quick (${Date.now() - t1} ms)`);
});
