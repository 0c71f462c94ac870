/**
 * Is the test API server faithful? Drives it with two independent real clients:
 * @kubernetes/client-node 1.4.0 (list, get, strategic-merge patch of status, raw watch with
 * bookmarks and 410, the informer's relist on 410) and kubectl 1.20 (discovery, get as JSON
 * and as a server-side Table, patch of every type, --raw status reads, get -w).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as k8s from '@kubernetes/client-node';
import { KubeApiServer } from '../support/kube-api-server.ts';
import type { NodeObject } from '../support/kube-api-server.ts';
import { kubectl, spawnKubectl, tempDir, waitFor } from '../support/kube-tools.ts';

interface Fixture {
  server: KubeApiServer;
  kubeconfig: string;
  home: string;
}

async function fixture(
  t: { after: (fn: () => Promise<void> | void) => void },
  bookmarkIntervalMs?: number,
): Promise<Fixture> {
  const tmp = tempDir('kubeapi');
  const server = await KubeApiServer.start(bookmarkIntervalMs ? { bookmarkIntervalMs } : {});
  t.after(async () => {
    await server.close();
    tmp.remove();
  });
  return { server, kubeconfig: server.writeKubeconfig(tmp.dir), home: tmp.dir };
}

function client(kubeconfig: string): { kc: k8s.KubeConfig; api: k8s.CoreV1Api } {
  const kc = new k8s.KubeConfig();
  kc.loadFromFile(kubeconfig);
  return { kc, api: kc.makeApiClient(k8s.CoreV1Api) };
}

const strategic = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.StrategicMergePatch);

void test('client-node: list, get, strategic-merge patch of status merges maps and conditions by type', async (t) => {
  const { server, kubeconfig } = await fixture(t);
  server.addNode({ name: 'n1', podCIDR: '10.244.1.0/24', annotations: { keep: 'me' } });
  server.addNode({ name: 'n2', podCIDR: '10.244.2.0/24' });
  const { api } = client(kubeconfig);

  const list = await api.listNode();
  assert.deepEqual(
    list.items.map((n) => [n.metadata?.name, n.spec?.podCIDR]),
    [
      ['n1', '10.244.1.0/24'],
      ['n2', '10.244.2.0/24'],
    ],
  );
  assert.equal(list.metadata?.resourceVersion, String(server.resourceVersion));

  const before = await api.readNode({ name: 'n1' });
  const rvBefore = Number(before.metadata?.resourceVersion);
  const patched = await api.patchNodeStatus(
    {
      name: 'n1',
      body: {
        metadata: { annotations: { 'x/a': '1' } },
        spec: { podCIDR: '10.99.0.0/24' },
        status: { conditions: [{ type: 'NetworkUnavailable', status: 'False', reason: 'R', message: 'm' }] },
      },
    },
    strategic,
  );
  assert.equal(server.requests.at(-1)?.contentType, 'application/strategic-merge-patch+json');
  assert.deepEqual(patched.metadata?.annotations, { keep: 'me', 'x/a': '1' });
  assert.equal(patched.spec?.podCIDR, '10.244.1.0/24', 'status subresource must ignore spec');
  assert.deepEqual(
    patched.status?.conditions?.map((c) => [c.type, c.status]),
    [
      ['Ready', 'True'],
      ['NetworkUnavailable', 'False'],
    ],
  );
  assert.ok(Number(patched.metadata?.resourceVersion) > rvBefore);

  // Same condition type again: merged in place, not appended.
  const again = await api.patchNodeStatus(
    {
      name: 'n1',
      body: { status: { conditions: [{ type: 'NetworkUnavailable', status: 'True', reason: 'Down' }] } },
    },
    strategic,
  );
  const nu = again.status?.conditions?.filter((c) => c.type === 'NetworkUnavailable') ?? [];
  assert.equal(nu.length, 1);
  assert.equal(nu[0]?.status, 'True');
  assert.equal(nu[0]?.message, 'm', 'fields absent from the patch are kept');

  // A patch that changes nothing keeps the resourceVersion.
  const rv = server.resourceVersion;
  const same = await api.patchNodeStatus(
    { name: 'n1', body: { metadata: { annotations: { keep: 'me' } } } },
    strategic,
  );
  assert.equal(same.metadata?.resourceVersion, String(rv));
  assert.equal(server.resourceVersion, rv);

  // null deletes a key; a stale resourceVersion conflicts; unknown nodes are 404.
  const del = await api.patchNodeStatus(
    { name: 'n1', body: { metadata: { annotations: { keep: null } } } },
    strategic,
  );
  assert.equal(del.metadata?.annotations?.keep, undefined);
  await assert.rejects(
    api.patchNodeStatus(
      { name: 'n1', body: { metadata: { resourceVersion: '1', labels: { a: 'b' } } } },
      strategic,
    ),
    (err: unknown) => err instanceof k8s.ApiException && err.code === 409,
  );
  await assert.rejects(
    api.readNode({ name: 'nope' }),
    (err: unknown) => err instanceof k8s.ApiException && err.code === 404,
  );
});

void test('client-node: raw watch streams events after a resourceVersion, bookmarks, and 410 for a compacted one', async (t) => {
  const { server, kubeconfig } = await fixture(t, 50);
  server.addNode({ name: 'n1', podCIDR: '10.244.1.0/24' });
  const { kc } = client(kubeconfig);
  const watch = new k8s.Watch(kc);
  const startRv = server.resourceVersion;

  const events: { type: string; name: string | undefined; rv: string | undefined }[] = [];
  let doneErr: unknown = 'not yet';
  const ctl = await watch.watch(
    '/api/v1/nodes',
    { resourceVersion: String(startRv), allowWatchBookmarks: true },
    (type, obj: k8s.V1Node) =>
      events.push({ type, name: obj.metadata?.name, rv: obj.metadata?.resourceVersion }),
    (err) => {
      doneErr = err;
    },
  );
  t.after(() => ctl.abort());
  assert.ok(server.requests.some((r) => r.query.watch === 'true' && r.query.allowWatchBookmarks === 'true'));

  server.addNode({ name: 'n2', podCIDR: '10.244.2.0/24' });
  server.modifyNode('n2', (n) => {
    n.metadata.labels = { role: 'x' };
  });
  server.removeNode('n1');
  await waitFor('three events', () =>
    events.filter((e) => e.type !== 'BOOKMARK').length >= 3 ? true : undefined,
  );
  assert.deepEqual(
    events.filter((e) => e.type !== 'BOOKMARK').map((e) => [e.type, e.name]),
    [
      ['ADDED', 'n2'],
      ['MODIFIED', 'n2'],
      ['DELETED', 'n1'],
    ],
  );
  const bookmark = await waitFor('a bookmark', () =>
    events.find((e) => e.type === 'BOOKMARK' && e.rv === String(server.resourceVersion)),
  );
  assert.equal(bookmark.rv, String(server.resourceVersion));
  ctl.abort();
  await waitFor('watch closed', () => (server.openWatches === 0 ? true : undefined));

  // A watch that resumes from an old version after compaction gets ERROR 410 and the stream ends.
  server.compact();
  const errors: k8s.V1Status[] = [];
  let ended = false;
  await watch.watch(
    '/api/v1/nodes',
    { resourceVersion: String(startRv) },
    (type, obj: k8s.V1Status) => {
      if (type === 'ERROR') errors.push(obj);
    },
    () => {
      ended = true;
    },
  );
  await waitFor('stream end', () => (ended ? true : undefined));
  assert.equal(errors.length, 1);
  assert.equal(errors[0]?.code, 410);
  assert.equal(errors[0]?.reason, 'Expired');
  assert.notEqual(doneErr, undefined);
});

void test('client-node: the informer lists, follows changes and relists after 410 without losing anything', async (t) => {
  const { server, kubeconfig } = await fixture(t);
  server.addNode({ name: 'n1', podCIDR: '10.244.1.0/24' });
  const { kc, api } = client(kubeconfig);
  const informer = k8s.makeInformer(kc, '/api/v1/nodes', () => api.listNode());
  const seen: string[] = [];
  informer.on('add', (n: k8s.V1Node) => seen.push(`add ${n.metadata?.name}`));
  informer.on('update', (n: k8s.V1Node) => seen.push(`update ${n.metadata?.name}`));
  informer.on('delete', (n: k8s.V1Node) => seen.push(`delete ${n.metadata?.name}`));
  await informer.start();
  t.after(() => informer.stop());
  await waitFor('initial add', () => (seen.includes('add n1') ? true : undefined));
  await waitFor('watch open', () => (server.openWatches === 1 ? true : undefined));

  server.addNode({ name: 'n2', podCIDR: '10.244.2.0/24' });
  await waitFor('add n2', () => (seen.includes('add n2') ? true : undefined));

  // Expire the watch, then change things while the informer is relisting.
  server.expireWatches();
  server.removeNode('n1');
  server.addNode({ name: 'n3', podCIDR: '10.244.3.0/24' });
  await waitFor('delete n1 and add n3', () =>
    seen.includes('delete n1') && seen.includes('add n3') ? true : undefined,
  );
  await waitFor('watch reopened', () => (server.openWatches === 1 ? true : undefined));
  const lists = server.requests.filter((r) => r.path === '/api/v1/nodes' && r.query.watch === undefined);
  assert.ok(lists.length >= 2, `informer relisted (${lists.length} lists)`);
  assert.deepEqual(
    informer
      .list()
      .map((n) => n.metadata?.name)
      .sort(),
    ['n2', 'n3'],
  );
});

void test('kubectl 1.20: discovery, get -o json, server-side table, patch of every type, --raw status', async (t) => {
  const { server, kubeconfig, home } = await fixture(t);
  server.addNode({ name: 'n1', podCIDR: '10.244.1.0/24' });
  server.addNode({ name: 'n2', podCIDR: '10.244.2.0/24' });

  const got = await kubectl(kubeconfig, home, ['get', 'nodes', '-o', 'json']);
  assert.equal(got.code, 0, got.stderr);
  const list = JSON.parse(got.stdout) as { kind: string; items: NodeObject[] };
  assert.equal(list.kind, 'List');
  assert.deepEqual(
    list.items.map((n) => [n.kind, n.metadata.name, n.spec.podCIDR]),
    [
      ['Node', 'n1', '10.244.1.0/24'],
      ['Node', 'n2', '10.244.2.0/24'],
    ],
  );

  const table = await kubectl(kubeconfig, home, ['get', 'nodes']);
  assert.equal(table.code, 0, table.stderr);
  const lines = table.stdout.trim().split('\n');
  assert.match(lines[0] ?? '', /^NAME\s+STATUS\s+ROLES\s+AGE\s+VERSION$/);
  assert.match(lines[1] ?? '', /^n1\s+Ready\s+<none>\s+\d+s\s+v1\.20\.2$/);

  const wide = await kubectl(kubeconfig, home, ['get', 'nodes', '-o', 'wide']);
  assert.match(wide.stdout.split('\n')[0] ?? '', /VERSION\s+INTERNAL-IP\s+EXTERNAL-IP\s+CONTAINER-RUNTIME$/);
  assert.match(wide.stdout.split('\n')[1] ?? '', /192\.0\.2\.1\s+<none>\s+containerd:\/\/1\.6\.0$/);

  const one = await kubectl(kubeconfig, home, ['get', 'node', 'n2', '-o', 'jsonpath={.spec.podCIDR}']);
  assert.equal(one.stdout, '10.244.2.0/24');

  const sp = await kubectl(kubeconfig, home, [
    'patch',
    'node',
    'n1',
    '-p',
    '{"metadata":{"annotations":{"a":"1"}},"status":{"conditions":[{"type":"X","status":"True"}]}}',
  ]);
  assert.equal(sp.code, 0, sp.stderr);
  assert.equal(server.requests.at(-1)?.contentType, 'application/strategic-merge-patch+json');
  let n1 = server.getNode('n1');
  assert.equal((n1?.metadata.annotations as Record<string, string>).a, '1');
  assert.equal(JSON.stringify(n1?.status).includes('"X"'), false, 'the main resource ignores status changes');

  const mp = await kubectl(kubeconfig, home, [
    'patch',
    'node',
    'n1',
    '--type',
    'merge',
    '-p',
    '{"metadata":{"labels":{"m":"2"}}}',
  ]);
  assert.equal(mp.code, 0, mp.stderr);
  assert.equal(server.requests.at(-1)?.contentType, 'application/merge-patch+json');
  const jp = await kubectl(kubeconfig, home, [
    'patch',
    'node',
    'n1',
    '--type',
    'json',
    '-p',
    '[{"op":"add","path":"/metadata/annotations/j","value":"3"},{"op":"remove","path":"/metadata/annotations/a"}]',
  ]);
  assert.equal(jp.code, 0, jp.stderr);
  assert.equal(server.requests.at(-1)?.contentType, 'application/json-patch+json');
  n1 = server.getNode('n1');
  assert.deepEqual(n1?.metadata.annotations, { j: '3' });
  assert.equal((n1?.metadata.labels as Record<string, string>).m, '2');

  const raw = await kubectl(kubeconfig, home, ['get', '--raw', '/api/v1/nodes/n1/status']);
  assert.equal(raw.code, 0, raw.stderr);
  const st = JSON.parse(raw.stdout) as NodeObject;
  assert.equal(st.metadata.resourceVersion, n1?.metadata.resourceVersion);

  const missing = await kubectl(kubeconfig, home, ['get', 'node', 'nope']);
  assert.notEqual(missing.code, 0);
  assert.match(missing.stderr, /nodes "nope" not found/);

  // Lists with a merge key: taints merge by `key`, `$patch: delete` removes one.
  const taint = (k: string): string =>
    JSON.stringify({ spec: { taints: [{ key: k, effect: 'NoSchedule' }] } });
  assert.equal((await kubectl(kubeconfig, home, ['patch', 'node', 'n2', '-p', taint('a')])).code, 0);
  assert.equal((await kubectl(kubeconfig, home, ['patch', 'node', 'n2', '-p', taint('b')])).code, 0);
  const delA = JSON.stringify({ spec: { taints: [{ key: 'a', $patch: 'delete' }] } });
  assert.equal((await kubectl(kubeconfig, home, ['patch', 'node', 'n2', '-p', delA])).code, 0);
  assert.deepEqual(server.getNode('n2')?.spec.taints, [{ key: 'b', effect: 'NoSchedule' }]);

  // annotate/label (patches built by kubectl itself), then delete.
  const an = await kubectl(kubeconfig, home, ['annotate', 'node', 'n2', 'weft.example/x=1']);
  assert.equal(an.code, 0, an.stderr);
  const lb = await kubectl(kubeconfig, home, ['label', 'node', 'n2', 'tier=edge']);
  assert.equal(lb.code, 0, lb.stderr);
  const n2 = server.getNode('n2');
  assert.equal((n2?.metadata.annotations as Record<string, string>)['weft.example/x'], '1');
  assert.equal((n2?.metadata.labels as Record<string, string>).tier, 'edge');
  const sel = await kubectl(kubeconfig, home, ['get', 'nodes', '-l', 'tier=edge', '-o', 'name']);
  assert.equal(sel.stdout.trim(), 'node/n2');
  const del = await kubectl(kubeconfig, home, ['delete', 'node', 'n2']);
  assert.equal(del.code, 0, del.stderr);
  assert.equal(server.getNode('n2'), undefined);
});

void test('kubectl 1.20: get -w sees nodes appear and change', async (t) => {
  const { server, kubeconfig, home } = await fixture(t);
  server.addNode({ name: 'n1', podCIDR: '10.244.1.0/24' });
  // Warm the discovery cache so the watch starts quickly.
  assert.equal((await kubectl(kubeconfig, home, ['get', 'nodes', '-o', 'name'])).code, 0);
  const child = spawnKubectl(kubeconfig, home, ['get', 'nodes', '-w', '-o', 'name']);
  t.after(() => {
    if (child.exitCode === null && child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  await waitFor('initial n1', () => (out.includes('node/n1') ? true : undefined), 10_000);
  await waitFor('watch open', () => (server.openWatches > 0 ? true : undefined), 10_000);
  server.addNode({ name: 'n2', podCIDR: '10.244.2.0/24' });
  await waitFor('n2 via watch', () => (out.includes('node/n2') ? true : undefined), 10_000);
  const watchReq = server.requests.find((r) => r.query.watch === 'true' || r.query.watch === '1');
  assert.ok(watchReq, 'kubectl opened a watch');
});

void test('paging: kubectl and client-node follow continue tokens over one consistent snapshot', async (t) => {
  const { server, kubeconfig, home } = await fixture(t);
  for (let i = 0; i < 1100; i++) server.addNode({ name: `n${String(i).padStart(4, '0')}` });
  const got = await kubectl(kubeconfig, home, ['get', 'nodes', '-o', 'name']);
  assert.equal(got.code, 0, got.stderr);
  assert.equal(got.stdout.trim().split('\n').length, 1100);
  const pages = server.requests.filter((r) => r.path === '/api/v1/nodes');
  assert.deepEqual(
    pages.map((r) => [r.query.limit, r.query.continue !== undefined]),
    [
      ['500', false],
      ['500', true],
      ['500', true],
    ],
  );

  const { api } = client(kubeconfig);
  const first = await api.listNode({ limit: 600 });
  assert.equal(first.items.length, 600);
  assert.equal(first.metadata?.remainingItemCount, 500);
  server.addNode({ name: 'zzz-late' });
  const second = await api.listNode({ limit: 600, _continue: first.metadata?._continue });
  assert.equal(second.items.length, 500, 'a node added between pages is not in this list');
  assert.equal(second.metadata?.resourceVersion, first.metadata?.resourceVersion);
  assert.equal(second.metadata?._continue, undefined);
  const again = await api.listNode({ limit: 600, _continue: first.metadata?._continue });
  assert.equal(again.items.length, 500, 'a continue token can be reused until compaction');
  server.compact();
  await assert.rejects(
    api.listNode({ limit: 600, _continue: first.metadata?._continue }),
    (err: unknown) => err instanceof k8s.ApiException && err.code === 410,
  );
});
