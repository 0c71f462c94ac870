/**
 * The forwarder's busy-poll window: after it has moved traffic, it keeps checking its TUN
 * device and socket for a short while (yielding the CPU between checks) instead of going
 * back to sleep in the event loop at once. A reply that arrives inside the window (a ping's
 * echo reply, a request/response round trip, the next burst of a TCP flow) is handled
 * without a sleep and a wake-up, which on this kind of machine is most of what a userspace
 * hop adds to latency (epoll, the scheduler and, on a VM, a halted vCPU being woken).
 *
 * Only the native devices can be polled together (one poll() on both fds, in C); for the
 * in-memory twins there is no poller and the forwarder runs as before.
 */
import type { PacketConn } from '../conn/conn.ts';
import { NativeConn } from '../conn/native-conn.ts';
import { loadAddon } from '../native/addon.ts';
import { NativeTun } from '../tun/native-tun.ts';
import type { TunDevice } from '../tun/tun.ts';

/** Bits of BusyPoll.wait's result. */
export const BusyPollReady = { tun: 1, conn: 2 } as const;

export interface BusyPoll {
  /**
   * Waits at most `maxUs` microseconds for either device; returns BusyPollReady bits (0 =
   * none). `wait(0)` only reads the clock.
   */
  wait(maxUs: number): number;
  /**
   * Written by every wait: [0] the monotonic time in ms when it returned, [1] the ms it
   * took. A clock that allocates nothing (performance.now() allocates a number per call).
   */
  readonly clock: Float64Array;
}

/** A poller over both devices, or undefined when they are not both native. */
export function busyPollFor(tun: TunDevice, conn: PacketConn): BusyPoll | undefined {
  if (!(tun instanceof NativeTun) || !(conn instanceof NativeConn)) return undefined;
  const addon = loadAddon();
  const clock = new Float64Array(2);
  return {
    clock,
    wait(maxUs: number): number {
      const t = tun.nativeHandle;
      const c = conn.nativeHandle;
      if (t === undefined || c === undefined) return 0;
      return addon.busyPoll(t, c, maxUs, clock);
    },
  };
}
