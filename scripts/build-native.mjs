// Builds the native batch I/O addon (native/*.c -> native/build/weft_io.node) with the
// system C compiler. No node-gyp and no downloads: Node-API headers come from the Node
// installation that runs this script. Skips the build when the output is newer than
// every source. Prints one line either way.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const srcDir = join(root, 'native');
const out = join(srcDir, 'build', 'weft_io.node');
const sources = readdirSync(srcDir)
  .filter((f) => f.endsWith('.c') || f.endsWith('.h'))
  .map((f) => join(srcDir, f));
const cSources = sources.filter((f) => f.endsWith('.c'));

const candidates = [resolve(dirname(process.execPath), '..', 'include', 'node'), '/usr/include/node'];
const include = candidates.find((d) => existsSync(join(d, 'node_api.h')));
if (!include) {
  console.error(
    `build-native: node_api.h not found (looked in ${candidates.join(', ')}); install Node's headers`,
  );
  process.exit(1);
}

const newest = Math.max(
  ...sources.map((f) => statSync(f).mtimeMs),
  statSync(fileURLToPath(import.meta.url)).mtimeMs,
);
if (existsSync(out) && statSync(out).mtimeMs > newest) {
  console.log(`build-native: ${out} is up to date`);
  process.exit(0);
}

mkdirSync(dirname(out), { recursive: true });
const args = [
  '-O2',
  '-fPIC',
  '-shared',
  '-Wall',
  '-Wextra',
  '-std=gnu11',
  '-fvisibility=hidden',
  `-I${include}`,
  '-o',
  out,
  ...cSources,
];
try {
  execFileSync('cc', args, { stdio: ['ignore', 'inherit', 'inherit'] });
} catch {
  console.error(`build-native: cc ${args.join(' ')} failed`);
  process.exit(1);
}
console.log(`build-native: built ${out}`);
