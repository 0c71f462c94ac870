/**
 * A small, faithful stand-in for kube-apiserver, serving only Nodes.
 *
 * Why: no kube-apiserver can run on the test machines, yet the kube lease store must be
 * tested against the protocol a real one speaks, not against a mock of our own client. This
 * server copies the behaviour real clients depend on (checked by test/lease/kube-api-server
 * tests with two independent clients, @kubernetes/client-node and kubectl 1.20):
 *
 * - discovery (/api, /api/v1, /apis, /version), Table output for `kubectl get`;
 * - GET/LIST (label/field selectors, limit/continue paging over one snapshot)/CREATE/
 *   UPDATE/DELETE nodes, PATCH nodes/<n> and nodes/<n>/status with
 *   strategic-merge (maps merged, lists with a merge key such as status.conditions merged
 *   by `type`, `$patch` directives, null deletes), JSON merge patch and JSON patch; the main
 *   resource ignores status changes and the status subresource ignores spec changes;
 *   a patch that changes nothing keeps the resourceVersion and emits no event;
 * - one cluster-wide, monotonically increasing resourceVersion;
 * - WATCH (?watch=1): chunked JSON lines flushed at once, ADDED/MODIFIED/DELETED after the
 *   given resourceVersion (or synthetic ADDED for everything when none/"0" is given),
 *   BOOKMARK when allowWatchBookmarks=true, timeoutSeconds, and an ERROR event with a 410
 *   Expired Status (then the stream ends) when the resourceVersion was compacted away;
 * - optional bearer-token auth (401 Status) and optional TLS.
 *
 * Test levers: addNode/modifyNode/removeNode, compact() (forces 410 for old versions),
 * silenceWatches() (open watches stay connected but receive nothing, like a dead TCP path),
 * endWatches() (server-side close), expireWatches() (410 on open watches), sendBookmarks(),
 * failNext() (injected 5xx/429), goneAsHttpStatus (410 as an HTTP status), a request log.
 */
import { createServer as createHttpServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type JsonObject = { [k: string]: Json };

export interface NodeObject extends JsonObject {
  kind: 'Node';
  apiVersion: 'v1';
  metadata: JsonObject & { name: string };
  spec: JsonObject;
  status: JsonObject;
}

export interface KubeApiServerOptions {
  /** Serve HTTPS with this key and certificate (PEM). */
  readonly tls?: { readonly key: string; readonly cert: string };
  /** Require `Authorization: Bearer <token>`. */
  readonly token?: string;
  /** Interval of periodic BOOKMARK events on watches that allow them (default 60 s, as real). */
  readonly bookmarkIntervalMs?: number;
}

export interface RequestRecord {
  readonly method: string;
  readonly path: string;
  readonly query: Readonly<Record<string, string>>;
  readonly contentType: string | undefined;
  readonly accept: string | undefined;
  readonly authorization: string | undefined;
  readonly body: string;
}

export interface NewNode {
  readonly name: string;
  readonly podCIDR?: string;
  readonly podCIDRs?: readonly string[];
  readonly labels?: Readonly<Record<string, string>>;
  readonly annotations?: Readonly<Record<string, string>>;
  readonly internalIP?: string;
}

interface HistoryEntry {
  readonly rv: number;
  readonly type: 'ADDED' | 'MODIFIED' | 'DELETED';
  readonly object: NodeObject;
}

interface Watcher {
  readonly res: ServerResponse;
  readonly bookmarks: boolean;
  readonly filter: (n: NodeObject) => boolean;
  silent: boolean;
  timer?: NodeJS.Timeout;
  bookmarkTimer?: NodeJS.Timeout;
}

class HttpError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly details?: JsonObject,
  ) {
    super(message);
  }
}

const clone = <T>(v: T): T => structuredClone(v);

function isObj(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A JSON value as text for messages (strings as they are). */
function text(v: Json | undefined): string {
  return typeof v === 'string' ? v : JSON.stringify(v ?? null);
}

function deepEqual(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** Lists of a Node that strategic merge patches merge by a key (from the Go struct tags). */
const MERGE_KEYS: Readonly<Record<string, string>> = {
  'status.conditions': 'type',
  'status.addresses': 'type',
  'status.volumesAttached': 'name',
  'spec.taints': 'key',
  'metadata.ownerReferences': 'uid',
  'metadata.managedFields': 'manager',
};
/** Lists of primitives that strategic merge patches merge as sets. */
const MERGE_SETS = new Set(['metadata.finalizers', 'spec.podCIDRs']);

function strategicMerge(target: Json, patch: Json, path: string): Json {
  if (!isObj(patch)) return clone(patch);
  const directive = patch.$patch;
  if (directive === 'replace') {
    const out = clone(patch);
    delete out.$patch;
    return out;
  }
  if (directive === 'delete') return null;
  const out: JsonObject = isObj(target) ? clone(target) : {};
  for (const [key, value] of Object.entries(patch)) {
    if (key === '$patch' || key === '$retainKeys' || key.startsWith('$setElementOrder/')) continue;
    if (key.startsWith('$deleteFromPrimitiveList/')) {
      const field = key.slice('$deleteFromPrimitiveList/'.length);
      const cur = out[field];
      if (Array.isArray(cur) && Array.isArray(value)) {
        out[field] = cur.filter((x) => !value.some((y) => deepEqual(x, y)));
      }
      continue;
    }
    const sub = path ? `${path}.${key}` : key;
    if (value === null) {
      delete out[key];
    } else if (Array.isArray(value)) {
      out[key] = mergeList(out[key], value, sub);
    } else if (isObj(value)) {
      const merged = strategicMerge(out[key] ?? null, value, sub);
      if (merged === null) delete out[key];
      else out[key] = merged;
    } else {
      out[key] = value;
    }
  }
  const retain = patch.$retainKeys;
  if (Array.isArray(retain)) {
    for (const k of Object.keys(out)) if (!retain.includes(k)) delete out[k];
  }
  return out;
}

function mergeList(current: Json | undefined, patch: Json[], path: string): Json[] {
  const mergeKey = MERGE_KEYS[path];
  const cur = Array.isArray(current) ? clone(current) : [];
  if (mergeKey) {
    const replace = patch.find((p) => isObj(p) && p.$patch === 'replace');
    if (replace) return patch.filter((p) => !(isObj(p) && p.$patch === 'replace')).map(clone);
    for (const item of patch) {
      if (!isObj(item)) continue;
      const idx = cur.findIndex((c) => isObj(c) && c[mergeKey] === item[mergeKey]);
      if (item.$patch === 'delete') {
        if (idx >= 0) cur.splice(idx, 1);
      } else if (idx >= 0) {
        cur[idx] = strategicMerge(cur[idx] as Json, item, path);
      } else {
        const fresh = clone(item);
        delete fresh.$patch;
        cur.push(fresh);
      }
    }
    return cur;
  }
  if (MERGE_SETS.has(path)) {
    for (const item of patch) if (!cur.some((c) => deepEqual(c, item))) cur.push(clone(item));
    return cur;
  }
  return patch.map(clone);
}

/** RFC 7386 JSON merge patch. */
function mergePatch(target: Json, patch: Json): Json {
  if (!isObj(patch)) return clone(patch);
  const out: JsonObject = isObj(target) ? clone(target) : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete out[key];
    else out[key] = mergePatch(out[key] ?? null, value);
  }
  return out;
}

function pointer(path: string): string[] {
  if (path === '') return [];
  if (!path.startsWith('/'))
    throw new HttpError(422, 'Invalid', `invalid JSON pointer ${JSON.stringify(path)}`);
  return path
    .slice(1)
    .split('/')
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

/** RFC 6902 JSON patch (add, remove, replace, move, copy, test). */
function jsonPatch(doc: Json, ops: Json): Json {
  if (!Array.isArray(ops))
    throw new HttpError(400, 'BadRequest', 'a JSON patch must be an array of operations');
  let root = clone(doc);
  const parentOf = (segs: string[]): { parent: Json; last: string } => {
    let cur: Json = root;
    for (const s of segs.slice(0, -1)) {
      const next: Json | undefined = Array.isArray(cur) ? cur[Number(s)] : isObj(cur) ? cur[s] : undefined;
      if (next === undefined) throw new HttpError(422, 'Invalid', `path segment ${s} does not exist`);
      cur = next;
    }
    return { parent: cur, last: segs[segs.length - 1] ?? '' };
  };
  const get = (segs: string[]): Json => {
    if (segs.length === 0) return root;
    const { parent, last } = parentOf(segs);
    const v = Array.isArray(parent) ? parent[Number(last)] : isObj(parent) ? parent[last] : undefined;
    if (v === undefined) throw new HttpError(422, 'Invalid', `path /${segs.join('/')} does not exist`);
    return v;
  };
  const remove = (segs: string[]): Json => {
    const v = get(segs);
    const { parent, last } = parentOf(segs);
    if (Array.isArray(parent)) parent.splice(Number(last), 1);
    else if (isObj(parent)) delete parent[last];
    return v;
  };
  const add = (segs: string[], value: Json): void => {
    if (segs.length === 0) {
      root = value;
      return;
    }
    const { parent, last } = parentOf(segs);
    if (Array.isArray(parent)) {
      const i = last === '-' ? parent.length : Number(last);
      if (!(i >= 0 && i <= parent.length)) throw new HttpError(422, 'Invalid', `index ${last} out of range`);
      parent.splice(i, 0, value);
    } else if (isObj(parent)) parent[last] = value;
    else throw new HttpError(422, 'Invalid', `cannot add at /${segs.join('/')}`);
  };
  for (const op of ops) {
    if (!isObj(op) || typeof op.op !== 'string' || typeof op.path !== 'string') {
      throw new HttpError(400, 'BadRequest', 'each JSON patch operation needs "op" and "path"');
    }
    const segs = pointer(op.path);
    switch (op.op) {
      case 'add':
        add(segs, clone(op.value ?? null));
        break;
      case 'remove':
        remove(segs);
        break;
      case 'replace':
        remove(segs);
        add(segs, clone(op.value ?? null));
        break;
      case 'move':
        add(segs, remove(pointer(typeof op.from === 'string' ? op.from : '')));
        break;
      case 'copy':
        add(segs, clone(get(pointer(typeof op.from === 'string' ? op.from : ''))));
        break;
      case 'test':
        if (!deepEqual(get(segs), op.value)) throw new HttpError(422, 'Invalid', `test failed at ${op.path}`);
        break;
      default:
        throw new HttpError(400, 'BadRequest', `unknown JSON patch op ${JSON.stringify(op.op)}`);
    }
  }
  return root;
}

function status(code: number, reason: string, message: string, details?: JsonObject): JsonObject {
  const s: JsonObject = {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message,
    reason,
  };
  if (details) s.details = details;
  s.code = code;
  return s;
}

function age(created: string): string {
  const secs = Math.max(0, Math.floor((Date.now() - Date.parse(created)) / 1000));
  if (secs < 120) return `${secs}s`;
  if (secs < 7200) return `${Math.floor(secs / 60)}m`;
  return `${Math.floor(secs / 3600)}h`;
}

export class KubeApiServer {
  readonly requests: RequestRecord[] = [];
  private readonly nodes = new Map<string, NodeObject>();
  private history: HistoryEntry[] = [];
  private rv = 1;
  /** Watches from a resourceVersion below this get 410 Gone. */
  private compactedRv = 0;
  private readonly watchers = new Set<Watcher>();
  private readonly pages = new Map<
    string,
    { snapshot: { rv: number; items: NodeObject[] }; offset: number }
  >();
  private readonly failures: { left: number; code: number; match: (r: RequestRecord) => boolean }[] = [];
  private server!: Server;
  private port = 0;
  /** Answer a watch from a compacted resourceVersion with HTTP 410 instead of an ERROR event. */
  goneAsHttpStatus = false;

  private constructor(private readonly opts: KubeApiServerOptions) {}

  static async start(opts: KubeApiServerOptions = {}): Promise<KubeApiServer> {
    const s = new KubeApiServer(opts);
    const handler = (req: IncomingMessage, res: ServerResponse): void => s.handle(req, res);
    s.server = opts.tls
      ? createHttpsServer({ key: opts.tls.key, cert: opts.tls.cert }, handler)
      : createHttpServer(handler);
    await new Promise<void>((resolve, reject) => {
      s.server.once('error', reject);
      s.server.listen(0, '127.0.0.1', () => resolve());
    });
    s.port = (s.server.address() as AddressInfo).port;
    return s;
  }

  get url(): string {
    return `${this.opts.tls ? 'https' : 'http'}://127.0.0.1:${this.port}`;
  }

  get host(): string {
    return '127.0.0.1';
  }

  get listenPort(): number {
    return this.port;
  }

  /** The current (latest) resourceVersion. */
  get resourceVersion(): number {
    return this.rv;
  }

  /** Number of watch streams currently open. */
  get openWatches(): number {
    return this.watchers.size;
  }

  async close(): Promise<void> {
    for (const w of this.watchers) this.endWatch(w);
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Writes a kubeconfig (JSON is valid YAML) pointing at this server; returns its path. */
  writeKubeconfig(dir: string, opts: { token?: string; caFile?: string } = {}): string {
    const cluster: JsonObject = { server: this.url };
    if (opts.caFile) cluster['certificate-authority'] = opts.caFile;
    // client-node 1.x refuses plain http unless TLS verification is declared off (there is
    // nothing to verify); kubectl accepts the same setting.
    if (!this.opts.tls) cluster['insecure-skip-tls-verify'] = true;
    const user: JsonObject = opts.token ? { token: opts.token } : {};
    const cfg = {
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'weft-test', cluster }],
      users: [{ name: 'weft-test', user }],
      contexts: [{ name: 'weft-test', context: { cluster: 'weft-test', user: 'weft-test' } }],
      'current-context': 'weft-test',
      preferences: {},
    };
    const path = join(dir, 'kubeconfig');
    writeFileSync(path, JSON.stringify(cfg, null, 2));
    return path;
  }

  // ---- test levers -------------------------------------------------------------------

  addNode(spec: NewNode): NodeObject {
    if (this.nodes.has(spec.name)) throw new Error(`node ${spec.name} exists`);
    const node = this.newNodeObject(spec);
    return this.store('ADDED', node);
  }

  getNode(name: string): NodeObject | undefined {
    const n = this.nodes.get(name);
    return n ? clone(n) : undefined;
  }

  listNodes(): NodeObject[] {
    return [...this.nodes.values()].map(clone);
  }

  /** Changes a node in place (any field); bumps resourceVersion and emits MODIFIED. */
  modifyNode(name: string, change: (n: NodeObject) => void): NodeObject {
    const cur = this.nodes.get(name);
    if (!cur) throw new Error(`node ${name} not found`);
    const next = clone(cur);
    change(next);
    return this.store('MODIFIED', next);
  }

  removeNode(name: string): void {
    const cur = this.nodes.get(name);
    if (!cur) throw new Error(`node ${name} not found`);
    this.remove(cur);
  }

  /** Drops all history: watches from any resourceVersion older than now get 410 Gone. */
  compact(): void {
    this.history = [];
    this.pages.clear();
    this.compactedRv = this.rv;
  }

  /** Makes every open watch silent: connected, but nothing (no events, no bookmarks) arrives. */
  silenceWatches(): void {
    for (const w of this.watchers) w.silent = true;
  }

  /** Ends every open watch from the server side (as a request timeout does). */
  endWatches(): void {
    for (const w of this.watchers) this.endWatch(w);
  }

  /** Sends a 410 Expired ERROR on every open watch, then ends it (etcd compaction under it). */
  expireWatches(): void {
    this.compact();
    for (const w of this.watchers) {
      this.writeEvent(w, { type: 'ERROR', object: this.expiredStatus(0) });
      this.endWatch(w);
    }
  }

  /**
   * Fails the next `count` requests that match `match` (default: all) with HTTP `code` and
   * a Status body, as an overloaded or restarting API server does.
   */
  failNext(count: number, code = 500, match: (r: RequestRecord) => boolean = () => true): void {
    this.failures.push({ left: count, code, match });
  }

  /** Sends a BOOKMARK now on every open watch that allows them. */
  sendBookmarks(): void {
    for (const w of this.watchers) if (w.bookmarks) this.writeBookmark(w);
  }

  // ---- storage ------------------------------------------------------------------------

  private newNodeObject(spec: NewNode): NodeObject {
    const podCIDRs = spec.podCIDRs ?? (spec.podCIDR ? [spec.podCIDR] : undefined);
    const nodeSpec: JsonObject = {};
    if (podCIDRs && podCIDRs.length > 0) {
      nodeSpec.podCIDR = spec.podCIDR ?? podCIDRs[0] ?? null;
      nodeSpec.podCIDRs = [...podCIDRs];
    }
    const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    return {
      kind: 'Node',
      apiVersion: 'v1',
      metadata: {
        name: spec.name,
        uid: randomUUID(),
        resourceVersion: '0',
        creationTimestamp: now,
        labels: {
          'kubernetes.io/hostname': spec.name,
          'kubernetes.io/os': 'linux',
          ...(spec.labels ?? {}),
        },
        annotations: { ...(spec.annotations ?? {}) },
      },
      spec: nodeSpec,
      status: {
        conditions: [
          {
            type: 'Ready',
            status: 'True',
            lastHeartbeatTime: now,
            lastTransitionTime: now,
            reason: 'KubeletReady',
            message: 'kubelet is posting ready status',
          },
        ],
        addresses: [
          { type: 'InternalIP', address: spec.internalIP ?? '192.0.2.1' },
          { type: 'Hostname', address: spec.name },
        ],
        nodeInfo: {
          kubeletVersion: 'v1.20.2',
          operatingSystem: 'linux',
          architecture: 'amd64',
          containerRuntimeVersion: 'containerd://1.6.0',
        },
      },
    };
  }

  private store(type: 'ADDED' | 'MODIFIED', node: NodeObject): NodeObject {
    this.rv += 1;
    node.metadata.resourceVersion = String(this.rv);
    const name = node.metadata.name;
    this.nodes.set(name, node);
    this.record(type, node);
    return clone(node);
  }

  private remove(node: NodeObject): NodeObject {
    this.rv += 1;
    const gone = clone(node);
    gone.metadata.resourceVersion = String(this.rv);
    this.nodes.delete(node.metadata.name);
    this.record('DELETED', gone);
    return gone;
  }

  private record(type: HistoryEntry['type'], object: NodeObject): void {
    const entry: HistoryEntry = { rv: this.rv, type, object: clone(object) };
    this.history.push(entry);
    for (const w of this.watchers) {
      if (!w.silent && w.filter(entry.object)) this.writeEvent(w, { type, object: entry.object });
    }
  }

  private expiredStatus(fromRv: number): JsonObject {
    return status(410, 'Expired', `too old resource version: ${fromRv} (${this.compactedRv})`);
  }

  // ---- HTTP ---------------------------------------------------------------------------

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const url = new URL(req.url ?? '/', 'http://x');
      const query = Object.fromEntries(url.searchParams.entries());
      const record: RequestRecord = {
        method: req.method ?? 'GET',
        path: url.pathname,
        query,
        contentType: req.headers['content-type'],
        accept: req.headers.accept,
        authorization: req.headers.authorization,
        body,
      };
      this.requests.push(record);
      try {
        const failure = this.failures.find((f) => f.left > 0 && f.match(record));
        if (failure) {
          failure.left--;
          throw new HttpError(
            failure.code,
            failure.code === 429 ? 'TooManyRequests' : 'InternalError',
            'injected failure',
          );
        }
        this.route(req, res, url.pathname, query, body);
      } catch (err) {
        const e =
          err instanceof HttpError
            ? err
            : new HttpError(500, 'InternalError', `internal error: ${String(err)}`);
        this.send(res, e.code, status(e.code, e.reason, e.message, e.details));
      }
    });
  }

  private send(res: ServerResponse, code: number, obj: Json): void {
    const text = JSON.stringify(obj);
    res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
    res.end(text);
  }

  private route(
    req: IncomingMessage,
    res: ServerResponse,
    path: string,
    query: Record<string, string>,
    body: string,
  ): void {
    if (this.opts.token !== undefined && req.headers.authorization !== `Bearer ${this.opts.token}`) {
      throw new HttpError(401, 'Unauthorized', 'Unauthorized');
    }
    const method = req.method ?? 'GET';
    const p = path.replace(/\/+$/, '') || '/';
    if (method === 'GET') {
      switch (p) {
        case '/version':
          return this.send(res, 200, {
            major: '1',
            minor: '20',
            gitVersion: 'v1.20.2',
            gitCommit: 'weft-test-api-server',
            gitTreeState: 'clean',
            buildDate: '2021-01-13T13:20:00Z',
            goVersion: 'go1.15.5',
            compiler: 'gc',
            platform: 'linux/amd64',
          });
        case '/api':
          return this.send(res, 200, {
            kind: 'APIVersions',
            versions: ['v1'],
            serverAddressByClientCIDRs: [
              { clientCIDR: '0.0.0.0/0', serverAddress: `127.0.0.1:${this.port}` },
            ],
          });
        case '/apis':
          return this.send(res, 200, { kind: 'APIGroupList', apiVersion: 'v1', groups: [] });
        case '/api/v1':
          return this.send(res, 200, {
            kind: 'APIResourceList',
            groupVersion: 'v1',
            resources: [
              {
                name: 'nodes',
                singularName: '',
                namespaced: false,
                kind: 'Node',
                verbs: ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'],
                shortNames: ['no'],
              },
              {
                name: 'nodes/status',
                singularName: '',
                namespaced: false,
                kind: 'Node',
                verbs: ['get', 'patch', 'update'],
              },
            ],
          });
        case '/healthz':
        case '/readyz':
        case '/livez':
          res.writeHead(200, { 'Content-Type': 'text/plain' });
          res.end('ok');
          return;
      }
    }
    const m = /^\/api\/v1\/nodes(?:\/([^/]+)(?:\/(status))?)?$/.exec(p);
    if (!m) throw new HttpError(404, 'NotFound', 'the server could not find the requested resource');
    const name = m[1] !== undefined ? decodeURIComponent(m[1]) : undefined;
    const sub = m[2];
    if (name === undefined) {
      if (method === 'GET') {
        if (query.watch === '1' || query.watch === 'true') return this.watch(res, query);
        return this.list(req, res, query);
      }
      if (method === 'POST') return this.create(res, body);
      throw new HttpError(
        405,
        'MethodNotAllowed',
        `the server does not allow this method on the requested resource`,
      );
    }
    switch (method) {
      case 'GET':
        return this.send(res, 200, this.mustGet(name));
      case 'PATCH':
        return this.send(res, 200, this.patch(name, sub === 'status', req.headers['content-type'], body));
      case 'PUT':
        return this.send(res, 200, this.update(name, sub === 'status', body));
      case 'DELETE':
        if (sub)
          throw new HttpError(
            405,
            'MethodNotAllowed',
            'the server does not allow this method on the requested resource',
          );
        return this.send(res, 200, this.delete(name));
      default:
        throw new HttpError(
          405,
          'MethodNotAllowed',
          'the server does not allow this method on the requested resource',
        );
    }
  }

  private mustGet(name: string): NodeObject {
    const n = this.nodes.get(name);
    if (!n) throw new HttpError(404, 'NotFound', `nodes "${name}" not found`, { name, kind: 'nodes' });
    return clone(n);
  }

  private selector(query: Record<string, string>): (n: NodeObject) => boolean {
    const tests: ((n: NodeObject) => boolean)[] = [];
    for (const part of (query.fieldSelector ?? '').split(',').filter(Boolean)) {
      const mm = /^([\w.]+)(!=|==|=)(.*)$/.exec(part);
      if (!mm || mm[1] !== 'metadata.name') {
        throw new HttpError(400, 'BadRequest', `field label not supported: ${part}`);
      }
      const want = mm[3] ?? '';
      const neg = mm[2] === '!=';
      tests.push((n) => (n.metadata.name === want) !== neg);
    }
    for (const part of (query.labelSelector ?? '').split(',').filter(Boolean)) {
      const mm = /^([\w./-]+)\s*(!=|==|=)\s*(.*)$/.exec(part);
      const labels = (n: NodeObject): JsonObject => (isObj(n.metadata.labels) ? n.metadata.labels : {});
      if (mm) {
        const key = mm[1] ?? '';
        const want = mm[3] ?? '';
        const neg = mm[2] === '!=';
        tests.push((n) => (labels(n)[key] === want) !== neg);
      } else if (/^!?[\w./-]+$/.test(part)) {
        const neg = part.startsWith('!');
        const key = neg ? part.slice(1) : part;
        tests.push((n) => key in labels(n) !== neg);
      } else {
        throw new HttpError(400, 'BadRequest', `unable to parse requirement: ${part}`);
      }
    }
    return (n) => tests.every((t) => t(n));
  }

  private list(req: IncomingMessage, res: ServerResponse, query: Record<string, string>): void {
    // Paging (limit/continue) serves every page from the snapshot taken for the first one,
    // as the real server does (a consistent list at one resourceVersion); a token stays
    // usable until compaction, then answers 410 Expired.
    let snapshot: { rv: number; items: NodeObject[] };
    let offset = 0;
    if (query.continue) {
      const page = this.pages.get(query.continue);
      if (!page) {
        throw new HttpError(
          410,
          'Expired',
          'The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.',
        );
      }
      snapshot = page.snapshot;
      offset = page.offset;
    } else {
      const filter = this.selector(query);
      const items = [...this.nodes.values()]
        .filter(filter)
        .sort((a, b) => (a.metadata.name < b.metadata.name ? -1 : 1))
        .map(clone);
      snapshot = { rv: this.rv, items };
    }
    const limit = Number(query.limit ?? '0');
    const end = limit > 0 ? Math.min(offset + limit, snapshot.items.length) : snapshot.items.length;
    const items = snapshot.items.slice(offset, end);
    const metadata: JsonObject = { resourceVersion: String(snapshot.rv) };
    if (end < snapshot.items.length) {
      const token = Buffer.from(randomUUID()).toString('base64url');
      this.pages.set(token, { snapshot, offset: end });
      metadata.continue = token;
      metadata.remainingItemCount = snapshot.items.length - end;
    }
    const accept = req.headers.accept ?? '';
    if (accept.includes('as=Table')) {
      const table = this.table(items);
      table.metadata = metadata;
      return this.send(res, 200, table);
    }
    // Items of a typed list carry no kind/apiVersion (as the real server encodes them).
    const bare = items.map((n) => {
      const { kind: _k, apiVersion: _a, ...rest } = n;
      return rest;
    });
    this.send(res, 200, { kind: 'NodeList', apiVersion: 'v1', metadata, items: bare });
  }

  private table(items: NodeObject[]): JsonObject {
    const col = (name: string, type: string, format = '', priority = 0): JsonObject => ({
      name,
      type,
      format,
      description: '',
      priority,
    });
    return {
      kind: 'Table',
      apiVersion: 'meta.k8s.io/v1',
      metadata: { resourceVersion: String(this.rv) },
      columnDefinitions: [
        col('Name', 'string', 'name'),
        col('Status', 'string'),
        col('Roles', 'string'),
        col('Age', 'string'),
        col('Version', 'string'),
        col('Internal-IP', 'string', '', 1),
        col('External-IP', 'string', '', 1),
        col('Container-Runtime', 'string', '', 1),
      ],
      rows: items.map((n) => {
        const conds = Array.isArray(n.status.conditions) ? n.status.conditions : [];
        const ready = conds.find((c) => isObj(c) && c.type === 'Ready');
        const nodeInfo = isObj(n.status.nodeInfo) ? n.status.nodeInfo : {};
        const addrs = Array.isArray(n.status.addresses) ? n.status.addresses : [];
        const addr = (type: string): Json => {
          const a = addrs.find((x) => isObj(x) && x.type === type);
          return isObj(a) ? (a.address ?? '<none>') : '<none>';
        };
        return {
          cells: [
            n.metadata.name ?? '',
            isObj(ready) && ready.status === 'True' ? 'Ready' : 'NotReady',
            '<none>',
            age(text(n.metadata.creationTimestamp)),
            nodeInfo.kubeletVersion ?? '',
            addr('InternalIP'),
            addr('ExternalIP'),
            nodeInfo.containerRuntimeVersion ?? '',
          ],
          object: { kind: 'PartialObjectMetadata', apiVersion: 'meta.k8s.io/v1', metadata: n.metadata },
        };
      }),
    };
  }

  private parseBody(body: string): Json {
    try {
      return JSON.parse(body) as Json;
    } catch (err) {
      throw new HttpError(
        400,
        'BadRequest',
        `the body of the request was in an unknown format: ${String(err)}`,
      );
    }
  }

  private create(res: ServerResponse, body: string): void {
    const obj = this.parseBody(body);
    if (!isObj(obj) || !isObj(obj.metadata) || typeof obj.metadata.name !== 'string') {
      throw new HttpError(422, 'Invalid', 'Node is invalid: metadata.name: Required value');
    }
    const name = obj.metadata.name;
    if (this.nodes.has(name)) {
      throw new HttpError(409, 'AlreadyExists', `nodes "${name}" already exists`, { name, kind: 'nodes' });
    }
    const node = this.newNodeObject({ name });
    node.metadata = { ...node.metadata, ...obj.metadata, uid: node.metadata.uid ?? null };
    if (isObj(obj.spec)) node.spec = obj.spec;
    if (isObj(obj.status)) node.status = obj.status;
    const created = this.store('ADDED', node);
    this.send(res, 201, created);
  }

  /** Applies `next` (already computed from the current object) with the subresource rules. */
  private commit(cur: NodeObject, next: Json, statusOnly: boolean): NodeObject {
    if (!isObj(next)) throw new HttpError(422, 'Invalid', 'the result of the patch is not a Node object');
    const n = next as NodeObject;
    n.kind = 'Node';
    n.apiVersion = 'v1';
    if (!isObj(n.metadata)) n.metadata = { name: '' };
    if (n.metadata.name !== cur.metadata.name) {
      throw new HttpError(
        400,
        'BadRequest',
        `the name of the object (${text(n.metadata.name)}) does not match the name on the URL (${text(cur.metadata.name)})`,
      );
    }
    const wantRv = n.metadata.resourceVersion;
    if (wantRv !== undefined && wantRv !== null && wantRv !== '' && wantRv !== cur.metadata.resourceVersion) {
      throw new HttpError(
        409,
        'Conflict',
        `Operation cannot be fulfilled on nodes "${text(cur.metadata.name)}": the object has been modified; please apply your changes to the latest version and try again`,
        { name: cur.metadata.name ?? null, kind: 'nodes' },
      );
    }
    for (const k of ['uid', 'creationTimestamp', 'resourceVersion']) n.metadata[k] = cur.metadata[k] ?? null;
    if (statusOnly) n.spec = clone(cur.spec);
    else n.status = clone(cur.status);
    if (!isObj(n.spec)) n.spec = {};
    if (!isObj(n.status)) n.status = {};
    if (deepEqual(n, cur)) return clone(cur);
    return this.store('MODIFIED', n);
  }

  private patch(
    name: string,
    statusOnly: boolean,
    contentType: string | undefined,
    body: string,
  ): NodeObject {
    const cur = this.mustGet(name);
    const patch = this.parseBody(body);
    const type = (contentType ?? '').split(';')[0]?.trim();
    let next: Json;
    switch (type) {
      case 'application/strategic-merge-patch+json':
        if (!isObj(patch))
          throw new HttpError(400, 'BadRequest', 'a strategic merge patch must be a JSON object');
        next = strategicMerge(cur, patch, '');
        break;
      case 'application/merge-patch+json':
        next = mergePatch(cur, patch);
        break;
      case 'application/json-patch+json':
        next = jsonPatch(cur, patch);
        break;
      default:
        throw new HttpError(
          415,
          'UnsupportedMediaType',
          `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json`,
        );
    }
    return this.commit(cur, next, statusOnly);
  }

  private update(name: string, statusOnly: boolean, body: string): NodeObject {
    const cur = this.mustGet(name);
    return this.commit(cur, this.parseBody(body), statusOnly);
  }

  private delete(name: string): JsonObject {
    const cur = this.mustGet(name);
    return this.remove(cur);
  }

  // ---- watch --------------------------------------------------------------------------

  private watch(res: ServerResponse, query: Record<string, string>): void {
    const filter = this.selector(query);
    const rvText = query.resourceVersion ?? '';
    const w: Watcher = {
      res,
      bookmarks: query.allowWatchBookmarks === 'true' || query.allowWatchBookmarks === '1',
      filter,
      silent: false,
    };
    const fromRv = Number(rvText);
    if (this.goneAsHttpStatus && rvText !== '' && fromRv > 0 && fromRv < this.compactedRv) {
      // Servers without a watch cache answer a compacted resourceVersion this way.
      throw new HttpError(410, 'Expired', `too old resource version: ${fromRv} (${this.compactedRv})`);
    }
    res.writeHead(200, { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked' });
    // Without this, clients that wait for the response headers before reading events hang.
    res.flushHeaders();
    if (rvText === '' || rvText === '0') {
      for (const n of this.nodes.values()) if (filter(n)) this.writeEvent(w, { type: 'ADDED', object: n });
    } else {
      const from = Number(rvText);
      if (!Number.isInteger(from) || from < 0) {
        this.writeEvent(w, {
          type: 'ERROR',
          object: status(400, 'BadRequest', `invalid resource version "${rvText}"`),
        });
        res.end();
        return;
      }
      if (from < this.compactedRv) {
        this.writeEvent(w, { type: 'ERROR', object: this.expiredStatus(from) });
        res.end();
        return;
      }
      for (const e of this.history) {
        if (e.rv > from && filter(e.object)) this.writeEvent(w, { type: e.type, object: e.object });
      }
    }
    this.watchers.add(w);
    const timeout = Number(query.timeoutSeconds ?? '');
    if (timeout > 0) w.timer = setTimeout(() => this.endWatch(w), timeout * 1000);
    if (w.bookmarks) {
      w.bookmarkTimer = setInterval(() => {
        if (!w.silent) this.writeBookmark(w);
      }, this.opts.bookmarkIntervalMs ?? 60_000);
    }
    res.on('close', () => this.dropWatch(w));
  }

  private writeEvent(w: Watcher, ev: { type: string; object: Json }): void {
    if (!w.res.writableEnded) w.res.write(`${JSON.stringify(ev)}\n`);
  }

  private writeBookmark(w: Watcher): void {
    this.writeEvent(w, {
      type: 'BOOKMARK',
      object: {
        kind: 'Node',
        apiVersion: 'v1',
        metadata: { resourceVersion: String(this.rv), creationTimestamp: null },
        spec: {},
        status: {},
      },
    });
  }

  private dropWatch(w: Watcher): void {
    if (w.timer) clearTimeout(w.timer);
    if (w.bookmarkTimer) clearInterval(w.bookmarkTimer);
    this.watchers.delete(w);
  }

  private endWatch(w: Watcher): void {
    this.dropWatch(w);
    if (!w.res.writableEnded) w.res.end();
  }
}
