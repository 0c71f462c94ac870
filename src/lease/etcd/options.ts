/**
 * Options of the etcd store, named after flanneld's flags (--etcd-endpoints, --etcd-prefix,
 * --etcd-cafile, --etcd-certfile, --etcd-keyfile, --etcd-username, --etcd-password), and
 * their validation. Why apart from the store: a bad flag must fail at start with a message
 * naming the flag, before any connection is tried; and the checks are testable without etcd.
 */
import { readFileSync } from 'node:fs';
import { ConfigError } from '../../util/errors.ts';
import type { Logger } from '../../util/log.ts';
import { DEFAULT_PREFIX } from './codec.ts';

export interface EtcdStoreOptions {
  /** Client URLs, e.g. ["http://127.0.0.1:2379"]; all http:// or all https://. */
  readonly endpoints: readonly string[];
  /** Key prefix; default "/coreos.com/network" (flannel's). */
  readonly prefix?: string;
  /** CA bundle (PEM) to verify the server; default: the system roots. */
  readonly caFile?: string;
  /** Client certificate and key (PEM) for mutual TLS; both or neither. */
  readonly certFile?: string;
  readonly keyFile?: string;
  /** etcd user/password authentication; both or neither. */
  readonly username?: string;
  readonly password?: string;
  /** TTL of each lease in seconds; default 24 h (flannel's subnetTTL). */
  readonly leaseTtlSeconds?: number;
  /** Deadline of each etcd request in ms (a leader election stalls one for ~7 s); default 15 s. */
  readonly requestTimeoutMs?: number;
  readonly logger?: Logger;
  /** Random source for subnet choice (tests); default Math.random. */
  readonly random?: () => number;
}

/** Options after validation: defaults filled, TLS files read. */
export interface ResolvedEtcdOptions {
  readonly endpoints: readonly string[];
  readonly prefix: string;
  readonly tls?: { readonly ca?: Buffer; readonly cert?: Buffer; readonly key?: Buffer };
  readonly auth?: { readonly username: string; readonly password: string };
  readonly leaseTtlSeconds: number;
  readonly requestTimeoutMs: number;
}

export const DEFAULT_LEASE_TTL_SECONDS = 24 * 60 * 60;
export const DEFAULT_REQUEST_TIMEOUT_MS = 15_000;

function readPem(key: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new ConfigError(key, `cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/** Checks `opts` and fills defaults; throws ConfigError naming the offending option. */
export function resolveEtcdOptions(opts: EtcdStoreOptions): ResolvedEtcdOptions {
  if (!opts.endpoints || opts.endpoints.length === 0) {
    throw new ConfigError('etcd-endpoints', 'at least one endpoint is required, e.g. http://127.0.0.1:2379');
  }
  const endpoints: string[] = [];
  const schemes = new Set<string>();
  for (const ep of opts.endpoints) {
    let url: URL;
    try {
      url = new URL(ep);
    } catch (err) {
      throw new ConfigError(
        'etcd-endpoints',
        `"${ep}" is not a URL; use http://host:port or https://host:port`,
        {
          cause: err,
        },
      );
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new ConfigError('etcd-endpoints', `"${ep}" must start with http:// or https://`);
    }
    if (!url.hostname || (url.pathname !== '/' && url.pathname !== '') || url.search || url.hash) {
      throw new ConfigError('etcd-endpoints', `"${ep}" must be scheme://host[:port] with no path`);
    }
    schemes.add(url.protocol);
    const port = url.port || '2379';
    endpoints.push(`${url.protocol}//${url.hostname}:${port}`);
  }
  if (schemes.size > 1) {
    throw new ConfigError('etcd-endpoints', 'mixes http:// and https:// endpoints; use one scheme for all');
  }
  const secure = schemes.has('https:');

  let prefix = opts.prefix ?? DEFAULT_PREFIX;
  if (!prefix.startsWith('/')) {
    throw new ConfigError('etcd-prefix', `"${prefix}" must start with "/", e.g. ${DEFAULT_PREFIX}`);
  }
  prefix = prefix.replace(/\/+$/, '');
  if (prefix === '' || prefix.includes('//')) {
    throw new ConfigError(
      'etcd-prefix',
      `"${opts.prefix}" is not a usable key prefix, e.g. ${DEFAULT_PREFIX}`,
    );
  }

  if (Boolean(opts.certFile) !== Boolean(opts.keyFile)) {
    throw new ConfigError(
      opts.certFile ? 'etcd-keyfile' : 'etcd-certfile',
      'client TLS needs both --etcd-certfile and --etcd-keyfile',
    );
  }
  const anyTls = Boolean(opts.caFile || opts.certFile);
  if (anyTls && !secure) {
    throw new ConfigError(
      'etcd-endpoints',
      'TLS files were given but the endpoints use http://; use https:// endpoints or drop the TLS options',
    );
  }
  let tls: ResolvedEtcdOptions['tls'];
  if (secure) {
    tls = {
      ...(opts.caFile ? { ca: readPem('etcd-cafile', opts.caFile) } : {}),
      ...(opts.certFile ? { cert: readPem('etcd-certfile', opts.certFile) } : {}),
      ...(opts.keyFile ? { key: readPem('etcd-keyfile', opts.keyFile) } : {}),
    };
  }

  if (Boolean(opts.username) !== Boolean(opts.password)) {
    throw new ConfigError(
      opts.username ? 'etcd-password' : 'etcd-username',
      'etcd authentication needs both --etcd-username and --etcd-password',
    );
  }

  const ttl = opts.leaseTtlSeconds ?? DEFAULT_LEASE_TTL_SECONDS;
  // etcd raises shorter TTLs to its own minimum (1.5 election timeouts, 2 s by default).
  if (!Number.isInteger(ttl) || ttl < 2) {
    throw new ConfigError('lease-ttl', `must be an integer number of seconds >= 2, got ${ttl}`);
  }
  const timeout = opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  if (!Number.isFinite(timeout) || timeout < 100) {
    throw new ConfigError('etcd-request-timeout', `must be at least 100 ms, got ${timeout}`);
  }

  return {
    endpoints,
    prefix,
    ...(tls ? { tls } : {}),
    ...(opts.username && opts.password ? { auth: { username: opts.username, password: opts.password } } : {}),
    leaseTtlSeconds: ttl,
    requestTimeoutMs: timeout,
  };
}
