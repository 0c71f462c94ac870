/**
 * Unit tests of weft-cni: subnet file parsing, conf parsing and delegate rendering for every
 * spec version, result conversion, error objects and codes, and the command logic driven
 * in-process with an in-memory delegate (the real reference plugins are in plugins.test.ts).
 */
import assert from 'node:assert/strict';
import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { DEFAULT_DATA_DIR, parseNetConf, renderDelegate } from '../../cni/conf.ts';
import { execProgram } from '../../cni/delegate.ts';
import type { ExecResult } from '../../cni/delegate.ts';
import { CniCode, CniError, errorJson } from '../../cni/errors.ts';
import { runPlugin } from '../../cni/plugin.ts';
import { DEFAULT_SUBNET_FILE, parseSubnetEnv, readSubnetEnv } from '../../cni/subnet-file.ts';
import { SUPPORTED_VERSIONS, compareVersions, convertResult, negotiate } from '../../cni/version.ts';
import { renderConflist } from '../../src/daemon/install-cni.ts';

type Json = Record<string, unknown>;

const SUBNET_TEXT =
  'FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n';

function tmp(t: { after: (fn: () => void) => void }): string {
  const d = mkdtempSync(join(tmpdir(), 'weft-cni-unit-'));
  t.after(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

void test('subnet file: flannel format parses, first usable address becomes the network', () => {
  const env = parseSubnetEnv(SUBNET_TEXT);
  assert.deepEqual(env, {
    network: { addr: 0x0af40000, prefix: 16 },
    subnet: { addr: 0x0af40300, prefix: 24 },
    mtu: 1450,
    ipMasq: false,
  });
  const quoted = parseSubnetEnv(
    '# comment\n\nFLANNEL_NETWORK="10.1.0.0/16"\nFLANNEL_SUBNET=10.1.7.1/24\nFLANNEL_IPMASQ=true\n',
  );
  assert.equal(quoted.ipMasq, true);
  assert.equal(quoted.mtu, undefined);
  assert.equal(quoted.subnet.addr, 0x0a010700);
  const v6 = parseSubnetEnv(
    SUBNET_TEXT + 'FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:3::1/64\n',
  );
  assert.equal(v6.ipv6Network, 'fd00::/48');
  assert.equal(v6.ipv6Subnet, 'fd00:0:0:3::1/64');
});

void test('subnet file: malformed content is an invalid-config error naming the key', () => {
  const cases: [string, RegExp][] = [
    ['FLANNEL_SUBNET=10.244.3.1/24\n', /FLANNEL_NETWORK is missing/],
    ['FLANNEL_NETWORK=10.244.0.0/16\n', /FLANNEL_SUBNET is missing/],
    ['FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.9.3.1/24\n', /not inside FLANNEL_NETWORK/],
    ['FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=abc\n', /FLANNEL_MTU/],
    ['FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPMASQ=yes\n', /FLANNEL_IPMASQ/],
    ['FLANNEL_NETWORK=10.244.1.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n', /host bits/],
    ['garbage\n', /not KEY=VALUE/],
  ];
  for (const [text, re] of cases) {
    assert.throws(
      () => parseSubnetEnv(text, '/x/subnet.env'),
      (e: unknown) =>
        e instanceof CniError &&
        e.cniCode === CniCode.InvalidConfig &&
        re.test(e.message) &&
        /weftd/.test(e.message),
      text,
    );
  }
});

void test('subnet file: a missing file says to check weftd, with the code the caller asks for', (t) => {
  const p = join(tmp(t), 'subnet.env');
  assert.throws(
    () => readSubnetEnv(p),
    (e: unknown) =>
      e instanceof CniError &&
      e.cniCode === CniCode.TryAgainLater &&
      /is weftd running on this node\? check the weftd log/i.test(e.message),
  );
  assert.throws(
    () => readSubnetEnv(p, CniCode.NotAvailable),
    (e: unknown) => e instanceof CniError && e.cniCode === 50,
  );
  writeFileSync(p, SUBNET_TEXT);
  assert.equal(readSubnetEnv(p).mtu, 1450);
  assert.equal(DEFAULT_SUBNET_FILE, '/run/weft/subnet.env');
});

function expectedDelegate(version: string): Json {
  return {
    cniVersion: version,
    name: 'weft',
    type: 'bridge',
    bridge: 'cni0',
    isGateway: true,
    ipMasq: true,
    mtu: 1450,
    hairpinMode: true,
    isDefaultGateway: true,
    ipam: {
      type: 'host-local',
      ranges: [[{ subnet: '10.244.3.0/24' }]],
      routes: [{ dst: '10.244.0.0/16', gw: '10.244.3.1' }],
    },
  };
}

for (const version of SUPPORTED_VERSIONS) {
  void test(`conf ${version}: parses with defaults and renders flannel's bridge + host-local delegate`, () => {
    const conf = parseNetConf(
      JSON.stringify({
        cniVersion: version,
        name: 'weft',
        type: 'weft-cni',
        delegate: { hairpinMode: true, isDefaultGateway: true },
      }),
    );
    assert.equal(conf.cniVersion, version);
    assert.equal(conf.subnetFile, DEFAULT_SUBNET_FILE);
    assert.equal(conf.dataDir, DEFAULT_DATA_DIR);
    assert.deepEqual(renderDelegate(conf, parseSubnetEnv(SUBNET_TEXT)), expectedDelegate(version));
  });
}

void test('conf: user settings win where flannel lets them; ranges, name and version are always ours', () => {
  const conf = parseNetConf(
    JSON.stringify({
      cniVersion: '1.0.0',
      name: 'pods',
      type: 'weft-cni',
      subnetFile: '/run/flannel/subnet.env',
      dataDir: '/tmp/d',
      delegate: {
        bridge: 'br9',
        mtu: 1400,
        ipMasq: false,
        isGateway: false,
        name: 'ignored',
        cniVersion: '0.3.0',
      },
      ipam: {
        dataDir: '/tmp/ipam',
        routes: [{ dst: '0.0.0.0/0' }, { dst: '10.244.0.0/16' }],
        ranges: [[{ subnet: '1.2.3.0/24' }]],
      },
      runtimeConfig: { portMappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }] },
      args: { cni: { x: 1 } },
    }),
  );
  assert.equal(conf.subnetFile, '/run/flannel/subnet.env');
  assert.equal(conf.dataDir, '/tmp/d');
  const d = renderDelegate(conf, parseSubnetEnv(SUBNET_TEXT.replace('IPMASQ=false', 'IPMASQ=true')));
  assert.deepEqual(d, {
    cniVersion: '1.0.0',
    name: 'pods',
    type: 'bridge',
    bridge: 'br9',
    mtu: 1400,
    ipMasq: false,
    isGateway: false,
    ipam: {
      type: 'host-local',
      dataDir: '/tmp/ipam',
      ranges: [[{ subnet: '10.244.3.0/24' }]],
      routes: [{ dst: '0.0.0.0/0' }, { dst: '10.244.0.0/16' }],
    },
    runtimeConfig: { portMappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }] },
    args: { cni: { x: 1 } },
  });
  // The daemon masquerades -> the bridge must not; no MTU in the file -> none in the conf.
  const d2 = renderDelegate(
    parseNetConf('{"cniVersion":"0.3.1","name":"n","delegate":{"type":"ipvlan","master":"eth0"}}'),
    parseSubnetEnv('FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.9.1/24\nFLANNEL_IPMASQ=true\n'),
  );
  assert.deepEqual(d2, {
    cniVersion: '0.3.1',
    name: 'n',
    type: 'ipvlan',
    master: 'eth0',
    ipMasq: false,
    ipam: { type: 'host-local', ranges: [[{ subnet: '10.5.9.0/24' }]], routes: [{ dst: '10.5.0.0/16' }] },
  });
  const v6 = renderDelegate(
    parseNetConf('{"cniVersion":"1.1.0","name":"n"}'),
    parseSubnetEnv(SUBNET_TEXT + 'FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:3::/64\n'),
  );
  assert.deepEqual((v6.ipam as Json).ranges, [
    [{ subnet: '10.244.3.0/24' }],
    [{ subnet: 'fd00:0:0:3::/64' }],
  ]);
  assert.deepEqual((v6.ipam as Json).routes, [
    { dst: '10.244.0.0/16', gw: '10.244.3.1' },
    { dst: 'fd00::/48' },
  ]);
});

void test('conf: broken input maps to the spec codes', () => {
  const cases: [string, number][] = [
    ['not json', CniCode.Decode],
    ['[1]', CniCode.Decode],
    ['{"name":"x"}', CniCode.IncompatibleVersion],
    ['{"cniVersion":"0.2.0","name":"x"}', CniCode.IncompatibleVersion],
    ['{"cniVersion":"9.9.9","name":"x"}', CniCode.IncompatibleVersion],
    ['{"cniVersion":"1.0.0"}', CniCode.InvalidConfig],
    ['{"cniVersion":"1.0.0","name":"x","delegate":"bridge"}', CniCode.InvalidConfig],
    ['{"cniVersion":"1.0.0","name":"x","delegate":{"type":"../evil"}}', CniCode.InvalidConfig],
    ['{"cniVersion":"1.0.0","name":"x","subnetFile":5}', CniCode.InvalidConfig],
    [
      '{"cniVersion":"1.1.0","name":"x","cni.dev/valid-attachments":[{"containerID":1}]}',
      CniCode.InvalidConfig,
    ],
  ];
  for (const [text, code] of cases) {
    assert.throws(
      () => parseNetConf(text),
      (e: unknown) => e instanceof CniError && e.cniCode === code,
      text,
    );
  }
  const c = parseNetConf(
    '{"cniVersion":"1.1.0","name":"x","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}',
  );
  assert.deepEqual(c.validAttachments, [{ containerID: 'a', ifname: 'eth0' }]);
});

void test('versions: compare, negotiate, and convert results both ways', () => {
  assert.equal(compareVersions('0.4.0', '1.0.0'), -1);
  assert.equal(compareVersions('1.1.0', '1.0.0'), 1);
  assert.equal(compareVersions('1.0.0', '1.0.0'), 0);
  assert.equal(negotiate('1.1.0', ['0.1.0', '0.3.1', '1.0.0']), '1.0.0');
  assert.equal(negotiate('0.4.0', ['0.3.0', '0.3.1', '0.4.0', '1.0.0']), '0.4.0');
  assert.equal(negotiate('0.3.0', ['1.0.0']), undefined);
  const r1: Json = {
    cniVersion: '1.0.0',
    interfaces: [{ name: 'eth0', sandbox: '/run/netns/x' }],
    ips: [
      { address: '10.244.3.2/24', gateway: '10.244.3.1', interface: 0 },
      { address: 'fd00::2/64', interface: 0 },
    ],
    routes: [{ dst: '10.244.0.0/16' }],
    dns: {},
  };
  const legacy = convertResult(r1, '0.4.0');
  assert.deepEqual(legacy.ips, [
    { address: '10.244.3.2/24', gateway: '10.244.3.1', interface: 0, version: '4' },
    { address: 'fd00::2/64', interface: 0, version: '6' },
  ]);
  assert.equal(legacy.cniVersion, '0.4.0');
  assert.deepEqual(convertResult(legacy, '1.1.0'), { ...r1, cniVersion: '1.1.0' });
  assert.equal((r1.ips as Json[])[0]?.version, undefined, 'input not modified');
});

void test('errors: the spec error object, with details only when present', () => {
  assert.deepEqual(errorJson(new CniError(7, 'bad', 'why'), '1.0.0'), {
    cniVersion: '1.0.0',
    code: 7,
    msg: 'bad',
    details: 'why',
  });
  assert.deepEqual(errorJson(new CniError(50, 'later'), '1.1.0'), {
    cniVersion: '1.1.0',
    code: 50,
    msg: 'later',
  });
  const other = errorJson(new Error('boom'), '0.3.1');
  assert.equal(other.code, CniCode.Io);
  assert.match(other.msg, /boom/);
  assert.equal(new CniError(3, 'x').code, 'WEFT_CNI_3');
});

// ---- command logic with an in-memory delegate ----

interface FakeCall {
  command: string;
  conf: Json;
  env: NodeJS.ProcessEnv;
}

function fakeWorld(
  t: { after: (fn: () => void) => void },
  opts: { versions?: string[]; failAdd?: boolean; failDel?: () => boolean } = {},
): {
  dir: string;
  calls: FakeCall[];
  run: (cmd: string, conf: Json, env?: NodeJS.ProcessEnv) => Promise<{ code: number; out: Json | undefined }>;
} {
  const dir = tmp(t);
  writeFileSync(join(dir, 'subnet.env'), SUBNET_TEXT);
  // findPlugin needs an executable file; the fake exec below answers in its place.
  writeFileSync(join(dir, 'bridge'), '#!/bin/false\n');
  chmodSync(join(dir, 'bridge'), 0o755);
  const versions = opts.versions ?? ['0.3.0', '0.3.1', '0.4.0', '1.0.0'];
  const calls: FakeCall[] = [];
  const exec = (_path: string, env: NodeJS.ProcessEnv, stdin: string): Promise<ExecResult> => {
    const conf = JSON.parse(stdin) as Json;
    const command = env.CNI_COMMAND ?? '';
    calls.push({ command, conf, env });
    if (command === 'VERSION')
      return Promise.resolve({
        code: 0,
        stdout: JSON.stringify({ cniVersion: '1.0.0', supportedVersions: versions }),
        stderr: '',
      });
    if (!versions.includes(String(conf.cniVersion))) {
      return Promise.resolve({
        code: 1,
        stdout: JSON.stringify({ code: 1, msg: 'incompatible CNI versions' }),
        stderr: '',
      });
    }
    if (command === 'ADD') {
      if (opts.failAdd)
        return Promise.resolve({
          code: 1,
          stdout: JSON.stringify({ code: 11, msg: 'no veth today', details: 'd' }),
          stderr: '',
        });
      const result: Json = {
        cniVersion: conf.cniVersion,
        interfaces: [{ name: env.CNI_IFNAME }],
        ips: [
          {
            address: '10.244.3.2/24',
            gateway: '10.244.3.1',
            interface: 0,
            ...(String(conf.cniVersion).startsWith('0.') ? { version: '4' } : {}),
          },
        ],
      };
      return Promise.resolve({ code: 0, stdout: JSON.stringify(result), stderr: '' });
    }
    if (command === 'DEL' && opts.failDel?.()) {
      return Promise.resolve({ code: 1, stdout: JSON.stringify({ code: 11, msg: 'busy' }), stderr: '' });
    }
    return Promise.resolve({ code: 0, stdout: '', stderr: '' });
  };
  const run = async (cmd: string, conf: Json, env: NodeJS.ProcessEnv = {}) => {
    const r = await runPlugin({
      env: {
        CNI_COMMAND: cmd,
        CNI_CONTAINERID: 'c1',
        CNI_IFNAME: 'eth0',
        CNI_NETNS: '/run/netns/x',
        CNI_PATH: `/nonexistent:${dir}`,
        ...env,
      },
      stdin: JSON.stringify({
        name: 'weft',
        type: 'weft-cni',
        subnetFile: join(dir, 'subnet.env'),
        dataDir: join(dir, 'data'),
        ...conf,
      }),
      exec,
    });
    return { code: r.exitCode, out: r.stdout ? (JSON.parse(r.stdout) as Json) : undefined };
  };
  return { dir, calls, run };
}

void test('plugin: VERSION, missing/unknown command and bad env give spec error objects', async (t) => {
  const w = fakeWorld(t);
  const v = await runPlugin({ env: { CNI_COMMAND: 'VERSION' }, stdin: '{"cniVersion":"1.0.0"}' });
  assert.equal(v.exitCode, 0);
  assert.deepEqual(JSON.parse(v.stdout), {
    cniVersion: '1.1.0',
    supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'],
  });
  const none = await runPlugin({ env: {}, stdin: '{"cniVersion":"1.0.0","name":"n"}' });
  assert.equal(none.exitCode, 1);
  assert.deepEqual(JSON.parse(none.stdout), {
    cniVersion: '1.0.0',
    code: 4,
    msg: 'CNI_COMMAND is not set; weft-cni must be run by a container runtime (CNI spec)',
  });
  assert.equal((await w.run('FOO', { cniVersion: '1.0.0' })).out?.code, 4);
  assert.equal((await w.run('ADD', { cniVersion: '1.0.0' }, { CNI_CONTAINERID: '' })).out?.code, 4);
  assert.equal((await w.run('ADD', { cniVersion: '1.0.0' }, { CNI_CONTAINERID: 'bad/id' })).out?.code, 4);
  assert.equal((await w.run('ADD', { cniVersion: '1.0.0' }, { CNI_IFNAME: 'a:b' })).out?.code, 4);
  assert.equal((await w.run('ADD', { cniVersion: '1.0.0' }, { CNI_PATH: '/nonexistent' })).out?.code, 7);
  assert.equal((await w.run('CHECK', { cniVersion: '0.3.1', prevResult: {} })).out?.code, 1);
  assert.equal((await w.run('GC', { cniVersion: '1.0.0', 'cni.dev/valid-attachments': [] })).out?.code, 1);
  assert.equal((await w.run('STATUS', { cniVersion: '0.4.0' })).out?.code, 1);
  assert.equal((await w.run('GC', { cniVersion: '1.1.0' })).out?.code, 7);
  const err = await w.run('ADD', { cniVersion: '0.4.0', subnetFile: join(w.dir, 'missing.env') });
  assert.equal(err.code, 1);
  assert.equal(err.out?.code, CniCode.TryAgainLater);
  assert.equal(err.out?.cniVersion, '0.4.0');
  assert.match(String(err.out?.msg), /weftd/);
  const st = await w.run('STATUS', { cniVersion: '1.1.0', subnetFile: join(w.dir, 'missing.env') });
  assert.equal(st.out?.code, 50);
  assert.equal(w.calls.length, 0, 'no delegate was run for any of these');
});

void test('plugin: 1.1.0 is sent to a 1.0.0-only delegate as 1.0.0 and the result comes back as 1.1.0', async (t) => {
  const w = fakeWorld(t);
  const add = await w.run('ADD', { cniVersion: '1.1.0' });
  assert.equal(add.code, 0, JSON.stringify(add.out));
  assert.equal(add.out?.cniVersion, '1.1.0');
  assert.deepEqual(add.out?.ips, [{ address: '10.244.3.2/24', gateway: '10.244.3.1', interface: 0 }]);
  assert.deepEqual(
    w.calls.map((c) => [c.command, c.conf.cniVersion]),
    [
      ['VERSION', '1.1.0'],
      ['ADD', '1.0.0'],
    ],
  );
  const saved = JSON.parse(readFileSync(join(w.dir, 'data', 'c1-eth0'), 'utf8')) as Json;
  assert.equal(statSync(join(w.dir, 'data', 'c1-eth0')).mode & 0o777, 0o600);
  const { hairpinMode: _h, isDefaultGateway: _g, ...plain } = expectedDelegate('1.1.0');
  assert.deepEqual(saved.delegate, plain);
  assert.equal(saved.netns, '/run/netns/x');
  // CHECK converts prevResult down for the delegate.
  w.calls.length = 0;
  const chk = await w.run('CHECK', { cniVersion: '1.1.0', prevResult: add.out });
  assert.equal(chk.code, 0, JSON.stringify(chk.out));
  const sent = w.calls.find((c) => c.command === 'CHECK');
  assert.equal(sent?.conf.cniVersion, '1.0.0');
  assert.equal((sent?.conf.prevResult as Json).cniVersion, '1.0.0');
  // STATUS and GC are not forwarded to a delegate without them.
  w.calls.length = 0;
  assert.equal((await w.run('STATUS', { cniVersion: '1.1.0' })).code, 0);
  assert.deepEqual(
    w.calls.map((c) => c.command),
    ['VERSION'],
  );
});

void test('plugin: a legacy-version ADD goes straight to the delegate (one exec) with version fields', async (t) => {
  const w = fakeWorld(t);
  const add = await w.run('ADD', { cniVersion: '0.3.1' });
  assert.equal(add.code, 0);
  assert.deepEqual(
    w.calls.map((c) => c.command),
    ['ADD'],
  );
  assert.equal((add.out?.ips as Json[])[0]?.version, '4');
});

void test('plugin: ADD twice fails cleanly, DEL twice succeeds, failed ADD is undone', async (t) => {
  const w = fakeWorld(t);
  assert.equal((await w.run('ADD', { cniVersion: '1.0.0' })).code, 0);
  w.calls.length = 0;
  const again = await w.run('ADD', { cniVersion: '1.0.0' });
  assert.equal(again.code, 1);
  assert.equal(again.out?.code, CniCode.AlreadyAttached);
  assert.equal(w.calls.length, 0, 'the first attachment is left alone');
  assert.equal((await w.run('DEL', { cniVersion: '1.0.0' })).code, 0);
  assert.equal(w.calls.filter((c) => c.command === 'DEL').length, 1);
  assert.equal(existsSync(join(w.dir, 'data', 'c1-eth0')), false);
  assert.equal((await w.run('DEL', { cniVersion: '1.0.0' })).code, 0);
  assert.equal(w.calls.filter((c) => c.command === 'DEL').length, 1, 'second DEL had nothing to delegate');

  const f = fakeWorld(t, { failAdd: true });
  const failed = await f.run('ADD', { cniVersion: '1.0.0' });
  assert.equal(failed.code, 1);
  assert.deepEqual(failed.out, {
    cniVersion: '1.0.0',
    code: 11,
    msg: 'delegate "bridge" ADD failed: no veth today',
    details: 'd',
  });
  assert.deepEqual(
    f.calls.map((c) => c.command),
    ['ADD', 'DEL'],
  );
  assert.deepEqual(readdirSync(join(f.dir, 'data')), []);
});

void test('plugin: GC DELs stale attachments (with their ids) and keeps valid ones', async (t) => {
  const w = fakeWorld(t, { versions: ['1.0.0', '1.1.0'] });
  for (const id of ['keep', 'stale1', 'stale2'])
    assert.equal((await w.run('ADD', { cniVersion: '1.1.0' }, { CNI_CONTAINERID: id })).code, 0);
  writeFileSync(join(w.dir, 'data', '.tmp-999999999-x-eth0'), '{');
  w.calls.length = 0;
  const gc = await w.run(
    'GC',
    { cniVersion: '1.1.0', 'cni.dev/valid-attachments': [{ containerID: 'keep', ifname: 'eth0' }] },
    {
      CNI_CONTAINERID: '',
      CNI_IFNAME: '',
      CNI_NETNS: '',
    },
  );
  assert.equal(gc.code, 0, JSON.stringify(gc.out));
  assert.equal(gc.out, undefined, 'GC prints nothing on success');
  assert.deepEqual(readdirSync(join(w.dir, 'data')), ['keep-eth0']);
  const dels = w.calls.filter((c) => c.command === 'DEL').map((c) => c.env.CNI_CONTAINERID);
  assert.deepEqual(dels.sort(), ['stale1', 'stale2']);
  const fwd = w.calls.find((c) => c.command === 'GC');
  assert.deepEqual(fwd?.conf['cni.dev/valid-attachments'], [{ containerID: 'keep', ifname: 'eth0' }]);
  assert.equal(fwd?.conf.cniVersion, '1.1.0');
  // A 1.1.0 delegate is asked for STATUS too.
  w.calls.length = 0;
  assert.equal((await w.run('STATUS', { cniVersion: '1.1.0' })).code, 0);
  assert.deepEqual(
    w.calls.map((c) => c.command),
    ['VERSION', 'STATUS'],
  );
});

void test('install-cni: conflist is weft-cni then portmap', () => {
  assert.deepEqual(renderConflist({ pluginConf: { subnetFile: '/run/flannel/subnet.env' } }), {
    name: 'weft',
    cniVersion: '1.0.0',
    plugins: [
      {
        type: 'weft-cni',
        delegate: { hairpinMode: true, isDefaultGateway: true },
        subnetFile: '/run/flannel/subnet.env',
      },
      { type: 'portmap', capabilities: { portMappings: true } },
    ],
  });
});

void test('execProgram: stdin in, stdout/stderr/exit code out; a plugin that ignores stdin is fine', async (t) => {
  const d = tmp(t);
  const script = (name: string, body: string): string => {
    const p = join(d, name);
    writeFileSync(p, `#!/bin/sh\n${body}\n`);
    chmodSync(p, 0o755);
    return p;
  };
  const echo = await execProgram(
    script('echo', 'cat; echo "$CNI_COMMAND" >&2; exit 3'),
    { CNI_COMMAND: 'ADD' },
    '{"a":1}',
  );
  assert.deepEqual(echo, { code: 3, stdout: '{"a":1}', stderr: 'ADD\n' });
  // 1 MiB of stdin that is never read: the write fails with EPIPE, the exit status still counts.
  const deaf = await execProgram(script('deaf', 'echo ok'), {}, 'x'.repeat(1 << 20));
  assert.deepEqual(deaf, { code: 0, stdout: 'ok\n', stderr: '' });
  await assert.rejects(execProgram(join(d, 'missing'), {}, ''), /ENOENT/);
});

void test("plugin: when undoing a failed ADD fails too, the saved conf stays for the runtime's DEL", async (t) => {
  let delFails = true;
  const w = fakeWorld(t, { failAdd: true, failDel: () => delFails });
  const add = await w.run('ADD', { cniVersion: '1.0.0' });
  assert.equal(add.out?.code, 11);
  assert.deepEqual(readdirSync(join(w.dir, 'data')), ['c1-eth0']);
  const del = await w.run('DEL', { cniVersion: '1.0.0' });
  assert.equal(del.code, 1, 'DEL reports the delegate failure and keeps the state');
  assert.deepEqual(readdirSync(join(w.dir, 'data')), ['c1-eth0']);
  delFails = false;
  assert.equal((await w.run('DEL', { cniVersion: '1.0.0' })).code, 0);
  assert.deepEqual(readdirSync(join(w.dir, 'data')), []);
});
