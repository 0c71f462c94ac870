// flannel's net-conf rules and defaults; every error names the key and the fix.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseNetConfig, validateNetConfig } from '../../src/daemon/netconf.ts';
import { formatCidr, formatIpv4 } from '../../src/routing/ipv4.ts';
import { ConfigError } from '../../src/util/errors.ts';

function rejects(conf: unknown, key: string, msg: RegExp): void {
  assert.throws(
    () => validateNetConfig(conf),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError, `ConfigError, got ${String(err)}`);
      assert.equal(err.key, key);
      assert.equal(err.code, 'WEFT_CONFIG');
      assert.match(err.message, msg);
      assert.ok(err.message.startsWith(`${key}: `), 'message starts with the key');
      return true;
    },
  );
}

void test('defaults: /16 -> /24 subnets, second..last subnet, udp on 8285, IPv4 on', () => {
  const c = parseNetConfig('{"Network":"10.244.0.0/16"}');
  assert.equal(formatCidr(c.network), '10.244.0.0/16');
  assert.equal(c.subnetLen, 24);
  assert.equal(formatIpv4(c.subnetMin), '10.244.1.0');
  assert.equal(formatIpv4(c.subnetMax), '10.244.255.0');
  assert.equal(c.enableIPv4, true);
  assert.deepEqual({ ...c.backend }, { type: 'udp', Port: 8285 });
  assert.deepEqual(c.raw, { Network: '10.244.0.0/16' });
});

void test('SubnetLen default: 24 when Network is /22 or larger, else prefix + 2', () => {
  assert.equal(validateNetConfig({ Network: '10.0.0.0/8' }).subnetLen, 24);
  assert.equal(validateNetConfig({ Network: '10.0.0.0/22' }).subnetLen, 24);
  assert.equal(validateNetConfig({ Network: '10.0.0.0/23' }).subnetLen, 25);
  assert.equal(validateNetConfig({ Network: '10.0.0.0/26' }).subnetLen, 28);
  const smallest = validateNetConfig({ Network: '10.0.0.0/28' });
  assert.equal(smallest.subnetLen, 30);
  assert.equal(formatIpv4(smallest.subnetMin), '10.0.0.4');
  assert.equal(formatIpv4(smallest.subnetMax), '10.0.0.12');
  assert.equal(validateNetConfig({ Network: '10.0.0.0/16', SubnetLen: 0 }).subnetLen, 24, '0 means default');
});

void test('Network: required, IPv4 CIDR, host bits clear, /28 or larger', () => {
  rejects({}, 'Network', /is required.*10\.244\.0\.0\/16/);
  rejects({ Network: '' }, 'Network', /is required/);
  rejects({ Network: 42 }, 'Network', /must be a string/);
  rejects({ Network: '10.0.0.0' }, 'Network', /not a CIDR/);
  rejects({ Network: 'fd00::/64' }, 'Network', /not an IPv4 address/);
  rejects({ Network: '10.0.0.1/16' }, 'Network', /host bits set; did you mean 10\.0\.0\.0\/16/);
  rejects({ Network: '10.0.0.0/29' }, 'Network', /too small; use a \/28 or larger/);
});

void test('SubnetLen: integer, at most 30, leaves at least 4 subnets', () => {
  rejects({ Network: '10.0.0.0/16', SubnetLen: 31 }, 'SubnetLen', /at most 30/);
  rejects({ Network: '10.0.0.0/16', SubnetLen: 17 }, 'SubnetLen', /fewer than 4 subnets.*at least 18/);
  rejects({ Network: '10.0.0.0/16', SubnetLen: 8 }, 'SubnetLen', /fewer than 4 subnets/);
  rejects({ Network: '10.0.0.0/16', SubnetLen: '24' }, 'SubnetLen', /must be an integer/);
  rejects({ Network: '10.0.0.0/16', SubnetLen: 24.5 }, 'SubnetLen', /must be an integer/);
  assert.equal(validateNetConfig({ Network: '10.0.0.0/16', SubnetLen: 18 }).subnetLen, 18);
});

void test('SubnetMin/SubnetMax: inside Network, aligned, ordered', () => {
  const c = validateNetConfig({ Network: '10.0.0.0/16', SubnetMin: '10.0.10.0', SubnetMax: '10.0.20.0' });
  assert.equal(formatIpv4(c.subnetMin), '10.0.10.0');
  assert.equal(formatIpv4(c.subnetMax), '10.0.20.0');
  rejects(
    { Network: '10.0.0.0/16', SubnetMin: '10.1.0.0' },
    'SubnetMin',
    /not inside Network 10\.0\.0\.0\/16/,
  );
  rejects({ Network: '10.0.0.0/16', SubnetMax: '11.0.0.0' }, 'SubnetMax', /not inside Network/);
  rejects(
    { Network: '10.0.0.0/16', SubnetMin: '10.0.3.5' },
    'SubnetMin',
    /SubnetLen\) boundary; did you mean 10\.0\.3\.0/,
  );
  rejects({ Network: '10.0.0.0/16', SubnetMax: '10.0.3.128' }, 'SubnetMax', /boundary/);
  rejects({ Network: '10.0.0.0/16', SubnetMin: 'ten' }, 'SubnetMin', /not an IPv4 address/);
  rejects({ Network: '10.0.0.0/16', SubnetMin: 5 }, 'SubnetMin', /must be an address string/);
  rejects(
    { Network: '10.0.0.0/16', SubnetMin: '10.0.9.0', SubnetMax: '10.0.8.0' },
    'SubnetMin',
    /above SubnetMax 10\.0\.8\.0/,
  );
});

void test('Backend: Type defaults to udp; udp Port 1..65535; other backends keep their options', () => {
  assert.deepEqual(
    { ...validateNetConfig({ Network: '10.0.0.0/16', Backend: { Type: 'udp', Port: 9000 } }).backend },
    {
      type: 'udp',
      Port: 9000,
    },
  );
  assert.equal(validateNetConfig({ Network: '10.0.0.0/16', Backend: {} }).backend.type, 'udp');
  assert.equal(validateNetConfig({ Network: '10.0.0.0/16', Backend: { Type: 'UDP' } }).backend.type, 'udp');
  const vx = validateNetConfig({ Network: '10.0.0.0/16', Backend: { Type: 'vxlan', VNI: 7 } }).backend;
  assert.deepEqual({ ...vx }, { type: 'vxlan', VNI: 7 });
  rejects({ Network: '10.0.0.0/16', Backend: { Port: 0 } }, 'Backend.Port', /not a UDP port; use 1\.\.65535/);
  rejects({ Network: '10.0.0.0/16', Backend: { Port: 70000 } }, 'Backend.Port', /1\.\.65535/);
  rejects({ Network: '10.0.0.0/16', Backend: { Port: '8285' } }, 'Backend.Port', /must be an integer/);
  rejects({ Network: '10.0.0.0/16', Backend: { Type: 3 } }, 'Backend.Type', /must be a string/);
  rejects({ Network: '10.0.0.0/16', Backend: 'udp' }, 'Backend', /must be an object/);
});

void test('IPv6 is refused clearly; IPv4 cannot be turned off', () => {
  rejects({ Network: '10.0.0.0/16', EnableIPv6: true }, 'EnableIPv6', /not supported.*set it to false/);
  rejects({ Network: '10.0.0.0/16', EnableIPv4: false }, 'EnableIPv4', /must be true/);
  rejects({ Network: '10.0.0.0/16', EnableIPv4: 'yes' }, 'EnableIPv4', /true or false/);
  assert.equal(validateNetConfig({ Network: '10.0.0.0/16', EnableIPv6: false }).enableIPv4, true);
});

void test('not JSON or not an object -> ConfigError naming the source', () => {
  assert.throws(
    () => parseNetConfig('{"Network":', '/etc/kube-flannel/net-conf.json'),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.key, '/etc/kube-flannel/net-conf.json');
      assert.match(err.message, /not valid JSON/);
      return true;
    },
  );
  rejects([], 'net-conf', /must be a JSON object/);
  rejects(null, 'net-conf', /must be a JSON object/);
});
