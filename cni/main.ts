#!/usr/bin/env node
/**
 * weft-cni entry point: CNI environment + stdin in, result or error object out (CNI spec 1.1).
 * Kept tiny and bundled (scripts/build-cni.mjs) because the runtime starts it for every pod;
 * no top-level await, so the same code also bundles as CommonJS (the installed binary).
 */
import { readFileSync, writeSync } from 'node:fs';
import { isatty } from 'node:tty';
import { runPlugin } from './plugin.ts';

function readStdin(): string {
  // fd-level I/O: touching process.stdin/stdout would set up stream objects (a few ms per pod).
  if (isatty(0)) return '';
  try {
    return readFileSync(0, 'utf8');
  } catch {
    return ''; // stdin closed: the command's own checks report what is missing
  }
}

function writeAll(fd: number, text: string): void {
  const buf = Buffer.from(text);
  for (let off = 0; off < buf.length; ) {
    try {
      off += writeSync(fd, buf, off);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') return; // reader gone: nothing to tell
    }
  }
}

async function main(): Promise<number> {
  const out = await runPlugin({ env: process.env, stdin: readStdin() });
  if (out.stderr) writeAll(2, out.stderr);
  if (out.stdout) writeAll(1, out.stdout);
  return out.exitCode;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    // runPlugin reports every error as a CNI error object; reaching here is a bug.
    process.stdout.write(
      JSON.stringify({ cniVersion: '1.1.0', code: 5, msg: `weft-cni crashed: ${String(err)}` }),
    );
    process.exitCode = 1;
  },
);
