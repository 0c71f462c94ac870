/**
 * Soak run: hours-long stability in miniature. Three nodes in network namespaces, weftd
 * with the udp backend, and for N minutes at once: a TCP stream (iperf3, pod n1p0 -> n2p0)
 * and a small-packet UDP stream (iperf3 -u -l 64, pod n2p1 -> n3p0). Every sample period it
 * prints the overlay throughput (from weftd's byte counters), each weftd's RSS and JS heap
 * (/metrics: process_resident_memory_bytes, nodejs_heap_size_used_bytes) and the data
 * path's drops by reason. At the end a verdict:
 *   - memory flat: each weftd's last RSS within 20% of its RSS after warm-up (first sample);
 *   - 0 crashes: every weftd still runs, and none lost its lease;
 *   - drops explained: no drop under a reason that a healthy, stable cluster must not see
 *     (malformed, unknown peer, spoofed, no route, ...), and the UDP datagrams iperf3 lost
 *     are covered by counted drops (weftd's, plus the kernel's socket-buffer and device
 *     drops in the node and pod namespaces).
 *
 * Why: leaks and slow drifts only show over time and under traffic; flannel's udp backend
 * never had such a check. With `--store etcd --etcd-outage 60` the run also takes all of
 * etcd (3 members on the underlay) away for 60 s in the middle (the issue's outage, too
 * long for the test suite): forwarding must go on and no lease may be lost.
 *
 *   node --import tsx bench/soak.ts [--minutes 30] [--sample-seconds 60] [--tcp-mbps 0]
 *                                   [--store embedded|etcd] [--etcd-outage 0]
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import { NetnsRun, cleanupStale } from '../src/netns/netns.ts';
import type { SpawnedProcess } from '../src/netns/netns.ts';
import { Cluster, WEFTD_HEALTHZ_PORT } from '../src/netns/topology.ts';
import type { ClusterNode, EtcdStoreRef, Pod } from '../src/netns/topology.ts';
import { startEtcd } from '../test/support/etcd.ts';
import type { EtcdCluster } from '../test/support/etcd.ts';

export interface SoakOptions {
  /** Length of the traffic phase, minutes (fractions allowed). Default 30. */
  readonly minutes?: number;
  /** Seconds between samples. Default 60. */
  readonly sampleSeconds?: number;
  /** TCP stream rate cap, Mbit/s (0 = as fast as it goes). Default 0. */
  readonly tcpMbps?: number;
  /** Small-packet UDP stream rate, Mbit/s of 64-byte datagrams. Default 2 (~3900 packets/s). */
  readonly udpMbps?: number;
  /** Lease store. Default embedded. */
  readonly store?: 'embedded' | 'etcd';
  /** With the etcd store: take every etcd member down for this many seconds mid-run. */
  readonly etcdOutageSeconds?: number;
  /** Where progress lines go. Default stdout. */
  readonly print?: (line: string) => void;
}

export interface NodeSample {
  readonly node: string;
  readonly rssBytes: number;
  readonly heapUsedBytes: number;
  readonly running: boolean;
}

export interface SoakSample {
  /** Seconds since traffic started. */
  readonly t: number;
  /** Overlay payload sent by all nodes' data paths in the period, Mbit/s. */
  readonly mbps: number;
  /** Packets/s sent by all nodes' data paths in the period. */
  readonly pps: number;
  readonly nodes: readonly NodeSample[];
  /** Cumulative data path drops by reason, all nodes together. */
  readonly drops: Readonly<Record<string, number>>;
}

export interface SoakVerdict {
  readonly memoryFlat: boolean;
  readonly crashes: number;
  readonly leasesLost: number;
  readonly dropsExplained: boolean;
  readonly pass: boolean;
  /** One line per check, readable. */
  readonly reasons: readonly string[];
}

export interface SoakReport {
  readonly samples: readonly SoakSample[];
  readonly tcp: { readonly gbps: number; readonly retransmits: number } | undefined;
  readonly udp: { readonly packets: number; readonly lost: number } | undefined;
  /** Kernel drop counters summed over the node and pod namespaces. */
  readonly kernelDrops: Readonly<Record<string, number>>;
  readonly verdict: SoakVerdict;
}

/** Drop reasons a stable, healthy cluster can show under load (buffers full); others are bugs or attacks. */
export const LOAD_DROP_REASONS: readonly string[] = [
  // a socket or TUN queue was full
  'send',
  'tun_write',
  // the kernel's own IPv6 chatter on the TUN (router solicitations, MLD) when it comes up
  'not_ipv4',
];
/** Last RSS may be at most this much above the warm-up RSS. */
export const RSS_GROWTH_LIMIT = 0.2;

const MB = 1024 * 1024;

function parseMetrics(text: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const sp = line.lastIndexOf(' ');
    m.set(line.slice(0, sp), Number(line.slice(sp + 1)));
  }
  return m;
}

const GET_SCRIPT =
  "require('node:http').get(process.env.U,{timeout:10000},(r)=>{let b='';r.on('data',(d)=>b+=d);" +
  "r.on('end',()=>{process.stdout.write(b);process.exit(r.statusCode===200?0:1)})}).on('error',(e)=>{console.error(String(e));process.exit(2)})";

/**
 * GET a weftd health-server path inside the node's namespace, with a generous timeout and
 * retries: on a 2-core machine under full traffic, starting the client alone can take seconds.
 */
async function getText(cluster: Cluster, node: ClusterNode, path: string): Promise<string | undefined> {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await cluster.run.exec(node.ns, process.execPath, ['-e', GET_SCRIPT], {
        timeoutMs: 20_000,
        env: { ...process.env, U: `http://127.0.0.1:${WEFTD_HEALTHZ_PORT}${path}` },
      });
    } catch {
      if (node.weftd?.child.exitCode !== null) return undefined;
    }
  }
  return undefined;
}

async function scrape(cluster: Cluster, node: ClusterNode): Promise<Map<string, number> | undefined> {
  const text = await getText(cluster, node, '/metrics');
  return text === undefined ? undefined : parseMetrics(text);
}

function sumOf(m: Map<string, number>, name: string, label?: string): number {
  let s = 0;
  for (const [k, v] of m) {
    if (k === name || (k.startsWith(`${name}{`) && (label === undefined || k.includes(label)))) s += v;
  }
  return s;
}

function dropsByReason(all: ReadonlyArray<Map<string, number> | undefined>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of all) {
    if (!m) continue;
    for (const [k, v] of m) {
      const r = /^weft_dataplane_drops_total\{reason="([^"]+)"\}$/.exec(k);
      if (r && v > 0) out[r[1]!] = (out[r[1]!] ?? 0) + v;
    }
  }
  return out;
}

/** Kernel counters that explain lost datagrams: socket buffers and device drops, per namespace. */
async function kernelDrops(run: NetnsRun, namespaces: readonly string[]): Promise<Record<string, number>> {
  const out: Record<string, number> = { udpRcvbufErrors: 0, udpSndbufErrors: 0, udpInErrors: 0, devDrops: 0 };
  for (const ns of namespaces) {
    const snmp = await run.exec(ns, 'cat', ['/proc/net/snmp']);
    const udp = snmp.split('\n').filter((l) => l.startsWith('Udp:'));
    if (udp.length >= 2) {
      const names = udp[0]!.split(/\s+/).slice(1);
      const vals = udp[1]!.split(/\s+/).slice(1).map(Number);
      const get = (n: string): number => vals[names.indexOf(n)] ?? 0;
      out.udpRcvbufErrors! += get('RcvbufErrors');
      out.udpSndbufErrors! += get('SndbufErrors');
      out.udpInErrors! += get('InErrors');
    }
    const links = JSON.parse(await run.exec(ns, 'ip', ['-s', '-j', 'link', 'show'])) as Array<{
      stats64?: { rx?: { dropped?: number }; tx?: { dropped?: number } };
    }>;
    for (const l of links) out.devDrops! += (l.stats64?.rx?.dropped ?? 0) + (l.stats64?.tx?.dropped ?? 0);
  }
  return out;
}

async function startIperf(
  cluster: Cluster,
  from: Pod,
  to: Pod,
  port: number,
  seconds: number,
  extra: readonly string[],
): Promise<{ server: SpawnedProcess; client: SpawnedProcess }> {
  const server = cluster.run.spawn(to.ns, 'iperf3', ['-s', '-1', '--forceflush', '-p', String(port)]);
  const deadline = Date.now() + 10_000;
  while (!server.output().includes('listening')) {
    if (server.child.exitCode !== null || Date.now() > deadline)
      throw new Error(`iperf3 server in ${to.name} did not start: ${server.output()}`);
    await sleep(50);
  }
  const client = cluster.run.spawn(from.ns, 'iperf3', [
    '-c',
    to.addr,
    '-p',
    String(port),
    '-t',
    String(seconds),
    '-J',
    ...extra,
  ]);
  return { server, client };
}

function parseIperfJson(out: string): Record<string, unknown> | undefined {
  const start = out.indexOf('{');
  if (start < 0) return undefined;
  try {
    const j = JSON.parse(out.slice(start, out.lastIndexOf('}') + 1)) as Record<string, unknown>;
    return j.end && !j.error ? j : undefined;
  } catch {
    return undefined;
  }
}

export async function runSoak(opts: SoakOptions = {}): Promise<SoakReport> {
  const minutes = opts.minutes ?? 30;
  const sampleS = opts.sampleSeconds ?? 60;
  const print = opts.print ?? ((l: string) => process.stdout.write(`${l}\n`));
  const seconds = Math.max(1, Math.round(minutes * 60));
  const outageS = opts.store === 'etcd' ? (opts.etcdOutageSeconds ?? 0) : 0;
  cleanupStale();
  const run = new NetnsRun();
  const cluster = await Cluster.create(run, { nodes: 3, podsPerNode: 2 });
  let etcd: EtcdCluster | undefined;
  try {
    let store: EtcdStoreRef | undefined;
    if (opts.store === 'etcd') {
      const hosts = ['198.18.0.250', '198.18.0.251', '198.18.0.252'];
      const ns = await cluster.addUnderlayHost('etcd', hosts);
      etcd = await startEtcd({ members: 3, netns: ns, hosts });
      await etcd.etcdctl([
        'put',
        '/coreos.com/network/config',
        JSON.stringify({ Network: '10.244.0.0/16', Backend: { Type: 'udp' } }),
      ]);
      store = { type: 'etcd', endpoints: etcd.endpoints, prefix: '/coreos.com/network' };
    } else {
      cluster.writeNetConf('udp');
    }
    const nodes = cluster.nodes;
    for (const n of nodes) cluster.startWeftd(n, store ? { store } : {});
    await Promise.all(nodes.map((n) => cluster.waitWeftdReady(n)));
    for (const n of nodes) await cluster.attachPods(n, n.subnet!);
    const [n1, n2, n3] = nodes as [ClusterNode, ClusterNode, ClusterNode];
    await cluster.waitForPing(n1.pods[0]!, n2.pods[0]!.addr, 15_000);
    await cluster.waitForPing(n2.pods[1]!, n3.pods[0]!.addr, 15_000);
    const pids = nodes.map((n) => n.weftd!.pid);
    print(
      `soak: ${minutes} min, 3 nodes (udp backend, ${opts.store ?? 'embedded'} store), weftd PIDs ${pids.join(' ')}; ` +
        `TCP ${opts.tcpMbps ? `${opts.tcpMbps} Mbit/s` : 'unlimited'} n1p0->n2p0, UDP 64 B ${opts.udpMbps ?? 2} Mbit/s n2p1->n3p0`,
    );

    // Traffic runs a little longer than the sampling so the last period is full.
    const trafficS = seconds + 2;
    const tcp = await startIperf(cluster, n1.pods[0]!, n2.pods[0]!, 5201, trafficS, [
      ...(opts.tcpMbps ? ['-b', `${opts.tcpMbps}M`] : []),
    ]);
    const udp = await startIperf(cluster, n2.pods[1]!, n3.pods[0]!, 5202, trafficS, [
      '-u',
      '-l',
      '64',
      '-b',
      `${opts.udpMbps ?? 2}M`,
    ]);

    const samples: SoakSample[] = [];
    const t0 = Date.now();
    // Per node: the last scraped byte/packet counters and when (a failed scrape skips a node).
    const prev = nodes.map(() => ({ bytes: 0, pkts: 0, at: t0 }));
    let outageDone = outageS === 0;
    for (let k = 1; k * sampleS <= seconds; k++) {
      // Mid-run etcd outage (bench only): all members down, then back on their data dirs.
      if (!outageDone && etcd && Date.now() - t0 >= (seconds * 1000) / 2 - outageS * 500) {
        outageDone = true;
        print(`  etcd: all ${etcd.members.length} members down for ${outageS} s`);
        await Promise.all(etcd.members.map((m) => m.kill()));
        const back = Date.now() + outageS * 1000;
        while (Date.now() < back) {
          await sleep(Math.min(1000, back - Date.now()));
        }
        await Promise.all(etcd.members.map((m) => m.restart()));
        await etcd.waitHealthy(30_000);
        print('  etcd: back');
      }
      const wait = t0 + k * sampleS * 1000 - Date.now();
      // Slots missed while etcd was down are skipped (the next sample covers the outage).
      if (wait < -1000) continue;
      if (wait > 0) await sleep(wait);
      const ms = await Promise.all(nodes.map((n) => scrape(cluster, n)));
      const at = Date.now();
      let mbps = 0;
      let pps = 0;
      ms.forEach((m, i) => {
        if (!m) return;
        const bytes = sumOf(m, 'weft_dataplane_bytes_total', 'direction="sent"');
        const pkts = sumOf(m, 'weft_dataplane_packets_total', 'direction="sent"');
        const p = prev[i]!;
        const dt = (at - p.at) / 1000;
        mbps += ((bytes - p.bytes) * 8) / 1e6 / dt;
        pps += (pkts - p.pkts) / dt;
        prev[i] = { bytes, pkts, at };
      });
      const sample: SoakSample = {
        t: Math.round((at - t0) / 1000),
        mbps,
        pps,
        nodes: nodes.map((n, i) => ({
          node: n.name,
          rssBytes: ms[i]?.get('process_resident_memory_bytes') ?? vmRss(n.weftd!.pid),
          heapUsedBytes: ms[i]?.get('nodejs_heap_size_used_bytes') ?? 0,
          running: n.weftd!.child.exitCode === null && n.weftd!.child.signalCode === null,
        })),
        drops: dropsByReason(ms),
      };
      samples.push(sample);
      const dropText = Object.entries(sample.drops)
        .map(([r, v]) => `${r}=${v}`)
        .join(' ');
      print(
        `  t=${String(sample.t).padStart(5)} s  ${sample.mbps.toFixed(0).padStart(6)} Mbit/s ${Math.round(
          sample.pps,
        )
          .toString()
          .padStart(7)} pkt/s  ` +
          sample.nodes
            .map(
              (x) =>
                `${x.node} rss ${(x.rssBytes / MB).toFixed(1)}M heap ${(x.heapUsedBytes / MB).toFixed(1)}M${x.running ? '' : ' DEAD'}`,
            )
            .join('  ') +
          `  drops: ${dropText || 'none'}`,
      );
    }

    // Let iperf3 finish and report.
    const results = await Promise.all([tcp.client.exited, udp.client.exited]);
    const tj = parseIperfJson(tcp.client.output()) as
      | { end: { sum_received?: { bits_per_second?: number }; sum_sent?: { retransmits?: number } } }
      | undefined;
    const uj = parseIperfJson(udp.client.output()) as
      | { end: { sum?: { packets?: number; lost_packets?: number } } }
      | undefined;
    const tcpRes = tj
      ? {
          gbps: (tj.end.sum_received?.bits_per_second ?? 0) / 1e9,
          retransmits: tj.end.sum_sent?.retransmits ?? 0,
        }
      : undefined;
    const udpRes = uj
      ? { packets: uj.end.sum?.packets ?? 0, lost: uj.end.sum?.lost_packets ?? 0 }
      : undefined;
    if (results.some((r) => r !== 0) || !tj || !uj)
      print(
        `  iperf3 exited ${results.join('/')}; TCP client said: ${tcp.client.output().slice(-600)}\n` +
          `  UDP client said: ${udp.client.output().slice(-600)}`,
      );

    const finalMetrics = await Promise.all(nodes.map((n) => scrape(cluster, n)));
    const statuses = await Promise.all(
      nodes.map(async (n) => {
        const text = await getText(cluster, n, '/status');
        return text === undefined ? undefined : (JSON.parse(text) as { counters: { leaseLost: number } });
      }),
    );
    const podNs = nodes.flatMap((n) => n.pods.map((p) => p.ns));
    const kdrops = await kernelDrops(run, [...nodes.map((n) => n.ns), ...podNs]);
    const drops = dropsByReason(finalMetrics);
    const verdict = judge(samples, nodes, statuses, drops, kdrops, udpRes);
    print(
      `result: TCP ${tcpRes ? `${tcpRes.gbps.toFixed(2)} Gbit/s, ${tcpRes.retransmits} retransmits` : 'no result'}; ` +
        `UDP ${udpRes ? `${udpRes.lost}/${udpRes.packets} datagrams lost` : 'no result'}; kernel drops ${JSON.stringify(kdrops)}`,
    );
    for (const r of verdict.reasons) print(`verdict: ${r}`);
    print(`verdict: ${verdict.pass ? 'PASS' : 'FAIL'}`);
    return { samples, tcp: tcpRes, udp: udpRes, kernelDrops: kdrops, verdict };
  } finally {
    await etcd?.stop();
    await cluster.destroy();
  }
}

function vmRss(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

function judge(
  samples: readonly SoakSample[],
  nodes: readonly ClusterNode[],
  statuses: ReadonlyArray<{ counters: { leaseLost: number } } | undefined>,
  drops: Readonly<Record<string, number>>,
  kdrops: Readonly<Record<string, number>>,
  udp: { packets: number; lost: number } | undefined,
): SoakVerdict {
  const reasons: string[] = [];
  let memoryFlat = samples.length >= 2;
  if (!memoryFlat) reasons.push('memory: fewer than 2 samples, cannot judge (run longer)');
  else {
    const first = samples[0]!;
    const last = samples.at(-1)!;
    for (let i = 0; i < nodes.length; i++) {
      const a = first.nodes[i]!.rssBytes;
      const b = last.nodes[i]!.rssBytes;
      const ok = a > 0 && b <= a * (1 + RSS_GROWTH_LIMIT);
      if (!ok) memoryFlat = false;
      reasons.push(
        `memory ${nodes[i]!.name}: RSS ${(a / MB).toFixed(1)}M after warm-up -> ${(b / MB).toFixed(1)}M at the end ` +
          `(${a > 0 ? (((b - a) / a) * 100).toFixed(1) : '?'}%, limit +${RSS_GROWTH_LIMIT * 100}%) ${ok ? 'ok' : 'GROWING'}`,
      );
    }
  }
  const crashes = nodes.filter(
    (n) => n.weftd!.child.exitCode !== null || n.weftd!.child.signalCode !== null,
  ).length;
  reasons.push(`crashes: ${crashes}`);
  const leasesLost = statuses.reduce((s, x) => s + (x ? x.counters.leaseLost : 1), 0);
  reasons.push(`leases lost: ${leasesLost}`);
  const unexpected = Object.entries(drops).filter(([r, v]) => v > 0 && !LOAD_DROP_REASONS.includes(r));
  const counted =
    Object.entries(drops).reduce((s, [, v]) => s + v, 0) +
    (kdrops.udpRcvbufErrors ?? 0) +
    (kdrops.udpSndbufErrors ?? 0) +
    (kdrops.devDrops ?? 0);
  let dropsExplained = unexpected.length === 0 && udp !== undefined;
  if (unexpected.length > 0)
    reasons.push(`drops: unexpected reasons ${unexpected.map(([r, v]) => `${r}=${v}`).join(' ')}`);
  if (udp === undefined) reasons.push('drops: the UDP stream gave no result');
  else {
    // Lost UDP datagrams must be covered by counted drops (a little slack for datagrams in
    // flight when the stream ended).
    const slack = Math.max(10, udp.packets * 0.0005);
    const ok = udp.lost <= counted + slack;
    if (!ok) dropsExplained = false;
    reasons.push(
      `drops: ${udp.lost} UDP datagrams lost, ${counted} drops counted (weft ${JSON.stringify(drops)}, kernel ${JSON.stringify(kdrops)}) ${ok ? 'explained' : 'UNEXPLAINED'}`,
    );
  }
  const pass = memoryFlat && crashes === 0 && leasesLost === 0 && dropsExplained;
  return { memoryFlat, crashes, leasesLost, dropsExplained, pass, reasons };
}

async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      minutes: { type: 'string', default: '30' },
      'sample-seconds': { type: 'string', default: '60' },
      'tcp-mbps': { type: 'string', default: '0' },
      'udp-mbps': { type: 'string', default: '2' },
      store: { type: 'string', default: 'embedded' },
      'etcd-outage': { type: 'string', default: '0' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(
      'usage: node --import tsx bench/soak.ts [--minutes 30] [--sample-seconds 60] [--tcp-mbps 0] [--udp-mbps 2]\n' +
        '                                       [--store embedded|etcd] [--etcd-outage SECONDS]\n',
    );
    return 0;
  }
  const num = (name: string, v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${name} "${v}" is not a non-negative number`);
    return n;
  };
  const store = values.store;
  if (store !== 'embedded' && store !== 'etcd') throw new Error(`--store "${store}": use embedded or etcd`);
  const outage = num('etcd-outage', values['etcd-outage']);
  if (outage > 0 && store !== 'etcd') throw new Error('--etcd-outage needs --store etcd');
  const report = await runSoak({
    minutes: num('minutes', values.minutes),
    sampleSeconds: num('sample-seconds', values['sample-seconds']) || 60,
    tcpMbps: num('tcp-mbps', values['tcp-mbps']),
    udpMbps: num('udp-mbps', values['udp-mbps']) || 2,
    store,
    etcdOutageSeconds: outage,
  });
  return report.verdict.pass ? 0 : 1;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`soak: ${String((err as Error)?.stack ?? err)}\n`);
      process.exit(1);
    },
  );
}
