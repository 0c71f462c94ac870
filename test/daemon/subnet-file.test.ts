// flannel's subnet.env: exact format, atomic replace, 0644, tolerant read, clear errors.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  formatSubnetFile,
  parseSubnetFile,
  readSubnetFile,
  SubnetFileError,
  writeSubnetFile,
} from '../../src/daemon/subnet-file.ts';
import { formatCidr, parseCidr } from '../../src/routing/ipv4.ts';

const content = {
  network: parseCidr('10.244.0.0/16'),
  subnet: parseCidr('10.244.3.0/24'),
  mtu: 1472,
  ipMasq: true,
};

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'weft-subnetfile-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

void test('format is flannel’s: FLANNEL_SUBNET is the first usable address', () => {
  assert.equal(
    formatSubnetFile(content),
    'FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n',
  );
});

void test('round trip through a file, created with its directory, mode 0644, no temp files left', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'run', 'weft', 'subnet.env');
  const old = process.umask(0o077);
  try {
    await writeSubnetFile(path, content);
  } finally {
    process.umask(old);
  }
  assert.equal((await stat(path)).mode & 0o777, 0o644);
  const back = await readSubnetFile(path);
  assert.ok(back);
  assert.equal(formatCidr(back.network), '10.244.0.0/16');
  assert.equal(formatCidr(back.subnet), '10.244.3.0/24', 'subnet read back in network-address form');
  assert.equal(back.mtu, 1472);
  assert.equal(back.ipMasq, true);
  assert.deepEqual(await readdir(join(dir, 'run', 'weft')), ['subnet.env']);
  assert.equal(await readSubnetFile(join(dir, 'missing.env')), undefined);
});

void test('tolerant parse: comments, blanks, quotes, export, CRLF, unknown keys', () => {
  const c = parseSubnetFile(
    '# written by hand\r\n\r\nexport FLANNEL_NETWORK="10.1.0.0/16"\r\nFLANNEL_SUBNET = 10.1.9.1/24  # ours\r\nFLANNEL_MTU=1400\r\nFLANNEL_IPMASQ=TRUE\r\nOTHER=1\r\n',
  );
  assert.equal(formatCidr(c.network), '10.1.0.0/16');
  assert.equal(formatCidr(c.subnet), '10.1.9.0/24');
  assert.equal(c.mtu, 1400);
  assert.equal(c.ipMasq, true);
});

void test('corrupt file -> SubnetFileError naming the file', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'subnet.env');
  for (const text of [
    'garbage\0\0',
    'FLANNEL_NETWORK=10.0.0.0/8\n',
    'FLANNEL_SUBNET=10.1.2.300/24\n',
    'FLANNEL_SUBNET=x',
  ]) {
    await writeFile(path, text);
    await assert.rejects(readSubnetFile(path), (err: unknown) => {
      assert.ok(err instanceof SubnetFileError);
      assert.equal(err.path, path);
      assert.ok(err.message.startsWith(`${path}: `));
      assert.equal(err.code, 'WEFT_SUBNET_FILE');
      return true;
    });
  }
});

void test('atomic replace: a concurrent reader only ever sees a complete old or new file', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'subnet.env');
  await writeSubnetFile(path, content);
  // A separate process reads in a tight loop while we rewrite the file many times.
  const reader = spawn(
    process.execPath,
    [
      '-e',
      `const fs=require('fs');const end=Date.now()+1500;let n=0,bad=0;
       while(Date.now()<end){let t;try{t=fs.readFileSync(process.argv[1],'utf8')}catch{bad++;continue}
       n++;if(!/^FLANNEL_NETWORK=.*\\nFLANNEL_SUBNET=.*\\nFLANNEL_MTU=\\d+\\nFLANNEL_IPMASQ=(true|false)\\n$/.test(t))bad++}
       process.stdout.write(JSON.stringify({n,bad}))`,
      path,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let out = '';
  reader.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((resolve) => reader.on('exit', () => resolve()));
  const end = Date.now() + 1200;
  let writes = 0;
  while (Date.now() < end) {
    await writeSubnetFile(path, {
      ...content,
      subnet: parseCidr(`10.244.${writes % 250}.0/24`),
      ipMasq: writes % 2 === 0,
    });
    writes++;
  }
  await exited;
  const { n, bad } = JSON.parse(out) as { n: number; bad: number };
  assert.ok(writes >= 10, `wrote ${writes} times`);
  assert.ok(n > 50, `read ${n} times`);
  assert.equal(bad, 0, 'no partial or missing file seen');
  assert.equal((await readFile(path, 'utf8')).split('\n').length, 5);
});
