/**
 * EmbeddedLeaseStore: leases in a directory, no server needed.
 *
 * Why: the demo, tests and small clusters on one machine (several daemons in network
 * namespaces sharing a directory) should not need etcd. The layout mirrors flannel's etcd
 * keys so the same tools and habits apply:
 *
 *   <dir>/config                      net-conf JSON
 *   <dir>/subnets/10.244.3.0-24       {"PublicIP":..,"PublicIPv6":null,"BackendType":..,
 *                                      "BackendData":..,"ExpiresAt":<ms>}   (no ExpiresAt = reservation)
 *   <dir>/lock                        held while anything under subnets/ is written
 *   <dir>/tmp/                        files are written here, then linked/renamed into subnets/
 *
 * A new lease appears with link() (fails if the name exists, and the file is complete when
 * visible); updates replace with rename(). All writes happen under the lock (see lock.ts),
 * so an expired lease is never deleted twice. The subnet choice is src/lease/allocate.ts.
 * watch() rescans the directory on fs.watch events and periodically (fallback, and to
 * notice expiry), turning each listing into events with src/lease/reconcile.ts.
 */
import { randomBytes } from 'node:crypto';
import { watch as fsWatch } from 'node:fs';
import type { FSWatcher } from 'node:fs';
import { link, mkdir, open, readdir, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { parseNetConfig, validateNetConfig } from '../../daemon/netconf.ts';
import type { Ipv4Cidr } from '../../routing/ipv4.ts';
import { cidrEquals, cidrToKey, formatCidr, keyToCidr } from '../../routing/ipv4.ts';
import { ConfigError, LeaseError } from '../../util/errors.ts';
import type { Logger } from '../../util/log.ts';
import { silentLogger } from '../../util/log.ts';
import { allocate, subnetFitsConfig } from '../allocate.ts';
import { reconcileSnapshot } from '../reconcile.ts';
import type { AcquireOptions, Lease, LeaseAttrs, LeaseStore, NetworkConfig, WatchOptions } from '../types.ts';
import { withLock } from './lock.ts';

/** flannel's subnet lease TTL. */
export const LEASE_TTL_MS = 24 * 60 * 60 * 1000;
/** Acquire attempts before giving up (flannel: 10). */
const MAX_ATTEMPTS = 10;

export interface EmbeddedStoreOptions {
  /** The shared directory. Created if missing. */
  readonly dir: string;
  /**
   * net-conf JSON to seed `<dir>/config` with when it does not exist yet. When it exists,
   * the directory's config wins (a differing one is logged as a warning).
   */
  readonly netConfig?: string;
  readonly ttlMs?: number;
  /** Full rescan period of watch() (fs.watch covers the fast path). Default 1000 ms. */
  readonly rescanMs?: number;
  readonly now?: () => number;
  readonly random?: () => number;
  readonly log?: Logger;
}

interface LeaseFile {
  PublicIP: string;
  PublicIPv6?: string | null;
  BackendType: string;
  BackendData: unknown;
  ExpiresAt?: number | null;
}

interface Listing {
  readonly leases: Lease[];
  /** Keys of files that exist but cannot be parsed (treated as taken). */
  readonly corrupt: string[];
}

function toFile(attrs: LeaseAttrs, expiresAt: number): LeaseFile {
  return {
    PublicIP: attrs.publicIp,
    PublicIPv6: attrs.publicIpv6 ?? null,
    BackendType: attrs.backendType,
    BackendData: attrs.backendData ?? null,
    ...(Number.isFinite(expiresAt) ? { ExpiresAt: expiresAt } : {}),
  };
}

function fromFile(subnet: Ipv4Cidr, v: unknown): Lease | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const f = v as Partial<LeaseFile>;
  if (typeof f.PublicIP !== 'string' || typeof f.BackendType !== 'string') return undefined;
  const expiresAt = typeof f.ExpiresAt === 'number' ? f.ExpiresAt : Infinity;
  return {
    subnet,
    attrs: {
      publicIp: f.PublicIP,
      publicIpv6: typeof f.PublicIPv6 === 'string' ? f.PublicIPv6 : null,
      backendType: f.BackendType,
      backendData: f.BackendData ?? null,
    },
    expiresAt,
  };
}

export class EmbeddedLeaseStore implements LeaseStore {
  readonly name = 'embedded';
  readonly dir: string;
  private readonly subnetsDir: string;
  private readonly tmpDir: string;
  private readonly lockPath: string;
  private readonly ttlMs: number;
  private readonly rescanMs: number;
  private readonly now: () => number;
  private readonly random: () => number;
  private readonly log: Logger;
  private readonly closeCtl = new AbortController();
  /** The lease this store last acquired/renewed (to tell "taken by another node" in watch). */
  private held: Lease | undefined;
  private config: NetworkConfig | undefined;

  private constructor(opts: EmbeddedStoreOptions) {
    this.dir = opts.dir;
    this.subnetsDir = join(opts.dir, 'subnets');
    this.tmpDir = join(opts.dir, 'tmp');
    this.lockPath = join(opts.dir, 'lock');
    this.ttlMs = opts.ttlMs ?? LEASE_TTL_MS;
    this.rescanMs = opts.rescanMs ?? 1000;
    this.now = opts.now ?? Date.now;
    this.random = opts.random ?? Math.random;
    this.log = (opts.log ?? silentLogger()).child({ component: 'lease-embedded' });
  }

  /** Opens (and creates) the store directory; seeds `config` from `opts.netConfig` if absent. */
  static async open(opts: EmbeddedStoreOptions): Promise<EmbeddedLeaseStore> {
    const s = new EmbeddedLeaseStore(opts);
    try {
      await mkdir(s.subnetsDir, { recursive: true, mode: 0o755 });
      await mkdir(s.tmpDir, { recursive: true, mode: 0o755 });
    } catch (err) {
      throw new ConfigError('store-dir', `cannot create ${opts.dir}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    if (opts.netConfig !== undefined) await s.seedConfig(opts.netConfig);
    return s;
  }

  private async seedConfig(text: string): Promise<void> {
    const given = parseNetConfig(text, 'net-config');
    const path = join(this.dir, 'config');
    const tmp = await this.writeTmp(text.endsWith('\n') ? text : `${text}\n`);
    try {
      await link(tmp, path);
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
    const existing = await this.getNetworkConfig();
    if (JSON.stringify(existing.raw) !== JSON.stringify(given.raw)) {
      this.log.warn(
        { path, given: given.raw, stored: existing.raw },
        'net-conf given differs from the store directory; using the store directory (edit or remove its config file to change it)',
      );
    }
  }

  async getNetworkConfig(): Promise<NetworkConfig> {
    const path = join(this.dir, 'config');
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      throw new ConfigError(
        'net-config',
        `cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); ` +
          'write the net-conf JSON there or start weftd with --net-config-path',
        { cause: err },
      );
    }
    this.config = parseNetConfig(text, path);
    return this.config;
  }

  private async networkConfig(): Promise<NetworkConfig> {
    return this.config ?? (await this.getNetworkConfig());
  }

  private fileOf(subnet: Ipv4Cidr): string {
    return join(this.subnetsDir, cidrToKey(subnet));
  }

  private async writeTmp(content: string): Promise<string> {
    const tmp = join(this.tmpDir, `${process.pid}-${randomBytes(6).toString('hex')}`);
    const fh = await open(tmp, 'wx', 0o644);
    try {
      await fh.writeFile(content);
      await fh.sync();
    } finally {
      await fh.close();
    }
    return tmp;
  }

  /** Creates the lease file; false when the name exists already. */
  private async create(lease: Lease): Promise<boolean> {
    const tmp = await this.writeTmp(JSON.stringify(toFile(lease.attrs, lease.expiresAt)));
    try {
      await link(tmp, this.fileOf(lease.subnet));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw new LeaseError(
        `cannot write lease ${cidrToKey(lease.subnet)} in ${this.subnetsDir}: ${(err as Error).message}`,
        {
          cause: err,
        },
      );
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
  }

  /** Replaces the lease file (it exists). */
  private async replace(lease: Lease): Promise<void> {
    const tmp = await this.writeTmp(JSON.stringify(toFile(lease.attrs, lease.expiresAt)));
    try {
      await rename(tmp, this.fileOf(lease.subnet));
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      throw new LeaseError(`cannot update lease ${cidrToKey(lease.subnet)}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  private async remove(subnet: Ipv4Cidr): Promise<void> {
    await unlink(this.fileOf(subnet)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }

  private async readOne(subnet: Ipv4Cidr): Promise<Lease | undefined | 'corrupt'> {
    let text: string;
    try {
      text = await readFile(this.fileOf(subnet), 'utf8');
    } catch {
      return undefined;
    }
    try {
      return fromFile(subnet, JSON.parse(text)) ?? 'corrupt';
    } catch {
      return 'corrupt';
    }
  }

  /** Every lease file (expired ones included; callers filter by time). */
  private async list(): Promise<Listing> {
    let names: string[];
    try {
      names = await readdir(this.subnetsDir);
    } catch (err) {
      throw new LeaseError(
        `cannot list ${this.subnetsDir}: ${(err as Error).message}; is the store directory there?`,
        {
          cause: err,
        },
      );
    }
    const leases: Lease[] = [];
    const corrupt: string[] = [];
    await Promise.all(
      names.map(async (name) => {
        const subnet = keyToCidr(name);
        if (!subnet) return;
        const l = await this.readOne(subnet);
        if (l === 'corrupt') corrupt.push(name);
        else if (l) leases.push(l);
      }),
    );
    return { leases, corrupt };
  }

  async acquire(attrs: LeaseAttrs, opts: AcquireOptions = {}): Promise<Lease> {
    const config = await this.networkConfig();
    for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
      opts.signal?.throwIfAborted();
      const lease = await withLock(
        this.lockPath,
        async (): Promise<Lease | undefined> => {
          const { leases, corrupt } = await this.list();
          const now = this.now();
          // Corrupt files still occupy their name: count them as taken.
          const existing = leases.concat(
            corrupt.flatMap((k) => {
              const subnet = keyToCidr(k);
              return subnet
                ? [
                    {
                      subnet,
                      attrs: { publicIp: '', backendType: '', backendData: null },
                      expiresAt: Infinity,
                    },
                  ]
                : [];
            }),
          );
          const choice = allocate({
            config,
            existing,
            attrs,
            previousSubnet: opts.previousSubnet,
            now,
            random: this.random,
          });
          if (choice.kind === 'reuse') {
            const old = choice.lease;
            // A reservation (no expiry) stays one; a lease gets a fresh TTL.
            const renewed: Lease = {
              subnet: old.subnet,
              attrs,
              expiresAt: Number.isFinite(old.expiresAt) ? now + this.ttlMs : Infinity,
            };
            await this.replace(renewed);
            this.log.info({ subnet: formatCidr(renewed.subnet) }, 'reusing our existing lease');
            return renewed;
          }
          if (choice.discard) {
            this.log.warn(
              { subnet: formatCidr(choice.discard.subnet) },
              'removing our lease that no longer fits the config',
            );
            await this.remove(choice.discard.subnet);
          }
          if (choice.kind === 'full') throw new LeaseError(choice.message);
          // An expired lease may still sit at this name: it is free to take (we hold the lock).
          const stale = leases.find((l) => cidrEquals(l.subnet, choice.subnet));
          if (stale && stale.expiresAt <= now) await this.remove(choice.subnet);
          const fresh: Lease = { subnet: choice.subnet, attrs, expiresAt: now + this.ttlMs };
          if (!(await this.create(fresh))) return undefined;
          this.log.info({ subnet: formatCidr(fresh.subnet), how: choice.kind }, 'acquired a new lease');
          return fresh;
        },
        { signal: opts.signal },
      );
      if (lease) {
        this.held = lease;
        return lease;
      }
    }
    throw new LeaseError(
      `could not create a lease in ${this.subnetsDir} after ${MAX_ATTEMPTS} attempts (every chosen subnet was taken); retry, or check for a process writing there without the lock`,
    );
  }

  async renew(lease: Lease, signal?: AbortSignal): Promise<Lease> {
    return withLock(
      this.lockPath,
      async () => {
        const cur = await this.readOne(lease.subnet);
        const now = this.now();
        if (
          cur === undefined ||
          cur === 'corrupt' ||
          cur.attrs.publicIp !== lease.attrs.publicIp ||
          cur.expiresAt <= now
        ) {
          throw new LeaseError(
            `lease ${formatCidr(lease.subnet)} is gone, expired or taken by another node; acquire a new one`,
          );
        }
        const renewed: Lease = {
          subnet: lease.subnet,
          attrs: lease.attrs,
          expiresAt: Number.isFinite(cur.expiresAt) ? now + this.ttlMs : Infinity,
        };
        await this.replace(renewed);
        this.held = renewed;
        return renewed;
      },
      { signal },
    );
  }

  async release(lease: Lease): Promise<void> {
    await withLock(this.lockPath, async () => {
      const cur = await this.readOne(lease.subnet);
      if (cur === undefined || cur === 'corrupt') return;
      // Never delete another node's lease, nor a reservation (it outlives its owner's runs).
      if (cur.attrs.publicIp !== lease.attrs.publicIp || !Number.isFinite(cur.expiresAt)) return;
      await this.remove(lease.subnet);
    });
    if (this.held && cidrEquals(this.held.subnet, lease.subnet)) this.held = undefined;
  }

  async watch(ownSubnet: Ipv4Cidr, opts: WatchOptions): Promise<void> {
    const signal = AbortSignal.any([opts.signal, this.closeCtl.signal]);
    if (signal.aborted) return;
    let known = new Map<string, Lease>();
    let first = true;
    let ownLost = false;
    let scanning = false;
    let again = false;
    let timer: NodeJS.Timeout | undefined;
    let failures = 0;

    const scan = async (): Promise<void> => {
      if (scanning) {
        again = true;
        return;
      }
      scanning = true;
      try {
        do {
          again = false;
          const { leases } = await this.list();
          if (signal.aborted) return;
          const res = reconcileSnapshot(known, leases, ownSubnet, this.now());
          known = res.known;
          if (first || res.events.length > 0) {
            first = false;
            opts.onEvents(res.events);
          }
          const held = this.held && cidrEquals(this.held.subnet, ownSubnet) ? this.held : undefined;
          const lost =
            res.own.kind === 'gone' ||
            (res.own.kind === 'present' &&
              held !== undefined &&
              res.own.lease.attrs.publicIp !== held.attrs.publicIp);
          if (lost && !ownLost) {
            ownLost = true;
            this.log.warn({ subnet: formatCidr(ownSubnet) }, 'our lease is gone from the store');
            opts.onOwnLeaseLost?.(ownSubnet);
          } else if (!lost) ownLost = false;
          failures = 0;
        } while (again && !signal.aborted);
      } catch (err) {
        if (failures++ === 0) this.log.warn({ err }, 'scanning the lease directory failed; will retry');
      } finally {
        scanning = false;
      }
    };
    const schedule = (): void => {
      if (timer || signal.aborted) return;
      // Coalesce bursts of inotify events (one write = several events) into one scan.
      timer = setTimeout(() => {
        timer = undefined;
        void scan();
      }, 5);
    };

    let watcher: FSWatcher | undefined;
    try {
      watcher = fsWatch(this.subnetsDir, { persistent: true }, schedule);
      watcher.on('error', (err) => {
        this.log.warn({ err }, 'fs.watch on the lease directory failed; relying on periodic rescans');
        watcher?.close();
        watcher = undefined;
      });
    } catch (err) {
      this.log.warn({ err }, 'fs.watch unavailable; relying on periodic rescans');
    }
    const interval = setInterval(schedule, this.rescanMs);
    try {
      await scan();
      await new Promise<void>((resolve) => {
        if (signal.aborted) resolve();
        else signal.addEventListener('abort', () => resolve(), { once: true });
      });
    } finally {
      clearInterval(interval);
      if (timer) clearTimeout(timer);
      watcher?.close();
    }
  }

  async close(): Promise<void> {
    this.closeCtl.abort();
    return Promise.resolve();
  }

  // ---- helpers for tests and operators -------------------------------------------------

  /** Deletes the lease file for `subnet` whoever holds it (an admin's `rm`). */
  async deleteLease(subnet: Ipv4Cidr): Promise<void> {
    await withLock(this.lockPath, () => this.remove(subnet));
  }

  /** Writes a reservation (a lease that never expires) for `subnet`. */
  async reserve(subnet: Ipv4Cidr, attrs: LeaseAttrs): Promise<void> {
    const config = await this.networkConfig();
    if (!subnetFitsConfig(config, subnet)) {
      throw new LeaseError(
        `reservation ${formatCidr(subnet)} does not fit the network config (length, SubnetMin/Max)`,
      );
    }
    await withLock(this.lockPath, async () => {
      await this.remove(subnet);
      await this.create({ subnet, attrs, expiresAt: Infinity });
    });
  }

  /** Live leases (expired ones left out). */
  async leases(): Promise<Lease[]> {
    const now = this.now();
    return (await this.list()).leases.filter((l) => l.expiresAt > now);
  }
}

/** Validates a net-conf object and writes it as `<dir>/config` (tests, setup scripts). */
export async function writeEmbeddedConfig(dir: string, netConf: unknown): Promise<void> {
  validateNetConfig(netConf);
  await mkdir(dir, { recursive: true });
  const tmp = join(dir, `.config-${randomBytes(4).toString('hex')}`);
  const fh = await open(tmp, 'wx', 0o644);
  try {
    await fh.writeFile(`${JSON.stringify(netConf)}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, join(dir, 'config'));
}
