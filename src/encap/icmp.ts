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

/** True when an unreachable may be sent for this (validated) packet. */
export function icmpUnreachableAllowed(buf: Uint8Array, offset: number): boolean {
  if ((buf[offset + 9] as number) === IPPROTO_ICMP) return false;
  if (!ipv4IsFirstFragment(buf, offset)) return false;
  return isUnicast(ipv4Src(buf, offset)) && isUnicast(ipv4Dst(buf, offset));
}

/**
 * Writes the reply for the validated packet at (offset, length) of `src` into `dst` at
 * `dstOffset` (room for ICMP_UNREACHABLE_MAX bytes needed), from `ourAddr` (the TUN
 * address) to the packet's source, TTL 64. Returns the reply length, or 0 when no reply
 * is allowed (see icmpUnreachableAllowed).
 */
export function buildIcmpUnreachable(
  src: Uint8Array,
  offset: number,
  length: number,
  dst: Uint8Array,
  dstOffset: number,
  ourAddr: number,
): number {
  if (!icmpUnreachableAllowed(src, offset)) return 0;
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
