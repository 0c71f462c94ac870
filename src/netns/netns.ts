/**
 * Throwaway network namespaces for the demo, tests and benchmarks.
 *
 * Every namespace a run creates is named `<prefix>-<name>` where the prefix is unique per
 * run and embeds the owning PID (`wft<pid>x<random>`), so a later run can remove what a
 * crashed run left behind (only namespaces whose owner PID is gone) and two runs never
 * collide. Nothing here touches the root namespace: veth pairs are created with both ends
 * placed directly in namespaces.
 *
 * Teardown: `NetnsRun.destroy()` kills the processes started through it (by PID), then
 * deletes its namespaces (which removes their interfaces). It is also registered on
 * process exit and on SIGINT/SIGTERM so an interrupted run cleans up.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { run, runSync } from '../util/exec.ts';
import type { RunOptions } from '../util/exec.ts';

const PREFIX_RE = /^wft(\d+)x[0-9a-f]{4}-/;

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Names of namespaces left by runs whose owning process has exited. */
export function staleNamespaces(): string[] {
  let names: string[] = [];
  try {
    names = readdirSync('/run/netns');
  } catch {
    return [];
  }
  return names.filter((n) => {
    const m = PREFIX_RE.exec(n);
    return m !== null && !pidAlive(Number(m[1]));
  });
}

/** Removes namespaces left by crashed runs of weft (only ours, only with a dead owner). */
export function cleanupStale(): string[] {
  const stale = staleNamespaces();
  for (const ns of stale) {
    try {
      killNamespacePids(ns);
      runSync('ip', ['netns', 'del', ns]);
    } catch {
      /* already gone */
    }
  }
  return stale;
}

function killNamespacePids(ns: string): void {
  let out = '';
  try {
    out = runSync('ip', ['netns', 'pids', ns]);
  } catch {
    return;
  }
  for (const line of out.split('\n')) {
    const pid = Number(line.trim());
    if (pid > 0 && pid !== process.pid) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
}

const liveRuns = new Set<NetnsRun>();
let hooksInstalled = false;

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', () => {
    for (const r of liveRuns) r.destroySync();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      for (const r of liveRuns) r.destroySync();
      process.exit(sig === 'SIGINT' ? 130 : 143);
    });
  }
}

export interface SpawnedProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Collected stdout+stderr (bounded), for failure messages. */
  output(): string;
  /** Resolves with the exit code (or signal name) when the process ends. */
  readonly exited: Promise<number | string>;
  /** Sends a signal by PID; escalates to SIGKILL after `graceMs`. Resolves on exit. */
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<number | string>;
}

export class NetnsRun {
  /** Unique per run, e.g. "wft12345xa1b2". */
  readonly prefix: string;
  private readonly namespaces: string[] = [];
  private readonly processes = new Set<SpawnedProcess>();
  private destroyed = false;

  constructor() {
    this.prefix = `wft${process.pid}x${randomBytes(2).toString('hex')}`;
    installExitHooks();
    liveRuns.add(this);
  }

  /** Full namespace name for a short name. */
  ns(name: string): string {
    return `${this.prefix}-${name}`;
  }

  /** Creates namespace `<prefix>-<name>` with loopback up; returns its full name. */
  async addNamespace(name: string): Promise<string> {
    const full = this.ns(name);
    await run('ip', ['netns', 'add', full]);
    this.namespaces.push(full);
    await run('ip', ['link', 'set', 'lo', 'up'], { netns: full });
    return full;
  }

  /** Runs a command inside namespace `ns` (full name); resolves with stdout. */
  exec(
    ns: string,
    cmd: string,
    args: readonly string[],
    opts: Omit<RunOptions, 'netns'> = {},
  ): Promise<string> {
    return run(cmd, args, { ...opts, netns: ns });
  }

  /** Runs `ip <args>` inside namespace `ns`. */
  ip(ns: string, ...args: string[]): Promise<string> {
    return run('ip', args, { netns: ns });
  }

  /**
   * Creates a veth pair with end A (`ifA`) in namespace `nsA` and end B in `nsB`. Neither
   * end ever appears in the root namespace (temporary names are made unique per run).
   */
  async addVeth(nsA: string, ifA: string, nsB: string, ifB: string, mtu?: number): Promise<void> {
    const mtuArgs = mtu ? ['mtu', String(mtu)] : [];
    await run(
      'ip',
      ['link', 'add', ifA, ...mtuArgs, 'type', 'veth', 'peer', 'name', ifB, ...mtuArgs, 'netns', nsB],
      {
        netns: nsA,
      },
    );
    await run('ip', ['link', 'set', ifA, 'up'], { netns: nsA });
    await run('ip', ['link', 'set', ifB, 'up'], { netns: nsB });
  }

  /** Starts a long-running process inside `ns`, tracked for teardown. */
  spawn(ns: string, cmd: string, args: readonly string[], opts: SpawnOptions = {}): SpawnedProcess {
    const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      ...opts,
    });
    return this.track(child);
  }

  /** Tracks a process started elsewhere (e.g. with custom stdio) so teardown ends it. */
  track(child: ChildProcess): SpawnedProcess {
    let out = '';
    const append = (d: Buffer): void => {
      out += d.toString();
      if (out.length > 256 * 1024) out = out.slice(-128 * 1024);
    };
    child.stdout?.on('data', append);
    child.stderr?.on('data', append);
    const exited = new Promise<number | string>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null)
        resolve(child.exitCode ?? child.signalCode ?? -1);
      child.once('exit', (code, sig) => resolve(code ?? sig ?? -1));
      child.once('error', () => resolve(-1));
    });
    const proc: SpawnedProcess = {
      child,
      get pid() {
        return child.pid ?? -1;
      },
      output: () => out,
      exited,
      stop: async (signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000) => {
        if (child.exitCode === null && child.signalCode === null && child.pid) {
          try {
            process.kill(child.pid, signal);
          } catch {
            /* gone */
          }
          const timer = setTimeout(() => {
            try {
              if (child.pid) process.kill(child.pid, 'SIGKILL');
            } catch {
              /* gone */
            }
          }, graceMs);
          const r = await exited;
          clearTimeout(timer);
          return r;
        }
        return exited;
      },
    };
    this.processes.add(proc);
    void exited.then(() => this.processes.delete(proc));
    return proc;
  }

  /** Stops tracked processes (SIGTERM, then SIGKILL) and deletes all namespaces. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    await Promise.all([...this.processes].map((p) => p.stop('SIGTERM', 3000)));
    this.destroySync();
  }

  /** Synchronous teardown (exit hooks): SIGKILL tracked processes, delete namespaces. */
  destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    liveRuns.delete(this);
    for (const p of this.processes) {
      try {
        if (p.child.exitCode === null && p.child.signalCode === null && p.child.pid)
          process.kill(p.child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    for (const ns of [...this.namespaces].reverse()) {
      killNamespacePids(ns);
      try {
        runSync('ip', ['netns', 'del', ns]);
      } catch {
        /* already gone */
      }
    }
    this.namespaces.length = 0;
  }
}

/** Lists the interface names in the root namespace (tests assert it is unchanged). */
export function rootInterfaces(): string[] {
  const out = runSync('ip', ['-o', 'link', 'show']);
  return out
    .split('\n')
    .map((l) => /^\d+:\s+([^:@]+)/.exec(l)?.[1])
    .filter((x): x is string => x !== undefined)
    .sort();
}

/** Snapshot of the root namespace's addresses, routes and links, for "nothing changed" asserts. */
export function rootSnapshot(): string {
  const links = rootInterfaces().join(',');
  const addrs = runSync('ip', ['-o', 'addr', 'show'])
    .split('\n')
    .map((l) => l.replace(/valid_lft.*$/, '').trim());
  const routes = runSync('ip', ['route', 'show', 'table', 'all']).trim();
  return [links, addrs.sort().join('\n'), routes].join('\n---\n');
}
