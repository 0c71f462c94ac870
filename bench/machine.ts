/**
 * What the machine charges a userspace forwarder for crossing into the kernel, printed at
 * the top of every bench run. Why: the same build measured 0.75-0.80x of kernel VXLAN on
 * one machine of "this kind" and 0.57x on another whose kernel runs with page-table
 * isolation and no PCID (every system call and context switch flushes the TLB; a system
 * call from Node took ~1.7 µs there). Kernel VXLAN makes almost no system calls per packet,
 * a TUN + socket forwarder a few per 64 KiB, so the ratio moves with this cost; a table
 * without it cannot be compared with another machine's (docs/performance.md).
 */
import { readFileSync } from 'node:fs';

export interface MachineCosts {
  /** One system call from Node (process.getuid in a loop), in µs: entry, exit, TLB refill. */
  readonly systemCallUs: number;
  /** Kernel page-table isolation (Meltdown mitigation): on, off, or unknown. */
  readonly pageTableIsolation: 'on' | 'off' | 'unknown';
  /** The CPU has PCID (PTI then keeps TLB entries across the switch); undefined if unknown. */
  readonly pcid: boolean | undefined;
}

/** PTI from the text of /sys/devices/system/cpu/vulnerabilities/meltdown. */
export function ptiFromMeltdown(text: string | undefined): MachineCosts['pageTableIsolation'] {
  if (text === undefined) return 'unknown';
  if (/\bPTI\b/.test(text)) return 'on';
  if (/not affected|vulnerable/i.test(text)) return 'off';
  return 'unknown';
}

/** Whether the first "flags" line of /proc/cpuinfo lists pcid (undefined without one). */
export function pcidFromCpuinfo(text: string | undefined): boolean | undefined {
  const line = text?.split('\n').find((l) => l.startsWith('flags'));
  if (line === undefined) return undefined;
  return line.split(/\s+/).includes('pcid');
}

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** Measures a system call's cost (best of 5 rounds of 20,000) and reads the PTI facts. */
export function machineCosts(): MachineCosts {
  const getuid = process.getuid?.bind(process);
  let best = Number.POSITIVE_INFINITY;
  if (getuid) {
    for (let round = 0; round < 5; round++) {
      const n = 20_000;
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < n; i++) getuid();
      best = Math.min(best, Number(process.hrtime.bigint() - t0) / n / 1000);
    }
  }
  return {
    systemCallUs: Number.isFinite(best) ? best : NaN,
    pageTableIsolation: ptiFromMeltdown(read('/sys/devices/system/cpu/vulnerabilities/meltdown')),
    pcid: pcidFromCpuinfo(read('/proc/cpuinfo')),
  };
}

/** One line for the bench's header. */
export function describeCosts(c: MachineCosts): string {
  const pti =
    c.pageTableIsolation === 'on'
      ? `page-table isolation on${c.pcid === false ? ' and no PCID, so each crossing flushes the TLB' : ''}`
      : c.pageTableIsolation === 'off'
        ? 'no page-table isolation'
        : 'page-table isolation unknown';
  return `a system call from Node costs ${c.systemCallUs.toFixed(2)} µs here (${pti}); userspace rows pay a few per 64 KiB, kernel rows almost none`;
}
