// The etcd store against a real etcd (one member): flannel interop both ways (etcdctl
// writes/reads flannel's exact format), reservations, compaction while a watch is cut off,
// malformed values, unreachable etcd, and option validation.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { pino } from 'pino';
import {
  DEFAULT_PREFIX,
  decodeLeaseValue,
  encodeLeaseValue,
  parseSubnetKey,
} from '../../src/lease/etcd/codec.ts';
import { resolveEtcdOptions } from '../../src/lease/etcd/options.ts';
import { EtcdLeaseStore } from '../../src/lease/etcd/store.ts';
import type { LeaseAttrs } from '../../src/lease/types.ts';
import { cidrEquals, cidrToKey, formatCidr, parseCidr } from '../../src/routing/ipv4.ts';
import { ConfigError, LeaseError } from '../../src/util/errors.ts';
import type { Logger } from '../../src/util/log.ts';
import { freePort, startEtcd, startTcpProxy } from '../support/etcd.ts';
import type { EtcdCluster } from '../support/etcd.ts';
import { EventLog } from './contract.ts';

let etcd: Promise<EtcdCluster> | undefined;
const getEtcd = (): Promise<EtcdCluster> => (etcd ??= startEtcd({ members: 1 }));
after(async () => {
  if (etcd) await (await etcd).stop();
});

/** A logger that keeps its JSON lines, so a test can check what was logged. */
function captureLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(s) });
  return { logger, lines };
}

let nPrefix = 0;
async function freshPrefix(cluster: EtcdCluster, netConf: object): Promise<string> {
  const prefix = `/weft-interop-${process.pid}/${++nPrefix}`;
  await cluster.etcdctl(['put', `${prefix}/config`, JSON.stringify(netConf)]);
  return prefix;
}

/** `etcdctl lease grant <ttl>` -> hex lease id, as an operator (or flanneld) would. */
async function grant(cluster: EtcdCluster, ttl: number): Promise<string> {
  const out = await cluster.etcdctl(['lease', 'grant', String(ttl)]);
  const m = /lease ([0-9a-f]+) granted/.exec(out);
  assert.ok(m, `unexpected etcdctl output: ${out}`);
  return m[1]!;
}

const NET = { Network: '10.5.0.0/16', SubnetLen: 24, Backend: { Type: 'vxlan', VNI: 1 } };

void describe('flannel interop (etcdctl in flannel format)', () => {
  void test('leases written by flanneld are read as peers with the right backend data', async (t) => {
    const cluster = await getEtcd();
    // flannel's default prefix, exactly as flanneld lays it out.
    const prefix = DEFAULT_PREFIX;
    await cluster.etcdctl(['put', `${prefix}/config`, JSON.stringify(NET)]);
    t.after(() => cluster.etcdctl(['del', '--prefix', prefix]));
    const id = await grant(cluster, 86400);
    const vxlan =
      '{"PublicIP":"198.18.1.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"a2:3c:4e:01:02:03"}}';
    const udp = '{"PublicIP":"198.18.1.2","PublicIPv6":null,"BackendType":"udp"}';
    const dual =
      '{"PublicIP":"198.18.1.3","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"a2:3c:4e:01:02:04"},"BackendV6Data":{"VNI":1,"VtepMAC":"a2:3c:4e:01:02:05"}}';
    await cluster.etcdctl(['put', `--lease=${id}`, `${prefix}/subnets/10.5.52.0-24`, vxlan]);
    await cluster.etcdctl(['put', `--lease=${id}`, `${prefix}/subnets/10.5.53.0-24`, udp]);
    await cluster.etcdctl(['put', `--lease=${id}`, `${prefix}/subnets/10.5.54.0-24&fd00:0:0:36::-64`, dual]);

    const store = new EtcdLeaseStore({ endpoints: cluster.endpoints });
    t.after(() => store.close());
    const mine = await store.acquire({
      publicIp: '198.18.1.9',
      publicIpv6: null,
      backendType: 'vxlan',
      backendData: { VNI: 1, VtepMAC: 'aa:bb:cc:dd:ee:09' },
    });
    const log = new EventLog();
    const ac = new AbortController();
    const watching = store.watch(mine.subnet, { signal: ac.signal, onEvents: log.onEvents });
    t.after(async () => {
      ac.abort();
      await watching;
    });
    await log.waitFor('3 flannel peers', () => log.peers().size === 3, 3000);
    const peers = log.peers();
    const a = peers.get('10.5.52.0-24');
    assert.ok(a, 'vxlan peer present');
    assert.equal(a.attrs.publicIp, '198.18.1.1');
    assert.equal(a.attrs.publicIpv6, null);
    assert.equal(a.attrs.backendType, 'vxlan');
    assert.deepEqual(a.attrs.backendData, { VNI: 1, VtepMAC: 'a2:3c:4e:01:02:03' });
    const ttlLeft = (a.expiresAt - Date.now()) / 1000;
    assert.ok(ttlLeft > 86000 && ttlLeft <= 86400, `expiry from the etcd lease TTL (${ttlLeft} s left)`);
    const b = peers.get('10.5.53.0-24');
    assert.equal(b?.attrs.backendType, 'udp');
    assert.equal(b?.attrs.backendData, null, 'udp lease has no BackendData');
    const c = peers.get('10.5.54.0-24');
    assert.equal(c?.attrs.publicIpv6, 'fd00::3', 'dual-stack key read by its IPv4 part');

    // A new flannel node appearing later comes as an added event with its VTEP MAC.
    await cluster.etcdctl([
      'put',
      `--lease=${id}`,
      `${prefix}/subnets/10.5.60.0-24`,
      '{"PublicIP":"198.18.1.4","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"a2:3c:4e:01:02:06"}}',
    ]);
    // The put may land while this process's first watch stream is still being created (cold
    // start: gRPC and tsx compiling on first use; one clean-clone CI run took over 1 s): the
    // watch starts from the listed revision, so the event must come, if not within the 1 s
    // the contract tests hold an established watch to.
    await log.waitFor('the late flannel peer', () => log.peers().has('10.5.60.0-24'), 3000);
    assert.deepEqual(log.peers().get('10.5.60.0-24')?.attrs.backendData, {
      VNI: 1,
      VtepMAC: 'a2:3c:4e:01:02:06',
    });
    // flanneld's lease expiring (revoked here) removes all its subnets.
    await cluster.etcdctl(['lease', 'revoke', id]);
    await log.waitFor('flannel peers gone', () => log.peers().size === 0);
  });

  void test('our lease reads back with etcdctl in flannel format, field by field, with a 24 h lease', async (t) => {
    const cluster = await getEtcd();
    const prefix = await freshPrefix(cluster, NET);
    const store = new EtcdLeaseStore({ endpoints: cluster.endpoints, prefix });
    t.after(() => store.close());
    const attrs: LeaseAttrs = {
      publicIp: '198.18.2.1',
      publicIpv6: null,
      backendType: 'vxlan',
      backendData: { VNI: 1, VtepMAC: 'aa:bb:cc:dd:ee:01' },
    };
    const lease = await store.acquire(attrs);
    const key = `${prefix}/subnets/${cidrToKey(lease.subnet)}`;
    assert.match(key, /\/subnets\/10\.5\.\d{1,3}\.0-24$/);
    const raw = (await cluster.etcdctl(['get', key, '--print-value-only'])).trim();
    // Exactly what Go's encoding/json makes of flannel's LeaseAttrs.
    assert.equal(
      raw,
      '{"PublicIP":"198.18.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}}',
    );
    const parsed = JSON.parse(raw) as Record<string, unknown>;
    assert.deepEqual(Object.keys(parsed), ['PublicIP', 'PublicIPv6', 'BackendType', 'BackendData']);
    assert.equal(parsed.PublicIP, '198.18.2.1');
    assert.equal(parsed.PublicIPv6, null);
    assert.equal(parsed.BackendType, 'vxlan');
    assert.deepEqual(parsed.BackendData, { VNI: 1, VtepMAC: 'aa:bb:cc:dd:ee:01' });

    // The key hangs off an etcd lease of 24 h (flannel's subnetTTL).
    const ids = (await cluster.etcdctl(['lease', 'list']))
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => /^[0-9a-f]+$/.test(l));
    let found = false;
    for (const id of ids) {
      const ttl = await cluster.etcdctl(['lease', 'timetolive', id, '--keys']);
      if (!ttl.includes(key)) continue;
      found = true;
      const m = /granted with TTL\((\d+)s\), remaining\((\d+)s\)/.exec(ttl);
      assert.ok(m, ttl);
      assert.equal(m[1], '86400');
    }
    assert.ok(found, 'an etcd lease carries our key');

    // udp: no BackendData at all (omitempty), as flanneld writes it.
    const udpStore = new EtcdLeaseStore({ endpoints: cluster.endpoints, prefix });
    t.after(() => udpStore.close());
    const u = await udpStore.acquire({
      publicIp: '198.18.2.2',
      publicIpv6: null,
      backendType: 'udp',
      backendData: null,
    });
    const uraw = (
      await cluster.etcdctl(['get', `${prefix}/subnets/${cidrToKey(u.subnet)}`, '--print-value-only'])
    ).trim();
    assert.equal(uraw, '{"PublicIP":"198.18.2.2","PublicIPv6":null,"BackendType":"udp"}');
  });

  void test('renew re-puts under a fresh etcd lease and revokes the old one', async (t) => {
    const cluster = await getEtcd();
    const prefix = await freshPrefix(cluster, NET);
    const store = new EtcdLeaseStore({ endpoints: cluster.endpoints, prefix, leaseTtlSeconds: 60 });
    t.after(() => store.close());
    const lease = await store.acquire({ publicIp: '198.18.3.1', backendType: 'udp', backendData: null });
    const key = `${prefix}/subnets/${cidrToKey(lease.subnet)}`;
    const leaseOf = async (): Promise<string> => {
      const out = await cluster.etcdctl(['get', key, '-w', 'json']);
      const m = /"lease":(\d+)/.exec(out);
      assert.ok(m, out);
      return m[1]!;
    };
    const before = await leaseOf();
    const renewed = await store.renew(lease);
    const afterId = await leaseOf();
    assert.notEqual(afterId, before, 'the key moved to a new etcd lease');
    assert.ok(renewed.expiresAt >= lease.expiresAt);
    assert.ok(renewed.expiresAt - Date.now() > 55_000, 'expiry readable from the new lease TTL');
    const hexOld = BigInt(before).toString(16);
    const ttlOld = await cluster.etcdctl(['lease', 'timetolive', hexOld]);
    assert.match(ttlOld, /already expired|not found/i, `old lease revoked: ${ttlOld}`);
  });
  void test('reusing our lease never revokes an etcd lease that still carries other keys', async (t) => {
    const cluster = await getEtcd();
    const prefix = await freshPrefix(cluster, NET);
    // An operator (or a migration script) put our lease and another key on one etcd lease.
    const id = await grant(cluster, 3600);
    const ours = '{"PublicIP":"198.18.3.7","PublicIPv6":null,"BackendType":"udp"}';
    await cluster.etcdctl(['put', `--lease=${id}`, `${prefix}/subnets/10.5.70.0-24`, ours]);
    await cluster.etcdctl([
      'put',
      `--lease=${id}`,
      `${prefix}/subnets/10.5.71.0-24`,
      ours.replace('3.7', '3.8'),
    ]);
    const store = new EtcdLeaseStore({ endpoints: cluster.endpoints, prefix });
    t.after(() => store.close());
    const lease = await store.acquire({ publicIp: '198.18.3.7', backendType: 'udp', backendData: null });
    assert.equal(formatCidr(lease.subnet), '10.5.70.0/24', 'reused the lease with our PublicIP');
    await store.renew(lease);
    const other = await cluster.etcdctl(['get', `${prefix}/subnets/10.5.71.0-24`, '--print-value-only']);
    assert.match(other, /198\.18\.3\.8/, 'the other key (and its etcd lease) survived');
    assert.doesNotMatch(await cluster.etcdctl(['lease', 'timetolive', id]), /expired/);
  });
});

void describe('reservations, malformed values, compaction', () => {
  void test('reserved subnets (keys without a lease) are never allocated', async (t) => {
    const cluster = await getEtcd();
    // Exactly 3 subnets: .4, .8, .12 (/30 in a /28).
    const prefix = await freshPrefix(cluster, {
      Network: '10.68.0.0/28',
      SubnetLen: 30,
      Backend: { Type: 'udp' },
    });
    await cluster.etcdctl([
      'put',
      `${prefix}/subnets/10.68.0.4-30`,
      '{"PublicIP":"198.18.9.4","PublicIPv6":null}',
    ]);
    await cluster.etcdctl([
      'put',
      `${prefix}/subnets/10.68.0.12-30`,
      '{"PublicIP":"198.18.9.12","PublicIPv6":null}',
    ]);
    const stores = [1, 2].map(() => new EtcdLeaseStore({ endpoints: cluster.endpoints, prefix }));
    t.after(() => Promise.all(stores.map((s) => s.close())));
    for (let i = 0; i < 5; i++) {
      // Even when asked for a reserved subnet, a node gets the one free subnet.
      const l = await stores[0]!.acquire(
        { publicIp: '198.18.9.1', backendType: 'udp', backendData: null },
        { previousSubnet: parseCidr('10.68.0.4/30') },
      );
      assert.equal(formatCidr(l.subnet), '10.68.0.8/30');
      await stores[0]!.release(l);
    }
    await stores[0]!.acquire({ publicIp: '198.18.9.1', backendType: 'udp', backendData: null });
    await assert.rejects(
      stores[1]!.acquire({ publicIp: '198.18.9.2', backendType: 'udp', backendData: null }),
      (err: unknown) => err instanceof LeaseError && /no free \/30 subnet/.test(err.message),
    );
    // Reservations are still there, without a lease.
    const out = await cluster.etcdctl(['get', '--prefix', `${prefix}/subnets/`, '--keys-only']);
    assert.match(out, /10\.68\.0\.4-30/);
    assert.match(out, /10\.68\.0\.12-30/);
  });

  void test('malformed peer values are skipped and logged with their key, never fatal', async (t) => {
    const cluster = await getEtcd();
    const prefix = await freshPrefix(cluster, NET);
    const { logger, lines } = captureLogger();
    const store = new EtcdLeaseStore({ endpoints: cluster.endpoints, prefix, logger });
    t.after(() => store.close());
    await cluster.etcdctl(['put', `${prefix}/subnets/10.5.10.0-24`, 'this is not json']);
    await cluster.etcdctl(['put', `${prefix}/subnets/10.5.11.0-24`, '{"PublicIP":5}']);
    await cluster.etcdctl([
      'put',
      `${prefix}/subnets/10.5.12.0-24`,
      '{"PublicIP":"198.18.4.12","PublicIPv6":null,"BackendType":"udp"}',
    ]);
    await cluster.etcdctl(['put', `${prefix}/subnets/garbage-key`, '{"PublicIP":"198.18.4.99"}']);
    const mine = await store.acquire(
      { publicIp: '198.18.4.1', backendType: 'udp', backendData: null },
      { previousSubnet: parseCidr('10.5.10.0/24') },
    );
    assert.ok(
      !cidrEquals(mine.subnet, parseCidr('10.5.10.0/24')),
      'a malformed lease still occupies its subnet',
    );
    const log = new EventLog();
    const ac = new AbortController();
    const watching = store.watch(mine.subnet, { signal: ac.signal, onEvents: log.onEvents });
    t.after(async () => {
      ac.abort();
      await watching;
    });
    await log.waitFor('the first batch', () => log.batches.length >= 1);
    assert.deepEqual([...log.peers().keys()], ['10.5.12.0-24']);
    assert.ok(lines.some((l) => l.includes(`${prefix}/subnets/10.5.10.0-24`) && l.includes('malformed')));
    assert.ok(lines.some((l) => l.includes(`${prefix}/subnets/10.5.11.0-24`) && l.includes('malformed')));
    // A peer whose value turns malformed is dropped; the watch goes on and sees later peers.
    await cluster.etcdctl(['put', `${prefix}/subnets/10.5.12.0-24`, '{broken']);
    await log.waitFor('peer with broken value removed', () => !log.peers().has('10.5.12.0-24'));
    await cluster.etcdctl([
      'put',
      `${prefix}/subnets/10.5.13.0-24`,
      '{"PublicIP":"198.18.4.13","PublicIPv6":null}',
    ]);
    await log.waitFor('a later good peer', () => log.peers().has('10.5.13.0-24'));
  });

  void test('compaction while the watch is cut off -> relist and reconcile', async (t) => {
    const cluster = await getEtcd();
    const prefix = await freshPrefix(cluster, NET);
    const proxy = await startTcpProxy(cluster.endpoints[0]!);
    t.after(() => proxy.close());
    const { logger, lines } = captureLogger();
    const store = new EtcdLeaseStore({ endpoints: [proxy.url], prefix, logger, requestTimeoutMs: 2000 });
    const other = new EtcdLeaseStore({ endpoints: cluster.endpoints, prefix });
    t.after(() => Promise.all([store.close(), other.close()]));
    const attrs = (n: number): LeaseAttrs => ({
      publicIp: `198.18.5.${n}`,
      backendType: 'udp',
      backendData: null,
    });
    const mine = await store.acquire(attrs(1));
    const gone = await other.acquire(attrs(2));
    const stays = await new EtcdLeaseStore({ endpoints: cluster.endpoints, prefix }).acquire(attrs(3));
    const log = new EventLog();
    const ac = new AbortController();
    const watching = store.watch(mine.subnet, { signal: ac.signal, onEvents: log.onEvents });
    t.after(async () => {
      ac.abort();
      await watching;
    });
    await log.waitFor('two peers', () => log.peers().size === 2, 3000);

    proxy.block();
    await new Promise((r) => setTimeout(r, 200));
    await other.release(gone);
    const added = await new EtcdLeaseStore({ endpoints: cluster.endpoints, prefix }).acquire(attrs(4));
    // Churn, then compact everything up to now: the watch's resume revision is gone.
    for (let i = 0; i < 5; i++) await cluster.etcdctl(['put', `/weft-churn-${process.pid}`, String(i)]);
    const status = await cluster.etcdctl(['endpoint', 'status', '-w', 'json']);
    const rev = /"revision":(\d+)/.exec(status)?.[1];
    assert.ok(rev, status);
    await cluster.etcdctl(['compact', rev]);
    // While cut off, the last known peers stand (nothing removed behind our back).
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(
      [...log.peers().keys()].sort(),
      [cidrToKey(gone.subnet), cidrToKey(stays.subnet)].sort(),
    );

    proxy.unblock();
    await log.waitFor(
      'relist after compaction',
      () => log.peers().has(cidrToKey(added.subnet)) && !log.peers().has(cidrToKey(gone.subnet)),
      8000,
    );
    assert.ok(log.peers().has(cidrToKey(stays.subnet)));
    assert.ok(
      lines.some((l) => l.includes('relisting leases') && /was compacted/.test(l)),
      `the compaction path (watch canceled -> relist) was taken; log: ${lines.join('')}`,
    );
    // And the watch goes on from the relist's revision.
    const late = await new EtcdLeaseStore({ endpoints: cluster.endpoints, prefix }).acquire(attrs(5));
    await log.waitFor('a peer after the relist', () => log.peers().has(cidrToKey(late.subnet)), 2000);
  });
});

void describe('expiry and outages', () => {
  void test('own lease expiring -> onOwnLeaseLost; peers see it removed; renew fails', async (t) => {
    const cluster = await getEtcd();
    const prefix = await freshPrefix(cluster, NET);
    const store = new EtcdLeaseStore({ endpoints: cluster.endpoints, prefix, leaseTtlSeconds: 2 });
    const peer = new EtcdLeaseStore({ endpoints: cluster.endpoints, prefix });
    t.after(() => Promise.all([store.close(), peer.close()]));
    const mine = await store.acquire({ publicIp: '198.18.10.1', backendType: 'udp', backendData: null });
    assert.ok(
      mine.expiresAt - Date.now() <= 2000 && mine.expiresAt > Date.now(),
      'expiry from the granted TTL',
    );
    const lp = await peer.acquire({ publicIp: '198.18.10.2', backendType: 'udp', backendData: null });
    const own = new EventLog();
    const seen = new EventLog();
    const ac = new AbortController();
    const watches = [
      store.watch(mine.subnet, {
        signal: ac.signal,
        onEvents: own.onEvents,
        onOwnLeaseLost: own.onOwnLeaseLost,
      }),
      peer.watch(lp.subnet, { signal: ac.signal, onEvents: seen.onEvents }),
    ];
    t.after(async () => {
      ac.abort();
      await Promise.all(watches);
    });
    await seen.waitFor('our lease seen by the peer', () => seen.peers().has(cidrToKey(mine.subnet)), 2000);
    const firstLease = seen.peers().get(cidrToKey(mine.subnet))!;
    assert.ok(firstLease.expiresAt <= mine.expiresAt + 1000, 'peer reads our expiry from the etcd lease');
    // No renewal: etcd expires the key within the TTL (+ its 0.5 s expiry sweep).
    await own.waitFor('onOwnLeaseLost after expiry', () => own.lost.length === 1, 5000);
    assert.ok(cidrEquals(own.lost[0]!, mine.subnet));
    await seen.waitFor('peer sees our lease removed', () => !seen.peers().has(cidrToKey(mine.subnet)), 2000);
    await assert.rejects(
      store.renew(mine),
      (err: unknown) => err instanceof LeaseError && /gone/.test(err.message),
    );
  });

  void test('etcd unreachable for a while: calls fail naming the endpoint, the watch keeps state and resumes', async (t) => {
    const cluster = await getEtcd();
    const prefix = await freshPrefix(cluster, NET);
    const proxy = await startTcpProxy(cluster.endpoints[0]!);
    t.after(() => proxy.close());
    const { logger, lines } = captureLogger();
    const store = new EtcdLeaseStore({ endpoints: [proxy.url], prefix, logger, requestTimeoutMs: 1500 });
    const other = new EtcdLeaseStore({ endpoints: cluster.endpoints, prefix });
    t.after(() => Promise.all([store.close(), other.close()]));
    const a = (n: number): LeaseAttrs => ({
      publicIp: `198.18.11.${n}`,
      backendType: 'udp',
      backendData: null,
    });
    const mine = await store.acquire(a(1));
    const lb = await other.acquire(a(2));
    const log = new EventLog();
    const ac = new AbortController();
    const watching = store.watch(mine.subnet, {
      signal: ac.signal,
      onEvents: log.onEvents,
      onOwnLeaseLost: log.onOwnLeaseLost,
    });
    t.after(async () => {
      ac.abort();
      await watching;
    });
    await log.waitFor('peer B', () => log.peers().has(cidrToKey(lb.subnet)), 2000);

    proxy.block();
    await assert.rejects(store.renew(mine), (err: unknown) => {
      assert.ok(err instanceof LeaseError, String(err));
      assert.ok(err.message.includes(proxy.url), err.message);
      return true;
    });
    const lc = await new EtcdLeaseStore({ endpoints: cluster.endpoints, prefix }).acquire(a(3));
    await new Promise((r) => setTimeout(r, 500));
    assert.ok(log.peers().has(cidrToKey(lb.subnet)), 'last known peers kept while cut off');
    assert.ok(!log.peers().has(cidrToKey(lc.subnet)));

    proxy.unblock();
    await log.waitFor('the change made during the outage', () => log.peers().has(cidrToKey(lc.subnet)), 6000);
    assert.ok(
      !lines.some((l) => l.includes('relisting leases')),
      'resumed from its revision, no relist needed',
    );
    const renewed = await store.renew(mine);
    assert.ok(renewed.expiresAt > mine.expiresAt);
    assert.deepEqual(log.lost, [], 'our lease was never lost');
  });
});

void describe('unreachable etcd and options', () => {
  void test('acquire and renew fail with a LeaseError naming the endpoints tried', async (t) => {
    const p1 = await freePort();
    const p2 = await freePort();
    const eps = [`http://127.0.0.1:${p1}`, `http://127.0.0.1:${p2}`];
    const store = new EtcdLeaseStore({ endpoints: eps, requestTimeoutMs: 1000 });
    t.after(() => store.close());
    const t0 = Date.now();
    const check = (err: unknown): boolean => {
      assert.ok(err instanceof LeaseError, `LeaseError, got ${String(err)}`);
      assert.ok(err.message.includes(eps[0]!) && err.message.includes(eps[1]!), err.message);
      assert.match(err.message, /reachable/);
      return true;
    };
    await assert.rejects(
      store.acquire({ publicIp: '198.18.6.1', backendType: 'udp', backendData: null }),
      check,
    );
    await assert.rejects(
      store.renew({
        subnet: parseCidr('10.5.1.0/24'),
        attrs: { publicIp: '198.18.6.1', backendType: 'udp', backendData: null },
        expiresAt: Date.now() + 1000,
      }),
      check,
    );
    assert.ok(Date.now() - t0 < 20_000, 'fails in bounded time');
  });

  void test('options are validated with errors naming the flag', () => {
    const bad = (opts: Parameters<typeof resolveEtcdOptions>[0], key: string): void => {
      assert.throws(
        () => resolveEtcdOptions(opts),
        (err: unknown) => err instanceof ConfigError && err.key === key,
        `expected ConfigError for ${key}`,
      );
    };
    bad({ endpoints: [] }, 'etcd-endpoints');
    bad({ endpoints: ['127.0.0.1:2379'] }, 'etcd-endpoints');
    bad({ endpoints: ['ftp://127.0.0.1:2379'] }, 'etcd-endpoints');
    bad({ endpoints: ['http://a:1', 'https://b:2'] }, 'etcd-endpoints');
    bad({ endpoints: ['http://a:1/v2/keys'] }, 'etcd-endpoints');
    bad({ endpoints: ['http://a:1'], prefix: 'coreos.com/network' }, 'etcd-prefix');
    bad({ endpoints: ['https://a:1'], certFile: '/x.pem' }, 'etcd-keyfile');
    bad({ endpoints: ['https://a:1'], keyFile: '/x.key' }, 'etcd-certfile');
    bad({ endpoints: ['http://a:1'], caFile: '/x.pem' }, 'etcd-endpoints');
    bad({ endpoints: ['https://a:1'], caFile: '/nonexistent/ca.pem' }, 'etcd-cafile');
    bad({ endpoints: ['http://a:1'], username: 'root' }, 'etcd-password');
    bad({ endpoints: ['http://a:1'], password: 'pw' }, 'etcd-username');
    bad({ endpoints: ['http://a:1'], leaseTtlSeconds: 1 }, 'lease-ttl');
    bad({ endpoints: ['http://a:1'], leaseTtlSeconds: 2.5 }, 'lease-ttl');

    const dir = mkdtempSync(join(tmpdir(), 'weft-etcd-opts-'));
    try {
      writeFileSync(join(dir, 'ca.pem'), 'CA');
      writeFileSync(join(dir, 'c.pem'), 'CERT');
      writeFileSync(join(dir, 'c.key'), 'KEY');
      const r = resolveEtcdOptions({
        endpoints: ['https://etcd-0:2379', 'https://etcd-1'],
        prefix: '/my/net/',
        caFile: join(dir, 'ca.pem'),
        certFile: join(dir, 'c.pem'),
        keyFile: join(dir, 'c.key'),
        username: 'weft',
        password: 'secret',
      });
      assert.deepEqual(r.endpoints, ['https://etcd-0:2379', 'https://etcd-1:2379']);
      assert.equal(r.prefix, '/my/net');
      assert.equal(r.tls?.ca?.toString(), 'CA');
      assert.equal(r.tls?.cert?.toString(), 'CERT');
      assert.equal(r.tls?.key?.toString(), 'KEY');
      assert.deepEqual(r.auth, { username: 'weft', password: 'secret' });
      assert.equal(r.leaseTtlSeconds, 86400);
      const d = resolveEtcdOptions({ endpoints: ['http://127.0.0.1:2379'] });
      assert.equal(d.prefix, '/coreos.com/network');
      assert.equal(d.tls, undefined);
      assert.equal(d.auth, undefined);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  void test('codec: keys and values round-trip in flannel form', () => {
    const p = DEFAULT_PREFIX;
    assert.equal(formatCidr(parseSubnetKey(p, `${p}/subnets/10.5.52.0-24`)!), '10.5.52.0/24');
    assert.equal(formatCidr(parseSubnetKey(p, `${p}/subnets/10.5.52.0-24&fd00::-64`)!), '10.5.52.0/24');
    assert.equal(parseSubnetKey(p, `${p}/subnets/10.5.52.1-24`), undefined, 'host bits set');
    assert.equal(parseSubnetKey(p, `${p}/subnets/lease`), undefined);
    assert.equal(parseSubnetKey(p, `/other/subnets/10.5.52.0-24`), undefined);
    const attrs: LeaseAttrs = {
      publicIp: '198.18.0.1',
      publicIpv6: null,
      backendType: 'vxlan',
      backendData: { VNI: 1, VtepMAC: 'aa:bb:cc:dd:ee:ff' },
    };
    assert.deepEqual(decodeLeaseValue('k', encodeLeaseValue(attrs)), attrs);
    assert.throws(
      () => decodeLeaseValue('/x/subnets/1', '{"PublicIP":"300.1.1.1"}'),
      (e: unknown) => {
        return e instanceof LeaseError && e.message.includes('/x/subnets/1');
      },
    );
  });
});
