// The weftd program itself: --help, exit codes for bad flags and bad config (no devices made).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { writeEmbeddedConfig } from '../../src/lease/embedded/store.ts';
import { programCommand } from '../../src/util/self.ts';

function weftd(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number | null; out: string; err: string }> {
  const { cmd, args: pre } = programCommand('weftd');
  return new Promise((resolve) => {
    const child = spawn(cmd, [...pre, ...args], {
      env: { PATH: process.env.PATH, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => resolve({ code, out, err }));
  });
}

void test('--help prints every flag and exits 0', async () => {
  const r = await weftd(['--help']);
  assert.equal(r.code, 0);
  assert.match(r.out, /Usage: weftd/);
  assert.match(r.out, /--subnet-lease-renew-margin=N/);
  assert.match(r.out, /WEFTD_SUBNET_FILE/);
});

void test('a bad flag or env value exits 2 with a message naming it', async () => {
  const r = await weftd(['--healthz-port=99999']);
  assert.equal(r.code, 2);
  assert.match(r.err, /^weftd: healthz-port: 99999 is not a port/);
  const e = await weftd([], { WEFTD_LEASE_STORE: 'zookeeper' });
  assert.equal(e.code, 2);
  assert.match(e.err, /lease-store: "zookeeper" is not a store/);
});

void test('an invalid network config exits 2 before any lease or subnet file', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'weft-cli-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeEmbeddedConfig(join(dir, 'store'), { Network: '10.1.0.0/16' });
  // Corrupt it behind the validator's back: SubnetLen too long.
  const { writeFile } = await import('node:fs/promises');
  await writeFile(join(dir, 'store', 'config'), '{"Network":"10.1.0.0/16","SubnetLen":31}');
  const r = await weftd([
    '--lease-store=embedded',
    `--store-dir=${join(dir, 'store')}`,
    `--subnet-file=${join(dir, 'subnet.env')}`,
    '--iface=127.0.0.1',
  ]);
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /SubnetLen: 31 is too long/);
  assert.equal(existsSync(join(dir, 'subnet.env')), false);
});
