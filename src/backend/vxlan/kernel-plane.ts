/**
 * Kernel VXLAN data plane, programmed as flannel does it: one device weft.<VNI>
 * (`type vxlan id <VNI> local <underlay ip> dev <underlay> dstport <Port> nolearning`,
 * our VTEP MAC, MTU underlay - 50, our subnet's network address /32) and per peer a
 * permanent neighbour, an FDB entry and an onlink route (see plan.ts).
 *
 * The device is checked periodically: if someone deletes it or changes its settings it is
 * recreated and every peer reinstalled. After the first full peer set arrives the check
 * also removes entries no peer accounts for (left by an earlier run) and reinstalls entries
 * that vanished.
 */
import type { KernelNet, KernelOp, LinkInfo } from '../../kernel/kernel.ts';
import { KernelGroups, VerifyTriggers } from '../../kernel/monitor.ts';
import { PeerReconciler } from '../../kernel/reconciler.ts';
import type { Lease } from '../../lease/types.ts';
import { cidrEquals, formatIpv4 } from '../../routing/ipv4.ts';
import type { Ipv4Cidr } from '../../routing/ipv4.ts';
import type { Logger } from '../../util/log.ts';
import type { VxlanDataplane } from './dataplane.ts';
import type { VxlanPeerPlan, VxlanPlanContext } from './plan.ts';
import { samePlan, vxlanAddOps, vxlanRemoveOps } from './plan.ts';

export interface KernelPlaneOptions {
  readonly kernel: KernelNet;
  readonly log: Logger;
  readonly plan: VxlanPlanContext;
  readonly port: number;
  /** Local (source) underlay address, uint32. */
  readonly localIp: number;
  /** The flannel Network: changes of routes into it start a check (VerifyTriggers). */
  readonly network: Ipv4Cidr;
  readonly mac: string;
  readonly mtu: number;
  /** How often the device and peer state are checked (ms); 0 disables. */
  readonly checkIntervalMs?: number;
  readonly retryMs?: number;
}

export class KernelVxlanPlane implements VxlanDataplane {
  readonly kind = 'kernel' as const;
  readonly device: string;
  private readonly o: KernelPlaneOptions;
  private readonly rec: PeerReconciler<VxlanPeerPlan>;
  private lease: Lease | undefined;
  /** The timer and the kernel's notifications that start a verifying pass. */
  private triggers: VerifyTriggers | undefined;
  private peersKnown = false;
  private readonly counters = {
    deviceCreated: 0,
    deviceReplaced: 0,
    deviceRecreated: 0,
    staleRemoved: 0,
  };

  constructor(o: KernelPlaneOptions) {
    this.o = o;
    this.device = o.plan.dev;
    this.rec = new PeerReconciler<VxlanPeerPlan>({
      kernel: o.kernel,
      log: o.log,
      addOps: (p) => vxlanAddOps(p, o.plan),
      removeOps: (p) => vxlanRemoveOps(p, o.plan),
      same: samePlan,
      prelude: (verify) => this.prelude(verify),
      retryMs: o.retryMs ?? 1000,
    });
  }

  async start(lease: Lease, signal: AbortSignal): Promise<void> {
    this.lease = lease;
    await this.ensureDevice();
    const every = this.o.checkIntervalMs ?? 5000;
    // Device, routes, neighbours and FDB entries changed behind our back are seen at once
    // (kernel notifications), or at the latest at the next timer tick.
    if (every > 0) {
      this.triggers = new VerifyTriggers(this.o.kernel, every, () => this.rec.schedule(true), {
        interest: { devices: [this.device], routesWithin: [this.o.network] },
        groups: KernelGroups.link | KernelGroups.neigh | KernelGroups.ipv4Addr | KernelGroups.ipv4Route,
      });
    }
    signal.addEventListener('abort', () => {
      this.triggers?.close();
    });
  }

  setPeer(key: string, plan: VxlanPeerPlan | undefined): void {
    this.rec.setDesired(key, plan);
  }

  commit(): void {
    const first = !this.peersKnown;
    this.peersKnown = true;
    this.rec.schedule(first);
  }

  settled(): Promise<void> {
    return this.rec.settled();
  }

  /** Asks for a device/peer check now (tests; the timer does this periodically). */
  check(): void {
    this.rec.schedule(true);
  }

  stats(): Record<string, number> {
    const c = this.rec.counters;
    return {
      peers: this.rec.installedPlans().size,
      peersWanted: this.rec.desiredPlans().size,
      kernelPasses: c.passes,
      kernelFailures: c.failures,
      peersInstalled: c.peersInstalled,
      peersRemoved: c.peersRemoved,
      ...this.counters,
      kernelEventChecks: this.triggers?.eventChecks ?? 0,
      kernelEventsIgnored: this.triggers?.ignoredNotifications ?? 0,
    };
  }

  async stop(): Promise<void> {
    this.triggers?.close();
    await this.rec.stop();
    try {
      await this.o.kernel.apply([{ op: 'link-del', name: this.device }]);
    } catch (err) {
      this.o.log.warn({ err, device: this.device }, 'could not delete the VXLAN device');
    }
    // Direct routes live on the underlay and do not go away with the device.
    const direct = [...this.rec.installedPlans().values()].filter((p) => p.direct);
    for (const p of direct) {
      try {
        await this.o.kernel.apply(vxlanRemoveOps(p, this.o.plan));
      } catch (err) {
        this.o.log.warn({ err, peer: p.key }, 'could not remove a direct route');
      }
    }
    this.rec.forget();
  }

  private compatible(l: LinkInfo): string | undefined {
    const v = l.vxlan;
    if (l.kind !== 'vxlan' || v === undefined) return `it is a ${l.kind ?? 'plain'} device, not vxlan`;
    if (v.vni !== this.o.plan.vni) return `VNI ${v.vni} != ${this.o.plan.vni}`;
    if (v.port !== this.o.port) return `dstport ${v.port} != ${this.o.port}`;
    if (v.local !== this.o.localIp)
      return `local ${v.local !== undefined ? formatIpv4(v.local) : 'unset'} != ${formatIpv4(this.o.localIp)}`;
    if (v.dev !== undefined && v.dev !== this.o.plan.underlay)
      return `dev ${v.dev} != ${this.o.plan.underlay}`;
    if (v.learning) return 'learning is on';
    if (l.mac !== this.o.mac) return `MAC ${l.mac} != ${this.o.mac}`;
    return undefined;
  }

  /** Makes the device exist with the right settings; true when it was (re)created. */
  private async ensureDevice(): Promise<boolean> {
    const lease = this.lease;
    if (!lease) return false;
    const { kernel, log } = this.o;
    const name = this.device;
    const existing = await kernel.getLink(name);
    const ops: KernelOp[] = [];
    let created = false;
    if (existing) {
      const why = this.compatible(existing);
      if (why !== undefined) {
        log.warn({ device: name, reason: why }, 'existing device has the wrong settings; replacing it');
        this.counters.deviceReplaced++;
        ops.push({ op: 'link-del', name });
      }
      created = why !== undefined;
    } else {
      created = true;
    }
    if (created) {
      ops.push({
        op: 'link-add-vxlan',
        spec: {
          name,
          vni: this.o.plan.vni,
          local: this.o.localIp,
          dev: this.o.plan.underlay,
          port: this.o.port,
          mac: this.o.mac,
          mtu: this.o.mtu,
        },
      });
    }
    const addr = { addr: lease.subnet.addr, prefix: 32 };
    let haveAddr = false;
    if (!created) {
      // Keep exactly one address: our subnet's network address /32.
      for (const a of await kernel.listAddrs(name)) {
        if (a.addr === addr.addr && a.prefix === 32) haveAddr = true;
        else ops.push({ op: 'addr-del', dev: name, addr: a });
      }
    }
    if (!haveAddr) ops.push({ op: 'addr-replace', dev: name, addr });
    if (created || !existing?.up || existing.mtu !== this.o.mtu)
      ops.push({ op: 'link-up', name, mtu: this.o.mtu });
    if (ops.length > 0) await kernel.apply(ops);
    if (created) {
      if (existing === undefined && this.counters.deviceCreated > 0) {
        this.counters.deviceRecreated++;
        log.warn({ device: name }, 'VXLAN device was gone; recreated it and reinstalling all peers');
      }
      this.counters.deviceCreated++;
      log.info(
        { device: name, vni: this.o.plan.vni, mtu: this.o.mtu, mac: this.o.mac },
        'VXLAN device ready',
      );
    }
    return created;
  }

  private async prelude(verify: boolean): Promise<void> {
    if (!verify) return;
    if (await this.ensureDevice()) {
      // A new device has no neighbours, FDB or routes: install every peer again
      // (direct routes on the underlay survived, but replace is idempotent).
      this.rec.forget();
      return;
    }
    await this.verifyPeers();
  }

  /** Forgets installed peers whose kernel state vanished; removes state no peer accounts for. */
  private async verifyPeers(): Promise<void> {
    const { kernel } = this.o;
    const dev = this.device;
    const [routes, neighs, fdb, uRoutes] = await Promise.all([
      kernel.listRoutes(dev),
      kernel.listNeighs(dev),
      kernel.listFdb(dev),
      kernel.listRoutes(this.o.plan.underlay),
    ]);
    for (const [key, p] of this.rec.installedPlans()) {
      const ok = p.direct
        ? uRoutes.some((r) => cidrEquals(r.dst, p.subnet) && r.via === p.publicIp)
        : routes.some((r) => cidrEquals(r.dst, p.subnet) && r.via === p.subnet.addr) &&
          neighs.some((n) => n.addr === p.subnet.addr && n.lladdr === p.mac) &&
          fdb.some((f) => f.mac === p.mac && f.dst === p.publicIp);
      if (!ok) {
        this.o.log.warn({ peer: key }, 'peer state vanished from the kernel; reinstalling');
        this.rec.forget(key);
      }
    }
    if (!this.peersKnown) return;
    const want = [...this.rec.desiredPlans().values()].filter((p) => !p.direct);
    const stale: KernelOp[] = [];
    for (const r of routes) {
      if (!want.some((p) => cidrEquals(p.subnet, r.dst))) stale.push({ op: 'route-del', route: r });
    }
    for (const f of fdb) {
      if (!want.some((p) => p.mac === f.mac && p.publicIp === f.dst)) stale.push({ op: 'fdb-del', fdb: f });
    }
    for (const n of neighs) {
      if (!want.some((p) => p.subnet.addr === n.addr))
        stale.push({ op: 'neigh-del', neigh: { addr: n.addr, dev } });
    }
    if (stale.length > 0) {
      this.o.log.info({ count: stale.length }, 'removing VXLAN state no current peer accounts for');
      this.counters.staleRemoved += stale.length;
      await kernel.apply(stale);
    }
  }
}
