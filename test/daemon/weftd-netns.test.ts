// Two real weftd processes (udp backend, embedded store on a shared directory) in two node
// namespaces joined by a veth: subnet files, weft0 as flannel configures it, a ping between
// the TUN addresses through the userspace data path, readiness and /status over HTTP,
// --ip-masq's nftables table, a restart keeping the subnet, and SIGTERM removing it all.
// Nothing touches the root namespace.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { readSubnetFile } from '../../src/daemon/subnet-file.ts';
import type { SubnetFileContent } from '../../src/daemon/subnet-file.ts';
import { writeEmbeddedConfig } from '../../src/lease/embedded/store.ts';
import { NetnsRun, rootSnapshot } from '../../src/netns/netns.ts';
import type { SpawnedProcess } from '../../src/netns/netns.ts';
import { cidrContainsCidr, formatCidr, formatIpv4, parseCidr } from '../../src/routing/ipv4.ts';
import { programCommand } from '../../src/util/self.ts';

const HEALTH_PORT = 9464;
const NETWORK = '10.77.0.0/16';

async function until<T>(
  what: string,
  fn: () => Promise<T | undefined>,
  timeoutMs: number,
  proc?: SpawnedProcess[],
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) {
      const logs = (proc ?? []).map((p) => p.output().slice(-3000)).join('\n----\n');
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${logs}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface IpAddr {
  ifname: string;
  mtu: number;
  operstate?: string;
  flags?: string[];
  addr_info: { family: string; local: string; prefixlen: number }[];
}

void test('two weftd nodes: subnet files, weft0, ping across, readiness, SIGTERM removes weft0', async (t) => {
  const before = rootSnapshot();
  const run = new NetnsRun();
  const dir = await mkdtemp(join(tmpdir(), 'weft-netns-daemon-'));
  t.after(async () => {
    await run.destroy();
    await rm(dir, { recursive: true, force: true });
    assert.equal(rootSnapshot(), before, 'root namespace unchanged');
  });

  const nsA = await run.addNamespace('a');
  const nsB = await run.addNamespace('b');
  await run.addVeth(nsA, 'eth0', nsB, 'eth0', 1500);
  await run.ip(nsA, 'addr', 'add', '192.168.77.1/24', 'dev', 'eth0');
  await run.ip(nsB, 'addr', 'add', '192.168.77.2/24', 'dev', 'eth0');

  const storeDir = join(dir, 'store');
  await writeEmbeddedConfig(storeDir, { Network: NETWORK, Backend: { Type: 'udp' } });

  const { cmd, args } = programCommand('weftd');
  const start = (ns: string, name: string, extra: string[] = []): SpawnedProcess =>
    run.spawn(ns, cmd, [
      ...args,
      '--lease-store=embedded',
      `--store-dir=${storeDir}`,
      `--subnet-file=${join(dir, name, 'subnet.env')}`,
      `--state-dir=${join(dir, name, 'state')}`,
      '--iface=eth0',
      `--healthz-port=${HEALTH_PORT}`,
      '--log-level=info',
      ...extra,
    ]);
  // B also masquerades pod traffic leaving the overlay (--ip-masq: one nftables table).
  const procs = [start(nsA, 'a'), start(nsB, 'b', ['--ip-masq'])];
  const [pa, pb] = procs as [SpawnedProcess, SpawnedProcess];

  // Subnet files appear once the leases are held.
  const files: SubnetFileContent[] = [];
  for (const name of ['a', 'b']) {
    files.push(
      await until(
        `subnet file of ${name}`,
        () => readSubnetFile(join(dir, name, 'subnet.env')),
        20_000,
        procs,
      ),
    );
  }
  const [fa, fb] = files as [SubnetFileContent, SubnetFileContent];
  for (const f of files) {
    assert.equal(formatCidr(f.network), NETWORK);
    assert.ok(cidrContainsCidr(parseCidr(NETWORK), f.subnet));
    assert.equal(f.subnet.prefix, 24);
    assert.equal(f.mtu, 1472, 'veth MTU 1500 - 28');
  }
  assert.equal(fa.ipMasq, false);
  assert.equal(fb.ipMasq, true);
  assert.notEqual(fa.subnet.addr, fb.subnet.addr, 'different subnets');

  // Readiness over HTTP (busybox wget inside each namespace).
  const readyz = async (ns: string): Promise<string> =>
    run.exec(ns, 'busybox', ['wget', '-q', '-O', '-', `http://127.0.0.1:${HEALTH_PORT}/readyz`], {
      timeoutMs: 3000,
    });
  for (const ns of [nsA, nsB]) {
    const body = await until(`/readyz 200 in ${ns}`, () => readyz(ns), 20_000, procs);
    assert.match(body, /"ready": true/);
  }

  // weft0 as flannel's udp backend sets it up.
  const tunA = await until(
    'weft0 in a',
    async () => (JSON.parse(await run.ip(nsA, '-json', 'addr', 'show', 'dev', 'weft0')) as IpAddr[])[0],
    5000,
    procs,
  );
  assert.equal(tunA.mtu, 1472);
  assert.ok(tunA.flags?.includes('UP'), 'weft0 is up');
  assert.deepEqual(
    tunA.addr_info.filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`),
    [`${formatIpv4(fa.subnet.addr)}/32`],
  );
  const routes = await run.ip(nsA, 'route', 'show', NETWORK);
  assert.match(routes, /10\.77\.0\.0\/16 dev weft0/);

  // Ping B's TUN address from A through both forwarders (peers arrive within a second).
  const target = formatIpv4(fb.subnet.addr);
  const pingOut = await until(
    `ping ${target} from a`,
    () => run.exec(nsA, 'ping', ['-c', '3', '-i', '0.2', '-W', '1', target], { timeoutMs: 5000 }),
    10_000,
    procs,
  );
  assert.match(pingOut, /3 packets transmitted, 3 received/);

  // /status of A lists B as a peer (B, with offloads, says it takes whole tunnel-GSO datagrams).
  const status = JSON.parse(
    await run.exec(nsA, 'busybox', ['wget', '-q', '-O', '-', `http://127.0.0.1:${HEALTH_PORT}/status`]),
  ) as { peers: { subnet: string; publicIp: string }[]; lease: { subnet: string } };
  assert.deepEqual(status.peers, [
    {
      subnet: formatCidr(fb.subnet),
      publicIp: '192.168.77.2',
      backendType: 'udp',
      backendData: { TunnelGSO: true },
    },
  ]);
  assert.equal(status.lease.subnet, formatCidr(fa.subnet));

  // SIGTERM: a graceful stop (exit 0) that removes weft0 (and with it the route).
  assert.equal(await pa.stop('SIGTERM', 10_000), 0, pa.output().slice(-3000));
  const links = await run.ip(nsA, '-o', 'link', 'show');
  assert.doesNotMatch(links, /weft0/, 'weft0 removed');
  assert.doesNotMatch(await run.ip(nsA, 'route', 'show'), /10\.77\./, 'overlay route removed');
  assert.ok(existsSync(join(dir, 'a', 'subnet.env')), 'subnet file kept for a restart');

  // A restarted A keeps its subnet (its lease is still live) and traffic flows again.
  const pa2 = start(nsA, 'a');
  procs.push(pa2);
  await until(`/readyz 200 in restarted a`, () => readyz(nsA), 20_000, procs);
  const fa2 = await readSubnetFile(join(dir, 'a', 'subnet.env'));
  assert.equal(fa2 && formatCidr(fa2.subnet), formatCidr(fa.subnet), 'same subnet after a restart');
  const again = await until(
    `ping ${target} from restarted a`,
    () => run.exec(nsA, 'ping', ['-c', '2', '-i', '0.2', '-W', '1', target], { timeoutMs: 5000 }),
    10_000,
    procs,
  );
  assert.match(again, /2 packets transmitted, 2 received/);
  assert.equal(await pa2.stop('SIGTERM', 10_000), 0, pa2.output().slice(-3000));

  // B stops cleanly too, removing weft0 and its masquerade table.
  assert.match(await run.exec(nsB, 'nft', ['list', 'tables']), /table ip weft/);
  assert.doesNotMatch(
    await run.exec(nsA, 'nft', ['list', 'tables']),
    /table ip weft/,
    'A runs without --ip-masq',
  );
  assert.equal(await pb.stop('SIGTERM', 10_000), 0, pb.output().slice(-3000));
  assert.doesNotMatch(await run.ip(nsB, '-o', 'link', 'show'), /weft0/);
  assert.doesNotMatch(
    await run.exec(nsB, 'nft', ['list', 'tables']),
    /table ip weft/,
    'masquerade table removed',
  );
});
