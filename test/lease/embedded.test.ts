// The embedded (directory) lease store: the LeaseStore contract, plus what only it has to
// get right — several processes sharing one directory, expiry by time, corrupt files.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { EmbeddedLeaseStore, writeEmbeddedConfig } from '../../src/lease/embedded/store.ts';
import { cidrEquals, cidrToKey, parseCidr } from '../../src/routing/ipv4.ts';
import {
  CONTRACT_NETWORK,
  CONTRACT_TINY_NETWORK,
  EventLog,
  leaseStoreContract,
  nodeAttrs,
} from './contract.ts';

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'weft-embedded-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

leaseStoreContract('embedded', async (netConf) => {
  const dir = await mkdtemp(join(tmpdir(), 'weft-embedded-contract-'));
  await writeEmbeddedConfig(dir, netConf);
  const open = (): Promise<EmbeddedLeaseStore> => EmbeddedLeaseStore.open({ dir, rescanMs: 200 });
  const store = await open();
  return {
    store,
    peerStore: open,
    removeLease: (subnet) => store.deleteLease(subnet),
    reserve: (subnet, attrs) => store.reserve(subnet, attrs),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
});

void test('two stores on one directory racing for subnets never get the same one (many rounds)', async (t) => {
  const dir = await tempDir(t);
  await writeEmbeddedConfig(dir, CONTRACT_TINY_NETWORK); // 3 subnets: every round fills the network
  const a = await EmbeddedLeaseStore.open({ dir });
  const b = await EmbeddedLeaseStore.open({ dir });
  const c = await EmbeddedLeaseStore.open({ dir });
  t.after(() => Promise.all([a.close(), b.close(), c.close()]).then(() => undefined));
  for (let round = 0; round < 40; round++) {
    const leases = await Promise.all([
      a.acquire(nodeAttrs(1)),
      b.acquire(nodeAttrs(2)),
      c.acquire(nodeAttrs(3)),
    ]);
    const keys = new Set(leases.map((l) => cidrToKey(l.subnet)));
    assert.equal(keys.size, 3, `round ${round}: ${[...keys].join(' ')}`);
    assert.equal((await readdir(join(dir, 'subnets'))).length, 3);
    await Promise.all([a.release(leases[0]), b.release(leases[1]), c.release(leases[2])]);
  }
  assert.deepEqual(await readdir(join(dir, 'tmp')), [], 'no temp files left behind');
});

void test('separate processes on one directory racing for subnets get distinct subnets', async (t) => {
  const dir = await tempDir(t);
  await writeEmbeddedConfig(dir, { Network: '10.70.0.0/24', SubnetLen: 28 }); // 15 subnets
  const storeUrl = new URL('../../src/lease/embedded/store.ts', import.meta.url).href;
  const script = `
    const { EmbeddedLeaseStore } = await import(${JSON.stringify(storeUrl)});
    const s = await EmbeddedLeaseStore.open({ dir: process.argv[1] });
    const out = [];
    for (let i = 0; i < 3; i++) {
      const l = await s.acquire({ publicIp: '198.19.' + process.argv[2] + '.' + i, backendType: 'udp', backendData: null });
      out.push(l.subnet.addr + '/' + l.subnet.prefix);
    }
    process.stdout.write(JSON.stringify(out));
  `;
  const runOne = (n: number): Promise<string[]> =>
    new Promise((resolve, reject) => {
      const child = spawn(
        process.execPath,
        ['--import', 'tsx', '--input-type=module', '-e', script, dir, String(n)],
        {
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      child.on('exit', (code) =>
        code === 0 ? resolve(JSON.parse(out) as string[]) : reject(new Error(err)),
      );
    });
  const results = (await Promise.all([1, 2, 3, 4].map(runOne))).flat();
  assert.equal(results.length, 12);
  assert.equal(new Set(results).size, 12, `distinct: ${results.join(' ')}`);
});

void test('an expired lease is not a peer and its subnet can be taken; a renewed one stays', async (t) => {
  const dir = await tempDir(t);
  await writeEmbeddedConfig(dir, CONTRACT_TINY_NETWORK);
  let now = 1_000_000;
  const clock = (): number => now;
  const a = await EmbeddedLeaseStore.open({ dir, now: clock, ttlMs: 10_000, rescanMs: 50 });
  const b = await EmbeddedLeaseStore.open({ dir, now: clock, ttlMs: 10_000, rescanMs: 50 });
  const c = await EmbeddedLeaseStore.open({ dir, now: clock, ttlMs: 10_000 });
  t.after(() => Promise.all([a.close(), b.close(), c.close()]).then(() => undefined));
  const la = await a.acquire(nodeAttrs(1));
  assert.equal(la.expiresAt, now + 10_000);
  const lb = await b.acquire(nodeAttrs(2));
  const lc = await c.acquire(nodeAttrs(3));
  const log = new EventLog();
  const ac = new AbortController();
  const watching = a.watch(la.subnet, {
    signal: ac.signal,
    onEvents: log.onEvents,
    onOwnLeaseLost: log.onOwnLeaseLost,
  });
  t.after(async () => {
    ac.abort();
    await watching;
  });
  await log.waitFor('both peers', () => log.peers().size === 2);

  now += 6_000;
  const la2 = await a.renew(la);
  assert.equal(la2.expiresAt, now + 10_000);
  now += 6_000; // b and c expired, a renewed
  await log.waitFor('expired peers removed', () => log.peers().size === 0);
  assert.equal(log.lost.length, 0, 'our renewed lease is not lost');
  await assert.rejects(b.renew(lb), /gone, expired or taken/);

  // The network is "full" of files, but two are expired: a newcomer may take one.
  const d = await EmbeddedLeaseStore.open({ dir, now: clock, ttlMs: 10_000 });
  t.after(() => d.close());
  const ld = await d.acquire(nodeAttrs(4), { previousSubnet: lc.subnet });
  assert.ok(cidrEquals(ld.subnet, lc.subnet), 'expired subnet reused');
  await log.waitFor('the newcomer added', () => log.peers().has(cidrToKey(ld.subnet)));

  now += 20_000; // our own lease expires too
  await log.waitFor('own lease lost on expiry', () => log.lost.length === 1, 2000);
});

void test('a lease taken over by another node counts as lost for its former holder', async (t) => {
  const dir = await tempDir(t);
  await writeEmbeddedConfig(dir, CONTRACT_NETWORK);
  const a = await EmbeddedLeaseStore.open({ dir });
  t.after(() => a.close());
  const la = await a.acquire(nodeAttrs(1));
  const log = new EventLog();
  const ac = new AbortController();
  const watching = a.watch(la.subnet, {
    signal: ac.signal,
    onEvents: log.onEvents,
    onOwnLeaseLost: log.onOwnLeaseLost,
  });
  t.after(async () => {
    ac.abort();
    await watching;
  });
  await log.waitFor('first batch', () => log.batches.length > 0);
  // An operator hands the subnet to someone else (file rewritten in place).
  await writeFile(
    join(dir, 'subnets', cidrToKey(la.subnet)),
    JSON.stringify({
      PublicIP: '198.18.0.99',
      BackendType: 'udp',
      BackendData: null,
      ExpiresAt: Date.now() + 60_000,
    }),
  );
  await log.waitFor('lost', () => log.lost.length === 1);
  assert.ok(cidrEquals(log.lost[0]!, la.subnet));
});

void test('corrupt lease files are skipped as peers but never handed out', async (t) => {
  const dir = await tempDir(t);
  await writeEmbeddedConfig(dir, CONTRACT_TINY_NETWORK);
  await mkdir(join(dir, 'subnets'));
  await writeFile(join(dir, 'subnets', '10.67.0.4-30'), '{not json');
  await writeFile(join(dir, 'subnets', '10.67.0.8-30'), '{"PublicIP": 5}');
  await writeFile(join(dir, 'subnets', 'README'), 'not a lease');
  const a = await EmbeddedLeaseStore.open({ dir });
  t.after(() => a.close());
  const la = await a.acquire(nodeAttrs(1), { previousSubnet: parseCidr('10.67.0.4/30') });
  assert.ok(cidrEquals(la.subnet, parseCidr('10.67.0.12/30')), 'the only clean subnet');
  const b = await EmbeddedLeaseStore.open({ dir });
  t.after(() => b.close());
  await assert.rejects(b.acquire(nodeAttrs(2)), /no free \/30 subnet/);
  assert.equal(
    await readFile(join(dir, 'subnets', '10.67.0.4-30'), 'utf8'),
    '{not json',
    'corrupt file untouched',
  );
});

void test('seeding the config: first writer wins, a missing config is a clear error', async (t) => {
  const dir = await tempDir(t);
  await assert.rejects(
    (await EmbeddedLeaseStore.open({ dir })).getNetworkConfig(),
    /net-config: cannot read .*config.*--net-config-path/,
  );
  const a = await EmbeddedLeaseStore.open({ dir, netConfig: '{"Network":"10.80.0.0/16"}' });
  const b = await EmbeddedLeaseStore.open({ dir, netConfig: '{"Network":"10.81.0.0/16"}' });
  t.after(() => Promise.all([a.close(), b.close()]).then(() => undefined));
  assert.equal((await b.getNetworkConfig()).raw.Network, '10.80.0.0/16');
  await assert.rejects(
    EmbeddedLeaseStore.open({ dir, netConfig: '{"Network":"10.0.0.0/30"}' }),
    /Network: .*too small/,
  );
});
