/**
 * Shared by the CNI integration tests and the latency benchmark: builds the bundled plugin
 * into a temp dir and runs CNI plugins (ours or a reference one) inside a node namespace the
 * way a runtime does (env + stdin -> stdout, exit code).
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../../src/util/self.ts';

export const REF_PLUGINS = '/usr/lib/cni';

/**
 * Bundles cni/main.ts into `<dir>/weft-cni.js` (ESM) and `<dir>/weft-cni.cjs` with the
 * project's build script; returns the CommonJS one (what installCni installs).
 */
export function buildBundle(dir = mkdtempSync(join(tmpdir(), 'weft-cni-build-'))): string {
  const r = spawnSync(process.execPath, [join(projectRoot, 'scripts/build-cni.mjs'), dir], {
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`build-cni failed: ${r.stderr}`);
  return join(dir, 'weft-cni.cjs');
}

export interface CniCall {
  code: number;
  stdout: string;
  stderr: string;
  json: Record<string, unknown> | undefined;
  ms: number;
}

/** Env a runtime would pass, minus things that only slow node's start (CA bundle). */
export function baseEnv(): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' };
}

/** Runs `argv` inside namespace `ns` with CNI env and `conf` on stdin. */
export function callPlugin(
  ns: string,
  argv: string[],
  env: NodeJS.ProcessEnv,
  conf: unknown,
): Promise<CniCall> {
  const started = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const child = spawn('ip', ['netns', 'exec', ns, ...argv], {
      env: { ...baseEnv(), ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => {
      let json: Record<string, unknown> | undefined;
      try {
        json = stdout.trim() ? (JSON.parse(stdout) as Record<string, unknown>) : undefined;
      } catch {
        json = undefined;
      }
      resolve({
        code: code ?? -1,
        stdout,
        stderr,
        json,
        ms: Number(process.hrtime.bigint() - started) / 1e6,
      });
    });
    child.stdin.end(typeof conf === 'string' ? conf : JSON.stringify(conf));
  });
}

export const SUBNET_ENV =
  'FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n';
