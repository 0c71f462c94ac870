/**
 * Kube-specific behaviour of the kube lease store, against the test API server: the exact
 * annotations and condition written, public-ip-overwrite, podCIDR checks and waiting, which
 * nodes count, 410 and watchdog relists without losing changes, error backoff, renew and
 * release, and both ways of configuring the client (kubeconfig and in-cluster over TLS).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { KubeLeaseStore } from '../../src/lease/kube/store.ts';
import type { KubeStoreOptions } from '../../src/lease/kube/options.ts';
import type { Lease, LeaseAttrs, LeaseEvent } from '../../src/lease/types.ts';
import { cidrToKey, formatCidr, parseCidr } from '../../src/routing/ipv4.ts';
import { ConfigError, LeaseError } from '../../src/util/errors.ts';
import { KubeApiServer } from '../support/kube-api-server.ts';
import type { KubeApiServerOptions, NodeObject } from '../support/kube-api-server.ts';
import { selfSignedCert, tempDir, waitFor } from '../support/kube-tools.ts';

const P = 'flannel.alpha.coreos.com/';
const NET_CONF = { Network: '10.244.0.0/16', Backend: { Type: 'vxlan', VNI: 1 } };
const VXLAN_ATTRS: LeaseAttrs = {
  publicIp: '198.18.0.1',
  publicIpv6: null,
  backendType: 'vxlan',
  backendData: { VNI: 1, VtepMAC: 'aa:bb:cc:dd:ee:01' },
};

type TestContext = { after: (fn: () => Promise<void> | void) => void };

interface Env {
  server: KubeApiServer;
  dir: string;
  kubeconfig: string;
  netConfPath: string;
  store: (name: string, extra?: Partial<KubeStoreOptions>) => KubeLeaseStore;
}

async function env(t: TestContext, serverOpts: KubeApiServerOptions = {}): Promise<Env> {
  const tmp = tempDir('kube-store');
  const server = await KubeApiServer.start(serverOpts);
  const netConfPath = join(tmp.dir, 'net-conf.json');
  writeFileSync(netConfPath, JSON.stringify(NET_CONF));
  const kubeconfig = server.writeKubeconfig(tmp.dir);
  const stores: KubeLeaseStore[] = [];
  t.after(async () => {
    for (const s of stores) await s.close();
    await server.close();
    tmp.remove();
  });
  return {
    server,
    dir: tmp.dir,
    kubeconfig,
    netConfPath,
    store: (name, extra = {}) => {
      const s = new KubeLeaseStore({
        nodeName: name,
        kubeconfig,
        netConfPath,
        backoffInitialMs: 20,
        ...extra,
      });
      stores.push(s);
      return s;
    },
  };
}

/** Annotations a running flannel/weft node carries. */
function peerAnnotations(ip: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    [`${P}backend-type`]: 'vxlan',
    [`${P}backend-data`]: JSON.stringify({ VNI: 1, VtepMAC: 'aa:bb:cc:dd:ee:99' }),
    [`${P}public-ip`]: ip,
    [`${P}kube-subnet-manager`]: 'true',
    ...extra,
  };
}

class Watching {
  readonly batches: (readonly LeaseEvent[])[] = [];
  readonly lost: string[] = [];
  readonly ac = new AbortController();
  done: Promise<void> = Promise.resolve();

  start(store: KubeLeaseStore, own: string, t: TestContext): this {
    this.done = store.watch(parseCidr(own), {
      signal: this.ac.signal,
      onEvents: (ev) => this.batches.push(ev),
      onOwnLeaseLost: (s) => this.lost.push(formatCidr(s)),
    });
    t.after(async () => {
      this.ac.abort();
      await this.done;
    });
    return this;
  }

  peers(): Map<string, Lease> {
    const m = new Map<string, Lease>();
    for (const e of this.batches.flat()) {
      if (e.type === 'added') m.set(formatCidr(e.lease.subnet), e.lease);
      else m.delete(formatCidr(e.lease.subnet));
    }
    return m;
  }

  peerList(): string[] {
    return [...this.peers().keys()].sort();
  }

  async until(what: string, cond: () => boolean, ms = 1000): Promise<void> {
    await waitFor(what, () => (cond() ? true : undefined), ms);
  }
}

void test('acquire writes exactly flannel annotations and the NetworkUnavailable condition via strategic merge on status', async (t) => {
  const e = await env(t);
  e.server.addNode({ name: 'a', podCIDR: '10.244.3.0/24' });
  // Two transient failures of the status patch are retried inside acquire.
  e.server.failNext(2, 503, (r) => r.method === 'PATCH');
  const lease = await e.store('a').acquire(VXLAN_ATTRS);
  assert.equal(formatCidr(lease.subnet), '10.244.3.0/24');
  assert.equal(lease.expiresAt, Infinity);
  assert.equal(e.server.requests.filter((r) => r.method === 'PATCH').length, 3);
  assert.deepEqual(lease.attrs, VXLAN_ATTRS);

  const patch = e.server.requests.findLast((r) => r.method === 'PATCH');
  assert.equal(patch?.path, '/api/v1/nodes/a/status');
  assert.equal(patch?.contentType, 'application/strategic-merge-patch+json');

  const node = e.server.getNode('a') as NodeObject;
  assert.deepEqual(node.metadata.annotations, {
    [`${P}backend-type`]: 'vxlan',
    [`${P}backend-data`]: '{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}',
    [`${P}public-ip`]: '198.18.0.1',
    [`${P}kube-subnet-manager`]: 'true',
  });
  const conds = node.status.conditions as Record<string, string>[];
  assert.deepEqual(
    conds.map((c) => c.type),
    ['Ready', 'NetworkUnavailable'],
    'the kubelet condition is kept',
  );
  const nu = conds[1] as Record<string, string>;
  assert.equal(nu.status, 'False');
  assert.equal(nu.reason, 'WeftIsUp');
  assert.equal(nu.message, 'weft is running on this node');
  assert.match(nu.lastHeartbeatTime ?? '', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  assert.match(nu.lastTransitionTime ?? '', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);

  // Acquiring again keeps lastTransitionTime (the status did not change) and the subnet.
  e.server.modifyNode('a', (n) => {
    const c = (n.status.conditions as Record<string, string>[])[1] as Record<string, string>;
    c.lastTransitionTime = '2020-01-01T00:00:00Z';
  });
  await e.store('a').acquire({ ...VXLAN_ATTRS, backendData: null });
  const again = e.server.getNode('a') as NodeObject;
  const nu2 = (again.status.conditions as Record<string, string>[])[1] as Record<string, string>;
  assert.equal(nu2.lastTransitionTime, '2020-01-01T00:00:00Z');
  assert.equal((again.metadata.annotations as Record<string, string>)[`${P}backend-data`], 'null');
  assert.equal(again.spec.podCIDR, '10.244.3.0/24');
});

void test('a custom annotation prefix is used for every key', async (t) => {
  const e = await env(t);
  e.server.addNode({ name: 'a', podCIDR: '10.244.3.0/24' });
  await e.store('a', { annotationPrefix: 'weft.example.com' }).acquire(VXLAN_ATTRS);
  const keys = Object.keys((e.server.getNode('a') as NodeObject).metadata.annotations as object).sort();
  assert.deepEqual(keys, [
    'weft.example.com/backend-data',
    'weft.example.com/backend-type',
    'weft.example.com/kube-subnet-manager',
    'weft.example.com/public-ip',
  ]);
  assert.throws(
    () => e.store('a', { annotationPrefix: 'Not A Prefix' }),
    (err: unknown) => err instanceof ConfigError && err.key === 'kube-annotation-prefix',
  );
});

void test('public-ip-overwrite is advertised; node-public-ip is readable; a bad overwrite is a clear error', async (t) => {
  const e = await env(t);
  e.server.addNode({
    name: 'a',
    podCIDR: '10.244.3.0/24',
    annotations: { [`${P}public-ip-overwrite`]: '203.0.113.7', [`${P}node-public-ip`]: '192.0.2.10' },
  });
  const store = e.store('a');
  const lease = await store.acquire(VXLAN_ATTRS);
  assert.equal(lease.attrs.publicIp, '203.0.113.7');
  const ann = (e.server.getNode('a') as NodeObject).metadata.annotations as Record<string, string>;
  assert.equal(ann[`${P}public-ip`], '203.0.113.7');
  assert.equal(ann[`${P}public-ip-overwrite`], '203.0.113.7', "the user's annotation is left alone");
  assert.deepEqual(await store.nodeAddressHints(), {
    publicIpOverwrite: '203.0.113.7',
    nodePublicIp: '192.0.2.10',
  });

  e.server.addNode({
    name: 'b',
    podCIDR: '10.244.4.0/24',
    annotations: { [`${P}public-ip-overwrite`]: 'nat-box' },
  });
  await assert.rejects(e.store('b').acquire(VXLAN_ATTRS), (err: unknown) => {
    assert.ok(err instanceof ConfigError);
    assert.match(err.message, /public-ip-overwrite.*node b.*"nat-box"/);
    return true;
  });
});

void test('a podCIDR outside Network is a LeaseError naming node, podCIDR and Network; podCIDRs IPv4 entry is used', async (t) => {
  const e = await env(t);
  e.server.addNode({ name: 'stray', podCIDR: '10.99.1.0/24' });
  await assert.rejects(e.store('stray').acquire(VXLAN_ATTRS), (err: unknown) => {
    assert.ok(err instanceof LeaseError, String(err));
    assert.match(err.message, /node stray/);
    assert.match(err.message, /10\.99\.1\.0\/24/);
    assert.match(err.message, /10\.244\.0\.0\/16/);
    return true;
  });
  assert.equal(e.server.requests.filter((r) => r.method === 'PATCH').length, 0, 'nothing written');

  e.server.addNode({ name: 'dual', podCIDRs: ['fd00:10:244:5::/64', '10.244.5.0/24'] });
  const lease = await e.store('dual').acquire(VXLAN_ATTRS);
  assert.equal(formatCidr(lease.subnet), '10.244.5.0/24');
});

void test('acquire waits for the Node and its podCIDR, and stops when aborted', async (t) => {
  const e = await env(t);
  const store = e.store('late', { backoffInitialMs: 20, backoffMaxMs: 100 });
  const pending = store.acquire(VXLAN_ATTRS);
  await new Promise((r) => setTimeout(r, 150));
  e.server.addNode({ name: 'late' });
  await new Promise((r) => setTimeout(r, 150));
  const t0 = Date.now();
  e.server.modifyNode('late', (n) => {
    n.spec.podCIDR = '10.244.9.0/24';
    n.spec.podCIDRs = ['10.244.9.0/24'];
  });
  const lease = await pending;
  assert.equal(formatCidr(lease.subnet), '10.244.9.0/24');
  assert.ok(Date.now() - t0 < 1000, 'picked up within the poll cap');
  const reads = e.server.requests.filter((r) => r.method === 'GET' && r.path === '/api/v1/nodes/late');
  assert.ok(reads.length >= 3, `polled (${reads.length} reads)`);

  const ac = new AbortController();
  const never = e.store('ghost').acquire(VXLAN_ATTRS, { signal: ac.signal });
  setTimeout(() => ac.abort(new Error('stop waiting')), 100);
  await assert.rejects(never, /stop waiting/);
});

void test('only nodes with kube-subnet-manager=true count; unusable managed nodes are skipped, never fatal', async (t) => {
  const e = await env(t);
  e.server.addNode({ name: 'me', podCIDR: '10.244.1.0/24' });
  e.server.addNode({ name: 'good', podCIDR: '10.244.2.0/24', annotations: peerAnnotations('198.18.0.2') });
  const unmanaged = peerAnnotations('198.18.0.3');
  delete unmanaged[`${P}kube-subnet-manager`];
  e.server.addNode({ name: 'unmanaged', podCIDR: '10.244.3.0/24', annotations: unmanaged });
  e.server.addNode({
    name: 'badjson',
    podCIDR: '10.244.4.0/24',
    annotations: peerAnnotations('198.18.0.4', { [`${P}backend-data`]: '{not json' }),
  });
  e.server.addNode({ name: 'nocidr', annotations: peerAnnotations('198.18.0.5') });
  e.server.addNode({
    name: 'badip',
    podCIDR: '10.244.6.0/24',
    annotations: peerAnnotations('198.18.0.6', { [`${P}public-ip`]: 'somewhere' }),
  });
  const store = e.store('me');
  const own = await store.acquire(VXLAN_ATTRS);
  const w = new Watching().start(store, formatCidr(own.subnet), t);
  await w.until('first batch', () => w.batches.length >= 1);
  assert.deepEqual(w.peerList(), ['10.244.2.0/24']);
  const good = w.peers().get('10.244.2.0/24') as Lease;
  assert.deepEqual(good.attrs, {
    publicIp: '198.18.0.2',
    publicIpv6: null,
    backendType: 'vxlan',
    backendData: { VNI: 1, VtepMAC: 'aa:bb:cc:dd:ee:99' },
  });
  assert.equal(good.expiresAt, Infinity);

  // The unmanaged node starts counting once it says kube-subnet-manager=true; the bad one
  // counts once fixed; a managed node that loses the annotation is removed.
  e.server.modifyNode('unmanaged', (n) => {
    (n.metadata.annotations as Record<string, string>)[`${P}kube-subnet-manager`] = 'true';
  });
  e.server.modifyNode('badjson', (n) => {
    (n.metadata.annotations as Record<string, string>)[`${P}backend-data`] = '{"VNI":1}';
  });
  await w.until('two more peers', () => w.peerList().length === 3);
  assert.deepEqual(w.peerList(), ['10.244.2.0/24', '10.244.3.0/24', '10.244.4.0/24']);
  e.server.modifyNode('good', (n) => {
    (n.metadata.annotations as Record<string, string>)[`${P}kube-subnet-manager`] = 'false';
  });
  await w.until('good removed', () => !w.peers().has('10.244.2.0/24'));
  assert.equal(w.lost.length, 0);
});

void test('a peer appearing, changing and vanishing reaches onEvents within 1 s, as batches', async (t) => {
  const e = await env(t);
  e.server.addNode({ name: 'me', podCIDR: '10.244.1.0/24' });
  const store = e.store('me');
  const own = await store.acquire(VXLAN_ATTRS);
  const w = new Watching().start(store, formatCidr(own.subnet), t);
  await w.until('first batch', () => w.batches.length === 1);
  assert.deepEqual(w.batches[0], []);
  await waitFor('watch open', () => (e.server.openWatches === 1 ? true : undefined));

  let t0 = Date.now();
  e.server.addNode({ name: 'p', podCIDR: '10.244.2.0/24', annotations: peerAnnotations('198.18.0.2') });
  await w.until('peer added', () => w.peers().has('10.244.2.0/24'));
  const addMs = Date.now() - t0;

  t0 = Date.now();
  e.server.modifyNode('p', (n) => {
    (n.metadata.annotations as Record<string, string>)[`${P}public-ip`] = '198.18.0.22';
  });
  await w.until('peer changed', () => w.peers().get('10.244.2.0/24')?.attrs.publicIp === '198.18.0.22');
  const last = w.batches.at(-1) ?? [];
  assert.deepEqual(
    last.map((ev) => `${ev.type} ${ev.lease.attrs.publicIp}`),
    ['removed 198.18.0.2', 'added 198.18.0.22'],
    'a change is one batch: removed old, then added new',
  );

  // A heartbeat-style change that leaves the lease alone is not an event.
  const before = w.batches.length;
  e.server.modifyNode('p', (n) => {
    n.status.conditions = [{ type: 'Ready', status: 'True', lastHeartbeatTime: new Date().toISOString() }];
  });
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(w.batches.length, before);

  t0 = Date.now();
  e.server.removeNode('p');
  await w.until('peer removed', () => !w.peers().has('10.244.2.0/24'));
  const delMs = Date.now() - t0;
  assert.ok(addMs < 1000 && delMs < 1000, `add ${addMs} ms, delete ${delMs} ms`);
  t.diagnostic(`peer add seen after ${addMs} ms, delete after ${delMs} ms`);
  assert.ok(
    w.batches.flat().every((ev) => cidrToKey(ev.lease.subnet) !== cidrToKey(own.subnet)),
    'never our own lease',
  );
});

void test('410 Gone (on the open watch, or on resume after compaction) relists and loses nothing', async (t) => {
  const e = await env(t);
  e.server.addNode({ name: 'me', podCIDR: '10.244.1.0/24' });
  e.server.addNode({ name: 'p1', podCIDR: '10.244.2.0/24', annotations: peerAnnotations('198.18.0.2') });
  e.server.addNode({ name: 'p2', podCIDR: '10.244.3.0/24', annotations: peerAnnotations('198.18.0.3') });
  const store = e.store('me');
  const own = await store.acquire(VXLAN_ATTRS);
  const w = new Watching().start(store, formatCidr(own.subnet), t);
  await w.until('first batch', () => w.batches.length === 1);
  await waitFor('watch open', () => (e.server.openWatches === 1 ? true : undefined));

  // 1: the open watch gets ERROR 410; changes happen while the store relists.
  e.server.expireWatches();
  e.server.removeNode('p1');
  e.server.addNode({ name: 'p4', podCIDR: '10.244.4.0/24', annotations: peerAnnotations('198.18.0.4') });
  await w.until('state after first 410', () => w.peerList().join() === '10.244.3.0/24,10.244.4.0/24', 2000);
  assert.ok(store.watchStats.expired >= 1, 'saw the 410');
  assert.ok(store.watchStats.lists >= 2, 'relisted');
  await waitFor('watch reopened', () => (e.server.openWatches === 1 ? true : undefined));

  // 2: the watch ends normally, history is compacted, and changes happen before the store
  // resumes: resuming from its old resourceVersion gets 410 at once, then a relist.
  const lists = store.watchStats.lists;
  e.server.endWatches();
  e.server.removeNode('p2');
  e.server.modifyNode('p4', (n) => {
    (n.metadata.annotations as Record<string, string>)[`${P}public-ip`] = '198.18.0.44';
  });
  e.server.compact();
  await w.until(
    'state after second 410',
    () =>
      w.peerList().join() === '10.244.4.0/24' &&
      w.peers().get('10.244.4.0/24')?.attrs.publicIp === '198.18.0.44',
    2000,
  );
  assert.ok(store.watchStats.lists > lists, 'relisted after the resume failed');

  // 3: the same, with the 410 as an HTTP status (servers without a watch cache).
  await waitFor('watch reopened', () => (e.server.openWatches === 1 ? true : undefined));
  const expired = store.watchStats.expired;
  e.server.goneAsHttpStatus = true;
  e.server.endWatches();
  e.server.addNode({ name: 'p5', podCIDR: '10.244.5.0/24', annotations: peerAnnotations('198.18.0.5') });
  e.server.compact();
  await w.until('p5 after an HTTP 410', () => w.peers().has('10.244.5.0/24'), 2000);
  assert.ok(store.watchStats.expired > expired, 'HTTP 410 counted as expiry');
  assert.ok(
    e.server.requests.some((r) => r.query.watch === 'true' && r.query.resourceVersion !== undefined),
    'a watch tried to resume',
  );
  assert.equal(w.lost.length, 0);
  // Every delivered event is consistent: no duplicate adds of a live peer.
  const seen = new Set<string>();
  for (const ev of w.batches.flat()) {
    const key = formatCidr(ev.lease.subnet);
    if (ev.type === 'added') {
      assert.ok(!seen.has(key), `${key} added twice without removal`);
      seen.add(key);
    } else {
      assert.ok(seen.delete(key), `${key} removed while not known`);
    }
  }
});

void test('bookmarks keep a quiet watch alive; a silent watch trips the watchdog, which relists', async (t) => {
  const e = await env(t, { bookmarkIntervalMs: 100 });
  e.server.addNode({ name: 'me', podCIDR: '10.244.1.0/24' });
  const store = e.store('me', { watchdogMs: 500, watchTimeoutSeconds: 1 });
  const own = await store.acquire(VXLAN_ATTRS);
  const w = new Watching().start(store, formatCidr(own.subnet), t);
  await w.until('first batch', () => w.batches.length === 1);
  await new Promise((r) => setTimeout(r, 1300));
  assert.equal(store.watchStats.silent, 0, 'bookmarks every 100 ms keep the 500 ms watchdog quiet');
  const watchReqs = e.server.requests.filter((r) => r.query.watch === 'true');
  assert.ok(watchReqs.length >= 2, 'the server ended the first watch after timeoutSeconds=1');
  for (const r of watchReqs) {
    assert.equal(r.query.allowWatchBookmarks, 'true');
    assert.equal(r.query.timeoutSeconds, '1');
    assert.ok(Number(r.query.resourceVersion) > 0, 'resumes from a resourceVersion');
  }
  assert.equal(store.watchStats.lists, 1, 'a normal end resumes without relisting');

  e.server.silenceWatches();
  const t0 = Date.now();
  e.server.addNode({ name: 'p', podCIDR: '10.244.2.0/24', annotations: peerAnnotations('198.18.0.2') });
  await w.until('peer seen after the watchdog', () => w.peers().has('10.244.2.0/24'), 2000);
  const ms = Date.now() - t0;
  assert.ok(store.watchStats.silent >= 1, 'watchdog fired');
  assert.ok(store.watchStats.lists >= 2, 'relisted');
  assert.ok(ms >= 300, `not long before the watchdog (${ms} ms)`);
  t.diagnostic(`change hidden by a silent watch delivered after ${ms} ms (watchdog 500 ms)`);
});

void test('API errors back off and recover; the last peers are kept meanwhile', async (t) => {
  const e = await env(t);
  e.server.addNode({ name: 'me', podCIDR: '10.244.1.0/24' });
  e.server.addNode({ name: 'p', podCIDR: '10.244.2.0/24', annotations: peerAnnotations('198.18.0.2') });
  const store = e.store('me', { backoffInitialMs: 20, backoffMaxMs: 200 });
  const own = await store.acquire(VXLAN_ATTRS);
  e.server.failNext(3, 500, (r) => r.path === '/api/v1/nodes');
  const w = new Watching().start(store, formatCidr(own.subnet), t);
  await w.until('first batch after errors', () => w.batches.length === 1, 2000);
  assert.deepEqual(w.peerList(), ['10.244.2.0/24']);
  assert.equal(store.watchStats.errors, 3);

  // Watch requests fail (429) after a server-side close: the peer set stays, then recovers.
  await waitFor('watch open', () => (e.server.openWatches === 1 ? true : undefined));
  e.server.failNext(2, 429, (r) => r.query.watch === 'true');
  e.server.endWatches();
  e.server.addNode({ name: 'q', podCIDR: '10.244.3.0/24', annotations: peerAnnotations('198.18.0.3') });
  await w.until('q after recovery', () => w.peers().has('10.244.3.0/24'), 2000);
  assert.ok(store.watchStats.errors >= 5);
  assert.deepEqual(w.peerList(), ['10.244.2.0/24', '10.244.3.0/24']);
});

void test('renew re-asserts removed annotations and fails when the podCIDR changed; release removes them', async (t) => {
  const e = await env(t);
  e.server.addNode({ name: 'me', podCIDR: '10.244.1.0/24' });
  const store = e.store('me');
  const lease = await store.acquire(VXLAN_ATTRS);
  const patches = (): number => e.server.requests.filter((r) => r.method === 'PATCH').length;

  const renewed = await store.renew(lease);
  assert.equal(renewed.expiresAt, Infinity);
  assert.equal(patches(), 1, 'nothing to re-assert');

  e.server.modifyNode('me', (n) => {
    n.metadata.annotations = { unrelated: 'x' };
  });
  await store.renew(lease);
  assert.equal(patches(), 2);
  const ann = (e.server.getNode('me') as NodeObject).metadata.annotations as Record<string, string>;
  assert.equal(ann[`${P}kube-subnet-manager`], 'true');
  assert.equal(ann.unrelated, 'x');

  await store.release(lease);
  const after = (e.server.getNode('me') as NodeObject).metadata.annotations as Record<string, string>;
  assert.deepEqual(after, { unrelated: 'x' });
  await store.release(lease);
  assert.equal(patches(), 3, 'a second release writes nothing');

  e.server.modifyNode('me', (n) => {
    n.spec.podCIDR = '10.244.7.0/24';
    n.spec.podCIDRs = ['10.244.7.0/24'];
  });
  await assert.rejects(store.renew(lease), (err: unknown) => {
    assert.ok(err instanceof LeaseError);
    assert.match(err.message, /10\.244\.7\.0\/24.*10\.244\.1\.0\/24/);
    return true;
  });
  e.server.removeNode('me');
  await assert.rejects(store.renew(lease), /no longer exists/);
  await store.release(lease);
});

void test('in-cluster config: service account token and CA from a directory, HTTPS, bearer auth', async (t) => {
  const tmp = tempDir('kube-incluster');
  t.after(() => tmp.remove());
  const tls = await selfSignedCert(tmp.dir);
  const e = await env(t, { tls: { key: tls.key, cert: tls.cert }, token: 'sa-token-123' });
  e.server.addNode({ name: 'pod-node', podCIDR: '10.244.8.0/24' });
  const sa = join(tmp.dir, 'serviceaccount');
  const { mkdirSync, copyFileSync } = await import('node:fs');
  mkdirSync(sa);
  copyFileSync(tls.certFile, join(sa, 'ca.crt'));
  writeFileSync(join(sa, 'token'), 'sa-token-123\n');
  writeFileSync(join(sa, 'namespace'), 'kube-flannel');
  const clusterEnv = {
    KUBERNETES_SERVICE_HOST: '127.0.0.1',
    KUBERNETES_SERVICE_PORT: String(e.server.listenPort),
    NODE_NAME: 'pod-node',
  };
  const store = new KubeLeaseStore({
    netConfPath: e.netConfPath,
    env: clusterEnv,
    inCluster: { serviceAccountDir: sa },
  });
  t.after(() => store.close());
  assert.equal(store.nodeName, 'pod-node', 'node name from NODE_NAME');
  assert.equal(store.server, `https://127.0.0.1:${e.server.listenPort}`);
  const lease = await store.acquire(VXLAN_ATTRS);
  assert.equal(formatCidr(lease.subnet), '10.244.8.0/24');
  const w = new Watching().start(store, formatCidr(lease.subnet), t);
  await w.until('first batch', () => w.batches.length === 1);
  assert.ok(
    e.server.requests.length > 0 && e.server.requests.every((r) => r.authorization === 'Bearer sa-token-123'),
    'every request carried the token (trimmed)',
  );

  // A wrong token: 401, reported as a LeaseError that points at RBAC/service account.
  const badSa = join(tmp.dir, 'bad');
  mkdirSync(badSa);
  copyFileSync(tls.certFile, join(badSa, 'ca.crt'));
  writeFileSync(join(badSa, 'token'), 'wrong');
  const bad = new KubeLeaseStore({
    netConfPath: e.netConfPath,
    env: clusterEnv,
    inCluster: { serviceAccountDir: badSa },
  });
  t.after(() => bad.close());
  await assert.rejects(bad.acquire(VXLAN_ATTRS), (err: unknown) => {
    assert.ok(err instanceof LeaseError, String(err));
    assert.match(err.message, /401/);
    assert.match(err.message, /service account/);
    return true;
  });

  // Missing pieces are ConfigErrors that say what is missing.
  assert.throws(
    () =>
      new KubeLeaseStore({
        netConfPath: e.netConfPath,
        env: { NODE_NAME: 'x' },
        inCluster: { serviceAccountDir: sa },
      }),
    (err: unknown) => err instanceof ConfigError && /KUBERNETES_SERVICE_HOST/.test(err.message),
  );
  assert.throws(
    () =>
      new KubeLeaseStore({
        netConfPath: e.netConfPath,
        env: clusterEnv,
        inCluster: { serviceAccountDir: join(tmp.dir, 'nope') },
      }),
    (err: unknown) => err instanceof ConfigError && /token/.test(err.message),
  );
  assert.throws(
    () => new KubeLeaseStore({ kubeconfig: e.kubeconfig, env: {} }),
    (err: unknown) => err instanceof ConfigError && err.key === 'node-name',
  );
});

void test('a missing net-conf file is a ConfigError naming the file', async (t) => {
  const e = await env(t);
  const store = e.store('a', { netConfPath: join(e.dir, 'absent.json') });
  await assert.rejects(store.getNetworkConfig(), (err: unknown) => {
    assert.ok(err instanceof ConfigError);
    assert.match(err.message, /absent\.json/);
    return true;
  });
});

void test('scale: 1200 managed nodes are listed in pages and delivered as one first batch', async (t) => {
  const e = await env(t);
  e.server.addNode({ name: 'me', podCIDR: '10.244.0.0/24' });
  for (let i = 1; i <= 1200; i++) {
    const third = i % 256;
    const second = 244 + Math.floor(i / 256);
    e.server.addNode({
      name: `n${String(i).padStart(4, '0')}`,
      podCIDR: `10.${second}.${third}.0/24`,
      annotations: peerAnnotations(`198.18.${Math.floor(i / 256)}.${i % 256}`),
    });
  }
  const netConfPath = join(e.dir, 'big.json');
  writeFileSync(netConfPath, JSON.stringify({ Network: '10.240.0.0/12', Backend: { Type: 'vxlan' } }));
  const store = e.store('me', { netConfPath });
  const own = await store.acquire(VXLAN_ATTRS);
  const t0 = Date.now();
  const w = new Watching().start(store, formatCidr(own.subnet), t);
  await w.until('first batch', () => w.batches.length === 1, 10_000);
  const ms = Date.now() - t0;
  assert.equal(w.batches[0]?.length, 1200);
  const lists = e.server.requests.filter((r) => r.path === '/api/v1/nodes' && r.query.watch === undefined);
  assert.equal(lists.length, 3, 'three pages of 500');
  assert.ok(lists[1]?.query.continue && lists[2]?.query.continue, 'pages 2 and 3 follow the continue token');
  t.diagnostic(`1200 nodes listed and delivered in ${ms} ms`);
  await waitFor('watch open', () => (e.server.openWatches === 1 ? true : undefined));
  e.server.removeNode('n0007');
  await w.until('one removal', () => w.peers().size === 1199);
});
