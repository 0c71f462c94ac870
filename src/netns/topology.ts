/**
 * A whole cluster in network namespaces, for the demo, the integration tests and the benchmark.
 *
 * Why: an overlay is only proven by traffic between pods on different nodes. This builds the
 * smallest faithful copy of a cluster on one machine, with nothing in the root namespace:
 *
 *   switch ns: bridge br0 ── veth ── node ns n<i>: eth0 198.18.0.<i>/24 (the underlay)
 *                                    node ns n<i>: bridge cni0 (gateway .1) ── veth ── pod ns n<i>p<j>: eth0 .10+j
 *
 * The pod side is attached only once the node's subnet is known: from weftd's subnet file
 * (FLANNEL_SUBNET / FLANNEL_MTU), or from a fixed plan for the kernel baselines (kernel VXLAN
 * and plain routing, no weftd) the benchmark compares against. Each weftd runs in its node
 * namespace on the embedded lease store (a shared directory under the per-run temp dir), with
 * its own subnet file and state dir; it is ready when its /readyz (port 10266, `weft status`'s
 * default) answers 200. Traffic helpers (ping with parsed RTTs, a sha256-checked TCP transfer,
 * iperf3) run inside the pod namespaces.
 *
 * Teardown is NetnsRun's (processes by PID, then namespaces); `destroy()` also removes the
 * per-run temp dir. Callers wrap everything in try/finally.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { NetnsRun, SpawnedProcess } from './netns.ts';
import { programCommand } from '../util/self.ts';
import { WeftError } from '../util/errors.ts';
import {
  cidr,
  cidrContains,
  cidrSize,
  formatCidr,
  formatIpv4,
  parseCidr,
  parseIpv4,
} from '../routing/ipv4.ts';
import type { Ipv4Cidr } from '../routing/ipv4.ts';

/** A topology step failed (a node never became ready, traffic did not flow, ...). */
export class TopologyError extends WeftError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WEFT_TOPOLOGY', message, options);
  }
}

export const UNDERLAY_NETWORK = '198.18.0.0/24';
export const DEFAULT_POD_NETWORK = '10.244.0.0/16';
/** Name of the TUN device weftd creates (flannel's is flannel0). */
export const WEFT_TUN = 'weft0';
/** weftd's health server port inside each node namespace (GET /readyz, /status): `weft status`'s default. */
export const WEFTD_HEALTHZ_PORT = 10266;
/** Kernel VXLAN device of the baseline (flannel's is flannel.1). */
export const BASELINE_VXLAN = 'weft.1';

export interface ClusterOptions {
  /** Number of nodes (1..200). Default 2. */
  readonly nodes?: number;
  /** Pods per node. Default 1. */
  readonly podsPerNode?: number;
  /** Underlay MTU (eth0 of every node and the switch ports). Default 1500. */
  readonly underlayMtu?: number;
  /** The overlay's Network (net-conf.json). Default 10.244.0.0/16. */
  readonly network?: string;
}

export interface Pod {
  /** Short name, e.g. "n1p0". */
  readonly name: string;
  readonly ns: string;
  /** Pod address (dotted quad). */
  readonly addr: string;
  readonly node: ClusterNode;
}

/** What a node's pods need to know: flannel's subnet file, parsed. */
export interface SubnetInfo {
  readonly network: Ipv4Cidr;
  readonly subnet: Ipv4Cidr;
  /** FLANNEL_SUBNET's address (the gateway on cni0, first usable address). */
  readonly gateway: number;
  readonly mtu: number;
  readonly ipMasq: boolean;
}

export interface ClusterNode {
  /** 1-based. */
  readonly index: number;
  /** Short name, e.g. "n1". */
  readonly name: string;
  readonly ns: string;
  /** Underlay address (dotted quad) on eth0. */
  readonly underlayIp: string;
  /** Per-node directory: subnet file, state dir, logs. */
  readonly dir: string;
  readonly subnetFile: string;
  subnet?: SubnetInfo;
  pods: Pod[];
  weftd?: SpawnedProcess;
}

export interface WeftdOptions {
  /** Backend.Type written to the store's net-conf. Default "udp". */
  readonly backend?: string;
  /** Extra Backend options (Port, VNI, ...). */
  readonly backendOptions?: Readonly<Record<string, unknown>>;
  /** Pass --no-offloads. */
  readonly noOffloads?: boolean;
  /** More weftd flags. */
  readonly extraArgs?: readonly string[];
  /** Log level for weftd (WEFT_LOG_LEVEL). Default "warn". */
  readonly logLevel?: string;
  /**
   * The lease store. Default: the embedded store in `storeDir`. With etcd, the net-conf
   * must already be at `<prefix>/config` (writeNetConf only writes the embedded store's).
   */
  readonly store?: EtcdStoreRef;
}

/** weftd on etcd: client URLs reachable from the node namespaces (see addUnderlayHost). */
export interface EtcdStoreRef {
  readonly type: 'etcd';
  readonly endpoints: readonly string[];
  /** Default flannel's /coreos.com/network. */
  readonly prefix?: string;
}

export interface PingResult {
  readonly sent: number;
  readonly received: number;
  /** RTTs of the echo replies, ms, in arrival order. */
  readonly rtts: number[];
  /** Lines such as "From 10.244.1.0 icmp_seq=1 Destination Net Unreachable". */
  readonly errors: string[];
  /** Source addresses of those error lines. */
  readonly errorSources: string[];
  readonly output: string;
}

export interface TransferResult {
  readonly bytes: number;
  readonly sentSha256: string;
  readonly receivedBytes: number;
  readonly receivedSha256: string;
  readonly ms: number;
}

/** What `udpTrain` saw: datagrams sent, received, and received with wrong contents or length. */
export interface UdpTrainResult {
  readonly sent: number;
  readonly received: number;
  readonly corrupt: number;
  readonly duplicates: number;
}

/** The parts of iperf3's JSON report (-J) weft reads. */
export interface Iperf3Report {
  readonly error?: string;
  readonly end?: {
    /** TCP */
    readonly sum_received?: { readonly bits_per_second?: number };
    readonly sum_sent?: { readonly retransmits?: number };
    /** UDP */
    readonly sum?: { readonly packets?: number; readonly lost_packets?: number; readonly seconds?: number };
  };
}

export interface IperfResult {
  readonly gbps: number;
  readonly retransmits: number;
  readonly seconds: number;
}

interface Captured {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command inside `ns`, never rejecting: exit code and output are returned. */
function capture(
  ns: string,
  cmd: string,
  args: readonly string[],
  opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<Captured> {
  return new Promise((resolve) => {
    execFile(
      'ip',
      ['netns', 'exec', ns, cmd, ...args],
      { timeout: opts.timeoutMs ?? 30_000, maxBuffer: 64 * 1024 * 1024, env: opts.env ?? process.env },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

const LEVELS: Readonly<Record<number, string>> = {
  10: 'trace',
  20: 'debug',
  30: 'info',
  40: 'warn',
  50: 'error',
  60: 'fatal',
};

/**
 * The last `lines` lines of a weftd's output, readable: pino JSON lines become
 * "level: msg: err.message" (other lines are kept as they are).
 */
export function summarizeLog(output: string, lines = 5): string {
  return output
    .trim()
    .split('\n')
    .filter((l) => l.trim() !== '')
    .slice(-lines)
    .map((l) => {
      try {
        const j = JSON.parse(l) as { level?: number; msg?: string; err?: { message?: string } };
        const lvl = LEVELS[j.level ?? 0] ?? String(j.level);
        return `${lvl}: ${j.msg ?? ''}${j.err?.message ? `: ${j.err.message}` : ''}`;
      } catch {
        return l;
      }
    })
    .join('\n');
}

/** Parses flannel's subnet file (KEY=VALUE lines). */
export function parseSubnetFile(text: string): SubnetInfo {
  const vars = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^\s*([A-Z0-9_]+)=(.*)$/.exec(line);
    if (m) vars.set(m[1] as string, (m[2] as string).trim());
  }
  const need = (k: string): string => {
    const v = vars.get(k);
    if (v === undefined) throw new TopologyError(`subnet file has no ${k}; is it a flannel subnet file?`);
    return v;
  };
  const sub = need('FLANNEL_SUBNET');
  const slash = sub.indexOf('/');
  const gateway = parseIpv4(sub.slice(0, slash), 'FLANNEL_SUBNET');
  const subnet = parseCidr(sub, 'FLANNEL_SUBNET', true);
  const mtu = Number(need('FLANNEL_MTU'));
  if (!Number.isInteger(mtu) || mtu < 576) throw new TopologyError(`FLANNEL_MTU "${mtu}" is not an MTU`);
  return {
    network: parseCidr(need('FLANNEL_NETWORK'), 'FLANNEL_NETWORK'),
    subnet,
    gateway,
    mtu,
    ipMasq: vars.get('FLANNEL_IPMASQ') === 'true',
  };
}

const PING_REPLY_RE = /^\d+ bytes from ([\d.]+): icmp_seq=\d+ ttl=\d+ time=([\d.]+) ms/;
const PING_ERROR_RE = /^From ([\d.]+)(?: icmp_seq=\d+)? (.+)$/;

/** Parses iputils ping output. */
export function parsePing(output: string, sent: number): PingResult {
  const rtts: number[] = [];
  const errors: string[] = [];
  const errorSources: string[] = [];
  for (const line of output.split('\n')) {
    const r = PING_REPLY_RE.exec(line);
    if (r) {
      rtts.push(Number(r[2]));
      continue;
    }
    const e = PING_ERROR_RE.exec(line);
    if (e) {
      errors.push(line.trim());
      errorSources.push(e[1] as string);
    }
  }
  return { sent, received: rtts.length, rtts, errors, errorSources, output };
}

/** TCP transfer peer, run with `node -e` inside a pod namespace (plain JS, no build step). */
/**
 * Bursts of UDP datagrams (WEFT_TRAIN_SIZES: one payload size per burst, WEFT_TRAIN_BURST
 * datagrams each, 2 ms apart). Each payload is its sequence number followed by bytes derived
 * from it, so the receiver checks every datagram's length and contents. The receiver quits
 * 800 ms after the last datagram and prints what it saw as JSON.
 */
const UDP_TRAIN_SCRIPT = String.raw`
const dgram = require('node:dgram');
const port = Number(process.env.WEFT_TRAIN_PORT);
const sizes = process.env.WEFT_TRAIN_SIZES.split(',').map(Number);
const burst = Number(process.env.WEFT_TRAIN_BURST);
const fill = (b, seq) => { b.writeUInt32BE(seq, 0); for (let i = 4; i < b.length; i++) b[i] = (seq * 7 + i) & 0xff; };
if (process.env.WEFT_TRAIN_MODE === 'server') {
  const seen = new Set();
  let received = 0, corrupt = 0, duplicates = 0, idle;
  const s = dgram.createSocket({ type: 'udp4', recvBufferSize: 8 << 20 });
  s.on('message', (m) => {
    received++;
    const seq = m.length >= 4 ? m.readUInt32BE(0) : -1;
    const want = Buffer.alloc(Math.max(4, sizes[Math.floor(seq / burst)] ?? 0));
    fill(want, seq);
    if (seq < 0 || !m.equals(want)) corrupt++;
    else if (seen.has(seq)) duplicates++;
    else seen.add(seq);
    clearTimeout(idle);
    idle = setTimeout(() => { console.log(JSON.stringify({ received, corrupt, duplicates })); process.exit(0); }, 800);
  });
  s.bind(port, '0.0.0.0', () => console.log('LISTENING'));
} else {
  const s = dgram.createSocket('udp4');
  s.connect(port, process.env.WEFT_TRAIN_HOST, async () => {
    let seq = 0;
    for (const size of sizes) {
      for (let i = 0; i < burst; i++) {
        const b = Buffer.alloc(size);
        fill(b, seq++);
        s.send(b);
      }
      await new Promise((r) => setTimeout(r, 2));
    }
    setTimeout(() => { console.log(JSON.stringify({ sent: seq })); process.exit(0); }, 200);
  });
}
`;

/** Where a helper program runs: a namespace, a name for messages, and (to receive) an address. */
export interface Endpoint {
  readonly name: string;
  readonly ns: string;
  readonly addr: string;
}

/** Starts `script` in `at` as a receiver and waits until it prints LISTENING. */
async function startReceiver(
  run: NetnsRun,
  at: Endpoint,
  script: string,
  what: string,
  env: Record<string, string>,
): Promise<SpawnedProcess> {
  const server = run.spawn(at.ns, process.execPath, ['-e', script], { env: { ...process.env, ...env } });
  try {
    await waitFor(`the ${what} receiver in ${at.name}`, 10_000, () => {
      if (server.child.exitCode !== null)
        throw new TopologyError(`${what} receiver failed: ${server.output()}`);
      return server.output().includes('LISTENING') ? true : undefined;
    });
  } catch (err) {
    await server.stop('SIGKILL', 1000);
    throw err;
  }
  return server;
}

/**
 * Bursts of `burst` UDP datagrams from `from` to `to` (UDP `port`), one payload size per
 * burst (each at least 4 bytes), every datagram's contents checked by the receiver.
 */
export async function udpTrain(
  run: NetnsRun,
  from: Endpoint,
  to: Endpoint,
  sizes: readonly number[],
  burst: number,
  port: number,
): Promise<UdpTrainResult> {
  const env = {
    WEFT_TRAIN_PORT: String(port),
    WEFT_TRAIN_SIZES: sizes.join(','),
    WEFT_TRAIN_BURST: String(burst),
  };
  const server = await startReceiver(run, to, UDP_TRAIN_SCRIPT, 'UDP', { ...env, WEFT_TRAIN_MODE: 'server' });
  try {
    const c = await capture(from.ns, process.execPath, ['-e', UDP_TRAIN_SCRIPT], {
      timeoutMs: 30_000,
      env: { ...process.env, ...env, WEFT_TRAIN_MODE: 'client', WEFT_TRAIN_HOST: to.addr },
    });
    if (c.code !== 0) throw new TopologyError(`UDP sender in ${from.name} failed (${c.code}): ${c.stderr}`);
    const { sent } = JSON.parse(c.stdout.trim()) as { sent: number };
    await Promise.race([server.exited, new Promise((r) => setTimeout(r, 10_000))]);
    const line = server
      .output()
      .split('\n')
      .find((l) => l.startsWith('{'));
    if (!line) throw new TopologyError(`the UDP receiver reported nothing: ${server.output()}`);
    return { sent, ...(JSON.parse(line) as Omit<UdpTrainResult, 'sent'>) };
  } finally {
    await server.stop('SIGKILL', 1000);
  }
}

const TRANSFER_SCRIPT = String.raw`
const net = require('node:net');
const crypto = require('node:crypto');
const mode = process.env.WEFT_XFER_MODE;
const port = Number(process.env.WEFT_XFER_PORT);
if (mode === 'server') {
  const srv = net.createServer({ allowHalfOpen: true }, (sock) => {
    const h = crypto.createHash('sha256');
    let n = 0;
    sock.on('data', (d) => { h.update(d); n += d.length; });
    sock.on('end', () => {
      sock.end(JSON.stringify({ bytes: n, sha256: h.digest('hex') }) + '\n');
      srv.close();
    });
    sock.on('error', (e) => { console.error(String(e)); process.exit(2); });
  });
  srv.listen(port, '0.0.0.0', () => console.log('LISTENING'));
} else {
  const total = Number(process.env.WEFT_XFER_BYTES);
  const chunk = 64 * 1024;
  const h = crypto.createHash('sha256');
  const t0 = process.hrtime.bigint();
  const sock = net.connect({ host: process.env.WEFT_XFER_HOST, port, allowHalfOpen: true });
  let sent = 0;
  let reply = '';
  const pump = () => {
    while (sent < total) {
      const b = crypto.randomBytes(Math.min(chunk, total - sent));
      h.update(b);
      sent += b.length;
      if (!sock.write(b)) { sock.once('drain', pump); return; }
    }
    sock.end();
  };
  sock.on('connect', pump);
  sock.on('data', (d) => { reply += d.toString(); });
  sock.on('end', () => {
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    const r = JSON.parse(reply);
    console.log(JSON.stringify({ bytes: sent, sentSha256: h.digest('hex'), receivedBytes: r.bytes, receivedSha256: r.sha256, ms }));
  });
  sock.on('error', (e) => { console.error(String(e)); process.exit(2); });
}
`;

function nodeAddr(i: number): string {
  return `198.18.0.${i}`;
}

/** VTEP MAC of node i in the kernel VXLAN baseline (locally administered). */
function baselineMac(i: number): string {
  return `02:77:66:00:00:${i.toString(16).padStart(2, '0')}`;
}

/** Waits until `check` returns a value (not undefined), polling every `everyMs`. */
async function waitFor<T>(
  what: string,
  timeoutMs: number,
  check: () => Promise<T | undefined> | T | undefined,
  everyMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new TopologyError(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

export class Cluster {
  readonly run: NetnsRun;
  readonly switchNs: string;
  readonly nodes: ClusterNode[];
  readonly network: Ipv4Cidr;
  readonly podsPerNode: number;
  readonly underlayMtu: number;
  /** Per-run temp dir (removed by destroy()). */
  readonly dir: string;
  /** Shared directory of the embedded lease store (its `config` holds the net-conf JSON). */
  readonly storeDir: string;
  private nextPort = 5300;
  private readonly removeDirOnExit: () => void;

  private constructor(
    run: NetnsRun,
    switchNs: string,
    nodes: ClusterNode[],
    opts: Required<ClusterOptions>,
    dir: string,
  ) {
    this.run = run;
    this.switchNs = switchNs;
    this.nodes = nodes;
    this.network = parseCidr(opts.network, 'network');
    this.podsPerNode = opts.podsPerNode;
    this.underlayMtu = opts.underlayMtu;
    this.dir = dir;
    this.storeDir = join(dir, 'store');
    // NetnsRun removes namespaces on exit and on signals; the temp dir goes with them.
    this.removeDirOnExit = () => rmSync(dir, { recursive: true, force: true });
    process.on('exit', this.removeDirOnExit);
  }

  /**
   * Builds the underlay: the switch namespace with bridge br0 and N node namespaces, each
   * with eth0 = 198.18.0.<i>/24 and ip_forward on. Pods come later (attachPods).
   */
  static async create(run: NetnsRun, options: ClusterOptions = {}): Promise<Cluster> {
    const opts: Required<ClusterOptions> = {
      nodes: options.nodes ?? 2,
      podsPerNode: options.podsPerNode ?? 1,
      underlayMtu: options.underlayMtu ?? 1500,
      network: options.network ?? DEFAULT_POD_NETWORK,
    };
    if (!(opts.nodes >= 1 && opts.nodes <= 200)) throw new TopologyError('nodes must be between 1 and 200');
    if (!(opts.podsPerNode >= 0 && opts.podsPerNode <= 200))
      throw new TopologyError('pods per node must be between 0 and 200');
    const dir = mkdtempSync(join(tmpdir(), `${run.prefix}-`));
    const cluster = new Cluster(run, run.ns('sw'), [], opts, dir);
    try {
      await cluster.buildUnderlay(opts.nodes);
    } catch (err) {
      await cluster.destroy();
      throw err;
    }
    return cluster;
  }

  private async buildUnderlay(count: number): Promise<void> {
    const { run } = this;
    mkdirSync(this.storeDir, { recursive: true });
    const sw = await run.addNamespace('sw');
    await run.ip(sw, 'link', 'add', 'br0', 'mtu', String(this.underlayMtu), 'type', 'bridge');
    await run.ip(sw, 'link', 'set', 'br0', 'up');
    for (let i = 1; i <= count; i++) {
      const name = `n${i}`;
      const ns = await run.addNamespace(name);
      await run.addVeth(sw, `p${i}`, ns, 'eth0', this.underlayMtu);
      await run.ip(sw, 'link', 'set', `p${i}`, 'master', 'br0');
      await run.ip(ns, 'addr', 'add', `${nodeAddr(i)}/24`, 'dev', 'eth0');
      await run.exec(ns, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
      const nodeDir = join(this.dir, name);
      mkdirSync(join(nodeDir, 'state'), { recursive: true });
      this.nodes.push({
        index: i,
        name,
        ns,
        underlayIp: nodeAddr(i),
        dir: nodeDir,
        subnetFile: join(nodeDir, 'subnet.env'),
        pods: [],
      });
    }
  }

  /**
   * Adds a host that is not a node (an etcd server, say) to the underlay: namespace
   * `<prefix>-<name>` with eth0 on the switch, holding `addrs` (dotted quads, /24 of the
   * underlay, e.g. 198.18.0.250 upwards, clear of the nodes). Returns the namespace name.
   */
  async addUnderlayHost(name: string, addrs: readonly string[]): Promise<string> {
    const { run } = this;
    const ns = await run.addNamespace(name);
    const port = `h${name}`.slice(0, 15);
    await run.addVeth(this.switchNs, port, ns, 'eth0', this.underlayMtu);
    await run.ip(this.switchNs, 'link', 'set', port, 'master', 'br0');
    for (const a of addrs) await run.ip(ns, 'addr', 'add', `${a}/24`, 'dev', 'eth0');
    return ns;
  }

  node(i: number): ClusterNode {
    const n = this.nodes[i - 1];
    if (!n) throw new TopologyError(`no node ${i} (the cluster has ${this.nodes.length})`);
    return n;
  }

  /** All pods, node by node. */
  pods(): Pod[] {
    return this.nodes.flatMap((n) => n.pods);
  }

  // ---- weftd ---------------------------------------------------------------------------

  /** Writes the net-conf JSON into the embedded store's directory (`<storeDir>/config`). */
  writeNetConf(backend: string, backendOptions: Readonly<Record<string, unknown>> = {}): string {
    const conf = { Network: formatCidr(this.network), Backend: { Type: backend, ...backendOptions } };
    const text = JSON.stringify(conf, null, 2) + '\n';
    writeFileSync(join(this.storeDir, 'config'), text);
    return text;
  }

  /** weftd's command line for a node (embedded store, own subnet file and state dir). */
  weftdArgs(node: ClusterNode, opts: WeftdOptions = {}): string[] {
    const store =
      opts.store?.type === 'etcd'
        ? [
            '--lease-store',
            'etcd',
            '--etcd-endpoints',
            opts.store.endpoints.join(','),
            '--etcd-prefix',
            opts.store.prefix ?? '/coreos.com/network',
          ]
        : ['--lease-store', 'embedded', '--store-dir', this.storeDir];
    return [
      ...store,
      '--iface',
      'eth0',
      '--subnet-file',
      node.subnetFile,
      '--state-dir',
      join(node.dir, 'state'),
      ...(opts.noOffloads ? ['--no-offloads'] : []),
      '--healthz-port',
      String(WEFTD_HEALTHZ_PORT),
      '--log-level',
      opts.logLevel ?? process.env.WEFT_LOG_LEVEL ?? 'warn',
      ...(opts.extraArgs ?? []),
    ];
  }

  /** Starts weftd in the node's namespace (the net-conf must be written first: startAll does). */
  startWeftd(node: ClusterNode, opts: WeftdOptions = {}): SpawnedProcess {
    if (node.weftd && node.weftd.child.exitCode === null && node.weftd.child.signalCode === null)
      throw new TopologyError(`weftd already runs on ${node.name}`);
    const { cmd, args } = programCommand('weftd');
    const proc = this.run.spawn(node.ns, cmd, [...args, ...this.weftdArgs(node, opts)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    node.weftd = proc;
    return proc;
  }

  /**
   * Waits until weftd on `node` has written its subnet file and reports ready on /readyz
   * (lease held, data path up); returns the subnet file parsed. Fails at once, with weftd's
   * last output, if weftd exits first.
   */
  async waitWeftdReady(node: ClusterNode, timeoutMs = 40_000): Promise<SubnetInfo> {
    const proc = node.weftd;
    const alive = (): void => {
      if (proc && (proc.child.exitCode !== null || proc.child.signalCode !== null)) {
        throw new TopologyError(
          `weftd on ${node.name} exited (${proc.child.exitCode ?? proc.child.signalCode}) before it was ready; its last words:\n` +
            summarizeLog(proc.output(), 3),
        );
      }
    };
    const info = await waitFor(`weftd on ${node.name} to write ${node.subnetFile}`, timeoutMs, () => {
      alive();
      if (!existsSync(node.subnetFile)) return undefined;
      try {
        return parseSubnetFile(readFileSync(node.subnetFile, 'utf8'));
      } catch {
        return undefined; // being written
      }
    });
    await waitFor(
      `weftd on ${node.name} to report ready on /readyz`,
      timeoutMs,
      async () => {
        alive();
        const c = await this.httpGet(node, '/readyz');
        return c.code === 0 ? true : undefined;
      },
      100,
    );
    node.subnet = info;
    return info;
  }

  /**
   * GET http://127.0.0.1:<healthz port><path> inside the node namespace (a one-line node
   * client, so no curl is needed). Exit code 0 only for HTTP 200; stdout has the body.
   */
  httpGet(node: ClusterNode, path: string): Promise<{ code: number; stdout: string }> {
    const script =
      "require('node:http').get(process.env.U,{timeout:2000},(r)=>{let b='';r.on('data',(d)=>b+=d);" +
      "r.on('end',()=>{process.stdout.write(b);process.exit(r.statusCode===200?0:1)})}).on('error',()=>process.exit(2))";
    return capture(node.ns, process.execPath, ['-e', script], {
      timeoutMs: 5000,
      env: { ...process.env, U: `http://127.0.0.1:${WEFTD_HEALTHZ_PORT}${path}` },
    });
  }

  /** Stops weftd on `node` (SIGTERM, then SIGKILL after `graceMs`). */
  async stopWeftd(node: ClusterNode, graceMs = 5000): Promise<number | string | undefined> {
    const p = node.weftd;
    if (!p) return undefined;
    const r = await p.stop('SIGTERM', graceMs);
    return r;
  }

  /**
   * Writes the net-conf, starts weftd on every node, waits for all subnet files and
   * attaches the pods. Returns the subnets in node order.
   */
  async startWeftdAll(opts: WeftdOptions = {}): Promise<SubnetInfo[]> {
    this.writeNetConf(opts.backend ?? 'udp', opts.backendOptions);
    for (const n of this.nodes) this.startWeftd(n, opts);
    const infos = await Promise.all(this.nodes.map((n) => this.waitWeftdReady(n)));
    for (const n of this.nodes) await this.attachPods(n, n.subnet as SubnetInfo);
    return infos;
  }

  /** The address of weftd's TUN device on `node` (source of its ICMP errors). */
  async tunAddress(node: ClusterNode): Promise<string> {
    const out = await this.run.ip(node.ns, '-o', '-4', 'addr', 'show', 'dev', WEFT_TUN);
    const m = /inet ([\d.]+)\//.exec(out);
    if (!m) throw new TopologyError(`${WEFT_TUN} on ${node.name} has no IPv4 address`);
    return m[1] as string;
  }

  // ---- pods ----------------------------------------------------------------------------

  /**
   * Creates bridge cni0 (gateway = FLANNEL_SUBNET's address) in the node namespace and the
   * node's pods behind it: pod j gets subnet + 10 + j, MTU = FLANNEL_MTU, default via gateway.
   */
  async attachPods(node: ClusterNode, info: SubnetInfo): Promise<Pod[]> {
    node.subnet = info;
    const gw = formatIpv4(info.gateway);
    const plen = info.subnet.prefix;
    const { run } = this;
    await run.ip(node.ns, 'link', 'add', 'cni0', 'mtu', String(info.mtu), 'type', 'bridge');
    await run.ip(node.ns, 'addr', 'add', `${gw}/${plen}`, 'dev', 'cni0');
    await run.ip(node.ns, 'link', 'set', 'cni0', 'up');
    for (let j = 0; j < this.podsPerNode; j++) {
      const name = `${node.name}p${j}`;
      const ns = await run.addNamespace(name);
      const addr = formatIpv4((info.subnet.addr + 10 + j) >>> 0);
      await run.addVeth(node.ns, `vp${j}`, ns, 'eth0', info.mtu);
      await run.ip(node.ns, 'link', 'set', `vp${j}`, 'master', 'cni0');
      await run.ip(ns, 'addr', 'add', `${addr}/${plen}`, 'dev', 'eth0');
      await run.ip(ns, 'route', 'add', 'default', 'via', gw);
      node.pods.push({ name, ns, addr, node });
    }
    return node.pods;
  }

  // ---- kernel baselines (no weftd) -------------------------------------------------------

  /** Subnet the baselines give node i: the i-th /24 of the Network (10.244.<i>.0/24). */
  baselineSubnet(i: number): Ipv4Cidr {
    return cidr((this.network.addr + i * 256) >>> 0, 24);
  }

  /**
   * What pods of node `i` use on a path wired without weftd (kernel references, outside
   * overlays): the baseline subnet, its first address as gateway, the path's MTU.
   */
  baselineInfo(i: number, mtu: number): SubnetInfo {
    const subnet = this.baselineSubnet(i);
    return { network: this.network, subnet, gateway: (subnet.addr + 1) >>> 0, mtu, ipMasq: false };
  }

  /**
   * Plain routing, no encapsulation (flannel's host-gw): each node routes every peer's
   * subnet via the peer's underlay address. The upper bound for any overlay.
   */
  async setupDirectRouting(): Promise<void> {
    for (const n of this.nodes) await this.attachPods(n, this.baselineInfo(n.index, this.underlayMtu));
    for (const n of this.nodes) {
      for (const p of this.nodes) {
        if (p === n) continue;
        await this.run.ip(
          n.ns,
          'route',
          'add',
          formatCidr(this.baselineSubnet(p.index)),
          'via',
          p.underlayIp,
        );
      }
    }
  }

  /**
   * Kernel VXLAN programmed the way flannel's vxlan backend does it: device weft.1 (VNI 1,
   * port 8472, nolearning), address = subnet network address /32, and per peer a permanent
   * neighbour entry, an FDB entry and an onlink route.
   */
  async setupKernelVxlan(vni = 1, port = 8472): Promise<void> {
    const mtu = this.underlayMtu - 50;
    for (const n of this.nodes) {
      const { ns } = n;
      await this.run.ip(
        ns,
        'link',
        'add',
        BASELINE_VXLAN,
        'type',
        'vxlan',
        'id',
        String(vni),
        'local',
        n.underlayIp,
        'dev',
        'eth0',
        'dstport',
        String(port),
        'nolearning',
      );
      await this.run.ip(
        ns,
        'link',
        'set',
        BASELINE_VXLAN,
        'address',
        baselineMac(n.index),
        'mtu',
        String(mtu),
      );
      await this.run.ip(
        ns,
        'addr',
        'add',
        `${formatIpv4(this.baselineSubnet(n.index).addr)}/32`,
        'dev',
        BASELINE_VXLAN,
      );
      await this.run.ip(ns, 'link', 'set', BASELINE_VXLAN, 'up');
      await this.attachPods(n, this.baselineInfo(n.index, mtu));
    }
    for (const n of this.nodes) {
      for (const p of this.nodes) {
        if (p === n) continue;
        const peerSubnet = this.baselineSubnet(p.index);
        const peerVtep = formatIpv4(peerSubnet.addr);
        await this.run.ip(
          n.ns,
          'neigh',
          'replace',
          peerVtep,
          'lladdr',
          baselineMac(p.index),
          'dev',
          BASELINE_VXLAN,
          'nud',
          'permanent',
        );
        await this.run.exec(n.ns, 'bridge', [
          'fdb',
          'append',
          baselineMac(p.index),
          'dev',
          BASELINE_VXLAN,
          'dst',
          p.underlayIp,
        ]);
        await this.run.ip(
          n.ns,
          'route',
          'replace',
          formatCidr(peerSubnet),
          'via',
          peerVtep,
          'dev',
          BASELINE_VXLAN,
          'onlink',
        );
      }
    }
  }

  // ---- traffic ---------------------------------------------------------------------------

  /** Runs a command inside a pod; resolves with stdout (rejects on non-zero exit). */
  execPod(pod: Pod, cmd: string, args: readonly string[], timeoutMs?: number): Promise<string> {
    return this.run.exec(pod.ns, cmd, args, timeoutMs ? { timeoutMs } : {});
  }

  /** Pings `to` from `from`; never rejects (a failed ping is a result with received 0). */
  async ping(
    from: Pod,
    to: string,
    opts: { count?: number; intervalS?: number; waitS?: number; size?: number; adaptive?: boolean } = {},
  ): Promise<PingResult> {
    const count = opts.count ?? 3;
    // adaptive (ping -A): each echo request leaves as soon as the previous reply is in.
    const pace = opts.adaptive ? ['-A'] : ['-i', String(opts.intervalS ?? 0.2)];
    const args = ['-n', '-c', String(count), ...pace, '-W', String(opts.waitS ?? 1)];
    if (opts.size !== undefined) args.push('-s', String(opts.size));
    args.push(to);
    const perPingS = opts.adaptive ? 0.01 : (opts.intervalS ?? 0.2);
    const c = await capture(from.ns, 'ping', args, {
      timeoutMs: (count * perPingS + (opts.waitS ?? 1) + 5) * 1000,
    });
    return parsePing(c.stdout + c.stderr, count);
  }

  /** Pings until one reply arrives (peers' routes appear within about a second). */
  async waitForPing(from: Pod, to: string, timeoutMs = 10_000): Promise<PingResult> {
    const deadline = Date.now() + timeoutMs;
    let last: PingResult | undefined;
    while (Date.now() < deadline) {
      last = await this.ping(from, to, { count: 1, waitS: 1 });
      if (last.received > 0) return last;
      await sleep(100);
    }
    throw new TopologyError(
      `no ping reply from ${to} to ${from.name} within ${timeoutMs} ms:\n${last?.output ?? ''}`,
    );
  }

  /**
   * Sends `bytes` random bytes over TCP from pod `from` to pod `to`; both ends compute a
   * sha256 of what they sent/received. Rejects if either end fails.
   */
  async tcpTransfer(from: Pod, to: Pod, bytes: number, timeoutMs = 60_000): Promise<TransferResult> {
    const port = this.nextPort++;
    const server = await startReceiver(this.run, to, TRANSFER_SCRIPT, 'TCP', {
      WEFT_XFER_MODE: 'server',
      WEFT_XFER_PORT: String(port),
    });
    try {
      const c = await capture(from.ns, process.execPath, ['-e', TRANSFER_SCRIPT], {
        timeoutMs,
        env: {
          ...process.env,
          WEFT_XFER_MODE: 'client',
          WEFT_XFER_PORT: String(port),
          WEFT_XFER_HOST: to.addr,
          WEFT_XFER_BYTES: String(bytes),
        },
      });
      if (c.code !== 0)
        throw new TopologyError(`TCP transfer ${from.name} -> ${to.name} failed (${c.code}): ${c.stderr}`);
      return JSON.parse(c.stdout.trim()) as TransferResult;
    } finally {
      await server.stop('SIGKILL', 1000);
    }
  }

  /**
   * Bursts of `burst` UDP datagrams from `from` to `to`, one payload size per burst (each at
   * least 4 bytes), every datagram's contents checked by the receiver.
   */
  udpTrain(from: Pod, to: Pod, sizes: readonly number[], burst = 64): Promise<UdpTrainResult> {
    return udpTrain(this.run, from, to, sizes, burst, this.nextPort++);
  }

  /** iperf3 TCP, one stream, `seconds` long, from `from` to `to`. */
  async iperf(from: Pod, to: Pod, seconds = 5): Promise<IperfResult> {
    const j = await this.iperf3(from, to, ['-t', String(seconds)], seconds);
    const bps = j.end?.sum_received?.bits_per_second;
    if (bps === undefined) throw new TopologyError(`iperf3 ${from.name} -> ${to.name}: no result`);
    return { gbps: bps / 1e9, retransmits: j.end?.sum_sent?.retransmits ?? 0, seconds };
  }

  /**
   * Runs iperf3 from `from` (client arguments `args`, e.g. ['-t', '5', '-P', '4']) against
   * a one-shot server in `to` on a port of its own, and returns iperf3's JSON report. A
   * report that carries iperf3's own error, or no report, is a TopologyError that says why.
   */
  async iperf3(from: Pod, to: Pod, args: readonly string[], seconds: number): Promise<Iperf3Report> {
    const port = this.nextPort++;
    const server = this.run.spawn(to.ns, 'iperf3', ['-s', '-1', '--forceflush', '-p', String(port)]);
    try {
      await waitFor(`iperf3 server in ${to.name}`, 10_000, () => {
        if (server.child.exitCode !== null)
          throw new TopologyError(`iperf3 server failed: ${server.output()}`);
        return server.output().includes('listening') ? true : undefined;
      });
      const c = await capture(from.ns, 'iperf3', ['-c', to.addr, '-p', String(port), ...args, '-J'], {
        timeoutMs: (seconds + 20) * 1000,
      });
      let j: Iperf3Report;
      try {
        j = JSON.parse(c.stdout) as Iperf3Report;
      } catch {
        throw new TopologyError(
          `iperf3 ${from.name} -> ${to.name} ${args.join(' ')} printed no JSON (exit ${c.code}): ${c.stderr}`,
        );
      }
      if (j.error)
        throw new TopologyError(`iperf3 ${from.name} -> ${to.name} ${args.join(' ')} failed: ${j.error}`);
      return j;
    } finally {
      await server.stop('SIGKILL', 1000);
    }
  }

  /** An address inside the Network that no node's subnet holds (for "no route" checks). */
  unleasedAddress(): string {
    const size = cidrSize(this.network);
    for (let off = Math.floor(size / 2) + 10; off < size; off += 256) {
      const a = (this.network.addr + off) >>> 0;
      if (!this.nodes.some((n) => n.subnet && cidrContains(n.subnet.subnet, a))) return formatIpv4(a);
    }
    throw new TopologyError(`every address of ${formatCidr(this.network)} is leased`);
  }

  /** Stops weftd everywhere, deletes every namespace and the temp dir. */
  async destroy(): Promise<void> {
    try {
      await this.run.destroy();
    } finally {
      process.off('exit', this.removeDirOnExit);
      this.removeDirOnExit();
    }
  }
}
