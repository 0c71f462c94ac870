/**
 * KernelMonitor: tells its owner, soon after the kernel announces it, that links, IPv4
 * addresses or IPv4 routes changed in the daemon's network namespace (rtnetlink multicast
 * groups; src/native addon: netlinkSubscribe / netlinkDrain). The notifications are not
 * decoded: any change is a reason for the owner to check what it cares about, and the
 * owner's check reads the state itself (src/kernel/netlink.ts). A burst of notifications
 * (a device deleted takes its addresses and routes with it) becomes one call after
 * `debounceMs`. Lost notifications (the socket's buffer overran) also count as a change.
 */
import { loadAddon } from '../native/addon.ts';
import type { NativeHandle, WeftIoAddon } from '../native/addon.ts';
import type { KernelNet } from './kernel.ts';
import { NetlinkKernel } from './netlink.ts';

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
  /** Times the kernel said notifications were lost. */
  overruns: number;
  /** Calls to onChange (after debouncing). */
  changes: number;
}

export class KernelMonitor {
  readonly counters: KernelMonitorCounters = { notifications: 0, overruns: 0, changes: 0 };
  private readonly addon: WeftIoAddon;
  private handle: NativeHandle | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly onChange: () => void;
  private readonly debounceMs: number;

  private constructor(addon: WeftIoAddon, onChange: () => void, groups: number, debounceMs: number) {
    this.addon = addon;
    this.onChange = onChange;
    this.debounceMs = debounceMs;
    const h = addon.netlinkSubscribe(groups);
    this.handle = h;
    addon.startReading(h, () => this.readable());
  }

  /**
   * Starts listening; throws when the addon is missing or the socket cannot be opened
   * (callers that can do without fall back to polling).
   */
  static open(onChange: () => void, opts: { groups?: number; debounceMs?: number } = {}): KernelMonitor {
    const groups = opts.groups ?? KernelGroups.link | KernelGroups.ipv4Addr | KernelGroups.ipv4Route;
    return new KernelMonitor(loadAddon(), onChange, groups, opts.debounceMs ?? 20);
  }

  private readable(): void {
    const h = this.handle;
    if (!h) return;
    const n = this.addon.netlinkDrain(h);
    if (n === 0) return;
    if (n < 0) this.counters.overruns++;
    else this.counters.notifications += n;
    if (this.timer) return;
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
function watchesKernelEvents(kernel: KernelNet): boolean {
  return kernel instanceof NetlinkKernel && kernel.netns === undefined;
}

/**
 * A KernelMonitor calling `onChange` when `kernel` reads this process's own namespace over
 * netlink (watchesKernelEvents) and the socket opens; undefined otherwise, and the caller's
 * timer alone keeps checking. `groups`: KernelGroups bits (default links, IPv4 addresses and
 * routes); `debounceMs` also bounds how often onChange runs while notifications keep coming.
 */
export function watchKernel(
  kernel: KernelNet,
  onChange: () => void,
  opts: { groups?: number; debounceMs?: number } = {},
): KernelMonitor | undefined {
  if (!watchesKernelEvents(kernel)) return undefined;
  try {
    return KernelMonitor.open(onChange, opts);
  } catch {
    return undefined;
  }
}

/**
 * What makes a kernel backend (kernel VXLAN, host-gw) verify its per-peer state: `verify`
 * every `everyMs` (unref'd timer) and, through watchKernel, soon after the kernel announces
 * a change in `groups` (debounced to at most ten passes a second); `eventChecks` counts the
 * latter. close() ends both.
 */
export class VerifyTriggers {
  /** Passes started by a kernel notification. */
  eventChecks = 0;
  private readonly timer: NodeJS.Timeout;
  private monitor: KernelMonitor | undefined;

  constructor(kernel: KernelNet, everyMs: number, verify: () => void, groups?: number) {
    this.timer = setInterval(verify, everyMs);
    this.timer.unref();
    this.monitor = watchKernel(
      kernel,
      () => {
        this.eventChecks++;
        verify();
      },
      { ...(groups !== undefined ? { groups } : {}), debounceMs: VERIFY_DEBOUNCE_MS },
    );
  }

  close(): void {
    clearInterval(this.timer);
    this.monitor?.close();
    this.monitor = undefined;
  }
}
