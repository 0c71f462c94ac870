/**
 * Userspace VXLAN data plane: weft's Forwarder between a TUN device and a UDP socket on the
 * VXLAN port, with the vxlan Encap (our VNI and VTEP MAC; peers' VTEP MACs from their
 * leases). Same lease data and wire format as the kernel plane, so a node running this
 * talks to a node running Linux's vxlan driver.
 *
 * Kernel side: TUN weft.<VNI>, MTU underlay - 50, address <our subnet network addr>/32,
 * route <Network> dev weft.<VNI> (the forwarder routes per peer and answers unknown
 * destinations with ICMP net unreachable). DirectRouting peers get a kernel route via the
 * underlay instead, as in the kernel plane. The forwarder validates every received frame
 * (VNI, destination MAC, EtherType, truncation) and counts drops by reason.
 *
 * Like the udp backend, the plane checks its TUN device every second (TunWatch from the udp
 * backend): a deleted device is opened again with address, MTU and route, and a fresh
 * forwarder with the same peers and counters takes over.
 *
 * With ctx.workers = N > 1 the TUN device is multi-queue, the socket SO_REUSEPORT, and a
 * WorkerPool (src/dataplane/workers/pool.ts) runs N-1 more forwarders in threads; received
 * frames are steered to them by inner flow (inner IPv4 at payload offset 22).
 */
import { nativeIoStats, userspaceDataplaneInfo } from '../userspace-info.ts';
import type { DataplaneInfo } from '../backend.ts';
import { openConn } from '../../conn/native-conn.ts';
import { maintainTunnelGso, openTunnelGso } from '../tunnel-gso.ts';
import type { TunnelGsoDevice } from '../tunnel-gso.ts';
import type { PacketConn } from '../../conn/conn.ts';
import { DEFAULT_BUSY_POLL_US, Forwarder } from '../../dataplane/forwarder.ts';
import { WorkerPool, workersStat } from '../../dataplane/workers/pool.ts';
import type { Peer } from '../../dataplane/peer.ts';
import { PeerIdAllocator } from '../../dataplane/peer.ts';
import { VxlanEncap } from '../../encap/encap.ts';
import type { KernelOp } from '../../kernel/kernel.ts';
import { PeerReconciler } from '../../kernel/reconciler.ts';
import type { Lease } from '../../lease/types.ts';
import { openTun } from '../../tun/native-tun.ts';
import type { TunDevice } from '../../tun/tun.ts';
import type { Logger } from '../../util/log.ts';
import {
  checkAndRepairTun,
  DEFAULT_DEVICE_CHECK_MS,
  tunInterest,
  tunSetupOps,
  TunWatch,
} from '../udp/udp.ts';
import type { TunRepairCounters } from '../udp/udp.ts';
import type { VxlanDataplane } from './dataplane.ts';
import type { VxlanPeerPlan } from './plan.ts';
import { macBytes, samePlan, vxlanAddOps, vxlanRemoveOps } from './plan.ts';
import type { UserspacePlaneParams } from './vxlan.ts';

export class UserspaceVxlanPlane implements VxlanDataplane {
  readonly kind = 'userspace' as const;
  readonly device: string;
  private readonly p: UserspacePlaneParams;
  private readonly log: Logger;
  private tun: TunDevice | undefined;
  private conn: PacketConn | undefined;
  /** The tunnel-GSO TAP (ctx.tunnelGso, when the node allows it). */
  private tunnel: TunnelGsoDevice | undefined;
  private fwd: Forwarder | undefined;
  /** The forwarding threads beyond the main one (ctx.workers > 1). */
  private pool: WorkerPool | undefined;
  private lease: Lease | undefined;
  private readonly ids = new PeerIdAllocator();
  private readonly wanted = new Map<string, VxlanPeerPlan>();
  private readonly inForwarder = new Map<string, Peer>();
  /** Kernel routes for DirectRouting peers only (others need no kernel state). */
  private readonly direct: PeerReconciler<VxlanPeerPlan>;
  /** Kernel index of our TUN device (a new index under our name means ours was deleted). */
  private tunIndex = -1;
  private readonly watch: TunWatch;
  private readonly repairs: TunRepairCounters = {
    deviceRecreated: 0,
    deviceRepaired: 0,
    deviceRepairFailures: 0,
  };

  /** `opts.deviceCheckMs`: how often to check the TUN device (default 1000 ms; 0 = never). */
  constructor(p: UserspacePlaneParams, opts: { readonly deviceCheckMs?: number } = {}) {
    this.p = p;
    this.watch = new TunWatch(
      opts.deviceCheckMs ?? DEFAULT_DEVICE_CHECK_MS,
      (full) => this.checkDevice(full),
      { kernel: p.kernel, interest: tunInterest(p.plan.dev, p.ctx.network.network) },
    );
    this.device = p.plan.dev;
    this.log = p.ctx.log.child({ component: 'vxlan-userspace' });
    this.direct = new PeerReconciler<VxlanPeerPlan>({
      kernel: p.kernel,
      log: this.log,
      addOps: (x) => (x.direct ? vxlanAddOps(x, p.plan) : []),
      removeOps: (x) => (x.direct ? vxlanRemoveOps(x, p.plan) : []),
      same: samePlan,
    });
  }

  async start(lease: Lease, _signal: AbortSignal): Promise<void> {
    this.lease = lease;
    const { kernel, ctx, options, mtu } = this.p;
    const name = this.device;
    const existing = await kernel.getLink(name);
    if (existing && existing.kind !== 'tun') {
      this.log.warn({ device: name, kind: existing.kind }, 'a non-TUN device holds our name; deleting it');
      await kernel.apply([{ op: 'link-del', name }]);
    }
    const multi = (ctx.workers ?? 1) > 1;
    const tunnel =
      ctx.tunnelGso && ctx.offloads
        ? await openTunnelGso(kernel, name, this.log, undefined, {
            multiQueue: multi,
            ...(ctx.tunnelGsoRetryMs !== undefined ? { retryMs: ctx.tunnelGsoRetryMs } : {}),
          })
        : undefined;
    this.tunnel = tunnel;
    let tun: TunDevice;
    try {
      tun = openTun({
        name,
        mtu,
        offloads: ctx.offloads,
        multiQueue: multi,
        keepSuperPackets: ctx.offloads,
      });
    } catch (err) {
      this.closeDevices();
      throw err;
    }
    this.tun = tun;
    try {
      const ops: KernelOp[] = [];
      for (const a of await kernel.listAddrs(name)) {
        if (a.addr !== lease.subnet.addr || a.prefix !== 32) ops.push({ op: 'addr-del', dev: name, addr: a });
      }
      ops.push(...tunSetupOps(name, lease, mtu, ctx.network.network));
      await kernel.apply(ops);
      const conn = openConn({
        bindAddr: ctx.underlay.addr,
        port: options.port,
        offloads: ctx.offloads,
        reusePort: multi,
      });
      this.conn = conn;
      tunnel?.attach(conn, ctx.underlay.iface);
      const vtep = macBytes(this.p.mac);
      this.fwd = new Forwarder({
        tun,
        conn,
        encap: new VxlanEncap(options.vni, vtep),
        local: { subnet: lease.subnet, tunAddr: lease.subnet.addr, vtepMac: vtep },
        port: options.port,
        checkPeerPort: false,
        keepaliveIntervalMs: (options.keepalive ?? 0) * 1000,
        busyPollUs: this.p.ctx.busyPollUs ?? DEFAULT_BUSY_POLL_US,
      });
      this.fwd.start();
      if (multi) {
        this.pool = await this.startPool(this.fwd, conn);
        tunnel?.setWorkers(this.pool);
      }
      this.tunIndex = (await kernel.getLink(name))?.index ?? -1;
      this.watch.start();
    } catch (err) {
      const pool = this.pool;
      this.pool = undefined;
      await pool?.close();
      this.closeDevices();
      throw err;
    }
    this.log.info(
      {
        device: name,
        vni: options.vni,
        port: options.port,
        tunnelGso: this.tunnel?.name ?? false,
        mtu,
        offloads: tun.offloads,
        workers: ctx.workers ?? 1,
      },
      'userspace VXLAN data plane running',
    );
  }

  setPeer(key: string, plan: VxlanPeerPlan | undefined): void {
    if (plan === undefined) this.wanted.delete(key);
    else this.wanted.set(key, plan);
    this.direct.setDesired(key, plan?.direct ? plan : undefined);
  }

  commit(): void {
    const fwd = this.pool ?? this.fwd;
    if (!fwd) return;
    for (const [key, peer] of [...this.inForwarder]) {
      const want = this.wanted.get(key);
      if (want && !want.direct && sameAsPeer(want, peer)) continue;
      fwd.removePeer(peer);
      this.inForwarder.delete(key);
      this.ids.release(key);
    }
    for (const [key, want] of this.wanted) {
      if (want.direct || this.inForwarder.has(key)) continue;
      const peer: Peer = {
        id: this.ids.acquire(key),
        subnet: want.subnet,
        publicIp: want.publicIp,
        port: 0,
        vtepMac: macBytes(want.mac),
        leaseKey: key,
        tunnelGso: want.tunnelGso,
      };
      fwd.addPeer(peer);
      this.inForwarder.set(key, peer);
    }
    this.direct.schedule();
  }

  settled(): Promise<void> {
    return this.direct.settled();
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
    const { kernel, ctx, mtu } = this.p;
    const r = await checkAndRepairTun({
      kernel,
      name: this.device,
      mtu,
      network: ctx.network.network,
      lease,
      conn,
      tun: this.tun,
      tunIndex: this.tunIndex,
      fwd: this.fwd,
      pool: this.pool,
      peers: () => this.inForwarder.values(),
      openTun: () =>
        Promise.resolve(
          openTun({
            name: this.device,
            mtu,
            offloads: ctx.offloads,
            multiQueue: (ctx.workers ?? 1) > 1,
            keepSuperPackets: ctx.offloads,
          }),
        ),
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

  private startPool(main: Forwarder, conn: PacketConn): Promise<WorkerPool> {
    const { ctx, mtu, options } = this.p;
    return WorkerPool.start({
      workers: ctx.workers ?? 1,
      main,
      mainConn: conn,
      tun: { name: this.device, mtu, offloads: ctx.offloads },
      conn: { bindAddr: ctx.underlay.addr, port: options.port, offloads: ctx.offloads },
      log: this.log,
      tunnel: this.tunnel?.usable ? { name: this.tunnel.name } : undefined,
    });
  }

  /** The forwarder (tests, status); with workers, the main thread's (worker 0). */
  get forwarder(): Forwarder | undefined {
    return this.fwd;
  }

  /** The worker pool when ctx.workers > 1 (tests, status). */
  get workerPool(): WorkerPool | undefined {
    return this.pool;
  }

  dataplaneInfo(): DataplaneInfo {
    return userspaceDataplaneInfo(this.pool ?? this.fwd, this.tun, this.conn);
  }

  stats(): Record<string, number | Record<string, number>> {
    const fwd = this.fwd;
    const out: Record<string, number | Record<string, number>> = {
      peers: this.inForwarder.size + this.direct.installedPlans().size,
      // peers whose lease says they take whole tunnel-GSO datagrams
      tunnelGsoPeers: [...this.inForwarder.values()].filter((p) => p.tunnelGso === true).length,
      peersDirect: this.direct.installedPlans().size,
      kernelFailures: this.direct.counters.failures,
      ...this.repairs,
      kernelEventChecks: this.watch.eventChecks,
      kernelEventsIgnored: this.watch.ignoredNotifications,
      ...this.tunnel?.stats(),
    };
    if (fwd) {
      const s = (this.pool ?? fwd).snapshot();
      if (this.pool) out['workers'] = workersStat(this.pool);
      out['counters'] = { ...s.counters };
      out['drops'] = { ...s.drops };
      Object.assign(out, nativeIoStats(this.tun, this.conn, this.pool));
    }
    return out;
  }

  async stop(): Promise<void> {
    await this.watch.stop();
    await this.direct.stop();
    await this.direct.removeAll();
    const pool = this.pool;
    this.pool = undefined;
    await pool?.close();
    this.closeDevices();
    this.inForwarder.clear();
    if (this.lease) {
      // Closing the TUN fd removes the (non-persistent) device and its route; make sure.
      try {
        await this.p.kernel.apply([{ op: 'link-del', name: this.device }]);
      } catch (err) {
        this.log.warn({ err, device: this.device }, 'could not delete the TUN device');
      }
    }
  }

  private closeDevices(): void {
    this.fwd?.stop();
    this.fwd = undefined;
    this.conn?.close();
    this.conn = undefined;
    this.tunnel?.close();
    this.tunnel = undefined;
    this.tun?.close();
    this.tun = undefined;
  }
}

/** Whether the forwarder's `peer` already is what plan `p` asks for (tunnelGso included). */
export function sameAsPeer(p: VxlanPeerPlan, peer: Peer): boolean {
  return (
    p.publicIp === peer.publicIp &&
    p.subnet.addr === peer.subnet.addr &&
    p.subnet.prefix === peer.subnet.prefix &&
    p.tunnelGso === (peer.tunnelGso === true) &&
    peer.vtepMac !== undefined &&
    macBytes(p.mac).equals(peer.vtepMac)
  );
}

export function createUserspacePlane(p: UserspacePlaneParams): Promise<VxlanDataplane> {
  return Promise.resolve(new UserspaceVxlanPlane(p));
}
