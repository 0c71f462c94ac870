// rtnetlink codec against hand-built messages (x86: netlink headers little-endian,
// addresses and ports in attributes big-endian).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  decodeAttrs,
  decodeLink,
  decodeMessages,
  decodeNeigh,
  decodeRoute,
  dumpRequest,
  encodeRequest,
  errorOf,
  getLinkRequest,
  NLM_F_ACK,
  NLM_F_DUMP,
  NLM_F_REQUEST,
  NLMSG_ERROR,
  RTM_GETLINK,
  RTM_GETNEIGH,
  RTM_NEWLINK,
  RTM_NEWNEIGH,
  RTM_NEWROUTE,
} from '../../src/kernel/netlink-codec.ts';

/** One attribute: length, type, value, padded to 4. */
function attr(type: number, value: Buffer): Buffer {
  const b = Buffer.alloc((4 + value.length + 3) & ~3);
  b.writeUInt16LE(4 + value.length, 0);
  b.writeUInt16LE(type, 2);
  value.copy(b, 4);
  return b;
}
const le32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v, 0);
  return b;
};
const be = (bytes: number[]): Buffer => Buffer.from(bytes);

void test('a request: header with its length, type, flags and seq; attributes 4-aligned', () => {
  const req = getLinkRequest(7, { name: 'weft0' });
  assert.equal(req.readUInt32LE(0), req.length);
  assert.equal(req.readUInt16LE(4), RTM_GETLINK);
  assert.equal(req.readUInt16LE(6), NLM_F_REQUEST | NLM_F_ACK);
  assert.equal(req.readUInt32LE(8), 7);
  assert.equal(req.length % 4, 0);
  const attrs = decodeAttrs(req, 16 + 16);
  assert.equal(attrs.get(3)?.toString('latin1'), 'weft0\0');
  assert.equal(attrs.get(29)?.readUInt32LE(0), 1 << 3, 'counters left out');
  const byIndex = getLinkRequest(8, { index: 12 });
  assert.equal(byIndex.readInt32LE(16 + 4), 12);
  assert.equal(decodeAttrs(byIndex, 32).has(3), false);
  const fdb = dumpRequest(9, 'fdb');
  assert.equal(fdb.length, 16 + 12, 'exactly an ndmsg: the unfiltered dump');
  assert.equal(fdb.readUInt16LE(4), RTM_GETNEIGH);
  assert.equal(fdb.readUInt16LE(6), NLM_F_REQUEST | NLM_F_DUMP);
  assert.equal(fdb[16], 7, 'AF_BRIDGE');
  assert.equal(dumpRequest(9, 'neigh')[16], 2, 'AF_INET');
});

void test('messages: split on their lengths, a truncated or short one ends the list', () => {
  const a = encodeRequest(RTM_NEWLINK, 2, 1, Buffer.alloc(16));
  const b = encodeRequest(RTM_NEWNEIGH, 2, 1, Buffer.alloc(13)); // padded to 16
  const both = Buffer.concat([a, b]);
  assert.deepEqual(
    decodeMessages(both).map((m) => [m.type, m.payload.length]),
    [
      [RTM_NEWLINK, 16],
      [RTM_NEWNEIGH, 16],
    ],
  );
  assert.equal(decodeMessages(both.subarray(0, both.length - 1)).length, 1);
  const lying = Buffer.from(a);
  lying.writeUInt32LE(8, 0);
  assert.equal(decodeMessages(lying).length, 0, 'a length below the header size');
  const err = Buffer.alloc(20);
  err.writeInt32LE(-19, 0);
  assert.equal(errorOf(decodeMessages(encodeRequest(NLMSG_ERROR, 0, 1, err))[0]!), 19);
  assert.equal(errorOf(decodeMessages(encodeRequest(NLMSG_ERROR, 0, 1, Buffer.alloc(20)))[0]!), 0);
});

void test('attributes: nested/byte-order flags stripped, first one wins, a bad length ends them', () => {
  const buf = Buffer.concat([attr(0x8000 | 18, be([1, 2, 3, 4])), attr(4, le32(1500)), attr(4, le32(9000))]);
  const m = decodeAttrs(buf, 0);
  assert.deepEqual([...m.keys()], [18, 4]);
  assert.equal(m.get(4)?.readUInt32LE(0), 1500);
  const bad = Buffer.from(buf);
  bad.writeUInt16LE(200, 8);
  assert.deepEqual([...decodeAttrs(bad, 0).keys()], [18]);
});

void test('a VXLAN link: name, index, flags, MTU, MAC, queue length and its settings', () => {
  const hdr = Buffer.alloc(16);
  hdr.writeInt32LE(9, 4);
  hdr.writeUInt32LE(0x1 | 0x1000, 8); // IFF_UP | IFF_LOWER_UP
  const data = Buffer.concat([
    attr(1, le32(42)),
    attr(3, le32(2)),
    attr(4, be([198, 18, 0, 1])),
    attr(7, be([0])),
    attr(15, be([0x21, 0x18])),
  ]);
  const info = Buffer.concat([attr(1, Buffer.from('vxlan\0')), attr(0x8000 | 2, data)]);
  const payload = Buffer.concat([
    hdr,
    attr(3, Buffer.from('weft.1\0')),
    attr(4, le32(1450)),
    attr(1, be([0x0a, 0, 0, 0, 0, 0x0a])),
    attr(13, le32(1000)),
    attr(0x8000 | 18, info),
  ]);
  const l = decodeLink(decodeMessages(encodeRequest(RTM_NEWLINK, 0, 1, payload))[0]!);
  assert.deepEqual(l, {
    index: 9,
    name: 'weft.1',
    up: true,
    mtu: 1450,
    mac: '0a:00:00:00:00:0a',
    txqueuelen: 1000,
    kind: 'vxlan',
    vxlan: { vni: 42, local: 0xc6120001, linkIndex: 2, port: 8472, learning: false },
  });
  const down = Buffer.from(payload);
  down.writeUInt32LE(0, 8);
  assert.equal(decodeLink(decodeMessages(encodeRequest(RTM_NEWLINK, 0, 1, down))[0]!)?.up, false);
  const noName = Buffer.concat([hdr, attr(4, le32(1450))]);
  assert.equal(decodeLink(decodeMessages(encodeRequest(RTM_NEWLINK, 0, 1, noName))[0]!), undefined);
});

void test('a route: RTA_TABLE over rtm_table, no RTA_DST is 0.0.0.0, onlink from rtm_flags', () => {
  const hdr = Buffer.alloc(12);
  hdr[0] = 2;
  hdr[1] = 0; // default
  hdr[4] = 252; // rtm_table can only say up to 255
  hdr.writeUInt32LE(4, 8);
  const payload = Buffer.concat([hdr, attr(15, le32(1000)), attr(5, be([10, 7, 2, 0])), attr(4, le32(5))]);
  assert.deepEqual(decodeRoute(decodeMessages(encodeRequest(RTM_NEWROUTE, 0, 1, payload))[0]!), {
    table: 1000,
    dst: 0,
    prefix: 0,
    via: 0x0a070200,
    oif: 5,
    onlink: true,
    multipath: false,
  });
  const v6 = Buffer.from(payload);
  v6[0] = 10;
  assert.equal(decodeRoute(decodeMessages(encodeRequest(RTM_NEWROUTE, 0, 1, v6))[0]!), undefined);
});

void test('a neighbour: state, index, IPv4 dst and MAC; other address sizes are not IPv4', () => {
  const hdr = Buffer.alloc(12);
  hdr[0] = 7;
  hdr.writeInt32LE(4, 4);
  hdr.writeUInt16LE(0x80, 8);
  const payload = Buffer.concat([hdr, attr(1, be([198, 18, 0, 2])), attr(2, be([2, 0, 0, 0, 0, 2]))]);
  assert.deepEqual(decodeNeigh(decodeMessages(encodeRequest(RTM_NEWNEIGH, 0, 1, payload))[0]!), {
    family: 7,
    index: 4,
    state: 0x80,
    dst: 0xc6120002,
    lladdr: '02:00:00:00:00:02',
  });
  const v6dst = Buffer.concat([hdr, attr(1, Buffer.alloc(16))]);
  assert.equal(decodeNeigh(decodeMessages(encodeRequest(RTM_NEWNEIGH, 0, 1, v6dst))[0]!)?.dst, undefined);
});
