// The wireguard backend through real weftd processes on the embedded lease store, in
// network namespaces (src/netns/topology.ts), with wireguard-go (no kernel module here) and
// a per-node device name (wireguard-go's control sockets in /var/run/wireguard are shared
// by every namespace). Checked: pods on 2 and on 3 nodes ping each other and move data over
// TCP intact (sha256); the underlay carries only WireGuard datagrams, with none of the
// inner payload in plaintext (tcpdump on eth0; the same pattern is seen inside the tunnel);
// a restarted weftd keeps its key (same PublicKey in its lease) and its peers reach it
// again; a node that stopped with --release-on-exit loses its lease, is removed from its
// peers, and a WireGuard device it brings up with its old key gets no handshake.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import { NetnsRun, rootSnapshot } from '../../src/netns/netns.ts';
import type { SpawnedProcess } from '../../src/netns/netns.ts';
import { Cluster } from '../../src/netns/topology.ts';
import type { ClusterNode } from '../../src/netns/topology.ts';
import { cidrToKey, formatCidr, formatIpv4 } from '../../src/routing/ipv4.ts';
import type { Ipv4Cidr } from '../../src/routing/ipv4.ts';

const KB = 1024;
/** 16 bytes ping repeats through its payload: easy to find in a capture if it leaks. */
const PATTERN = '77656674706c61696e74657874212121'; // "weftplaintext!!!"

interface WgCluster {
  readonly cluster: Cluster;
  readonly run: NetnsRun;
  readonly dev: (n: ClusterNode) => string;
  readonly extra: (n: ClusterNode) => string[];
}

async function wgCluster(
  t: TestContext,
  nodes: number,
  releaseOnExit: readonly number[] = [],
  backendOptions: Readonly<Record<string, unknown>> = {},
): Promise<WgCluster> {
  const before = rootSnapshot();
  const run = new NetnsRun();
  const cluster = await Cluster.create(run, { nodes, podsPerNode: 1 });
  t.after(async () => {
    await cluster.destroy();
    assert.equal(rootSnapshot(), before, 'root namespace unchanged');
  });
  const tag = randomBytes(2).toString('hex');
  const dev = (n: ClusterNode): string => `wg${tag}n${n.index}`;
  const extra = (n: ClusterNode): string[] => [
    '--tun-name',
    dev(n),
    ...(releaseOnExit.includes(n.index) ? ['--release-on-exit'] : []),
  ];
  cluster.writeNetConf('wireguard', backendOptions);
  for (const n of cluster.nodes) cluster.startWeftd(n, { backend: 'wireguard', extraArgs: extra(n) });
  await Promise.all(cluster.nodes.map((n) => cluster.waitWeftdReady(n)));
  for (const n of cluster.nodes) await cluster.attachPods(n, n.subnet!);
  return { cluster, run, dev, extra };
}

function leaseFile(c: Cluster, subnet: Ipv4Cidr): string {
  return join(c.storeDir, 'subnets', cidrToKey(subnet));
}

function leaseOf(
  c: Cluster,
  subnet: Ipv4Cidr,
): { PublicIP: string; BackendType: string; BackendData: { PublicKey: string; Port: number } } {
  return JSON.parse(readFileSync(leaseFile(c, subnet), 'utf8')) as ReturnType<typeof leaseOf>;
}

async function waitUntil(what: string, ms: number, cond: () => Promise<boolean> | boolean): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(100);
  }
}

/** Starts tcpdump on `dev` in `ns` writing to `file`; resolves once it listens. */
async function capture(
  run: NetnsRun,
  ns: string,
  dev: string,
  file: string,
  filter: string[],
): Promise<SpawnedProcess> {
  const p = run.spawn(ns, 'tcpdump', ['-i', dev, '-n', '-U', '-s', '0', '-w', file, ...filter]);
  await waitUntil(`tcpdump on ${dev}`, 10_000, () => {
    if (p.child.exitCode !== null) throw new Error(`tcpdump failed: ${p.output()}`);
    return p.output().includes('listening on');
  });
  return p;
}

void test('wireguard, 2 nodes through weftd: pods ping both ways and move data over TCP intact', async (t) => {
  const { cluster, run, dev } = await wgCluster(t, 2, [], { MTU: 1400 });
  const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
  const a = n1.pods[0]!;
  const b = n2.pods[0]!;
  for (const n of [n1, n2]) {
    assert.equal(n.subnet!.mtu, 1400, 'FLANNEL_MTU = Backend.MTU');
    assert.match(await run.ip(n.ns, 'link', 'show', dev(n)), / mtu 1400 /, 'the device has Backend.MTU');
  }
  await cluster.waitForPing(a, b.addr, 20_000);
  const there = await cluster.ping(a, b.addr, { count: 3 });
  assert.equal(there.received, 3, there.output);
  const back = await cluster.ping(b, a.addr, { count: 3 });
  assert.equal(back.received, 3, back.output);
  for (const [from, to] of [
    [a, b],
    [b, a],
  ] as const) {
    const x = await cluster.tcpTransfer(from, to, 512 * KB);
    assert.equal(x.receivedBytes, 512 * KB);
    assert.equal(x.receivedSha256, x.sentSha256);
  }
  // Each lease carries a WireGuard public key and the listen port.
  for (const n of [n1, n2]) {
    const l = leaseOf(cluster, n.subnet!.subnet);
    assert.equal(l.BackendType, 'wireguard');
    assert.match(l.BackendData.PublicKey, /^[A-Za-z0-9+/]{43}=$/);
    assert.equal(l.BackendData.Port, 51820);
    assert.equal(l.PublicIP, n.underlayIp);
  }
});

void test('wireguard, 3 nodes through weftd (default MTU): full mesh, no plaintext on the wire, keys survive a restart, a released node loses access', async (t) => {
  const { cluster, run, dev, extra } = await wgCluster(t, 3, [3]);
  const [n1, n2, n3] = cluster.nodes as [ClusterNode, ClusterNode, ClusterNode];
  assert.equal(n1.subnet!.mtu, 1500 - 80, 'FLANNEL_MTU = underlay - 80');
  const pods = cluster.pods();
  for (const from of pods) {
    for (const to of pods) {
      if (from === to) continue;
      await cluster.waitForPing(from, to.addr, 20_000);
    }
  }
  const x = await cluster.tcpTransfer(n1.pods[0]!, n3.pods[0]!, 512 * KB);
  assert.equal(x.receivedSha256, x.sentSha256);
  const y = await cluster.tcpTransfer(n3.pods[0]!, n2.pods[0]!, 512 * KB);
  assert.equal(y.receivedSha256, y.sentSha256);

  // --- the underlay carries ciphertext only ---------------------------------------------
  const outer = join(cluster.dir, 'eth0.pcap');
  const inner = join(cluster.dir, 'wg.pcap');
  const capOuter = await capture(run, n1.ns, 'eth0', outer, []);
  const capInner = await capture(run, n1.ns, dev(n1), inner, ['icmp']);
  const pinged = await cluster.ping(n1.pods[0]!, n2.pods[0]!.addr, {
    count: 5,
    size: 400,
    intervalS: 0.1,
  });
  assert.equal(pinged.received, 5, pinged.output);
  // A pattern-filled ping via the `ping -p` option, sent directly with the pod's ping.
  const pat = await cluster.execPod(n1.pods[0]!, 'ping', [
    '-n',
    '-c',
    '3',
    '-i',
    '0.1',
    '-s',
    '400',
    '-p',
    PATTERN,
    n2.pods[0]!.addr,
  ]);
  assert.match(pat, /3 received/);
  await sleep(300);
  await capOuter.stop('SIGINT', 3000);
  await capInner.stop('SIGINT', 3000);
  const needle = Buffer.from(PATTERN, 'hex');
  const innerBytes = readFileSync(inner);
  assert.ok(innerBytes.includes(needle), 'the pattern is visible inside the tunnel (the check can see it)');
  const outerBytes = readFileSync(outer);
  assert.ok(!outerBytes.includes(needle), 'the pattern never appears on the underlay');
  assert.ok(!outerBytes.includes(needle.subarray(0, 8)), 'not even half of it');
  // What is on the underlay: WireGuard over UDP 51820, and no ICMP between pod addresses.
  const summary = await run.exec(n1.ns, 'tcpdump', ['-n', '-r', outer]);
  const lines = summary.split('\n').filter((l) => l.includes(' IP '));
  const wg = lines.filter((l) => /\.51820 > .*\.51820: UDP/.test(l));
  // 8 echo requests + 8 replies crossed; tcpdump may miss the first few while it starts.
  assert.ok(wg.length >= 8, `echo requests and replies as WireGuard datagrams:\n${summary}`);
  assert.deepEqual(
    lines.filter((l) => !wg.includes(l)),
    [],
    'nothing but WireGuard between the nodes (no pod packet in the clear)',
  );
  for (const p of pods) assert.ok(!summary.includes(`${p.addr} >`), `no pod address in the clear: ${p.addr}`);

  // --- keys survive a weftd restart ------------------------------------------------------
  const key1 = leaseOf(cluster, n1.subnet!.subnet).BackendData.PublicKey;
  const keyFile1 = readFileSync(join(n1.dir, 'state', 'wireguard.key'), 'utf8');
  assert.equal(await cluster.stopWeftd(n1), 0, 'graceful stop');
  assert.ok(existsSync(leaseFile(cluster, n1.subnet!.subnet)), 'lease kept without --release-on-exit');
  cluster.startWeftd(n1, { backend: 'wireguard', extraArgs: extra(n1) });
  const again = await cluster.waitWeftdReady(n1);
  assert.equal(formatCidr(again.subnet), formatCidr(n1.subnet!.subnet), 'same subnet');
  assert.equal(leaseOf(cluster, again.subnet).BackendData.PublicKey, key1, 'same PublicKey in the lease');
  assert.equal(readFileSync(join(n1.dir, 'state', 'wireguard.key'), 'utf8'), keyFile1, 'same key file');
  await cluster.waitForPing(n2.pods[0]!, n1.pods[0]!.addr, 20_000);
  await cluster.waitForPing(n1.pods[0]!, n3.pods[0]!.addr, 20_000);

  // --- a node whose lease is gone loses access ---------------------------------------------
  const sub3 = n3.subnet!.subnet;
  const key3 = leaseOf(cluster, sub3).BackendData.PublicKey;
  const peersOf = async (n: ClusterNode): Promise<string> => run.exec(n.ns, 'wg', ['show', dev(n), 'peers']);
  assert.ok((await peersOf(n1)).includes(key3));
  assert.equal(await cluster.stopWeftd(n3), 0);
  assert.ok(!existsSync(leaseFile(cluster, sub3)), '--release-on-exit removed the lease');
  await waitUntil('n1 and n2 to drop n3 as a WireGuard peer', 10_000, async () => {
    const [p1, p2] = await Promise.all([peersOf(n1), peersOf(n2)]);
    return !p1.includes(key3) && !p2.includes(key3);
  });
  // n3 comes back with its old key but without weftd (so without a lease): n1 has no such
  // peer any more, so no handshake completes and its pod reaches nobody.
  const rogue = `wg${dev(n3).slice(2, 6)}r3`;
  const wgGo = run.spawn(n3.ns, 'wireguard-go', ['-f', rogue], {
    env: { ...process.env, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD: '1', LOG_LEVEL: 'error' },
  });
  t.after(() => wgGo.stop('SIGTERM', 2000));
  await waitUntil('the rogue wireguard-go device', 10_000, async () => {
    if (wgGo.child.exitCode !== null) throw new Error(`wireguard-go failed: ${wgGo.output()}`);
    return run.ip(n3.ns, 'link', 'show', rogue).then(
      () => existsSync(`/var/run/wireguard/${rogue}.sock`),
      () => false,
    );
  });
  await run.exec(n3.ns, 'wg', [
    'set',
    rogue,
    'private-key',
    join(n3.dir, 'state', 'wireguard.key'),
    'listen-port',
    '51820',
    'peer',
    key1,
    'endpoint',
    `${n1.underlayIp}:51820`,
    'allowed-ips',
    formatCidr(cluster.network),
    'persistent-keepalive',
    '1',
  ]);
  await run.ip(n3.ns, 'addr', 'add', `${formatIpv4(sub3.addr)}/32`, 'dev', rogue);
  await run.ip(n3.ns, 'link', 'set', rogue, 'up');
  await run.ip(n3.ns, 'route', 'replace', formatCidr(cluster.network), 'dev', rogue);
  const denied = await cluster.ping(n3.pods[0]!, n1.pods[0]!.addr, { count: 4, intervalS: 0.5, waitS: 1 });
  assert.equal(denied.received, 0, `a node without a lease must not get through:\n${denied.output}`);
  const shown = await run.exec(n3.ns, 'wg', ['show', rogue, 'latest-handshakes']);
  assert.match(shown.trim(), /\t0$/, `no handshake with n1: ${shown}`);
  // The others still talk.
  const ok = await cluster.ping(n1.pods[0]!, n2.pods[0]!.addr, { count: 2 });
  assert.equal(ok.received, 2, ok.output);
});
