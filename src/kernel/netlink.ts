/**
 * NetlinkKernel: KernelNet that reads the kernel's state over rtnetlink (links, IPv4
 * addresses, routes, neighbours, VXLAN FDB) and leaves every change to iproute2
 * (IpRouteKernel: one batch process per run of operations, commands an operator can read).
 *
 * Why: a backend checks its device every few seconds (link, address, routes; for kernel
 * VXLAN also neighbours and FDB). Through iproute2 each read started an `ip` process, so an
 * idle node forked several times every check; a netlink dump is one socket round trip in
 * the daemon's own process. Reads answer exactly what IpRouteKernel's `ip -json` reads
 * answer (one contract suite runs against both, test/kernel/kernel-contract.test.ts).
 *
 * Requests are built and answers decoded in TypeScript (src/kernel/netlink-codec.ts); the
 * addon only moves the bytes (netlinkRequest in native/weft_io.c). Without the addon,
 * defaultKernel() falls back to IpRouteKernel for everything.
 */
import { constants } from 'node:os';
import { loadAddon } from '../native/addon.ts';
import { KernelError } from '../util/errors.ts';
import { IpRouteKernel } from './iproute.ts';
import type { FdbSpec, IfAddr, KernelNet, KernelOp, LinkInfo, NeighSpec, RouteSpec } from './kernel.ts';
import {
  AF_BRIDGE,
  AF_INET,
  decodeAddr,
  decodeLink,
  decodeMessages,
  decodeNeigh,
  decodeRoute,
  dumpRequest,
  errorOf,
  getLinkRequest,
  NLM_F_DUMP_INTR,
  NLMSG_DONE,
  NLMSG_ERROR,
  NUD_NOARP,
  RT_TABLE_MAIN,
} from './netlink-codec.ts';
import type { NlMessage, RawLink, RawNeigh } from './netlink-codec.ts';

/** Sends one request and returns the kernel's answer bytes (through DONE or ERROR). */
export type NetlinkTransport = (request: Buffer) => Buffer;

export interface NetlinkKernelOptions {
  /** Network namespace to read in (name under /run/netns); default: the current one. */
  readonly netns?: string;
  /** Where changes go; default IpRouteKernel in the same namespace. */
  readonly writer?: KernelNet;
  /** Test seam; default: the addon's netlinkRequest. */
  readonly transport?: NetlinkTransport;
}

const ENODEV = constants.errno.ENODEV;
/** Tries of a dump the kernel reports interrupted by a change (NLM_F_DUMP_INTR). */
const DUMP_ATTEMPTS = 3;
const ERRNO_NAMES = new Map(Object.entries(constants.errno).map(([k, v]) => [v, k]));

/** The kernel's answer to a request was an error (errno positive). */
class NetlinkErrno extends KernelError {
  readonly errno: number;
  constructor(what: string, errno: number) {
    super(`netlink ${what}: ${ERRNO_NAMES.get(errno) ?? `errno ${errno}`}`);
    this.errno = errno;
  }
}

export class NetlinkKernel implements KernelNet {
  readonly netns: string | undefined;
  private readonly writer: KernelNet;
  private readonly transport: NetlinkTransport;
  private seq = 0;

  constructor(opts: NetlinkKernelOptions = {}) {
    this.netns = opts.netns;
    this.writer = opts.writer ?? new IpRouteKernel(opts.netns !== undefined ? { netns: opts.netns } : {});
    if (opts.transport) this.transport = opts.transport;
    else {
      const addon = loadAddon();
      const path = opts.netns !== undefined ? `/run/netns/${opts.netns}` : undefined;
      this.transport = (req) => addon.netlinkRequest(req, path);
    }
  }

  private nextSeq(): number {
    this.seq = (this.seq + 1) >>> 0 || 1;
    return this.seq;
  }

  /**
   * The answer's messages for this request; an NLMSG_ERROR with an errno throws. A dump the
   * kernel marks interrupted (the table changed while it was being read) is asked again.
   */
  private ask(what: string, build: (seq: number) => Buffer): NlMessage[] {
    for (let attempt = 1; ; attempt++) {
      const seq = this.nextSeq();
      let raw: Buffer;
      try {
        raw = this.transport(build(seq));
      } catch (err) {
        throw new KernelError(`netlink ${what}: ${(err as Error).message}`, { cause: err });
      }
      const out: NlMessage[] = [];
      let interrupted = false;
      for (const m of decodeMessages(raw)) {
        if (m.seq !== seq) continue;
        if ((m.flags & NLM_F_DUMP_INTR) !== 0) interrupted = true;
        if (m.type === NLMSG_ERROR) {
          const e = errorOf(m);
          if (e !== 0) throw new NetlinkErrno(what, e);
          continue;
        }
        if (m.type !== NLMSG_DONE) out.push(m);
      }
      if (!interrupted) return out;
      if (attempt >= DUMP_ATTEMPTS) {
        throw new KernelError(`netlink ${what}: the table kept changing during ${DUMP_ATTEMPTS} dumps`);
      }
    }
  }

  private rawLink(by: { name: string } | { index: number }): RawLink | undefined {
    const what = 'name' in by ? `link ${by.name}` : `link #${by.index}`;
    try {
      for (const m of this.ask(what, (seq) => getLinkRequest(seq, by))) {
        const l = decodeLink(m);
        if (l) return l;
      }
      return undefined;
    } catch (err) {
      if (err instanceof NetlinkErrno && err.errno === ENODEV) return undefined;
      throw err;
    }
  }

  private rawLinks(): RawLink[] {
    const out: RawLink[] = [];
    for (const m of this.ask('link dump', (seq) => dumpRequest(seq, 'link'))) {
      const l = decodeLink(m);
      if (l) out.push(l);
    }
    return out;
  }

  /**
   * The ifindex of the device named `name`, undefined when there is none; synchronous (one
   * netlink round trip), for a notification filter that must know it before it reads on.
   */
  ifindex(name: string): number | undefined {
    return this.rawLink({ name })?.index;
  }

  /** The ifindex of `dev`; throws like `ip ... dev <missing>` does. */
  private indexOf(dev: string): number {
    const l = this.rawLink({ name: dev });
    if (!l) throw new KernelError(`Cannot find device "${dev}"`);
    return l.index;
  }

  private toLinkInfo(l: RawLink, nameOf: (index: number) => string | undefined): LinkInfo {
    let vxlan: LinkInfo['vxlan'];
    if (l.vxlan) {
      const dev = l.vxlan.linkIndex > 0 ? nameOf(l.vxlan.linkIndex) : undefined;
      vxlan = {
        vni: l.vxlan.vni,
        ...(l.vxlan.local !== undefined ? { local: l.vxlan.local } : {}),
        ...(dev !== undefined ? { dev } : {}),
        port: l.vxlan.port,
        learning: l.vxlan.learning,
      };
    }
    return {
      name: l.name,
      index: l.index,
      mtu: l.mtu,
      up: l.up,
      mac: l.mac ?? '',
      ...(l.txqueuelen !== undefined ? { txqueuelen: l.txqueuelen } : {}),
      ...(l.kind !== undefined ? { kind: l.kind } : {}),
      ...(vxlan ? { vxlan } : {}),
    };
  }

  vxlanAvailable(): Promise<boolean> {
    return this.writer.vxlanAvailable();
  }

  getLink(name: string): Promise<LinkInfo | undefined> {
    return this.read(() => {
      const l = this.rawLink({ name });
      if (!l) return undefined;
      return this.toLinkInfo(l, (index) => this.rawLink({ index })?.name);
    });
  }

  listLinks(): Promise<LinkInfo[]> {
    return this.read(() => {
      const links = this.rawLinks();
      const names = new Map(links.map((l) => [l.index, l.name]));
      return links.map((l) => this.toLinkInfo(l, (i) => names.get(i)));
    });
  }

  listAddrs(dev: string): Promise<IfAddr[]> {
    return this.read(() => {
      const index = this.indexOf(dev);
      const out: IfAddr[] = [];
      for (const m of this.ask('address dump', (seq) => dumpRequest(seq, 'addr'))) {
        const a = decodeAddr(m);
        if (a && a.index === index) out.push({ addr: a.addr, prefix: a.prefix });
      }
      return out;
    });
  }

  listRoutes(dev?: string): Promise<RouteSpec[]> {
    return this.read(() => {
      const only = dev !== undefined ? this.indexOf(dev) : undefined;
      const msgs = this.ask('route dump', (seq) => dumpRequest(seq, 'route'));
      const names = only === undefined ? new Map(this.rawLinks().map((l) => [l.index, l.name])) : undefined;
      const out: RouteSpec[] = [];
      for (const m of msgs) {
        const r = decodeRoute(m);
        if (!r || r.table !== RT_TABLE_MAIN) continue;
        if (only !== undefined && (r.oif !== only || r.multipath)) continue;
        const rdev = only !== undefined ? dev : r.oif > 0 ? names?.get(r.oif) : undefined;
        out.push({
          dst: { addr: r.dst, prefix: r.prefix },
          ...(r.via !== undefined ? { via: r.via } : {}),
          ...(rdev !== undefined ? { dev: rdev } : {}),
          ...(r.onlink ? { onlink: true } : {}),
        });
      }
      return out;
    });
  }

  listNeighs(dev: string): Promise<NeighSpec[]> {
    return this.read(() => {
      const out: NeighSpec[] = [];
      for (const n of this.neighbours('neigh', dev)) {
        // As `ip neigh show`: entries in state NONE or NOARP are not listed.
        if (n.state === 0 || (n.state & NUD_NOARP) !== 0) continue;
        if (n.dst !== undefined && n.lladdr !== undefined) out.push({ addr: n.dst, lladdr: n.lladdr, dev });
      }
      return out;
    });
  }

  listFdb(dev: string): Promise<FdbSpec[]> {
    return this.read(() => {
      const out: FdbSpec[] = [];
      for (const n of this.neighbours('fdb', dev)) {
        if (n.dst === undefined || n.lladdr === undefined || n.lladdr === '00:00:00:00:00:00') continue;
        out.push({ mac: n.lladdr, dev, dst: n.dst });
      }
      return out;
    });
  }

  /** `dev`'s entries of the IPv4 neighbour table or of the bridge/VXLAN FDB. */
  private neighbours(what: 'neigh' | 'fdb', dev: string): RawNeigh[] {
    const index = this.indexOf(dev);
    const family = what === 'neigh' ? AF_INET : AF_BRIDGE;
    const out: RawNeigh[] = [];
    for (const m of this.ask(`${what} dump`, (seq) => dumpRequest(seq, what))) {
      const n = decodeNeigh(m);
      if (n && n.family === family && n.index === index) out.push(n);
    }
    return out;
  }

  apply(ops: readonly KernelOp[]): Promise<void> {
    return this.writer.apply(ops);
  }

  /** Runs a synchronous read as a promise (errors become rejections, as the interface has them). */
  private read<T>(fn: () => T): Promise<T> {
    try {
      return Promise.resolve(fn());
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new KernelError(String(err)));
    }
  }
}

/**
 * The KernelNet a daemon uses: netlink reads when the native addon loads, iproute2 for
 * everything otherwise (the kernel backends work without the addon).
 */
export function defaultKernel(): KernelNet {
  try {
    return new NetlinkKernel();
  } catch {
    return new IpRouteKernel();
  }
}
