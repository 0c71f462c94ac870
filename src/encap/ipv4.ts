/**
 * IPv4 header codec, in place on an arena at (offset, length). Never throws on bad input:
 * validation returns the trimmed packet length or a negative DropReason. Addresses come
 * back as uint32 numbers read byte by byte, so nothing allocates.
 */
import { checksumUpdate16, internetChecksum } from './checksum.ts';
import { DropReason } from './drop-reason.ts';

export const IPV4_MIN_HEADER = 20;
export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;

/**
 * Checks the IPv4 header at `offset` with `available` bytes present: version 4, IHL >= 5,
 * header within the data, IHL*4 <= total length <= available, header checksum valid.
 * Returns the packet's total length (bytes beyond it are padding to be trimmed) when valid,
 * else -DropReason.notIpv4 or -DropReason.malformed.
 */
export function ipv4Validate(buf: Uint8Array, offset: number, available: number): number {
  if (available < 1 || offset < 0 || offset + available > buf.length) return -DropReason.malformed;
  const b0 = buf[offset] as number;
  if (b0 >>> 4 !== 4) return -DropReason.notIpv4;
  const hlen = (b0 & 0x0f) << 2;
  if (hlen < IPV4_MIN_HEADER || hlen > available) return -DropReason.malformed;
  const total = ((buf[offset + 2] as number) << 8) | (buf[offset + 3] as number);
  if (total < hlen || total > available) return -DropReason.malformed;
  if (internetChecksum(buf, offset, hlen) !== 0) return -DropReason.malformed;
  return total;
}

/** Header length in bytes (IHL * 4). Assumes a validated header. */
export function ipv4HeaderLength(buf: Uint8Array, offset: number): number {
  return ((buf[offset] as number) & 0x0f) << 2;
}

export function ipv4Protocol(buf: Uint8Array, offset: number): number {
  return buf[offset + 9] as number;
}

export function ipv4Ttl(buf: Uint8Array, offset: number): number {
  return buf[offset + 8] as number;
}

function readU32(buf: Uint8Array, at: number): number {
  return (
    (((buf[at] as number) << 24) |
      ((buf[at + 1] as number) << 16) |
      ((buf[at + 2] as number) << 8) |
      (buf[at + 3] as number)) >>>
    0
  );
}

function writeU32(buf: Uint8Array, at: number, v: number): void {
  buf[at] = v >>> 24;
  buf[at + 1] = (v >>> 16) & 0xff;
  buf[at + 2] = (v >>> 8) & 0xff;
  buf[at + 3] = v & 0xff;
}

export function ipv4Src(buf: Uint8Array, offset: number): number {
  return readU32(buf, offset + 12);
}

export function ipv4Dst(buf: Uint8Array, offset: number): number {
  return readU32(buf, offset + 16);
}

/**
 * Decrements TTL and patches the header checksum incrementally (RFC 1624). Returns false,
 * leaving the packet untouched, when TTL is 0 or 1 (forwarding would expire it: drop).
 */
export function ipv4DecrementTtl(buf: Uint8Array, offset: number): boolean {
  const ttl = buf[offset + 8] as number;
  if (ttl <= 1) return false;
  const proto = buf[offset + 9] as number;
  const oldWord = (ttl << 8) | proto;
  const newWord = ((ttl - 1) << 8) | proto;
  const csum = ((buf[offset + 10] as number) << 8) | (buf[offset + 11] as number);
  const next = checksumUpdate16(csum, oldWord, newWord);
  buf[offset + 8] = ttl - 1;
  buf[offset + 10] = next >>> 8;
  buf[offset + 11] = next & 0xff;
  return true;
}

/** True when the fragment offset is 0 (an unfragmented packet or the first fragment). */
export function ipv4IsFirstFragment(buf: Uint8Array, offset: number): boolean {
  return ((((buf[offset + 6] as number) << 8) | (buf[offset + 7] as number)) & 0x1fff) === 0;
}

/**
 * Writes a 20-byte header (no options, DF clear) with a correct checksum.
 */
export function ipv4WriteHeader(
  buf: Uint8Array,
  offset: number,
  totalLength: number,
  protocol: number,
  ttl: number,
  src: number,
  dst: number,
  id = 0,
): void {
  buf[offset] = 0x45;
  buf[offset + 1] = 0;
  buf[offset + 2] = totalLength >>> 8;
  buf[offset + 3] = totalLength & 0xff;
  buf[offset + 4] = (id >>> 8) & 0xff;
  buf[offset + 5] = id & 0xff;
  buf[offset + 6] = 0;
  buf[offset + 7] = 0;
  buf[offset + 8] = ttl;
  buf[offset + 9] = protocol;
  buf[offset + 10] = 0;
  buf[offset + 11] = 0;
  writeU32(buf, offset + 12, src);
  writeU32(buf, offset + 16, dst);
  const c = internetChecksum(buf, offset, IPV4_MIN_HEADER);
  buf[offset + 10] = c >>> 8;
  buf[offset + 11] = c & 0xff;
}
