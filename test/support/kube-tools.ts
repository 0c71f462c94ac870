/**
 * Helpers for tests that talk to the test API server with real clients: kubectl 1.20 (the
 * Debian build that scripts/setup.sh unpacks into .weft-run/kubectl), a throwaway temp dir,
 * a self-signed certificate for the in-cluster (HTTPS) path, and polling.
 */
import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../../src/util/self.ts';

export const KUBECTL = join(projectRoot, '.weft-run/kubectl/usr/bin/kubectl');

export function tempDir(tag: string): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), `weft-${tag}-`));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface KubectlResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs kubectl 1.20 against `kubeconfig`, with its discovery cache inside `home`. */
export function kubectl(kubeconfig: string, home: string, args: readonly string[]): Promise<KubectlResult> {
  return new Promise((resolve, reject) => {
    execFile(
      KUBECTL,
      ['--kubeconfig', kubeconfig, '--cache-dir', join(home, 'cache'), '--request-timeout=10s', ...args],
      { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home }, timeout: 20_000 },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') {
          reject(new Error(`kubectl did not run: ${err.message}`));
          return;
        }
        resolve({ code: err ? Number(err.code) : 0, stdout, stderr });
      },
    );
  });
}

/** Starts a long-running kubectl (e.g. `get -w`); the caller kills it by PID. */
export function spawnKubectl(kubeconfig: string, home: string, args: readonly string[]): ChildProcess {
  return spawn(KUBECTL, ['--kubeconfig', kubeconfig, '--cache-dir', join(home, 'cache'), ...args], {
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/** A self-signed certificate for 127.0.0.1 (openssl), as PEM, plus the CA file path. */
export function selfSignedCert(dir: string): Promise<{ key: string; cert: string; certFile: string }> {
  const keyFile = join(dir, 'tls.key');
  const certFile = join(dir, 'tls.crt');
  return new Promise((resolve, reject) => {
    execFile(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-keyout',
        keyFile,
        '-out',
        certFile,
        '-days',
        '1',
        '-subj',
        '/CN=weft-test-apiserver',
        '-addext',
        'subjectAltName=IP:127.0.0.1',
      ],
      { timeout: 10_000 },
      (err) => {
        if (err) {
          reject(new Error(`openssl failed: ${err.message}`));
          return;
        }
        resolve({ key: readFileSync(keyFile, 'utf8'), cert: readFileSync(certFile, 'utf8'), certFile });
      },
    );
  });
}

/** Polls `check` every 10 ms until it returns a value other than undefined, or throws after `ms`. */
export async function waitFor<T>(what: string, check: () => T | undefined, ms = 3000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
