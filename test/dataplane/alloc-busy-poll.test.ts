/**
 * udp with busy polling: request/response-sized turns (4 packets) through the readiness
 * callbacks, each followed by a busy-poll session, allocate nothing per packet or per
 * window (see alloc-harness.ts). One mode per file: the JIT sees one set of call sites.
 */
import { test } from 'node:test';
import { allocCheck } from './alloc-harness.ts';

void test('udp, busy polling: 10^6 packets in 4-packet turns allocate nothing per packet or window', () =>
  allocCheck('udp', 'busy-poll'));
