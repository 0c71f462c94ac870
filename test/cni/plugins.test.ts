/**
 * weft-cni with the real reference plugins (bridge + host-local from /usr/lib/cni), for every
 * spec version, in throwaway namespaces: the plugin runs under `ip netns exec <node-ns>` so
 * cni0 appears in the node namespace, pods are namespaces of their own, host-local keeps its
 * state in a temp dir. The root namespace must be unchanged afterwards.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { SUPPORTED_VERSIONS } from '../../cni/version.ts';
import { NetnsRun, rootSnapshot } from '../../src/netns/netns.ts';
import { REF_PLUGINS, SUBNET_ENV, buildBundle, callPlugin } from './helpers.ts';
import type { CniCall } from './helpers.ts';

type Json = Record<string, unknown>;

const dir = mkdtempSync(join(tmpdir(), 'weft-cni-it-'));
const subnetFile = join(dir, 'subnet.env');
const dataDir = join(dir, 'data');
const ipamDir = join(dir, 'ipam');
let bundle = '';
let run: NetnsRun;
let nodeNs = '';
let rootBefore = '';

before(async () => {
  rootBefore = rootSnapshot();
  bundle = buildBundle(dir);
  writeFileSync(subnetFile, SUBNET_ENV);
  run = new NetnsRun();
  nodeNs = await run.addNamespace('node');
});

after(async () => {
  await run.destroy();
  rmSync(dir, { recursive: true, force: true });
  assert.equal(rootSnapshot(), rootBefore, 'root namespace changed');
});

function conf(version: string, extra: Json = {}): Json {
  return {
    cniVersion: version,
    name: 'weft',
    type: 'weft-cni',
    subnetFile,
    dataDir,
    delegate: { hairpinMode: true },
    ipam: { dataDir: ipamDir },
    ...extra,
  };
}

function cni(command: string, c: Json, env: NodeJS.ProcessEnv = {}): Promise<CniCall> {
  return callPlugin(
    nodeNs,
    [process.execPath, bundle],
    { CNI_COMMAND: command, CNI_PATH: REF_PLUGINS, CNI_IFNAME: 'eth0', ...env },
    c,
  );
}

async function pod(name: string): Promise<{ ns: string; path: string }> {
  const ns = await run.addNamespace(name);
  return { ns, path: `/run/netns/${ns}` };
}

function ipamFiles(): string[] {
  const d = join(ipamDir, 'weft');
  return existsSync(d) ? readdirSync(d).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)) : [];
}

async function ping(ns: string, addr: string): Promise<void> {
  await run.exec(ns, 'ping', ['-c', '1', '-W', '2', addr]);
}

for (const version of SUPPORTED_VERSIONS) {
  void test(`cniVersion ${version}: ADD gives an address from our subnet that reaches the gateway; CHECK; DEL twice`, async () => {
    const p = await pod(`v${version.replaceAll('.', '')}`);
    const id = `ctr-${version.replaceAll('.', '-')}`;
    const env = { CNI_CONTAINERID: id, CNI_NETNS: p.path };
    const add = await cni('ADD', conf(version), env);
    assert.equal(add.code, 0, add.stdout + add.stderr);
    const result = add.json as Json;
    assert.equal(result.cniVersion, version);
    const ips = result.ips as Json[];
    assert.equal(ips.length, 1);
    assert.match(String(ips[0]?.address), /^10\.244\.3\.\d+\/24$/);
    assert.equal(ips[0]?.gateway, '10.244.3.1');
    assert.equal(ips[0]?.version, version.startsWith('0.') ? '4' : undefined);
    assert.ok(
      (result.routes as Json[]).some((r) => r.dst === '10.244.0.0/16'),
      JSON.stringify(result.routes),
    );
    const podAddr = String(ips[0]?.address).split('/')[0] as string;
    const links = await run.ip(p.ns, '-o', 'addr', 'show', 'dev', 'eth0');
    assert.match(links, new RegExp(`inet ${podAddr.replaceAll('.', '\\.')}/24`));
    assert.match(await run.ip(p.ns, 'link', 'show', 'eth0'), /mtu 1450/);
    assert.match(await run.ip(nodeNs, '-o', 'addr', 'show', 'dev', 'cni0'), /inet 10\.244\.3\.1\/24/);
    await ping(p.ns, '10.244.3.1');
    assert.ok(ipamFiles().includes(podAddr));

    if (version !== '0.3.0' && version !== '0.3.1') {
      const check = await cni('CHECK', conf(version, { prevResult: result }), env);
      assert.equal(check.code, 0, check.stdout + check.stderr);
      assert.equal(check.stdout, '');
    } else {
      const check = await cni('CHECK', conf(version, { prevResult: result }), env);
      assert.equal(check.json?.code, 1, 'CHECK does not exist before 0.4.0');
    }

    const del = await cni('DEL', conf(version), env);
    assert.equal(del.code, 0, del.stdout + del.stderr);
    await assert.rejects(run.ip(p.ns, 'link', 'show', 'eth0'), 'eth0 removed from the pod');
    assert.ok(!ipamFiles().includes(podAddr), 'address released');
    assert.equal(existsSync(join(dataDir, `${id}-eth0`)), false);
    const del2 = await cni('DEL', conf(version), env);
    assert.equal(del2.code, 0, del2.stdout + del2.stderr);
    // DEL without a netns (pod already gone) is fine too.
    assert.equal((await cni('DEL', conf(version), { CNI_CONTAINERID: id })).code, 0);
  });
}

void test('ADD twice for the same container fails cleanly and leaves the first attachment working', async () => {
  const p = await pod('dup');
  const env = { CNI_CONTAINERID: 'dup', CNI_NETNS: p.path };
  const add = await cni('ADD', conf('1.0.0'), env);
  assert.equal(add.code, 0, add.stdout);
  const again = await cni('ADD', conf('1.0.0'), env);
  assert.notEqual(again.code, 0);
  assert.equal(again.json?.code, 100);
  assert.match(String(again.json?.msg), /already has interface eth0/);
  await ping(p.ns, '10.244.3.1');
  assert.equal((await cni('DEL', conf('1.0.0'), env)).code, 0);
});

void test('a failed delegate ADD is undone: no saved state, no address held', async () => {
  const before = ipamFiles();
  const add = await cni('ADD', conf('1.0.0'), {
    CNI_CONTAINERID: 'broken',
    CNI_NETNS: '/run/netns/weft-no-such-ns',
  });
  assert.notEqual(add.code, 0);
  assert.equal(typeof add.json?.code, 'number');
  assert.match(String(add.json?.msg), /delegate "bridge" ADD failed/);
  assert.equal(existsSync(join(dataDir, 'broken-eth0')), false);
  assert.deepEqual(ipamFiles(), before);
});

void test('GC removes stale attachments (interface and address) and keeps valid ones', async () => {
  const pods = await Promise.all(['gc-a', 'gc-b', 'gc-c'].map(pod));
  const addrs: string[] = [];
  for (const [i, p] of pods.entries()) {
    const add = await cni('ADD', conf('1.1.0'), { CNI_CONTAINERID: `gc${i}`, CNI_NETNS: p.path });
    assert.equal(add.code, 0, add.stdout);
    addrs.push(String(((add.json as Json).ips as Json[])[0]?.address).split('/')[0] as string);
  }
  const gc = await cni(
    'GC',
    conf('1.1.0', { 'cni.dev/valid-attachments': [{ containerID: 'gc0', ifname: 'eth0' }] }),
    {},
  );
  assert.equal(gc.code, 0, gc.stdout + gc.stderr);
  assert.equal(gc.stdout, '');
  assert.ok(existsSync(join(dataDir, 'gc0-eth0')));
  assert.equal(existsSync(join(dataDir, 'gc1-eth0')), false);
  assert.equal(existsSync(join(dataDir, 'gc2-eth0')), false);
  const held = ipamFiles();
  assert.ok(held.includes(addrs[0] as string));
  assert.ok(!held.includes(addrs[1] as string) && !held.includes(addrs[2] as string), held.join(','));
  await assert.rejects(run.ip((pods[1] as { ns: string }).ns, 'link', 'show', 'eth0'));
  await ping((pods[0] as { ns: string }).ns, '10.244.3.1');
  // GC before 1.1.0 is refused with "incompatible version".
  const old = await cni('GC', conf('1.0.0', { 'cni.dev/valid-attachments': [] }), {});
  assert.equal(old.json?.code, 1);
  assert.equal(
    (
      await cni('DEL', conf('1.1.0'), {
        CNI_CONTAINERID: 'gc0',
        CNI_NETNS: (pods[0] as { path: string }).path,
      })
    ).code,
    0,
  );
});

void test('STATUS: 50 without a subnet file, ready with one', async () => {
  const missing = await cni('STATUS', conf('1.1.0', { subnetFile: join(dir, 'nope.env') }), {});
  assert.notEqual(missing.code, 0);
  assert.equal(missing.json?.code, 50);
  assert.equal(missing.json?.cniVersion, '1.1.0');
  assert.match(String(missing.json?.msg), /weftd/);
  const ok = await cni('STATUS', conf('1.1.0'), {});
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  assert.equal(ok.stdout, '');
  const noPlugins = await cni('STATUS', conf('1.1.0'), { CNI_PATH: dir });
  assert.equal(noPlugins.json?.code, 50);
  const add = await cni('ADD', conf('1.1.0', { subnetFile: join(dir, 'nope.env') }), {
    CNI_CONTAINERID: 'x',
    CNI_NETNS: '/run/netns/x',
  });
  assert.equal(add.json?.code, 11);
  assert.match(String(add.json?.msg), /Is weftd running on this node\? Check the weftd log/);
});
