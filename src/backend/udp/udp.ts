/**
 * The udp backend: flannel's escape hatch where VXLAN is blocked, made fast.
 *
 * Wire format is flannel's: the UDP payload is the raw inner IPv4 packet, one port for every
 * node (Backend.Port, default 8285). Kernel side as flannel's udp backend: a TUN device
 * (weft0 by default) with <our subnet's network address>/32 (a source address for
 * host-to-pod traffic without broadcast routes), MTU underlay - 28, and a route for the
 * whole Network through it. weft's Forwarder moves packets between the TUN and the socket
 * in batches, with offloads unless turned off. Peers (from their leases) are entries in the
 * forwarder's route table; nothing in the kernel changes per peer.
 *
 * flannel publishes no BackendData for udp; ours is {"TunnelGSO": true} when this node takes
 * whole tunnel-GSO datagrams (offloads on, see src/backend/tunnel-gso.ts), else null.
 *
 * The TUN device is checked every second (TunWatch): if someone deletes it (`ip link del`),
 * the backend opens a new one, puts address, MTU and route back and swaps it into a fresh
 * forwarder with the same peers and counters; a device that is only down or lost its
 * address is fixed in place. The vxlan userspace plane uses the same watch.
 *
 * With ctx.workers = N > 1 the device is opened multi-queue and the socket with
 * SO_REUSEPORT, and a WorkerPool (src/dataplane/workers/pool.ts) runs N-1 more forwarders
 * in threads, each on its own queue and socket; the main forwarder is worker 0. A recreated
 * device gets a new pool (all queues reopened) with the same peers and counters.
 */
import { nativeIoStats, userspaceDataplaneInfo } from '../userspace-info.ts';
import { networkInterfaces } from 'node:os';
import type { Backend, BackendContext, BackendStats, DataplaneInfo, PreparedBackend } from '../backend.ts';
import type { ConnOptions, PacketConn } from '../../conn/conn.ts';
import { DEFAULT_BUSY_POLL_US, Forwarder } from '../../dataplane/forwarder.ts';
import { WorkerPool, workersStat } from '../../dataplane/workers/pool.ts';
import type { Peer } from '../../dataplane/peer.ts';
import { PeerIdAllocator } from '../../dataplane/peer.ts';
import { UdpEncap } from '../../encap/encap.ts';
import { watchKernel } from '../../kernel/monitor.ts';
import type { KernelInterest, KernelMonitor } from '../../kernel/monitor.ts';
import { defaultKernel } from '../../kernel/netlink.ts';
import type { KernelNet, KernelOp } from '../../kernel/kernel.ts';
import type { Lease, LeaseEvent } from '../../lease/types.ts';
import { cidrToKey, formatCidr, formatIpv4, tryParseIpv4 } from '../../routing/ipv4.ts';
import type { Ipv4Cidr } from '../../routing/ipv4.ts';
import type { TunDevice } from '../../tun/tun.ts';
import { ConfigError, DeviceError } from '../../util/errors.ts';
import {
  maintainTunnelGso,
  openTunnelGso,
  takesTunnelGso,
  TUNNEL_GSO_LEASE_KEY,
  tunnelGsoName,
} from '../tunnel-gso.ts';
import type { TunnelGsoDevice } from '../tunnel-gso.ts';
import type { Logger } from '../../util/log.ts';
import { backendMtu, keepaliveSeconds } from '../../daemon/netconf.ts';

export const UDP_BACKEND_TYPE = 'udp';
/** Outer IPv4 (20) + UDP (8) headers. */
export const UDP_OVERHEAD = 28;
export const DEFAULT_UDP_PORT = 8285;
export const DEFAULT_TUN_NAME = 'weft0';

export interface UdpDeps {
  /** Default: defaultKernel() (netlink reads, iproute2 writes) in the current network namespace. */
  readonly kernel?: KernelNet;
  /** Default: the native TUN (src/tun/native-tun.ts), loaded on first use. */
  readonly openTun?: (opts: {
    name: string;
    mtu: number;
    offloads: boolean;
    /** IFF_MULTI_QUEUE (set when ctx.workers > 1). */
    multiQueue?: boolean;
    /** Whole TCP super-packets, for tunnel GSO (set when the TAP is up). */
    keepSuperPackets?: boolean;
  }) => TunDevice | Promise<TunDevice>;
  /** Default: the native socket (src/conn/native-conn.ts), loaded on first use. */
  readonly openConn?: (opts: ConnOptions) => PacketConn | Promise<PacketConn>;
  /** TUN device name (default weft0, weftd --tun-name). */
  readonly tunName?: string;
  /** How often to check that the TUN device still exists (ms, default 1000; 0 = never). */
  readonly deviceCheckMs?: number;
}

/** How often a userspace data plane checks its TUN device (ms). */
export const DEFAULT_DEVICE_CHECK_MS = 1000;

/** What is wrong with a TUN device we set up: gone/replaced need a new device, the rest a fix-up. */
export type TunProblem = 'gone' | 'replaced' | 'down' | 'address' | 'route';

/** Every this many device checks, the link, address and route are read from the kernel too. */
export const FULL_CHECK_EVERY = 5;

/**
 * What is wrong with our TUN device `name` (kernel index `index`, address `addr`/32, route
 * `network` through it), or undefined when nothing is. The common case is one
 * os.networkInterfaces() call (getifaddrs in our own network namespace), which lists the
 * device up and running with our address. Only when it does not, or when `full`, do we ask
 * the kernel for details (link, addresses, the route: netlink reads with the default
 * kernel, see src/kernel/netlink.ts).
 */
export async function tunProblem(
  kernel: KernelNet,
  name: string,
  addr: number,
  index: number,
  network: Ipv4Cidr,
  full = true,
): Promise<TunProblem | undefined> {
  const want = formatIpv4(addr);
  const listed = networkInterfaces()[name];
  const fine = listed?.some(
    (a) => (a.family === 'IPv4' || (a.family as unknown) === 4) && a.address === want,
  );
  if (fine && !full) return undefined;
  const link = await kernel.getLink(name);
  if (link === undefined) return 'gone';
  if (link.kind !== 'tun' || link.index !== index) return 'replaced';
  if (!link.up) return 'down';
  if (!(await kernel.listAddrs(name)).some((a) => a.addr === addr && a.prefix === 32)) return 'address';
  const routes = await kernel.listRoutes(name);
  if (!routes.some((r) => r.dst.addr === network.addr && r.dst.prefix === network.prefix)) return 'route';
  return undefined;
}

/**
 * What a userspace backend's device check looks at (its KernelMonitor drops the rest): the
 * TUN, its tunnel-GSO TAP, and routes into the Network.
 */
export function tunInterest(name: string, network: Ipv4Cidr): KernelInterest {
  return { devices: [name, tunnelGsoName(name)], routesWithin: [network] };
}

/**
 * Runs `check` every `intervalMs` (unref'd timer), never two at once; every
 * FULL_CHECK_EVERY-th run (and every run asked for by hand) is a full one. With `kernel`
 * and `interest` (when the kernel reads this namespace over netlink: watchKernel), a full
 * check also runs soon after the kernel announces a change of what `interest` names (the
 * TUN's link, addresses and routes, routes into the Network), so damage is put right in
 * milliseconds rather than at the next tick; the timer stays as the safety net. `check`
 * must not reject.
 * stop() waits for a check in progress, so a backend can tear down after it.
 */
export class TunWatch {
  private timer: NodeJS.Timeout | undefined;
  private inFlight: Promise<void> | undefined;
  /** A full check asked for while one was running: it runs when that one ends. */
  private again = false;
  /** Periodic checks started so far (every FULL_CHECK_EVERY-th is a full one). */
  private periodic = 0;
  private readonly intervalMs: number;
  private readonly check: (full: boolean) => Promise<void>;
  private readonly kernel: KernelNet | undefined;
  private readonly interest: KernelInterest | undefined;
  private monitor: KernelMonitor | undefined;
  /** Checks started by a kernel notification. */
  eventChecks = 0;

  constructor(
    intervalMs: number,
    check: (full: boolean) => Promise<void>,
    opts: { readonly kernel?: KernelNet; readonly interest?: KernelInterest } = {},
  ) {
    this.intervalMs = intervalMs;
    this.check = check;
    this.kernel = opts.kernel;
    this.interest = opts.interest;
  }

  start(): void {
    if (this.intervalMs <= 0 || this.timer) return;
    this.timer = setInterval(() => void this.tick(false), this.intervalMs);
    this.timer.unref();
    if (this.kernel && this.interest && !this.monitor) {
      this.monitor = watchKernel(this.kernel, this.interest, () => {
        this.eventChecks++;
        void this.tick(true, true);
      });
    }
  }

  /** Kernel notifications read and dropped as about nothing the check looks at. */
  get ignoredNotifications(): number {
    return this.monitor?.counters.ignored ?? 0;
  }

  /**
   * Runs a check now, full unless `full` is false (periodic), or joins the one in progress.
   * With `rerun`, a full check asked for while another runs is run again after it (a change
   * the running check may have read too early).
   */
  tick(full = true, rerun = false): Promise<void> {
    if (this.inFlight) {
      if (rerun) this.again = true;
      return this.inFlight;
    }
    const f = full || ++this.periodic % FULL_CHECK_EVERY === 0;
    this.inFlight = this.check(f).finally(() => {
      this.inFlight = undefined;
      if (this.again && this.timer) {
        this.again = false;
        void this.tick(true);
      }
    });
    return this.inFlight;
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.monitor?.close();
    this.monitor = undefined;
    this.again = false;
    await this.inFlight;
  }
}

/** A forwarder like `old` (same encap, local side, port, checks, keepalives and counters) over a new TUN. */
export function forwarderWithTun(old: Forwarder, tun: TunDevice, conn: PacketConn): Forwarder {
  return new Forwarder({
    tun,
    conn,
    encap: old.encap,
    local: old.local,
    port: old.port,
    stats: old.stats,
    checkPeerPort: old.checkPeerPort,
    icmpForIcmpQueries: old.icmpForIcmpQueries,
    maxBatchesPerTurn: old.maxBatchesPerTurn,
    keepaliveIntervalMs: old.keepaliveIntervalMs,
    busyPollUs: old.busyPollUs,
  });
}

/** Counters of the TUN device checks, kept by each userspace backend. */
export interface TunRepairCounters {
  deviceRecreated: number;
  deviceRepaired: number;
  deviceRepairFailures: number;
}

/** Everything the shared TUN check-and-repair needs from a userspace backend. */
export interface TunRepairInput {
  readonly kernel: KernelNet;
  readonly name: string;
  readonly mtu: number;
  readonly network: Ipv4Cidr;
  readonly lease: Lease;
  readonly conn: PacketConn;
  readonly tun: TunDevice | undefined;
  readonly tunIndex: number;
  readonly fwd: Forwarder | undefined;
  /** The worker pool around `fwd` (workers > 1): rebuilt on the new device with it. */
  readonly pool?: WorkerPool | undefined;
  readonly peers: () => Iterable<Peer>;
  readonly openTun: () => Promise<TunDevice>;
  readonly full: boolean;
  readonly counters: TunRepairCounters;
  readonly log: Logger;
}

/**
 * One device check of a userspace backend (udp, userspace vxlan), shared so both repair
 * the same way: a deleted or replaced TUN is reopened (a new device needs a new fd) and the
 * forwarder rebuilt over it with the same peers; a device that lost its address, MTU, route
 * or accept_local gets them back. Never throws: failures are counted and logged, and the
 * next check tries again. Returns the (possibly new) device, forwarder and ifindex.
 */
export async function checkAndRepairTun(i: TunRepairInput): Promise<{
  tun: TunDevice | undefined;
  fwd: Forwarder | undefined;
  pool: WorkerPool | undefined;
  tunIndex: number;
}> {
  let { tun, fwd, pool, tunIndex } = i;
  const { kernel, name, lease } = i;
  try {
    const problem = tun
      ? await tunProblem(kernel, name, lease.subnet.addr, tunIndex, i.network, i.full)
      : 'gone';
    if (problem === undefined) return { tun, fwd, pool, tunIndex };
    const reopen = problem === 'gone' || problem === 'replaced';
    if (reopen) {
      fwd?.stop();
      tun?.close();
      tun = undefined;
      if (await kernel.getLink(name)) await kernel.apply([{ op: 'link-del', name }]);
      tun = await i.openTun();
    }
    await kernel.apply(tunSetupOps(name, lease, i.mtu, i.network));
    tunIndex = (await kernel.getLink(name))?.index ?? -1;
    if (reopen && fwd && tun) {
      fwd = forwarderWithTun(fwd, tun, i.conn);
      fwd.setPeers(i.peers());
      fwd.start();
      // The workers' queues belonged to the old device: the pool is rebuilt on the new one.
      if (pool) pool = await pool.rebuild(fwd);
      i.counters.deviceRecreated++;
    } else i.counters.deviceRepaired++;
    i.log.warn(
      { device: name, problem, recreated: reopen },
      reopen
        ? 'the TUN device was gone; recreated it (address, MTU, route) and resumed forwarding'
        : 'the TUN device had lost its settings; put address, MTU and route back',
    );
  } catch (err) {
    i.counters.deviceRepairFailures++;
    i.log.error({ err, device: name }, 'could not repair the TUN device; trying again at the next check');
  }
  return { tun, fwd, pool, tunIndex };
}

/**
 * Transmit queue of a userspace backend's TUN device: packets the kernel holds for weftd
 * to read. The kernel's default (500) overflows when a burst of small packets meets a
 * forwarder that is briefly off the CPU (64-byte UDP at kernel VXLAN's rate lost 2-3% at
 * the TUN on 2 shared cores); 2000 absorbs ~40 ms of such a burst.
 */
export const TUN_TXQUEUELEN = 2000;

/** The kernel settings of a userspace backend's TUN device. */
export function tunSetupOps(name: string, lease: Lease, mtu: number, network: Ipv4Cidr): KernelOp[] {
  return [
    { op: 'addr-replace', dev: name, addr: { addr: lease.subnet.addr, prefix: 32 } },
    { op: 'link-up', name, mtu, txqueuelen: TUN_TXQUEUELEN },
    { op: 'route-replace', route: { dst: network, dev: name } },
    // The ICMP errors we write into the TUN come from its own address: let the kernel take them.
    { op: 'iface-sysctl', dev: name, key: 'accept_local', value: '1' },
  ];
}

/** The udp options of the network config (already checked by netconf). */
export function udpPort(ctx: BackendContext): number {
  const port = ctx.network.backend.Port ?? DEFAULT_UDP_PORT;
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new ConfigError('Backend.Port', `${JSON.stringify(port)} is not a UDP port; use 1..65535`);
  }
  return port;
}

export class UdpBackend implements Backend {
  readonly type = UDP_BACKEND_TYPE;
  readonly tunName: string;
  readonly port: number;
  private readonly ctx: BackendContext;
  private readonly deps: UdpDeps;
  private readonly kernel: KernelNet;
  private readonly log: Logger;
  private mtu = 0;
  private tun: TunDevice | undefined;
  private conn: PacketConn | undefined;
  /** The tunnel-GSO TAP (ctx.tunnelGso, when the node allows it). */
  private tunnel: TunnelGsoDevice | undefined;
  private fwd: Forwarder | undefined;
  /** The forwarding threads beyond the main one (ctx.workers > 1). */
  private pool: WorkerPool | undefined;
  /** Forwarding threads in all (ctx.workers, default 1). */
  readonly workers: number;
  private readonly ids = new PeerIdAllocator();
  /** Peers by lease key: what the forwarder holds (or will hold once started). */
  private readonly peers = new Map<string, Peer>();
  private ignored = 0;
  private readonly ignoredKeys = new Set<string>();
  private lease: Lease | undefined;
  /** Kernel index of our TUN device (a new index under our name means ours was deleted). */
  private tunIndex = -1;
  private readonly watch: TunWatch;
  private readonly repairs: TunRepairCounters = {
    deviceRecreated: 0,
    deviceRepaired: 0,
    deviceRepairFailures: 0,
  };

  constructor(ctx: BackendContext, deps: UdpDeps = {}) {
    this.ctx = ctx;
    this.deps = deps;
    this.tunName = deps.tunName ?? DEFAULT_TUN_NAME;
    this.kernel = deps.kernel ?? defaultKernel();
    this.log = ctx.log.child({ component: 'backend-udp' });
    this.port = udpPort(ctx);
    this.workers = ctx.workers ?? 1;
    this.watch = new TunWatch(
      deps.deviceCheckMs ?? DEFAULT_DEVICE_CHECK_MS,
      (full) => this.checkDevice(full),
      { kernel: this.kernel, interest: tunInterest(this.tunName, ctx.network.network) },
    );
  }

  prepare(): Promise<PreparedBackend> {
    // Backend.MTU, or underlay - 28; checked to fit the underlay.
    const mtu = backendMtu(this.ctx.network.backend, this.ctx.underlay, UDP_OVERHEAD);
    this.mtu = mtu;
    // With offloads the receive side writes a whole super-packet to the TUN as one GSO write.
    const backendData = this.ctx.offloads ? { [TUNNEL_GSO_LEASE_KEY]: true } : null;
    return Promise.resolve({ backendType: UDP_BACKEND_TYPE, backendData, mtu });
  }

  async start(lease: Lease, signal: AbortSignal): Promise<void> {
    if (this.fwd) throw new DeviceError('the udp backend is already started; stop() it first');
    if (this.mtu === 0) await this.prepare();
    signal.throwIfAborted();
    const name = this.tunName;
    const mtu = this.mtu;
    const existing = await this.kernel.getLink(name);
    if (existing && existing.kind !== 'tun') {
      this.log.warn({ device: name, kind: existing.kind }, 'a non-TUN device holds our name; deleting it');
      await this.kernel.apply([{ op: 'link-del', name }]);
    }
    const openTun = this.deps.openTun ?? (await import('../../tun/native-tun.ts')).openTun;
    const openConn = this.deps.openConn ?? (await import('../../conn/native-conn.ts')).openConn;
    const multi = this.workers > 1;
    const tunnel =
      this.ctx.tunnelGso && this.ctx.offloads
        ? await openTunnelGso(this.kernel, name, this.log, undefined, {
            multiQueue: multi,
            ...(this.ctx.tunnelGsoRetryMs !== undefined ? { retryMs: this.ctx.tunnelGsoRetryMs } : {}),
          })
        : undefined;
    this.tunnel = tunnel;
    let tun: TunDevice;
    try {
      tun = await openTun({
        name,
        mtu,
        offloads: this.ctx.offloads,
        ...(multi ? { multiQueue: true } : {}),
        ...(this.ctx.offloads ? { keepSuperPackets: true } : {}),
      });
    } catch (err) {
      this.closeTunnel();
      throw err;
    }
    this.tun = tun;
    try {
      const ops: KernelOp[] = [];
      // A restarted daemon may find the device with an old lease's address: replace it.
      for (const a of await this.kernel.listAddrs(name)) {
        if (a.addr !== lease.subnet.addr || a.prefix !== 32) ops.push({ op: 'addr-del', dev: name, addr: a });
      }
      ops.push(...tunSetupOps(name, lease, mtu, this.ctx.network.network));
      await this.kernel.apply(ops);
      signal.throwIfAborted();
      this.conn = await openConn({
        bindAddr: this.ctx.underlay.addr,
        port: this.port,
        offloads: this.ctx.offloads,
        ...(multi ? { reusePort: true } : {}),
      });
      tunnel?.attach(this.conn, this.ctx.underlay.iface);
      this.fwd = new Forwarder({
        tun,
        conn: this.conn,
        encap: new UdpEncap(),
        local: { subnet: lease.subnet, tunAddr: lease.subnet.addr },
        port: this.port,
        keepaliveIntervalMs: keepaliveSeconds(this.ctx.network.backend) * 1000,
        busyPollUs: this.ctx.busyPollUs ?? DEFAULT_BUSY_POLL_US,
      });
      this.fwd.setPeers(this.peers.values());
      this.fwd.start();
      if (multi) {
        this.pool = await this.startPool(this.fwd, this.conn);
        tunnel?.setWorkers(this.pool);
      }
      this.lease = lease;
      this.tunIndex = (await this.kernel.getLink(name))?.index ?? -1;
      this.watch.start();
    } catch (err) {
      await this.teardown();
      throw err;
    }
    this.log.info(
      {
        device: name,
        address: `${formatIpv4(lease.subnet.addr)}/32`,
        route: formatCidr(this.ctx.network.network),
        mtu,
        bind: `${formatIpv4(this.ctx.underlay.addr)}:${this.port}`,
        tunOffloads: tun.offloads,
        connOffloads: this.conn?.offloads,
        workers: this.workers,
        tunnelGso: tunnel?.name ?? false,
      },
      'udp data path running',
    );
  }

  applyPeers(events: readonly LeaseEvent[]): void {
    for (const e of events) {
      const key = cidrToKey(e.lease.subnet);
      if (e.type === 'removed') {
        const p = this.peers.get(key);
        if (p) {
          this.peers.delete(key);
          (this.pool ?? this.fwd)?.removePeer(p);
          this.ids.release(key);
        }
        this.ignoredKeys.delete(key);
        continue;
      }
      const attrs = e.lease.attrs;
      const publicIp = tryParseIpv4(attrs.publicIp);
      if (attrs.backendType !== UDP_BACKEND_TYPE || publicIp === undefined) {
        this.ignored++;
        if (!this.ignoredKeys.has(key)) {
          this.ignoredKeys.add(key);
          this.log.warn(
            { subnet: formatCidr(e.lease.subnet), backendType: attrs.backendType, publicIp: attrs.publicIp },
            'ignoring a peer that does not run the udp backend (or has no usable public IP)',
          );
        }
        continue;
      }
      const old = this.peers.get(key);
      if (old) (this.pool ?? this.fwd)?.removePeer(old);
      const peer: Peer = {
        id: this.ids.acquire(key),
        subnet: e.lease.subnet,
        publicIp,
        port: 0,
        leaseKey: key,
        tunnelGso: takesTunnelGso(attrs.backendData),
      };
      this.peers.set(key, peer);
      (this.pool ?? this.fwd)?.addPeer(peer);
    }
  }

  /** The forwarder (tests, status); with workers, the main thread's (worker 0). */
  get forwarder(): Forwarder | undefined {
    return this.fwd;
  }

  /** The worker pool when ctx.workers > 1 (tests, status). */
  get workerPool(): WorkerPool | undefined {
    return this.pool;
  }

  private startPool(main: Forwarder, conn: PacketConn): Promise<WorkerPool> {
    return WorkerPool.start({
      workers: this.workers,
      main,
      mainConn: conn,
      tun: { name: this.tunName, mtu: this.mtu, offloads: this.ctx.offloads },
      conn: { bindAddr: this.ctx.underlay.addr, port: this.port, offloads: this.ctx.offloads },
      log: this.log,
      tunnel: this.tunnel?.usable ? { name: this.tunnel.name } : undefined,
    });
  }

  /** Checks the TUN device now and repairs it if needed (tests; also every deviceCheckMs). */
  checkDeviceNow(): Promise<void> {
    return this.watch.tick();
  }

  private async checkDevice(full: boolean): Promise<void> {
    const lease = this.lease;
    const conn = this.conn;
    if (!lease || !conn) return;
    await maintainTunnelGso(this.tunnel, this.pool, full);
    const r = await checkAndRepairTun({
      kernel: this.kernel,
      name: this.tunName,
      mtu: this.mtu,
      network: this.ctx.network.network,
      lease,
      conn,
      tun: this.tun,
      tunIndex: this.tunIndex,
      fwd: this.fwd,
      pool: this.pool,
      peers: () => this.peers.values(),
      openTun: async () =>
        (this.deps.openTun ?? (await import('../../tun/native-tun.ts')).openTun)({
          name: this.tunName,
          mtu: this.mtu,
          offloads: this.ctx.offloads,
          ...(this.workers > 1 ? { multiQueue: true } : {}),
          ...(this.ctx.offloads ? { keepSuperPackets: true } : {}),
        }),
      full,
      counters: this.repairs,
      log: this.log,
    });
    this.tun = r.tun;
    this.fwd = r.fwd;
    if (r.pool !== this.pool) this.tunnel?.setWorkers(r.pool);
    this.pool = r.pool;
    this.tunIndex = r.tunIndex;
  }

  dataplaneInfo(): DataplaneInfo {
    return userspaceDataplaneInfo(this.pool ?? this.fwd, this.tun, this.conn);
  }

  stats(): BackendStats {
    const out: Record<string, number | Record<string, number>> = {
      peers: this.peers.size,
      // peers whose lease says they take whole tunnel-GSO datagrams
      tunnelGsoPeers: [...this.peers.values()].filter((p) => p.tunnelGso === true).length,
      ignoredPeerEvents: this.ignored,
      mtu: this.mtu,
      port: this.port,
      ...this.repairs,
      kernelEventChecks: this.watch.eventChecks,
      kernelEventsIgnored: this.watch.ignoredNotifications,
      ...this.tunnel?.stats(),
    };
    const fwd = this.fwd;
    if (fwd) {
      const s = (this.pool ?? fwd).snapshot();
      if (this.pool) out.workers = workersStat(this.pool);
      out.running = s.running ? 1 : 0;
      out.routes = s.routes;
      out.counters = { ...s.counters };
      out.drops = { ...s.drops };
      out.offloads = Object.fromEntries(
        Object.entries(this.dataplaneInfo().offloads).map(([k, on]) => [k, on ? 1 : 0]),
      );
      Object.assign(out, nativeIoStats(this.tun, this.conn, this.pool));
    } else out.running = 0;
    return out;
  }

  private async teardown(): Promise<void> {
    await this.watch.stop();
    this.lease = undefined;
    const pool = this.pool;
    this.pool = undefined;
    await pool?.close();
    this.fwd?.stop();
    this.fwd = undefined;
    this.conn?.close();
    this.conn = undefined;
    this.closeTunnel();
    const hadTun = this.tun !== undefined;
    this.tun?.close();
    this.tun = undefined;
    // Closing a non-persistent TUN removes it (and its routes); delete it explicitly anyway in
    // case another process holds it open. Gone already is fine.
    if (hadTun) {
      await this.kernel.apply([{ op: 'link-del', name: this.tunName }]).catch((err: unknown) => {
        this.log.warn({ err, device: this.tunName }, 'could not delete the TUN device');
      });
    }
  }

  private closeTunnel(): void {
    this.tunnel?.close();
    this.tunnel = undefined;
  }

  async stop(): Promise<void> {
    await this.teardown();
    this.log.info({ device: this.tunName }, 'udp data path stopped');
  }
}

export function createUdpBackend(ctx: BackendContext, deps: UdpDeps = {}): UdpBackend {
  return new UdpBackend(ctx, deps);
}
