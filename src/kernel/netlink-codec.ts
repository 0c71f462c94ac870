/**
 * rtnetlink messages as bytes: the requests NetlinkKernel sends (link, address, route and
 * neighbour dumps, one link by name or index) and the decoding of the kernel's answers into
 * plain records. Pure functions over Buffers, so every rule here is unit-tested against
 * hand-built messages (test/kernel/netlink-codec.test.ts); the native side only moves the
 * bytes (netlinkRequest in native/weft_io.c).
 *
 * Netlink headers are in the host's byte order; addresses and ports inside attributes are
 * in network order.
 */
import { endianness } from 'node:os';

export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLM_F_REQUEST = 0x1;
export const NLM_F_ACK = 0x4;
export const NLM_F_DUMP = 0x300;
/** Set on a dump's messages when the table changed while the dump ran. */
export const NLM_F_DUMP_INTR = 0x10;

export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_GETLINK = 18;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_GETADDR = 22;
export const RTM_NEWROUTE = 24;
export const RTM_DELROUTE = 25;
export const RTM_GETROUTE = 26;
export const RTM_NEWNEIGH = 28;
export const RTM_DELNEIGH = 29;
export const RTM_GETNEIGH = 30;

export const AF_UNSPEC = 0;
export const AF_INET = 2;
export const AF_BRIDGE = 7;

const IFF_UP = 0x1;
const IFLA_ADDRESS = 1;
const IFLA_IFNAME = 3;
const IFLA_MTU = 4;
const IFLA_TXQLEN = 13;
const IFLA_LINKINFO = 18;
const IFLA_EXT_MASK = 29;
const IFLA_INFO_KIND = 1;
const IFLA_INFO_DATA = 2;
const IFLA_VXLAN_ID = 1;
const IFLA_VXLAN_LINK = 3;
const IFLA_VXLAN_LOCAL = 4;
const IFLA_VXLAN_LEARNING = 7;
const IFLA_VXLAN_PORT = 15;
/** RTEXT_FILTER_SKIP_STATS: leave the (large) counters out of link answers. */
const RTEXT_FILTER_SKIP_STATS = 1 << 3;

const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;

const RTA_DST = 1;
const RTA_OIF = 4;
const RTA_GATEWAY = 5;
const RTA_MULTIPATH = 9;
const RTA_TABLE = 15;
const RTNH_F_ONLINK = 4;
export const RT_TABLE_MAIN = 254;

const NDA_DST = 1;
const NDA_LLADDR = 2;
export const NUD_NOARP = 0x40;

const HDR = 16;
const IFINFOMSG = 16;
const IFADDRMSG = 8;
const RTMSG = 12;
const NDMSG = 12;
/** NLA_F_NESTED | NLA_F_NET_BYTEORDER: flags in an attribute's type field. */
const NLA_TYPE_MASK = 0x3fff;

const LE = endianness() === 'LE';

function u16(b: Buffer, o: number): number {
  return LE ? b.readUInt16LE(o) : b.readUInt16BE(o);
}
function u32(b: Buffer, o: number): number {
  return LE ? b.readUInt32LE(o) : b.readUInt32BE(o);
}
function i32(b: Buffer, o: number): number {
  return LE ? b.readInt32LE(o) : b.readInt32BE(o);
}
function put16(b: Buffer, v: number, o: number): void {
  if (LE) b.writeUInt16LE(v, o);
  else b.writeUInt16BE(v, o);
}
function put32(b: Buffer, v: number, o: number): void {
  if (LE) b.writeUInt32LE(v >>> 0, o);
  else b.writeUInt32BE(v >>> 0, o);
}

const align4 = (n: number): number => (n + 3) & ~3;

/** One netlink message: its header fields and its payload (family header + attributes). */
export interface NlMessage {
  readonly type: number;
  readonly flags: number;
  readonly seq: number;
  readonly payload: Buffer;
}

/** A request attribute: type and already-encoded value. */
export interface NlAttr {
  readonly type: number;
  readonly value: Buffer;
}

/** Encodes one request: netlink header, the family header, then attributes (4-aligned). */
export function encodeRequest(
  type: number,
  flags: number,
  seq: number,
  familyHeader: Buffer,
  attrs: readonly NlAttr[] = [],
): Buffer {
  let len = HDR + align4(familyHeader.length);
  for (const a of attrs) len += align4(4 + a.value.length);
  const b = Buffer.alloc(len);
  put32(b, len, 0);
  put16(b, type, 4);
  put16(b, flags, 6);
  put32(b, seq, 8);
  put32(b, 0, 12);
  familyHeader.copy(b, HDR);
  let o = HDR + align4(familyHeader.length);
  for (const a of attrs) {
    put16(b, 4 + a.value.length, o);
    put16(b, a.type, o + 2);
    a.value.copy(b, o + 4);
    o += align4(4 + a.value.length);
  }
  return b;
}

/** Splits a receive buffer into messages; stops at the first malformed length. */
export function decodeMessages(buf: Buffer): NlMessage[] {
  const out: NlMessage[] = [];
  let o = 0;
  while (o + HDR <= buf.length) {
    const len = u32(buf, o);
    if (len < HDR || o + len > buf.length) break;
    out.push({
      type: u16(buf, o + 4),
      flags: u16(buf, o + 6),
      seq: u32(buf, o + 8),
      payload: buf.subarray(o + HDR, o + len),
    });
    o += align4(len);
  }
  return out;
}

/** Attributes from `start` to the end of `buf`: type (flags stripped) -> first value. */
export function decodeAttrs(buf: Buffer, start: number): Map<number, Buffer> {
  const m = new Map<number, Buffer>();
  let o = start;
  while (o + 4 <= buf.length) {
    const len = u16(buf, o);
    if (len < 4 || o + len > buf.length) break;
    const type = u16(buf, o + 2) & NLA_TYPE_MASK;
    if (!m.has(type)) m.set(type, buf.subarray(o + 4, o + len));
    o += align4(len);
  }
  return m;
}

/** The errno of an NLMSG_ERROR message (positive; 0 is an acknowledgement). */
export function errorOf(msg: NlMessage): number {
  const e = msg.payload.length >= 4 ? i32(msg.payload, 0) : 0;
  return e === 0 ? 0 : -e;
}

function u32Attr(v: number): Buffer {
  const b = Buffer.alloc(4);
  put32(b, v, 0);
  return b;
}

function ifinfomsg(family: number, index: number): Buffer {
  const b = Buffer.alloc(IFINFOMSG);
  b[0] = family;
  put32(b, index, 4);
  return b;
}

/** A request for one link, by name (index 0) or by index. Answered by one RTM_NEWLINK. */
export function getLinkRequest(seq: number, by: { name: string } | { index: number }): Buffer {
  const attrs: NlAttr[] = [{ type: IFLA_EXT_MASK, value: u32Attr(RTEXT_FILTER_SKIP_STATS) }];
  if ('name' in by) attrs.push({ type: IFLA_IFNAME, value: Buffer.from(`${by.name}\0`) });
  return encodeRequest(
    RTM_GETLINK,
    NLM_F_REQUEST | NLM_F_ACK,
    seq,
    ifinfomsg(AF_UNSPEC, 'index' in by ? by.index : 0),
    attrs,
  );
}

/** Dumps of every link, IPv4 address, IPv4 route, IPv4 neighbour or bridge FDB entry. */
export function dumpRequest(seq: number, what: 'link' | 'addr' | 'route' | 'neigh' | 'fdb'): Buffer {
  const flags = NLM_F_REQUEST | NLM_F_DUMP;
  switch (what) {
    case 'link':
      return encodeRequest(RTM_GETLINK, flags, seq, ifinfomsg(AF_UNSPEC, 0), [
        { type: IFLA_EXT_MASK, value: u32Attr(RTEXT_FILTER_SKIP_STATS) },
      ]);
    case 'addr': {
      const h = Buffer.alloc(IFADDRMSG);
      h[0] = AF_INET;
      return encodeRequest(RTM_GETADDR, flags, seq, h);
    }
    case 'route': {
      const h = Buffer.alloc(RTMSG);
      h[0] = AF_INET;
      return encodeRequest(RTM_GETROUTE, flags, seq, h);
    }
    case 'neigh':
    case 'fdb': {
      // Exactly an ndmsg with no attributes: the kernel's unfiltered dump (every device).
      const h = Buffer.alloc(NDMSG);
      h[0] = what === 'neigh' ? AF_INET : AF_BRIDGE;
      return encodeRequest(RTM_GETNEIGH, flags, seq, h);
    }
  }
}

function cstring(b: Buffer | undefined): string | undefined {
  if (!b) return undefined;
  const z = b.indexOf(0);
  return b.toString('latin1', 0, z < 0 ? b.length : z);
}

function mac(b: Buffer | undefined): string | undefined {
  if (!b || b.length !== 6) return undefined;
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

function ipv4(b: Buffer | undefined): number | undefined {
  return b && b.length === 4 ? b.readUInt32BE(0) : undefined;
}

/** An RTM_NEWLINK as a record; `vxlan.linkIndex` is the underlay's ifindex (0 = none). */
export interface RawLink {
  readonly index: number;
  readonly name: string;
  readonly up: boolean;
  readonly mtu: number;
  readonly mac: string | undefined;
  readonly txqueuelen: number | undefined;
  readonly kind: string | undefined;
  readonly vxlan?: {
    readonly vni: number;
    readonly local: number | undefined;
    readonly linkIndex: number;
    readonly port: number;
    readonly learning: boolean;
  };
}

export function decodeLink(msg: NlMessage): RawLink | undefined {
  const p = msg.payload;
  if (msg.type !== RTM_NEWLINK || p.length < IFINFOMSG) return undefined;
  const a = decodeAttrs(p, IFINFOMSG);
  const name = cstring(a.get(IFLA_IFNAME));
  if (name === undefined) return undefined;
  const mtu = a.get(IFLA_MTU);
  const txq = a.get(IFLA_TXQLEN);
  const info = a.get(IFLA_LINKINFO);
  const infoAttrs = info ? decodeAttrs(info, 0) : undefined;
  const kind = cstring(infoAttrs?.get(IFLA_INFO_KIND));
  const data = infoAttrs?.get(IFLA_INFO_DATA);
  let vxlan: RawLink['vxlan'];
  if (kind === 'vxlan' && data) {
    const d = decodeAttrs(data, 0);
    const id = d.get(IFLA_VXLAN_ID);
    const link = d.get(IFLA_VXLAN_LINK);
    const port = d.get(IFLA_VXLAN_PORT);
    const learning = d.get(IFLA_VXLAN_LEARNING);
    vxlan = {
      vni: id && id.length >= 4 ? u32(id, 0) : 0,
      local: ipv4(d.get(IFLA_VXLAN_LOCAL)),
      linkIndex: link && link.length >= 4 ? u32(link, 0) : 0,
      port: port && port.length >= 2 ? port.readUInt16BE(0) : 0,
      learning: learning && learning.length >= 1 ? learning[0] !== 0 : true,
    };
  }
  return {
    index: i32(p, 4),
    name,
    up: (u32(p, 8) & IFF_UP) !== 0,
    mtu: mtu && mtu.length >= 4 ? u32(mtu, 0) : 0,
    mac: mac(a.get(IFLA_ADDRESS)),
    txqueuelen: txq && txq.length >= 4 ? u32(txq, 0) : undefined,
    kind,
    ...(vxlan ? { vxlan } : {}),
  };
}

/** An IPv4 RTM_NEWADDR: the interface's own address (IFA_LOCAL, else IFA_ADDRESS). */
export function decodeAddr(msg: NlMessage): { index: number; addr: number; prefix: number } | undefined {
  const p = msg.payload;
  if (msg.type !== RTM_NEWADDR || p.length < IFADDRMSG || p[0] !== AF_INET) return undefined;
  const a = decodeAttrs(p, IFADDRMSG);
  const addr = ipv4(a.get(IFA_LOCAL)) ?? ipv4(a.get(IFA_ADDRESS));
  if (addr === undefined) return undefined;
  return { index: u32(p, 4), addr, prefix: p[1] as number };
}

/** An IPv4 RTM_NEWROUTE. oif 0: no single device (blackhole, multipath). */
export interface RawRoute {
  readonly table: number;
  readonly dst: number;
  readonly prefix: number;
  readonly via: number | undefined;
  readonly oif: number;
  readonly onlink: boolean;
  readonly multipath: boolean;
}

export function decodeRoute(msg: NlMessage): RawRoute | undefined {
  const p = msg.payload;
  if (msg.type !== RTM_NEWROUTE || p.length < RTMSG || p[0] !== AF_INET) return undefined;
  const a = decodeAttrs(p, RTMSG);
  const table = a.get(RTA_TABLE);
  const oif = a.get(RTA_OIF);
  return {
    table: table && table.length >= 4 ? u32(table, 0) : (p[4] as number),
    dst: ipv4(a.get(RTA_DST)) ?? 0,
    prefix: p[1] as number,
    via: ipv4(a.get(RTA_GATEWAY)),
    oif: oif && oif.length >= 4 ? u32(oif, 0) : 0,
    onlink: (u32(p, 8) & RTNH_F_ONLINK) !== 0,
    multipath: a.has(RTA_MULTIPATH),
  };
}

/** An RTM_NEWNEIGH (IPv4 neighbour or bridge/VXLAN FDB entry); dst only when IPv4. */
export interface RawNeigh {
  readonly family: number;
  readonly index: number;
  readonly state: number;
  readonly dst: number | undefined;
  readonly lladdr: string | undefined;
}

export function decodeNeigh(msg: NlMessage): RawNeigh | undefined {
  const p = msg.payload;
  if (msg.type !== RTM_NEWNEIGH || p.length < NDMSG) return undefined;
  const a = decodeAttrs(p, NDMSG);
  return {
    family: p[0] as number,
    index: i32(p, 4),
    state: u16(p, 8),
    dst: ipv4(a.get(NDA_DST)),
    lladdr: mac(a.get(NDA_LLADDR)),
  };
}

/**
 * What a notification (RTM_NEW* or RTM_DEL*) is about, as far as deciding whether to look:
 * the device (link, address, neighbour/FDB entry: its ifindex; a route: its output device,
 * 0 when it has none of its own) and, for a route, its destination.
 */
export type NlChange =
  | {
      readonly kind: 'link';
      readonly index: number;
      readonly name: string | undefined;
      readonly deleted: boolean;
    }
  | { readonly kind: 'addr' | 'neigh'; readonly index: number }
  | { readonly kind: 'route'; readonly index: number; readonly dst: number; readonly prefix: number };

/** The NlChange of a link, address, route or neighbour notification; undefined for others. */
export function decodeChange(msg: NlMessage): NlChange | undefined {
  const p = msg.payload;
  switch (msg.type) {
    case RTM_NEWLINK:
    case RTM_DELLINK:
      if (p.length < IFINFOMSG) return undefined;
      return {
        kind: 'link',
        index: i32(p, 4),
        name: cstring(decodeAttrs(p, IFINFOMSG).get(IFLA_IFNAME)),
        deleted: msg.type === RTM_DELLINK,
      };
    case RTM_NEWADDR:
    case RTM_DELADDR:
      return p.length < IFADDRMSG ? undefined : { kind: 'addr', index: u32(p, 4) };
    case RTM_NEWNEIGH:
    case RTM_DELNEIGH:
      return p.length < NDMSG ? undefined : { kind: 'neigh', index: i32(p, 4) };
    case RTM_NEWROUTE:
    case RTM_DELROUTE: {
      if (p.length < RTMSG) return undefined;
      const a = decodeAttrs(p, RTMSG);
      const oif = a.get(RTA_OIF);
      return {
        kind: 'route',
        index: oif && oif.length >= 4 ? u32(oif, 0) : 0,
        dst: ipv4(a.get(RTA_DST)) ?? 0,
        prefix: p[1] as number,
      };
    }
    default:
      return undefined;
  }
}
