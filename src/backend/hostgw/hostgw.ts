/**
 * host-gw backend (flannel's): no encapsulation at all. Every peer's subnet is routed via
 * the peer's public IP (`ip route replace <peer subnet> via <peer public ip> dev <underlay>`),
 * which only works when all nodes share one L2 segment. A peer that is not on a directly
 * connected subnet is refused up front (logged once, counted, no route) instead of letting
 * the kernel answer "Nexthop has invalid gateway" on every sync. Pod MTU = underlay MTU.
 *
 * Routes are checked periodically: a route someone deleted is reinstalled, and once the
 * first full peer set is known, routes inside our Network via the underlay that no peer
 * accounts for (left by an earlier run) are removed.
 */
import type { Backend, BackendContext, BackendStats, PreparedBackend } from '../backend.ts';
import type { IfAddr, KernelNet, KernelOp } from '../../kernel/kernel.ts';
import { VerifyTriggers } from '../../kernel/monitor.ts';
import { defaultKernel } from '../../kernel/netlink.ts';
import { PeerReconciler } from '../../kernel/reconciler.ts';
import type { Lease, LeaseEvent } from '../../lease/types.ts';
import type { Ipv4Cidr } from '../../routing/ipv4.ts';
import { cidrContainsCidr, cidrEquals, cidrToKey, formatCidr, tryParseIpv4 } from '../../routing/ipv4.ts';
import { DeviceError } from '../../util/errors.ts';
import { onConnectedSubnet } from '../vxlan/plan.ts';
import { backendMtu } from '../../daemon/netconf.ts';

export interface HostGwPlan {
  readonly key: string;
  readonly subnet: Ipv4Cidr;
  readonly publicIp: number;
}

export interface HostGwDeps {
  readonly kernel?: KernelNet;
  readonly checkIntervalMs?: number;
  readonly retryMs?: number;
}

export type HostGwPlanResult =
  | { readonly plan: HostGwPlan }
  | { readonly refused: string }
  | { readonly ignored: string };

/** Pure: what to do with a peer's lease, given the underlay's addresses. */
export function planHostGwPeer(lease: Lease, connected: readonly IfAddr[]): HostGwPlanResult {
  const a = lease.attrs;
  if (a.backendType !== 'host-gw') return { ignored: `backend type "${a.backendType}" is not host-gw` };
  const publicIp = tryParseIpv4(a.publicIp);
  if (publicIp === undefined) return { ignored: `public IP "${a.publicIp}" is not IPv4` };
  if (!onConnectedSubnet(connected, publicIp)) {
    return {
      refused:
        `peer ${a.publicIp} is not on a directly connected subnet of the underlay, so host-gw cannot ` +
        `route to it; put all nodes on one L2 segment or use the vxlan backend`,
    };
  }
  return { plan: { key: cidrToKey(lease.subnet), subnet: lease.subnet, publicIp } };
}

export function hostGwAddOps(p: HostGwPlan, underlay: string): KernelOp[] {
  return [{ op: 'route-replace', route: { dst: p.subnet, via: p.publicIp, dev: underlay } }];
}

export function hostGwRemoveOps(p: HostGwPlan, underlay: string): KernelOp[] {
  return [{ op: 'route-del', route: { dst: p.subnet, via: p.publicIp, dev: underlay } }];
}

export class HostGwBackend implements Backend {
  readonly type = 'host-gw';
  private readonly ctx: BackendContext;
  private readonly kernel: KernelNet;
  private readonly deps: HostGwDeps;
  private connected: IfAddr[] = [];
  private rec: PeerReconciler<HostGwPlan> | undefined;
  /** The timer and the kernel's notifications that start a verifying pass. */
  private triggers: VerifyTriggers | undefined;
  private peersKnown = false;
  private readonly refused = new Map<string, string>();
  private readonly ignored = new Map<string, string>();
  private refusedEvents = 0;
  private staleRemoved = 0;

  constructor(ctx: BackendContext, deps: HostGwDeps = {}) {
    this.ctx = ctx;
    this.deps = deps;
    this.kernel = deps.kernel ?? defaultKernel();
  }

  prepare(): Promise<PreparedBackend> {
    try {
      // No device and no overhead: Backend.MTU (at most the underlay's) only goes to pods.
      const mtu = backendMtu(this.ctx.network.backend, this.ctx.underlay, 0);
      return Promise.resolve({ backendType: 'host-gw', backendData: null, mtu });
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
  }

  async start(_lease: Lease, signal: AbortSignal): Promise<void> {
    const underlay = this.ctx.underlay.iface;
    this.connected = await this.kernel.listAddrs(underlay);
    if (this.connected.length === 0) {
      throw new DeviceError(
        `host-gw: underlay ${underlay} has no IPv4 address; give it one or pick another --iface`,
      );
    }
    const log = this.ctx.log.child({ component: 'host-gw' });
    this.rec = new PeerReconciler<HostGwPlan>({
      kernel: this.kernel,
      log,
      addOps: (p) => hostGwAddOps(p, underlay),
      removeOps: (p) => hostGwRemoveOps(p, underlay),
      same: (a, b) => a.publicIp === b.publicIp && cidrEquals(a.subnet, b.subnet),
      prelude: (verify) => (verify ? this.verify() : Promise.resolve()),
      retryMs: this.deps.retryMs ?? 1000,
    });
    const every = this.deps.checkIntervalMs ?? 10_000;
    // A route to a peer deleted behind our back is put back at once (kernel notifications),
    // or at the latest at the next timer tick.
    if (every > 0) {
      this.triggers = new VerifyTriggers(this.kernel, every, () => this.rec?.schedule(true), {
        // The underlay's link (routes through it vanish unannounced when it goes down) and
        // every route into the Network.
        interest: { devices: [underlay], routesWithin: [this.ctx.network.network] },
      });
    }
    signal.addEventListener('abort', () => {
      this.triggers?.close();
    });
  }

  applyPeers(events: readonly LeaseEvent[]): void {
    const rec = this.rec;
    if (!rec) return;
    for (const ev of events) {
      const key = cidrToKey(ev.lease.subnet);
      this.refused.delete(key);
      this.ignored.delete(key);
      if (ev.type === 'removed') {
        rec.setDesired(key, undefined);
        continue;
      }
      const r = planHostGwPeer(ev.lease, this.connected);
      if ('plan' in r) {
        rec.setDesired(key, r.plan);
      } else {
        rec.setDesired(key, undefined);
        const peer = formatCidr(ev.lease.subnet);
        if ('refused' in r) {
          this.refusedEvents++;
          this.refused.set(key, r.refused);
          this.ctx.log.warn({ peer, publicIp: ev.lease.attrs.publicIp }, `refusing peer: ${r.refused}`);
        } else {
          this.ignored.set(key, r.ignored);
          this.ctx.log.warn({ peer, reason: r.ignored }, 'ignoring peer');
        }
      }
    }
    const first = !this.peersKnown;
    this.peersKnown = true;
    rec.schedule(first);
  }

  async settled(): Promise<void> {
    await this.rec?.settled();
  }

  /** Asks for a route check now (tests; the timer does this periodically). */
  check(): void {
    this.rec?.schedule(true);
  }

  stats(): BackendStats {
    const c = this.rec?.counters;
    return {
      peers: this.rec?.installedPlans().size ?? 0,
      peersRefused: this.refused.size,
      peerEventsRefused: this.refusedEvents,
      peersIgnored: this.ignored.size,
      routesInstalled: c?.peersInstalled ?? 0,
      routesRemoved: c?.peersRemoved ?? 0,
      kernelFailures: c?.failures ?? 0,
      staleRemoved: this.staleRemoved,
      kernelEventChecks: this.triggers?.eventChecks ?? 0,
      kernelEventsIgnored: this.triggers?.ignoredNotifications ?? 0,
      mtu: this.ctx.underlay.mtu,
    };
  }

  async stop(): Promise<void> {
    this.triggers?.close();
    const rec = this.rec;
    if (!rec) return;
    await rec.stop();
    await rec.removeAll();
  }

  private async verify(): Promise<void> {
    const rec = this.rec;
    if (!rec) return;
    const routes = await this.kernel.listRoutes(this.ctx.underlay.iface);
    for (const [key, p] of rec.installedPlans()) {
      if (!routes.some((r) => cidrEquals(r.dst, p.subnet) && r.via === p.publicIp)) {
        this.ctx.log.warn({ peer: key }, 'route vanished from the kernel; reinstalling');
        rec.forget(key);
      }
    }
    if (!this.peersKnown) return;
    const network = this.ctx.network.network;
    const stale: KernelOp[] = [];
    for (const r of routes) {
      if (r.via === undefined || !cidrContainsCidr(network, r.dst) || cidrEquals(network, r.dst)) continue;
      if (![...rec.desiredPlans().values()].some((p) => cidrEquals(p.subnet, r.dst))) {
        stale.push({ op: 'route-del', route: r });
      }
    }
    if (stale.length > 0) {
      this.staleRemoved += stale.length;
      this.ctx.log.info({ count: stale.length }, 'removing host-gw routes no current peer accounts for');
      await this.kernel.apply(stale);
    }
  }
}

export function createHostGwBackend(ctx: BackendContext, deps?: HostGwDeps): HostGwBackend {
  return new HostGwBackend(ctx, deps);
}
