// The etcd store's TLS and authentication options (flanneld's --etcd-cafile/certfile/keyfile
// and --etcd-username/password) against real etcd members: one serving only mutual TLS
// with a throwaway CA, one with authentication enabled.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EtcdLeaseStore } from '../../src/lease/etcd/store.ts';
import { cidrToKey } from '../../src/routing/ipv4.ts';
import { LeaseError } from '../../src/util/errors.ts';
import { makeTestCerts, startEtcd } from '../support/etcd.ts';
import { EventLog } from './contract.ts';

const NET = JSON.stringify({ Network: '10.71.0.0/16', Backend: { Type: 'udp' } });
const attrs = (n: number) => ({
  publicIp: `198.18.8.${n}`,
  publicIpv6: null,
  backendType: 'udp',
  backendData: null,
});

void test('mutual TLS: works with CA + client certificate, fails clearly without the client certificate', async (t) => {
  const certs = await makeTestCerts();
  t.after(() => certs.remove());
  const cluster = await startEtcd({ tls: certs });
  t.after(() => cluster.stop());
  assert.ok(cluster.endpoints[0]!.startsWith('https://'));
  await cluster.etcdctl(['put', '/coreos.com/network/config', NET]);

  const store = new EtcdLeaseStore({
    endpoints: cluster.endpoints,
    caFile: certs.ca,
    certFile: certs.clientCert,
    keyFile: certs.clientKey,
  });
  const peer = new EtcdLeaseStore({
    endpoints: cluster.endpoints,
    caFile: certs.ca,
    certFile: certs.clientCert,
    keyFile: certs.clientKey,
  });
  t.after(() => Promise.all([store.close(), peer.close()]));
  const lease = await store.acquire(attrs(1));
  const out = await cluster.etcdctl(['get', `/coreos.com/network/subnets/${cidrToKey(lease.subnet)}`]);
  assert.match(out, /"PublicIP":"198\.18\.8\.1"/);
  const renewed = await store.renew(lease);
  assert.ok(renewed.expiresAt >= lease.expiresAt);

  const log = new EventLog();
  const ac = new AbortController();
  const watching = store.watch(lease.subnet, { signal: ac.signal, onEvents: log.onEvents });
  t.after(async () => {
    ac.abort();
    await watching;
  });
  const lp = await peer.acquire(attrs(2));
  await log.waitFor('the peer over TLS', () => log.peers().has(cidrToKey(lp.subnet)), 3000);

  // Only the CA: the server demands a client certificate.
  const noClientCert = new EtcdLeaseStore({
    endpoints: cluster.endpoints,
    caFile: certs.ca,
    requestTimeoutMs: 2000,
  });
  t.after(() => noClientCert.close());
  await assert.rejects(noClientCert.acquire(attrs(3)), (err: unknown) => {
    assert.ok(err instanceof LeaseError, String(err));
    assert.ok(err.message.includes(cluster.endpoints[0]!), err.message);
    assert.match(err.message, /TLS\/auth options/);
    return true;
  });
});

void test('username/password: works with the right password, fails clearly with a wrong one', async (t) => {
  const cluster = await startEtcd();
  t.after(() => cluster.stop());
  await cluster.enableAuth('rootpw');
  await cluster.etcdctl(['put', '/coreos.com/network/config', NET]);

  const store = new EtcdLeaseStore({ endpoints: cluster.endpoints, username: 'root', password: 'rootpw' });
  t.after(() => store.close());
  const lease = await store.acquire(attrs(1));
  const out = await cluster.etcdctl(['get', `/coreos.com/network/subnets/${cidrToKey(lease.subnet)}`]);
  assert.match(out, /"PublicIP":"198\.18\.8\.1"/);

  const wrong = new EtcdLeaseStore({
    endpoints: cluster.endpoints,
    username: 'root',
    password: 'nope',
    requestTimeoutMs: 2000,
  });
  t.after(() => wrong.close());
  await assert.rejects(wrong.acquire(attrs(2)), (err: unknown) => {
    assert.ok(err instanceof LeaseError, String(err));
    assert.match(err.message, /authentication failed|invalid user ID or password/i);
    return true;
  });
  // Without credentials etcd refuses too (user name is empty).
  const anon = new EtcdLeaseStore({ endpoints: cluster.endpoints, requestTimeoutMs: 2000 });
  t.after(() => anon.close());
  await assert.rejects(anon.getNetworkConfig(), LeaseError);
});
