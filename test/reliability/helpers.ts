// Shared pieces of the reliability tests: bring up a netns cluster with weftd on some of
// its nodes, read weftd's /status and /metrics, forge encapsulated datagrams with any outer
// source (a raw socket, so the outer address and port are whatever the test says), listen
// for UDP inside a pod, follow a long-running ping with timestamps, and take comparable
// snapshots of a node namespace's links and routes.
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import { NetnsRun, rootSnapshot } from '../../src/netns/netns.ts';
import type { SpawnedProcess } from '../../src/netns/netns.ts';
import { Cluster } from '../../src/netns/topology.ts';
import type { ClusterNode, Pod, WeftdOptions } from '../../src/netns/topology.ts';
import { internetChecksum } from '../../src/encap/checksum.ts';
import { parseIpv4 } from '../../src/routing/ipv4.ts';

/** The data paths the tests run on: udp, vxlan with the userspace plane, vxlan with the kernel's. */
export const BACKENDS = {
  udp: { backend: 'udp', port: 8285 },
  vxlanUserspace: {
    backend: 'vxlan',
    backendOptions: { VNI: 1, Dataplane: 'userspace' },
    port: 8472,
    device: 'weft.1',
  },
  vxlanKernel: {
    backend: 'vxlan',
    backendOptions: { VNI: 1, Dataplane: 'kernel' },
    port: 8472,
    device: 'weft.1',
  },
} as const;

export interface BackendCase {
  readonly backend: string;
  readonly backendOptions?: Readonly<Record<string, unknown>>;
  readonly port: number;
  readonly device?: string;
}

/** The overlay device weftd creates for a backend case. */
export function overlayDevice(b: BackendCase): string {
  return b.device ?? 'weft0';
}

export function weftdOptions(b: BackendCase, extraArgs: readonly string[] = []): WeftdOptions {
  return {
    backend: b.backend,
    ...(b.backendOptions ? { backendOptions: b.backendOptions } : {}),
    extraArgs,
  };
}

/**
 * A cluster of `nodes` nodes where weftd runs (and pods are attached) only on the nodes in
 * `withWeftd` (1-based); the others are bare underlay hosts. Waits for every weftd to be ready.
 * Torn down after test `t`, which then checks that the root namespace is as it was.
 */
export async function weftCluster(
  t: TestContext,
  b: BackendCase,
  opts: { nodes: number; withWeftd: readonly number[]; extraArgs?: (i: number) => readonly string[] },
): Promise<Cluster> {
  const before = rootSnapshot();
  const cluster = await Cluster.create(new NetnsRun(), { nodes: opts.nodes, podsPerNode: 1 });
  t.after(async () => {
    await cluster.destroy();
    assert.equal(rootSnapshot(), before, 'root namespace unchanged');
  });
  try {
    cluster.writeNetConf(b.backend, b.backendOptions ?? {});
    const nodes = opts.withWeftd.map((i) => cluster.node(i));
    for (const n of nodes) cluster.startWeftd(n, weftdOptions(b, opts.extraArgs?.(n.index) ?? []));
    const infos = await Promise.all(nodes.map((n) => cluster.waitWeftdReady(n)));
    for (const [k, n] of nodes.entries()) await cluster.attachPods(n, infos[k]!);
  } catch (err) {
    await cluster.destroy();
    throw err;
  }
  return cluster;
}

/** Two nodes running weftd with a pod each, the pods reaching each other both ways. */
export interface PingingPair {
  readonly run: NetnsRun;
  readonly cluster: Cluster;
  readonly n1: ClusterNode;
  readonly n2: ClusterNode;
  /** n1's pod. */
  readonly a: Pod;
  /** n2's pod. */
  readonly bp: Pod;
}

/**
 * A PingingPair on backend `b`, torn down after test `t` (which then checks that the root
 * namespace is as it was).
 */
export async function pingingPair(t: TestContext, b: BackendCase): Promise<PingingPair> {
  const cluster = await weftCluster(t, b, { nodes: 2, withWeftd: [1, 2] });
  const [n1, n2] = [cluster.node(1), cluster.node(2)] as [ClusterNode, ClusterNode];
  const a = pod(n1);
  const bp = pod(n2);
  await cluster.waitForPing(bp, a.addr, 15_000);
  await cluster.waitForPing(a, bp.addr, 15_000);
  return { run: cluster.run, cluster, n1, n2, a, bp };
}

export function pod(node: ClusterNode): Pod {
  const p = node.pods[0];
  if (!p) throw new Error(`${node.name} has no pod`);
  return p;
}

export interface WeftStatus {
  ready: boolean;
  lease?: { subnet: string; publicIp: string; backendData: unknown };
  peers: { subnet: string; publicIp: string; backendType: string; backendData: unknown }[];
  backendStats?: Record<string, unknown>;
}

/** weftd's /status on `node` (throws with weftd's output when it does not answer). */
export async function status(cluster: Cluster, node: ClusterNode): Promise<WeftStatus> {
  const r = await cluster.httpGet(node, '/status');
  if (r.code !== 0) {
    throw new Error(`/status on ${node.name} failed (${r.code}): ${node.weftd?.output().slice(-2000)}`);
  }
  return JSON.parse(r.stdout) as WeftStatus;
}

/** A number in backendStats (nested with dots: "drops.unknownPeer"); 0 when absent. */
export function stat(s: WeftStatus, path: string): number {
  let v: unknown = s.backendStats;
  for (const k of path.split('.')) v = (v as Record<string, unknown> | undefined)?.[k];
  return typeof v === 'number' ? v : 0;
}

/**
 * Changes in `node`'s namespace that no backend looks after, as one `ip -batch`: a device
 * of someone else's (a bridge, as cni0 is) with an address, neighbours and a route outside
 * the Network, all removed again, and an underlay neighbour that comes and goes (ARP).
 * Then waits `settleMs` and returns what `node`'s backend counted meanwhile: checks
 * started by a notification, and notifications read and dropped.
 */
export async function unrelatedChurn(
  run: NetnsRun,
  cluster: Cluster,
  node: ClusterNode,
  settleMs = 600,
): Promise<{ checks: number; ignored: number }> {
  const s0 = await status(cluster, node);
  const batch = [
    'link add wtx0 type bridge',
    'link set wtx0 up',
    'addr add 198.19.0.1/24 dev wtx0',
    'route add 10.99.0.0/16 via 198.19.0.2 dev wtx0',
    ...Array.from(
      { length: 10 },
      (_, i) => `neigh add 198.19.0.${10 + i} lladdr 02:00:00:00:00:${10 + i} dev wtx0`,
    ),
    'neigh add 192.0.2.77 lladdr 02:00:00:00:00:77 dev eth0',
    'neigh del 192.0.2.77 dev eth0',
    'route del 10.99.0.0/16',
    'link del wtx0',
  ];
  await run.exec(node.ns, 'ip', ['-batch', '-'], { input: batch.join('\n') + '\n' });
  await sleep(settleMs);
  const s1 = await status(cluster, node);
  return {
    checks: stat(s1, 'kernelEventChecks') - stat(s0, 'kernelEventChecks'),
    ignored: stat(s1, 'kernelEventsIgnored') - stat(s0, 'kernelEventsIgnored'),
  };
}

/** Parses `weft_dataplane_drops_total{reason="..."} n` lines of /metrics. */
export async function metricDrops(cluster: Cluster, node: ClusterNode): Promise<Map<string, number>> {
  const r = await cluster.httpGet(node, '/metrics');
  if (r.code !== 0) throw new Error(`/metrics on ${node.name} failed (${r.code})`);
  const out = new Map<string, number>();
  for (const m of r.stdout.matchAll(/^weft_dataplane_drops_total\{reason="([a-z_]+)"\} (\d+(?:\.\d+)?)/gm)) {
    out.set(m[1] as string, Number(m[2]));
  }
  return out;
}

/** Polls `check` until it returns a value (not undefined) or throws after `timeoutMs`. */
export async function until<T>(
  what: string,
  timeoutMs: number,
  check: () => Promise<T | undefined> | T | undefined,
  everyMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline) {
      const why = lastErr ? ` (last error: ${String((lastErr as Error).message ?? lastErr)})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
    }
    await sleep(everyMs);
  }
}

/** weftd's pino log lines (JSON) with message `msg`, parsed; `time` is Unix ms. */
export function logEvents(
  proc: SpawnedProcess | undefined,
  msg: string,
): ({ time: number } & Record<string, unknown>)[] {
  const out: ({ time: number } & Record<string, unknown>)[] = [];
  for (const line of (proc?.output() ?? '').split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const j = JSON.parse(line) as { time: number; msg?: string } & Record<string, unknown>;
      if (j.msg === msg) out.push(j);
    } catch {
      // a partial line
    }
  }
  return out;
}

// ---- forged datagrams ----------------------------------------------------------------------

/** An IPv4/UDP packet src -> dst:dstPort carrying `text` (valid header checksum, TTL 64, UDP checksum 0). */
export function innerUdp(src: string, dst: string, dstPort: number, text: string): Buffer {
  const payload = Buffer.from(text);
  const p = Buffer.alloc(28 + payload.length);
  p[0] = 0x45;
  p.writeUInt16BE(p.length, 2);
  p.writeUInt16BE(0x4000, 6); // DF
  p[8] = 64;
  p[9] = 17;
  p.writeUInt32BE(parseIpv4(src), 12);
  p.writeUInt32BE(parseIpv4(dst), 16);
  p.writeUInt16BE(internetChecksum(p, 0, 20), 10);
  p.writeUInt16BE(40000, 20);
  p.writeUInt16BE(dstPort, 22);
  p.writeUInt16BE(8 + payload.length, 24);
  payload.copy(p, 28);
  return p;
}

/** VXLAN header (I flag, `vni`) + inner Ethernet (dst, src VTEP MACs, IPv4) + `ip`. */
export function vxlanFrame(vni: number, dstMac: string, srcMac: string, ip: Buffer): Buffer {
  const h = Buffer.alloc(8 + 14);
  h[0] = 0x08;
  h.writeUIntBE(vni, 4, 3);
  Buffer.from(dstMac.replace(/:/g, ''), 'hex').copy(h, 8);
  Buffer.from(srcMac.replace(/:/g, ''), 'hex').copy(h, 14);
  h.writeUInt16BE(0x0800, 20);
  return Buffer.concat([h, ip]);
}

/**
 * Sends UDP datagrams with a hand-written outer IPv4/UDP header through a raw socket
 * (IP_HDRINCL), so the outer source address and port are exactly what the test says.
 * argv: src sport dst dport repeat hex...; prints "sent <n>".
 */
const RAW_SENDER = String.raw`
import socket, struct, sys
src, sport, dst, dport, repeat = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
payloads = [bytes.fromhex(h) for h in sys.argv[6:]]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
n = 0
for _ in range(repeat):
    for p in payloads:
        udp = struct.pack('!HHHH', sport, dport, 8 + len(p), 0) + p
        ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
        s.sendto(ip + udp, (dst, 0))
        n += 1
print('sent', n)
`;

/** Sends `payloads` (each `repeat` times) from `src:sport` to `dst:dport`, from namespace `ns`. */
export async function sendRaw(
  run: NetnsRun,
  ns: string,
  from: { addr: string; port: number },
  to: { addr: string; port: number },
  payloads: readonly Buffer[],
  repeat = 1,
): Promise<number> {
  const out = await run.exec(ns, 'python3', [
    '-c',
    RAW_SENDER,
    from.addr,
    String(from.port),
    to.addr,
    String(to.port),
    String(repeat),
    ...payloads.map((p) => p.toString('hex')),
  ]);
  const m = /sent (\d+)/.exec(out);
  if (!m) throw new Error(`raw sender printed ${out}`);
  return Number(m[1]);
}

// ---- a UDP listener in a pod ---------------------------------------------------------------

const LISTENER = String.raw`
const s = require('node:dgram').createSocket('udp4');
s.on('message', (m, r) => console.log('GOT ' + r.address + ' ' + m.toString()));
s.bind(Number(process.env.WEFT_LISTEN_PORT), '0.0.0.0', () => console.log('LISTENING'));
`;

export interface Listener {
  /** Lines "GOT <src> <text>" received so far. */
  received(): string[];
  readonly proc: SpawnedProcess;
}

/** Starts a UDP listener on `port` inside `p`'s namespace; resolves once it is bound. */
export async function listenUdp(run: NetnsRun, p: Pod, port: number): Promise<Listener> {
  const proc = run.spawn(p.ns, process.execPath, ['-e', LISTENER], {
    env: { ...process.env, WEFT_LISTEN_PORT: String(port) },
  });
  await until(`a UDP listener in ${p.name}`, 10_000, () => {
    if (proc.child.exitCode !== null) throw new Error(`listener died: ${proc.output()}`);
    return proc.output().includes('LISTENING') ? true : undefined;
  });
  return {
    proc,
    received: () =>
      proc
        .output()
        .split('\n')
        .filter((l) => l.startsWith('GOT ')),
  };
}

// ---- a ping that runs through an event ------------------------------------------------------

export interface PingTrace {
  /** Unix time (ms) of every echo reply, in order. */
  replies(): number[];
  stop(): Promise<void>;
  readonly proc: SpawnedProcess;
}

/** `ping -D -i 0.1` from `from` to `to`, until stop(); reply times from ping's own -D stamps. */
export function pingTrace(run: NetnsRun, from: Pod, to: string): PingTrace {
  const proc = run.spawn(from.ns, 'ping', ['-n', '-D', '-i', '0.1', '-W', '1', to]);
  return {
    proc,
    replies: () => {
      const out: number[] = [];
      for (const m of proc.output().matchAll(/^\[(\d+\.\d+)\] \d+ bytes from/gm))
        out.push(Number(m[1]) * 1000);
      return out;
    },
    stop: async () => {
      await proc.stop('SIGINT', 2000);
    },
  };
}

// ---- namespace snapshots --------------------------------------------------------------------

interface IpLink {
  ifname: string;
  mtu: number;
  address?: string;
  flags?: string[];
  linkinfo?: { info_kind?: string };
}

interface IpRoute {
  dst: string;
  dev?: string;
  gateway?: string;
  prefsrc?: string;
  flags?: string[];
  scope?: string;
}

interface IpAddrEntry {
  ifname: string;
  addr_info: { family: string; local: string; prefixlen: number }[];
}

/**
 * Links (name, kind, MTU, UP, and the MAC for devices that have a fixed one), IPv4
 * addresses and IPv4 routes of a namespace, as sorted lines: equal snapshots mean the same
 * kernel state, whatever the interface indexes.
 */
export async function nsSnapshot(
  run: NetnsRun,
  ns: string,
): Promise<{ links: string[]; addrs: string[]; routes: string[] }> {
  const links = (JSON.parse(await run.ip(ns, '-d', '-json', 'link', 'show')) as IpLink[]).map((l) => {
    const kind = l.linkinfo?.info_kind ?? '-';
    // veth/bridge MACs are random per run but fixed for its life; TUNs have none.
    return `${l.ifname} ${kind} mtu ${l.mtu} ${l.flags?.includes('UP') ? 'up' : 'down'} ${l.address ?? ''}`.trim();
  });
  const addrs = (JSON.parse(await run.ip(ns, '-4', '-json', 'addr', 'show')) as IpAddrEntry[]).flatMap((a) =>
    a.addr_info.map((i) => `${a.ifname} ${i.local}/${i.prefixlen}`),
  );
  const routes = (JSON.parse(await run.ip(ns, '-4', '-json', 'route', 'show')) as IpRoute[]).map(
    (r) =>
      `${r.dst}${r.gateway ? ` via ${r.gateway}` : ''}${r.dev ? ` dev ${r.dev}` : ''}${r.scope ? ` scope ${r.scope}` : ''}${r.prefsrc ? ` src ${r.prefsrc}` : ''}${(r.flags ?? []).map((f) => ` ${f}`).join('')}`,
  );
  return { links: links.sort(), addrs: addrs.sort(), routes: routes.sort() };
}

/** `<node dir>/state`: weftd's --state-dir in the cluster (holds vtep-mac for vxlan). */
export function stateDir(node: ClusterNode): string {
  return join(node.dir, 'state');
}
