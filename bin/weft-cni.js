#!/usr/bin/env node
// weft-cni: the weft CNI plugin. Runs the compiled entry point dist/cni/main.js exactly as if it had been
// started directly (process.argv[1] points at it), so it parses process.argv itself.
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';

const entry = fileURLToPath(new URL('../dist/cni/main.js', import.meta.url));
if (!existsSync(entry)) {
  process.stderr.write(
    `weft-cni: ${entry} is missing: weft is not built yet. Run "bash scripts/setup.sh" in the project root (it installs dependencies and compiles dist/).\n`,
  );
  process.exit(1);
}
process.argv[1] = entry;
await import(pathToFileURL(entry).href);
