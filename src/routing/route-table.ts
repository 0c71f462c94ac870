/**
 * Longest-prefix-match route table: destination CIDR -> value (a Peer in the data path).
 *
 * One Map per prefix length present, keyed by the masked network address as a signed
 * int32 (a small integer to V8, so lookups do not box numbers), probed from the longest
 * prefix down. Lookups allocate nothing; at most 33 probes, usually one or two, since a
 * cluster's leases share one prefix length. Changes rebuild the small list of lengths.
 */
import { formatCidr, prefixMask } from './ipv4.ts';
import type { Ipv4Cidr } from './ipv4.ts';

const MASKS: Int32Array = (() => {
  const m = new Int32Array(33);
  for (let p = 0; p <= 32; p++) m[p] = prefixMask(p) | 0;
  return m;
})();

export class RouteTable<T> {
  /** maps[p]: masked network (int32) -> value; cidrs[p] keeps the CIDR objects for entries(). */
  private readonly maps: (Map<number, T> | undefined)[] = new Array<Map<number, T> | undefined>(33).fill(
    undefined,
  );
  private readonly cidrs: (Map<number, Ipv4Cidr> | undefined)[] = new Array<
    Map<number, Ipv4Cidr> | undefined
  >(33).fill(undefined);
  /** Prefix lengths present, longest first. */
  private lengths: Int8Array = new Int8Array(0);
  private count = 0;

  get size(): number {
    return this.count;
  }

  private key(c: Ipv4Cidr): number {
    if (!Number.isInteger(c.prefix) || c.prefix < 0 || c.prefix > 32) {
      throw new RangeError(`invalid prefix length in ${formatCidr(c)}`);
    }
    return c.addr & (MASKS[c.prefix] as number);
  }

  /** Adds a route; returns false (and changes nothing) when that exact CIDR is present. */
  add(c: Ipv4Cidr, value: T): boolean {
    const k = this.key(c);
    const m = this.maps[c.prefix];
    if (m?.has(k)) return false;
    this.put(c, k, value);
    return true;
  }

  /** Adds or replaces the route for that exact CIDR; returns the previous value. */
  replace(c: Ipv4Cidr, value: T): T | undefined {
    const k = this.key(c);
    const prev = this.maps[c.prefix]?.get(k);
    if (prev === undefined) {
      this.put(c, k, value);
    } else {
      (this.maps[c.prefix] as Map<number, T>).set(k, value);
    }
    return prev;
  }

  private put(c: Ipv4Cidr, k: number, value: T): void {
    let m = this.maps[c.prefix];
    let cm = this.cidrs[c.prefix];
    if (m === undefined || cm === undefined) {
      m = new Map();
      cm = new Map();
      this.maps[c.prefix] = m;
      this.cidrs[c.prefix] = cm;
      this.rebuildLengths();
    }
    m.set(k, value);
    cm.set(k, { addr: k >>> 0, prefix: c.prefix });
    this.count++;
  }

  /** Removes the route for that exact CIDR; returns its value, or undefined. */
  remove(c: Ipv4Cidr): T | undefined {
    const k = this.key(c);
    const m = this.maps[c.prefix];
    const v = m?.get(k);
    if (m === undefined || v === undefined) return undefined;
    m.delete(k);
    this.cidrs[c.prefix]?.delete(k);
    this.count--;
    if (m.size === 0) {
      this.maps[c.prefix] = undefined;
      this.cidrs[c.prefix] = undefined;
      this.rebuildLengths();
    }
    return v;
  }

  /** The exact-match value for a CIDR (not LPM). */
  get(c: Ipv4Cidr): T | undefined {
    return this.maps[c.prefix]?.get(this.key(c));
  }

  clear(): void {
    this.maps.fill(undefined);
    this.cidrs.fill(undefined);
    this.lengths = new Int8Array(0);
    this.count = 0;
  }

  /** Longest-prefix match for a uint32 address. Allocation-free. */
  lookup(addr: number): T | undefined {
    const lengths = this.lengths;
    const maps = this.maps;
    for (let i = 0; i < lengths.length; i++) {
      const p = lengths[i] as number;
      const v = (maps[p] as Map<number, T>).get(addr & (MASKS[p] as number));
      if (v !== undefined) return v;
    }
    return undefined;
  }

  /** All routes, longest prefix first (for status; allocates). */
  *entries(): IterableIterator<[Ipv4Cidr, T]> {
    for (const p of Array.from(this.lengths)) {
      const m = this.maps[p];
      const cm = this.cidrs[p];
      if (m === undefined || cm === undefined) continue;
      for (const [k, v] of m) yield [cm.get(k) as Ipv4Cidr, v];
    }
  }

  private rebuildLengths(): void {
    const present: number[] = [];
    for (let p = 32; p >= 0; p--) if (this.maps[p] !== undefined) present.push(p);
    this.lengths = Int8Array.from(present);
  }
}
