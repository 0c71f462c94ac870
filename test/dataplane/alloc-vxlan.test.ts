/** vxlan: the data path allocates nothing per packet or per batch (see alloc-harness.ts). */
import { test } from 'node:test';
import { allocCheck } from './alloc-harness.ts';

void test('vxlan: 10^6 packets through two forwarders allocate nothing per packet', () =>
  allocCheck('vxlan'));
