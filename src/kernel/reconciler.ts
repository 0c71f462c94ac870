/**
 * PeerReconciler: keeps the kernel's per-peer state (routes, neighbours, FDB) equal to a
 * desired set, one peer at a time, in one serial loop.
 *
 * Backends only say what they want (setDesired) and how a peer maps to operations; the
 * loop computes the difference against what it installed, removes before it adds, retries
 * failed peers later (a failure never blocks other peers), and runs a backend-supplied
 * prelude first (device checks, which may forget everything so it is reinstalled). Backend
 * applyPeers() calls are synchronous; the kernel work happens here, in order.
 */
import type { Logger } from '../util/log.ts';
import type { KernelNet, KernelOp } from './kernel.ts';
import { describeOp } from './kernel.ts';

export interface PeerReconcilerOptions<P> {
  readonly kernel: KernelNet;
  readonly log: Logger;
  /** Operations that install peer `p` (in order). */
  readonly addOps: (p: P) => KernelOp[];
  /** Operations that remove peer `p` (in order, usually the reverse of addOps). */
  readonly removeOps: (p: P) => KernelOp[];
  /** True when two plans for the same key need no kernel change. */
  readonly same: (a: P, b: P) => boolean;
  /** Runs at the start of every pass; `verify` is true on periodic checks. */
  readonly prelude?: (verify: boolean) => Promise<void>;
  /** Delay before retrying after a failure (ms). */
  readonly retryMs?: number;
}

export interface ReconcilerCounters {
  passes: number;
  peersInstalled: number;
  peersRemoved: number;
  failures: number;
}

export class PeerReconciler<P> {
  private readonly desired = new Map<string, P>();
  private readonly installed = new Map<string, P>();
  private readonly opts: PeerReconcilerOptions<P>;
  private running: Promise<void> | undefined;
  private dirty = false;
  private verifyNext = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  readonly counters: ReconcilerCounters = { passes: 0, peersInstalled: 0, peersRemoved: 0, failures: 0 };
  /** Last error seen (for stats/tests); cleared by a clean pass. */
  lastError: unknown;

  constructor(opts: PeerReconcilerOptions<P>) {
    this.opts = opts;
  }

  setDesired(key: string, plan: P | undefined): void {
    if (plan === undefined) this.desired.delete(key);
    else this.desired.set(key, plan);
  }

  desiredPlans(): ReadonlyMap<string, P> {
    return this.desired;
  }

  installedPlans(): ReadonlyMap<string, P> {
    return this.installed;
  }

  /** Forgets that `key` (or everything) is installed, so the next pass installs it again. */
  forget(key?: string): void {
    if (key === undefined) this.installed.clear();
    else this.installed.delete(key);
  }

  /** Requests a pass (coalesced). `verify` asks the prelude to check the kernel too. */
  schedule(verify = false): void {
    if (this.stopped) return;
    this.dirty = true;
    if (verify) this.verifyNext = true;
    if (this.running === undefined) {
      this.running = this.loop().finally(() => {
        this.running = undefined;
      });
    }
  }

  /** Resolves when no pass is running or pending (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.running !== undefined) await this.running;
  }

  /** Stops scheduling; resolves after the current pass. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    await this.settled();
  }

  /** Removes every installed peer now (backend stop). */
  async removeAll(): Promise<void> {
    await this.settled();
    for (const [key, p] of [...this.installed]) {
      try {
        await this.opts.kernel.apply(this.opts.removeOps(p));
      } catch (err) {
        this.counters.failures++;
        this.opts.log.warn({ err, peer: key }, 'could not remove peer state on stop');
      }
      this.installed.delete(key);
    }
  }

  private async loop(): Promise<void> {
    while (this.dirty && !this.stopped) {
      this.dirty = false;
      const verify = this.verifyNext;
      this.verifyNext = false;
      let failed = false;
      this.counters.passes++;
      try {
        if (this.opts.prelude) await this.opts.prelude(verify);
        failed = !(await this.pass());
      } catch (err) {
        failed = true;
        this.counters.failures++;
        this.lastError = err;
        this.opts.log.error({ err }, 'kernel sync failed; will retry');
      }
      if (failed) {
        if (this.retryTimer) clearTimeout(this.retryTimer);
        this.retryTimer = setTimeout(() => {
          this.retryTimer = undefined;
          this.schedule(true);
        }, this.opts.retryMs ?? 1000);
        this.retryTimer.unref();
      } else this.lastError = undefined;
    }
  }

  /** One diff-and-apply pass; false when some peer failed. */
  private async pass(): Promise<boolean> {
    const { kernel, log } = this.opts;
    let ok = true;
    for (const [key, cur] of [...this.installed]) {
      const want = this.desired.get(key);
      if (want !== undefined && this.opts.same(cur, want)) continue;
      const ops = this.opts.removeOps(cur);
      try {
        await kernel.apply(ops);
        this.installed.delete(key);
        this.counters.peersRemoved++;
        log.info({ peer: key }, 'peer removed');
      } catch (err) {
        ok = false;
        this.counters.failures++;
        this.lastError = err;
        log.warn({ err, peer: key, ops: ops.map(describeOp) }, 'removing peer failed; will retry');
      }
    }
    for (const [key, want] of this.desired) {
      if (this.installed.has(key)) continue;
      const ops = this.opts.addOps(want);
      try {
        await kernel.apply(ops);
        this.installed.set(key, want);
        this.counters.peersInstalled++;
        log.info({ peer: key }, 'peer installed');
      } catch (err) {
        ok = false;
        this.counters.failures++;
        this.lastError = err;
        log.warn({ err, peer: key, ops: ops.map(describeOp) }, 'installing peer failed; will retry');
      }
    }
    return ok;
  }
}
