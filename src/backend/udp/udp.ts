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
 * flannel publishes no BackendData for udp: our lease carries null.
 */
import type { Backend, BackendContext, BackendStats, DataplaneInfo, PreparedBackend } from '../backend.ts';
import type { ConnOptions, PacketConn } from '../../conn/conn.ts';
import { Forwarder } from '../../dataplane/forwarder.ts';
import type { Peer } from '../../dataplane/peer.ts';
import { PeerIdAllocator } from '../../dataplane/peer.ts';
import { UdpEncap } from '../../encap/encap.ts';
import { IpRouteKernel } from '../../kernel/iproute.ts';
import type { KernelNet, KernelOp } from '../../kernel/kernel.ts';
import type { Lease, LeaseEvent } from '../../lease/types.ts';
import { cidrToKey, formatCidr, formatIpv4, tryParseIpv4 } from '../../routing/ipv4.ts';
import type { TunDevice } from '../../tun/tun.ts';
import { ConfigError, DeviceError } from '../../util/errors.ts';
import type { Logger } from '../../util/log.ts';

export const UDP_BACKEND_TYPE = 'udp';
/** Outer IPv4 (20) + UDP (8) headers. */
export const UDP_OVERHEAD = 28;
export const DEFAULT_UDP_PORT = 8285;
export const DEFAULT_TUN_NAME = 'weft0';

export interface UdpDeps {
  /** Default: IpRouteKernel in the current network namespace. */
  readonly kernel?: KernelNet;
  /** Default: the native TUN (src/tun/native-tun.ts), loaded on first use. */
  readonly openTun?: (opts: {
    name: string;
    mtu: number;
    offloads: boolean;
  }) => TunDevice | Promise<TunDevice>;
  /** Default: the native socket (src/conn/native-conn.ts), loaded on first use. */
  readonly openConn?: (opts: ConnOptions) => PacketConn | Promise<PacketConn>;
  /** TUN device name (default weft0, weftd --tun-name). */
  readonly tunName?: string;
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
  private fwd: Forwarder | undefined;
  private readonly ids = new PeerIdAllocator();
  /** Peers by lease key: what the forwarder holds (or will hold once started). */
  private readonly peers = new Map<string, Peer>();
  private ignored = 0;
  private readonly ignoredKeys = new Set<string>();

  constructor(ctx: BackendContext, deps: UdpDeps = {}) {
    this.ctx = ctx;
    this.deps = deps;
    this.tunName = deps.tunName ?? DEFAULT_TUN_NAME;
    this.kernel = deps.kernel ?? new IpRouteKernel();
    this.log = ctx.log.child({ component: 'backend-udp' });
    this.port = udpPort(ctx);
  }

  prepare(): Promise<PreparedBackend> {
    const mtu = this.ctx.underlay.mtu - UDP_OVERHEAD;
    if (mtu < 576) {
      throw new ConfigError(
        'iface',
        `underlay ${this.ctx.underlay.iface} has MTU ${this.ctx.underlay.mtu}; the udp backend needs at least ${576 + UDP_OVERHEAD}`,
      );
    }
    this.mtu = mtu;
    return Promise.resolve({ backendType: UDP_BACKEND_TYPE, backendData: null, mtu });
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
    const tun = await openTun({ name, mtu, offloads: this.ctx.offloads });
    this.tun = tun;
    try {
      const ops: KernelOp[] = [];
      // A restarted daemon may find the device with an old lease's address: replace it.
      for (const a of await this.kernel.listAddrs(name)) {
        if (a.addr !== lease.subnet.addr || a.prefix !== 32) ops.push({ op: 'addr-del', dev: name, addr: a });
      }
      ops.push(
        { op: 'addr-replace', dev: name, addr: { addr: lease.subnet.addr, prefix: 32 } },
        { op: 'link-up', name, mtu },
        { op: 'route-replace', route: { dst: this.ctx.network.network, dev: name } },
      );
      await this.kernel.apply(ops);
      signal.throwIfAborted();
      this.conn = await openConn({
        bindAddr: this.ctx.underlay.addr,
        port: this.port,
        offloads: this.ctx.offloads,
      });
      this.fwd = new Forwarder({
        tun,
        conn: this.conn,
        encap: new UdpEncap(),
        local: { subnet: lease.subnet, tunAddr: lease.subnet.addr },
        port: this.port,
      });
      this.fwd.setPeers(this.peers.values());
      this.fwd.start();
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
          this.fwd?.removePeer(p);
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
      if (old) this.fwd?.removePeer(old);
      const peer: Peer = {
        id: this.ids.acquire(key),
        subnet: e.lease.subnet,
        publicIp,
        port: 0,
        leaseKey: key,
      };
      this.peers.set(key, peer);
      this.fwd?.addPeer(peer);
    }
  }

  /** The forwarder (tests, status). */
  get forwarder(): Forwarder | undefined {
    return this.fwd;
  }

  dataplaneInfo(): DataplaneInfo {
    const t = this.tun?.offloads;
    const c = this.conn?.offloads;
    return {
      dataplane: 'userspace',
      forwarder: this.fwd?.snapshot(),
      offloads: {
        tunVnetHdr: t?.vnetHdr ?? false,
        tunTso: t?.tso ?? false,
        tunUso: t?.uso ?? false,
        tunGro: t?.gro ?? false,
        udpGso: c?.gso ?? false,
        udpGro: c?.gro ?? false,
      },
    };
  }

  stats(): BackendStats {
    const out: Record<string, number | Record<string, number>> = {
      peers: this.peers.size,
      ignoredPeerEvents: this.ignored,
      mtu: this.mtu,
      port: this.port,
    };
    const fwd = this.fwd;
    if (fwd) {
      const s = fwd.snapshot();
      out.running = s.running ? 1 : 0;
      out.routes = s.routes;
      out.counters = { ...s.counters };
      out.drops = { ...s.drops };
      const tunOff = this.tun?.offloads;
      const connOff = this.conn?.offloads;
      out.offloads = {
        tunVnetHdr: tunOff?.vnetHdr ? 1 : 0,
        tunTso: tunOff?.tso ? 1 : 0,
        tunUso: tunOff?.uso ? 1 : 0,
        connGso: connOff?.gso ? 1 : 0,
        connGro: connOff?.gro ? 1 : 0,
      };
    } else out.running = 0;
    return out;
  }

  private async teardown(): Promise<void> {
    this.fwd?.stop();
    this.fwd = undefined;
    this.conn?.close();
    this.conn = undefined;
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

  async stop(): Promise<void> {
    await this.teardown();
    this.log.info({ device: this.tunName }, 'udp data path stopped');
  }
}

export function createUdpBackend(ctx: BackendContext, deps: UdpDeps = {}): UdpBackend {
  return new UdpBackend(ctx, deps);
}
