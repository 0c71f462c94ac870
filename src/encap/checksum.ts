/**
 * The Internet checksum (RFC 1071) over arena ranges, and the RFC 1624 incremental update
 * used when one 16-bit word of a header changes (TTL decrement) so the whole header need
 * not be summed again. Pure functions on numbers; nothing allocates.
 */

/**
 * Adds the bytes [offset, offset + length) as big-endian 16-bit words to `sum` (an odd
 * trailing byte is padded with zero). Returns the unfolded sum; fold with `foldSum`.
 */
export function onesSum(buf: Uint8Array, offset: number, length: number, sum = 0): number {
  let s = sum;
  const end = offset + (length & ~1);
  let i = offset;
  for (; i < end; i += 2) {
    s += ((buf[i] as number) << 8) | (buf[i + 1] as number);
    // Fold now and then so the sum stays a small integer (never loses precision).
    if (s > 0x3fffffff) s = (s & 0xffff) + (s >>> 16);
  }
  if (length & 1) s += (buf[i] as number) << 8;
  return s;
}

/** Folds carries into 16 bits (the ones-complement sum, not yet complemented). */
export function foldSum(sum: number): number {
  let s = sum;
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}

/** The checksum field value for the range: ~fold(sum). A range that embeds its checksum verifies to 0. */
export function internetChecksum(buf: Uint8Array, offset: number, length: number, initial = 0): number {
  return ~foldSum(onesSum(buf, offset, length, initial)) & 0xffff;
}

/**
 * RFC 1624 eqn. 3: the new checksum after one 16-bit word changes from `oldWord` to
 * `newWord`: HC' = ~(~HC + ~m + m').
 */
export function checksumUpdate16(checksum: number, oldWord: number, newWord: number): number {
  const s = (~checksum & 0xffff) + (~oldWord & 0xffff) + (newWord & 0xffff);
  return ~foldSum(s) & 0xffff;
}
