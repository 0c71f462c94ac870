/**
 * The node daemon's life cycle, as one object with injected dependencies.
 *
 * Why this shape: everything outside the process (lease store, backend, underlay lookup,
 * clock, logger, ip masquerade) comes in through DaemonDeps, so tests run the real life
 * cycle against twins (an embedded store in a temp dir, a fake backend, a manual clock),
 * and nothing in here calls process.exit: startDaemon() hands back one handle
 * ({ready, done, stop, status}) and the CLI turns its outcome into an exit code.
 *
 * Order at start (the subnet file is written only once the lease is held, so the CNI plugin
 * never hands out addresses from a subnet we do not own):
 *   options -> store -> network config -> underlay -> backend.prepare -> previous subnet
 *   (subnet file) -> acquire -> write subnet file -> backend.start -> [ip masq] -> watch
 *   peers (-> backend.applyPeers) + renew loop.
 *
 * While running: renew at expiry minus the margin, retrying every minute on failure; when
 * the store says our lease is gone (deleted, expired, taken) the daemon re-acquires,
 * keeping the same subnet when it is still free (no data-path restart then), and counts it.
 * A failing watch is restarted after a delay; its first batch is diffed against the peers
 * we already applied, so the backend only ever sees real changes.
 */
import { readFile } from 'node:fs/promises';
import { isIPv4 } from 'node:net';
import type { Backend, BackendContext, DataplaneInfo, PreparedBackend } from '../backend/backend.ts';
import { createBackend as registryCreateBackend } from '../backend/registry.ts';
import { reconcileSnapshot } from '../lease/reconcile.ts';
import type { Lease, LeaseAttrs, LeaseEvent, LeaseStore, NetworkConfig } from '../lease/types.ts';
import type { Ipv4Cidr } from '../routing/ipv4.ts';
import { cidrEquals, cidrToKey, formatCidr, formatIpv4, parseIpv4 } from '../routing/ipv4.ts';
import { ConfigError } from '../util/errors.ts';
import type { Logger } from '../util/log.ts';
import type { InstallCniOptions } from './install-cni.ts';
import type { DaemonOptions } from './options.ts';
import { readSubnetFile, removeSubnetFile, SubnetFileError, writeSubnetFile } from './subnet-file.ts';
import { describeUnderlay, pickUnderlay } from './underlay.ts';
import type { Underlay } from './underlay.ts';

/** Timers and time, injectable so tests can move time by hand. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    // Node timers overflow above 2^31-1 ms (~24.8 days); clamp (the loop re-checks).
    const t = setTimeout(fn, Math.min(Math.max(ms, 0), 2_147_483_647));
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** Masquerade rules (src/ipmasq) as the daemon drives them. */
export interface IpMasqControl {
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface DaemonDeps {
  readonly log: Logger;
  /** Opens the lease store named by the options (default: embedded/etcd/kube by options.leaseStore). */
  readonly openStore?: (opts: DaemonOptions, log: Logger) => Promise<LeaseStore>;
  /** Builds the backend for Backend.Type (default: src/backend/registry.ts). */
  readonly createBackend?: (type: string, ctx: BackendContext) => Backend | Promise<Backend>;
  /** Finds the underlay (default: `ip -json` in this namespace). */
  readonly pickUnderlay?: (iface: readonly string[], ifaceRegex?: readonly string[]) => Promise<Underlay>;
  /** Masquerade rules for --ip-masq (default: src/ipmasq nftables table). */
  readonly ipMasq?: (network: Ipv4Cidr, subnet: Ipv4Cidr, log: Logger) => IpMasqControl;
  /** Installs the CNI plugin + conflist for --install-cni (default: src/daemon/install-cni.ts). */
  readonly installCni?: (opts: InstallCniOptions) => void | Promise<void>;
  readonly clock?: Clock;
  /** Delay between retries of a failed acquire / watch (default 5 s). */
  readonly retryMs?: number;
  /** Delay between retries of a failed renew (default 60 s, as flannel). */
  readonly renewRetryMs?: number;
}

/**
 * What the kube store reads from our Node (node-public-ip, public-ip-overwrite); other
 * stores have no such advice. Only IPv4 values are used; a failed read is logged and ignored.
 */
async function nodeAddressHints(
  store: LeaseStore,
  signal: AbortSignal,
  log: Logger,
): Promise<{ nodePublicIp?: string; publicIpOverwrite?: string }> {
  const s = store as LeaseStore & {
    nodeAddressHints?: (
      signal?: AbortSignal,
    ) => Promise<{ publicIpOverwrite?: string; nodePublicIp?: string }>;
  };
  if (typeof s.nodeAddressHints !== 'function') return {};
  try {
    const h = await s.nodeAddressHints(signal);
    const ok = (v: string | undefined): v is string => v !== undefined && isIPv4(v);
    if (h.nodePublicIp !== undefined || h.publicIpOverwrite !== undefined)
      log.info(h, 'address advice from our Node');
    return {
      ...(ok(h.nodePublicIp) ? { nodePublicIp: h.nodePublicIp } : {}),
      ...(ok(h.publicIpOverwrite) ? { publicIpOverwrite: h.publicIpOverwrite } : {}),
    };
  } catch (err) {
    if (signal.aborted) throw err;
    log.warn({ err }, 'could not read address advice from our Node; using the flags');
    return {};
  }
}

export const DaemonState = {
  starting: 'starting',
  running: 'running',
  stopping: 'stopping',
  stopped: 'stopped',
  failed: 'failed',
} as const;
export type DaemonState = (typeof DaemonState)[keyof typeof DaemonState];

export interface DaemonCounters {
  leaseAcquired: number;
  leaseRenewed: number;
  renewFailures: number;
  leaseLost: number;
  subnetChanged: number;
  peerEvents: number;
  watchRestarts: number;
  acquireFailures: number;
}

export interface PeerInfo {
  readonly subnet: string;
  readonly publicIp: string;
  readonly backendType: string;
  readonly backendData: unknown;
}

export interface DaemonStatus {
  readonly state: DaemonState;
  readonly ready: boolean;
  /** Why not ready (undefined when ready). */
  readonly reason: string | undefined;
  readonly checks: {
    readonly leaseHeld: boolean;
    readonly subnetFileWritten: boolean;
    readonly dataPathUp: boolean;
  };
  readonly store: string | undefined;
  readonly network: string | undefined;
  readonly backend: string | undefined;
  readonly underlay: { readonly iface: string; readonly addr: string; readonly mtu: number } | undefined;
  readonly lease:
    | {
        readonly subnet: string;
        readonly publicIp: string;
        readonly expiresAt: string | null;
        readonly backendData: unknown;
      }
    | undefined;
  readonly mtu: number | undefined;
  readonly subnetFile: string;
  readonly peers: readonly PeerInfo[];
  readonly counters: Readonly<DaemonCounters>;
  readonly backendStats: unknown;
  readonly error: string | undefined;
}

export interface DaemonHandle {
  /** Resolves once lease, subnet file and data path are up; rejects if start fails. */
  readonly ready: Promise<void>;
  /** Resolves when the daemon has stopped: `error` set when it stopped because of a failure. */
  readonly done: Promise<{ readonly error?: unknown }>;
  readonly state: DaemonState;
  status(): DaemonStatus;
  /** The backend's data path facts (forwarder counters, offloads), for metrics. */
  dataplaneInfo(): DataplaneInfo | undefined;
  /** Graceful stop: removes what start created (TUN, rules); keeps the lease unless --release-on-exit. */
  stop(): Promise<void>;
}

const sleepOn = (clock: Clock, ms: number, signal: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const h = clock.setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clock.clearTimeout(h);
      resolve();
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });

/** `p`, or a rejection as soon as `signal` aborts (a hung store must not hang stop()). */
function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(new Error('weftd is stopping'));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(new Error('weftd is stopping'));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/** Opens the store selected by the options (imports only the one used). */
export async function openStoreFromOptions(opts: DaemonOptions, log: Logger): Promise<LeaseStore> {
  switch (opts.leaseStore) {
    case 'embedded': {
      const { EmbeddedLeaseStore } = await import('../lease/embedded/store.ts');
      let netConfig: string | undefined;
      if (opts.netConfigPath) {
        try {
          netConfig = await readFile(opts.netConfigPath, 'utf8');
        } catch (err) {
          throw new ConfigError(
            'net-config-path',
            `cannot read ${opts.netConfigPath}: ${(err as Error).message}`,
            {
              cause: err,
            },
          );
        }
      }
      return EmbeddedLeaseStore.open({
        dir: opts.storeDir,
        log,
        ...(netConfig !== undefined ? { netConfig } : {}),
      });
    }
    case 'etcd': {
      const { EtcdLeaseStore } = await import('../lease/etcd/store.ts');
      return new EtcdLeaseStore({
        endpoints: opts.etcdEndpoints,
        prefix: opts.etcdPrefix,
        ...(opts.etcdCafile ? { caFile: opts.etcdCafile } : {}),
        ...(opts.etcdCertfile ? { certFile: opts.etcdCertfile } : {}),
        ...(opts.etcdKeyfile ? { keyFile: opts.etcdKeyfile } : {}),
        ...(opts.etcdUsername ? { username: opts.etcdUsername } : {}),
        ...(opts.etcdPassword ? { password: opts.etcdPassword } : {}),
        logger: log,
      });
    }
    case 'kube': {
      const { KubeLeaseStore } = await import('../lease/kube/store.ts');
      return new KubeLeaseStore({
        ...(opts.nodeName ? { nodeName: opts.nodeName } : {}),
        ...(opts.kubeconfigFile ? { kubeconfig: opts.kubeconfigFile } : {}),
        ...(opts.kubeAnnotationPrefix ? { annotationPrefix: opts.kubeAnnotationPrefix } : {}),
        ...(opts.netConfigPath ? { netConfPath: opts.netConfigPath } : {}),
        logger: log,
      });
    }
  }
}

/**
 * What --install-cni installs: the dirs from the flags, and from --cni-conf-file (a conflist,
 * e.g. the kube-weft ConfigMap's cni-conf.json) the network name, cniVersion, the weft-cni
 * entry's settings and whether portmap follows it.
 */
export async function cniInstallOptions(opts: DaemonOptions): Promise<InstallCniOptions> {
  const base: InstallCniOptions = {
    binDir: opts.cniBinDir,
    confDir: opts.cniConfDir,
    ...(opts.cniBundleNode ? { bundleNode: true } : {}),
    ...(opts.cniHostBinDir ? { hostBinDir: opts.cniHostBinDir } : {}),
  };
  if (!opts.cniConfFile) return base;
  let conf: unknown;
  try {
    conf = JSON.parse(await readFile(opts.cniConfFile, 'utf8'));
  } catch (err) {
    throw new ConfigError(
      'cni-conf-file',
      `cannot read ${opts.cniConfFile} as JSON: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  const c = conf as { name?: unknown; cniVersion?: unknown; plugins?: unknown };
  const plugins = Array.isArray(c.plugins) ? (c.plugins as Record<string, unknown>[]) : undefined;
  const weft = plugins?.find((p) => typeof p === 'object' && p !== null && p.type === 'weft-cni');
  if (!weft) {
    throw new ConfigError(
      'cni-conf-file',
      `${opts.cniConfFile} has no "plugins" entry with "type": "weft-cni"`,
    );
  }
  const { type: _type, ...pluginConf } = weft;
  return {
    ...base,
    ...(typeof c.name === 'string' ? { networkName: c.name } : {}),
    ...(typeof c.cniVersion === 'string' ? { cniVersion: c.cniVersion } : {}),
    pluginConf,
    portmap: (plugins ?? []).some((p) => p.type === 'portmap'),
  };
}

async function defaultInstallCni(o: InstallCniOptions): Promise<void> {
  const { installCni } = await import('./install-cni.ts');
  installCni(o);
}

async function defaultIpMasqFactory(
  network: Ipv4Cidr,
  subnet: Ipv4Cidr,
  log: Logger,
): Promise<IpMasqControl> {
  const { IpMasq } = await import('../ipmasq/ipmasq.ts');
  return new IpMasq({ network, subnet, log });
}

class Daemon implements DaemonHandle {
  private readonly opts: DaemonOptions;
  private readonly deps: DaemonDeps;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly retryMs: number;
  private readonly renewRetryMs: number;
  private readonly stopCtl = new AbortController();

  private st: DaemonState = DaemonState.starting;
  private store: LeaseStore | undefined;
  private config: NetworkConfig | undefined;
  private underlay: Underlay | undefined;
  private backend: Backend | undefined;
  private prepared: PreparedBackend | undefined;
  private attrs: LeaseAttrs | undefined;
  private lease: Lease | undefined;
  private subnetFileWritten = false;
  private dataPathUp = false;
  private masq: IpMasqControl | undefined;
  private peers = new Map<string, Lease>();
  private watchCtl: AbortController | undefined;
  private watchLoop: Promise<void> | undefined;
  private renewTimer: unknown;
  private recovering: Promise<void> | undefined;
  private lastError: unknown;
  private stopping: Promise<void> | undefined;
  readonly counters: DaemonCounters = {
    leaseAcquired: 0,
    leaseRenewed: 0,
    renewFailures: 0,
    leaseLost: 0,
    subnetChanged: 0,
    peerEvents: 0,
    watchRestarts: 0,
    acquireFailures: 0,
  };

  readonly ready: Promise<void>;
  readonly done: Promise<{ readonly error?: unknown }>;
  private resolveDone!: (v: { readonly error?: unknown }) => void;

  constructor(opts: DaemonOptions, deps: DaemonDeps) {
    this.opts = opts;
    this.deps = deps;
    this.log = deps.log;
    this.clock = deps.clock ?? systemClock;
    this.retryMs = deps.retryMs ?? 5000;
    this.renewRetryMs = deps.renewRetryMs ?? 60_000;
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    this.ready = this.startUp();
    // A failed start is reported through `ready` and `done`; never an unhandled rejection.
    this.ready.catch((err: unknown) => {
      if (this.signal.aborted) return; // stop() during start: not a failure
      this.lastError = err;
      this.log.error({ err }, 'start-up failed');
      void this.shutdown(err);
    });
  }

  get state(): DaemonState {
    return this.st;
  }

  private get signal(): AbortSignal {
    return this.stopCtl.signal;
  }

  private async startUp(): Promise<void> {
    const opts = this.opts;
    const openStore = this.deps.openStore ?? openStoreFromOptions;
    const opening = openStore(opts, this.log);
    // A store that finishes opening after stop() was asked for is closed right away.
    opening.then(
      (s) => {
        if (this.signal.aborted) void s.close().catch(() => undefined);
      },
      () => undefined,
    );
    this.store = await abortable(opening, this.signal);
    const store = this.store;
    this.config = await abortable(store.getNetworkConfig(this.signal), this.signal);
    const config = this.config;
    // kube: the Node's node-public-ip annotation picks the underlay by address when no
    // --iface/--iface-regex is given, and a valid public-ip-overwrite becomes the advertised
    // address (the store applies the overwrite to the published lease itself as well).
    const hints = await nodeAddressHints(store, this.signal, this.log);
    const ifaces =
      opts.iface.length === 0 && opts.ifaceRegex.length === 0 && hints.nodePublicIp !== undefined
        ? [hints.nodePublicIp]
        : opts.iface;
    const pick =
      this.deps.pickUnderlay ??
      ((i: readonly string[], r?: readonly string[]) => pickUnderlay(i, undefined, r));
    this.underlay = await pick(ifaces, opts.ifaceRegex);
    const underlay = this.underlay;
    const publicIp =
      hints.publicIpOverwrite !== undefined
        ? parseIpv4(hints.publicIpOverwrite, 'public-ip-overwrite')
        : opts.publicIp
          ? parseIpv4(opts.publicIp, 'public-ip')
          : underlay.addr;
    this.log.info(
      {
        store: store.name,
        network: formatCidr(config.network),
        subnetLen: config.subnetLen,
        backend: config.backend.type,
        underlay: describeUnderlay(underlay),
        publicIp: formatIpv4(publicIp),
      },
      'starting',
    );
    const ctx: BackendContext = {
      network: config,
      underlay,
      publicIp,
      stateDir: opts.stateDir,
      log: this.log,
      offloads: opts.offloads,
      workers: opts.workers,
      busyPollUs: opts.busyPollUs,
      tunnelGso: opts.tunnelGso,
      tunnelGsoRetryMs: opts.tunnelGsoRetryMs,
    };
    const create =
      this.deps.createBackend ??
      ((type: string, c: BackendContext) => registryCreateBackend(type, c, { tunName: opts.tunName }));
    this.backend = await create(config.backend.type, ctx);
    this.prepared = await abortable(this.backend.prepare(), this.signal);
    this.attrs = {
      publicIp: formatIpv4(publicIp),
      publicIpv6: null,
      backendType: this.prepared.backendType,
      backendData: this.prepared.backendData,
    };
    this.throwIfStopping();

    const previous = await this.previousSubnet();
    this.lease = await this.acquireWithRetry(previous);
    await this.writeSubnetFile();
    this.throwIfStopping();

    // Not abortable: stop() must not run backend.stop() while start() is still creating devices.
    await this.backend.start(this.lease, this.signal);
    this.dataPathUp = true;
    if (opts.ipMasq) {
      const make = this.deps.ipMasq ?? defaultIpMasqFactory;
      this.masq = await make(config.network, this.lease.subnet, this.log);
      await this.masq.start();
    }
    this.throwIfStopping();
    this.startWatch();
    this.scheduleRenew();
    if (opts.installCni) {
      // Only now: a runtime that sees the conflist may send ADDs at once.
      const cni = await cniInstallOptions(opts);
      await (this.deps.installCni ?? defaultInstallCni)(cni);
      this.log.info({ binDir: cni.binDir, confDir: cni.confDir }, 'CNI plugin and conflist installed');
    }
    this.st = DaemonState.running;
    this.log.info(
      { subnet: formatCidr(this.lease.subnet), mtu: this.prepared.mtu, subnetFile: opts.subnetFile },
      'ready',
    );
  }

  private throwIfStopping(): void {
    if (this.signal.aborted) throw new Error('weftd is stopping');
  }

  private async previousSubnet(): Promise<Ipv4Cidr | undefined> {
    try {
      const prev = await readSubnetFile(this.opts.subnetFile);
      if (prev)
        this.log.info(
          { subnet: formatCidr(prev.subnet) },
          'found a previous subnet file; asking for the same subnet',
        );
      return prev?.subnet;
    } catch (err) {
      if (err instanceof SubnetFileError) {
        this.log.warn({ err: err.message }, 'ignoring an unusable subnet file (it will be rewritten)');
        return undefined;
      }
      throw err;
    }
  }

  private async acquireWithRetry(previous: Ipv4Cidr | undefined): Promise<Lease> {
    const store = this.store as LeaseStore;
    const attrs = this.attrs as LeaseAttrs;
    for (;;) {
      this.throwIfStopping();
      try {
        const lease = await abortable(
          store.acquire(attrs, { ...(previous ? { previousSubnet: previous } : {}), signal: this.signal }),
          this.signal,
        );
        this.counters.leaseAcquired++;
        this.log.info(
          {
            subnet: formatCidr(lease.subnet),
            expiresAt: Number.isFinite(lease.expiresAt) ? new Date(lease.expiresAt) : null,
          },
          'lease acquired',
        );
        return lease;
      } catch (err) {
        if (err instanceof ConfigError || this.signal.aborted) throw err;
        this.counters.acquireFailures++;
        this.log.error({ err }, `could not acquire a lease; retrying in ${this.retryMs} ms`);
        await sleepOn(this.clock, this.retryMs, this.signal);
      }
    }
  }

  private async writeSubnetFile(): Promise<void> {
    const config = this.config as NetworkConfig;
    const lease = this.lease as Lease;
    await writeSubnetFile(this.opts.subnetFile, {
      network: config.network,
      subnet: lease.subnet,
      mtu: (this.prepared as PreparedBackend).mtu,
      ipMasq: this.opts.ipMasq,
    });
    this.subnetFileWritten = true;
  }

  // ---- peers -------------------------------------------------------------------------

  private startWatch(): void {
    const store = this.store as LeaseStore;
    const own = (this.lease as Lease).subnet;
    const ctl = new AbortController();
    this.watchCtl = ctl;
    const signal = AbortSignal.any([ctl.signal, this.signal]);
    this.watchLoop = (async () => {
      while (!signal.aborted) {
        let first = true;
        try {
          await store.watch(own, {
            signal,
            onEvents: (events) => {
              if (signal.aborted) return;
              this.onPeerEvents(events, first, own);
              first = false;
            },
            onOwnLeaseLost: (subnet) => {
              if (!signal.aborted && cidrEquals(subnet, own)) this.onOwnLeaseLost();
            },
          });
          if (!signal.aborted) {
            this.log.warn('the peer watch ended by itself; restarting it');
          }
        } catch (err) {
          if (signal.aborted) break;
          this.log.error({ err }, `the peer watch failed; restarting it in ${this.retryMs} ms`);
        }
        if (signal.aborted) break;
        this.counters.watchRestarts++;
        await sleepOn(this.clock, this.retryMs, signal);
      }
    })();
  }

  private onPeerEvents(events: readonly LeaseEvent[], first: boolean, own: Ipv4Cidr): void {
    let apply: readonly LeaseEvent[];
    if (first) {
      // A (re)started watch lists everything as added: diff it against what the backend has.
      const snapshot = events.filter((e) => e.type === 'added').map((e) => e.lease);
      const res = reconcileSnapshot(this.peers, snapshot, own);
      this.peers = res.known;
      apply = res.events;
    } else {
      for (const e of events) {
        const key = cidrToKey(e.lease.subnet);
        if (e.type === 'added') this.peers.set(key, e.lease);
        else this.peers.delete(key);
      }
      apply = events;
    }
    if (apply.length === 0) return;
    this.counters.peerEvents += apply.length;
    this.log.info(
      {
        added: apply
          .filter((e) => e.type === 'added')
          .map((e) => `${formatCidr(e.lease.subnet)}@${e.lease.attrs.publicIp}`),
        removed: apply.filter((e) => e.type === 'removed').map((e) => formatCidr(e.lease.subnet)),
      },
      'peers changed',
    );
    try {
      this.backend?.applyPeers(apply);
    } catch (err) {
      this.log.error({ err }, 'the backend failed to apply peer changes');
    }
  }

  // ---- renew and loss ---------------------------------------------------------------------

  private scheduleRenew(delayMs?: number): void {
    if (this.renewTimer !== undefined) this.clock.clearTimeout(this.renewTimer);
    this.renewTimer = undefined;
    const lease = this.lease;
    if (!lease || this.signal.aborted || !Number.isFinite(lease.expiresAt)) return;
    const marginMs = this.opts.subnetLeaseRenewMargin * 60_000;
    const wait = delayMs ?? Math.max(0, lease.expiresAt - marginMs - this.clock.now());
    this.renewTimer = this.clock.setTimeout(() => {
      this.renewTimer = undefined;
      void this.renewNow();
    }, wait);
  }

  private async renewNow(): Promise<void> {
    const lease = this.lease;
    const store = this.store;
    if (!lease || !store || this.signal.aborted || this.recovering) return;
    try {
      const renewed = await store.renew(lease, this.signal);
      if (this.lease !== lease) return; // replaced meanwhile (re-acquired)
      this.lease = renewed;
      this.counters.leaseRenewed++;
      this.log.info(
        { subnet: formatCidr(renewed.subnet), expiresAt: new Date(renewed.expiresAt) },
        'lease renewed',
      );
      this.scheduleRenew();
    } catch (err) {
      if (this.signal.aborted) return;
      this.counters.renewFailures++;
      if (this.clock.now() >= lease.expiresAt) {
        this.log.error({ err }, 'renewing failed and the lease has expired; re-acquiring');
        this.onOwnLeaseLost();
        return;
      }
      this.log.error({ err }, `renewing the lease failed; retrying in ${this.renewRetryMs} ms`);
      this.scheduleRenew(this.renewRetryMs);
    }
  }

  private onOwnLeaseLost(): void {
    if (this.recovering || this.signal.aborted) return;
    this.counters.leaseLost++;
    const old = this.lease as Lease;
    this.log.warn(
      { subnet: formatCidr(old.subnet) },
      'our lease was lost; re-acquiring (same subnet if still free)',
    );
    this.recovering = this.recover(old)
      .catch((err: unknown) => {
        if (this.signal.aborted) return;
        this.log.fatal({ err }, 'could not recover from losing our lease; stopping');
        void this.shutdown(err);
      })
      .finally(() => {
        this.recovering = undefined;
      });
  }

  private async recover(old: Lease): Promise<void> {
    if (this.renewTimer !== undefined) this.clock.clearTimeout(this.renewTimer);
    this.renewTimer = undefined;
    const lease = await this.acquireWithRetry(old.subnet);
    this.lease = lease;
    if (cidrEquals(lease.subnet, old.subnet)) {
      this.log.info({ subnet: formatCidr(lease.subnet) }, 'lease re-acquired with the same subnet');
      this.scheduleRenew();
      return;
    }
    // A different subnet: pods of the old one are stranded; move the node over.
    this.counters.subnetChanged++;
    this.log.error(
      { old: formatCidr(old.subnet), new: formatCidr(lease.subnet) },
      'lease re-acquired with a DIFFERENT subnet; restarting the data path (pods on the old subnet must be recreated)',
    );
    this.watchCtl?.abort();
    await this.watchLoop;
    this.dataPathUp = false;
    this.subnetFileWritten = false;
    const backend = this.backend as Backend;
    await backend.stop();
    if (this.masq) {
      await this.masq.stop();
      this.masq = undefined;
    }
    await this.writeSubnetFile();
    this.peers = new Map();
    await backend.start(lease, this.signal);
    this.dataPathUp = true;
    if (this.opts.ipMasq) {
      const make = this.deps.ipMasq ?? defaultIpMasqFactory;
      this.masq = await make((this.config as NetworkConfig).network, lease.subnet, this.log);
      await this.masq.start();
    }
    this.startWatch();
    this.scheduleRenew();
  }

  // ---- stop -----------------------------------------------------------------------------

  stop(): Promise<void> {
    return this.shutdown(undefined);
  }

  private shutdown(error: unknown): Promise<void> {
    if (this.stopping) return this.stopping;
    this.stopping = (async () => {
      const failed = error !== undefined;
      this.st = DaemonState.stopping;
      this.log.info({ failed }, 'stopping');
      this.stopCtl.abort();
      if (this.renewTimer !== undefined) this.clock.clearTimeout(this.renewTimer);
      this.renewTimer = undefined;
      // Let a start in progress reach a point where it notices the abort.
      await this.ready.catch(() => undefined);
      await this.watchLoop?.catch(() => undefined);
      await this.recovering;
      const step = async (what: string, fn: () => Promise<void>): Promise<void> => {
        try {
          await fn();
        } catch (err) {
          this.log.error({ err }, `stopping: ${what} failed`);
        }
      };
      if (this.masq) await step('removing masquerade rules', () => (this.masq as IpMasqControl).stop());
      if (this.backend) await step('stopping the backend', () => (this.backend as Backend).stop());
      this.dataPathUp = false;
      if (this.opts.releaseOnExit && this.lease && this.store) {
        const lease = this.lease;
        const store = this.store;
        await step('releasing the lease', async () => {
          await store.release(lease);
          await removeSubnetFile(this.opts.subnetFile);
          this.subnetFileWritten = false;
          this.log.info({ subnet: formatCidr(lease.subnet) }, 'lease released');
        });
      }
      if (this.store) await step('closing the lease store', () => (this.store as LeaseStore).close());
      this.st = failed ? DaemonState.failed : DaemonState.stopped;
      this.log.info({ state: this.st }, 'stopped');
      this.resolveDone(failed ? { error } : {});
    })();
    return this.stopping;
  }

  // ---- status ---------------------------------------------------------------------------

  dataplaneInfo(): DataplaneInfo | undefined {
    try {
      return this.backend?.dataplaneInfo?.();
    } catch {
      return undefined;
    }
  }

  status(): DaemonStatus {
    const leaseHeld =
      this.lease !== undefined &&
      this.recovering === undefined &&
      (!Number.isFinite(this.lease.expiresAt) || this.lease.expiresAt > this.clock.now());
    const checks = { leaseHeld, subnetFileWritten: this.subnetFileWritten, dataPathUp: this.dataPathUp };
    let reason: string | undefined;
    if (this.st !== DaemonState.running) reason = `weftd is ${this.st}`;
    else if (!leaseHeld) reason = 'no lease held (acquiring or re-acquiring)';
    else if (!checks.subnetFileWritten) reason = 'subnet file not written yet';
    else if (!checks.dataPathUp) reason = 'data path not up';
    const lease = this.lease;
    const u = this.underlay;
    let backendStats: unknown;
    try {
      backendStats = this.backend?.stats();
    } catch (err) {
      backendStats = { error: String(err) };
    }
    return {
      state: this.st,
      ready: reason === undefined,
      reason,
      checks,
      store: this.store?.name,
      network: this.config ? formatCidr(this.config.network) : undefined,
      backend: this.config?.backend.type,
      underlay: u ? { iface: u.iface, addr: formatIpv4(u.addr), mtu: u.mtu } : undefined,
      lease: lease
        ? {
            subnet: formatCidr(lease.subnet),
            publicIp: lease.attrs.publicIp,
            expiresAt: Number.isFinite(lease.expiresAt) ? new Date(lease.expiresAt).toISOString() : null,
            backendData: lease.attrs.backendData,
          }
        : undefined,
      mtu: this.prepared?.mtu,
      subnetFile: this.opts.subnetFile,
      peers: [...this.peers.values()]
        .map((l) => ({
          subnet: formatCidr(l.subnet),
          publicIp: l.attrs.publicIp,
          backendType: l.attrs.backendType,
          backendData: l.attrs.backendData,
        }))
        .sort((a, b) => a.subnet.localeCompare(b.subnet, 'en', { numeric: true })),
      counters: { ...this.counters },
      backendStats,
      error:
        this.lastError === undefined
          ? undefined
          : String((this.lastError as Error).message ?? this.lastError),
    };
  }
}

/** Starts the daemon; see the module comment. Returns at once; await `ready` for start-up. */
export function startDaemon(options: DaemonOptions, deps: DaemonDeps): DaemonHandle {
  return new Daemon(options, deps);
}
