/**
 * How to start weft's own programs as child processes (the demo starts weftd in node
 * namespaces; tests start weftd and weft-cni). Works both from compiled output (dist/) and
 * from sources under tsx.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
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

/** Newest mtime under `p` (ms). */
function newestMtime(p: string): number {
  const st = statSync(p);
  if (!st.isDirectory()) return st.mtimeMs;
  let m = 0;
  for (const e of readdirSync(p)) m = Math.max(m, newestMtime(join(p, e)));
  return m;
}

/** Oldest mtime of a .js file under `p` (ms; Infinity when none). */
function oldestJs(p: string): number {
  const st = statSync(p);
  if (!st.isDirectory()) return p.endsWith('.js') ? st.mtimeMs : Infinity;
  let m = Infinity;
  for (const e of readdirSync(p)) m = Math.min(m, oldestJs(join(p, e)));
  return m;
}

/**
 * True when dist/ holds a compile of the current sources (every compiled file newer than
 * every file under src/ and cni/): programCommand may then start daemons from it. The
 * same rule as scripts/run-tests.mjs, which cannot import this file (it runs without tsx).
 */
export function distIsFresh(): boolean {
  try {
    const compiled = oldestJs(resolve(projectRoot, 'dist/src'));
    const sources = Math.max(
      newestMtime(resolve(projectRoot, 'src')),
      newestMtime(resolve(projectRoot, 'cni')),
    );
    return compiled !== Infinity && compiled >= sources;
  } catch {
    return false;
  }
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
