/**
 * Node <-> lease codec of the kube store (pure): what counts as a lease, what is skipped and
 * why, podCIDR selection, and the exact patches written.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  acquirePatch,
  advertisedIp,
  annotationKeys,
  encodeBackendData,
  nodeToLease,
  podCidrOf,
  releasePatch,
} from '../../src/lease/kube/node.ts';
import type { NodeLike } from '../../src/lease/kube/node.ts';
import { formatCidr } from '../../src/routing/ipv4.ts';

const keys = annotationKeys('flannel.alpha.coreos.com/');

function node(ann: Record<string, string>, spec: NodeLike['spec'] = { podCIDR: '10.244.2.0/24' }): NodeLike {
  return { metadata: { name: 'n', annotations: ann }, spec };
}

const GOOD = {
  'flannel.alpha.coreos.com/backend-type': 'vxlan',
  'flannel.alpha.coreos.com/backend-data': '{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}',
  'flannel.alpha.coreos.com/public-ip': '198.18.0.2',
  'flannel.alpha.coreos.com/kube-subnet-manager': 'true',
};

void test('a flannel-written node is a lease with parsed backend data', () => {
  const r = nodeToLease(node(GOOD), keys);
  assert.equal(r.kind, 'lease');
  if (r.kind !== 'lease') return;
  assert.equal(formatCidr(r.lease.subnet), '10.244.2.0/24');
  assert.deepEqual(r.lease.attrs, {
    publicIp: '198.18.0.2',
    publicIpv6: null,
    backendType: 'vxlan',
    backendData: { VNI: 1, VtepMAC: 'aa:bb:cc:dd:ee:ff' },
  });
  assert.equal(r.lease.expiresAt, Infinity);
});

void test('what is not a lease, and why', () => {
  const without = (k: string): Record<string, string> => {
    const a: Record<string, string> = { ...GOOD };
    delete a[k];
    return a;
  };
  assert.equal(nodeToLease(node(without(keys.kubeSubnetManager)), keys).kind, 'unmanaged');
  assert.equal(nodeToLease(node({ ...GOOD, [keys.kubeSubnetManager]: 'True' }), keys).kind, 'unmanaged');
  const cases: [NodeLike, RegExp][] = [
    [node(GOOD, {}), /no IPv4 spec.podCIDR/],
    [node(GOOD, { podCIDRs: ['fd00::/64'] }), /no IPv4 spec.podCIDR/],
    [node(GOOD, { podCIDR: '10.244.2.1/24' }), /not an IPv4 CIDR/],
    [node(GOOD, { podCIDR: 'garbage' }), /not an IPv4 CIDR/],
    [node(without(keys.backendType)), /backend-type is missing/],
    [node({ ...GOOD, [keys.publicIp]: '' }), /public-ip="" is not an IPv4/],
    [node({ ...GOOD, [keys.backendData]: '{"VNI":' }), /backend-data is not valid JSON/],
  ];
  for (const [n, why] of cases) {
    const r = nodeToLease(n, keys);
    assert.equal(r.kind, 'invalid', JSON.stringify(n));
    if (r.kind === 'invalid') assert.match(r.reason, why);
  }
  // An absent or empty backend-data is null data, as flannel writes for udp.
  const r = nodeToLease(node(without(keys.backendData)), keys);
  assert.ok(r.kind === 'lease' && r.lease.attrs.backendData === null);
});

void test('podCIDR: the IPv4 entry of podCIDRs wins, then podCIDR', () => {
  const pc = podCidrOf({ spec: { podCIDR: 'fd00::/64', podCIDRs: ['fd00::/64', '10.244.7.0/24'] } });
  assert.ok(pc.kind === 'ok' && pc.text === '10.244.7.0/24');
  assert.equal(podCidrOf({ spec: { podCIDR: '10.244.8.0/24' } }).kind, 'ok');
  assert.equal(podCidrOf({}).kind, 'none');
});

void test('backend data round-trips through the annotation for any JSON value', () => {
  fc.assert(
    fc.property(fc.jsonValue(), (data) => {
      const ann = { ...GOOD, [keys.backendData]: encodeBackendData(data) };
      const r = nodeToLease(node(ann), keys);
      assert.equal(r.kind, 'lease');
      if (r.kind === 'lease') assert.deepEqual(r.lease.attrs.backendData, JSON.parse(JSON.stringify(data)));
    }),
  );
});

void test('patches: acquire sets annotations + condition, release nulls exactly our four keys', () => {
  const attrs = { publicIp: '198.18.0.1', publicIpv6: null, backendType: 'udp', backendData: null };
  const now = new Date('2026-01-02T03:04:05.678Z');
  assert.deepEqual(acquirePatch({}, keys, attrs, now), {
    metadata: {
      annotations: {
        'flannel.alpha.coreos.com/backend-type': 'udp',
        'flannel.alpha.coreos.com/backend-data': 'null',
        'flannel.alpha.coreos.com/public-ip': '198.18.0.1',
        'flannel.alpha.coreos.com/kube-subnet-manager': 'true',
      },
    },
    status: {
      conditions: [
        {
          type: 'NetworkUnavailable',
          status: 'False',
          reason: 'WeftIsUp',
          message: 'weft is running on this node',
          lastHeartbeatTime: '2026-01-02T03:04:05Z',
          lastTransitionTime: '2026-01-02T03:04:05Z',
        },
      ],
    },
  });
  // A condition that was True transitions now; one that was already False keeps its time.
  const wasTrue = {
    status: {
      conditions: [
        { type: 'NetworkUnavailable', status: 'True', lastTransitionTime: '2020-01-01T00:00:00Z' },
      ],
    },
  };
  const wasFalse = {
    status: {
      conditions: [
        { type: 'NetworkUnavailable', status: 'False', lastTransitionTime: '2020-01-01T00:00:00Z' },
      ],
    },
  };
  const cond = (p: object): Record<string, string> =>
    (p as { status: { conditions: Record<string, string>[] } }).status.conditions[0] as Record<
      string,
      string
    >;
  assert.equal(cond(acquirePatch(wasTrue, keys, attrs, now)).lastTransitionTime, '2026-01-02T03:04:05Z');
  assert.equal(cond(acquirePatch(wasFalse, keys, attrs, now)).lastTransitionTime, '2020-01-01T00:00:00Z');

  assert.deepEqual(releasePatch(keys), {
    metadata: {
      annotations: {
        'flannel.alpha.coreos.com/backend-type': null,
        'flannel.alpha.coreos.com/backend-data': null,
        'flannel.alpha.coreos.com/public-ip': null,
        'flannel.alpha.coreos.com/kube-subnet-manager': null,
      },
    },
  });
});

void test('public-ip-overwrite', () => {
  assert.deepEqual(advertisedIp(node({}), keys, '10.0.0.1'), { ip: '10.0.0.1' });
  assert.deepEqual(advertisedIp(node({ [keys.publicIpOverwrite]: '203.0.113.9' }), keys, '10.0.0.1'), {
    ip: '203.0.113.9',
    overwrite: '203.0.113.9',
  });
  assert.deepEqual(advertisedIp(node({ [keys.publicIpOverwrite]: 'x' }), keys, '10.0.0.1'), {
    ip: '10.0.0.1',
    invalidOverwrite: 'x',
  });
});
