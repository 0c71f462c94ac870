/**
 * flannel's subnet acquisition policy as a pure function, apart from any storage.
 *
 * Why pure: every store that picks subnets itself (embedded, etcd) must decide the same
 * way, and the decision is easy to test exhaustively when it takes the world as arguments
 * (existing leases, a clock value, a random source) instead of reading it.
 *
 * Order (flannel pkg/subnet/etcd/local_manager.go tryAcquireLease):
 *   1. a live lease (or reservation) carrying our public IP, if it still fits the config -> reuse;
 *      one that no longer fits is handed back as `discard` so the store deletes it;
 *   2. the previous subnet (from the subnet file), if it fits the config and nobody holds it;
 *   3. a random free subnet among the first 100 free ones from SubnetMin upwards;
 *   4. otherwise the network is full.
 */
import type { Ipv4Cidr } from '../routing/ipv4.ts';
import { cidrOverlaps, formatCidr, formatIpv4 } from '../routing/ipv4.ts';
import type { Lease, LeaseAttrs, NetworkConfig } from './types.ts';

/** flannel collects at most this many free candidates before picking one at random. */
export const MAX_CANDIDATES = 100;

export interface AllocateInput {
  readonly config: NetworkConfig;
  /** Leases in the store, reservations included (expiresAt = Infinity). Expired ones are ignored. */
  readonly existing: readonly Lease[];
  readonly attrs: LeaseAttrs;
  readonly previousSubnet?: Ipv4Cidr | undefined;
  /** Current time in ms (leases with expiresAt <= now count as free). */
  readonly now: number;
  /** Uniform in [0, 1). */
  readonly random: () => number;
}

export type Allocation =
  | { readonly kind: 'reuse'; readonly lease: Lease }
  | {
      readonly kind: 'previous' | 'random';
      readonly subnet: Ipv4Cidr;
      /** Our own old lease that no longer fits the config: delete it before creating the new one. */
      readonly discard?: Lease;
    }
  | { readonly kind: 'full'; readonly message: string; readonly discard?: Lease };

/** True when `subnet` is one the config would hand out (right length, within [SubnetMin, SubnetMax]). */
export function subnetFitsConfig(config: NetworkConfig, subnet: Ipv4Cidr): boolean {
  return (
    subnet.prefix === config.subnetLen && subnet.addr >= config.subnetMin && subnet.addr <= config.subnetMax
  );
}

/** Number of subnets the config can hand out. */
export function subnetCapacity(config: NetworkConfig): number {
  return Math.floor((config.subnetMax - config.subnetMin) / 2 ** (32 - config.subnetLen)) + 1;
}

/** Decides which subnet to take; see the module comment for the order. */
export function allocate(input: AllocateInput): Allocation {
  const { config, attrs, now } = input;
  const live = input.existing.filter((l) => l.expiresAt > now);

  let discard: Lease | undefined;
  const mine = live.find((l) => l.attrs.publicIp === attrs.publicIp);
  if (mine) {
    if (subnetFitsConfig(config, mine.subnet)) return { kind: 'reuse', lease: mine };
    discard = mine;
  }
  const taken = discard ? live.filter((l) => l !== discard) : live;
  const isFree = (s: Ipv4Cidr): boolean => !taken.some((l) => cidrOverlaps(l.subnet, s));

  const prev = input.previousSubnet;
  if (prev && subnetFitsConfig(config, prev) && isFree(prev)) {
    return discard ? { kind: 'previous', subnet: prev, discard } : { kind: 'previous', subnet: prev };
  }

  const candidates = freeSubnets(config, taken, MAX_CANDIDATES);
  if (candidates.length === 0) {
    const message =
      `no free /${config.subnetLen} subnet left in ${formatCidr(config.network)} ` +
      `between ${formatIpv4(config.subnetMin)} and ${formatIpv4(config.subnetMax)} ` +
      `(${taken.length} leases held); remove stale leases, or widen Network/SubnetMin/SubnetMax or lengthen SubnetLen`;
    return discard ? { kind: 'full', message, discard } : { kind: 'full', message };
  }
  const pick = Math.min(candidates.length - 1, Math.floor(input.random() * candidates.length));
  const subnet = candidates[pick] as Ipv4Cidr;
  return discard ? { kind: 'random', subnet, discard } : { kind: 'random', subnet };
}

/** Up to `limit` free subnets from SubnetMin upwards, skipping any that overlap `taken`. */
export function freeSubnets(config: NetworkConfig, taken: readonly Lease[], limit: number): Ipv4Cidr[] {
  const step = 2 ** (32 - config.subnetLen);
  // Sorting the taken ranges lets one forward pass skip them (hundreds of leases, thousands of subnets).
  const ranges = taken
    .map((l) => {
      const start = l.subnet.addr;
      return [start, start + 2 ** (32 - l.subnet.prefix) - 1] as const;
    })
    .sort((a, b) => a[0] - b[0]);
  const out: Ipv4Cidr[] = [];
  let r = 0;
  for (let addr = config.subnetMin; addr <= config.subnetMax && out.length < limit; addr += step) {
    const end = addr + step - 1;
    while (r < ranges.length && (ranges[r] as readonly [number, number])[1] < addr) r++;
    let overlaps = false;
    for (let k = r; k < ranges.length; k++) {
      const [s, e] = ranges[k] as readonly [number, number];
      if (s > end) break;
      if (e >= addr) {
        overlaps = true;
        break;
      }
    }
    if (!overlaps) out.push({ addr: addr >>> 0, prefix: config.subnetLen });
  }
  return out;
}

/** The live lease in `existing` that overlaps `subnet`, if any. */
export function subnetHolder(existing: readonly Lease[], subnet: Ipv4Cidr, now: number): Lease | undefined {
  return existing.find((l) => l.expiresAt > now && cidrOverlaps(l.subnet, subnet));
}
