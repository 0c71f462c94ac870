// src/compare/measure.ts parsers: sockperf's percentiles and the Udp counters of
// /proc/net/snmp that tell packets delivered to a pod from packets its program read.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseSockperf, parseUdpSnmp, percentile } from '../../src/compare/measure.ts';

const SNMP = `Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 1234
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 380563 2 308145 17 308140 0 5 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 0 0 0
`;

void test('the Udp line of /proc/net/snmp, not UdpLite', () => {
  assert.deepEqual(parseUdpSnmp(SNMP), { inDatagrams: 380563, rcvbufErrors: 308140 });
  assert.throws(() => parseUdpSnmp('Ip: Forwarding\nIp: 1\n'), /no Udp counters/);
  assert.throws(() => parseUdpSnmp('Udp: InDatagrams NoPorts\nUdp: 1 2\n'), /no Udp RcvbufErrors/);
  assert.throws(() => parseUdpSnmp('Udp: InDatagrams RcvbufErrors\nUdp: 1\n'), /no Udp counters/);
});

void test('sockperf percentiles and the nearest-rank percentile', () => {
  const out = '---> percentile 99.000 =   88.437\n---> percentile 50.000 =   41.699\n';
  assert.deepEqual(parseSockperf(out), { p50Us: 41.699, p99Us: 88.437 });
  assert.throws(() => parseSockperf('nothing'), /no 50.000 percentile/);
  assert.equal(percentile([5, 1, 4, 2, 3], 50), 3);
  assert.equal(percentile([5, 1, 4, 2, 3], 99), 5);
  assert.ok(Number.isNaN(percentile([], 50)));
});
