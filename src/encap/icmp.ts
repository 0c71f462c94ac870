/**
 * ICMP destination unreachable (type 3, code 0 "net unreachable"), built into a slot the
 * caller supplies, for packets the TUN handed us that no peer owns. Like a router
 * (RFC 1812 4.3.2.7) it stays silent for ICMP input, non-first fragments, and sources or
 * destinations that are not one host (0.0.0.0, multicast, broadcast).
 */
import { internetChecksum } from './checksum.ts';
import {
  IPPROTO_ICMP,
  ipv4Dst,
  ipv4HeaderLength,
  ipv4IsFirstFragment,
  ipv4Src,
  ipv4WriteHeader,
} from './ipv4.ts';

export const ICMP_DEST_UNREACHABLE = 3;
export const ICMP_NET_UNREACHABLE = 0;
/** Largest reply: 20 (IP) + 8 (ICMP) + 60 (offending header with options) + 8 (payload). */
export const ICMP_UNREACHABLE_MAX = 96;

function isUnicast(addr: number): boolean {
  return addr !== 0 && addr !== 0xffffffff && addr >>> 28 !== 0xe && addr >>> 28 !== 0xf;
}

/** ICMP error types (RFC 792/1812): never answered with another error. */
function isIcmpError(type: number): boolean {
  return type === 3 || type === 4 || type === 5 || type === 11 || type === 12;
}

/**
 * True when an unreachable may be sent for this validated packet of `length` bytes.
 * ICMP input: never, unless `allowIcmpQueries` and it is a query (echo, timestamp, ...).
 */
export function icmpUnreachableAllowed(
  buf: Uint8Array,
  offset: number,
  length: number,
  allowIcmpQueries = false,
): boolean {
  if (!ipv4IsFirstFragment(buf, offset)) return false;
  if ((buf[offset + 9] as number) === IPPROTO_ICMP) {
    if (!allowIcmpQueries) return false;
    const hlen = ipv4HeaderLength(buf, offset);
    if (length <= hlen || isIcmpError(buf[offset + hlen] as number)) return false;
  }
  return isUnicast(ipv4Src(buf, offset)) && isUnicast(ipv4Dst(buf, offset));
}

/**
 * Writes the reply for the validated packet at (offset, length) of `src` into `dst` at
 * `dstOffset` (room for ICMP_UNREACHABLE_MAX bytes needed), from `ourAddr` (the TUN
 * address) to the packet's source, TTL 64. Returns the reply length, or 0 when no reply
 * is allowed (see icmpUnreachableAllowed) or the slot is too small.
 */
export function buildIcmpUnreachable(
  src: Uint8Array,
  offset: number,
  length: number,
  dst: Uint8Array,
  dstOffset: number,
  ourAddr: number,
  allowIcmpQueries = false,
): number {
  if (!icmpUnreachableAllowed(src, offset, length, allowIcmpQueries)) return 0;
  const hlen = ipv4HeaderLength(src, offset);
  const quoted = Math.min(length, hlen + 8);
  const icmpLen = 8 + quoted;
  const total = 20 + icmpLen;
  if (dstOffset < 0 || dstOffset + total > dst.length) return 0;
  ipv4WriteHeader(dst, dstOffset, total, IPPROTO_ICMP, 64, ourAddr, ipv4Src(src, offset));
  const icmp = dstOffset + 20;
  dst[icmp] = ICMP_DEST_UNREACHABLE;
  dst[icmp + 1] = ICMP_NET_UNREACHABLE;
  dst[icmp + 2] = 0;
  dst[icmp + 3] = 0;
  dst[icmp + 4] = 0;
  dst[icmp + 5] = 0;
  dst[icmp + 6] = 0;
  dst[icmp + 7] = 0;
  for (let i = 0; i < quoted; i++) dst[icmp + 8 + i] = src[offset + i] as number;
  const c = internetChecksum(dst, icmp, icmpLen);
  dst[icmp + 2] = c >>> 8;
  dst[icmp + 3] = c & 0xff;
  return total;
}
