/**
 * `weft`: the user-facing command line (weftd is the daemon; this is everything else).
 *
 * Why a table: each subcommand is one entry in COMMANDS with a one-line summary and a lazy
 * loader, so adding `status` or `compare` touches one line here and nothing else, and a
 * subcommand's dependencies are loaded only when it runs. `main` returns the exit code;
 * nothing below it calls process.exit.
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { WEFT_VERSION } from '../util/self.ts';

/** Where a subcommand writes: stdout for results, stderr for diagnostics. */
export interface CliIo {
  out(text: string): void;
  err(text: string): void;
}

export interface Subcommand {
  /** One line for `weft help`. */
  readonly summary: string;
  /** Runs the subcommand with the arguments after its name; resolves with the exit code. */
  run(args: string[], io: CliIo): Promise<number>;
}

/** The subcommands. Add one entry per subcommand. */
export const COMMANDS: Readonly<Record<string, Subcommand>> = {
  demo: {
    summary: 'build a cluster in network namespaces, run weftd on it and show pods talking',
    run: async (args, io) => (await import('./demo.ts')).demoMain(args, io),
  },
  status: {
    summary: "show this node's lease, peers, routes and counters (from weftd's status endpoint)",
    run: async (args, io) => (await import('./status.ts')).statusMain(args, io),
  },
  compare: {
    summary: 'measure every backend side by side (RTT, throughput, packet rate, overhead, CPU)',
    run: async (args, io) => (await import('./compare.ts')).compareMain(args, io),
  },
};

export const defaultIo: CliIo = {
  out: (t) => process.stdout.write(t.endsWith('\n') ? t : `${t}\n`),
  err: (t) => process.stderr.write(t.endsWith('\n') ? t : `${t}\n`),
};

export function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((n) => n.length), 'help'.length);
  const lines = Object.entries(COMMANDS).map(([n, c]) => `  ${n.padEnd(width)}  ${c.summary}`);
  lines.push(`  ${'help'.padEnd(width)}  show this help (weft <command> --help for a command's options)`);
  return [
    'weft: a flannel-compatible overlay network (the daemon is weftd)',
    '',
    'Usage: weft <command> [options]',
    '       weft --version',
    '',
    'Commands:',
    ...lines,
    '',
  ].join('\n');
}

export async function main(argv: readonly string[], io: CliIo = defaultIo): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
    io.out(usage());
    return name === undefined ? 2 : 0;
  }
  if (name === '--version' || name === '-V' || name === 'version') {
    io.out(`weft ${WEFT_VERSION}`);
    return 0;
  }
  const cmd = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!cmd) {
    io.err(`weft: unknown command "${name}". Run "weft help" for the list of commands.`);
    return 2;
  }
  return cmd.run(rest, io);
}

/** True when this module is the program being run (not imported by a test or bin/weft.js). */
function isEntryPoint(): boolean {
  const argv1 = process.argv[1];
  if (!argv1) return false;
  try {
    return realpathSync(argv1) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      const e = err as { code?: string; message?: string };
      process.stderr.write(`weft: ${e.code ? `[${e.code}] ` : ''}${e.message ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
