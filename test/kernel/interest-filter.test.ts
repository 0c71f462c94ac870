// What a KernelMonitor with a KernelInterest lets through, on hand-built notifications
// (decodeChange for the NEW and DEL kinds; InterestFilter's ifindex bookkeeping). The
// same against the kernel: test/kernel/monitor-interest.test.ts.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InterestFilter } from '../../src/kernel/monitor.ts';
import {
  decodeChange,
  decodeMessages,
  encodeRequest,
  RTM_DELADDR,
  RTM_DELLINK,
  RTM_DELNEIGH,
  RTM_DELROUTE,
  RTM_NEWADDR,
  RTM_NEWLINK,
  RTM_NEWNEIGH,
  RTM_NEWROUTE,
} from '../../src/kernel/netlink-codec.ts';
import type { NlMessage } from '../../src/kernel/netlink-codec.ts';
import { parseCidr } from '../../src/routing/ipv4.ts';

const IFLA_IFNAME = 3;
const RTA_DST = 1;
const RTA_OIF = 4;

const one = (b: Buffer): NlMessage => {
  const [m] = decodeMessages(b);
  assert.ok(m);
  return m;
};
const le32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v, 0);
  return b;
};

function link(type: number, index: number, name?: string): NlMessage {
  const h = Buffer.alloc(16);
  h.writeInt32LE(index, 4);
  const attrs = name === undefined ? [] : [{ type: IFLA_IFNAME, value: Buffer.from(`${name}\0`) }];
  return one(encodeRequest(type, 0, 0, h, attrs));
}
function addr(type: number, index: number): NlMessage {
  const h = Buffer.alloc(8);
  h[0] = 2;
  h[1] = 32;
  h.writeUInt32LE(index, 4);
  return one(encodeRequest(type, 0, 0, h));
}
function neigh(type: number, index: number): NlMessage {
  const h = Buffer.alloc(12);
  h[0] = 7;
  h.writeInt32LE(index, 4);
  return one(encodeRequest(type, 0, 0, h));
}
function route(type: number, dst: string, oif?: number): NlMessage {
  const c = parseCidr(dst);
  const h = Buffer.alloc(12);
  h[0] = 2;
  h[1] = c.prefix;
  const ip = Buffer.alloc(4);
  ip.writeUInt32BE(c.addr, 0);
  const attrs = [
    { type: RTA_DST, value: ip },
    ...(oif === undefined ? [] : [{ type: RTA_OIF, value: le32(oif) }]),
  ];
  return one(encodeRequest(type, 0, 0, h, attrs));
}

void test('decodeChange: new and deleted links, addresses, neighbours and routes', () => {
  assert.deepEqual(decodeChange(link(RTM_NEWLINK, 5, 'weft0')), {
    kind: 'link',
    index: 5,
    name: 'weft0',
    deleted: false,
  });
  assert.deepEqual(decodeChange(link(RTM_DELLINK, 5, 'weft0')), {
    kind: 'link',
    index: 5,
    name: 'weft0',
    deleted: true,
  });
  assert.deepEqual(decodeChange(addr(RTM_NEWADDR, 9)), { kind: 'addr', index: 9 });
  assert.deepEqual(decodeChange(addr(RTM_DELADDR, 9)), { kind: 'addr', index: 9 });
  assert.deepEqual(decodeChange(neigh(RTM_NEWNEIGH, 4)), { kind: 'neigh', index: 4 });
  assert.deepEqual(decodeChange(neigh(RTM_DELNEIGH, 4)), { kind: 'neigh', index: 4 });
  const r = decodeChange(route(RTM_DELROUTE, '10.244.3.0/24', 7));
  assert.deepEqual(r, { kind: 'route', index: 7, dst: parseCidr('10.244.3.0/24').addr, prefix: 24 });
  assert.deepEqual(decodeChange(route(RTM_NEWROUTE, '0.0.0.0/0')), {
    kind: 'route',
    index: 0,
    dst: 0,
    prefix: 0,
  });
  assert.equal(decodeChange({ type: RTM_NEWADDR, flags: 0, seq: 0, payload: Buffer.alloc(3) }), undefined);
  assert.equal(decodeChange({ type: 3, flags: 0, seq: 0, payload: Buffer.alloc(16) }), undefined);
});

void test('InterestFilter: its devices by ifindex, routes into the Network by destination', () => {
  const f = new InterestFilter({ devices: ['weft0'], routesWithin: [parseCidr('10.244.0.0/16')] }, (n) =>
    n === 'weft0' ? 5 : undefined,
  );
  assert.equal(f.relevant(addr(RTM_NEWADDR, 5)), true);
  assert.equal(f.relevant(addr(RTM_NEWADDR, 6)), false);
  assert.equal(f.relevant(neigh(RTM_NEWNEIGH, 5)), true);
  assert.equal(f.relevant(neigh(RTM_NEWNEIGH, 2)), false);
  assert.equal(f.relevant(link(RTM_NEWLINK, 6, 'veth1')), false);
  assert.equal(f.relevant(route(RTM_NEWROUTE, '10.99.0.0/16', 5)), true, 'any route through the device');
  assert.equal(f.relevant(route(RTM_NEWROUTE, '10.244.9.0/24', 2)), true, 'into the Network, other device');
  assert.equal(f.relevant(route(RTM_DELROUTE, '10.244.0.0/16', 0)), true, 'the Network itself');
  assert.equal(f.relevant(route(RTM_NEWROUTE, '10.0.0.0/8', 2)), false, 'covers the Network, less specific');
  assert.equal(f.relevant(route(RTM_NEWROUTE, '10.245.0.0/24', 2)), false);
  assert.equal(
    f.relevant({ type: RTM_NEWADDR, flags: 0, seq: 0, payload: Buffer.alloc(3) }),
    true,
    'unreadable',
  );
});

void test('InterestFilter: follows its device across re-creation and renames, from link notifications', () => {
  const f = new InterestFilter({ devices: ['weft0'] }, (n) => (n === 'weft0' ? 5 : undefined));
  assert.equal(f.relevant(link(RTM_DELLINK, 5, 'weft0')), true);
  assert.equal(f.relevant(addr(RTM_DELADDR, 5)), false, 'the deleted index is forgotten');
  assert.equal(f.relevant(link(RTM_NEWLINK, 11, 'weft0')), true, 'made again');
  assert.equal(f.relevant(addr(RTM_NEWADDR, 11)), true, 'the new index is ours');
  // Replaced without a DELLINK seen (lost notification): the newest index under the name wins.
  assert.equal(f.relevant(link(RTM_NEWLINK, 12, 'weft0')), true);
  assert.equal(f.relevant(addr(RTM_NEWADDR, 11)), false);
  assert.equal(f.relevant(link(RTM_NEWLINK, 12, 'old')), true, 'renamed away');
  assert.equal(f.relevant(addr(RTM_NEWADDR, 12)), false);
  assert.equal(f.relevant(link(RTM_NEWLINK, 12, 'old')), false);
});

void test('InterestFilter: while the ifindexes cannot be read, everything counts; then it learns them', () => {
  let fail = true;
  const f = new InterestFilter({ devices: ['weft0'] }, () => {
    if (fail) throw new Error('netlink down');
    return 5;
  });
  assert.equal(f.relevant(addr(RTM_NEWADDR, 9)), true);
  assert.equal(f.relevant(link(RTM_NEWLINK, 9, 'veth9')), true);
  fail = false;
  assert.equal(f.relevant(addr(RTM_NEWADDR, 9)), false, 'learnt at the next notification');
  assert.equal(f.relevant(addr(RTM_NEWADDR, 5)), true);
  f.relearn();
  assert.equal(f.relevant(addr(RTM_NEWADDR, 5)), true, 'relearn() keeps what is true');
});
