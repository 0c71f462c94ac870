/**
 * Hand-built packets and an independent checksum for codec and forwarder tests. The
 * checksum here is written differently from src/encap/checksum.ts on purpose (DataView
 * words, modulo folding at the end) so the two check each other.
 */

/** RFC 1071 checksum, computed independently of the code under test. */
export function refChecksum(bytes: Uint8Array): number {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let sum = 0;
  for (let i = 0; i + 1 < bytes.length; i += 2) sum += dv.getUint16(i, false);
  if (bytes.length % 2 === 1) sum += (bytes[bytes.length - 1] as number) * 256;
  while (sum > 0xffff) sum = (sum % 0x10000) + Math.floor(sum / 0x10000);
  return 0xffff - sum;
}

export interface PacketSpec {
  src: number;
  dst: number;
  ttl?: number;
  protocol?: number;
  payload?: Uint8Array;
  /** Fragment offset in 8-byte units. */
  fragOffset?: number;
  moreFragments?: boolean;
  id?: number;
  /** Extra IP option bytes (multiple of 4). */
  options?: Uint8Array;
}

/** An IPv4 packet with a valid header checksum (computed with refChecksum). */
export function buildIpv4(spec: PacketSpec): Buffer {
  const payload = spec.payload ?? Buffer.from('hello weft payload');
  const options = spec.options ?? new Uint8Array(0);
  const hlen = 20 + options.length;
  const p = Buffer.alloc(hlen + payload.length);
  p[0] = 0x40 | (hlen / 4);
  p[1] = 0;
  p.writeUInt16BE(p.length, 2);
  p.writeUInt16BE(spec.id ?? 0x1234, 4);
  p.writeUInt16BE(((spec.moreFragments ? 1 : 0) << 13) | (spec.fragOffset ?? 0), 6);
  p[8] = spec.ttl ?? 64;
  p[9] = spec.protocol ?? 17;
  p.writeUInt32BE(spec.src >>> 0, 12);
  p.writeUInt32BE(spec.dst >>> 0, 16);
  p.set(options, 20);
  p.writeUInt16BE(refChecksum(p.subarray(0, hlen)), 10);
  p.set(payload, hlen);
  return p;
}

/** True when the IPv4 header checksum of `p` verifies (independent computation). */
export function headerChecksumOk(p: Uint8Array): boolean {
  const hlen = ((p[0] as number) & 0x0f) * 4;
  return refChecksum(p.subarray(0, hlen)) === 0;
}

export function ip(text: string): number {
  const parts = text.split('.').map(Number);
  return (
    (((parts[0] as number) << 24) |
      ((parts[1] as number) << 16) |
      ((parts[2] as number) << 8) |
      (parts[3] as number)) >>>
    0
  );
}
