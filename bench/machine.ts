/**
 * What the machine charges a userspace forwarder for crossing into the kernel, printed at
 * the top of every bench run. Why: the same build measured 0.75-0.80x of kernel VXLAN on
 * one machine of "this kind" and 0.57x on another whose kernel runs with page-table
 * isolation and no PCID (every system call and context switch flushes the TLB; a system
 * call from Node took ~1.7 µs there). Kernel VXLAN makes almost no system calls per packet,
 * a TUN + socket forwarder a few per 64 KiB, so the ratio moves with this cost; a table
 * without it cannot be compared with another machine's (docs/performance.md).
 *
 * The second cost is waking a program on another CPU that has been idle: on a VM whose idle
 * vCPUs halt, the hypervisor must schedule the halted vCPU again first (measured on one such
 * machine: ~8 µs back to back, ~95 µs after 10 ms idle, in C). Kernel VXLAN forwards inside
 * the sender's system call; a userspace hop is a wake-up, so the 10 ms ping pays this up to
 * twice per direction.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';

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

/** Cross-CPU wake-up latency, Node to Node over a pipe, both pinned (median µs). */
export interface WakeCosts {
  /** The next message sent as soon as the reply is in (the woken CPU had just been busy). */
  readonly backToBackUs: number;
  /** The next message sent 10 ms after the reply (the woken CPU had been idle). */
  readonly afterIdleUs: number;
}

/**
 * The wake-up probe: runs pinned to CPU 0 and starts an echo pinned to CPU 1; each message
 * is a CLOCK_MONOTONIC timestamp, the echo answers with how long it took to see it. Prints
 * {"backToBackUs", "afterIdleUs"} (medians of 100).
 */
const WAKE_PROBE = String.raw`
const { spawn } = require('node:child_process');
const now = () => Number(process.hrtime.bigint()) / 1000;
if (process.argv[1] === 'echo') {
  let buf = Buffer.alloc(0);
  process.stdin.on('data', (d) => {
    const t = now();
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 8) {
      const out = Buffer.alloc(8);
      out.writeDoubleLE(t - buf.readDoubleLE(0));
      process.stdout.write(out);
      buf = buf.subarray(8);
    }
  });
  process.stdout.write(Buffer.alloc(8));
} else {
  const echo = spawn('taskset', ['-c', '1', process.execPath, '-e', process.argv[2], 'echo'], { stdio: ['pipe', 'pipe', 'inherit'] });
  let waiting;
  let buf = Buffer.alloc(0);
  echo.stdout.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 8) { const v = buf.readDoubleLE(0); buf = buf.subarray(8); const w = waiting; waiting = undefined; w?.(v); }
  });
  const next = () => new Promise((r) => { waiting = r; });
  const ask = () => { const out = Buffer.alloc(8); out.writeDoubleLE(now()); echo.stdin.write(out); return next(); };
  const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  (async () => {
    await next();
    for (let i = 0; i < 200; i++) await ask();
    const b2b = [];
    for (let i = 0; i < 100; i++) b2b.push(await ask());
    const idle = [];
    for (let i = 0; i < 100; i++) { await new Promise((r) => setTimeout(r, 10)); idle.push(await ask()); }
    console.log(JSON.stringify({ backToBackUs: median(b2b), afterIdleUs: median(idle) }));
    echo.stdin.end();
  })();
}
`;

/**
 * Measures the cross-CPU wake-up latency (about 3 s); undefined with one CPU or without
 * taskset.
 */
export function wakeCosts(): Promise<WakeCosts | undefined> {
  if (cpus().length < 2) return Promise.resolve(undefined);
  return new Promise((resolve) => {
    execFile(
      'taskset',
      ['-c', '0', process.execPath, '-e', WAKE_PROBE, 'probe', WAKE_PROBE],
      { timeout: 30_000 },
      (err, stdout) => {
        if (err) return resolve(undefined);
        try {
          const w = JSON.parse(stdout.trim()) as WakeCosts;
          resolve(w.backToBackUs > 0 && w.afterIdleUs > 0 ? w : undefined);
        } catch {
          resolve(undefined);
        }
      },
    );
  });
}

/** The second header line: what waking an idle CPU costs here. */
export function describeWake(w: WakeCosts | undefined): string {
  if (!w) return 'cross-CPU wake-up not measured (one CPU, or no taskset)';
  return (
    `waking a program on the other CPU takes ${w.backToBackUs.toFixed(0)} µs back to back and ` +
    `${w.afterIdleUs.toFixed(0)} µs after 10 ms idle (Node to Node); a userspace hop is such a wake-up ` +
    `whenever its forwarder has gone to sleep, which at 10 ms ping intervals is every hop busy polling does not catch`
  );
}
