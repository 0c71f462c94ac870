/**
 * The benchmark's own setup: the outside tools it runs (wireguard-go and nebula as
 * reference overlays, sockperf, iperf3) are Debian packages; install the missing ones with
 * apt-get before measuring, so a fresh machine runs the bench without a manual step.
 * Packages already installed are left alone (no apt-get call at all when nothing is missing).
 */
import { execFileSync } from 'node:child_process';

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
