/**
 * Shared helpers of the operations tests: HTTP against weftd's health port from inside a
 * node namespace (status code and body, so 503 is told apart from "not listening"), a small
 * Prometheus text-format parser, the `weft` CLI run inside a namespace, and tiny TCP/UDP
 * probes run as `node -e` scripts in pod namespaces.
 *
 * Why here and not in src/: these are test instruments; the product's own clients are
 * `weft status` and the Prometheus scraper.
 */
import { execFile } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ClusterNode } from '../../src/netns/topology.ts';
import { WEFTD_HEALTHZ_PORT } from '../../src/netns/topology.ts';
import { programCommand } from '../../src/util/self.ts';

export interface Captured {
  /** Exit code (-1 when killed by a signal or the timeout). */
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command inside namespace `ns` (or the current one when `ns` is undefined); never rejects. */
export function capture(
  ns: string | undefined,
  cmd: string,
  args: readonly string[],
  opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<Captured> {
  const [file, argv] = ns === undefined ? [cmd, [...args]] : ['ip', ['netns', 'exec', ns, cmd, ...args]];
  return new Promise((resolve) => {
    execFile(
      file,
      argv,
      { timeout: opts.timeoutMs ?? 30_000, maxBuffer: 16 * 1024 * 1024, env: opts.env ?? process.env },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

export interface HttpAnswer {
  /** HTTP status, or 0 when nothing answered (connection refused, timeout). */
  readonly status: number;
  readonly body: string;
}

const HTTP_SCRIPT =
  "require('node:http').get(process.env.U,{timeout:2000},(r)=>{let b='';r.setEncoding('utf8');" +
  "r.on('data',(d)=>b+=d);r.on('end',()=>{process.stdout.write(JSON.stringify({status:r.statusCode,body:b}))})})" +
  ".on('timeout',function(){this.destroy(new Error('timeout'))})" +
  ".on('error',()=>process.stdout.write(JSON.stringify({status:0,body:''})))";

/** GET http://127.0.0.1:<weftd health port><path> inside the node's namespace. */
export async function httpGet(node: ClusterNode, path: string): Promise<HttpAnswer> {
  const c = await capture(node.ns, process.execPath, ['-e', HTTP_SCRIPT], {
    timeoutMs: 5000,
    env: { ...process.env, U: `http://127.0.0.1:${WEFTD_HEALTHZ_PORT}${path}` },
  });
  try {
    return JSON.parse(c.stdout) as HttpAnswer;
  } catch {
    return { status: 0, body: c.stderr };
  }
}

/** Polls `check` every `everyMs` until it returns a value; throws with `what` on timeout. */
export async function until<T>(
  what: string,
  timeoutMs: number,
  check: () => Promise<T | undefined>,
  everyMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

// ---- Prometheus text format ------------------------------------------------------------

export interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

export interface Family {
  readonly name: string;
  help?: string;
  type?: string;
}

export interface Exposition {
  readonly families: Map<string, Family>;
  readonly samples: Sample[];
}

const SAMPLE_RE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/;
const LABEL_RE = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*/y;

function parseLabels(text: string, line: string): Record<string, string> {
  const out: Record<string, string> = {};
  LABEL_RE.lastIndex = 0;
  while (LABEL_RE.lastIndex < text.length) {
    const at = LABEL_RE.lastIndex;
    const m = LABEL_RE.exec(text);
    if (!m || LABEL_RE.lastIndex === at) throw new Error(`bad labels in metrics line: ${line}`);
    out[m[1] as string] = (m[2] as string).replace(/\\n/g, '\n').replace(/\\(["\\])/g, '$1');
  }
  return out;
}

/** Parses Prometheus text exposition format 0.0.4; throws on any line it cannot read. */
export function parseExposition(text: string): Exposition {
  const families = new Map<string, Family>();
  const samples: Sample[] = [];
  const family = (name: string): Family => {
    let f = families.get(name);
    if (!f) {
      f = { name };
      families.set(name, f);
    }
    return f;
  };
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) ?(.*)$/.exec(line);
    if (meta) {
      const f = family(meta[2] as string);
      if (meta[1] === 'HELP') f.help = meta[3];
      else f.type = meta[3];
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = SAMPLE_RE.exec(line);
    if (!m) throw new Error(`unreadable metrics line: ${line}`);
    const value = Number(m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : m[3]);
    samples.push({ name: m[1] as string, labels: m[2] ? parseLabels(m[2], line) : {}, value });
  }
  return { families, samples };
}

/** The value of the sample `name` whose labels include `labels`; 0 when there is none. */
export function sampleValue(
  e: Exposition,
  name: string,
  labels: Readonly<Record<string, string>> = {},
): number {
  const hit = e.samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  if (hit.length > 1) throw new Error(`${name} ${JSON.stringify(labels)} matches ${hit.length} series`);
  return hit[0]?.value ?? 0;
}

/** Scrapes weftd's /metrics on `node` (fails unless it answers 200). */
export async function scrape(node: ClusterNode): Promise<Exposition> {
  const a = await httpGet(node, '/metrics');
  if (a.status !== 200) throw new Error(`/metrics on ${node.name} answered ${a.status}: ${a.body}`);
  return parseExposition(a.body);
}

// ---- weft CLI and probes ---------------------------------------------------------------

/** Runs `weft <args>` inside namespace `ns` (undefined: this namespace). */
export function runWeft(
  ns: string | undefined,
  args: readonly string[],
  opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<Captured> {
  const { cmd, args: pre } = programCommand('weft');
  return capture(ns, cmd, [...pre, ...args], opts);
}

/**
 * TCP connect probe (`node -e`): env HOST, PORT, TIMEOUT_MS (default 5000). Prints {"ok":true,"reply":...} when the
 * peer answered (the reply is what the peer sent before closing), or {"ok":false,"code":...}.
 */
export const TCP_PROBE = String.raw`
const s = require('node:net').connect({ host: process.env.HOST, port: Number(process.env.PORT) });
let reply = '';
const t0 = Date.now();
s.setTimeout(Number(process.env.TIMEOUT_MS || 5000), () => s.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })));
s.on('data', (d) => { reply += d; });
s.on('end', () => { console.log(JSON.stringify({ ok: true, reply, ms: Date.now() - t0 })); });
s.on('error', (e) => { console.log(JSON.stringify({ ok: false, code: e.code, ms: Date.now() - t0 })); });
`;

/** TCP server (`node -e`): env PORT; answers every connection with the peer's address and closes. */
export const TCP_WHOAMI = String.raw`
const srv = require('node:net').createServer((s) => { s.end(s.remoteAddress); });
srv.listen(Number(process.env.PORT), '0.0.0.0', () => console.log('LISTENING'));
`;

/** UDP sender (`node -e`): env HOST, PORT, COUNT, SIZE; sends COUNT datagrams of SIZE bytes. */
export const UDP_SEND = String.raw`
const sock = require('node:dgram').createSocket('udp4');
const n = Number(process.env.COUNT);
const buf = Buffer.alloc(Number(process.env.SIZE), 0x61);
let left = n;
sock.on('error', () => undefined);
const next = () => {
  if (left === 0) { setTimeout(() => { console.log('sent ' + n); sock.close(); }, 50); return; }
  left--;
  sock.send(buf, Number(process.env.PORT), process.env.HOST, () => setImmediate(next));
};
next();
`;

/** `p`'s value, or `timedOut` after `ms` (the timer is cleared, so it never holds the process). */
export async function within<T, U>(p: Promise<T>, ms: number, timedOut: U): Promise<T | U> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<U>((resolve) => {
    timer = setTimeout(() => resolve(timedOut), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}
