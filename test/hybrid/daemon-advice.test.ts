// How the daemon chooses what to advertise, with a real embedded store and a stand-in
// backend (no devices): --public-ip differing from the underlay address ends up in the lease;
// --iface and --iface-regex reach the underlay picker in order; a store that gives address
// advice (the kube store reads node-public-ip / public-ip-overwrite from our Node) picks the
// underlay by node-public-ip when no --iface/--iface-regex is given, and its overwrite is
// the advertised address; and Backend.MTU becomes the subnet file's FLANNEL_MTU.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import type { Backend, BackendContext, PreparedBackend } from '../../src/backend/backend.ts';
import { createBackend } from '../../src/backend/registry.ts';
import { startDaemon } from '../../src/daemon/daemon.ts';
import { parseOptions } from '../../src/daemon/options.ts';
import { readSubnetFile } from '../../src/daemon/subnet-file.ts';
import type { Underlay } from '../../src/daemon/underlay.ts';
import { EmbeddedLeaseStore, writeEmbeddedConfig } from '../../src/lease/embedded/store.ts';
import type { Lease } from '../../src/lease/types.ts';
import { formatIpv4, parseIpv4 } from '../../src/routing/ipv4.ts';
import { silentLogger } from '../../src/util/log.ts';

/** host-gw's real prepare() (MTU rules), no kernel work. */
class StandIn implements Backend {
  readonly type = 'host-gw';
  started: Lease | undefined;
  constructor(readonly ctx: BackendContext) {}
  async prepare(): Promise<PreparedBackend> {
    return (await createBackend('host-gw', this.ctx)).prepare();
  }
  start(lease: Lease): Promise<void> {
    this.started = lease;
    return Promise.resolve();
  }
  applyPeers(): void {}
  stats(): Record<string, number> {
    return {};
  }
  stop(): Promise<void> {
    return Promise.resolve();
  }
}

interface Run {
  readonly backend: StandIn;
  readonly picked: { iface: readonly string[]; regex: readonly string[] | undefined }[];
  readonly lease: Lease;
  readonly subnetFile: string;
}

async function runDaemon(
  t: TestContext,
  argv: string[],
  backendConf: Record<string, unknown>,
  advice?: { nodePublicIp?: string; publicIpOverwrite?: string },
): Promise<Run> {
  const dir = await mkdtemp(join(tmpdir(), 'weft-hy-daemon-'));
  const storeDir = join(dir, 'store');
  const subnetFile = join(dir, 'subnet.env');
  await writeEmbeddedConfig(storeDir, {
    Network: '10.66.0.0/16',
    Backend: { Type: 'host-gw', ...backendConf },
  });
  const options = parseOptions(
    [
      '--lease-store=embedded',
      `--store-dir=${storeDir}`,
      `--subnet-file=${subnetFile}`,
      `--state-dir=${join(dir, 'state')}`,
      ...argv,
    ],
    {},
  );
  let backend: StandIn | undefined;
  const picked: Run['picked'] = [];
  const daemon = startDaemon(options, {
    log: silentLogger(),
    retryMs: 50,
    openStore: async () => {
      const s = await EmbeddedLeaseStore.open({ dir: storeDir });
      if (!advice) return s;
      return Object.assign(s, { nodeAddressHints: () => Promise.resolve(advice) });
    },
    createBackend: (_type, ctx) => (backend = new StandIn(ctx)),
    pickUnderlay: (iface, regex): Promise<Underlay> => {
      picked.push({ iface, regex });
      return Promise.resolve({ iface: 'eth0', addr: parseIpv4('10.0.0.7'), mtu: 1500 });
    },
  });
  t.after(async () => {
    await daemon.stop();
    await rm(dir, { recursive: true, force: true });
  });
  await daemon.ready;
  const lease = backend?.started;
  assert.ok(backend && lease);
  return { backend, picked, lease, subnetFile };
}

void test('--public-ip other than the underlay address is advertised in the lease', async (t) => {
  const r = await runDaemon(t, ['--public-ip', '203.0.113.5'], {});
  assert.equal(r.lease.attrs.publicIp, '203.0.113.5');
  assert.equal(formatIpv4(r.backend.ctx.publicIp), '203.0.113.5');
  assert.equal(formatIpv4(r.backend.ctx.underlay.addr), '10.0.0.7', 'the local address stays the underlay');
  assert.deepEqual(r.picked, [{ iface: [], regex: [] }]);
});

void test('--iface and --iface-regex reach the underlay picker in the order given', async (t) => {
  const r = await runDaemon(t, ['--iface', 'eth1', '--iface-regex', '^en', '--iface-regex', '^wl'], {});
  assert.deepEqual(r.picked, [{ iface: ['eth1'], regex: ['^en', '^wl'] }]);
  assert.equal(r.lease.attrs.publicIp, '10.0.0.7', 'default: the underlay address');
});

void test('store advice: node-public-ip picks the underlay, public-ip-overwrite is advertised', async (t) => {
  const r = await runDaemon(t, [], {}, { nodePublicIp: '10.0.0.7', publicIpOverwrite: '198.51.100.20' });
  assert.deepEqual(r.picked, [{ iface: ['10.0.0.7'], regex: [] }]);
  assert.equal(formatIpv4(r.backend.ctx.publicIp), '198.51.100.20');
  assert.equal(r.lease.attrs.publicIp, '198.51.100.20');
  // Explicit flags win over node-public-ip; malformed advice is ignored.
  const f = await runDaemon(t, ['--iface-regex', '^en'], {}, { nodePublicIp: '10.0.0.7' });
  assert.deepEqual(f.picked, [{ iface: [], regex: ['^en'] }]);
  const bad = await runDaemon(t, ['--public-ip', '203.0.113.5'], {}, { publicIpOverwrite: 'not-an-ip' });
  assert.equal(bad.lease.attrs.publicIp, '203.0.113.5');
});

void test('Backend.MTU is FLANNEL_MTU in the subnet file; default the underlay MTU for host-gw', async (t) => {
  const explicit = await runDaemon(t, [], { MTU: 1280 });
  assert.equal((await readSubnetFile(explicit.subnetFile))?.mtu, 1280);
  const dflt = await runDaemon(t, [], {});
  assert.equal((await readSubnetFile(dflt.subnetFile))?.mtu, 1500);
});
