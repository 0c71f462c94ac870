/**
 * The vxlan backend: flannel's VXLAN overlay, wire-compatible with it and with the Linux
 * vxlan driver, with two data planes to choose from (Backend.Dataplane):
 *   - kernel:    a Linux VXLAN device programmed per peer (kernel-plane.ts), as flannel;
 *   - userspace: weft's forwarder over a TUN device with the vxlan Encap (userspace-plane.ts),
 *                for hosts without the vxlan module;
 *   - auto:      kernel when the vxlan module is available, else userspace.
 * Either way the lease carries flannel's BackendData {"VNI":n,"VtepMAC":"..."} with a VTEP
 * MAC kept across restarts in the state dir, and pods get MTU underlay - 50.
 */
import type { Backend, BackendContext, BackendStats, DataplaneInfo, PreparedBackend } from '../backend.ts';
import type { KernelNet } from '../../kernel/kernel.ts';
import { defaultKernel } from '../../kernel/netlink.ts';
import type { Lease, LeaseEvent } from '../../lease/types.ts';
import { cidrToKey, formatCidr } from '../../routing/ipv4.ts';
import { DeviceError } from '../../util/errors.ts';
import type { VxlanDataplane } from './dataplane.ts';
import { KernelVxlanPlane } from './kernel-plane.ts';
import type { VxlanOptions } from './options.ts';
import { parseVxlanOptions, VXLAN_OVERHEAD } from './options.ts';
import type { VxlanLeaseData, VxlanPlanContext } from './plan.ts';
import { planVxlanPeer } from './plan.ts';
import { loadOrCreateVtepMac } from './vtep-mac.ts';
import { backendMtu } from '../../daemon/netconf.ts';

/** What a userspace plane factory receives. */
export interface UserspacePlaneParams {
  readonly ctx: BackendContext;
  readonly options: VxlanOptions;
  readonly plan: VxlanPlanContext;
  readonly mac: string;
  readonly mtu: number;
  readonly kernel: KernelNet;
}

export type UserspacePlaneFactory = (p: UserspacePlaneParams) => Promise<VxlanDataplane>;

export interface VxlanDeps {
  /** Default: defaultKernel() (netlink reads, iproute2 writes) in the current network namespace. */
  readonly kernel?: KernelNet;
  /** Default: the TUN + forwarder plane (userspace-plane.ts), loaded on demand. */
  readonly userspacePlane?: UserspacePlaneFactory;
  /** Kernel plane: device/peer check interval (ms). */
  readonly checkIntervalMs?: number;
  readonly retryMs?: number;
}

export function vxlanDeviceName(vni: number): string {
  return `weft.${vni}`;
}

const defaultUserspace: UserspacePlaneFactory = async (p) => {
  const mod = await import('./userspace-plane.ts');
  return mod.createUserspacePlane(p);
};

export class VxlanBackend implements Backend {
  readonly type = 'vxlan';
  private readonly ctx: BackendContext;
  private readonly kernel: KernelNet;
  private readonly deps: VxlanDeps;
  private options: VxlanOptions | undefined;
  private mac: string | undefined;
  private mtu = 0;
  /** The data plane in use, decided by prepare(). */
  dataplane: 'kernel' | 'userspace' | undefined;
  private plane: VxlanDataplane | undefined;
  private planCtx: VxlanPlanContext | undefined;
  private readonly ignored = new Map<string, string>();
  private ignoredEvents = 0;

  constructor(ctx: BackendContext, deps: VxlanDeps = {}) {
    this.ctx = ctx;
    this.deps = deps;
    this.kernel = deps.kernel ?? defaultKernel();
  }

  /** The VTEP MAC published in our lease (after prepare()). */
  get vtepMac(): string | undefined {
    return this.mac;
  }

  async prepare(): Promise<PreparedBackend> {
    const opts = parseVxlanOptions(this.ctx.network.backend);
    this.options = opts;
    this.mac = loadOrCreateVtepMac(this.ctx.stateDir);
    // Backend.MTU, or underlay - 50; checked to fit the underlay (src/daemon/netconf.ts).
    this.mtu = backendMtu(this.ctx.network.backend, this.ctx.underlay, VXLAN_OVERHEAD);
    if (opts.dataplane === 'auto') {
      const available = await this.kernel.vxlanAvailable();
      this.dataplane = available ? 'kernel' : 'userspace';
      this.ctx.log.info(
        { dataplane: this.dataplane, vxlanModule: available },
        `vxlan data plane: ${this.dataplane} (auto: the vxlan kernel module is ${available ? '' : 'not '}available)`,
      );
    } else {
      this.dataplane = opts.dataplane;
      this.ctx.log.info({ dataplane: this.dataplane }, `vxlan data plane: ${this.dataplane} (configured)`);
    }
    // Linux's vxlan takes a whole tunnel-GSO datagram as it takes its own; the userspace
    // plane does with offloads (one GSO write to its TUN).
    const whole = this.dataplane === 'kernel' || this.ctx.offloads;
    const data: VxlanLeaseData = { VNI: opts.vni, VtepMAC: this.mac, ...(whole ? { TunnelGSO: true } : {}) };
    return { backendType: 'vxlan', backendData: data, mtu: this.mtu };
  }

  async start(lease: Lease, signal: AbortSignal): Promise<void> {
    const opts = this.options;
    const mac = this.mac;
    if (!opts || !mac || !this.dataplane)
      throw new DeviceError('vxlan backend: start() called before prepare()');
    const connected = await this.kernel.listAddrs(this.ctx.underlay.iface);
    const plan: VxlanPlanContext = {
      dev: vxlanDeviceName(opts.vni),
      underlay: this.ctx.underlay.iface,
      vni: opts.vni,
      directRouting: opts.directRouting,
      connected,
    };
    this.planCtx = plan;
    if (this.dataplane === 'kernel') {
      this.plane = new KernelVxlanPlane({
        kernel: this.kernel,
        log: this.ctx.log.child({ component: 'vxlan-kernel' }),
        plan,
        port: opts.port,
        localIp: this.ctx.underlay.addr,
        network: this.ctx.network.network,
        mac,
        mtu: this.mtu,
        ...(this.deps.checkIntervalMs !== undefined ? { checkIntervalMs: this.deps.checkIntervalMs } : {}),
        ...(this.deps.retryMs !== undefined ? { retryMs: this.deps.retryMs } : {}),
      });
    } else {
      const factory = this.deps.userspacePlane ?? defaultUserspace;
      this.plane = await factory({
        ctx: this.ctx,
        options: opts,
        plan,
        mac,
        mtu: this.mtu,
        kernel: this.kernel,
      });
    }
    await this.plane.start(lease, signal);
  }

  applyPeers(events: readonly LeaseEvent[]): void {
    const plane = this.plane;
    const planCtx = this.planCtx;
    if (!plane || !planCtx) return;
    for (const ev of events) {
      const key = cidrToKey(ev.lease.subnet);
      if (ev.type === 'removed') {
        this.ignored.delete(key);
        plane.setPeer(key, undefined);
        continue;
      }
      const r = planVxlanPeer(ev.lease, planCtx);
      if ('ignored' in r) {
        this.ignoredEvents++;
        if (this.ignored.get(key) !== r.ignored) {
          this.ctx.log.warn({ peer: formatCidr(ev.lease.subnet), reason: r.ignored }, 'ignoring peer');
        }
        this.ignored.set(key, r.ignored);
        plane.setPeer(key, undefined);
      } else {
        this.ignored.delete(key);
        plane.setPeer(key, r.plan);
      }
    }
    plane.commit();
  }

  /** Resolves when all peer changes so far have reached the data plane (tests). */
  async settled(): Promise<void> {
    await this.plane?.settled();
  }

  /** Asks the data plane to check its device and peers now (tests; also periodic). */
  check(): void {
    this.plane?.check?.();
  }

  /** The running data plane (tests, status). */
  get activePlane(): VxlanDataplane | undefined {
    return this.plane;
  }

  dataplaneInfo(): DataplaneInfo {
    return this.plane?.dataplaneInfo?.() ?? { dataplane: this.dataplane ?? 'kernel', offloads: {} };
  }

  stats(): BackendStats {
    return {
      dataplane: {
        kernel: this.dataplane === 'kernel' ? 1 : 0,
        userspace: this.dataplane === 'userspace' ? 1 : 0,
      },
      peersIgnored: this.ignored.size,
      peerEventsIgnored: this.ignoredEvents,
      mtu: this.mtu,
      ...(this.plane?.stats() ?? {}),
    };
  }

  async stop(): Promise<void> {
    const plane = this.plane;
    this.plane = undefined;
    if (plane) await plane.stop();
  }
}

export function createVxlanBackend(ctx: BackendContext, deps?: VxlanDeps): VxlanBackend {
  return new VxlanBackend(ctx, deps);
}
