// The daemon's life cycle against twins: the embedded store in a temp dir, a fake backend,
// a fake underlay and a manual clock (renewals without waiting hours).
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Backend, BackendContext, BackendStats, PreparedBackend } from '../../src/backend/backend.ts';
import { cniInstallOptions, startDaemon } from '../../src/daemon/daemon.ts';
import type { InstallCniOptions } from '../../src/daemon/install-cni.ts';
import type { Clock, DaemonDeps, DaemonHandle } from '../../src/daemon/daemon.ts';
import { parseOptions } from '../../src/daemon/options.ts';
import { readSubnetFile } from '../../src/daemon/subnet-file.ts';
import { EmbeddedLeaseStore, writeEmbeddedConfig } from '../../src/lease/embedded/store.ts';
import type { Lease, LeaseEvent, LeaseStore } from '../../src/lease/types.ts';
import { cidrEquals, cidrToKey, formatCidr, parseCidr, parseIpv4 } from '../../src/routing/ipv4.ts';
import { ConfigError } from '../../src/util/errors.ts';
import { silentLogger } from '../../src/util/log.ts';
import { EventLog, nodeAttrs } from '../lease/contract.ts';

const HOUR = 3_600_000;

/** Timers that fire only when the test moves time forward. */
class ManualClock implements Clock {
  t = 1_700_000_000_000;
  private timers: { id: number; at: number; fn: () => void }[] = [];
  private nextId = 1;
  now = (): number => this.t;
  setTimeout = (fn: () => void, ms: number): unknown => {
    const id = this.nextId++;
    this.timers.push({ id, at: this.t + Math.max(0, ms), fn });
    return id;
  };
  clearTimeout = (h: unknown): void => {
    this.timers = this.timers.filter((x) => x.id !== h);
  };
  get pending(): number[] {
    return this.timers.map((x) => x.at - this.t).sort((a, b) => a - b);
  }
  /** Moves time forward by `ms`, firing due timers in order. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      const due = this.timers.filter((x) => x.at <= end).sort((a, b) => a.at - b.at)[0];
      if (!due) break;
      this.timers = this.timers.filter((x) => x !== due);
      this.t = due.at;
      due.fn();
      await new Promise((r) => setTimeout(r, 5));
    }
    this.t = end;
  }
}

/** Records the life cycle; asserts the subnet file exists whenever start() runs. */
class FakeBackend implements Backend {
  readonly type = 'udp';
  readonly calls: string[] = [];
  readonly applied: LeaseEvent[] = [];
  started: Lease | undefined;
  subnetFileAtPrepare: boolean | undefined;
  subnetFileAtStart: string | undefined;
  constructor(
    readonly ctx: BackendContext,
    private readonly subnetFile: string,
  ) {}
  prepare(): Promise<PreparedBackend> {
    this.calls.push('prepare');
    this.subnetFileAtPrepare = existsSync(this.subnetFile);
    return Promise.resolve({ backendType: 'udp', backendData: null, mtu: this.ctx.underlay.mtu - 28 });
  }
  async start(lease: Lease): Promise<void> {
    this.calls.push(`start ${formatCidr(lease.subnet)}`);
    this.subnetFileAtStart = await readFile(this.subnetFile, 'utf8');
    this.started = lease;
  }
  applyPeers(events: readonly LeaseEvent[]): void {
    this.applied.push(...events);
  }
  peers(): Set<string> {
    const s = new Set<string>();
    for (const e of this.applied) {
      if (e.type === 'added') s.add(cidrToKey(e.lease.subnet));
      else s.delete(cidrToKey(e.lease.subnet));
    }
    return s;
  }
  stats(): BackendStats {
    return { applied: this.applied.length };
  }
  stop(): Promise<void> {
    this.calls.push('stop');
    this.started = undefined;
    return Promise.resolve();
  }
}

interface Rig {
  dir: string;
  storeDir: string;
  subnetFile: string;
  clock: ManualClock;
  backend: () => FakeBackend;
  store: () => EmbeddedLeaseStore;
  daemon: DaemonHandle;
  /** A store for another node on the same directory. */
  peer: () => Promise<EmbeddedLeaseStore>;
}

async function rig(
  t: { after: (fn: () => Promise<void>) => void },
  opts: {
    argv?: string[];
    netConf?: Record<string, unknown>;
    before?: (dir: string, subnetFile: string) => Promise<void>;
    wrapStore?: (s: EmbeddedLeaseStore) => LeaseStore;
    deps?: Partial<DaemonDeps>;
  } = {},
): Promise<Rig> {
  const dir = await mkdtemp(join(tmpdir(), 'weft-daemon-'));
  const storeDir = join(dir, 'store');
  const subnetFile = join(dir, 'run', 'subnet.env');
  await writeEmbeddedConfig(storeDir, opts.netConf ?? { Network: '10.66.0.0/16', Backend: { Type: 'udp' } });
  await opts.before?.(dir, subnetFile);
  const clock = new ManualClock();
  let backend: FakeBackend | undefined;
  let store: EmbeddedLeaseStore | undefined;
  const peers: EmbeddedLeaseStore[] = [];
  const options = parseOptions(
    [
      '--lease-store=embedded',
      `--store-dir=${storeDir}`,
      `--subnet-file=${subnetFile}`,
      `--state-dir=${join(dir, 'state')}`,
      ...(opts.argv ?? []),
    ],
    {},
  );
  const daemon = startDaemon(options, {
    log: silentLogger(),
    clock,
    retryMs: 50,
    openStore: async () => {
      store = await EmbeddedLeaseStore.open({
        dir: storeDir,
        now: clock.now,
        ttlMs: 3 * HOUR,
        rescanMs: 100,
      });
      return opts.wrapStore ? opts.wrapStore(store) : store;
    },
    createBackend: (_type, ctx) => (backend = new FakeBackend(ctx, subnetFile)),
    pickUnderlay: () => Promise.resolve({ iface: 'eth0', addr: parseIpv4('198.18.0.1'), mtu: 1500 }),
    ...opts.deps,
  });
  t.after(async () => {
    await daemon.stop();
    for (const p of peers) await p.close();
    await rm(dir, { recursive: true, force: true });
  });
  return {
    dir,
    storeDir,
    subnetFile,
    clock,
    daemon,
    backend: () => backend as FakeBackend,
    store: () => store as EmbeddedLeaseStore,
    peer: async () => {
      const p = await EmbeddedLeaseStore.open({ dir: storeDir, now: clock.now, ttlMs: 3 * HOUR });
      peers.push(p);
      return p;
    },
  };
}

async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 1000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

void test('start: lease first, then the subnet file, then the data path; ready with status', async (t) => {
  const r = await rig(t);
  await r.daemon.ready;
  const b = r.backend();
  assert.equal(b.subnetFileAtPrepare, false, 'no subnet file before the lease');
  assert.deepEqual(b.calls, ['prepare', `start ${formatCidr(b.started!.subnet)}`]);
  const lease = b.started!;
  assert.ok(
    b.subnetFileAtStart?.includes(
      `FLANNEL_SUBNET=${formatCidr({ ...lease.subnet, addr: lease.subnet.addr + 1 })}`,
    ),
  );
  const file = await readSubnetFile(r.subnetFile);
  assert.ok(file && cidrEquals(file.subnet, lease.subnet));
  assert.equal(file.mtu, 1472);
  assert.equal(formatCidr(file.network), '10.66.0.0/16');
  assert.equal(file.ipMasq, false);
  const held = await r.store().leases();
  assert.equal(held.length, 1);
  assert.equal(held[0]!.attrs.publicIp, '198.18.0.1');
  assert.equal(b.ctx.publicIp, parseIpv4('198.18.0.1'));
  const s = r.daemon.status();
  assert.equal(s.state, 'running');
  assert.equal(s.ready, true);
  assert.equal(s.reason, undefined);
  assert.equal(s.lease?.subnet, formatCidr(lease.subnet));
  assert.equal(s.store, 'embedded');
  assert.equal(s.mtu, 1472);
  assert.deepEqual(s.backendStats, { applied: 0 });
});

void test('the subnet file is not written while the lease is still being acquired', async (t) => {
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const r = await rig(t, {
    wrapStore: (s) =>
      Object.assign(Object.create(s) as EmbeddedLeaseStore, {
        acquire: async (...args: Parameters<LeaseStore['acquire']>) => {
          await gate;
          return s.acquire(...args);
        },
      }),
  });
  await until('prepare', () => r.backend()?.calls.includes('prepare') ?? false);
  await new Promise((res) => setTimeout(res, 100));
  assert.equal(existsSync(r.subnetFile), false);
  const s = r.daemon.status();
  assert.equal(s.ready, false);
  assert.match(s.reason ?? '', /starting/);
  release();
  await r.daemon.ready;
  assert.ok(existsSync(r.subnetFile));
  assert.equal(r.daemon.status().ready, true);
});

void test('peers reach the backend within 1 s (first the existing ones, then changes)', async (t) => {
  const r = await rig(t);
  await r.daemon.ready;
  const b = r.backend();
  const p1 = await r.peer();
  const t0 = Date.now();
  const early = await p1.acquire(nodeAttrs(2));
  await until('peer 2 added', () => b.peers().has(cidrToKey(early.subnet)));
  assert.ok(Date.now() - t0 < 1000);
  const p2 = await r.peer();
  const l3 = await p2.acquire(nodeAttrs(3));
  await until('peer 3 added', () => b.peers().has(cidrToKey(l3.subnet)));
  await p1.release(early);
  await until('peer 2 removed', () => !b.peers().has(cidrToKey(early.subnet)));
  assert.deepEqual([...b.peers()], [cidrToKey(l3.subnet)]);
  assert.ok(
    b.applied.every((e) => !cidrEquals(e.lease.subnet, b.started!.subnet)),
    'never our own lease',
  );
  const s = r.daemon.status();
  assert.deepEqual(
    s.peers.map((p) => p.subnet),
    [formatCidr(l3.subnet)],
  );
  assert.equal(s.peers[0]?.publicIp, '198.18.0.3');
});

void test('renews at expiry minus the margin, retries every minute on failure', async (t) => {
  let failNext = 0;
  let renews = 0;
  const r = await rig(t, {
    wrapStore: (s) =>
      Object.assign(Object.create(s) as EmbeddedLeaseStore, {
        renew: async (...args: Parameters<LeaseStore['renew']>) => {
          renews++;
          if (failNext > 0) {
            failNext--;
            throw new Error('store unreachable');
          }
          return s.renew(...args);
        },
      }),
  });
  await r.daemon.ready;
  const first = r.backend().started!;
  assert.equal(first.expiresAt, r.clock.t + 3 * HOUR);
  assert.deepEqual(r.clock.pending, [2 * HOUR], 'renew scheduled at expiry - 60 min');
  await r.clock.advance(2 * HOUR - 1000);
  assert.equal(renews, 0);
  await r.clock.advance(1000);
  await until('renewed', () => r.daemon.status().counters.leaseRenewed === 1);
  const [file] = await r.store().leases();
  assert.equal(file!.expiresAt, r.clock.t + 3 * HOUR, 'expiry pushed out in the store');

  failNext = 2;
  await r.clock.advance(2 * HOUR);
  await until('first failure', () => r.daemon.status().counters.renewFailures === 1);
  assert.deepEqual(r.clock.pending, [60_000], 'retry in one minute');
  await r.clock.advance(60_000);
  await until('second failure', () => r.daemon.status().counters.renewFailures === 2);
  await r.clock.advance(60_000);
  await until('renewed again', () => r.daemon.status().counters.leaseRenewed === 2);
  assert.equal(renews, 4);
  assert.equal(r.daemon.status().ready, true);
  assert.equal(r.backend().calls.filter((c) => c.startsWith('start')).length, 1, 'data path untouched');
});

void test('own lease deleted -> re-acquired with the same subnet, data path untouched', async (t) => {
  const r = await rig(t);
  await r.daemon.ready;
  const lease = r.backend().started!;
  await r.store().deleteLease(lease.subnet);
  await until('lease lost and re-acquired', () => {
    const c = r.daemon.status().counters;
    return c.leaseLost === 1 && c.leaseAcquired === 2;
  });
  const held = await r.store().leases();
  assert.equal(held.length, 1);
  assert.ok(cidrEquals(held[0]!.subnet, lease.subnet), 'same subnet');
  assert.equal(held[0]!.attrs.publicIp, '198.18.0.1');
  assert.equal(r.backend().calls.filter((c) => c.startsWith('start')).length, 1);
  assert.equal(r.daemon.status().counters.subnetChanged, 0);
  await until('ready again', () => r.daemon.status().ready);
});

void test('own lease taken by another node -> a new subnet, data path restarted, subnet file rewritten', async (t) => {
  const r = await rig(t);
  await r.daemon.ready;
  const lease = r.backend().started!;
  // Another node's lease replaces ours in one atomic step (as if it grabbed the subnet
  // between our lease vanishing and our noticing): no window in which we could take it back.
  const theirs = { subnet: lease.subnet };
  const a = nodeAttrs(9);
  const leaseFile = join(r.storeDir, 'subnets', cidrToKey(lease.subnet));
  await writeFile(
    `${leaseFile}.intruder`,
    JSON.stringify({
      PublicIP: a.publicIp,
      PublicIPv6: null,
      BackendType: a.backendType,
      BackendData: a.backendData,
      ExpiresAt: r.clock.now() + HOUR,
    }),
  );
  await rename(`${leaseFile}.intruder`, leaseFile);
  await until('moved to a new subnet', () => r.daemon.status().counters.subnetChanged === 1, 2000);
  await until('ready again', () => r.daemon.status().ready, 2000);
  const b = r.backend();
  assert.equal(b.calls.filter((c) => c === 'stop').length, 1);
  assert.equal(b.calls.filter((c) => c.startsWith('start')).length, 2);
  assert.ok(!cidrEquals(b.started!.subnet, lease.subnet));
  const file = await readSubnetFile(r.subnetFile);
  assert.ok(file && cidrEquals(file.subnet, b.started!.subnet));
  // The intruder is now a peer.
  await until('intruder is a peer', () => b.peers().has(cidrToKey(theirs.subnet)));
});

void test('previous subnet from the subnet file is reused; a corrupt file is ignored', async (t) => {
  const r = await rig(t, {
    before: async (_dir, subnetFile) => {
      await import('node:fs/promises').then((fs) => fs.mkdir(join(subnetFile, '..'), { recursive: true }));
      await writeFile(
        subnetFile,
        'FLANNEL_NETWORK=10.66.0.0/16\nFLANNEL_SUBNET=10.66.77.1/24\nFLANNEL_MTU=1472\n',
      );
    },
  });
  await r.daemon.ready;
  assert.equal(formatCidr(r.backend().started!.subnet), '10.66.77.0/24');

  const r2 = await rig(t, {
    before: async (_dir, subnetFile) => {
      await import('node:fs/promises').then((fs) => fs.mkdir(join(subnetFile, '..'), { recursive: true }));
      await writeFile(subnetFile, '\0\0garbage');
    },
  });
  await r2.daemon.ready;
  const file = await readSubnetFile(r2.subnetFile);
  assert.ok(file && cidrEquals(file.subnet, r2.backend().started!.subnet), 'corrupt file replaced');
});

void test('graceful stop keeps the lease (restart keeps the subnet); --release-on-exit gives it back', async (t) => {
  const r = await rig(t);
  await r.daemon.ready;
  const lease = r.backend().started!;
  await r.daemon.stop();
  assert.deepEqual(await r.daemon.done, {});
  assert.equal(r.daemon.state, 'stopped');
  assert.equal(r.backend().calls.at(-1), 'stop');
  assert.equal(r.daemon.status().ready, false);
  const after = await (await r.peer()).leases();
  assert.ok(
    after.some((l) => cidrEquals(l.subnet, lease.subnet)),
    'lease kept',
  );
  assert.ok(existsSync(r.subnetFile), 'subnet file kept for the restart');

  const r2 = await rig(t, { argv: ['--release-on-exit'] });
  await r2.daemon.ready;
  await r2.daemon.stop();
  assert.deepEqual(await (await r2.peer()).leases(), []);
  assert.equal(existsSync(r2.subnetFile), false);
});

void test('stop during start-up is clean; a config error fails start with ConfigError', async (t) => {
  const r = await rig(t, {
    wrapStore: (s) =>
      Object.assign(Object.create(s) as EmbeddedLeaseStore, {
        acquire: () => new Promise<Lease>(() => undefined), // never answers
      }),
  });
  await until('prepare', () => r.backend()?.calls.includes('prepare') ?? false);
  await r.daemon.stop();
  assert.deepEqual(await r.daemon.done, {});

  // The rig's fake backend accepts any type: use the real registry for the config error.
  const dir = await mkdtemp(join(tmpdir(), 'weft-daemon-bad-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeEmbeddedConfig(dir, { Network: '10.66.0.0/16', Backend: { Type: 'carrier-pigeon' } });
  const d = startDaemon(
    parseOptions(['--lease-store=embedded', `--store-dir=${dir}`, `--subnet-file=${join(dir, 's.env')}`], {}),
    {
      log: silentLogger(),
      pickUnderlay: () => Promise.resolve({ iface: 'eth0', addr: parseIpv4('198.18.0.1'), mtu: 1500 }),
    },
  );
  await assert.rejects(
    d.ready,
    (err: unknown) => err instanceof ConfigError && /Backend\.Type.*carrier-pigeon.*udp/.test(err.message),
  );
  const done = await d.done;
  assert.ok(done.error instanceof ConfigError);
  assert.equal(d.state, 'failed');
  assert.equal(existsSync(join(dir, 's.env')), false, 'no subnet file without a lease');
});

void test('a peer watch sees the daemon as a peer with its public IP (EventLog twin check)', async (t) => {
  const r = await rig(t);
  await r.daemon.ready;
  const p = await r.peer();
  const mine = await p.acquire(nodeAttrs(5));
  const log = new EventLog();
  const ac = new AbortController();
  const w = p.watch(mine.subnet, { signal: ac.signal, onEvents: log.onEvents });
  t.after(async () => {
    ac.abort();
    await w;
  });
  await log.waitFor('daemon lease', () =>
    [...log.peers().values()].some((l) => l.attrs.publicIp === '198.18.0.1'),
  );
  assert.ok(parseCidr(r.daemon.status().lease!.subnet));
});

void test('--install-cni installs only once ready, with settings from --cni-conf-file', async (t) => {
  const calls: { opts: InstallCniOptions; subnetFile: boolean }[] = [];
  let subnetFilePath = '';
  const r = await rig(t, {
    before: async (dir, subnetFile) => {
      subnetFilePath = subnetFile;
      await writeFile(
        join(dir, 'cni-conf.json'),
        JSON.stringify({
          name: 'cbr0',
          cniVersion: '1.1.0',
          plugins: [
            { type: 'weft-cni', delegate: { hairpinMode: true } },
            { type: 'portmap', capabilities: { portMappings: true } },
          ],
        }),
      );
    },
    argv: ['--install-cni', '--cni-bin-dir=/x/bin', '--cni-conf-dir=/x/net.d'],
    deps: {
      installCni: (opts) => {
        calls.push({ opts, subnetFile: existsSync(subnetFilePath) });
      },
    },
  });
  await r.daemon.ready;
  assert.equal(calls.length, 1);
  assert.equal(calls[0]!.subnetFile, true, 'subnet file written before the conflist appears');
  assert.deepEqual(calls[0]!.opts, { binDir: '/x/bin', confDir: '/x/net.d' });

  const withConf = parseOptions(
    ['--install-cni', `--cni-conf-file=${join(r.dir, 'cni-conf.json')}`, '--lease-store=embedded'],
    {},
  );
  assert.deepEqual(await cniInstallOptions(withConf), {
    binDir: '/opt/cni/bin',
    confDir: '/etc/cni/net.d',
    networkName: 'cbr0',
    cniVersion: '1.1.0',
    pluginConf: { delegate: { hairpinMode: true } },
    portmap: true,
  });
  await writeFile(join(r.dir, 'bad.json'), '{"plugins":[{"type":"bridge"}]}');
  await assert.rejects(
    cniInstallOptions({ ...withConf, cniConfFile: join(r.dir, 'bad.json') }),
    (err: unknown) =>
      err instanceof ConfigError && err.key === 'cni-conf-file' && /weft-cni/.test(err.message),
  );
});
