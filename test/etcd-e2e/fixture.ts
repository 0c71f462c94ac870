/**
 * A netns cluster whose weftd nodes share a real etcd, for the end-to-end and fault tests.
 *
 * Why a host on the underlay: weftd runs inside node namespaces, which cannot reach the root
 * namespace's loopback, and nothing may be added to the root namespace. So etcd runs in its
 * own namespace ("etcd") plugged into the cluster's switch, member i listening on
 * 198.18.0.(250+i), the way a control-plane host would sit on a real underlay. etcdctl and
 * the health checks run in that namespace too. Teardown: etcd members by PID, then the
 * cluster (weftd by PID, namespaces), even when the test failed.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { TestContext } from 'node:test';
import { NetnsRun } from '../../src/netns/netns.ts';
import { Cluster, WEFTD_HEALTHZ_PORT } from '../../src/netns/topology.ts';
import type { ClusterNode, EtcdStoreRef, SubnetInfo, WeftdOptions } from '../../src/netns/topology.ts';
import { startEtcd } from '../support/etcd.ts';
import type { EtcdCluster } from '../support/etcd.ts';

export const PREFIX = '/coreos.com/network';

/** Polls weftd's /status (env U) until peer SUB is gone; prints "GONE <ms since epoch>". */
const PEER_GONE_SCRIPT = `
const http = require('node:http');
const agent = new http.Agent({ keepAlive: true });
const poll = () => http.get(process.env.U, { agent, timeout: 2000 }, (r) => {
  let b = '';
  r.on('data', (d) => (b += d));
  r.on('end', () => {
    const s = JSON.parse(b);
    if (!s.peers.some((p) => p.subnet === process.env.SUB)) {
      console.log('GONE ' + Date.now());
      process.exit(0);
    }
    setTimeout(poll, 10);
  });
}).on('error', () => setTimeout(poll, 10));
poll();
`;
export const NETWORK = '10.244.0.0/16';

export interface NodeStatus {
  readonly ready: boolean;
  readonly lease: { readonly subnet: string; readonly publicIp: string } | undefined;
  readonly peers: ReadonlyArray<{ readonly subnet: string; readonly publicIp: string }>;
  readonly counters: Readonly<Record<string, number>>;
}

export interface EtcdWorld {
  readonly run: NetnsRun;
  readonly cluster: Cluster;
  readonly etcd: EtcdCluster;
  readonly etcdNs: string;
  readonly store: EtcdStoreRef;
  /** weftd options every node gets (store + `extraArgs`). */
  weftdOptions(extraArgs?: readonly string[]): WeftdOptions;
  /** Starts weftd on `node` and waits until it is ready; returns its subnet. */
  startNode(node: ClusterNode, extraArgs?: readonly string[]): Promise<SubnetInfo>;
  /** GET /status of weftd on `node`, parsed. */
  status(node: ClusterNode): Promise<NodeStatus>;
  /**
   * Starts a poller inside `node`'s namespace that reads /status every 10 ms and resolves
   * with the wall-clock time (Date.now(), same machine) of the first answer in which
   * `subnet` is no longer among the peers. A separate process, so that the measurement is
   * not blurred by spawning one process per poll.
   */
  whenPeerGone(node: ClusterNode, subnet: string, timeoutMs: number): Promise<number>;
  /** GET /metrics of weftd on `node`, as "name{labels}" -> value. */
  metrics(node: ClusterNode): Promise<Map<string, number>>;
  /** Lease keys under `<prefix>/subnets/` (e.g. "10.244.3.0-24"). */
  leaseKeys(): Promise<string[]>;
  destroy(): Promise<void>;
}

export async function createEtcdWorld(
  t: TestContext,
  opts: { nodes: number; members: number; podsPerNode?: number; backend?: string },
): Promise<EtcdWorld> {
  const run = new NetnsRun();
  const cluster = await Cluster.create(run, { nodes: opts.nodes, podsPerNode: opts.podsPerNode ?? 1 });
  const started: { etcd?: EtcdCluster } = {};
  const destroy = async (): Promise<void> => {
    try {
      await started.etcd?.stop();
    } finally {
      await cluster.destroy();
    }
  };
  t.after(destroy);
  const hosts = Array.from({ length: opts.members }, (_, i) => `198.18.0.${250 + i}`);
  const etcdNs = await cluster.addUnderlayHost('etcd', hosts);
  const etcd = await startEtcd({ members: opts.members, netns: etcdNs, hosts });
  started.etcd = etcd;
  const netConf = { Network: NETWORK, Backend: { Type: opts.backend ?? 'udp' } };
  await etcd.etcdctl(['put', `${PREFIX}/config`, JSON.stringify(netConf)]);
  const store: EtcdStoreRef = { type: 'etcd', endpoints: etcd.endpoints, prefix: PREFIX };
  const e = etcd;

  const world: EtcdWorld = {
    run,
    cluster,
    etcd: e,
    etcdNs,
    store,
    weftdOptions: (extraArgs = []) => ({ store, extraArgs }),
    async startNode(node, extraArgs = []) {
      cluster.startWeftd(node, world.weftdOptions(extraArgs));
      return cluster.waitWeftdReady(node, 30_000);
    },
    async status(node) {
      const r = await cluster.httpGet(node, '/status');
      if (r.code !== 0) throw new Error(`GET /status on ${node.name} failed (${r.code}): ${r.stdout}`);
      return JSON.parse(r.stdout) as NodeStatus;
    },
    async metrics(node) {
      const r = await cluster.httpGet(node, '/metrics');
      if (r.code !== 0) throw new Error(`GET /metrics on ${node.name} failed (${r.code}): ${r.stdout}`);
      return parseMetrics(r.stdout);
    },
    async whenPeerGone(node, subnet, timeoutMs) {
      const p = run.spawn(node.ns, process.execPath, ['-e', PEER_GONE_SCRIPT], {
        env: { ...process.env, U: `http://127.0.0.1:${WEFTD_HEALTHZ_PORT}/status`, SUB: subnet },
      });
      try {
        const line = await until(
          `${node.name} to drop ${subnet}`,
          timeoutMs,
          () => {
            // The poller prints GONE and exits: read its answer before treating an exit as failure.
            const gone = /GONE (\d+)/.exec(p.output())?.[1];
            if (gone !== undefined) return Promise.resolve(gone);
            if (p.child.exitCode !== null) throw new Error(`status poller failed: ${p.output()}`);
            return Promise.resolve(undefined);
          },
          5,
        );
        return Number(line);
      } finally {
        await p.stop('SIGKILL', 1000);
      }
    },
    async leaseKeys() {
      const out = await e.etcdctl(['get', '--prefix', '--keys-only', `${PREFIX}/subnets/`]);
      return out
        .split('\n')
        .map((l) => l.trim())
        .filter((l) => l !== '')
        .map((l) => l.slice(`${PREFIX}/subnets/`.length));
    },
    destroy,
  };
  return world;
}

/** Prometheus text format -> "name{labels}" -> value (comments and blank lines skipped). */
export function parseMetrics(text: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const sp = line.lastIndexOf(' ');
    m.set(line.slice(0, sp), Number(line.slice(sp + 1)));
  }
  return m;
}

/** "10.244.3.0/24" -> "10.244.3.0-24" (flannel's key form). */
export function keyOf(subnet: string): string {
  return subnet.replace('/', '-');
}

/** Polls `check` every `everyMs` until it returns a value; throws `what` after `timeoutMs`. */
export async function until<T>(
  what: string,
  timeoutMs: number,
  check: () => Promise<T | undefined>,
  everyMs = 20,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: Error | undefined;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (err) {
      lastErr = err instanceof Error ? err : new Error(String(err));
    }
    if (Date.now() > deadline)
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? `: ${lastErr.message}` : ''}`,
      );
    await sleep(everyMs);
  }
}

export interface PingLog {
  /** Echo requests sent (ping's summary). */
  readonly sent: number;
  /** Replies: sequence number and arrival time (ms since epoch, from ping -D). */
  readonly replies: ReadonlyArray<{ readonly seq: number; readonly at: number }>;
  readonly output: string;
}

export interface Pinger {
  /** Stops ping (SIGINT, so it prints its summary) and returns what it saw. */
  stop(): Promise<PingLog>;
}

/** A continuous `ping -D -i <interval>` from `from` to `to`, running until stop(). */
export function startPinger(run: NetnsRun, fromNs: string, to: string, intervalS = 0.1): Pinger {
  const p = run.spawn(fromNs, 'ping', ['-n', '-D', '-i', String(intervalS), '-W', '1', to]);
  return {
    async stop() {
      await p.stop('SIGINT', 3000);
      const output = p.output();
      const replies: Array<{ seq: number; at: number }> = [];
      for (const line of output.split('\n')) {
        const m = /^\[(\d+\.\d+)\] \d+ bytes from [\d.]+: icmp_seq=(\d+) /.exec(line);
        if (m) replies.push({ seq: Number(m[2]), at: Number(m[1]) * 1000 });
      }
      const sent = Number(/(\d+) packets transmitted/.exec(output)?.[1] ?? replies.at(-1)?.seq ?? 0);
      return { sent, replies, output };
    },
  };
}

/**
 * The longest time without a reply inside [from, to] (ms), counting the window's edges as
 * boundaries: how long forwarding stood still at worst, and when that silence began.
 */
export function longestSilence(log: PingLog, from: number, to: number): { ms: number; startedAt: number } {
  let last = from;
  let worst = { ms: 0, startedAt: from };
  for (const r of log.replies) {
    if (r.at < from || r.at > to) continue;
    if (r.at - last > worst.ms) worst = { ms: r.at - last, startedAt: last };
    last = r.at;
  }
  if (to - last > worst.ms) worst = { ms: to - last, startedAt: last };
  return worst;
}
