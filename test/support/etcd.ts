/**
 * Real etcd for tests: one member or a small cluster on loopback, free ports, a temp data
 * dir per member. Members are stopped with SIGKILL by PID in `stop()` (call it from
 * `t.after`/`finally`), and a process 'exit' hook kills any member a crashed test left behind.
 * etcdctl (API v3) is wrapped so tests can write keys exactly as flanneld would.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { get as httpGet } from 'node:http';
import { get as httpsGet } from 'node:https';
import { connect, createServer } from 'node:net';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../../src/util/exec.ts';

export interface EtcdMember {
  readonly name: string;
  readonly clientUrl: string;
  readonly peerUrl: string;
  readonly dataDir: string;
  /** PID of the running process (changes on `restart()`). */
  readonly pid: number;
  /** True until the member was killed. */
  readonly alive: boolean;
  /** SIGKILL by PID; resolves when the process has exited. */
  kill(): Promise<void>;
  /**
   * Starts a killed member again on the same data dir, ports and namespace (it rejoins the
   * cluster with its old identity). Resolves once the process is spawned; use
   * `EtcdCluster.waitHealthy()` to wait for the quorum.
   */
  restart(): Promise<void>;
}

export interface EtcdCluster {
  readonly members: readonly EtcdMember[];
  /** Client URLs of all members (including killed ones). */
  readonly endpoints: readonly string[];
  /** Runs `etcdctl` (ETCDCTL_API=3) against the live members; resolves with stdout. */
  etcdctl(args: readonly string[], input?: string): Promise<string>;
  /** Name of the current leader, via `etcdctl endpoint status -w json`. */
  leader(): Promise<EtcdMember>;
  /** Adds user root with `password` and turns authentication on; etcdctl then logs in as root. */
  enableAuth(password: string): Promise<void>;
  /** Kills every member (SIGKILL by PID) and removes the data dirs. Idempotent. */
  stop(): Promise<void>;
  /** Waits until every live member answers /health with true (quorum). */
  waitHealthy(timeoutMs?: number): Promise<void>;
}

export interface StartEtcdOptions {
  /** Number of members (1 or 3 usually). */
  members?: number;
  /** Serve clients over TLS with these certificates (client certificates required). */
  tls?: TestCerts;
  /** Readiness timeout per cluster. */
  readyTimeoutMs?: number;
  /**
   * Run the members (and etcdctl, and the health checks) inside this network namespace,
   * e.g. a host on a test underlay that weftd in other namespaces can reach. The namespace
   * belongs to the caller (created and deleted by its NetnsRun).
   */
  netns?: string;
  /**
   * Address member i listens on (clients and peers): `hosts[i]`, else `hosts[0]`, else
   * 127.0.0.1. With `netns`, the addresses must be configured in that namespace.
   */
  hosts?: readonly string[];
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const p of live) {
    try {
      if (p.pid !== undefined) process.kill(p.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

/** A free TCP port on 127.0.0.1 (the kernel picks it; released before etcd binds it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export interface TestCerts {
  readonly dir: string;
  readonly ca: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
  /** Removes the directory. */
  remove(): void;
}

/** A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (openssl). */
export async function makeTestCerts(): Promise<TestCerts> {
  const dir = mkdtempSync(join(tmpdir(), 'weft-etcd-tls-'));
  const p = (n: string): string => join(dir, n);
  const ssl = (args: string[]): Promise<string> => run('openssl', args, { timeoutMs: 30_000 });
  try {
    await ssl(
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-days',
        '1',
        '-subj',
        '/CN=weft-test-ca',
      ].concat(['-keyout', p('ca.key'), '-out', p('ca.pem')]),
    );
    writeFileSync(
      p('server.ext'),
      'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n',
    );
    writeFileSync(p('client.ext'), 'extendedKeyUsage=clientAuth\n');
    for (const [name, cn] of [
      ['server', '127.0.0.1'],
      ['client', 'weft-client'],
    ] as const) {
      await ssl(
        [
          'req',
          '-newkey',
          'ec',
          '-pkeyopt',
          'ec_paramgen_curve:prime256v1',
          '-nodes',
          '-subj',
          `/CN=${cn}`,
          '-keyout',
          p(`${name}.key`),
        ].concat(['-out', p(`${name}.csr`)]),
      );
      await ssl(
        ['x509', '-req', '-in', p(`${name}.csr`), '-CA', p('ca.pem'), '-CAkey', p('ca.key')].concat([
          '-CAcreateserial',
          '-days',
          '1',
          '-extfile',
          p(`${name}.ext`),
          '-out',
          p(`${name}.pem`),
        ]),
      );
    }
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    dir,
    ca: p('ca.pem'),
    serverCert: p('server.pem'),
    serverKey: p('server.key'),
    clientCert: p('client.pem'),
    clientKey: p('client.key'),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

function getJson(url: string, tls?: TestCerts): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const opts = tls
      ? {
          ca: readFileSync(tls.ca),
          cert: readFileSync(tls.clientCert),
          key: readFileSync(tls.clientKey),
          servername: '',
        }
      : {};
    const req = (url.startsWith('https:') ? httpsGet : httpGet)(url, { ...opts, timeout: 1000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => {
        try {
          resolve(JSON.parse(body));
        } catch {
          reject(new Error(`${url}: not JSON: ${body.slice(0, 200)}`));
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

/** GET <url> from inside namespace `ns` (a one-line node client), parsed as JSON. */
async function getJsonInNetns(url: string, ns: string): Promise<unknown> {
  const script =
    "require('node:http').get(process.env.U,{timeout:1000},(r)=>{let b='';r.on('data',(d)=>b+=d);" +
    "r.on('end',()=>process.stdout.write(b))}).on('error',(e)=>{console.error(String(e));process.exit(2)})";
  const out = await run(process.execPath, ['-e', script], {
    netns: ns,
    timeoutMs: 3000,
    env: { ...process.env, U: url },
  });
  try {
    return JSON.parse(out);
  } catch {
    throw new Error(`${url}: not JSON: ${out.slice(0, 200)}`);
  }
}

async function waitHealthy(
  url: string,
  deadline: number,
  proc: () => ChildProcess,
  stderr: () => string,
  tls?: TestCerts,
  netns?: string,
) {
  let lastErr = '';
  while (Date.now() < deadline) {
    const p = proc();
    if (p.exitCode !== null || p.signalCode !== null) {
      throw new Error(`etcd at ${url} exited early (${p.exitCode ?? p.signalCode}): ${stderr()}`);
    }
    try {
      const body = (
        netns !== undefined
          ? await getJsonInNetns(`${url}/health`, netns)
          : await getJson(`${url}/health`, tls)
      ) as { health?: string };
      if (body.health === 'true') return;
      lastErr = JSON.stringify(body);
    } catch (err) {
      lastErr = String(err);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`etcd at ${url} not healthy in time: ${lastErr}; stderr: ${stderr()}`);
}

export async function startEtcd(opts: StartEtcdOptions = {}): Promise<EtcdCluster> {
  const n = opts.members ?? 1;
  const names = Array.from({ length: n }, (_, i) => `m${i}`);
  const ports: Array<{ client: number; peer: number }> = [];
  for (let i = 0; i < n; i++) ports.push({ client: await freePort(), peer: await freePort() });
  const host = (i: number): string => opts.hosts?.[i] ?? opts.hosts?.[0] ?? '127.0.0.1';
  const initialCluster = names.map((nm, i) => `${nm}=http://${host(i)}:${ports[i]!.peer}`).join(',');
  const token = `weft-test-${process.pid}-${Date.now()}`;

  const members: Array<EtcdMember & { alive: boolean }> = [];
  const procs: ChildProcess[] = [];
  const stderrs: string[] = [];
  const cleanup = async () => {
    await Promise.all(members.map((m) => m.kill()));
    for (const m of members) rmSync(m.dataDir, { recursive: true, force: true });
  };
  try {
    for (let i = 0; i < n; i++) {
      const name = names[i]!;
      const { client, peer } = ports[i]!;
      const clientUrl = `${opts.tls ? 'https' : 'http'}://${host(i)}:${client}`;
      const tlsFlags = opts.tls
        ? ['--cert-file', opts.tls.serverCert, '--key-file', opts.tls.serverKey].concat([
            '--trusted-ca-file',
            opts.tls.ca,
            '--client-cert-auth',
          ])
        : [];
      const peerUrl = `http://${host(i)}:${peer}`;
      const dataDir = mkdtempSync(join(tmpdir(), 'weft-etcd-'));
      const etcdArgs = [
        '--name',
        name,
        '--logger=zap',
        '--log-level=warn',
        '--data-dir',
        dataDir,
        '--listen-client-urls',
        clientUrl,
        '--advertise-client-urls',
        clientUrl,
        '--listen-peer-urls',
        peerUrl,
        '--initial-advertise-peer-urls',
        peerUrl,
        '--initial-cluster',
        initialCluster,
        '--initial-cluster-state',
        'new',
        '--initial-cluster-token',
        token,
        ...tlsFlags,
      ];
      stderrs.push('');
      let proc!: ChildProcess;
      let exited!: Promise<void>;
      const spawnOne = (): void => {
        // `ip netns exec` execs etcd in place, so the PID is etcd's own.
        const p =
          opts.netns !== undefined
            ? spawn('ip', ['netns', 'exec', opts.netns, 'etcd', ...etcdArgs], {
                stdio: ['ignore', 'ignore', 'pipe'],
              })
            : spawn('etcd', etcdArgs, { stdio: ['ignore', 'ignore', 'pipe'] });
        if (p.pid === undefined) throw new Error('could not spawn etcd (is etcd-server installed?)');
        live.add(p);
        procs[i] = p;
        p.stderr?.setEncoding('utf8');
        p.stderr?.on('data', (d: string) => {
          const s = stderrs[i]! + d;
          stderrs[i] = s.length > 8192 ? s.slice(-8192) : s;
        });
        proc = p;
        exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
      };
      spawnOne();
      const member = {
        name,
        clientUrl,
        peerUrl,
        dataDir,
        get pid(): number {
          return proc.pid!;
        },
        alive: true,
        async kill() {
          if (proc.exitCode === null && proc.signalCode === null) {
            try {
              process.kill(proc.pid!, 'SIGKILL');
            } catch {
              // already exited
            }
            await exited;
          }
          member.alive = false;
          live.delete(proc);
        },
        restart() {
          if (proc.exitCode === null && proc.signalCode === null)
            return Promise.reject(new Error(`etcd member ${name} still runs; kill() it first`));
          spawnOne();
          member.alive = true;
          return Promise.resolve();
        },
      };
      members.push(member);
    }
    const deadline = Date.now() + (opts.readyTimeoutMs ?? 15_000);
    await Promise.all(
      members.map((m, i) =>
        waitHealthy(
          m.clientUrl,
          deadline,
          () => procs[i]!,
          () => stderrs[i] ?? '',
          opts.tls,
          opts.netns,
        ),
      ),
    );
  } catch (err) {
    await cleanup();
    throw err;
  }

  let stopped = false;
  let rootPassword: string | undefined;
  const cluster: EtcdCluster = {
    members,
    endpoints: members.map((m) => m.clientUrl),
    etcdctl(args, input) {
      const eps = members.filter((m) => m.alive).map((m) => m.clientUrl);
      const flags = [`--endpoints=${eps.join(',')}`];
      if (opts.tls)
        flags.push(`--cacert=${opts.tls.ca}`, `--cert=${opts.tls.clientCert}`, `--key=${opts.tls.clientKey}`);
      if (rootPassword !== undefined) flags.push(`--user=root:${rootPassword}`);
      return run('etcdctl', [...flags, ...args], {
        ...(opts.netns !== undefined ? { netns: opts.netns } : {}),
        env: { ...process.env, ETCDCTL_API: '3' },
        input,
        timeoutMs: 20_000,
      });
    },
    async leader() {
      const out = await cluster.etcdctl(['endpoint', 'status', '-w', 'json']);
      // member ids are uint64: keep them as strings (JSON numbers would lose precision)
      const rows = JSON.parse(out.replace(/:\s*(\d{15,})/g, ':"$1"')) as Array<{
        Endpoint: string;
        Status: { header: { member_id: number | string }; leader: number | string };
      }>;
      const row = rows.find((r) => String(r.Status.leader) === String(r.Status.header.member_id));
      const m = row && members.find((x) => x.clientUrl === row.Endpoint);
      if (!m) throw new Error(`no leader among the live members: ${out}`);
      return m;
    },
    async enableAuth(password) {
      await cluster.etcdctl(['user', 'add', `root:${password}`]);
      await cluster.etcdctl(['auth', 'enable']);
      rootPassword = password;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await cleanup();
    },
    async waitHealthy(timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      await Promise.all(
        members.map((m, i) =>
          m.alive
            ? waitHealthy(
                m.clientUrl,
                deadline,
                () => procs[i]!,
                () => stderrs[i] ?? '',
                opts.tls,
                opts.netns,
              )
            : Promise.resolve(),
        ),
      );
    },
  };
  return cluster;
}

export interface TcpProxy {
  /** URL to give clients instead of `target`. */
  readonly url: string;
  /** Cuts every open connection and refuses new ones until `unblock()`. */
  block(): void;
  unblock(): void;
  close(): Promise<void>;
}

/**
 * A loopback TCP proxy in front of an etcd member, so a test can cut a client off (as a
 * network partition would) while other clients keep talking to etcd directly.
 */
export function startTcpProxy(target: string): Promise<TcpProxy> {
  const t = new URL(target);
  const sockets = new Set<Socket>();
  let blocked = false;
  const server = createServer((client) => {
    if (blocked) {
      client.destroy();
      return;
    }
    const upstream = connect(Number(t.port), t.hostname);
    sockets.add(client);
    sockets.add(upstream);
    const drop = (): void => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      resolve({
        url: `http://127.0.0.1:${port}`,
        block() {
          blocked = true;
          for (const s of sockets) s.destroy();
          sockets.clear();
        },
        unblock() {
          blocked = false;
        },
        close() {
          blocked = true;
          for (const s of sockets) s.destroy();
          sockets.clear();
          return new Promise<void>((r) => server.close(() => r()));
        },
      });
    });
  });
}
