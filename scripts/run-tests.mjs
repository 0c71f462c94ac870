// Runs every test/**/*.test.ts (or the files/folders given) with Node's test runner under tsx.
// Files run one at a time: integration tests build network namespaces and measure traffic,
// and this machine has two cores.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';

function collect(p, out) {
  const st = statSync(p);
  if (st.isDirectory()) {
    for (const e of readdirSync(p).sort())
      if (e !== 'node_modules' && e !== 'fixtures') collect(join(p, e), out);
  } else if (/\.test\.ts$/.test(p)) out.push(p);
  return out;
}

const args = process.argv.slice(2);
const roots = args.length > 0 ? args : ['test'];
const files = roots.flatMap((r) => collect(resolve(r), []));
if (files.length === 0) {
  console.error('no test files found');
  process.exit(1);
}
// Programs the tests start (weftd, weft) run from dist/ when it was built after the last
// change to any source (scripts/setup.sh builds it right before the suite): tsx's start-up
// costs 1-2 CPU-seconds per daemon, and the suite starts a few hundred.
function newest(p) {
  const st = statSync(p);
  if (!st.isDirectory()) return st.mtimeMs;
  let m = 0;
  for (const e of readdirSync(p)) m = Math.max(m, newest(join(p, e)));
  return m;
}
function oldest(p) {
  const st = statSync(p);
  if (!st.isDirectory()) return p.endsWith('.js') ? st.mtimeMs : Infinity;
  let m = Infinity;
  for (const e of readdirSync(p)) m = Math.min(m, oldest(join(p, e)));
  return m;
}
const env = { ...process.env };
try {
  const fresh = oldest(resolve('dist/src')) >= Math.max(newest(resolve('src')), newest(resolve('cni')));
  if (fresh && env.WEFT_SPAWN_FROM_DIST === undefined) env.WEFT_SPAWN_FROM_DIST = '1';
  console.error(
    fresh
      ? 'run-tests: dist/ is up to date: daemons start from it'
      : 'run-tests: dist/ is older than the sources: daemons start under tsx (scripts/setup.sh rebuilds dist/)',
  );
} catch {
  console.error('run-tests: no dist/: daemons start under tsx');
}
const res = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--test', '--test-concurrency=1', '--test-timeout=600000', ...files],
  { stdio: 'inherit', env },
);
process.exit(res.status ?? 1);
