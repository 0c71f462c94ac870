/**
 * `weft status`: this node's lease, peers/routes and counters, read from the daemon's
 * status endpoint (weftd --healthz-port; GET /status) and printed as readable tables.
 *
 *   weft status [--endpoint http://127.0.0.1:10266] [--json]
 *
 * The endpoint also comes from WEFT_ENDPOINT. `--json` prints the daemon's JSON unchanged.
 */
import type { CliIo } from './weft.ts';
import type { DaemonStatus } from '../daemon/daemon.ts';

export const DEFAULT_ENDPOINT = 'http://127.0.0.1:10266';

export function table(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [line(headers), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

/** Flattens nested counters into "a.b" -> number rows, skipping zeros unless `all`. */
export function flattenCounters(
  value: unknown,
  prefix = '',
  out: [string, number][] = [],
): [string, number][] {
  if (typeof value === 'number') out.push([prefix, value]);
  else if (Array.isArray(value)) value.forEach((v, i) => flattenCounters(v, `${prefix}[${i}]`, out));
  else if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) flattenCounters(v, prefix ? `${prefix}.${k}` : k, out);
  }
  return out;
}

function expiresIn(iso: string | null): string {
  if (!iso) return 'never';
  const ms = Date.parse(iso) - Date.now();
  if (!Number.isFinite(ms)) return iso;
  const m = Math.round(ms / 60_000);
  return ms < 0 ? `expired ${-m} min ago` : m >= 90 ? `in ${(m / 60).toFixed(1)} h` : `in ${m} min`;
}

/** Renders a daemon status as the text `weft status` prints. */
export function renderStatus(s: DaemonStatus): string {
  const parts: string[] = [];
  parts.push(
    table(
      ['node', ''],
      [
        ['state', `${s.state}${s.ready ? ' (ready)' : ` (not ready: ${s.reason ?? 'unknown'})`}`],
        ['store', s.store ?? '-'],
        ['network', s.network ?? '-'],
        ['backend', s.backend ?? '-'],
        ['underlay', s.underlay ? `${s.underlay.iface} ${s.underlay.addr} mtu ${s.underlay.mtu}` : '-'],
        ['subnet', s.lease?.subnet ?? '-'],
        ['public ip', s.lease?.publicIp ?? '-'],
        ['lease expires', s.lease ? expiresIn(s.lease.expiresAt) : '-'],
        ['pod mtu', s.mtu !== undefined ? String(s.mtu) : '-'],
        ['subnet file', `${s.subnetFile}${s.checks.subnetFileWritten ? '' : ' (not written)'}`],
      ],
    ),
  );
  parts.push(
    s.peers.length === 0
      ? 'routes: none (no peers yet)'
      : table(
          ['route (peer subnet)', 'via (peer public ip)', 'backend', 'backend data'],
          [...s.peers]
            .sort((a, b) => a.subnet.localeCompare(b.subnet, 'en', { numeric: true }))
            .map((p) => [p.subnet, p.publicIp, p.backendType, JSON.stringify(p.backendData ?? null)]),
        ),
  );
  const counters = flattenCounters({ daemon: s.counters, backend: s.backendStats }).filter(
    ([, v]) => v !== 0,
  );
  parts.push(
    counters.length === 0
      ? 'counters: all zero'
      : table(
          ['counter', 'value'],
          counters.map(([k, v]) => [k, String(v)]),
        ),
  );
  if (s.error) parts.push(`error: ${s.error}`);
  return `${parts.join('\n\n')}\n`;
}

export async function statusMain(args: string[], io: CliIo): Promise<number> {
  let endpoint = process.env.WEFT_ENDPOINT ?? DEFAULT_ENDPOINT;
  let json = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === '--json') json = true;
    else if (a === '--endpoint') endpoint = args[++i] ?? '';
    else if (a.startsWith('--endpoint=')) endpoint = a.slice('--endpoint='.length);
    else if (a === '--help' || a === '-h') {
      io.out(
        'Usage: weft status [--endpoint URL] [--json]\n  URL defaults to $WEFT_ENDPOINT or ' +
          DEFAULT_ENDPOINT,
      );
      return 0;
    } else {
      io.err(`weft status: unknown option ${a} (see weft status --help)`);
      return 2;
    }
  }
  let url: URL;
  try {
    url = new URL('/status', endpoint);
  } catch {
    io.err(`weft status: "${endpoint}" is not a URL (e.g. ${DEFAULT_ENDPOINT})`);
    return 2;
  }
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  } catch (err) {
    io.err(
      `weft status: cannot reach weftd at ${url.origin} (${(err as Error).message}). ` +
        'Is weftd running with --healthz-port on this node? Pass --endpoint or set WEFT_ENDPOINT.',
    );
    return 1;
  }
  const text = await res.text();
  if (!res.ok) {
    io.err(`weft status: ${url.href} answered ${res.status}: ${text.trim()}`);
    return 1;
  }
  if (json) {
    io.out(text);
    return 0;
  }
  io.out(renderStatus(JSON.parse(text) as DaemonStatus));
  return 0;
}
