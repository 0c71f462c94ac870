/**
 * flannel's etcd v3 layout, byte for byte: keys `<prefix>/config` and
 * `<prefix>/subnets/<a.b.c.d>-<len>` (dual-stack leases append `&<v6>-<len>`), values the
 * JSON of flannel's LeaseAttrs (pkg/lease/lease.go): `PublicIP` (always), `PublicIPv6`
 * (always, null when unset), then `BackendType` and `BackendData` only when set (Go's
 * omitempty). Why a module of its own: a lease written by flanneld must read the same in
 * weft and the other way round, and that is easiest to pin down (and test) in one place.
 */
import type { Ipv4Cidr } from '../../routing/ipv4.ts';
import { cidrToKey, keyToCidr, tryParseIpv4 } from '../../routing/ipv4.ts';
import { LeaseError } from '../../util/errors.ts';
import type { LeaseAttrs } from '../types.ts';

export const DEFAULT_PREFIX = '/coreos.com/network';

export function configKey(prefix: string): string {
  return `${prefix}/config`;
}

/** Prefix of every lease key, with the trailing slash (so `subnets2/...` never matches). */
export function subnetsPrefix(prefix: string): string {
  return `${prefix}/subnets/`;
}

export function subnetKey(prefix: string, subnet: Ipv4Cidr): string {
  return `${subnetsPrefix(prefix)}${cidrToKey(subnet)}`;
}

/**
 * The IPv4 subnet of a lease key (`.../subnets/10.5.52.0-24`, optionally with flannel's
 * `&fd00::-64` IPv6 part, which weft ignores); undefined when the key is not a lease key.
 */
export function parseSubnetKey(prefix: string, key: string): Ipv4Cidr | undefined {
  const head = subnetsPrefix(prefix);
  if (!key.startsWith(head)) return undefined;
  const name = key.slice(head.length);
  const amp = name.indexOf('&');
  return keyToCidr(amp < 0 ? name : name.slice(0, amp));
}

/** The JSON flanneld writes for `attrs` (field order and omissions as Go's encoding/json). */
export function encodeLeaseValue(attrs: LeaseAttrs): string {
  const v: Record<string, unknown> = {
    PublicIP: attrs.publicIp,
    PublicIPv6: attrs.publicIpv6 ?? null,
  };
  if (attrs.backendType) v.BackendType = attrs.backendType;
  if (attrs.backendData !== undefined && attrs.backendData !== null) v.BackendData = attrs.backendData;
  return JSON.stringify(v);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Parses a lease value. Throws LeaseError (naming `key`) when it is not what flanneld
 * writes: not JSON, no valid IPv4 `PublicIP`, or wrongly typed fields. A missing
 * `BackendData` (udp, host-gw) reads as null.
 */
export function decodeLeaseValue(key: string, text: string): LeaseAttrs {
  const bad = (why: string, cause?: unknown): LeaseError =>
    new LeaseError(
      `lease value at ${key} is malformed (${why}); expected flannel's JSON like ` +
        `{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{...}}`,
      cause === undefined ? undefined : { cause },
    );
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw bad('not JSON', err);
  }
  if (!isObject(raw)) throw bad('not a JSON object');
  const ip = raw.PublicIP;
  if (typeof ip !== 'string' || tryParseIpv4(ip) === undefined) {
    throw bad(`PublicIP ${JSON.stringify(ip)} is not an IPv4 address`);
  }
  const ip6 = raw.PublicIPv6;
  if (ip6 !== undefined && ip6 !== null && typeof ip6 !== 'string') {
    throw bad(`PublicIPv6 ${JSON.stringify(ip6)} is not a string or null`);
  }
  const type = raw.BackendType;
  if (type !== undefined && type !== null && typeof type !== 'string') {
    throw bad(`BackendType ${JSON.stringify(type)} is not a string`);
  }
  return {
    publicIp: ip,
    publicIpv6: typeof ip6 === 'string' ? ip6 : null,
    backendType: typeof type === 'string' ? type : '',
    backendData: raw.BackendData ?? null,
  };
}
