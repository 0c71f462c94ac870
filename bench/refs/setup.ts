/**
 * The benchmark's own setup: the outside tools it runs (wireguard-go and nebula as
 * reference overlays, sockperf, iperf3) are Debian packages; install the missing ones with
 * apt-get before measuring, so a fresh machine runs the bench without a manual step.
 * Packages already installed are left alone (no apt-get call at all when nothing is missing).
 */
import { execFileSync } from 'node:child_process';
import { distIsFresh, projectRoot } from '../../src/util/self.ts';

export const BENCH_PACKAGES = ['wireguard-go', 'wireguard-tools', 'nebula', 'sockperf', 'iperf3'] as const;

/** True when dpkg reports the package installed. */
export function packageInstalled(name: string): boolean {
  try {
    const out = execFileSync('dpkg-query', ['-W', '-f=${Status}', name], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    return out.includes('install ok installed');
  } catch {
    return false;
  }
}

/**
 * Installs whichever of BENCH_PACKAGES is missing; returns the names it installed.
 * Throws with apt-get's output when the install fails.
 */
export function ensureBenchPackages(log: (line: string) => void = () => undefined): string[] {
  const missing = BENCH_PACKAGES.filter((p) => !packageInstalled(p));
  if (missing.length === 0) return [];
  log(`bench: installing ${missing.join(' ')} (apt-get install -y)`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  try {
    execFileSync('apt-get', ['install', '-y', ...missing], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (first) {
    // A stale package index is the usual cause; refresh once and retry.
    try {
      execFileSync('apt-get', ['update'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      execFileSync('apt-get', ['install', '-y', ...missing], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      const e = err as { stderr?: Buffer; message: string };
      throw new Error(
        `bench: could not install ${missing.join(' ')}: ${e.stderr?.toString().trim() || e.message} ` +
          `(first attempt: ${(first as Error).message.split('\n')[0]}); install them by hand and rerun`,
      );
    }
  }
  const still = missing.filter((p) => !packageInstalled(p));
  if (still.length > 0) throw new Error(`bench: ${still.join(' ')} still missing after apt-get install`);
  return missing;
}

/**
 * The daemons a bench starts run as users run them: compiled (dist/, as bin/weftd.js does),
 * not under tsx, whose loader thread and esbuild service would share the machine's two CPUs
 * with the forwarders (measured here: ping p99 through weft udp 3.2-4.0 ms with weftd under
 * tsx, 1.7-1.8 ms compiled). Compiles dist/ first when it is older than the sources, unless
 * `build` is false (then the daemons run under tsx). Says which it is.
 */
export function useCompiledDaemons(
  log: (line: string) => void = () => undefined,
  opts: { readonly build?: boolean } = {},
): 'compiled' | 'tsx' {
  if (!distIsFresh()) {
    if (opts.build === false) return 'tsx';
    log('bench: dist/ is older than the sources: compiling it (npm run build)');
    execFileSync('npm', ['run', '--silent', 'build'], {
      cwd: projectRoot,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  }
  process.env.WEFT_SPAWN_FROM_DIST = '1';
  return 'compiled';
}
