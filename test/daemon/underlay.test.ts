// Picking the underlay: --iface by name or address (first that exists), else the default
// route's interface; against canned `ip -json` output, then once for real in a namespace.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pickUnderlay } from '../../src/daemon/underlay.ts';
import type { IpRunner } from '../../src/daemon/underlay.ts';
import { NetnsRun } from '../../src/netns/netns.ts';
import { formatIpv4 } from '../../src/routing/ipv4.ts';
import { ConfigError } from '../../src/util/errors.ts';
import { run } from '../../src/util/exec.ts';

const ADDRS = JSON.stringify([
  {
    ifname: 'lo',
    mtu: 65536,
    addr_info: [{ family: 'inet', local: '127.0.0.1', prefixlen: 8, scope: 'host' }],
  },
  {
    ifname: 'eth0',
    mtu: 1500,
    addr_info: [
      { family: 'inet6', local: 'fe80::1', prefixlen: 64, scope: 'link' },
      { family: 'inet', local: '192.168.1.10', prefixlen: 24, scope: 'global' },
    ],
  },
  {
    ifname: 'eth1',
    mtu: 9000,
    addr_info: [{ family: 'inet', local: '10.9.0.5', prefixlen: 16, scope: 'global' }],
  },
  { ifname: 'eth2', mtu: 1500, addr_info: [] },
]);

function fakeIp(defaultDev?: string): IpRunner {
  return (args) => {
    const a = args.join(' ');
    if (a === '-json addr show') return Promise.resolve(ADDRS);
    if (a === '-json -4 route show default') {
      return Promise.resolve(
        JSON.stringify(defaultDev ? [{ dst: 'default', gateway: '192.168.1.1', dev: defaultDev }] : []),
      );
    }
    return Promise.reject(new Error(`unexpected ip ${a}`));
  };
}

void test('default route interface when no --iface', async () => {
  const u = await pickUnderlay([], fakeIp('eth0'));
  assert.deepEqual({ ...u, addr: formatIpv4(u.addr) }, { iface: 'eth0', addr: '192.168.1.10', mtu: 1500 });
});

void test('--iface by name or by address; the first that exists wins', async () => {
  assert.equal((await pickUnderlay(['eth1'], fakeIp('eth0'))).mtu, 9000);
  const byAddr = await pickUnderlay(['10.9.0.5'], fakeIp());
  assert.equal(byAddr.iface, 'eth1');
  assert.equal(formatIpv4(byAddr.addr), '10.9.0.5');
  assert.equal((await pickUnderlay(['wlan0', '10.0.0.99', 'eth0'], fakeIp())).iface, 'eth0');
});

void test('errors say what to do', async () => {
  await assert.rejects(
    pickUnderlay([], fakeIp()),
    (e: unknown) => e instanceof ConfigError && /no default route.*--iface/.test(e.message),
  );
  await assert.rejects(
    pickUnderlay(['wlan0'], fakeIp()),
    (e: unknown) =>
      e instanceof ConfigError &&
      e.key === 'iface' &&
      /none of wlan0.*eth0\(192\.168\.1\.10\)/.test(e.message),
  );
  await assert.rejects(pickUnderlay(['eth2'], fakeIp()), /eth2 has no IPv4 address/);
});

void test('for real: reads address and MTU with ip -json inside a namespace', async (t) => {
  const nr = new NetnsRun();
  t.after(() => nr.destroy());
  const a = await nr.addNamespace('u');
  const b = await nr.addNamespace('v');
  await nr.addVeth(a, 'ul0', b, 'ul1', 1400);
  await nr.ip(a, 'addr', 'add', '172.31.5.1/24', 'dev', 'ul0');
  await nr.ip(a, 'route', 'add', 'default', 'via', '172.31.5.2', 'dev', 'ul0');
  const ip: IpRunner = (args) => run('ip', args, { netns: a });
  const u = await pickUnderlay([], ip);
  assert.deepEqual({ ...u, addr: formatIpv4(u.addr) }, { iface: 'ul0', addr: '172.31.5.1', mtu: 1400 });
  assert.equal((await pickUnderlay(['172.31.5.1'], ip)).iface, 'ul0');
});
