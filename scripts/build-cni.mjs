// Bundles the CNI plugin (cni/main.ts) into one file, dist/weft-cni.js, so the runtime starts
// it without tsx or module resolution: one file read, no TypeScript at run time.
// Usage: node scripts/build-cni.mjs [outfile]
import { build } from 'esbuild';
import { chmodSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const outfile = resolve(process.argv[2] ?? resolve(root, 'dist/weft-cni.js'));

await build({
  entryPoints: [resolve(root, 'cni/main.ts')],
  outfile,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  minify: true,
  legalComments: 'none',
  logLevel: 'warning',
});
chmodSync(outfile, 0o755);
console.log(`build-cni: wrote ${outfile}`);
