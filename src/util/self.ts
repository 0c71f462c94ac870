/**
 * How to start weft's own programs as child processes (the demo starts weftd in node
 * namespaces; tests start weftd and weft-cni). Works both from compiled output (dist/) and
 * from sources under tsx.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export type WeftProgram = 'weftd' | 'weft' | 'weft-cni';

const here = dirname(fileURLToPath(import.meta.url));
/** Project root (works from src/util and from dist/src/util). */
export const projectRoot = resolve(here, here.includes(`${'/'}dist${'/'}`) ? '../../..' : '../..');

const runningFromSource = import.meta.url.endsWith('.ts');

/** Command and arguments that start `program`. */
export function programCommand(program: WeftProgram): { cmd: string; args: string[] } {
  const entry = program === 'weft-cni' ? 'cni/main' : `src/cli/${program}`;
  // scripts/run-tests.mjs sets WEFT_SPAWN_FROM_DIST=1 when dist/ is newer than every source,
  // so the daemons a test starts skip tsx's start-up (1-2 CPU-seconds each).
  if (runningFromSource && process.env.WEFT_SPAWN_FROM_DIST !== '1') {
    return { cmd: process.execPath, args: ['--import', 'tsx', resolve(projectRoot, `${entry}.ts`)] };
  }
  const compiled = resolve(projectRoot, 'dist', `${entry}.js`);
  if (existsSync(compiled)) return { cmd: process.execPath, args: [compiled] };
  return { cmd: process.execPath, args: ['--import', 'tsx', resolve(projectRoot, `${entry}.ts`)] };
}

/** weft's version (package.json). */
export const WEFT_VERSION: string = (() => {
  try {
    const pkg = JSON.parse(readFileSync(resolve(projectRoot, 'package.json'), 'utf8')) as {
      version?: string;
    };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
})();
