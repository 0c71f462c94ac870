/**
 * --cni-bundle-node: weftd in a container installs a plugin the host can run without
 * Node.js: the node binary is copied next to the plugin (once; unchanged copies are kept)
 * and the plugin's shebang names it by the host's path of the bin dir.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { installCni, NODE_COPY } from '../../src/daemon/install-cni.ts';
import { cniInstallOptions } from '../../src/daemon/daemon.ts';
import { parseOptions } from '../../src/daemon/options.ts';
import { projectRoot } from '../../src/util/self.ts';

void test('bundleNode copies node beside the plugin and the shebang names it by the host path', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-cni-node-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const binDir = join(dir, 'host', 'opt', 'cni', 'bin');
  const opts = parseOptions(
    [
      '--install-cni',
      '--cni-bundle-node',
      `--cni-bin-dir=${binDir}`,
      '--cni-host-bin-dir=/opt/cni/bin',
      `--cni-conf-dir=${join(dir, 'net.d')}`,
    ],
    {},
  );
  const cni = await cniInstallOptions(opts);
  assert.equal(cni.bundleNode, true);
  assert.equal(cni.hostBinDir, '/opt/cni/bin');
  const res = installCni({ ...cni, source: join(projectRoot, 'dist/weft-cni.cjs') });
  const copy = join(binDir, NODE_COPY);
  assert.equal(statSync(copy).size, statSync(process.execPath).size);
  assert.equal(statSync(copy).mode & 0o777, 0o755);
  const firstLine = readFileSync(res.binary, 'utf8').split('\n')[0] ?? '';
  assert.equal(firstLine, `#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS /opt/cni/bin/${NODE_COPY}`);
  // The copy is a working node.
  assert.equal(execFileSync(copy, ['-p', '1+1']).toString().trim(), '2');
  // A second install keeps the unchanged copy (same inode, no rewrite of ~100 MB).
  const ino = statSync(copy).ino;
  installCni({ ...cni, source: join(projectRoot, 'dist/weft-cni.cjs') });
  assert.equal(statSync(copy).ino, ino);
});

void test('without bundleNode the shebang names the running node and nothing is copied', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-cni-node-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const cni = await cniInstallOptions(
    parseOptions(
      ['--install-cni', `--cni-bin-dir=${join(dir, 'bin')}`, `--cni-conf-dir=${join(dir, 'net.d')}`],
      {},
    ),
  );
  const res = installCni({ ...cni, source: join(projectRoot, 'dist/weft-cni.cjs') });
  assert.match(readFileSync(res.binary, 'utf8').split('\n')[0] ?? '', new RegExp(`${process.execPath}$`));
  assert.throws(() => statSync(join(dir, 'bin', NODE_COPY)));
});
