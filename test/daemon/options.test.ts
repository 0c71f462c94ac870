// weftd options: flags, environment, precedence, defaults, errors naming the flag, --help.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { envName, FLAGS, helpText, parseOptions } from '../../src/daemon/options.ts';
import { ConfigError } from '../../src/util/errors.ts';

function rejects(argv: string[], env: Record<string, string>, key: string, msg: RegExp): void {
  assert.throws(
    () => parseOptions(argv, env),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError, `ConfigError, got ${String(err)}`);
      assert.equal(err.key, key);
      assert.match(err.message, msg);
      return true;
    },
  );
}

void test('defaults are flannel-like', () => {
  const o = parseOptions([], {});
  assert.deepEqual(o.iface, []);
  assert.equal(o.publicIp, undefined);
  assert.equal(o.subnetFile, '/run/weft/subnet.env');
  assert.equal(o.healthzIp, '127.0.0.1');
  assert.equal(o.healthzPort, 0);
  assert.equal(o.leaseStore, 'etcd');
  assert.deepEqual(o.etcdEndpoints, ['http://127.0.0.1:2379']);
  assert.equal(o.etcdPrefix, '/coreos.com/network');
  assert.equal(o.subnetLeaseRenewMargin, 60);
  assert.equal(o.ipMasq, false);
  assert.equal(o.offloads, true);
  assert.equal(o.stateDir, '/var/lib/weft');
  assert.equal(o.storeDir, '/var/lib/weft/leases');
  assert.equal(o.logLevel, 'info');
  assert.equal(o.tunName, 'weft0');
  assert.equal(o.kubeSubnetMgr, false);
  assert.equal(o.releaseOnExit, false);
  assert.equal(o.help, false);
});

void test('flags in both forms, repeatable lists, bare booleans', () => {
  const o = parseOptions(
    [
      '--iface',
      'eth0',
      '--iface=10.0.0.1',
      '--public-ip=198.18.0.7',
      '--subnet-file',
      '/tmp/s.env',
      '--healthz-port=9099',
      '--lease-store=embedded',
      '--state-dir=/tmp/st/',
      '--etcd-endpoints=http://a:1,http://b:2',
      '--ip-masq',
      '--no-offloads',
      '--subnet-lease-renew-margin=5',
      '--log-level=DEBUG',
      '--release-on-exit=false',
    ],
    {},
  );
  assert.deepEqual(o.iface, ['eth0', '10.0.0.1']);
  assert.equal(o.publicIp, '198.18.0.7');
  assert.equal(o.subnetFile, '/tmp/s.env');
  assert.equal(o.healthzPort, 9099);
  assert.equal(o.leaseStore, 'embedded');
  assert.equal(o.storeDir, '/tmp/st/leases');
  assert.deepEqual(o.etcdEndpoints, ['http://a:1', 'http://b:2']);
  assert.equal(o.ipMasq, true);
  assert.equal(o.offloads, false);
  assert.equal(o.subnetLeaseRenewMargin, 5);
  assert.equal(o.logLevel, 'debug');
  assert.equal(o.releaseOnExit, false);
});

void test('every flag can come from WEFTD_<FLAG>; flags win over env', () => {
  const env = {
    WEFTD_IFACE: 'eth1,eth2',
    WEFTD_SUBNET_FILE: '/env/s.env',
    WEFTD_HEALTHZ_PORT: '8000',
    WEFTD_IP_MASQ: 'true',
    WEFTD_LEASE_STORE: 'embedded',
    WEFTD_STORE_DIR: '/env/store',
    WEFTD_SUBNET_LEASE_RENEW_MARGIN: '30',
    WEFTD_NO_OFFLOADS: '1',
  };
  const o = parseOptions([], env);
  assert.deepEqual(o.iface, ['eth1', 'eth2']);
  assert.equal(o.subnetFile, '/env/s.env');
  assert.equal(o.healthzPort, 8000);
  assert.equal(o.ipMasq, true);
  assert.equal(o.storeDir, '/env/store');
  assert.equal(o.subnetLeaseRenewMargin, 30);
  assert.equal(o.offloads, false);
  const p = parseOptions(['--subnet-file=/flag/s.env', '--ip-masq=false', '--iface=eth9'], env);
  assert.equal(p.subnetFile, '/flag/s.env');
  assert.equal(p.ipMasq, false);
  assert.deepEqual(p.iface, ['eth9']);
  assert.equal(envName('subnet-lease-renew-margin'), 'WEFTD_SUBNET_LEASE_RENEW_MARGIN');
  // flannel's NODE_NAME works too, but WEFTD_NODE_NAME and the flag win.
  assert.equal(parseOptions([], { NODE_NAME: 'n1' }).nodeName, 'n1');
  assert.equal(parseOptions([], { NODE_NAME: 'n1', WEFTD_NODE_NAME: 'n2' }).nodeName, 'n2');
  assert.equal(parseOptions(['--node-name=n3'], { WEFTD_NODE_NAME: 'n2' }).nodeName, 'n3');
});

void test('--kube-subnet-mgr selects the kube store; a conflicting --lease-store is an error', () => {
  assert.equal(parseOptions(['--kube-subnet-mgr'], {}).leaseStore, 'kube');
  assert.equal(parseOptions(['--kube-subnet-mgr', '--lease-store=kube'], {}).kubeSubnetMgr, true);
  assert.equal(parseOptions(['--lease-store=kube'], {}).kubeSubnetMgr, true);
  rejects(['--kube-subnet-mgr', '--lease-store=etcd'], {}, 'lease-store', /conflicts with --kube-subnet-mgr/);
});

void test('errors name the flag and say what to do', () => {
  rejects(['--bogus'], {}, '--bogus', /unknown flag; run weftd --help/);
  rejects(['stray'], {}, 'stray', /only --flags/);
  rejects(['--subnet-file'], {}, 'subnet-file', /needs a value/);
  rejects(['--public-ip=1.2.3'], {}, 'public-ip', /not an IPv4 address/);
  rejects(['--healthz-ip=localhost'], {}, 'healthz-ip', /not an IPv4 address/);
  rejects(['--healthz-port=70000'], {}, 'healthz-port', /1\.\.65535, or 0 to turn it off/);
  rejects(['--healthz-port=abc'], {}, 'healthz-port', /not an integer/);
  rejects(['--subnet-lease-renew-margin=0'], {}, 'subnet-lease-renew-margin', /use 1\.\.1439/);
  rejects(['--subnet-lease-renew-margin=1440'], {}, 'subnet-lease-renew-margin', /use 1\.\.1439/);
  rejects(['--lease-store=consul'], {}, 'lease-store', /use embedded, etcd, kube/);
  rejects(['--log-level=loud'], {}, 'log-level', /use one of trace/);
  rejects(['--ip-masq=maybe'], {}, 'ip-masq', /not a boolean/);
  rejects(['--tun-name=this-name-is-too-long'], {}, 'tun-name', /not a valid interface name/);
  rejects([], { WEFTD_HEALTHZ_PORT: '-1' }, 'healthz-port', /0 to turn it off/);
});

void test('--help lists every flag with its environment variable', () => {
  const text = helpText();
  for (const f of FLAGS) {
    assert.ok(text.includes(`--${f.name}`), `help mentions --${f.name}`);
    if (f.name !== 'help') assert.ok(text.includes(envName(f.name)), `help mentions ${envName(f.name)}`);
  }
  assert.match(text, /\(default \/run\/weft\/subnet\.env\)/);
  assert.equal(parseOptions(['--help'], {}).help, true);
});

void test('--tunnel-gso / WEFT_TUNNEL_GSO: on by default, turned off by false', () => {
  assert.equal(parseOptions([], {}).tunnelGso, true);
  assert.equal(parseOptions(['--tunnel-gso'], {}).tunnelGso, true);
  assert.equal(parseOptions([], { WEFT_TUNNEL_GSO: '0' }).tunnelGso, false);
  assert.equal(parseOptions(['--tunnel-gso=false'], {}).tunnelGso, false);
  assert.equal(parseOptions(['--tunnel-gso=false'], { WEFT_TUNNEL_GSO: 'true' }).tunnelGso, false);
});

void test('--tunnel-gso-retry / WEFT_TUNNEL_GSO_RETRY: 0 (never) by default, up to 3600 s', () => {
  assert.equal(parseOptions([], {}).tunnelGsoRetryMs, 0);
  assert.equal(parseOptions(['--tunnel-gso-retry', '60'], {}).tunnelGsoRetryMs, 60_000);
  assert.equal(parseOptions(['--tunnel-gso-retry', '0'], {}).tunnelGsoRetryMs, 0);
  assert.equal(parseOptions(['--tunnel-gso-retry=5'], {}).tunnelGsoRetryMs, 5000);
  assert.equal(parseOptions([], { WEFT_TUNNEL_GSO_RETRY: '3600' }).tunnelGsoRetryMs, 3_600_000);
  rejects(['--tunnel-gso-retry', '3601'], {}, 'tunnel-gso-retry', /out of range; use 0 \(never\) to 3600/);
  rejects(['--tunnel-gso-retry', '-1'], {}, 'tunnel-gso-retry', /out of range/);
});

void test('--busy-poll-us / WEFT_BUSY_POLL_US: 100 by default, 0 (off)..10000 µs', () => {
  assert.equal(parseOptions([], {}).busyPollUs, 100);
  assert.equal(parseOptions(['--busy-poll-us', '0'], {}).busyPollUs, 0);
  assert.equal(parseOptions(['--busy-poll-us', '150'], {}).busyPollUs, 150);
  assert.equal(parseOptions([], { WEFT_BUSY_POLL_US: '80' }).busyPollUs, 80);
  assert.equal(parseOptions(['--busy-poll-us=10000'], {}).busyPollUs, 10000);
  rejects(['--busy-poll-us', '10001'], {}, 'busy-poll-us', /out of range; use 0 \(off\) to 10000/);
  rejects(['--busy-poll-us', '-1'], {}, 'busy-poll-us', /out of range/);
});
