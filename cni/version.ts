/**
 * CNI spec versions and result conversion. weft-cni speaks 0.3.0 .. 1.1.0; delegates (the
 * reference plugins) may support fewer (Debian's 1.1.1 plugins stop at 1.0.0), so results and
 * prevResults are converted between versions the way libcni's convert package does: 0.3.x/0.4.0
 * IP configs carry `version`, 1.x ones do not; everything else is the same shape.
 */
export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export const LATEST_VERSION = '1.1.0';

/** Compares dotted versions numerically; NaN parts compare as 0. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] || 0) - (pb[i] || 0);
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return 0;
}

export function versionAtLeast(v: string, min: string): boolean {
  return compareVersions(v, min) >= 0;
}

export function isSupported(v: string): boolean {
  return (SUPPORTED_VERSIONS as readonly string[]).includes(v);
}

/** Highest version in `theirs` that is <= `wanted` and one we also speak; undefined if none. */
export function negotiate(wanted: string, theirs: readonly string[]): string | undefined {
  let best: string | undefined;
  for (const v of theirs) {
    if (!isSupported(v) || compareVersions(v, wanted) > 0) continue;
    if (best === undefined || compareVersions(v, best) > 0) best = v;
  }
  return best;
}

type Json = Record<string, unknown>;

/**
 * Converts a CNI result (0.3.0+) to `to`. Returns a new object; the input is not changed.
 * 1.x drops `ips[].version`; 0.3.x/0.4.0 require it ("4" or "6", from the address).
 */
export function convertResult(result: Json, to: string): Json {
  const out: Json = { ...result, cniVersion: to };
  const ips = Array.isArray(result.ips) ? (result.ips as unknown[]) : undefined;
  if (ips) {
    const legacy = compareVersions(to, '1.0.0') < 0;
    out.ips = ips.map((ip) => {
      if (ip === null || typeof ip !== 'object') return ip;
      const copy: Json = { ...(ip as Json) };
      if (legacy) {
        const addr = typeof copy.address === 'string' ? copy.address : '';
        copy.version = addr.includes(':') ? '6' : '4';
      } else {
        delete copy.version;
      }
      return copy;
    });
  }
  return out;
}
