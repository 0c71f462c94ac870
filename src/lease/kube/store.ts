/**
 * LeaseStore on the Kubernetes API (flannel's --kube-subnet-mgr), so weft and flanneld
 * nodes can share one cluster. The subnet is not chosen here: the controller-manager
 * assigns it as the Node's spec.podCIDR; we publish our lease as annotations on our Node
 * and follow every other Node (see node.ts for the layout, watch.ts for the list+watch).
 *
 * Decisions:
 *  - acquire waits (backoff, abortable) while our Node does not exist or has no podCIDR
 *    yet; a podCIDR outside Network is a LeaseError naming the node, podCIDR and Network.
 *  - Annotations and the NetworkUnavailable=False condition are written with one
 *    strategic-merge patch of nodes/<name>/status (RBAC: nodes get/list/watch and
 *    nodes/status patch are all we need). client-node defaults to JSON patch, so the
 *    strategic-merge content type is set explicitly.
 *  - public-ip-overwrite on our Node, when set, is the address we advertise.
 *  - Leases never expire (expiresAt = Infinity); renew re-reads our Node and re-asserts
 *    the annotations if someone removed or changed them, and fails when the podCIDR changed.
 *  - release removes our annotations (flannel leaves them; weft releases only when asked,
 *    and peers must then stop sending to us). The condition is left alone.
 *  - Every request has a deadline and follows the caller's AbortSignal.
 */
import { readFile } from 'node:fs/promises';
import { ApiException, CoreV1Api, PatchStrategy, Watch, setHeaderOptions } from '@kubernetes/client-node';
import type { KubeConfig, V1Node } from '@kubernetes/client-node';
import { parseNetConfig } from '../../daemon/netconf.ts';
import type { AcquireOptions, Lease, LeaseAttrs, LeaseStore, NetworkConfig, WatchOptions } from '../types.ts';
import type { Ipv4Cidr } from '../../routing/ipv4.ts';
import { cidrContainsCidr, cidrEquals, formatCidr } from '../../routing/ipv4.ts';
import { ConfigError, LeaseError } from '../../util/errors.ts';
import type { Logger } from '../../util/log.ts';
import { silentLogger } from '../../util/log.ts';
import {
  acquirePatch,
  advertisedIp,
  annotationKeys,
  hasOurAnnotations,
  podCidrOf,
  releasePatch,
} from './node.ts';
import type { AnnotationKeys, NodeLike } from './node.ts';
import { loadKubeConfig, resolveKubeOptions } from './options.ts';
import type { KubeStoreOptions, ResolvedKubeOptions } from './options.ts';
import { runNodeWatch } from './watch.ts';
import type { NodeList, NodeSource, NodeWatchStats, WatchEnd } from './watch.ts';

const STRATEGIC = setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch);
/** Longest pause between polls while waiting for our Node or its podCIDR. */
const WAIT_POLL_MAX_MS = 5_000;
const LIST_PAGE = 500;
/** Tries of the status patch on transient errors (no answer, 429, 5xx) before acquire fails. */
const PUBLISH_ATTEMPTS = 4;

/** HTTP status of a failed client-node call, when there was an answer. */
export function httpStatus(err: unknown): number | undefined {
  if (err instanceof ApiException) return err.code;
  const s = (err as { statusCode?: unknown } | null)?.statusCode;
  return typeof s === 'number' ? s : undefined;
}

/** A short description of a failed call: the Status message when the server sent one. */
function describe(err: unknown): string {
  if (err instanceof ApiException) {
    const body: unknown = err.body;
    let msg: string | undefined;
    if (typeof body === 'string') {
      try {
        msg = (JSON.parse(body) as { message?: string }).message;
      } catch {
        msg = body.slice(0, 200);
      }
    } else if (body && typeof body === 'object') msg = (body as { message?: string }).message;
    return `HTTP ${err.code}${msg ? `: ${msg}` : ''}`;
  }
  return err instanceof Error ? err.message : String(err);
}

/** Errors worth retrying: no answer, throttling, server trouble. */
function transient(err: unknown): boolean {
  const s = httpStatus(err);
  return s === undefined || s === 429 || s >= 500;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason as Error);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal?.reason as Error);
    };
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export class KubeLeaseStore implements LeaseStore {
  readonly name = 'kube';
  readonly nodeName: string;
  /** Counters of the node watch (lists, watches, 410s, watchdog relists, errors). */
  readonly watchStats: NodeWatchStats = { lists: 0, watches: 0, expired: 0, silent: 0, errors: 0 };
  private readonly opts: ResolvedKubeOptions;
  private readonly kc: KubeConfig;
  private readonly api: CoreV1Api;
  private readonly keys: AnnotationKeys;
  private readonly log: Logger;
  private readonly closed = new AbortController();
  private netConfig: NetworkConfig | undefined;

  constructor(options: KubeStoreOptions) {
    this.opts = resolveKubeOptions(options);
    this.kc = loadKubeConfig(options);
    this.api = this.kc.makeApiClient(CoreV1Api);
    this.keys = annotationKeys(this.opts.annotationPrefix);
    this.nodeName = this.opts.nodeName;
    this.log = (options.logger ?? silentLogger()).child({ component: 'lease-kube', node: this.nodeName });
  }

  /** The API server this store talks to. */
  get server(): string {
    return this.kc.getCurrentCluster()?.server ?? '';
  }

  async getNetworkConfig(signal?: AbortSignal): Promise<NetworkConfig> {
    if (this.netConfig) return this.netConfig;
    const path = this.opts.netConfPath;
    let text: string;
    try {
      text = await readFile(path, { encoding: 'utf8', ...(signal ? { signal } : {}) });
    } catch (err) {
      if (signal?.aborted) throw err;
      throw new ConfigError(
        'net-config-path',
        `cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? String(err)}); in kube mode the network config comes from this file (the kube-flannel-cfg ConfigMap's net-conf.json)`,
        { cause: err },
      );
    }
    this.netConfig = parseNetConfig(text, path);
    return this.netConfig;
  }

  /** What users set on our Node: public-ip-overwrite and node-public-ip (for picking the interface). */
  async nodeAddressHints(
    signal?: AbortSignal,
  ): Promise<{ publicIpOverwrite?: string; nodePublicIp?: string }> {
    const node = await this.call('read our Node', () => this.api.readNode({ name: this.nodeName }), signal);
    const ann = node.metadata?.annotations ?? {};
    const ow = ann[this.keys.publicIpOverwrite];
    const np = ann[this.keys.nodePublicIp];
    return { ...(ow ? { publicIpOverwrite: ow } : {}), ...(np ? { nodePublicIp: np } : {}) };
  }

  async acquire(attrs: LeaseAttrs, opts: AcquireOptions = {}): Promise<Lease> {
    const signal = opts.signal;
    const cfg = await this.getNetworkConfig(signal);
    const { node, subnet, text } = await this.waitForPodCidr(signal);
    if (!cidrContainsCidr(cfg.network, subnet)) {
      throw new LeaseError(
        `node ${this.nodeName} has podCIDR ${text}, which is not inside Network ${formatCidr(cfg.network)} ` +
          `(${this.opts.netConfPath}); make the controller-manager's --cluster-cidr and Network agree`,
      );
    }
    const adv = advertisedIp(node, this.keys, attrs.publicIp);
    if (adv.invalidOverwrite !== undefined) {
      throw new ConfigError(
        this.keys.publicIpOverwrite,
        `annotation on node ${this.nodeName} is "${adv.invalidOverwrite}", not an IPv4 address; fix or remove it`,
      );
    }
    if (adv.overwrite !== undefined) this.log.info({ publicIp: adv.ip }, 'advertising public-ip-overwrite');
    const published: LeaseAttrs = { ...attrs, publicIp: adv.ip, publicIpv6: attrs.publicIpv6 ?? null };
    await this.publish(node, published, signal);
    this.log.info({ subnet: text, publicIp: adv.ip }, 'lease published on our Node');
    return { subnet, attrs: published, expiresAt: Infinity };
  }

  async renew(lease: Lease, signal?: AbortSignal): Promise<Lease> {
    const node = await this.readOwnNode(signal);
    if (!node)
      throw new LeaseError(
        `node ${this.nodeName} no longer exists; the lease on ${formatCidr(lease.subnet)} is gone`,
      );
    const pc = podCidrOf(node);
    if (pc.kind !== 'ok' || !cidrEquals(pc.cidr, lease.subnet)) {
      throw new LeaseError(
        `node ${this.nodeName}'s podCIDR is now ${pc.kind === 'ok' ? pc.text : 'unset'}, not ${formatCidr(lease.subnet)}; acquire again`,
      );
    }
    if (!hasOurAnnotations(node, this.keys, lease.attrs)) {
      this.log.warn('our lease annotations were removed or changed; writing them again');
      await this.publish(node, lease.attrs, signal);
    }
    return { ...lease, expiresAt: Infinity };
  }

  async release(lease: Lease): Promise<void> {
    const node = await this.readOwnNode(this.closed.signal);
    if (!node) return;
    const pc = podCidrOf(node);
    if (pc.kind !== 'ok' || !cidrEquals(pc.cidr, lease.subnet)) return;
    const ann = node.metadata?.annotations ?? {};
    const ours = [
      this.keys.backendType,
      this.keys.backendData,
      this.keys.publicIp,
      this.keys.kubeSubnetManager,
    ];
    if (!ours.some((k) => k in ann)) return;
    await this.call(
      'remove our lease annotations',
      () => this.api.patchNodeStatus({ name: this.nodeName, body: releasePatch(this.keys) }, STRATEGIC),
      this.closed.signal,
    );
    this.log.info({ subnet: formatCidr(lease.subnet) }, 'lease released (annotations removed)');
  }

  async watch(ownSubnet: Ipv4Cidr, opts: WatchOptions): Promise<void> {
    const signal = AbortSignal.any([opts.signal, this.closed.signal]);
    const source: NodeSource = {
      list: (s) => this.listNodes(s),
      watch: (rv, onEvent, s) => this.watchOnce(rv, onEvent, s),
    };
    await runNodeWatch(
      source,
      {
        keys: this.keys,
        backoffInitialMs: this.opts.backoffInitialMs,
        backoffMaxMs: this.opts.backoffMaxMs,
        log: this.log,
      },
      ownSubnet,
      { ...opts, signal },
      this.watchStats,
    );
  }

  // eslint-disable-next-line @typescript-eslint/require-await -- part of the async interface
  async close(): Promise<void> {
    this.closed.abort(new LeaseError('the kube lease store was closed'));
  }

  // ---- requests -----------------------------------------------------------------------

  /** Runs one API call with the request deadline and the caller's signal. */
  private call<T>(what: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason as Error);
        return;
      }
      const ms = this.opts.requestTimeoutMs;
      const timer = setTimeout(() => {
        cleanup();
        reject(new LeaseError(`${what}: no answer from the API server ${this.server} within ${ms} ms`));
      }, ms);
      const onAbort = (): void => {
        cleanup();
        reject(signal?.reason as Error);
      };
      const cleanup = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      fn().then(
        (v) => {
          cleanup();
          resolve(v);
        },
        (err: unknown) => {
          cleanup();
          reject(err instanceof Error ? err : new Error(String(err)));
        },
      );
    });
  }

  /** Our Node, or undefined when it does not exist. */
  private async readOwnNode(signal?: AbortSignal): Promise<V1Node | undefined> {
    try {
      return await this.call('read our Node', () => this.api.readNode({ name: this.nodeName }), signal);
    } catch (err) {
      if (httpStatus(err) === 404) return undefined;
      if (signal?.aborted) throw err;
      throw this.leaseError(`read node ${this.nodeName}`, err);
    }
  }

  private leaseError(what: string, err: unknown): LeaseError {
    const s = httpStatus(err);
    const hint =
      s === 401 || s === 403
        ? '; check the service account and its RBAC (nodes: get, list, watch; nodes/status: patch)'
        : s === undefined
          ? `; is the API server ${this.server} reachable?`
          : '';
    return new LeaseError(`${what} failed: ${describe(err)}${hint}`, { cause: err });
  }

  /** Polls our Node until it exists and has an IPv4 podCIDR; transient errors are retried. */
  private async waitForPodCidr(
    signal?: AbortSignal,
  ): Promise<{ node: V1Node; subnet: Ipv4Cidr; text: string }> {
    let delay = this.opts.backoffInitialMs;
    let lastWhy = '';
    for (;;) {
      let why: string;
      try {
        const node = await this.readOwnNode(signal);
        if (node) {
          const pc = podCidrOf(node);
          if (pc.kind === 'ok') return { node, subnet: pc.cidr, text: pc.text };
          if (pc.kind === 'malformed') {
            throw new LeaseError(`node ${this.nodeName} has podCIDR "${pc.text}", which is not an IPv4 CIDR`);
          }
          why = `node ${this.nodeName} has no IPv4 podCIDR yet (is the controller-manager run with --allocate-node-cidrs?)`;
        } else {
          why = `node ${this.nodeName} does not exist yet (is --node-name / NODE_NAME right?)`;
        }
      } catch (err) {
        if (signal?.aborted || !(err instanceof LeaseError) || !transient(err.cause)) throw err;
        why = err.message;
      }
      if (why !== lastWhy) {
        this.log.warn({ retryInMs: delay }, `waiting: ${why}`);
        lastWhy = why;
      }
      await sleep(delay, signal);
      delay = Math.min(delay * 2, WAIT_POLL_MAX_MS, this.opts.backoffMaxMs);
    }
  }

  /** Writes our annotations and condition; transient failures are retried a few times. */
  private async publish(node: NodeLike, attrs: LeaseAttrs, signal?: AbortSignal): Promise<void> {
    const body = acquirePatch(node, this.keys, attrs, new Date());
    let delay = this.opts.backoffInitialMs;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.call(
          'publish our lease',
          () => this.api.patchNodeStatus({ name: this.nodeName, body }, STRATEGIC),
          signal,
        );
        return;
      } catch (err) {
        if (signal?.aborted) throw err;
        if (attempt >= PUBLISH_ATTEMPTS || !transient(err)) {
          throw this.leaseError(`patch nodes/${this.nodeName}/status`, err);
        }
        this.log.warn(
          { err: describe(err), attempt, retryInMs: delay },
          'publishing our lease failed; retrying',
        );
        await sleep(delay, signal);
        delay = Math.min(delay * 2, this.opts.backoffMaxMs);
      }
    }
  }

  private async listNodes(signal: AbortSignal): Promise<NodeList> {
    const items: NodeLike[] = [];
    let cont: string | undefined;
    let resourceVersion = '';
    do {
      const page = await this.call(
        'list nodes',
        () => this.api.listNode({ limit: LIST_PAGE, ...(cont ? { _continue: cont } : {}) }),
        signal,
      );
      for (const n of page.items) items.push(n);
      if (resourceVersion === '') resourceVersion = page.metadata?.resourceVersion ?? '';
      cont = page.metadata?._continue || undefined;
    } while (cont);
    return { items, resourceVersion };
  }

  private watchOnce(
    resourceVersion: string,
    onEvent: (type: string, obj: NodeLike) => void,
    signal: AbortSignal,
  ): Promise<WatchEnd> {
    return new Promise<WatchEnd>((resolve) => {
      let settled = false;
      let events = 0;
      let controller: AbortController | undefined;
      const finish = (end: WatchEnd): void => {
        if (settled) return;
        settled = true;
        clearTimeout(watchdog);
        signal.removeEventListener('abort', onAbort);
        controller?.abort();
        resolve(end);
      };
      const watchdog = setTimeout(() => finish({ reason: 'silent' }), this.opts.watchdogMs);
      const onAbort = (): void => finish({ reason: 'aborted' });
      if (signal.aborted) {
        finish({ reason: 'aborted' });
        return;
      }
      signal.addEventListener('abort', onAbort, { once: true });

      const params: Record<string, string | number | boolean> = { allowWatchBookmarks: true };
      if (resourceVersion) params.resourceVersion = resourceVersion;
      const timeout = this.watchTimeoutSeconds();
      if (timeout !== undefined) params.timeoutSeconds = timeout;
      new Watch(this.kc)
        .watch(
          '/api/v1/nodes',
          params,
          (type: string, obj: unknown) => {
            if (settled) return;
            watchdog.refresh();
            events++;
            // client-node swallows exceptions thrown here; keep them visible.
            try {
              if (type === 'ERROR') {
                const st = obj as { code?: number; message?: string } | null;
                if (st?.code === 410) finish({ reason: 'expired' });
                else
                  finish({
                    reason: 'error',
                    error: new LeaseError(`watch error event: ${st?.message ?? JSON.stringify(obj)}`),
                  });
                return;
              }
              onEvent(type, obj as NodeLike);
            } catch (err) {
              this.log.error({ err }, 'handling a node watch event failed');
            }
          },
          (err: unknown) => {
            if (!err) finish({ reason: 'closed', events });
            else if (httpStatus(err) === 410) finish({ reason: 'expired' });
            else finish({ reason: 'error', error: err });
          },
        )
        .then(
          (c) => {
            controller = c;
            if (settled) c.abort();
          },
          (err: unknown) => finish({ reason: 'error', error: err }),
        );
    });
  }

  /** timeoutSeconds for one watch: below the watchdog, randomized so nodes do not reconnect in step. */
  private watchTimeoutSeconds(): number | undefined {
    if (this.opts.watchTimeoutSeconds !== undefined) return this.opts.watchTimeoutSeconds;
    const s = Math.floor((this.opts.watchdogMs / 1000) * (0.5 + Math.random() * 0.3));
    return s >= 1 ? s : undefined;
  }
}
