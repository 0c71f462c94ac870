/**
 * The data-path fuzz run: 10^6 random, truncated, oversized and adversarial inputs through
 * both directions of a Forwarder on in-memory twins, interleaved with valid packets.
 *
 * Why: the forwarder's contract is "never throw, count every drop, deliver what is valid",
 * and the unit fuzz test (test/dataplane/fuzz.test.ts) can only afford ~10^3 cases. Here a
 * seeded generator (reproducible with --seed) builds each input together with what must
 * happen to it: sent to a given peer with known bytes, delivered with known bytes, dropped
 * for a given reason (with or without an ICMP reply), refused as oversize by the TUN, or,
 * for pure garbage, "anything, as long as it is counted once". Inputs go in rounds: a
 * burst into the TUN (MemoryTun.inject + Forwarder.onTunReadable), then a burst of
 * datagrams from known and unknown senders (MemoryNetwork.inject + onConnReadable). After
 * each burst the counter deltas must add up exactly, each drop reason must be at least what
 * the known-outcome inputs demand, and every valid packet must come out byte-exact, in
 * order. On failure the round is replayed one input at a time on a fresh forwarder to name
 * the culprit, printed in hex with the seed; the exit code is 1.
 *
 *   node --import tsx bench/fuzz.ts [--cases 1000000] [--seed S] [--encap udp|vxlan|both]
 */
import { parseArgs } from 'node:util';
import { MemoryNetwork } from '../src/conn/memory-conn.ts';
import type { MemoryConn } from '../src/conn/memory-conn.ts';
import { DROP_REASON_COUNT, DROP_REASON_NAMES, DropReason } from '../src/encap/drop-reason.ts';
import { createEncap } from '../src/encap/encap.ts';
import { Forwarder } from '../src/dataplane/forwarder.ts';
import type { Peer } from '../src/dataplane/peer.ts';
import { Counter } from '../src/dataplane/stats.ts';
import { cidrToKey, parseCidr, prefixMask } from '../src/routing/ipv4.ts';
import type { Ipv4Cidr } from '../src/routing/ipv4.ts';
import { PacketBatch } from '../src/tun/batch.ts';
import { MemoryTun } from '../src/tun/memory-tun.ts';
import { buildIpv4, ip, refChecksum } from '../test/encap/packets.ts';

type Kind = 'udp' | 'vxlan';

// --- seeded generator (xorshift128, 32-bit) ---

class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;
  constructor(seed: number) {
    // splitmix32 to spread the seed over the state (never all zero).
    let s = seed >>> 0;
    const next = (): number => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = next();
    this.b = next();
    this.c = next();
    this.d = next() | 1;
  }
  u32(): number {
    let t = this.d;
    const s = this.a;
    this.d = this.c;
    this.c = this.b;
    this.b = s;
    t ^= t << 11;
    t ^= t >>> 8;
    this.a = (t ^ s ^ (s >>> 19)) >>> 0;
    return this.a;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.u32() / 0x100000000) * n);
  }
  /** Integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.u32() / 0x100000000 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)] as T;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    let i = 0;
    for (; i + 4 <= n; i += 4) b.writeUInt32LE(this.u32(), i);
    for (; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

// --- what must happen to an input ---

type Expect =
  /** Sent on the socket to sink `sink`, exactly these bytes. */
  | { readonly t: 'sent'; readonly sink: number; readonly out: Buffer }
  /** Written to the TUN, exactly these bytes. */
  | { readonly t: 'delivered'; readonly out: Buffer }
  /** Counted under `reason`; `icmp`: a net-unreachable reply goes back into the TUN. */
  | { readonly t: 'drop'; readonly reason: DropReason; readonly icmp?: boolean }
  /** Larger than the TUN MTU: the device never hands it to the forwarder. */
  | { readonly t: 'oversize' }
  /** A NAT keepalive from a known peer: counted as keepaliveReceived, neither delivered nor a drop. */
  | { readonly t: 'keepalive' }
  /** Garbage: any outcome, counted exactly once. */
  | { readonly t: 'any' };

interface Case {
  readonly label: string;
  readonly bytes: Buffer;
  readonly expect: Expect;
  /** Socket side only: the outer sender. */
  readonly from?: { readonly addr: number; readonly port: number };
}

// --- the rig: the forwarder under test, its twins, and sinks standing in for the peers ---

const VNI = 7;
const LOCAL = parseCidr('10.244.1.0/24');
const LOCAL_IP = ip('198.18.0.1');
const LOCAL_MAC = Buffer.from([2, 0, 0, 0, 0, 1]);
/** Outside every subnet the rig knows (for spoofed sources, foreign destinations, no route). */
const FOREIGN: readonly Ipv4Cidr[] = [
  parseCidr('192.0.2.0/24'),
  parseCidr('10.246.0.0/16'),
  parseCidr('172.16.0.0/12'),
  parseCidr('10.244.200.0/24'),
];

interface PeerSpec {
  readonly subnet: Ipv4Cidr;
  readonly publicIp: number;
  /** 0: the forwarder's port. */
  readonly port: number;
  readonly mac: Buffer | undefined;
}
const PEERS: readonly PeerSpec[] = [
  {
    subnet: parseCidr('10.244.2.0/24'),
    publicIp: ip('198.18.0.2'),
    port: 0,
    mac: Buffer.from([2, 0, 0, 0, 0, 2]),
  },
  {
    subnet: parseCidr('10.244.3.0/24'),
    publicIp: ip('198.18.0.3'),
    port: 9000,
    mac: Buffer.from([2, 0, 0, 0, 0, 3]),
  },
  // A wider lease and, for vxlan, a peer whose VTEP MAC is not known yet (noPeerMac).
  { subnet: parseCidr('10.245.0.0/16'), publicIp: ip('198.18.0.4'), port: 0, mac: undefined },
];

function portFor(kind: Kind): number {
  return kind === 'udp' ? 8285 : 8472;
}
function mtuFor(kind: Kind): number {
  return kind === 'udp' ? 1472 : 1450;
}

class Rig {
  readonly kind: Kind;
  readonly port: number;
  readonly mtu: number;
  readonly net = new MemoryNetwork();
  readonly tun: MemoryTun;
  readonly conn: MemoryConn;
  readonly fwd: Forwarder;
  readonly sinks: MemoryConn[];
  readonly sinkBatch = PacketBatch.forReceive(4);
  /** Set by the phase runner: what onWrite checks the TUN writes against. */
  phase: 'tun' | 'conn' = 'tun';
  writes = 0;
  icmpBad: string | undefined;
  deliveredExpect: Buffer[] = [];
  deliveredCursor = 0;
  /**
   * Whether this Forwarder recognises NAT keepalives (the keepaliveReceived counter in its
   * snapshot); if so, the keepalive datagram from a known peer is its own outcome.
   */
  readonly keepalives: boolean;
  readonly keepaliveBytes: Buffer;

  constructor(kind: Kind) {
    this.kind = kind;
    this.port = portFor(kind);
    this.mtu = mtuFor(kind);
    this.tun = new MemoryTun({ name: `fuzz-${kind}`, mtu: this.mtu, onWrite: (p) => this.onWrite(p) });
    this.conn = this.net.bind(LOCAL_IP, this.port);
    const encap =
      kind === 'udp'
        ? createEncap({ type: 'udp' })
        : createEncap({ type: 'vxlan', vni: VNI, localMac: LOCAL_MAC });
    // Small batches and few batches per turn, so batch boundaries and the fairness
    // continuation are crossed all the time.
    this.fwd = new Forwarder({
      tun: this.tun,
      conn: this.conn,
      encap,
      local: { subnet: LOCAL, tunAddr: LOCAL.addr, vtepMac: LOCAL_MAC },
      port: this.port,
      tunBatchSize: 32,
      recvMessages: 1,
      maxBatchesPerTurn: 3,
    });
    const peers: Peer[] = PEERS.map((p, id) => ({
      id,
      subnet: p.subnet,
      publicIp: p.publicIp,
      port: p.port,
      vtepMac: kind === 'vxlan' ? p.mac : undefined,
      leaseKey: cidrToKey(p.subnet),
    }));
    this.fwd.setPeers(peers);
    this.sinks = PEERS.map((p) => this.net.bind(p.publicIp, p.port || this.port));
    this.fwd.start();
    this.keepalives = 'keepaliveReceived' in this.fwd.snapshot().counters;
    // As the forwarder documents them: udp "\0WKA", vxlan a bare VXLAN header with our VNI.
    this.keepaliveBytes =
      kind === 'udp' ? Buffer.from('00574b41', 'hex') : Buffer.from([0x08, 0, 0, 0, 0, 0, VNI, 0]);
  }

  /** Keepalives received so far (0 when the forwarder has no such counter). */
  keepalivesReceived(): number {
    return this.keepalives ? (this.fwd.snapshot().counters.keepaliveReceived ?? 0) : 0;
  }

  /** True when a datagram from `from` passes the forwarder's known-peer check. */
  fromKnownPeer(from: { addr: number; port: number }): boolean {
    return PEERS.some(
      (p) => p.publicIp === from.addr && (this.kind === 'vxlan' || (p.port || this.port) === from.port),
    );
  }

  private onWrite(p: Buffer): void {
    this.writes++;
    if (this.phase === 'tun') {
      // Only ICMP net-unreachable replies may come back during a TUN burst.
      if (this.icmpBad === undefined) this.icmpBad = checkIcmpReply(p);
      return;
    }
    const want = this.deliveredExpect[this.deliveredCursor];
    if (want !== undefined && want.equals(p)) this.deliveredCursor++;
  }

  close(): void {
    this.fwd.stop();
    this.tun.close();
    this.conn.close();
    for (const s of this.sinks) s.close();
  }
}

function checkIcmpReply(p: Buffer): string | undefined {
  if (p.length < 28 + 20 || p[0] !== 0x45 || p[9] !== 1)
    return `TUN write during a TUN burst is not ICMP: ${hex(p)}`;
  if (refChecksum(p.subarray(0, 20)) !== 0) return `ICMP reply with a bad IP checksum: ${hex(p)}`;
  if (p.readUInt16BE(2) !== p.length) return `ICMP reply length ${p.readUInt16BE(2)} != ${p.length}`;
  if (p.readUInt32BE(12) !== LOCAL.addr) return `ICMP reply not from the TUN address: ${hex(p)}`;
  if (p[20] !== 3 || p[21] !== 0) return `ICMP reply is not net unreachable: ${hex(p)}`;
  if (refChecksum(p.subarray(20)) !== 0) return `ICMP reply with a bad ICMP checksum: ${hex(p)}`;
  // The quoted header's source is where the reply goes.
  if (p.readUInt32BE(16) !== p.readUInt32BE(28 + 12)) return `ICMP reply to the wrong host: ${hex(p)}`;
  return undefined;
}

function hex(b: Uint8Array, max = 256): string {
  const h = Buffer.from(b.buffer, b.byteOffset, Math.min(b.length, max)).toString('hex');
  return b.length > max ? `${h}... (${b.length} bytes)` : h;
}

// --- packet builders (own generator; test/encap/packets.ts builds the headers) ---

function addrIn(rng: Rng, c: Ipv4Cidr): number {
  const host = c.prefix >= 32 ? 0 : rng.u32() & ~prefixMask(c.prefix);
  return ((c.addr & prefixMask(c.prefix)) | host) >>> 0;
}

interface Inner {
  src: number;
  dst: number;
  ttl: number;
  maxLen: number;
}

/** A valid IPv4 packet of at most maxLen bytes, with random options, fragment bits and protocol. */
function validPacket(rng: Rng, s: Inner): Buffer {
  const optLen = rng.chance(0.2) ? 4 * rng.range(1, 10) : 0;
  const payloadLen = rng.chance(0.1) ? 0 : rng.range(0, Math.max(0, s.maxLen - 20 - optLen));
  return buildIpv4({
    src: s.src,
    dst: s.dst,
    ttl: s.ttl,
    protocol: rng.pick([6, 17, 17, 47, 50, rng.int(256)]),
    payload: rng.bytes(payloadLen),
    options: optLen > 0 ? rng.bytes(optLen) : undefined,
    id: rng.int(0x10000),
    fragOffset: rng.chance(0.1) ? rng.int(0x2000) : 0,
    moreFragments: rng.chance(0.1),
  });
}

/** What a router makes of a valid packet: trimmed to its total length, TTL - 1, checksum fixed. */
function forwarded(p: Buffer): Buffer {
  const total = p.readUInt16BE(2);
  const out = Buffer.from(p.subarray(0, total));
  const hlen = ((out[0] as number) & 0x0f) * 4;
  out[8] = (out[8] as number) - 1;
  out.writeUInt16BE(0, 10);
  out.writeUInt16BE(refChecksum(out.subarray(0, hlen)), 10);
  return out;
}

function vxlanHeader(
  vni: number,
  dstMac: Uint8Array,
  srcMac: Uint8Array,
  etherType = 0x0800,
  flags = 0x08,
): Buffer {
  const h = Buffer.alloc(22);
  h[0] = flags;
  h.writeUIntBE(vni, 4, 3);
  h.set(dstMac, 8);
  h.set(srcMac, 14);
  h.writeUInt16BE(etherType, 20);
  return h;
}

/** Re-seals a header after a deliberate edit (so only the edit is wrong). */
function reseal(p: Buffer): void {
  const hlen = ((p[0] as number) & 0x0f) * 4;
  if (hlen < 20 || hlen > p.length) return;
  p.writeUInt16BE(0, 10);
  p.writeUInt16BE(refChecksum(p.subarray(0, hlen)), 10);
}

/**
 * A broken IPv4 packet (from a valid one) and the reason the forwarder must give, or
 * undefined for "drop of some kind" is not precise enough and the caller should use 'any'.
 */
function brokenPacket(rng: Rng, s: Inner): { label: string; bytes: Buffer; reason: DropReason } {
  const p = validPacket(rng, s);
  const hlen = ((p[0] as number) & 0x0f) * 4;
  switch (rng.int(9)) {
    case 0: {
      // Bad header checksum: flip bits in the checksum field until it no longer verifies.
      do p.writeUInt16BE(p.readUInt16BE(10) ^ rng.range(1, 0xffff), 10);
      while (refChecksum(p.subarray(0, hlen)) === 0);
      return { label: 'bad checksum', bytes: p, reason: DropReason.malformed };
    }
    case 1: {
      // A header field changed after the checksum was computed.
      const at = rng.pick([1, 4, 5, 8, 9, 12, 13, 16, 17, 19]);
      p[at] = (p[at] as number) ^ rng.range(1, 255);
      if (refChecksum(p.subarray(0, hlen)) === 0) p[10] = (p[10] as number) ^ 0x01;
      return { label: 'header edited after checksum', bytes: p, reason: DropReason.malformed };
    }
    case 2:
      // IHL below 5.
      p[0] = 0x40 | rng.int(5);
      return { label: 'IHL < 5', bytes: p, reason: DropReason.malformed };
    case 3: {
      // IHL claims more header than there is data.
      const ihl = rng.range(6, 15);
      p[0] = 0x40 | ihl;
      const cut = rng.range(1, ihl * 4 - 1);
      return {
        label: 'IHL beyond data',
        bytes: Buffer.from(p.subarray(0, Math.min(cut, p.length))),
        reason: DropReason.malformed,
      };
    }
    case 4: {
      // Total length larger than the data (the header is resealed: only the length lies).
      p.writeUInt16BE(rng.range(p.length + 1, 0xffff), 2);
      reseal(p);
      return { label: 'total length > data', bytes: p, reason: DropReason.malformed };
    }
    case 5: {
      p.writeUInt16BE(rng.int(hlen), 2);
      reseal(p);
      return { label: 'total length < header', bytes: p, reason: DropReason.malformed };
    }
    case 6: {
      // Truncated in the middle of the header (but not to nothing).
      const cut = rng.range(1, Math.min(hlen, p.length) - 1);
      return {
        label: 'truncated header',
        bytes: Buffer.from(p.subarray(0, cut)),
        reason: DropReason.malformed,
      };
    }
    case 7: {
      // Any other IP version.
      const v = rng.pick([0, 1, 2, 3, 5, 6, 6, 6, 7, 8, 15]);
      p[0] = (v << 4) | ((p[0] as number) & 0x0f);
      return { label: `version ${v}`, bytes: p, reason: DropReason.notIpv4 };
    }
    default: {
      // A real-looking IPv6 packet.
      const payload = rng.range(0, Math.max(0, s.maxLen - 40));
      const v6 = Buffer.concat([Buffer.alloc(40), rng.bytes(payload)]);
      v6[0] = 0x60;
      v6.writeUInt16BE(payload, 4);
      v6[6] = rng.pick([6, 17, 58, 59]);
      v6[7] = 64;
      rng.bytes(32).copy(v6, 8);
      return { label: 'IPv6', bytes: v6, reason: DropReason.notIpv4 };
    }
  }
}

// --- the TUN side: packets pods send ---

function tunCase(rng: Rng, rig: Rig): Case {
  const kind = rig.kind;
  const mtu = rig.mtu;
  const src = addrIn(rng, LOCAL);
  const r = rng.int(100);
  if (r < 40) {
    const peer = rng.int(PEERS.length);
    const spec = PEERS[peer] as PeerSpec;
    const p = validPacket(rng, { src, dst: addrIn(rng, spec.subnet), ttl: rng.range(2, 255), maxLen: mtu });
    let bytes = p;
    if (rng.chance(0.1) && p.length < mtu)
      bytes = Buffer.concat([p, rng.bytes(rng.range(1, mtu - p.length))]);
    if (kind === 'vxlan' && spec.mac === undefined) {
      return {
        label: 'valid, peer without VTEP MAC',
        bytes,
        expect: { t: 'drop', reason: DropReason.noPeerMac },
      };
    }
    const inner = forwarded(p);
    const out =
      kind === 'udp' ? inner : Buffer.concat([vxlanHeader(VNI, spec.mac as Buffer, LOCAL_MAC), inner]);
    return { label: bytes === p ? 'valid' : 'valid, padded', bytes, expect: { t: 'sent', sink: peer, out } };
  }
  if (r < 46) {
    const spec = rng.pick(PEERS);
    const ttl = rng.int(2);
    return {
      label: `TTL ${ttl}`,
      bytes: validPacket(rng, { src, dst: addrIn(rng, spec.subnet), ttl, maxLen: mtu }),
      expect: { t: 'drop', reason: DropReason.ttlExpired },
    };
  }
  if (r < 56) {
    // No route: foreign, our own subnet, multicast, broadcast.
    const dst = rng.chance(0.8)
      ? addrIn(rng, rng.pick([...FOREIGN, LOCAL]))
      : rng.pick([0xffffffff, 0xe0000001, (0xe0000000 | rng.int(0x10000000)) >>> 0, 0]);
    const p = validPacket(rng, { src, dst, ttl: rng.range(2, 255), maxLen: mtu });
    const icmp = p[9] !== 1 && (p.readUInt16BE(6) & 0x1fff) === 0 && dst !== 0 && dst >>> 28 < 0xe;
    return { label: 'no route', bytes: p, expect: { t: 'drop', reason: DropReason.noRoute, icmp } };
  }
  if (r < 80) {
    const b = brokenPacket(rng, {
      src,
      dst: addrIn(rng, rng.pick(PEERS).subnet),
      ttl: rng.range(0, 255),
      maxLen: mtu,
    });
    return { label: b.label, bytes: b.bytes, expect: { t: 'drop', reason: b.reason } };
  }
  if (r < 82) {
    return { label: 'empty', bytes: Buffer.alloc(0), expect: { t: 'drop', reason: DropReason.malformed } };
  }
  if (r < 85) {
    return { label: 'oversize', bytes: rng.bytes(rng.range(mtu + 1, mtu + 3000)), expect: { t: 'oversize' } };
  }
  // Garbage: random bytes, half of them dressed up as an IPv4 header with a valid checksum.
  const g = rng.bytes(rng.range(1, mtu));
  if (rng.chance(0.5) && g.length >= 20) {
    g[0] = 0x45;
    g.writeUInt16BE(g.length, 2);
    reseal(g);
  }
  return { label: 'garbage', bytes: g, expect: { t: 'any' } };
}

// --- the socket side: datagrams from peers and strangers ---

function connCase(rng: Rng, rig: Rig): Case {
  const kind = rig.kind;
  const mtu = rig.mtu;
  const peerIdx = rng.int(PEERS.length);
  const peer = PEERS[peerIdx] as PeerSpec;
  const peerPort = peer.port || rig.port;
  // vxlan: the kernel varies the source port per flow, so any port is fine.
  const from = {
    addr: peer.publicIp,
    port: kind === 'vxlan' && rng.chance(0.5) ? rng.range(1024, 65535) : peerPort,
  };
  const wrap = (inner: Buffer, dstMac: Uint8Array = LOCAL_MAC): Buffer =>
    kind === 'udp' ? inner : Buffer.concat([vxlanHeader(VNI, dstMac, peer.mac ?? rng.bytes(6)), inner]);
  const goodSrc = (): number => (rng.chance(0.05) ? peer.publicIp : addrIn(rng, peer.subnet));
  const r = rng.int(100);
  if (r < 40) {
    const p = validPacket(rng, {
      src: goodSrc(),
      dst: addrIn(rng, LOCAL),
      ttl: rng.range(2, 255),
      maxLen: mtu,
    });
    let inner = p;
    if (rng.chance(0.1) && p.length < mtu)
      inner = Buffer.concat([p, rng.bytes(rng.range(1, mtu - p.length))]);
    const bytes = wrap(inner);
    let label = inner === p ? 'valid' : 'valid, padded';
    if (kind === 'vxlan' && rng.chance(0.1)) {
      // Reserved bits set: ignored on receipt (RFC 7348 section 5).
      bytes[0] = 0x08 | (rng.u32() & 0xf7);
      bytes[1] = rng.int(256);
      bytes[7] = rng.int(256);
      label += ', reserved bits';
    }
    return { label, bytes, from, expect: { t: 'delivered', out: forwarded(p) } };
  }
  const inner = (): Buffer =>
    validPacket(rng, { src: goodSrc(), dst: addrIn(rng, LOCAL), ttl: rng.range(2, 255), maxLen: mtu });
  if (r < 48) {
    // Strangers: an unknown address, or (udp, where the port is fixed) a known one on the wrong port.
    const stranger =
      kind === 'vxlan' || rng.chance(0.5)
        ? { addr: (0xcb007100 | rng.int(256)) >>> 0, port: rng.chance(0.5) ? rig.port : rng.range(1, 65535) }
        : { addr: peer.publicIp, port: (peerPort + rng.range(1, 1000)) & 0xffff || 1 };
    const bytes = rng.chance(0.5) ? wrap(inner()) : rng.bytes(rng.range(0, 1500));
    return {
      label: 'unknown sender',
      bytes,
      from: stranger,
      expect: { t: 'drop', reason: DropReason.unknownPeer },
    };
  }
  if (r < 58 && kind === 'vxlan') {
    const v = rng.int(5);
    if (v === 0) {
      const full = wrap(inner());
      return {
        label: 'truncated vxlan',
        bytes: Buffer.from(full.subarray(0, rng.range(0, 22))),
        from,
        expect: { t: 'drop', reason: DropReason.truncated },
      };
    }
    if (v === 1) {
      const b = wrap(inner());
      b[0] = rng.int(256) & ~0x08;
      return { label: 'no I flag', bytes: b, from, expect: { t: 'drop', reason: DropReason.badVxlanFlags } };
    }
    if (v === 2) {
      const b = wrap(inner());
      b.writeUIntBE((VNI + rng.range(1, 0xfffffe)) % 0x1000000, 4, 3);
      return { label: 'wrong VNI', bytes: b, from, expect: { t: 'drop', reason: DropReason.wrongVni } };
    }
    if (v === 3) {
      const mac = rng.pick([
        Buffer.from('ffffffffffff', 'hex'),
        Buffer.from('01005e000001', 'hex'),
        Buffer.from([2, 0, 0, 0, 0, 2]),
        rng.bytes(6),
      ]);
      if (mac.equals(LOCAL_MAC)) mac[5] = (mac[5] as number) ^ 0xff;
      return {
        label: 'wrong MAC',
        bytes: wrap(inner(), mac),
        from,
        expect: { t: 'drop', reason: DropReason.wrongMac },
      };
    }
    const type = rng.pick([0x0806, 0x86dd, 0x8100, 0x88a8, rng.int(0x10000)]);
    const b = wrap(inner());
    b.writeUInt16BE(type === 0x0800 ? 0x0806 : type, 20);
    return {
      label: 'wrong EtherType',
      bytes: b,
      from,
      expect: { t: 'drop', reason: DropReason.wrongEtherType },
    };
  }
  if (r < 60 && kind === 'vxlan') {
    return {
      label: 'empty inner',
      bytes: wrap(Buffer.alloc(0)),
      from,
      expect: { t: 'drop', reason: DropReason.truncated },
    };
  }
  if (r < 58) {
    return {
      label: 'empty datagram',
      bytes: Buffer.alloc(0),
      from,
      expect: { t: 'drop', reason: DropReason.truncated },
    };
  }
  if (r < 74) {
    const b = brokenPacket(rng, {
      src: goodSrc(),
      dst: addrIn(rng, LOCAL),
      ttl: rng.range(0, 255),
      maxLen: mtu,
    });
    return { label: `inner ${b.label}`, bytes: wrap(b.bytes), from, expect: { t: 'drop', reason: b.reason } };
  }
  if (r < 79) {
    let src = addrIn(
      rng,
      rng.pick([...FOREIGN, LOCAL, ...PEERS.filter((_, i) => i !== peerIdx).map((p) => p.subnet)]),
    );
    if (src === peer.publicIp) src ^= 1;
    const p = validPacket(rng, { src, dst: addrIn(rng, LOCAL), ttl: rng.range(0, 255), maxLen: mtu });
    return {
      label: 'spoofed source',
      bytes: wrap(p),
      from,
      expect: { t: 'drop', reason: DropReason.spoofedSource },
    };
  }
  if (r < 84) {
    const dst = addrIn(rng, rng.pick([...FOREIGN, ...PEERS.map((p) => p.subnet)]));
    const p = validPacket(rng, { src: goodSrc(), dst, ttl: rng.range(0, 255), maxLen: mtu });
    return { label: 'not for us', bytes: wrap(p), from, expect: { t: 'drop', reason: DropReason.notForUs } };
  }
  if (r < 88) {
    const p = validPacket(rng, { src: goodSrc(), dst: addrIn(rng, LOCAL), ttl: rng.int(2), maxLen: mtu });
    return {
      label: 'inner TTL 0/1',
      bytes: wrap(p),
      from,
      expect: { t: 'drop', reason: DropReason.ttlExpired },
    };
  }
  if (r < 89) {
    // The NAT keepalive datagram (see fixKeepalive for what must happen to it).
    return {
      label: 'keepalive',
      bytes: Buffer.from(rig.keepaliveBytes),
      from,
      expect: { t: 'drop', reason: kind === 'udp' ? DropReason.notIpv4 : DropReason.truncated },
    };
  }
  if (r < 90) {
    // Oversized: a datagram far beyond the TUN MTU (up to the largest UDP payload).
    const p = validPacket(rng, { src: goodSrc(), dst: addrIn(rng, LOCAL), ttl: 64, maxLen: 65507 - 22 });
    return { label: 'oversized datagram', bytes: wrap(p), from, expect: { t: 'any' } };
  }
  // Garbage from a known peer (udp: raw; vxlan: half behind a valid header).
  const g = rng.bytes(rng.range(0, 2000));
  if (g.length >= 20 && rng.chance(0.5)) {
    g[0] = 0x45;
    g.writeUInt16BE(g.length, 2);
    reseal(g);
  }
  const bytes = kind === 'vxlan' && rng.chance(0.5) ? wrap(g) : g;
  return { label: 'garbage', bytes, from, expect: { t: 'any' } };
}

/**
 * A datagram that is exactly the keepalive, from a known peer, is a keepalive when the
 * forwarder knows them (whatever generator made it); otherwise it stays what it looks like.
 */
function fixKeepalive(rig: Rig, c: Case): Case {
  if (!rig.keepalives || c.from === undefined || !rig.fromKnownPeer(c.from)) return c;
  if (!c.bytes.equals(rig.keepaliveBytes)) return c;
  return { ...c, expect: { t: 'keepalive' } };
}

// --- running a burst and checking the books ---

function snapshotCounters(rig: Rig): { c: Float64Array; d: Float64Array } {
  return { c: Float64Array.from(rig.fwd.stats.counters), d: Float64Array.from(rig.fwd.stats.drops) };
}

interface Tally {
  exact: Float64Array;
  any: number;
  sent: number;
  delivered: number;
  icmp: number;
  oversize: number;
  keepalive: number;
}

function tally(cases: readonly Case[]): Tally {
  const t: Tally = {
    exact: new Float64Array(DROP_REASON_COUNT),
    any: 0,
    sent: 0,
    delivered: 0,
    icmp: 0,
    oversize: 0,
    keepalive: 0,
  };
  for (const c of cases) {
    const e = c.expect;
    if (e.t === 'drop') {
      (t.exact[e.reason] as number)++;
      if (e.icmp === true) t.icmp++;
    } else if (e.t === 'any') t.any++;
    else if (e.t === 'sent') t.sent++;
    else if (e.t === 'delivered') t.delivered++;
    else if (e.t === 'keepalive') t.keepalive++;
    else t.oversize++;
  }
  return t;
}

/** Checks drop deltas against the known-outcome inputs; returns the drops beyond them. */
function checkDrops(dd: Float64Array, t: Tally, problems: string[]): number {
  let extra = 0;
  for (let r = 0; r < DROP_REASON_COUNT; r++) {
    const got = dd[r] as number;
    const want = t.exact[r] as number;
    if (got < want) problems.push(`drops[${DROP_REASON_NAMES[r]}] = ${got}, at least ${want} expected`);
    extra += got - want;
  }
  return extra;
}

/** Feeds a burst into the TUN; returns what is wrong (empty when all is well). */
function tunBurst(rig: Rig, cases: readonly Case[], totals: Float64Array): string[] {
  const problems: string[] = [];
  const before = snapshotCounters(rig);
  const oversize0 = rig.tun.oversize;
  const ka0 = rig.keepalivesReceived();
  rig.phase = 'tun';
  rig.writes = 0;
  rig.icmpBad = undefined;
  for (const c of cases) rig.tun.inject(c.bytes);
  try {
    for (let guard = 0; rig.tun.pending > 0; guard++) {
      if (guard > 10_000) throw new Error('the forwarder stopped reading the TUN');
      rig.fwd.onTunReadable();
    }
  } catch (err) {
    problems.push(`exception escaped onTunReadable: ${(err as Error).stack ?? String(err)}`);
    return problems;
  }
  const after = snapshotCounters(rig);
  const dc = (k: number): number => (after.c[k] as number) - (before.c[k] as number);
  const dd = after.d.map((v, i) => v - (before.d[i] as number));
  for (let i = 0; i < DROP_REASON_COUNT; i++) (totals[i] as number) += dd[i] as number;
  const t = tally(cases);
  const oversize = rig.tun.oversize - oversize0;
  const read = dc(Counter.tunReadPackets);
  const sent = dc(Counter.sendPackets);
  const icmp = dc(Counter.icmpUnreachableSent);
  const dropped = dd.reduce((a, b) => a + b, 0);
  if (oversize !== t.oversize)
    problems.push(`TUN refused ${oversize} oversize packets, ${t.oversize} expected`);
  if (read !== cases.length - oversize)
    problems.push(`read ${read} packets of ${cases.length - oversize} injected`);
  if (read !== sent + dropped) problems.push(`read ${read} != sent ${sent} + dropped ${dropped}`);
  const extra = checkDrops(dd, t, problems);
  if (sent < t.sent) problems.push(`sent ${sent}, at least ${t.sent} valid packets expected`);
  if (extra + (sent - t.sent) !== t.any) {
    problems.push(`outcomes beyond the known ones: ${extra + sent - t.sent}, but ${t.any} garbage inputs`);
  }
  if (dc(Counter.recvPackets) !== 0 || rig.keepalivesReceived() !== ka0) {
    problems.push('socket counters moved during a TUN burst');
  }
  if (icmp !== rig.writes || dc(Counter.tunWritePackets) !== icmp) {
    problems.push(`ICMP counter ${icmp}, TUN writes ${rig.writes}/${dc(Counter.tunWritePackets)}`);
  }
  if (icmp < t.icmp || icmp > t.icmp + t.any)
    problems.push(`ICMP replies ${icmp}, expected ${t.icmp} (+ garbage)`);
  if (rig.icmpBad !== undefined) problems.push(rig.icmpBad);
  // What reached the peers: the valid packets, byte-exact and in order, among whatever else.
  let drained = 0;
  const sb = rig.sinkBatch;
  rig.sinks.forEach((sink, i) => {
    const want = cases
      .filter((c) => c.expect.t === 'sent' && c.expect.sink === i)
      .map((c) => (c.expect as { out: Buffer }).out);
    let k = 0;
    while (sink.pending > 0) {
      const n = sink.recv(sb);
      drained += n;
      for (let j = 0; j < n; j++) {
        const w = want[k];
        if (w !== undefined && w.equals(sb.view(j))) k++;
      }
    }
    if (k !== want.length) {
      const missing = want[k] as Buffer;
      problems.push(
        `peer ${i}: valid packet ${k + 1} of ${want.length} not sent intact; expected ${hex(missing)}`,
      );
    }
  });
  if (drained !== sent) problems.push(`peers received ${drained} datagrams, send counter says ${sent}`);
  return problems;
}

/** Feeds a burst of datagrams into the socket; returns what is wrong. */
function connBurst(rig: Rig, cases: readonly Case[], totals: Float64Array): string[] {
  const problems: string[] = [];
  const before = snapshotCounters(rig);
  const ka0 = rig.keepalivesReceived();
  rig.phase = 'conn';
  rig.writes = 0;
  rig.deliveredExpect = cases
    .filter((c) => c.expect.t === 'delivered')
    .map((c) => (c.expect as { out: Buffer }).out);
  rig.deliveredCursor = 0;
  for (const c of cases) {
    const from = c.from as { addr: number; port: number };
    if (!rig.net.inject(c.bytes, from.addr, from.port, LOCAL_IP, rig.port)) problems.push('injection failed');
  }
  try {
    for (let guard = 0; rig.conn.pending > 0; guard++) {
      if (guard > 10_000) throw new Error('the forwarder stopped reading the socket');
      rig.fwd.onConnReadable();
    }
  } catch (err) {
    problems.push(`exception escaped onConnReadable: ${(err as Error).stack ?? String(err)}`);
    return problems;
  }
  const after = snapshotCounters(rig);
  const dc = (k: number): number => (after.c[k] as number) - (before.c[k] as number);
  const dd = after.d.map((v, i) => v - (before.d[i] as number));
  for (let i = 0; i < DROP_REASON_COUNT; i++) (totals[i] as number) += dd[i] as number;
  const t = tally(cases);
  const recv = dc(Counter.recvPackets);
  const delivered = dc(Counter.tunWritePackets);
  const dropped = dd.reduce((a, b) => a + b, 0);
  const ka = rig.keepalivesReceived() - ka0;
  if (recv !== cases.length) problems.push(`received ${recv} datagrams of ${cases.length} injected`);
  if (recv !== delivered + dropped + ka) {
    problems.push(`received ${recv} != delivered ${delivered} + dropped ${dropped} + keepalives ${ka}`);
  }
  if (ka < t.keepalive) problems.push(`keepalives counted ${ka}, at least ${t.keepalive} expected`);
  if (delivered !== rig.writes) problems.push(`TUN write counter ${delivered}, device saw ${rig.writes}`);
  if (dc(Counter.icmpUnreachableSent) !== 0 || dc(Counter.sendPackets) !== 0) {
    problems.push('ICMP or send counters moved during a socket burst');
  }
  const extra = checkDrops(dd, t, problems);
  if (delivered < t.delivered)
    problems.push(`delivered ${delivered}, at least ${t.delivered} valid packets expected`);
  const beyond = extra + (delivered - t.delivered) + (ka - t.keepalive);
  if (beyond !== t.any)
    problems.push(`outcomes beyond the known ones: ${beyond}, but ${t.any} garbage inputs`);
  if (rig.deliveredCursor !== rig.deliveredExpect.length) {
    const missing = rig.deliveredExpect[rig.deliveredCursor] as Buffer;
    problems.push(
      `valid packet ${rig.deliveredCursor + 1} of ${rig.deliveredExpect.length} not delivered intact; expected ${hex(missing)}`,
    );
  }
  return problems;
}

// --- main ---

interface Failure {
  readonly kind: Kind;
  readonly side: 'tun' | 'socket';
  readonly round: number;
  readonly problems: string[];
  readonly culprit?: Case;
  readonly culpritProblems?: string[];
  readonly cases: readonly Case[];
}

/** Replays a failed burst one input at a time on a fresh rig; the first input that fails alone. */
function isolate(
  kind: Kind,
  side: 'tun' | 'socket',
  cases: readonly Case[],
): { c: Case; problems: string[] } | undefined {
  const rig = new Rig(kind);
  const scratch = new Float64Array(DROP_REASON_COUNT);
  try {
    for (const c of cases) {
      const p = side === 'tun' ? tunBurst(rig, [c], scratch) : connBurst(rig, [c], scratch);
      if (p.length > 0) return { c, problems: p };
    }
  } finally {
    rig.close();
  }
  return undefined;
}

async function fuzz(
  kind: Kind,
  total: number,
  seed: number,
  fault: boolean,
): Promise<{
  totals: Float64Array;
  cases: number;
  ms: number;
  valid: number;
  keepalives: number;
  failure?: Failure;
}> {
  const rng = new Rng(seed);
  const rig = new Rig(kind);
  const totals = new Float64Array(DROP_REASON_COUNT);
  let done = 0;
  let valid = 0;
  let round = 0;
  const t0 = performance.now();
  try {
    while (done < total) {
      for (const side of ['tun', 'socket'] as const) {
        const k = Math.min(rng.range(1, 160), total - done);
        if (k <= 0) break;
        const cases: Case[] = [];
        for (let i = 0; i < k; i++) {
          cases.push(side === 'tun' ? tunCase(rng, rig) : fixKeepalive(rig, connCase(rng, rig)));
        }
        if (fault && round === 0) {
          // Self-test of the failure path: expect one byte of the first valid packet wrong.
          const v = cases.find((c) => c.expect.t === 'sent' || c.expect.t === 'delivered');
          if (v !== undefined) {
            const out = (v.expect as { out: Buffer }).out;
            out[out.length - 1] = (out[out.length - 1] as number) ^ 0xff;
          }
        }
        const problems = side === 'tun' ? tunBurst(rig, cases, totals) : connBurst(rig, cases, totals);
        done += k;
        for (const c of cases) if (c.expect.t === 'sent' || c.expect.t === 'delivered') valid++;
        if (problems.length > 0) {
          const iso = isolate(kind, side, cases);
          return {
            totals,
            cases: done,
            valid,
            keepalives: rig.keepalivesReceived(),
            ms: performance.now() - t0,
            failure: { kind, side, round, problems, culprit: iso?.c, culpritProblems: iso?.problems, cases },
          };
        }
      }
      round++;
      // Let the twins' (now idle) readiness callbacks run now and then.
      if ((round & 63) === 0) await new Promise<void>((r) => setImmediate(r));
    }
  } finally {
    rig.close();
  }
  return { totals, cases: done, valid, keepalives: rig.keepalivesReceived(), ms: performance.now() - t0 };
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      cases: { type: 'string', default: '1000000' },
      seed: { type: 'string' },
      encap: { type: 'string', default: 'both' },
      'selftest-fault': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(
      'usage: node --import tsx bench/fuzz.ts [--cases N (default 1000000)] [--seed S] [--encap udp|vxlan|both]\n' +
        '  --selftest-fault  corrupt one expected packet to show the failure report (exits 1)',
    );
    return 0;
  }
  const total = Number(values.cases);
  if (!Number.isInteger(total) || total < 1) {
    console.error(`--cases must be a positive integer, got ${values.cases}`);
    return 2;
  }
  const seed =
    values.seed !== undefined ? Number(values.seed) >>> 0 : (Date.now() ^ (process.pid << 16)) >>> 0;
  const kinds: Kind[] = values.encap === 'both' ? ['udp', 'vxlan'] : [values.encap as Kind];
  if (!kinds.every((k) => k === 'udp' || k === 'vxlan')) {
    console.error(`--encap must be udp, vxlan or both, got ${values.encap}`);
    return 2;
  }
  console.log(`# weft data-path fuzz: ${total} cases over ${kinds.join(' + ')}, seed ${seed}`);
  const grand = new Float64Array(DROP_REASON_COUNT);
  let allCases = 0;
  let allMs = 0;
  let failed = false;
  const perKind: Record<
    string,
    { cases: number; valid: number; keepalives: number; casesPerSec: number; drops: Record<string, number> }
  > = {};
  for (let i = 0; i < kinds.length; i++) {
    const kind = kinds[i] as Kind;
    const share = Math.floor(total / kinds.length) + (i < total % kinds.length ? 1 : 0);
    if (share === 0) continue;
    const r = await fuzz(kind, share, (seed + i) >>> 0, values['selftest-fault']);
    allCases += r.cases;
    allMs += r.ms;
    for (let k = 0; k < DROP_REASON_COUNT; k++) (grand[k] as number) += r.totals[k] as number;
    const drops: Record<string, number> = {};
    for (let k = 1; k < DROP_REASON_COUNT; k++) drops[DROP_REASON_NAMES[k] as string] = r.totals[k] as number;
    perKind[kind] = {
      cases: r.cases,
      valid: r.valid,
      keepalives: r.keepalives,
      casesPerSec: r.cases / (r.ms / 1000),
      drops,
    };
    console.log(
      `${kind}: ${r.cases} cases (${r.valid} valid interleaved) in ${(r.ms / 1000).toFixed(1)} s: ` +
        `${Math.round(r.cases / (r.ms / 1000))} cases/s` +
        (r.keepalives > 0 ? `; ${r.keepalives} NAT keepalives counted as such` : ''),
    );
    if (r.failure !== undefined) {
      failed = true;
      const f = r.failure;
      console.log(
        `FAIL ${kind} ${f.side} burst in round ${f.round} (seed ${seed}, ${kind} stream seed ${(seed + i) >>> 0}):`,
      );
      for (const p of f.problems) console.log(`  ${p}`);
      if (f.culprit !== undefined) {
        console.log(
          `  failing input (${f.culprit.label}, expected ${describe(f.culprit.expect)}` +
            `${f.culprit.from ? `, from ${f.culprit.from.addr >>> 0}:${f.culprit.from.port}` : ''}):`,
        );
        console.log(`  ${hex(f.culprit.bytes, 4096)}`);
        for (const p of f.culpritProblems ?? []) console.log(`    ${p}`);
      } else {
        console.log(`  no single input fails alone; the burst's ${f.cases.length} inputs:`);
        for (const c of f.cases) console.log(`  [${c.label}] ${hex(c.bytes, 128)}`);
      }
      break;
    }
  }
  console.log('drop reason        count');
  for (let k = 1; k < DROP_REASON_COUNT; k++) {
    console.log(`${(DROP_REASON_NAMES[k] as string).padEnd(18)} ${String(grand[k]).padStart(9)}`);
  }
  console.log(
    `total: ${allCases} cases in ${(allMs / 1000).toFixed(1)} s, ${Math.round(allCases / (allMs / 1000))} cases/s`,
  );
  console.log(`JSON ${JSON.stringify({ seed, cases: allCases, pass: !failed, perKind })}`);
  console.log(failed ? `FAIL (rerun with --seed ${seed})` : 'PASS');
  return failed ? 1 : 0;
}

function describe(e: Expect): string {
  switch (e.t) {
    case 'drop':
      return `drop ${DROP_REASON_NAMES[e.reason]}${e.icmp === true ? ' + ICMP' : ''}`;
    case 'sent':
      return `sent to peer ${e.sink}`;
    default:
      return e.t;
  }
}

process.exitCode = await main();
