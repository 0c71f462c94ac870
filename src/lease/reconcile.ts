/**
 * Turning what a store saw (a full listing, or a run of put/delete changes) into one batch
 * of peer events, as a pure function.
 *
 * Why pure and shared: every store has the same two situations — a (re)list after start or
 * a lost watch, and incremental changes — and must produce the same kind of batch from
 * both (flannel pkg/lease/lease.go LeaseWatcher Reset/Update). Keeping it here means the
 * stores only translate their storage format into Lease values.
 *
 * Rules:
 *  - Leases are keyed by subnet ("10.244.3.0-24"). Our own subnet never produces an event;
 *    instead the result says what happened to it (`own`), so the store can report a lost lease.
 *  - A changed lease (same subnet, different PublicIP/PublicIPv6/BackendType/BackendData) is
 *    emitted as `removed` (old) followed by `added` (new). A change of expiry alone is not an
 *    event (renewals are invisible to backends).
 *  - Within a batch all `removed` events come before all `added` events, so a backend can
 *    apply them in order without a route briefly pointing at two peers.
 *  - Leases that expired (expiresAt <= now) count as absent.
 *  - Inputs are never mutated; the new known set is returned.
 */
import type { Ipv4Cidr } from '../routing/ipv4.ts';
import { cidrToKey } from '../routing/ipv4.ts';
import type { Lease, LeaseAttrs, LeaseEvent } from './types.ts';

/** Peer leases known to a watcher, keyed by cidrToKey(subnet). */
export type KnownLeases = ReadonlyMap<string, Lease>;

/** One change as a store's watch reports it. */
export type LeaseChange =
  | { readonly type: 'put'; readonly lease: Lease }
  | { readonly type: 'delete'; readonly subnet: Ipv4Cidr };

/** What happened to our own subnet in this input. */
export type OwnLeaseState =
  /** Not mentioned (events) — nothing to say. */
  | { readonly kind: 'unchanged' }
  /** Present with these attrs (snapshot), or put (events). */
  | { readonly kind: 'present'; readonly lease: Lease }
  /** Absent from the snapshot, deleted, or expired. */
  | { readonly kind: 'gone' };

export interface ReconcileResult {
  readonly events: LeaseEvent[];
  readonly known: Map<string, Lease>;
  readonly own: OwnLeaseState;
}

function stableJson(v: unknown): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v) ?? 'undefined';
  if (Array.isArray(v)) return `[${v.map(stableJson).join(',')}]`;
  const o = v as Record<string, unknown>;
  return `{${Object.keys(o)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${stableJson(o[k])}`)
    .join(',')}}`;
}

/** True when two leases' attributes are the same for a backend (expiry is ignored). */
export function sameAttrs(a: LeaseAttrs, b: LeaseAttrs): boolean {
  return (
    a.publicIp === b.publicIp &&
    (a.publicIpv6 ?? null) === (b.publicIpv6 ?? null) &&
    a.backendType === b.backendType &&
    stableJson(a.backendData) === stableJson(b.backendData)
  );
}

function ordered(removed: Lease[], added: Lease[]): LeaseEvent[] {
  const events: LeaseEvent[] = [];
  for (const lease of removed) events.push({ type: 'removed', lease });
  for (const lease of added) events.push({ type: 'added', lease });
  return events;
}

/**
 * A full listing against what we knew: events that turn `known` into `snapshot`. Use for
 * the first delivery (known empty -> everything `added`) and for relists.
 */
export function reconcileSnapshot(
  known: KnownLeases,
  snapshot: readonly Lease[],
  ownSubnet: Ipv4Cidr,
  now = -Infinity,
): ReconcileResult {
  const ownKey = cidrToKey(ownSubnet);
  const next = new Map<string, Lease>();
  let own: OwnLeaseState = { kind: 'gone' };
  for (const lease of snapshot) {
    if (lease.expiresAt <= now) continue;
    const key = cidrToKey(lease.subnet);
    if (key === ownKey) own = { kind: 'present', lease };
    else next.set(key, lease);
  }
  const removed: Lease[] = [];
  const added: Lease[] = [];
  for (const [key, old] of known) {
    const cur = next.get(key);
    if (!cur) removed.push(old);
    else if (!sameAttrs(old.attrs, cur.attrs)) {
      removed.push(old);
      added.push(cur);
    }
  }
  for (const [key, cur] of next) if (!known.has(key)) added.push(cur);
  return { events: ordered(removed, added), known: next, own };
}

/**
 * A run of changes (in the order the store saw them) against what we knew. Several changes
 * to one subnet collapse to their net effect.
 */
export function reconcileChanges(
  known: KnownLeases,
  changes: readonly LeaseChange[],
  ownSubnet: Ipv4Cidr,
  now = -Infinity,
): ReconcileResult {
  const ownKey = cidrToKey(ownSubnet);
  // Last change per subnet wins; undefined = deleted.
  const last = new Map<string, Lease | undefined>();
  let own: OwnLeaseState = { kind: 'unchanged' };
  for (const c of changes) {
    const subnet = c.type === 'put' ? c.lease.subnet : c.subnet;
    const key = cidrToKey(subnet);
    const lease = c.type === 'put' && c.lease.expiresAt > now ? c.lease : undefined;
    if (key === ownKey) own = lease ? { kind: 'present', lease } : { kind: 'gone' };
    else last.set(key, lease);
  }
  const next = new Map(known);
  const removed: Lease[] = [];
  const added: Lease[] = [];
  for (const [key, cur] of last) {
    const old = known.get(key);
    if (!cur) {
      if (old) {
        removed.push(old);
        next.delete(key);
      }
      continue;
    }
    next.set(key, cur);
    if (!old) added.push(cur);
    else if (!sameAttrs(old.attrs, cur.attrs)) {
      removed.push(old);
      added.push(cur);
    }
  }
  return { events: ordered(removed, added), known: next, own };
}

/**
 * Peers in `known` whose expiry has passed by `now`, as `removed` events (for stores that
 * see expiry only by time, like the embedded one).
 */
export function reconcileExpiry(
  known: KnownLeases,
  now: number,
): { events: LeaseEvent[]; known: Map<string, Lease> } {
  const next = new Map<string, Lease>();
  const removed: Lease[] = [];
  for (const [key, lease] of known) {
    if (lease.expiresAt <= now) removed.push(lease);
    else next.set(key, lease);
  }
  return { events: ordered(removed, []), known: next };
}
