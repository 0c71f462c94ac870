/**
 * A cross-process lock file for the embedded store's directory.
 *
 * Why a lock at all when leases are created with an atomic link(): taking an *expired*
 * lease means delete-then-create, and two daemons that both saw it expired must not both
 * delete (the second would delete the first one's fresh lease). All writes to the
 * directory happen under this lock; the atomic create stays as a second guard.
 *
 * The lock is a file created with O_EXCL holding `<pid> <ms>`. A holder that died (PID gone)
 * or held it longer than `staleMs` is broken by renaming its lock file away (atomic, so two
 * breakers cannot both succeed on the same file) — daemons sharing a directory share the
 * machine's PID namespace (they differ only in network namespace), so the PID check holds.
 */
import { randomBytes } from 'node:crypto';
import { link, open, readFile, rename, unlink } from 'node:fs/promises';
import { LeaseError } from '../../util/errors.ts';

export interface LockOptions {
  /** Give up after this long (default 10 s). */
  timeoutMs?: number;
  /** A lock held longer than this is considered abandoned (default 30 s). */
  staleMs?: number;
  signal?: AbortSignal;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Runs `fn` while holding the lock file at `path`. */
export async function withLock<T>(path: string, fn: () => Promise<T>, opts: LockOptions = {}): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const staleMs = opts.staleMs ?? 30_000;
  const token = `${process.pid} ${Date.now()} ${randomBytes(4).toString('hex')}\n`;
  const deadline = Date.now() + timeoutMs;
  let delay = 2;
  for (;;) {
    opts.signal?.throwIfAborted();
    try {
      const fh = await open(path, 'wx', 0o644);
      try {
        await fh.writeFile(token);
      } finally {
        await fh.close();
      }
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new LeaseError(
          `cannot create lock file ${path}: ${(err as Error).message}; check the store directory`,
          {
            cause: err,
          },
        );
      }
    }
    await breakIfStale(path, staleMs);
    if (Date.now() > deadline) {
      throw new LeaseError(
        `timed out after ${timeoutMs} ms waiting for the lock ${path}; if no weftd is running, remove that file`,
      );
    }
    await sleep(delay);
    delay = Math.min(delay * 2, 50);
  }
  try {
    return await fn();
  } finally {
    // Only remove the lock if it is still ours (it may have been broken as stale).
    const cur = await readFile(path, 'utf8').catch(() => '');
    if (cur === token) await unlink(path).catch(() => undefined);
  }
}

async function breakIfStale(path: string, staleMs: number): Promise<void> {
  const text = await readFile(path, 'utf8').catch(() => undefined);
  if (text === undefined) return; // released meanwhile
  const [pidText, atText] = text.split(' ');
  const pid = Number(pidText);
  const at = Number(atText);
  // A lock file still being written (empty) belongs to a live creator; give it time.
  const abandoned =
    text.length > 0 && ((Number.isInteger(pid) && pid > 0 && !pidAlive(pid)) || Date.now() - at > staleMs);
  if (!abandoned) return;
  const aside = `${path}.stale-${randomBytes(4).toString('hex')}`;
  try {
    await rename(path, aside);
  } catch {
    return; // someone else broke or released it
  }
  const moved = await readFile(aside, 'utf8').catch(() => '');
  if (moved !== text) {
    // We moved a lock taken after our check: put it back for its holder (fails harmlessly
    // if yet another process created one meanwhile; leases' atomic create still guards).
    await link(aside, path).catch(() => undefined);
  }
  await unlink(aside).catch(() => undefined);
}
