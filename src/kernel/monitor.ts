/**
 * KernelMonitor: tells its owner, soon after the kernel announces it, that something it
 * looks after changed in the daemon's network namespace: links, IPv4 addresses, IPv4 routes
 * or neighbours (rtnetlink multicast groups; src/native addon: netlinkSubscribe /
 * netlinkRecv). The owner says what it looks after (KernelInterest: its devices by name, and
 * the prefixes whose routes matter whatever their device); notifications about anything
 * else (a pod's veth, ARP on the underlay, bridge learning on cni0) are read and dropped, so
 * a busy node does not run its checks for nothing. The notifications only decide whether
 * to look: the owner's check reads the state itself (src/kernel/netlink.ts). A burst (a
 * device deleted takes its addresses and routes with it) becomes one call after
 * `debounceMs`. Lost notifications (the socket's buffer overran) count as a change.
 */
import { loadAddon } from '../native/addon.ts';
import type { NativeHandle, WeftIoAddon } from '../native/addon.ts';
import { cidrContainsCidr } from '../routing/ipv4.ts';
import type { Ipv4Cidr } from '../routing/ipv4.ts';
import type { KernelNet } from './kernel.ts';
import { NetlinkKernel } from './netlink.ts';
import { decodeChange, decodeMessages } from './netlink-codec.ts';
import type { NlMessage } from './netlink-codec.ts';

/** RTMGRP_* bits of the rtnetlink multicast groups weft listens to. */
export const KernelGroups = { link: 0x1, neigh: 0x4, ipv4Addr: 0x10, ipv4Route: 0x40 } as const;

/**
 * Debounce of the kernel backends' verifying passes (a pass reads every route, neighbour and
 * FDB entry of the device): at most ten a second however busy the node's tables are.
 */
const VERIFY_DEBOUNCE_MS = 100;

export interface KernelMonitorCounters {
  /** Notifications read. */
  notifications: number;
  /** Notifications read that were about nothing the owner looks after. */
  ignored: number;
  /** Times the kernel said notifications were lost. */
  overruns: number;
  /** Calls to onChange (after debouncing). */
  changes: number;
}

/** What an owner's check looks at; notifications about anything else start none. */
export interface KernelInterest {
  /**
   * Devices by name: changes of the link itself, its IPv4 addresses and its neighbour / FDB
   * entries, and of routes through it. Followed across deletion and re-creation (a new
   * ifindex under the name) and renames.
   */
  readonly devices: readonly string[];
  /**
   * Route changes with a destination inside one of these, through any device (one of ours
   * replaced by a route elsewhere names only the new device).
   */
  readonly routesWithin?: readonly Ipv4Cidr[];
}

/** The largest notification read whole; a longer one (cut) counts as a change. */
const NOTIFICATION_BUFFER_BYTES = 32 * 1024;

/**
 * Decides, notification by notification, whether it is about a KernelInterest. It knows
 * the devices' ifindexes (asked for once, then kept current from the link notifications it
 * reads; asked again after lost notifications); while it cannot ask, everything counts.
 */
export class InterestFilter {
  private readonly names: ReadonlySet<string>;
  private readonly within: readonly Ipv4Cidr[];
  /** ifindex -> name of the devices of interest that exist. */
  private readonly byIndex = new Map<number, string>();
  private known = false;

  constructor(
    interest: KernelInterest,
    private readonly ifindex: (name: string) => number | undefined,
  ) {
    this.names = new Set(interest.devices);
    this.within = interest.routesWithin ?? [];
    this.relearn();
  }

  /** Asks for the devices' ifindexes again (after lost notifications). */
  relearn(): void {
    this.byIndex.clear();
    try {
      for (const name of this.names) {
        const index = this.ifindex(name);
        if (index !== undefined) this.byIndex.set(index, name);
      }
      this.known = true;
    } catch {
      this.known = false;
    }
  }

  relevant(msg: NlMessage): boolean {
    const c = decodeChange(msg);
    if (!c) return true; // cannot tell: look
    if (c.kind === 'link') return this.link(c.index, c.name, c.deleted) || !this.known;
    if (!this.known) {
      this.relearn();
      if (!this.known) return true;
    }
    if (this.byIndex.has(c.index)) return true;
    if (c.kind !== 'route') return false;
    const dst = { addr: c.dst, prefix: c.prefix };
    return this.within.some((net) => cidrContainsCidr(net, dst));
  }

  private link(index: number, name: string | undefined, deleted: boolean): boolean {
    const ours = name !== undefined && this.names.has(name);
    const tracked = this.byIndex.has(index);
    if (deleted) this.byIndex.delete(index);
    else if (ours) {
      for (const [i, n] of this.byIndex) if (n === name && i !== index) this.byIndex.delete(i);
      this.byIndex.set(index, name);
    } else if (tracked) this.byIndex.delete(index); // renamed away
    return ours || tracked;
  }
}

export class KernelMonitor {
  readonly counters: KernelMonitorCounters = { notifications: 0, ignored: 0, overruns: 0, changes: 0 };
  private readonly addon: WeftIoAddon;
  private handle: NativeHandle | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly onChange: () => void;
  private readonly debounceMs: number;
  private readonly filter: InterestFilter | undefined;
  private readonly buf = Buffer.allocUnsafe(NOTIFICATION_BUFFER_BYTES);

  private constructor(
    addon: WeftIoAddon,
    onChange: () => void,
    groups: number,
    debounceMs: number,
    filter: (() => InterestFilter) | undefined,
  ) {
    this.addon = addon;
    this.onChange = onChange;
    this.debounceMs = debounceMs;
    const h = addon.netlinkSubscribe(groups);
    this.handle = h;
    // Subscribed first, then the ifindexes learnt: a device created in between is in a
    // notification still waiting on the socket.
    this.filter = filter?.();
    addon.startReading(h, () => this.readable());
  }

  /**
   * Starts listening; throws when the addon is missing or the socket cannot be opened
   * (callers that can do without fall back to polling). Without `interest`, every
   * notification counts; with it, `ifindex` tells the devices' current ifindexes.
   */
  static open(
    onChange: () => void,
    opts: {
      groups?: number;
      debounceMs?: number;
      interest?: KernelInterest;
      ifindex?: (name: string) => number | undefined;
    } = {},
  ): KernelMonitor {
    const groups = opts.groups ?? KernelGroups.link | KernelGroups.ipv4Addr | KernelGroups.ipv4Route;
    const { interest, ifindex } = opts;
    const filter = interest && ifindex ? () => new InterestFilter(interest, ifindex) : undefined;
    return new KernelMonitor(loadAddon(), onChange, groups, opts.debounceMs ?? 20, filter);
  }

  private readable(): void {
    const h = this.handle;
    if (!h) return;
    let change = false;
    for (;;) {
      const n = this.addon.netlinkRecv(h, this.buf);
      if (n === 0) break;
      if (n < 0) {
        this.counters.overruns++;
        this.filter?.relearn();
        change = true;
        continue;
      }
      if (n > this.buf.length) {
        this.counters.notifications++;
        change = true;
        continue;
      }
      for (const m of decodeMessages(this.buf.subarray(0, n))) {
        this.counters.notifications++;
        if (!this.filter || this.filter.relevant(m)) change = true;
        else this.counters.ignored++;
      }
    }
    if (!change || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.handle) return;
      this.counters.changes++;
      this.onChange();
    }, this.debounceMs);
  }

  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const h = this.handle;
    this.handle = undefined;
    if (h) this.addon.close(h);
  }
}

/**
 * True when checks through `kernel` should also run on kernel notifications: it reads the
 * namespace this process is in over netlink (the daemon's default kernel). Twins and
 * kernels aimed at another namespace are checked on their timer only.
 */
function watchesKernelEvents(kernel: KernelNet): kernel is NetlinkKernel {
  return kernel instanceof NetlinkKernel && kernel.netns === undefined;
}

/**
 * A KernelMonitor calling `onChange` when something in `interest` changes, if `kernel` reads
 * this process's own namespace over netlink (watchesKernelEvents) and the socket opens;
 * undefined otherwise, and the caller's timer alone keeps checking. `groups`: KernelGroups
 * bits (default links, IPv4 addresses and routes); `debounceMs` also bounds how often
 * onChange runs while notifications keep coming.
 */
export function watchKernel(
  kernel: KernelNet,
  interest: KernelInterest,
  onChange: () => void,
  opts: { groups?: number; debounceMs?: number } = {},
): KernelMonitor | undefined {
  if (!watchesKernelEvents(kernel)) return undefined;
  try {
    return KernelMonitor.open(onChange, { ...opts, interest, ifindex: (name) => kernel.ifindex(name) });
  } catch {
    return undefined;
  }
}

/**
 * What makes a kernel backend (kernel VXLAN, host-gw) verify its per-peer state: `verify`
 * every `everyMs` (unref'd timer) and, through watchKernel, soon after the kernel announces
 * a change of something in `interest` in `groups` (debounced to at most ten passes a
 * second); `eventChecks` counts the latter. close() ends both.
 */
export class VerifyTriggers {
  /** Passes started by a kernel notification. */
  eventChecks = 0;
  private readonly timer: NodeJS.Timeout;
  private monitor: KernelMonitor | undefined;

  constructor(
    kernel: KernelNet,
    everyMs: number,
    verify: () => void,
    watch: { readonly interest: KernelInterest; readonly groups?: number },
  ) {
    this.timer = setInterval(verify, everyMs);
    this.timer.unref();
    this.monitor = watchKernel(
      kernel,
      watch.interest,
      () => {
        this.eventChecks++;
        verify();
      },
      { ...(watch.groups !== undefined ? { groups: watch.groups } : {}), debounceMs: VERIFY_DEBOUNCE_MS },
    );
  }

  /** Notifications read and dropped as about nothing the backend looks after. */
  get ignoredNotifications(): number {
    return this.monitor?.counters.ignored ?? 0;
  }

  close(): void {
    clearInterval(this.timer);
    this.monitor?.close();
    this.monitor = undefined;
  }
}
