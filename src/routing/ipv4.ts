/**
 * IPv4 addresses and CIDRs. Hot paths use addresses as uint32 numbers (host order,
 * always >>> 0); strings appear only at the edges (config, leases, logs).
 */
import { ConfigError } from '../util/errors.ts';

export interface Ipv4Cidr {
  /** Network address as uint32 (host bits are zero). */
  readonly addr: number;
  readonly prefix: number;
}

const IPV4_RE = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/** Parses dotted-quad text into a uint32; returns undefined when it is not an IPv4 address. */
export function tryParseIpv4(text: string): number | undefined {
  const m = IPV4_RE.exec(text.trim());
  if (!m) return undefined;
  let v = 0;
  for (let i = 1; i <= 4; i++) {
    const part = m[i] as string;
    if (part.length > 1 && part.startsWith('0')) return undefined;
    const o = Number(part);
    if (o > 255) return undefined;
    v = v * 256 + o;
  }
  return v >>> 0;
}

export function parseIpv4(text: string, key = 'address'): number {
  const v = tryParseIpv4(text);
  if (v === undefined) throw new ConfigError(key, `"${text}" is not an IPv4 address (expected a.b.c.d)`);
  return v;
}

export function formatIpv4(addr: number): string {
  return `${(addr >>> 24) & 255}.${(addr >>> 16) & 255}.${(addr >>> 8) & 255}.${addr & 255}`;
}

/** Netmask for a prefix length as uint32 (prefix 0 -> 0). */
export function prefixMask(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

export function cidr(addr: number, prefix: number): Ipv4Cidr {
  return { addr: (addr & prefixMask(prefix)) >>> 0, prefix };
}

/**
 * Parses "a.b.c.d/len". Host bits must be zero unless `allowHostBits` (then they are cleared).
 */
export function parseCidr(text: string, key = 'cidr', allowHostBits = false): Ipv4Cidr {
  const slash = text.indexOf('/');
  if (slash < 0) throw new ConfigError(key, `"${text}" is not a CIDR (expected a.b.c.d/len)`);
  const addr = parseIpv4(text.slice(0, slash), key);
  const lenText = text.slice(slash + 1);
  const prefix = /^\d{1,2}$/.test(lenText) ? Number(lenText) : NaN;
  if (!(prefix >= 0 && prefix <= 32)) throw new ConfigError(key, `"${text}" has an invalid prefix length`);
  const net = (addr & prefixMask(prefix)) >>> 0;
  if (net !== addr && !allowHostBits) {
    throw new ConfigError(key, `"${text}" has host bits set; did you mean ${formatIpv4(net)}/${prefix}?`);
  }
  return { addr: net, prefix };
}

export function formatCidr(c: Ipv4Cidr): string {
  return `${formatIpv4(c.addr)}/${c.prefix}`;
}

/** flannel's key form for a subnet: "10.244.3.0-24". */
export function cidrToKey(c: Ipv4Cidr): string {
  return `${formatIpv4(c.addr)}-${c.prefix}`;
}

/** Parses flannel's key form "10.244.3.0-24"; undefined when malformed. */
export function keyToCidr(key: string): Ipv4Cidr | undefined {
  const dash = key.lastIndexOf('-');
  if (dash < 0) return undefined;
  const addr = tryParseIpv4(key.slice(0, dash));
  const prefix = Number(key.slice(dash + 1));
  if (addr === undefined || !Number.isInteger(prefix) || prefix < 0 || prefix > 32) return undefined;
  if ((addr & prefixMask(prefix)) >>> 0 !== addr) return undefined;
  return { addr, prefix };
}

export function cidrContains(outer: Ipv4Cidr, addr: number): boolean {
  return (addr & prefixMask(outer.prefix)) >>> 0 === outer.addr;
}

/** True when `inner` lies entirely inside `outer`. */
export function cidrContainsCidr(outer: Ipv4Cidr, inner: Ipv4Cidr): boolean {
  return inner.prefix >= outer.prefix && cidrContains(outer, inner.addr);
}

export function cidrOverlaps(a: Ipv4Cidr, b: Ipv4Cidr): boolean {
  return cidrContainsCidr(a, b) || cidrContainsCidr(b, a);
}

export function cidrEquals(a: Ipv4Cidr, b: Ipv4Cidr): boolean {
  return a.addr === b.addr && a.prefix === b.prefix;
}

/** Number of addresses in the CIDR (2^(32-prefix)). */
export function cidrSize(c: Ipv4Cidr): number {
  return 2 ** (32 - c.prefix);
}
