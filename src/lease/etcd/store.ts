/**
 * LeaseStore on etcd v3 in flannel's layout, so weft nodes and flanneld nodes can share one
 * etcd (see codec.ts for keys and values). Policy is not here: which subnet to take comes
 * from src/lease/allocate.ts, and watch batches from src/lease/reconcile.ts; this module
 * only translates between etcd and Lease values and handles etcd's failure modes.
 *
 * Decisions (flannel pkg/subnet/etcd, with the differences said out loud):
 *  - Create: grant an etcd lease (TTL 24 h), then txn `If Version(key)==0 Then Put(key,
 *    value, lease)`; on conflict revoke the etcd lease and retry (10 attempts).
 *  - Renew = re-put with a fresh etcd lease, as flanneld does, but guarded: txn
 *    `If ModRevision(key)==seen Then Put` after checking the key still carries our PublicIP,
 *    so a renewal never resurrects a deleted lease or overwrites another node's; afterwards
 *    the old etcd lease is revoked if no other key hangs off it (flanneld leaves it to
 *    expire). A renewal shows up as a put to watchers, with the same attrs, so reconcile
 *    turns it into no event. Expiry = grant time + granted TTL. Renew cannot tell "gone"
 *    from "unreachable" by error class (both LeaseError); the watch's onOwnLeaseLost is the
 *    authoritative loss signal.
 *  - Reservations (keys without an etcd lease) are never handed out, are reused by the
 *    node whose PublicIP they carry (kept as reservations, expiresAt = Infinity), and are
 *    never deleted (not by release, not when they no longer fit the config).
 *  - Peers: list, then watch the subnets prefix from the list's revision + 1. The etcd3
 *    client re-creates a dropped watch stream by itself (backoff 100 ms doubling to 2 s);
 *    we set the revision it resumes from (last event seen + 1), since its own bookkeeping
 *    can skip events. When etcd cancels the watch (revision compacted) or an event cannot
 *    be read, we relist and reconcile against the last delivered set. Listing failures
 *    back off (100 ms doubling to 5 s) and keep the last known peers.
 *  - Not done: flannel's WithRequireLeader (the etcd3 client cannot send that metadata), so
 *    a watch on a member cut off from the quorum stalls silently until it rejoins.
 *  - A malformed value at a lease key is logged with the key and treated as "no usable
 *    lease there" (a previously known peer at that key is removed); it is never fatal.
 *  - Peer expiry comes from LeaseTimeToLive, once per etcd lease id (cached: flannel
 *    renews by re-putting with a new id, so an id's deadline does not move; etcd may extend
 *    it after a leader change, so the cached value can be early, never late by much).
 */
import { Etcd3 } from 'etcd3';
import type { IKeyValue, IOptions, IWatchResponse } from 'etcd3';
import { allocate } from '../allocate.ts';
import { reconcileChanges, reconcileSnapshot } from '../reconcile.ts';
import type { LeaseChange, OwnLeaseState } from '../reconcile.ts';
import type { AcquireOptions, Lease, LeaseAttrs, LeaseStore, NetworkConfig, WatchOptions } from '../types.ts';
import { parseNetConfig } from '../../daemon/netconf.ts';
import type { Ipv4Cidr } from '../../routing/ipv4.ts';
import { cidrToKey, formatCidr, tryParseIpv4 } from '../../routing/ipv4.ts';
import { ConfigError, LeaseError } from '../../util/errors.ts';
import type { Logger } from '../../util/log.ts';
import { silentLogger } from '../../util/log.ts';
import {
  configKey,
  decodeLeaseValue,
  encodeLeaseValue,
  parseSubnetKey,
  subnetKey,
  subnetsPrefix,
} from './codec.ts';
import { resolveEtcdOptions } from './options.ts';
import type { EtcdStoreOptions, ResolvedEtcdOptions } from './options.ts';

/** flannel's raceRetries: how many times acquisition retries after losing a race. */
export const ACQUIRE_ATTEMPTS = 10;
const RENEW_ATTEMPTS = 5;
const TTL_LOOKUP_CONCURRENCY = 64;
const RELIST_BACKOFF_MIN_MS = 100;
const RELIST_BACKOFF_MAX_MS = 5_000;
/** etcd's "no lease" id. */
const NO_LEASE = '0';

type WatchBackoff = NonNullable<NonNullable<IOptions['faultHandling']>['watchBackoff']>;

/** Exponential backoff for the etcd3 client's watch stream reconnects (its default caps at 30 s). */
function watchBackoff(ms: number, max: number): WatchBackoff {
  return { duration: ms, next: () => watchBackoff(Math.min(ms * 2, max), max) };
}

/** End of the key range that holds every key starting with `prefix`. */
function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i] = end[i]! + 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}

function raceAbort<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: Error) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

/** Waits `ms`, or less when `signal` aborts (never throws). */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** One key under the subnets prefix as listed. `attrs` is undefined when the value is malformed. */
interface Entry {
  readonly key: string;
  readonly subnet: Ipv4Cidr;
  readonly kv: IKeyValue;
  readonly attrs: LeaseAttrs | undefined;
}

/** A lease key's decoding, valid while its ModRevision is unchanged. */
interface Decoded {
  readonly modRevision: string;
  readonly subnet: Ipv4Cidr | undefined;
  readonly attrs: LeaseAttrs | undefined;
}

export class EtcdLeaseStore implements LeaseStore {
  readonly name = 'etcd';
  readonly options: ResolvedEtcdOptions;
  private readonly client: Etcd3;
  private readonly log: Logger;
  private readonly random: () => number;
  /** etcd lease id -> expiry (ms since epoch). */
  private readonly expiryCache = new Map<string, number>();
  /** Subnets this store acquired or renewed (cidrToKey) -> the PublicIP we hold them with. */
  private readonly held = new Map<string, string>();
  private readonly closing = new AbortController();
  /** Lease key -> its decoding as of the last full listing. */
  private decoded = new Map<string, Decoded>();

  constructor(options: EtcdStoreOptions) {
    this.options = resolveEtcdOptions(options);
    this.log = (options.logger ?? silentLogger()).child({ component: 'lease-etcd' });
    this.random = options.random ?? Math.random;
    const { tls, auth, requestTimeoutMs } = this.options;
    const clientOptions: IOptions = {
      hosts: [...this.options.endpoints],
      dialTimeout: requestTimeoutMs,
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + requestTimeoutMs }),
      faultHandling: { watchBackoff: watchBackoff(100, 2_000) },
    };
    if (tls && (tls.ca || tls.cert)) {
      // grpc-js treats a missing root certificate as "use the system roots".
      clientOptions.credentials = {
        rootCertificate: tls.ca as Buffer,
        ...(tls.key ? { privateKey: tls.key } : {}),
        ...(tls.cert ? { certChain: tls.cert } : {}),
      };
    }
    if (auth) clientOptions.auth = { username: auth.username, password: auth.password };
    this.client = new Etcd3(clientOptions);
  }

  // ---- plumbing ------------------------------------------------------------------------

  /** Runs one etcd call; failures become LeaseError naming the endpoints tried. */
  private async call<T>(what: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (this.closing.signal.aborted) throw new LeaseError(`etcd store is closed (during ${what})`);
    signal?.throwIfAborted();
    try {
      return signal ? await raceAbort(fn(), signal) : await fn();
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      if (err instanceof LeaseError || err instanceof ConfigError) throw err;
      throw new LeaseError(
        `etcd ${what} failed (endpoints tried: ${this.options.endpoints.join(', ')}): ${errText(err)}; ` +
          'check that etcd is running and reachable from this node and that the TLS/auth options match it',
        { cause: err },
      );
    }
  }

  private keyBuf(key: string): Buffer {
    return Buffer.from(key);
  }

  private async getKv(key: string, signal?: AbortSignal): Promise<IKeyValue | undefined> {
    const res = await this.call(`get ${key}`, () => this.client.kv.range({ key: this.keyBuf(key) }), signal);
    return res.kvs[0];
  }

  private async listEntries(signal?: AbortSignal): Promise<{ entries: Entry[]; revision: string }> {
    const start = this.keyBuf(subnetsPrefix(this.options.prefix));
    const res = await this.call(
      'list leases',
      () => this.client.kv.range({ key: start, range_end: prefixEnd(start) }),
      signal,
    );
    const entries: Entry[] = [];
    const decoded = new Map<string, Decoded>();
    for (const kv of res.kvs) {
      const key = kv.key.toString();
      // Unchanged keys (same ModRevision) reuse the last decoding: relists stay cheap, and
      // a bad key is logged once, not on every relist.
      let d = this.decoded.get(key);
      if (d === undefined || d.modRevision !== kv.mod_revision) {
        const subnet = parseSubnetKey(this.options.prefix, key);
        let attrs: LeaseAttrs | undefined;
        if (!subnet) {
          this.log.warn({ key }, 'ignoring a key under the subnets prefix that is not a lease key');
        } else {
          try {
            attrs = decodeLeaseValue(key, kv.value.toString());
          } catch (err) {
            this.log.warn({ key, err: errText(err) }, 'skipping malformed lease value');
          }
        }
        d = { modRevision: kv.mod_revision, subnet, attrs };
      }
      decoded.set(key, d);
      if (d.subnet) entries.push({ key, subnet: d.subnet, kv, attrs: d.attrs });
    }
    this.decoded = decoded;
    return { entries, revision: res.header.revision };
  }

  private async grant(signal?: AbortSignal): Promise<{ id: string; expiresAt: number }> {
    const res = await this.call(
      'lease grant',
      () => this.client.leaseClient.leaseGrant({ TTL: this.options.leaseTtlSeconds }),
      signal,
    );
    if (res.error) throw new LeaseError(`etcd refused to grant a lease: ${res.error}`);
    const expiresAt = Date.now() + Number(res.TTL) * 1000;
    this.expiryCache.set(res.ID, expiresAt);
    return { id: res.ID, expiresAt };
  }

  /** Revokes an etcd lease, logging (not throwing) on failure: it expires by itself anyway. */
  private async revokeQuietly(id: string): Promise<void> {
    if (id === NO_LEASE) return;
    this.expiryCache.delete(id);
    try {
      await this.call('lease revoke', () => this.client.leaseClient.leaseRevoke({ ID: id }));
    } catch (err) {
      this.log.debug({ lease: id, err: errText(err) }, 'could not revoke etcd lease; it will expire');
    }
  }

  /**
   * Revokes an etcd lease that no longer carries any key. A lease written by hand (or by
   * another tool) may carry several keys; revoking it would delete the others too.
   */
  private async revokeIfUnused(id: string): Promise<void> {
    if (id === NO_LEASE) return;
    try {
      const res = await this.call('lease time-to-live', () =>
        this.client.leaseClient.leaseTimeToLive({ ID: id, keys: true }),
      );
      if (Number(res.TTL) > 0 && res.keys.length === 0) await this.revokeQuietly(id);
      else if (res.keys.length > 0)
        this.log.debug({ lease: id }, 'old etcd lease still carries keys; not revoking');
    } catch (err) {
      this.log.debug({ lease: id, err: errText(err) }, 'could not check old etcd lease; it will expire');
    }
  }

  /** Expiry of an etcd lease id; undefined when the lease is already gone. */
  private async expiryOf(id: string, signal?: AbortSignal): Promise<number | undefined> {
    if (id === NO_LEASE) return Infinity;
    const now = Date.now();
    const cached = this.expiryCache.get(id);
    if (cached !== undefined && cached > now) return cached;
    const res = await this.call(
      'lease time-to-live',
      () => this.client.leaseClient.leaseTimeToLive({ ID: id }),
      signal,
    );
    const ttl = Number(res.TTL);
    if (!(ttl > 0)) {
      this.expiryCache.delete(id);
      return undefined;
    }
    const at = now + ttl * 1000;
    this.expiryCache.set(id, at);
    return at;
  }

  /** Full listing as Lease values with expiry (expired and malformed entries left out). */
  private async snapshot(signal: AbortSignal): Promise<{ leases: Lease[]; revision: string }> {
    const { entries, revision } = await this.listEntries(signal);
    const ids = [...new Set(entries.filter((e) => e.attrs).map((e) => e.kv.lease))];
    const expiry = new Map<string, number | undefined>();
    let next = 0;
    const worker = async (): Promise<void> => {
      // The signal is checked between lookups (not raced per call: thousands of listeners).
      while (next < ids.length && !signal.aborted) {
        const id = ids[next++]!;
        expiry.set(id, await this.expiryOf(id));
      }
    };
    await Promise.all(Array.from({ length: Math.min(TTL_LOOKUP_CONCURRENCY, ids.length) }, worker));
    signal.throwIfAborted();
    // Forget ids no key refers to any more (renewed or expired peers).
    for (const id of this.expiryCache.keys()) if (!expiry.has(id)) this.expiryCache.delete(id);
    const leases: Lease[] = [];
    for (const e of entries) {
      const at = expiry.get(e.kv.lease);
      if (e.attrs && at !== undefined) leases.push({ subnet: e.subnet, attrs: e.attrs, expiresAt: at });
    }
    return { leases, revision };
  }

  /** Puts `value` at `key` if its ModRevision is still `modRevision`; true when it was. */
  private async putIfUnchanged(
    key: string,
    modRevision: string,
    value: string,
    leaseId: string,
    signal?: AbortSignal,
  ): Promise<boolean> {
    const k = this.keyBuf(key);
    const res = await this.call(
      `update ${key}`,
      () =>
        this.client.kv.txn({
          compare: [{ key: k, target: 'Mod', result: 'Equal', mod_revision: modRevision }],
          success: [{ request_put: { key: k, value: Buffer.from(value), lease: leaseId } }],
        }),
      signal,
    );
    return res.succeeded;
  }

  // ---- LeaseStore ----------------------------------------------------------------------

  async getNetworkConfig(signal?: AbortSignal): Promise<NetworkConfig> {
    const key = configKey(this.options.prefix);
    const kv = await this.getKv(key, signal);
    if (!kv) {
      throw new LeaseError(
        `no network config at ${key} in etcd (${this.options.endpoints.join(', ')}); write it first, e.g. ` +
          `ETCDCTL_API=3 etcdctl put ${key} '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'`,
      );
    }
    return parseNetConfig(kv.value.toString(), `etcd key ${key}`);
  }

  async acquire(attrs: LeaseAttrs, opts: AcquireOptions = {}): Promise<Lease> {
    const { signal } = opts;
    if (tryParseIpv4(attrs.publicIp) === undefined) {
      throw new ConfigError('public-ip', `"${attrs.publicIp}" is not an IPv4 address`);
    }
    const config = await this.getNetworkConfig(signal);
    const value = encodeLeaseValue(attrs);
    for (let attempt = 1; attempt <= ACQUIRE_ATTEMPTS; attempt++) {
      const { entries } = await this.listEntries(signal);
      // Every listed key is live (etcd deletes a key when its lease expires); a malformed
      // value still occupies its subnet. Reservations carry no etcd lease.
      const byLease = new Map<Lease, Entry>();
      const existing = entries.map((e) => {
        const lease: Lease = {
          subnet: e.subnet,
          attrs: e.attrs ?? { publicIp: '', backendType: '', backendData: null },
          expiresAt: Infinity,
        };
        byLease.set(lease, e);
        return lease;
      });
      const decision = allocate({
        config,
        existing,
        attrs,
        previousSubnet: opts.previousSubnet,
        now: Date.now(),
        random: this.random,
      });

      if (decision.kind === 'reuse') {
        const entry = byLease.get(decision.lease)!;
        const lease = await this.reuse(entry, attrs, value, signal);
        if (lease) return lease;
        this.log.info({ key: entry.key, attempt }, 'our lease changed while reusing it; retrying');
        continue;
      }
      if (decision.discard) {
        const entry = byLease.get(decision.discard)!;
        if (entry.kv.lease === NO_LEASE) {
          // flanneld deletes it; a reservation is the operator's, so weft leaves it alone.
          this.log.warn(
            { key: entry.key },
            'the reservation carrying our PublicIP does not fit the network config; ignoring it',
          );
        } else {
          this.log.info({ key: entry.key }, 'our old lease no longer fits the network config; deleting it');
          await this.deleteIfUnchanged(entry, signal);
        }
      }
      if (decision.kind === 'full') throw new LeaseError(decision.message);

      const lease = await this.create(decision.subnet, attrs, value, signal);
      if (lease) {
        this.log.info({ subnet: formatCidr(lease.subnet), how: decision.kind }, 'acquired lease');
        return lease;
      }
      this.log.info(
        { subnet: formatCidr(decision.subnet), attempt },
        'subnet taken by another node meanwhile; retrying',
      );
    }
    throw new LeaseError(
      `could not acquire a subnet after ${ACQUIRE_ATTEMPTS} attempts: other nodes took each chosen subnet first; ` +
        'retry, and check for many nodes starting at once against a nearly full network',
    );
  }

  /** Takes over our existing lease or reservation; undefined when it changed meanwhile. */
  private async reuse(
    entry: Entry,
    attrs: LeaseAttrs,
    value: string,
    signal?: AbortSignal,
  ): Promise<Lease | undefined> {
    const old = entry.kv.lease;
    if (old === NO_LEASE) {
      if (!(await this.putIfUnchanged(entry.key, entry.kv.mod_revision, value, NO_LEASE, signal)))
        return undefined;
      this.held.set(cidrToKey(entry.subnet), attrs.publicIp);
      this.log.info({ subnet: formatCidr(entry.subnet) }, 'using the reservation carrying our PublicIP');
      return { subnet: entry.subnet, attrs, expiresAt: Infinity };
    }
    const fresh = await this.grant(signal);
    // On an error the put may still have happened: then the fresh etcd lease carries our
    // key and must not be revoked. Only a clean "compare failed" revokes it.
    if (!(await this.putIfUnchanged(entry.key, entry.kv.mod_revision, value, fresh.id, signal))) {
      await this.revokeQuietly(fresh.id);
      return undefined;
    }
    await this.revokeIfUnused(old);
    this.held.set(cidrToKey(entry.subnet), attrs.publicIp);
    this.log.info({ subnet: formatCidr(entry.subnet) }, 'reusing the lease carrying our PublicIP');
    return { subnet: entry.subnet, attrs, expiresAt: fresh.expiresAt };
  }

  /** Creates the lease if nobody holds the key; undefined when someone does. */
  private async create(
    subnet: Ipv4Cidr,
    attrs: LeaseAttrs,
    value: string,
    signal?: AbortSignal,
  ): Promise<Lease | undefined> {
    const key = subnetKey(this.options.prefix, subnet);
    const k = this.keyBuf(key);
    const fresh = await this.grant(signal);
    let ok = false;
    try {
      const res = await this.call(
        `create ${key}`,
        () =>
          this.client.kv.txn({
            compare: [{ key: k, target: 'Version', result: 'Equal', version: 0 }],
            success: [{ request_put: { key: k, value: Buffer.from(value), lease: fresh.id } }],
          }),
        signal,
      );
      ok = res.succeeded;
    } finally {
      if (!ok) await this.revokeQuietly(fresh.id);
    }
    if (!ok) return undefined;
    this.held.set(cidrToKey(subnet), attrs.publicIp);
    return { subnet, attrs, expiresAt: fresh.expiresAt };
  }

  private async deleteIfUnchanged(entry: Entry, signal?: AbortSignal): Promise<boolean> {
    const k = this.keyBuf(entry.key);
    const res = await this.call(
      `delete ${entry.key}`,
      () =>
        this.client.kv.txn({
          compare: [{ key: k, target: 'Mod', result: 'Equal', mod_revision: entry.kv.mod_revision }],
          success: [{ request_delete_range: { key: k } }],
        }),
      signal,
    );
    if (res.succeeded) await this.revokeIfUnused(entry.kv.lease);
    return res.succeeded;
  }

  async renew(lease: Lease, signal?: AbortSignal): Promise<Lease> {
    const key = subnetKey(this.options.prefix, lease.subnet);
    const value = encodeLeaseValue(lease.attrs);
    for (let attempt = 1; attempt <= RENEW_ATTEMPTS; attempt++) {
      const kv = await this.getKv(key, signal);
      if (!kv) {
        this.held.delete(cidrToKey(lease.subnet));
        throw new LeaseError(
          `lease ${formatCidr(lease.subnet)} is gone from etcd (expired or deleted at ${key}); acquire a new lease`,
        );
      }
      let current: LeaseAttrs | undefined;
      try {
        current = decodeLeaseValue(key, kv.value.toString());
      } catch {
        current = undefined;
      }
      if (!current || current.publicIp !== lease.attrs.publicIp) {
        throw new LeaseError(
          `lease ${formatCidr(lease.subnet)} at ${key} now carries ` +
            `${current ? `PublicIP ${current.publicIp}` : 'an unreadable value'}, not ours (${lease.attrs.publicIp}); ` +
            'acquire a new lease',
        );
      }
      if (kv.lease === NO_LEASE) {
        // A reservation does not expire; refresh the value only if it differs.
        if (kv.value.toString() === value) return { ...lease, expiresAt: Infinity };
        if (await this.putIfUnchanged(key, kv.mod_revision, value, NO_LEASE, signal)) {
          return { ...lease, expiresAt: Infinity };
        }
        continue;
      }
      const fresh = await this.grant(signal);
      // As in reuse(): after an error the fresh lease may carry our key; leave it be.
      if (!(await this.putIfUnchanged(key, kv.mod_revision, value, fresh.id, signal))) {
        await this.revokeQuietly(fresh.id);
        continue;
      }
      await this.revokeIfUnused(kv.lease);
      this.held.set(cidrToKey(lease.subnet), lease.attrs.publicIp);
      return { subnet: lease.subnet, attrs: lease.attrs, expiresAt: fresh.expiresAt };
    }
    throw new LeaseError(`lease ${formatCidr(lease.subnet)} at ${key} kept changing while renewing; retry`);
  }

  async release(lease: Lease): Promise<void> {
    const key = subnetKey(this.options.prefix, lease.subnet);
    this.held.delete(cidrToKey(lease.subnet));
    for (let attempt = 1; attempt <= RENEW_ATTEMPTS; attempt++) {
      const kv = await this.getKv(key);
      if (!kv) return;
      if (kv.lease === NO_LEASE) return; // reservations are the operator's, never deleted here
      let current: LeaseAttrs | undefined;
      try {
        current = decodeLeaseValue(key, kv.value.toString());
      } catch {
        current = undefined;
      }
      if (!current || current.publicIp !== lease.attrs.publicIp) return; // not ours any more
      const subnet = parseSubnetKey(this.options.prefix, key)!;
      if (await this.deleteIfUnchanged({ key, subnet, kv, attrs: current })) return;
    }
    throw new LeaseError(`lease ${formatCidr(lease.subnet)} at ${key} kept changing while releasing; retry`);
  }

  async watch(ownSubnet: Ipv4Cidr, opts: WatchOptions): Promise<void> {
    const signal = AbortSignal.any([opts.signal, this.closing.signal]);
    const ownKey = cidrToKey(ownSubnet);
    let known = new Map<string, Lease>();
    let first = true;
    let ownPresent: boolean | undefined;
    let backoff = RELIST_BACKOFF_MIN_MS;

    const deliver = (events: Parameters<WatchOptions['onEvents']>[0]): void => {
      try {
        opts.onEvents(events);
      } catch (err) {
        this.log.error({ err: errText(err) }, 'lease event handler threw');
      }
    };
    const noteOwn = (own: OwnLeaseState): void => {
      if (own.kind === 'unchanged') return;
      if (own.kind === 'present') {
        const ip = this.held.get(ownKey);
        if (ip === undefined || own.lease.attrs.publicIp === ip) {
          ownPresent = true;
          return;
        }
      }
      if (ownPresent !== false) {
        ownPresent = false;
        this.log.warn({ subnet: formatCidr(ownSubnet) }, 'our own lease is gone or taken');
        try {
          opts.onOwnLeaseLost?.(ownSubnet);
        } catch (err) {
          this.log.error({ err: errText(err) }, 'onOwnLeaseLost handler threw');
        }
      }
    };

    while (!signal.aborted) {
      let snap: { leases: Lease[]; revision: string };
      try {
        snap = await this.snapshot(signal);
      } catch (err) {
        if (signal.aborted) break;
        this.log.warn(
          { err: errText(err), retryInMs: backoff },
          'listing leases failed; keeping the last known peers',
        );
        await sleep(backoff, signal);
        backoff = Math.min(backoff * 2, RELIST_BACKOFF_MAX_MS);
        continue;
      }
      backoff = RELIST_BACKOFF_MIN_MS;
      const r = reconcileSnapshot(known, snap.leases, ownSubnet);
      known = r.known;
      noteOwn(r.own);
      if (first || r.events.length > 0) {
        first = false;
        deliver(r.events);
      }
      await this.follow(BigInt(snap.revision) + 1n, signal, async (res) => {
        const changes = await this.changesOf(res, signal);
        const c = reconcileChanges(known, changes, ownSubnet);
        known = c.known;
        noteOwn(c.own);
        if (c.events.length > 0) deliver(c.events);
      });
    }
  }

  /**
   * Watches the subnets prefix from `fromRevision` and feeds each response, in order, to
   * `apply`. Resolves when a relist is needed (watch canceled, e.g. compacted; or `apply`
   * failed) or when `signal` aborts.
   */
  private follow(
    fromRevision: bigint,
    signal: AbortSignal,
    apply: (res: IWatchResponse) => Promise<void>,
  ): Promise<void> {
    return new Promise<void>((resolve) => {
      if (signal.aborted) return resolve();
      const watcher = this.client
        .watch()
        .prefix(subnetsPrefix(this.options.prefix))
        .startRevision(fromRevision.toString())
        .watcher();
      // The revision to resume from after a dropped stream, tracked here: the client's own
      // bookkeeping takes the header revision of any response (including the one that
      // confirms a re-created watch), which can skip events still being replayed.
      let next = fromRevision;
      watcher.on('connecting', () => {
        watcher.request.start_revision = next.toString();
      });
      let chain = Promise.resolve();
      let done = false;
      const finish = (why: string, err?: unknown): void => {
        if (done) return;
        done = true;
        signal.removeEventListener('abort', onAbort);
        if (!signal.aborted)
          this.log.warn({ why, err: err === undefined ? undefined : errText(err) }, 'relisting leases');
        watcher.removeAllListeners('data');
        watcher.cancel().catch(() => undefined);
        void chain.then(() => resolve());
      };
      const onAbort = (): void => finish('aborted');
      signal.addEventListener('abort', onAbort, { once: true });
      watcher.on('data', (res) => {
        if (res.events.length === 0) {
          // Progress notification: everything up to the header revision was delivered.
          if (!res.created)
            next = BigInt(res.header.revision) + 1n > next ? BigInt(res.header.revision) + 1n : next;
          return;
        }
        for (const ev of res.events) {
          const r = BigInt(ev.kv.mod_revision) + 1n;
          if (r > next) next = r;
        }
        if (done) return;
        chain = chain.then(async () => {
          if (done) return;
          try {
            await apply(res);
          } catch (err) {
            finish('a watch event could not be read', err);
          }
        });
      });
      watcher.on('error', (err) => {
        void this.whyCanceled(next.toString()).then((why) => finish(why, err));
      });
      watcher.on('disconnected', (err) => {
        if (!done)
          this.log.warn({ err: errText(err) }, 'lease watch disconnected; the client reconnects and resumes');
      });
      watcher.on('connected', () => this.log.debug('lease watch connected'));
    });
  }

  /**
   * etcd cancels a watch without saying why in 3.4 (the reason is only its compact_revision,
   * which the client drops); a read at the watch's revision tells whether it was compacted.
   */
  private async whyCanceled(revision: string): Promise<string> {
    try {
      const key = this.keyBuf(configKey(this.options.prefix));
      await this.call('probe watch revision', () => this.client.kv.range({ key, revision, limit: 1 }));
    } catch (err) {
      if (/compacted/i.test(errText(err))) return `watch revision ${revision} was compacted`;
    }
    return 'watch canceled by etcd';
  }

  /** A watch response as reconcile changes (malformed puts count as deletes). */
  private async changesOf(res: IWatchResponse, signal: AbortSignal): Promise<LeaseChange[]> {
    const changes: LeaseChange[] = [];
    for (const ev of res.events) {
      const key = ev.kv.key.toString();
      const subnet = parseSubnetKey(this.options.prefix, key);
      if (!subnet) continue;
      if (ev.type === 'Delete') {
        changes.push({ type: 'delete', subnet });
        continue;
      }
      let attrs: LeaseAttrs;
      try {
        attrs = decodeLeaseValue(key, ev.kv.value.toString());
      } catch (err) {
        this.log.warn({ key, err: errText(err) }, 'skipping malformed lease value');
        changes.push({ type: 'delete', subnet });
        continue;
      }
      const expiresAt = await this.expiryOf(ev.kv.lease, signal);
      if (expiresAt === undefined) changes.push({ type: 'delete', subnet });
      else changes.push({ type: 'put', lease: { subnet, attrs, expiresAt } });
    }
    return changes;
  }

  async close(): Promise<void> {
    if (this.closing.signal.aborted) return;
    this.closing.abort(new LeaseError('etcd store closed'));
    // Let watch loops see the abort and cancel their watchers before the channels go away.
    await new Promise((r) => setImmediate(r));
    this.client.close();
  }
}
