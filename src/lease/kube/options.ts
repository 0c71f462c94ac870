/**
 * Options of the kube store (named after flanneld's flags: --kube-subnet-mgr's --node-name,
 * --kubeconfig-file, --kube-annotation-prefix, --net-config-path) and how the API client
 * is configured: from a kubeconfig file, or in-cluster from the service account files and
 * KUBERNETES_SERVICE_HOST/PORT.
 *
 * Why apart from the store: a bad flag must fail at start with a message naming it, before
 * any request is made, and the in-cluster path must be testable without a real pod (its
 * file locations and environment are injectable).
 */
import { readFileSync } from 'node:fs';
import type { OutgoingHttpHeaders } from 'node:http';
import type { RequestOptions } from 'node:https';
import { isIPv6 } from 'node:net';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import type { Cluster, User } from '@kubernetes/client-node';
import { ConfigError } from '../../util/errors.ts';
import type { Logger } from '../../util/log.ts';

export const DEFAULT_ANNOTATION_PREFIX = 'flannel.alpha.coreos.com/';
export const DEFAULT_NET_CONF_PATH = '/etc/kube-flannel/net-conf.json';
export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';
export const DEFAULT_WATCHDOG_MS = 5 * 60_000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;

export interface InClusterOptions {
  /** Where token and ca.crt live; default /var/run/secrets/kubernetes.io/serviceaccount. */
  readonly serviceAccountDir?: string;
}

export interface KubeStoreOptions {
  /** This node's name (--node-name); default: env NODE_NAME. */
  readonly nodeName?: string;
  /** Kubeconfig file (--kubeconfig-file); when absent the in-cluster config is used. */
  readonly kubeconfig?: string;
  readonly inCluster?: InClusterOptions;
  /** Annotation prefix (--kube-annotation-prefix); default flannel.alpha.coreos.com/. */
  readonly annotationPrefix?: string;
  /** net-conf.json (--net-config-path); default /etc/kube-flannel/net-conf.json. */
  readonly netConfPath?: string;
  /** Relist when a watch has been silent this long (no event, no bookmark); default 5 min. */
  readonly watchdogMs?: number;
  /** timeoutSeconds asked of the server per watch; default 50-80 % of the watchdog. */
  readonly watchTimeoutSeconds?: number;
  /** Deadline of each list/get/patch request; default 30 s. */
  readonly requestTimeoutMs?: number;
  /** Retry backoff after errors: first delay, doubling up to max (default 200 ms .. 30 s). */
  readonly backoffInitialMs?: number;
  readonly backoffMaxMs?: number;
  /** Environment to read NODE_NAME and KUBERNETES_SERVICE_HOST/PORT from; default process.env. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  readonly logger?: Logger;
}

export interface ResolvedKubeOptions {
  readonly nodeName: string;
  readonly annotationPrefix: string;
  readonly netConfPath: string;
  readonly watchdogMs: number;
  readonly watchTimeoutSeconds: number | undefined;
  readonly requestTimeoutMs: number;
  readonly backoffInitialMs: number;
  readonly backoffMaxMs: number;
}

// RFC 1123 subdomain, as Kubernetes requires of node names.
const NODE_NAME_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
// A qualified-name prefix: DNS subdomain followed by "/".
const PREFIX_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/$/;

function positive(key: string, v: number | undefined, dflt: number, min: number): number {
  const x = v ?? dflt;
  if (!Number.isFinite(x) || x < min) throw new ConfigError(key, `must be a number >= ${min}, got ${x}`);
  return x;
}

/** Checks `opts` and fills defaults; throws ConfigError naming the offending option. */
export function resolveKubeOptions(opts: KubeStoreOptions): ResolvedKubeOptions {
  const env = opts.env ?? process.env;
  const nodeName = opts.nodeName ?? env.NODE_NAME ?? '';
  if (nodeName === '') {
    throw new ConfigError(
      'node-name',
      'is required in kube mode: pass --node-name or set NODE_NAME (the downward API: fieldRef spec.nodeName)',
    );
  }
  if (nodeName.length > 253 || !NODE_NAME_RE.test(nodeName)) {
    throw new ConfigError(
      'node-name',
      `"${nodeName}" is not a valid Kubernetes node name (lower-case DNS name)`,
    );
  }
  let prefix = opts.annotationPrefix ?? DEFAULT_ANNOTATION_PREFIX;
  if (!prefix.endsWith('/')) prefix += '/';
  if (!PREFIX_RE.test(prefix) || prefix.length > 254) {
    throw new ConfigError(
      'kube-annotation-prefix',
      `"${opts.annotationPrefix}" is not a DNS-subdomain annotation prefix, e.g. ${DEFAULT_ANNOTATION_PREFIX}`,
    );
  }
  const watchdogMs = positive('kube-watchdog', opts.watchdogMs, DEFAULT_WATCHDOG_MS, 50);
  const watchTimeoutSeconds =
    opts.watchTimeoutSeconds === undefined
      ? undefined
      : positive('kube-watch-timeout', opts.watchTimeoutSeconds, 1, 1);
  const backoffInitialMs = positive('kube-backoff', opts.backoffInitialMs, 200, 1);
  const backoffMaxMs = positive('kube-backoff-max', opts.backoffMaxMs, 30_000, backoffInitialMs);
  return {
    nodeName,
    annotationPrefix: prefix,
    netConfPath: opts.netConfPath ?? DEFAULT_NET_CONF_PATH,
    watchdogMs,
    watchTimeoutSeconds,
    requestTimeoutMs: positive(
      'kube-request-timeout',
      opts.requestTimeoutMs,
      DEFAULT_REQUEST_TIMEOUT_MS,
      100,
    ),
    backoffInitialMs,
    backoffMaxMs,
  };
}

/**
 * Reads a service account token on use and again each minute (projected tokens rotate),
 * trimming the trailing newline hand-made token files often carry.
 */
class TokenFileAuth {
  private token = '';
  private readAt = 0;
  isAuthProvider(user: User): boolean {
    return (user.authProvider as { name?: string } | undefined)?.name === 'weft-token-file';
  }
  // eslint-disable-next-line @typescript-eslint/require-await -- the authenticator interface is async
  async applyAuthentication(user: User, opts: RequestOptions): Promise<void> {
    const provider = user.authProvider as { config?: { tokenPath?: string } } | undefined;
    const file = provider?.config?.tokenPath;
    if (!file) return;
    if (this.token === '' || Date.now() - this.readAt > 60_000) {
      try {
        this.token = readFileSync(file, 'utf8').trim();
        this.readAt = Date.now();
      } catch (err) {
        // Keep a token read earlier; a first read was already checked at start.
        if (this.token === '') throw err;
      }
    }
    if (!opts.headers || Array.isArray(opts.headers)) opts.headers = {};
    (opts.headers as OutgoingHttpHeaders).Authorization = `Bearer ${this.token}`;
  }
}

/**
 * The API client configuration: `kubeconfig` when given, else in-cluster. Plain-http
 * servers (kubectl proxy, tests) get TLS verification declared off, which client-node
 * otherwise refuses to talk to.
 */
export function loadKubeConfig(opts: KubeStoreOptions): KubeConfig {
  const kc = new KubeConfig();
  if (opts.kubeconfig) {
    try {
      kc.loadFromFile(opts.kubeconfig);
    } catch (err) {
      throw new ConfigError('kubeconfig-file', `cannot load ${opts.kubeconfig}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    const cluster = kc.getCurrentCluster();
    if (!cluster) {
      throw new ConfigError('kubeconfig-file', `${opts.kubeconfig} has no current context with a cluster`);
    }
    if (cluster.server.startsWith('http://') && !cluster.skipTLSVerify) {
      kc.loadFromOptions({
        clusters: kc.clusters.map(
          (c): Cluster => (c.name === cluster.name ? { ...c, skipTLSVerify: true } : c),
        ),
        users: kc.users,
        contexts: kc.contexts,
        currentContext: kc.currentContext,
      });
    }
    return kc;
  }

  const env = opts.env ?? process.env;
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT;
  if (!host || !port) {
    throw new ConfigError(
      'kubeconfig-file',
      'no --kubeconfig-file given and not running in a pod (KUBERNETES_SERVICE_HOST/PORT are unset); pass --kubeconfig-file',
    );
  }
  const dir = opts.inCluster?.serviceAccountDir ?? SERVICE_ACCOUNT_DIR;
  const tokenPath = join(dir, 'token');
  const caFile = join(dir, 'ca.crt');
  for (const f of [tokenPath, caFile]) {
    try {
      readFileSync(f);
    } catch (err) {
      throw new ConfigError(
        'kubeconfig-file',
        `in-cluster config needs ${f} (${(err as NodeJS.ErrnoException).code ?? String(err)}); is a service account token mounted?`,
        { cause: err },
      );
    }
  }
  const server = `https://${isIPv6(host) ? `[${host}]` : host}:${port}`;
  kc.loadFromOptions({
    clusters: [{ name: 'in-cluster', server, caFile, skipTLSVerify: false }],
    users: [{ name: 'in-cluster', authProvider: { name: 'weft-token-file', config: { tokenPath } } }],
    contexts: [{ name: 'in-cluster', cluster: 'in-cluster', user: 'in-cluster' }],
    currentContext: 'in-cluster',
  });
  kc.addAuthenticator(new TokenFileAuth());
  return kc;
}
