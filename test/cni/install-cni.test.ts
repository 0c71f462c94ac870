/**
 * installCni: the plugin lands in the bin dir as an executable `weft-cni` that answers
 * VERSION, the conflist (weft-cni + portmap) lands in the conf dir, both written atomically
 * and re-runnable, and a missing bundle is a ConfigError that says how to build it.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { installCni } from '../../src/daemon/install-cni.ts';
import { ConfigError } from '../../src/util/errors.ts';
import { buildBundle } from './helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'weft-cni-install-'));
after(() => rmSync(dir, { recursive: true, force: true }));

void test('installs an executable plugin and a weft-cni + portmap conflist, atomically and idempotently', () => {
  const source = buildBundle(dir);
  const binDir = join(dir, 'opt/cni/bin');
  const confDir = join(dir, 'etc/cni/net.d');
  for (let round = 0; round < 2; round++) {
    const got = installCni({
      binDir,
      confDir,
      source,
      pluginConf: { subnetFile: '/run/flannel/subnet.env' },
    });
    assert.deepEqual(got, { binary: join(binDir, 'weft-cni'), conflist: join(confDir, '10-weft.conflist') });
  }
  assert.deepEqual(readdirSync(binDir), ['weft-cni'], 'no temp files left');
  assert.deepEqual(readdirSync(confDir), ['10-weft.conflist']);
  assert.equal(statSync(join(binDir, 'weft-cni')).mode & 0o777, 0o755);
  assert.equal(statSync(join(confDir, '10-weft.conflist')).mode & 0o777, 0o644);
  const code = readFileSync(join(binDir, 'weft-cni'), 'utf8');
  assert.equal(code.split('\n')[0], `#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS ${process.execPath}`);
  assert.equal(code.split('\n')[1]?.startsWith('#!'), false, 'only one shebang');
  const out = execFileSync(join(binDir, 'weft-cni'), [], {
    env: { CNI_COMMAND: 'VERSION' },
    input: '{"cniVersion":"1.0.0"}',
  });
  assert.deepEqual(JSON.parse(out.toString()), {
    cniVersion: '1.1.0',
    supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'],
  });
  // The ESM bundle (dist/weft-cni.js) answers the same when run with node inside the project.
  const esm = execFileSync(process.execPath, [source.replace(/\.cjs$/, '.js')], {
    env: { CNI_COMMAND: 'VERSION' },
    input: '{}',
  });
  assert.deepEqual(JSON.parse(esm.toString()), JSON.parse(out.toString()));
  const conflist = JSON.parse(readFileSync(join(confDir, '10-weft.conflist'), 'utf8')) as Record<
    string,
    unknown
  >;
  assert.deepEqual(conflist, {
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

void test('a missing bundle is a ConfigError that says how to build it', () => {
  assert.throws(
    () => installCni({ binDir: join(dir, 'b'), confDir: join(dir, 'c'), source: join(dir, 'nope.js') }),
    (e: unknown) => e instanceof ConfigError && /build-cni\.mjs/.test(e.message),
  );
});
