import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PeerIdAllocator } from '../../src/dataplane/peer.ts';
import {
  batchBucket,
  Counter,
  DropReason,
  DROP_REASON_NAMES,
  ForwarderStats,
} from '../../src/dataplane/stats.ts';

void test('PeerIdAllocator: dense ids, stable per key, lowest freed id reused', () => {
  const ids = new PeerIdAllocator();
  assert.equal(ids.acquire('a'), 0);
  assert.equal(ids.acquire('b'), 1);
  assert.equal(ids.acquire('c'), 2);
  assert.equal(ids.acquire('a'), 0, 'same key, same id');
  assert.equal(ids.release('b'), 1);
  assert.equal(ids.release('a'), 0);
  assert.equal(ids.release('a'), undefined);
  assert.equal(ids.acquire('d'), 0);
  assert.equal(ids.acquire('e'), 1);
  assert.equal(ids.acquire('f'), 3);
  assert.equal(ids.size, 4);
});

void test('ForwarderStats: per-peer arrays grow, reset, and snapshot as plain numbers', () => {
  const s = new ForwarderStats();
  s.ensurePeer(100);
  assert.ok(s.peerTxPackets.length > 100);
  (s.peerTxPackets[100] as number) += 3;
  (s.peerTxBytes[100] as number) += 300;
  s.drop(DropReason.spoofedSource, 2);
  (s.counters[Counter.sendPackets] as number) += 3;
  (s.tunReadSizes[batchBucket(64)] as number)++;
  const snap = s.snapshot();
  assert.equal(snap.drops.spoofedSource, 2);
  assert.equal(snap.drops.none, undefined, '"none" is not a drop');
  assert.equal(snap.counters.sendPackets, 3);
  assert.deepEqual(snap.peers, [{ id: 100, txPackets: 3, txBytes: 300, rxPackets: 0, rxBytes: 0 }]);
  assert.equal(snap.batchSizes.tunRead[6], 1);
  assert.equal((JSON.parse(JSON.stringify(snap)) as typeof snap).drops.spoofedSource, 2, 'JSON-safe');
  s.resetPeer(100);
  assert.deepEqual(s.snapshot().peers, []);
  assert.throws(() => s.ensurePeer(-1), RangeError);
});

void test('batch buckets and drop reason names line up', () => {
  assert.deepEqual([1, 2, 3, 4, 63, 64, 127, 128, 5000].map(batchBucket), [0, 1, 1, 2, 5, 6, 6, 7, 7]);
  for (const [name, code] of Object.entries(DropReason)) assert.equal(DROP_REASON_NAMES[code], name);
});
