// Hybrid-cloud address and MTU choices, without the network: --iface-regex (flannel's
// semantics: repeatable, tried in order after --iface, names of interfaces with an IPv4
// address), once against canned `ip -json` output and once for real in a namespace; the
// Backend.MTU and PersistentKeepaliveInterval options of net-conf; and every backend's
// prepare() honouring Backend.MTU (the subnet file's FLANNEL_MTU) or refusing it clearly.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { BackendContext } from '../../src/backend/backend.ts';
import { createBackend } from '../../src/backend/registry.ts';
import { backendMtu, keepaliveSeconds, validateNetConfig } from '../../src/daemon/netconf.ts';
import { parseOptions } from '../../src/daemon/options.ts';
import { pickUnderlay } from '../../src/daemon/underlay.ts';
import type { IpRunner } from '../../src/daemon/underlay.ts';
import { NetnsRun } from '../../src/netns/netns.ts';
import { formatIpv4, parseIpv4 } from '../../src/routing/ipv4.ts';
import { ConfigError } from '../../src/util/errors.ts';
import { run } from '../../src/util/exec.ts';
import { silentLogger } from '../../src/util/log.ts';

const LINKS = JSON.stringify([
  { ifname: 'lo', mtu: 65536, addr_info: [{ family: 'inet', local: '127.0.0.1', scope: 'host' }] },
  { ifname: 'ens3', mtu: 1500, addr_info: [] },
  { ifname: 'ens4', mtu: 1460, addr_info: [{ family: 'inet', local: '10.1.0.4', scope: 'global' }] },
  { ifname: 'eth0', mtu: 1500, addr_info: [{ family: 'inet', local: '192.168.1.10', scope: 'global' }] },
  { ifname: 'wg0', mtu: 1420, addr_info: [{ family: 'inet', local: '172.16.0.1', scope: 'global' }] },
]);
const fakeIp: IpRunner = (args) =>
  args.join(' ') === '-json addr show'
    ? Promise.resolve(LINKS)
    : Promise.resolve(JSON.stringify([{ dst: 'default', dev: 'eth0' }]));

void test('--iface-regex: repeatable, in order, each one regex (commas kept), invalid ones refused', () => {
  const o = parseOptions(['--iface-regex', '^ens', '--iface-regex=^eth[0-9]{1,2}$'], {});
  assert.deepEqual(o.ifaceRegex, ['^ens', '^eth[0-9]{1,2}$']);
  assert.deepEqual(o.iface, []);
  assert.deepEqual(parseOptions([], { WEFTD_IFACE_REGEX: 'eth[0-9]+' }).ifaceRegex, ['eth[0-9]+']);
  assert.throws(
    () => parseOptions(['--iface-regex', 'eth(['], {}),
    (e: unknown) =>
      e instanceof ConfigError && e.key === 'iface-regex' && /not a valid regular/.test(e.message),
  );
});

void test('pickUnderlay: --iface first, then each --iface-regex in order; interfaces without IPv4 skipped', async () => {
  // ens3 matches first by name but has no IPv4 address: ens4 is taken.
  const a = await pickUnderlay([], fakeIp, ['^ens']);
  assert.deepEqual([a.iface, formatIpv4(a.addr), a.mtu], ['ens4', '10.1.0.4', 1460]);
  // Tried in order: the first regex with a match wins, whatever the interface order.
  assert.equal((await pickUnderlay([], fakeIp, ['^wg', '^ens'])).iface, 'wg0');
  assert.equal((await pickUnderlay([], fakeIp, ['^nothing', 'th0$'])).iface, 'eth0');
  // --iface wins over --iface-regex when it exists; falls through to the regex when not.
  assert.equal((await pickUnderlay(['eth0'], fakeIp, ['^wg'])).iface, 'eth0');
  assert.equal((await pickUnderlay(['eth9', '10.9.9.9'], fakeIp, ['^wg'])).iface, 'wg0');
  // Without either: the default route's interface.
  assert.equal((await pickUnderlay([], fakeIp, [])).iface, 'eth0');
  await assert.rejects(
    pickUnderlay(['eth9'], fakeIp, ['^bond', '^ens3$']),
    (e: unknown) =>
      e instanceof ConfigError &&
      e.key === 'iface-regex' &&
      /eth9, \/\^bond\/, \/\^ens3\$\//.test(e.message) &&
      /ens4\(10\.1\.0\.4\)/.test(e.message),
  );
});

void test('pickUnderlay --iface-regex in a real namespace picks the matching interface', async (t) => {
  const r = new NetnsRun();
  t.after(() => r.destroy());
  const a = await r.addNamespace('a');
  const b = await r.addNamespace('b');
  await r.addVeth(a, 'up0', b, 'x0', 1500);
  await r.addVeth(a, 'site1', b, 'x1', 1400);
  await r.ip(a, 'addr', 'add', '198.18.7.1/24', 'dev', 'up0');
  await r.ip(a, 'addr', 'add', '198.19.7.1/24', 'dev', 'site1');
  const inA: IpRunner = (args) => run('ip', args, { netns: a });
  const u = await pickUnderlay([], inA, ['^site[0-9]+$']);
  assert.deepEqual([u.iface, formatIpv4(u.addr), u.mtu], ['site1', '198.19.7.1', 1400]);
  assert.equal((await pickUnderlay([], inA, ['^nope', '^up'])).iface, 'up0');
});

void test('net-conf: Backend.MTU and PersistentKeepaliveInterval are checked for every backend type', () => {
  for (const Type of ['udp', 'vxlan', 'host-gw', 'wireguard']) {
    const ok = validateNetConfig({
      Network: '10.244.0.0/16',
      Backend: { Type, MTU: 1300, PersistentKeepaliveInterval: 25 },
    });
    assert.equal(ok.backend.MTU, 1300);
    assert.equal(keepaliveSeconds(ok.backend), 25);
    for (const MTU of [575, 70000, 1400.5, '1400']) {
      assert.throws(
        () => validateNetConfig({ Network: '10.244.0.0/16', Backend: { Type, MTU } }),
        (e: unknown) => e instanceof ConfigError && e.key === 'Backend.MTU',
        `${Type} MTU ${JSON.stringify(MTU)}`,
      );
    }
    assert.throws(
      () =>
        validateNetConfig({ Network: '10.244.0.0/16', Backend: { Type, PersistentKeepaliveInterval: -1 } }),
      (e: unknown) => e instanceof ConfigError && e.key === 'Backend.PersistentKeepaliveInterval',
    );
  }
  assert.equal(keepaliveSeconds(validateNetConfig({ Network: '10.244.0.0/16' }).backend), 0);
  const u = { iface: 'eth0', mtu: 1500 };
  assert.equal(backendMtu({ type: 'udp' }, u, 28), 1472);
  assert.equal(backendMtu({ type: 'udp', MTU: 0 }, u, 28), 1472);
  assert.equal(backendMtu({ type: 'udp', MTU: 1472 }, u, 28), 1472);
  assert.throws(
    () => backendMtu({ type: 'udp', MTU: 1473 }, u, 28),
    (e: unknown) => e instanceof ConfigError && /use at most 1472/.test(e.message),
  );
  assert.throws(
    () => backendMtu({ type: 'vxlan' }, { iface: 'tiny0', mtu: 600 }, 50),
    (e: unknown) => e instanceof ConfigError && /tiny0 has MTU 600/.test(e.message),
  );
});

const cases = [
  { type: 'udp', overhead: 28, extra: {} },
  { type: 'vxlan', overhead: 50, extra: { Dataplane: 'userspace' } },
  { type: 'host-gw', overhead: 0, extra: {} },
  { type: 'wireguard', overhead: 80, extra: {} },
] as const;

for (const c of cases) {
  void test(`${c.type}: prepare() uses Backend.MTU for the pods, defaults to underlay - ${c.overhead}, refuses too big`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'weft-hy-mtu-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const ctxFor = (backend: Record<string, unknown>, underlayMtu: number): BackendContext => ({
      network: validateNetConfig({
        Network: '10.244.0.0/16',
        Backend: { Type: c.type, ...c.extra, ...backend },
      }),
      underlay: { iface: 'eth0', addr: parseIpv4('198.18.0.1'), mtu: underlayMtu },
      publicIp: parseIpv4('198.18.0.1'),
      stateDir: dir,
      log: silentLogger(),
      offloads: false,
    });
    const prep = async (backend: Record<string, unknown>, underlayMtu = 1500) =>
      (await createBackend(c.type, ctxFor(backend, underlayMtu), {})).prepare();
    assert.equal((await prep({})).mtu, 1500 - c.overhead);
    assert.equal((await prep({ MTU: 1200 })).mtu, 1200);
    assert.equal((await prep({ MTU: 1400 }, 9000)).mtu, 1400);
    assert.equal((await prep({ MTU: 1500 - c.overhead })).mtu, 1500 - c.overhead);
    await assert.rejects(
      prep({ MTU: 1500 - c.overhead + 1 }),
      (e: unknown) =>
        e instanceof ConfigError &&
        e.key === 'Backend.MTU' &&
        new RegExp(`use at most ${1500 - c.overhead}`).test(e.message),
    );
  });
}
