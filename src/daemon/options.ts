/**
 * weftd's options: flannel-style flags (where flannel has one) plus environment variables.
 *
 * Why one table: every flag is declared once with its type, default and help, so parsing,
 * the environment mapping (`--subnet-file` <- WEFTD_SUBNET_FILE), `--help` and validation
 * can never drift apart. Flags win over the environment. Everything is validated here, at
 * start, with a ConfigError naming the flag, before anything touches the system.
 */
import { DEFAULT_BUSY_POLL_US, MAX_BUSY_POLL_US } from '../dataplane/forwarder.ts';
import { DEFAULT_TUNNEL_RETRY_MS, TUNNEL_RETRY_MAX_MS } from '../backend/tunnel-gso.ts';
import { isIPv4 } from 'node:net';
import { ConfigError } from '../util/errors.ts';

export const LEASE_STORES = ['embedded', 'etcd', 'kube'] as const;
export type LeaseStoreKind = (typeof LEASE_STORES)[number];

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;

export interface DaemonOptions {
  /** Underlay interfaces by name or address (first that exists wins); empty = default route's. */
  readonly iface: readonly string[];
  /**
   * Underlay interfaces by regular expression on the name (tried in order, after `iface`);
   * the first interface whose name matches and has an IPv4 address wins.
   */
  readonly ifaceRegex: readonly string[];
  /** Address to advertise to peers; default the underlay interface's address. */
  readonly publicIp: string | undefined;
  readonly subnetFile: string;
  readonly netConfigPath: string | undefined;
  readonly healthzIp: string;
  /** 0 = no health server (flannel's default). */
  readonly healthzPort: number;
  readonly leaseStore: LeaseStoreKind;
  readonly storeDir: string;
  readonly etcdEndpoints: readonly string[];
  readonly etcdPrefix: string;
  readonly etcdCafile: string | undefined;
  readonly etcdCertfile: string | undefined;
  readonly etcdKeyfile: string | undefined;
  readonly etcdUsername: string | undefined;
  readonly etcdPassword: string | undefined;
  readonly kubeSubnetMgr: boolean;
  readonly kubeconfigFile: string | undefined;
  readonly kubeAnnotationPrefix: string | undefined;
  readonly nodeName: string | undefined;
  /** Renew this many minutes before the lease expires. */
  readonly subnetLeaseRenewMargin: number;
  readonly ipMasq: boolean;
  readonly offloads: boolean;
  readonly stateDir: string;
  readonly logLevel: string;
  /** TUN device of the udp backend. */
  readonly tunName: string;
  /** Forwarding threads of a userspace data path (udp, userspace vxlan), 1..64. */
  readonly workers: number;
  /** Busy-poll window of a userspace forwarder after traffic (µs, 0 = off). */
  readonly busyPollUs: number;
  /** Whole TCP super-packets to the kernel as UDP-tunnel GSO packets (userspace data paths). */
  readonly tunnelGso: boolean;
  /** --tunnel-gso-retry in ms (0 = never). */
  readonly tunnelGsoRetryMs: number;
  /** Give the lease back on a graceful stop (default: keep it, so a restart keeps the subnet). */
  readonly releaseOnExit: boolean;
  /** Install the CNI plugin and conflist once ready (flannel's install-cni init container). */
  readonly installCni: boolean;
  /** A conflist (JSON) to take the network name, cniVersion and weft-cni settings from. */
  readonly cniConfFile: string | undefined;
  readonly cniBinDir: string;
  /** --cni-bundle-node: copy the node binary next to the plugin. */
  readonly cniBundleNode: boolean;
  /** --cni-host-bin-dir: the bin dir as the host sees it. */
  readonly cniHostBinDir: string | undefined;
  readonly cniConfDir: string;
  readonly help: boolean;
}

type Kind = 'string' | 'bool' | 'int' | 'list';

interface FlagSpec {
  readonly name: string;
  readonly kind: Kind;
  readonly help: string;
  /** Shown in --help; undefined = no default. */
  readonly dflt?: string;
  /** Extra env names read after WEFTD_<NAME> (flannel compatibility). */
  readonly alsoEnv?: readonly string[];
}

export const FLAGS: readonly FlagSpec[] = [
  {
    name: 'iface',
    kind: 'list',
    help: 'underlay interface name or address (repeatable); default: the default route',
  },
  {
    name: 'iface-regex',
    kind: 'list',
    help: 'regular expression on interface names (repeatable, tried in order after --iface)',
  },
  { name: 'public-ip', kind: 'string', help: 'IPv4 address to advertise to peers (e.g. behind NAT)' },
  {
    name: 'subnet-file',
    kind: 'string',
    dflt: '/run/weft/subnet.env',
    help: 'where to write the subnet file',
  },
  { name: 'net-config-path', kind: 'string', help: 'net-conf JSON (kube store; seeds the embedded store)' },
  { name: 'healthz-ip', kind: 'string', dflt: '127.0.0.1', help: 'address of the health/status server' },
  { name: 'healthz-port', kind: 'int', dflt: '0', help: 'port of the health/status server (0 = off)' },
  {
    name: 'lease-store',
    kind: 'string',
    dflt: 'etcd',
    help: 'embedded | etcd | kube (kube with --kube-subnet-mgr)',
  },
  { name: 'store-dir', kind: 'string', help: 'embedded store directory (default <state-dir>/leases)' },
  {
    name: 'etcd-endpoints',
    kind: 'list',
    dflt: 'http://127.0.0.1:2379',
    help: 'comma-separated etcd client URLs',
  },
  { name: 'etcd-prefix', kind: 'string', dflt: '/coreos.com/network', help: 'etcd key prefix' },
  { name: 'etcd-cafile', kind: 'string', help: 'CA bundle to verify etcd (PEM)' },
  { name: 'etcd-certfile', kind: 'string', help: 'client certificate for etcd (PEM)' },
  { name: 'etcd-keyfile', kind: 'string', help: 'client key for etcd (PEM)' },
  { name: 'etcd-username', kind: 'string', help: 'etcd user' },
  { name: 'etcd-password', kind: 'string', help: 'etcd password' },
  { name: 'kube-subnet-mgr', kind: 'bool', dflt: 'false', help: 'take the subnet from the Kubernetes Node' },
  { name: 'kubeconfig-file', kind: 'string', help: 'kubeconfig (default: in-cluster service account)' },
  {
    name: 'kube-annotation-prefix',
    kind: 'string',
    help: 'node annotation prefix (default flannel.alpha.coreos.com)',
  },
  {
    name: 'node-name',
    kind: 'string',
    help: 'this Node (kube store; also env NODE_NAME)',
    alsoEnv: ['NODE_NAME'],
  },
  {
    name: 'subnet-lease-renew-margin',
    kind: 'int',
    dflt: '60',
    help: 'renew the lease this many minutes before it expires (1..1439)',
  },
  { name: 'ip-masq', kind: 'bool', dflt: 'false', help: 'pods masquerade traffic leaving the overlay' },
  {
    name: 'no-offloads',
    kind: 'bool',
    dflt: 'false',
    help: 'turn off TUN/UDP offloads (slower, for debugging)',
  },
  { name: 'state-dir', kind: 'string', dflt: '/var/lib/weft', help: 'state kept across restarts' },
  { name: 'log-level', kind: 'string', dflt: 'info', help: `one of ${LOG_LEVELS.join(', ')}` },
  { name: 'tun-name', kind: 'string', dflt: 'weft0', help: 'TUN device of the udp backend' },
  {
    name: 'workers',
    kind: 'int',
    dflt: '1',
    help: 'forwarding threads of the userspace data path (udp, userspace vxlan), 1..64',
    alsoEnv: ['WEFT_WORKERS'],
  },
  {
    name: 'busy-poll-us',
    kind: 'int',
    dflt: String(DEFAULT_BUSY_POLL_US),
    help: `after a turn of few packets, keep polling TUN and socket this many µs before sleeping (0 = off, up to ${MAX_BUSY_POLL_US}; empty windows at most 10% of a core): lower request/response latency`,
    alsoEnv: ['WEFT_BUSY_POLL_US'],
  },
  {
    name: 'tunnel-gso',
    kind: 'bool',
    dflt: 'true',
    help: 'userspace data path: hand whole TCP super-packets to the kernel as UDP-tunnel GSO packets through a TAP device, for peers whose lease says they take them (kernel 6.17+, IPv4 forwarding on, rp_filter not strict; otherwise, or when the FORWARD chain drops them, weft segments itself); much less CPU per bit. On by default; --tunnel-gso=false turns it off',
    alsoEnv: ['WEFT_TUNNEL_GSO'],
  },
  {
    name: 'tunnel-gso-retry',
    kind: 'int',
    dflt: String(DEFAULT_TUNNEL_RETRY_MS / 1000),
    help: `seconds after tunnel GSO's guard gave up on the TAP (the node dropped its packets, or the TAP refused writes) until weft tries it again, each further give-up doubling the wait up to an hour; 0 (the default) = never, as a retry against a firewall that still drops them stalls bulk traffic for a few seconds (a TAP deleted or set down is put right at once either way)`,
    alsoEnv: ['WEFT_TUNNEL_GSO_RETRY'],
  },
  { name: 'release-on-exit', kind: 'bool', dflt: 'false', help: 'give the lease back on a graceful stop' },
  {
    name: 'install-cni',
    kind: 'bool',
    dflt: 'false',
    help: 'once ready, install weft-cni into --cni-bin-dir and a conflist into --cni-conf-dir',
  },
  {
    name: 'cni-conf-file',
    kind: 'string',
    help: 'conflist JSON to install (name, cniVersion, weft-cni settings)',
  },
  { name: 'cni-bin-dir', kind: 'string', dflt: '/opt/cni/bin', help: 'where --install-cni puts the plugin' },
  {
    name: 'cni-bundle-node',
    kind: 'bool',
    dflt: 'false',
    help: 'with --install-cni, also copy this node binary next to the plugin (hosts without Node.js)',
  },
  {
    name: 'cni-host-bin-dir',
    kind: 'string',
    help: 'the CNI bin dir as the host sees it (when weftd runs in a container; default --cni-bin-dir)',
  },
  {
    name: 'cni-conf-dir',
    kind: 'string',
    dflt: '/etc/cni/net.d',
    help: 'where --install-cni writes the conflist',
  },
  { name: 'help', kind: 'bool', dflt: 'false', help: 'print this help and exit' },
];

const SPEC = new Map(FLAGS.map((f) => [f.name, f]));

/** WEFTD_SUBNET_FILE for --subnet-file. */
export function envName(flag: string): string {
  return `WEFTD_${flag.toUpperCase().replace(/-/g, '_')}`;
}

function parseBool(flag: string, v: string): boolean {
  const t = v.trim().toLowerCase();
  if (['1', 'true', 'yes', 'on', ''].includes(t)) return true;
  if (['0', 'false', 'no', 'off'].includes(t)) return false;
  throw new ConfigError(flag, `"${v}" is not a boolean; use true or false`);
}

function parseIntFlag(flag: string, v: string): number {
  if (!/^\s*-?\d+\s*$/.test(v)) throw new ConfigError(flag, `"${v}" is not an integer`);
  return Number(v);
}

type Raw = Map<string, string[]>;

/** Collects flag values from argv (`--x v`, `--x=v`, bare booleans). */
function fromArgv(argv: readonly string[]): Raw {
  const raw: Raw = new Map();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (!arg.startsWith('--')) {
      throw new ConfigError(arg, 'unexpected argument; weftd takes only --flags (see --help)');
    }
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const spec = SPEC.get(name);
    if (!spec) throw new ConfigError(`--${name}`, 'unknown flag; run weftd --help for the list');
    let value: string;
    if (eq >= 0) value = arg.slice(eq + 1);
    else if (spec.kind === 'bool') value = 'true';
    else {
      const next = argv[i + 1];
      if (next === undefined || (next.startsWith('--') && next.length > 2)) {
        throw new ConfigError(name, 'needs a value (--' + name + '=VALUE)');
      }
      value = next;
      i++;
    }
    const list = raw.get(name) ?? [];
    list.push(value);
    raw.set(name, list);
  }
  return raw;
}

function fromEnv(env: Readonly<Record<string, string | undefined>>): Raw {
  const raw: Raw = new Map();
  for (const spec of FLAGS) {
    if (spec.name === 'help') continue;
    for (const e of [envName(spec.name), ...(spec.alsoEnv ?? [])]) {
      const v = env[e];
      if (v !== undefined && v !== '') {
        raw.set(spec.name, [v]);
        break;
      }
    }
  }
  return raw;
}

/** Parses argv (without node and script) and env into validated options. */
export function parseOptions(
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>> = process.env,
): DaemonOptions {
  const cli = fromArgv(argv);
  const envRaw = fromEnv(env);
  const values = new Map<string, string[]>();
  for (const spec of FLAGS) {
    const v = cli.get(spec.name) ?? envRaw.get(spec.name);
    if (v !== undefined) values.set(spec.name, v);
    else if (spec.dflt !== undefined) values.set(spec.name, [spec.dflt]);
  }
  const str = (name: string): string | undefined => {
    const v = values.get(name);
    return v === undefined ? undefined : v[v.length - 1];
  };
  const bool = (name: string): boolean => parseBool(name, str(name) ?? 'false');
  const int = (name: string): number => parseIntFlag(name, str(name) ?? '0');
  const list = (name: string): string[] =>
    (values.get(name) ?? [])
      .flatMap((v) => v.split(','))
      .map((v) => v.trim())
      .filter((v) => v !== '');

  const help = bool('help');

  // Each --iface-regex is one expression (commas may be part of a regex: no splitting).
  const ifaceRegex = (values.get('iface-regex') ?? []).map((v) => v.trim()).filter((v) => v !== '');
  for (const re of ifaceRegex) {
    try {
      new RegExp(re);
    } catch (err) {
      throw new ConfigError(
        'iface-regex',
        `"${re}" is not a valid regular expression (${(err as Error).message})`,
        {
          cause: err,
        },
      );
    }
  }

  const publicIp = str('public-ip');
  if (publicIp !== undefined && !isIPv4(publicIp)) {
    throw new ConfigError('public-ip', `"${publicIp}" is not an IPv4 address`);
  }
  const healthzIp = str('healthz-ip') as string;
  if (!isIPv4(healthzIp)) throw new ConfigError('healthz-ip', `"${healthzIp}" is not an IPv4 address`);
  const healthzPort = int('healthz-port');
  if (healthzPort < 0 || healthzPort > 65535) {
    throw new ConfigError('healthz-port', `${healthzPort} is not a port; use 1..65535, or 0 to turn it off`);
  }
  const margin = int('subnet-lease-renew-margin');
  if (margin < 1 || margin > 1439) {
    throw new ConfigError(
      'subnet-lease-renew-margin',
      `${margin} minutes is out of range; use 1..1439 (leases last 24 h)`,
    );
  }
  const logLevel = (str('log-level') as string).toLowerCase();
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) {
    throw new ConfigError('log-level', `"${logLevel}" is not a level; use one of ${LOG_LEVELS.join(', ')}`);
  }

  const kubeSubnetMgr = bool('kube-subnet-mgr');
  const storeGiven = cli.get('lease-store') ?? envRaw.get('lease-store');
  let leaseStore = (str('lease-store') as string).toLowerCase();
  if (kubeSubnetMgr) {
    if (storeGiven !== undefined && leaseStore !== 'kube') {
      throw new ConfigError(
        'lease-store',
        `"${leaseStore}" conflicts with --kube-subnet-mgr; drop one of them`,
      );
    }
    leaseStore = 'kube';
  }
  if (!(LEASE_STORES as readonly string[]).includes(leaseStore)) {
    throw new ConfigError('lease-store', `"${leaseStore}" is not a store; use ${LEASE_STORES.join(', ')}`);
  }

  const subnetFile = str('subnet-file') as string;
  if (subnetFile === '') throw new ConfigError('subnet-file', 'must not be empty');
  const stateDir = str('state-dir') as string;
  const tunName = str('tun-name') as string;
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(tunName)) {
    throw new ConfigError(
      'tun-name',
      `"${tunName}" is not a valid interface name (1-15 letters, digits, _ . -)`,
    );
  }

  const workers = int('workers');
  if (workers < 1 || workers > 64) {
    throw new ConfigError('workers', `${workers} is out of range; use 1..64 (about one per core)`);
  }

  const tunnelGsoRetry = int('tunnel-gso-retry');
  if (tunnelGsoRetry < 0 || tunnelGsoRetry * 1000 > TUNNEL_RETRY_MAX_MS) {
    throw new ConfigError(
      'tunnel-gso-retry',
      `${tunnelGsoRetry} is out of range; use 0 (never) to ${TUNNEL_RETRY_MAX_MS / 1000} seconds`,
    );
  }

  const busyPollUs = int('busy-poll-us');
  if (busyPollUs < 0 || busyPollUs > MAX_BUSY_POLL_US) {
    throw new ConfigError(
      'busy-poll-us',
      `${busyPollUs} is out of range; use 0 (off) to ${MAX_BUSY_POLL_US} microseconds`,
    );
  }

  return {
    iface: list('iface'),
    ifaceRegex,
    publicIp,
    subnetFile,
    netConfigPath: str('net-config-path'),
    healthzIp,
    healthzPort,
    leaseStore: leaseStore as LeaseStoreKind,
    storeDir: str('store-dir') ?? `${stateDir.replace(/\/+$/, '')}/leases`,
    etcdEndpoints: list('etcd-endpoints'),
    etcdPrefix: str('etcd-prefix') as string,
    etcdCafile: str('etcd-cafile'),
    etcdCertfile: str('etcd-certfile'),
    etcdKeyfile: str('etcd-keyfile'),
    etcdUsername: str('etcd-username'),
    etcdPassword: str('etcd-password'),
    kubeSubnetMgr: leaseStore === 'kube',
    kubeconfigFile: str('kubeconfig-file'),
    kubeAnnotationPrefix: str('kube-annotation-prefix'),
    nodeName: str('node-name'),
    subnetLeaseRenewMargin: margin,
    ipMasq: bool('ip-masq'),
    offloads: !bool('no-offloads'),
    stateDir,
    logLevel,
    tunName,
    workers,
    busyPollUs,
    tunnelGso: bool('tunnel-gso'),
    tunnelGsoRetryMs: tunnelGsoRetry * 1000,
    releaseOnExit: bool('release-on-exit'),
    installCni: bool('install-cni'),
    cniConfFile: str('cni-conf-file'),
    cniBinDir: str('cni-bin-dir') as string,
    cniBundleNode: bool('cni-bundle-node'),
    cniHostBinDir: str('cni-host-bin-dir'),
    cniConfDir: str('cni-conf-dir') as string,
    help,
  };
}

/** The --help text: every flag with its environment variable and default. */
export function helpText(): string {
  const lines = [
    'Usage: weftd [--flag=value ...]',
    '',
    'weftd is the weft node daemon: it leases this node a pod subnet, writes the subnet file',
    'for the CNI plugin and carries pod traffic to the other nodes.',
    'Every flag can also be set through the environment variable shown (flags win).',
    '',
  ];
  for (const f of FLAGS) {
    const arg = f.kind === 'bool' ? '' : f.kind === 'int' ? '=N' : '=VALUE';
    const env = f.name === 'help' ? '' : `  [${[envName(f.name), ...(f.alsoEnv ?? [])].join(', ')}]`;
    const dflt = f.dflt !== undefined && f.kind !== 'bool' ? ` (default ${f.dflt})` : '';
    lines.push(`  --${f.name}${arg}`);
    lines.push(`      ${f.help}${dflt}${env}`);
  }
  return `${lines.join('\n')}\n`;
}
