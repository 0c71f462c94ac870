// Snapshot/changes -> one batch of peer events (removed before added), own subnet apart.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  reconcileChanges,
  reconcileExpiry,
  reconcileSnapshot,
  sameAttrs,
} from '../../src/lease/reconcile.ts';
import type { LeaseChange } from '../../src/lease/reconcile.ts';
import type { Lease, LeaseEvent } from '../../src/lease/types.ts';
import { cidrToKey, formatCidr, parseCidr } from '../../src/routing/ipv4.ts';

const OWN = parseCidr('10.1.1.0/24');
const lease = (subnet: string, ip: string, data: unknown = null, expiresAt = 5000): Lease => ({
  subnet: parseCidr(subnet),
  attrs: { publicIp: ip, backendType: 'udp', backendData: data },
  expiresAt,
});
const fmt = (events: readonly LeaseEvent[]): string[] =>
  events.map((e) => `${e.type} ${formatCidr(e.lease.subnet)} ${e.lease.attrs.publicIp}`);
const mapOf = (...ls: Lease[]): Map<string, Lease> => new Map(ls.map((l) => [cidrToKey(l.subnet), l]));

void test('first snapshot: every peer added, own subnet left out and reported present', () => {
  const own = lease('10.1.1.0/24', '198.18.0.1');
  const r = reconcileSnapshot(new Map(), [lease('10.1.2.0/24', 'b'), own, lease('10.1.3.0/24', 'c')], OWN);
  assert.deepEqual(fmt(r.events).sort(), ['added 10.1.2.0/24 b', 'added 10.1.3.0/24 c']);
  assert.deepEqual(r.own, { kind: 'present', lease: own });
  assert.equal(r.known.size, 2);
});

void test('snapshot diff: removed, changed (removed+added), unchanged, expiry-only change ignored', () => {
  const known = mapOf(
    lease('10.1.2.0/24', 'b'),
    lease('10.1.3.0/24', 'c'),
    lease('10.1.4.0/24', 'd', { v: 1 }),
  );
  const snap = [
    lease('10.1.2.0/24', 'b', null, 99_999), // renewed only
    lease('10.1.4.0/24', 'd', { v: 2 }), // changed data
    lease('10.1.5.0/24', 'e'), // new
  ];
  const r = reconcileSnapshot(known, snap, OWN);
  assert.deepEqual(fmt(r.events), [
    'removed 10.1.3.0/24 c',
    'removed 10.1.4.0/24 d',
    'added 10.1.4.0/24 d',
    'added 10.1.5.0/24 e',
  ]);
  assert.deepEqual(r.own, { kind: 'gone' });
  assert.deepEqual([...r.known.keys()].sort(), ['10.1.2.0-24', '10.1.4.0-24', '10.1.5.0-24']);
  assert.equal(known.size, 3, 'input not mutated');
});

void test('snapshot: leases expired by `now` count as absent', () => {
  const known = mapOf(lease('10.1.2.0/24', 'b', null, 100));
  const r = reconcileSnapshot(
    known,
    [lease('10.1.2.0/24', 'b', null, 100), lease('10.1.1.0/24', 'me', null, 50)],
    OWN,
    100,
  );
  assert.deepEqual(fmt(r.events), ['removed 10.1.2.0/24 b']);
  assert.deepEqual(r.own, { kind: 'gone' });
});

void test('changes: net effect per subnet, own subnet reported apart', () => {
  const known = mapOf(lease('10.1.2.0/24', 'b'), lease('10.1.3.0/24', 'c'));
  const changes: LeaseChange[] = [
    { type: 'put', lease: lease('10.1.6.0/24', 'f') },
    { type: 'delete', subnet: parseCidr('10.1.6.0/24') }, // added and gone again: nothing
    { type: 'put', lease: lease('10.1.7.0/24', 'g') },
    { type: 'delete', subnet: parseCidr('10.1.2.0/24') },
    { type: 'put', lease: lease('10.1.3.0/24', 'c2') }, // taken over by another IP
    { type: 'delete', subnet: parseCidr('10.1.99.0/24') }, // unknown: nothing
    { type: 'put', lease: lease('10.1.1.0/24', 'me') },
  ];
  const r = reconcileChanges(known, changes, OWN);
  assert.deepEqual(fmt(r.events), [
    'removed 10.1.2.0/24 b',
    'removed 10.1.3.0/24 c',
    'added 10.1.7.0/24 g',
    'added 10.1.3.0/24 c2',
  ]);
  assert.equal(r.own.kind, 'present');
  const del = reconcileChanges(r.known, [{ type: 'delete', subnet: OWN }], OWN);
  assert.deepEqual(del.events, []);
  assert.deepEqual(del.own, { kind: 'gone' });
  assert.deepEqual(reconcileChanges(r.known, [], OWN).own, { kind: 'unchanged' });
});

void test('changes: a renewal of a known peer is no event', () => {
  const known = mapOf(lease('10.1.2.0/24', 'b', { k: [1, 2] }));
  const r = reconcileChanges(
    known,
    [{ type: 'put', lease: lease('10.1.2.0/24', 'b', { k: [1, 2] }, 77_777) }],
    OWN,
  );
  assert.deepEqual(r.events, []);
  assert.equal(r.known.get('10.1.2.0-24')?.expiresAt, 77_777, 'known keeps the newest lease');
});

void test('sameAttrs compares backend data structurally, key order independent', () => {
  const a = { publicIp: 'x', backendType: 'vxlan', backendData: { VNI: 1, VtepMAC: 'aa' } };
  assert.ok(sameAttrs(a, { ...a, backendData: { VtepMAC: 'aa', VNI: 1 } }));
  assert.ok(!sameAttrs(a, { ...a, backendData: { VtepMAC: 'ab', VNI: 1 } }));
  assert.ok(sameAttrs({ ...a, publicIpv6: null }, { ...a, publicIpv6: undefined }));
  assert.ok(!sameAttrs(a, { ...a, backendType: 'udp' }));
});

void test('expiry sweep removes only expired peers', () => {
  const r = reconcileExpiry(
    mapOf(lease('10.1.2.0/24', 'b', null, 10), lease('10.1.3.0/24', 'c', null, 30)),
    20,
  );
  assert.deepEqual(fmt(r.events), ['removed 10.1.2.0/24 b']);
  assert.deepEqual([...r.known.keys()], ['10.1.3.0-24']);
});

void test('property: applying the events to `known` yields the snapshot (minus own), removed before added', () => {
  const arbLease = fc
    .record({
      n: fc.integer({ min: 0, max: 15 }),
      ip: fc.constantFrom('a', 'b', 'c'),
      d: fc.integer({ min: 0, max: 2 }),
    })
    .map(({ n, ip, d }) => lease(`10.1.${n}.0/24`, ip, { d }));
  const uniq = (ls: Lease[]): Lease[] => [...mapOf(...ls).values()];
  fc.assert(
    fc.property(
      fc.array(arbLease, { maxLength: 12 }),
      fc.array(arbLease, { maxLength: 12 }),
      (before, after) => {
        const known = reconcileSnapshot(new Map(), uniq(before), OWN).known;
        const r = reconcileSnapshot(known, uniq(after), OWN);
        const applied = new Map(known);
        let seenAdded = false;
        for (const e of r.events) {
          if (e.type === 'added') seenAdded = true;
          else assert.ok(!seenAdded, 'removed after added');
          if (e.type === 'added') applied.set(cidrToKey(e.lease.subnet), e.lease);
          else applied.delete(cidrToKey(e.lease.subnet));
          assert.notEqual(cidrToKey(e.lease.subnet), cidrToKey(OWN));
        }
        const want = uniq(after).filter((l) => cidrToKey(l.subnet) !== cidrToKey(OWN));
        assert.deepEqual([...applied.keys()].sort(), want.map((l) => cidrToKey(l.subnet)).sort());
        for (const l of want) assert.ok(sameAttrs(applied.get(cidrToKey(l.subnet))!.attrs, l.attrs));
      },
    ),
    { numRuns: 300 },
  );
});
