/**
 * Following all Nodes as peer leases: list, then watch from the list's resourceVersion,
 * the way client-go's reflector does it, with the failure modes handled explicitly:
 *
 *  - the watch asks for bookmarks (allowWatchBookmarks) so a quiet cluster still moves our
 *    resourceVersion forward and a reconnect resumes instead of relisting;
 *  - a normal end (server timeoutSeconds, connection closed) resumes from the last seen
 *    resourceVersion; 410 Gone (ERROR event with code 410, or HTTP 410) relists;
 *  - errors back off exponentially (with jitter) and keep the last delivered peer set;
 *  - a watchdog relists when the stream has been silent (no event, no bookmark) for too
 *    long: a half-dead TCP connection looks exactly like that and would otherwise hide
 *    changes forever.
 *
 * Every (re)list is diffed against what was delivered (reconcileSnapshot), and watch events
 * of one burst are delivered as one batch (reconcileChanges), so a relist loses nothing
 * and repeats nothing. Nodes without kube-subnet-manager=true do not count; a managed node
 * without a podCIDR or with a malformed annotation is skipped and logged once per reason.
 */
import { reconcileChanges, reconcileSnapshot } from '../reconcile.ts';
import type { LeaseChange, ReconcileResult } from '../reconcile.ts';
import type { Lease, WatchOptions } from '../types.ts';
import type { Ipv4Cidr } from '../../routing/ipv4.ts';
import { cidrToKey, formatCidr } from '../../routing/ipv4.ts';
import type { Logger } from '../../util/log.ts';
import { nodeToLease } from './node.ts';
import type { AnnotationKeys, NodeLike } from './node.ts';

export interface NodeList {
  readonly items: readonly NodeLike[];
  readonly resourceVersion: string;
}

export type WatchEnd =
  | { readonly reason: 'closed'; readonly events: number }
  | { readonly reason: 'expired' }
  | { readonly reason: 'silent' }
  | { readonly reason: 'aborted' }
  | { readonly reason: 'error'; readonly error: unknown };

/** What the loop needs from the API client (the store provides it; tests may fake it). */
export interface NodeSource {
  list(signal: AbortSignal): Promise<NodeList>;
  /**
   * Opens one watch from `resourceVersion`; calls `onEvent` per event (BOOKMARK included)
   * and resolves when it ends. Must honour `watchdogMs` silence and `signal`.
   */
  watch(
    resourceVersion: string,
    onEvent: (type: string, obj: NodeLike) => void,
    signal: AbortSignal,
  ): Promise<WatchEnd>;
}

export interface NodeWatchConfig {
  readonly keys: AnnotationKeys;
  readonly backoffInitialMs: number;
  readonly backoffMaxMs: number;
  readonly log: Logger;
}

/** Counters for tests and metrics. */
export interface NodeWatchStats {
  lists: number;
  watches: number;
  expired: number;
  silent: number;
  errors: number;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

export async function runNodeWatch(
  source: NodeSource,
  cfg: NodeWatchConfig,
  ownSubnet: Ipv4Cidr,
  opts: WatchOptions,
  stats: NodeWatchStats,
): Promise<void> {
  const { signal } = opts;
  const log = cfg.log;
  let known: ReadonlyMap<string, Lease> = new Map();
  let delivered = false;
  let ownPresent = true;
  /** Subnet each node currently contributes, so a node that stops being a lease is removed. */
  const nodeSubnet = new Map<string, Ipv4Cidr>();
  /** Last reason logged per unusable node, so each problem is logged once. */
  const complaints = new Map<string, string>();
  let pending: LeaseChange[] = [];
  let flushScheduled = false;

  const deliver = (r: ReconcileResult): void => {
    known = r.known;
    if (!delivered || r.events.length > 0) {
      delivered = true;
      try {
        opts.onEvents(r.events);
      } catch (err) {
        log.error({ err }, 'onEvents handler threw; continuing');
      }
    }
    if (r.own.kind === 'gone' && ownPresent) {
      ownPresent = false;
      log.warn({ subnet: formatCidr(ownSubnet) }, 'our own lease disappeared from our Node');
      try {
        opts.onOwnLeaseLost?.(ownSubnet);
      } catch (err) {
        log.error({ err }, 'onOwnLeaseLost handler threw; continuing');
      }
    } else if (r.own.kind === 'present') {
      ownPresent = true;
    }
  };

  const flush = (): void => {
    flushScheduled = false;
    if (pending.length === 0 || signal.aborted) return;
    const changes = pending;
    pending = [];
    deliver(reconcileChanges(known, changes, ownSubnet));
  };

  /** The lease a node contributes now, logging an unusable one once per reason. */
  const leaseOf = (node: NodeLike): Lease | undefined => {
    const name = node.metadata?.name ?? '';
    const r = nodeToLease(node, cfg.keys);
    if (r.kind === 'invalid') {
      if (complaints.get(name) !== r.reason) {
        complaints.set(name, r.reason);
        log.warn({ node: name, reason: r.reason }, `skipping node ${name}: ${r.reason}`);
      }
      return undefined;
    }
    complaints.delete(name);
    return r.kind === 'lease' ? r.lease : undefined;
  };

  const onEvent = (type: string, node: NodeLike): void => {
    const name = node.metadata?.name ?? '';
    if (type !== 'ADDED' && type !== 'MODIFIED' && type !== 'DELETED') return;
    const prev = nodeSubnet.get(name);
    const lease = type === 'DELETED' ? undefined : leaseOf(node);
    if (type === 'DELETED') complaints.delete(name);
    if (prev && (!lease || cidrToKey(prev) !== cidrToKey(lease.subnet))) {
      pending.push({ type: 'delete', subnet: prev });
    }
    if (lease) {
      pending.push({ type: 'put', lease });
      nodeSubnet.set(name, lease.subnet);
    } else {
      nodeSubnet.delete(name);
    }
    if (!flushScheduled) {
      flushScheduled = true;
      setImmediate(flush);
    }
  };

  let rv = '';
  let backoff = cfg.backoffInitialMs;
  const fail = async (what: string, error: unknown): Promise<void> => {
    stats.errors++;
    const wait = Math.round(backoff * (0.75 + Math.random() * 0.5));
    log.warn({ err: error, retryInMs: wait }, `${what} failed; retrying`);
    await sleep(wait, signal);
    backoff = Math.min(backoff * 2, cfg.backoffMaxMs);
  };

  while (!signal.aborted) {
    if (rv === '') {
      let list: NodeList;
      try {
        list = await source.list(signal);
      } catch (err) {
        if (signal.aborted) break;
        await fail('listing nodes', err);
        continue;
      }
      stats.lists++;
      // Watch events queued before the relist are superseded by it.
      pending = [];
      nodeSubnet.clear();
      const leases: Lease[] = [];
      for (const node of list.items) {
        const lease = leaseOf(node);
        if (!lease) continue;
        leases.push(lease);
        nodeSubnet.set(node.metadata?.name ?? '', lease.subnet);
      }
      deliver(reconcileSnapshot(known, leases, ownSubnet));
      rv = list.resourceVersion;
      log.debug({ resourceVersion: rv, nodes: list.items.length, leases: leases.length }, 'listed nodes');
    }

    stats.watches++;
    let lastRv = rv;
    const started = Date.now();
    const end = await source.watch(
      rv,
      (type, obj) => {
        const objRv = obj.metadata?.resourceVersion;
        if (type !== 'BOOKMARK') onEvent(type, obj);
        if (objRv) lastRv = objRv;
      },
      signal,
    );
    flush();
    rv = lastRv;
    switch (end.reason) {
      case 'aborted':
        break;
      case 'closed':
        // A watch that ends at once with nothing in it is a failing server, not a timeout.
        if (end.events === 0 && Date.now() - started < 1000)
          await fail('watching nodes (closed at once)', new Error('watch closed without events'));
        else backoff = cfg.backoffInitialMs;
        break;
      case 'expired':
        stats.expired++;
        log.info({ resourceVersion: rv }, 'watch resourceVersion expired (410 Gone); relisting');
        rv = '';
        break;
      case 'silent':
        stats.silent++;
        log.warn({ resourceVersion: rv }, 'node watch silent for too long; relisting');
        rv = '';
        break;
      case 'error':
        await fail('watching nodes', end.error);
        break;
    }
  }
}
