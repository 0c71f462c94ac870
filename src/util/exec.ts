/**
 * Running outside programs (ip, nft, etcdctl, ...). Arguments are always an array (no
 * shell), failures raise KernelError with the command line and its stderr.
 */
import { execFile, execFileSync } from 'node:child_process';
import { KernelError } from './errors.ts';

export interface RunOptions {
  /** Run inside this network namespace (`ip netns exec <ns>`). */
  netns?: string;
  input?: string;
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  signal?: AbortSignal;
}

function withNetns(cmd: string, args: readonly string[], netns?: string): [string, string[]] {
  return netns ? ['ip', ['netns', 'exec', netns, cmd, ...args]] : [cmd, [...args]];
}

/** Runs a command; resolves with stdout, rejects with KernelError (stderr in the message). */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<string> {
  const [c, a] = withNetns(cmd, args, opts.netns);
  return new Promise((resolve, reject) => {
    const child = execFile(
      c,
      a,
      {
        timeout: opts.timeoutMs ?? 30_000,
        maxBuffer: 64 * 1024 * 1024,
        env: opts.env ?? process.env,
        signal: opts.signal,
      },
      (err, stdout, stderr) => {
        if (err) {
          // Programs that report errors on stdout (iperf3 -J) say why there, not on stderr.
          const why =
            String(stderr).trim() ||
            (String(stdout).trim()
              ? `${err.message.split('\n')[0]}; stdout: ${String(stdout).trim().slice(-600)}`
              : err.message);
          const timedOut = (err as { killed?: boolean }).killed ? ' (killed: timed out)' : '';
          reject(new KernelError(`${[c, ...a].join(' ')} failed${timedOut}: ${why}`, { cause: err }));
        } else resolve(String(stdout));
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** Synchronous variant, for teardown paths that must finish before the process exits. */
export function runSync(cmd: string, args: readonly string[], opts: RunOptions = {}): string {
  const [c, a] = withNetns(cmd, args, opts.netns);
  try {
    return execFileSync(c, a, {
      timeout: opts.timeoutMs ?? 30_000,
      input: opts.input,
      env: opts.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
      maxBuffer: 64 * 1024 * 1024,
    }).toString();
  } catch (err) {
    const e = err as { stderr?: Buffer; message: string };
    throw new KernelError(`${[c, ...a].join(' ')} failed: ${e.stderr?.toString().trim() || e.message}`, {
      cause: err,
    });
  }
}
