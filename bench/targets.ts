/**
 * The data-path targets of issues #2 and #6, checked against one bench run's medians.
 * A row missing from the run (or failed) leaves its targets "not measured"; the latency
 * targets also show the one-packet C forwarder's distance from kernel VXLAN, which is what
 * any userspace process hop costs on the machine the run was on.
 */

/** The figures the targets read. */
export type TargetFigure =
  | 'tcpGbps'
  | 'tcp4Gbps'
  | 'smallPps'
  | 'smallDeliveredPps'
  | 'smallAtRateLossPct'
  | 'rttP50Us'
  | 'udpRttP50Us';

/** A row's median for a figure, or undefined when the row is missing, failed or lacks it. */
export type FigureLookup = (rowId: string, figure: TargetFigure) => number | undefined;

export interface TargetCheck {
  readonly target: string;
  readonly measured: string;
  readonly met: boolean | undefined;
  /** What the same figure is for another row of the run, to read the verdict by. */
  readonly context?: string;
}

/** The row the ratios divide by. */
export const TARGET_REFERENCE = 'kernel-vxlan';

export function targetChecks(fig: FigureLookup): TargetCheck[] {
  const ref = TARGET_REFERENCE;
  const out: TargetCheck[] = [];
  const ratioCheck = (target: string, a: number | undefined, b: number | undefined, min: number): void => {
    const r = a !== undefined && b ? a / b : undefined;
    out.push({
      target,
      measured: r === undefined ? '-' : `${r.toFixed(2)}x`,
      met: r === undefined ? undefined : r >= min,
    });
  };
  // The best of several rows of one backend (its options), or undefined when none ran.
  const best = (ids: readonly string[], f: TargetFigure): number | undefined =>
    Math.max(...ids.map((id) => fig(id, f) ?? 0)) || undefined;
  const kTcp = fig(ref, 'tcpGbps');
  // The default rows (tunnel GSO on): what a node runs unless told otherwise.
  const udp1 = fig('udp', 'tcpGbps');
  ratioCheck('weft udp TCP 1 stream >= 0.8x kernel VXLAN (#2)', udp1, kTcp, 0.8);
  ratioCheck('weft udp TCP 1 stream >= 1.0x kernel VXLAN (#6)', udp1, kTcp, 1.0);
  ratioCheck(
    'weft vxlan (userspace) TCP 1 stream >= 1.0x kernel VXLAN (#6)',
    fig('vxlan-user', 'tcpGbps'),
    kTcp,
    1.0,
  );
  ratioCheck(
    'weft udp TCP 1 stream >= 8x the C udp proxy (#6)',
    fig('udp', 'tcpGbps'),
    fig('udp-proxy', 'tcpGbps'),
    8,
  );
  ratioCheck(
    'weft udp TCP 4 streams (best of 1/2 workers) >= 0.75x kernel VXLAN (#6)',
    best(['udp', 'udp-w2'], 'tcp4Gbps'),
    fig(ref, 'tcp4Gbps'),
    0.75,
  );
  // Two readings of "forwarded packets/s": what the receiving program read, and what the
  // path handed to the receiving pod (read or dropped at its full socket). They differ when
  // the unthrottled sender and both nodes leave the receiving program short of CPU.
  ratioCheck(
    'weft udp 64-byte packets/s read by the receiving pod >= kernel VXLAN (#6)',
    fig('udp', 'smallPps'),
    fig(ref, 'smallPps'),
    1,
  );
  ratioCheck(
    'weft udp 64-byte packets/s delivered to the receiving pod >= kernel VXLAN (#6)',
    fig('udp', 'smallDeliveredPps'),
    fig(ref, 'smallDeliveredPps'),
    1,
  );
  const loss = fig('udp', 'smallAtRateLossPct');
  out.push({
    target: "weft udp loses no 64-byte packets at kernel VXLAN's rate (#6)",
    measured: loss === undefined ? '-' : `${loss.toFixed(2)}% lost`,
    met: loss === undefined ? undefined : loss === 0,
  });
  for (const [label, f] of [
    ['ping', 'rttP50Us'],
    ['UDP request/response', 'udpRttP50Us'],
  ] as const) {
    const w = fig('udp', f);
    const k = fig(ref, f);
    const d = w !== undefined && k !== undefined ? w - k : undefined;
    const c = fig('udp-proxy', f);
    out.push({
      target: `weft udp ${label} p50 <= kernel VXLAN + 50 µs (#6)`,
      measured: d === undefined ? '-' : `${signed(d)} µs`,
      met: d === undefined ? undefined : d <= 50,
      ...(c !== undefined && k !== undefined ? { context: `the C udp proxy: ${signed(c - k)} µs` } : {}),
    });
  }
  return out;
}

function signed(x: number): string {
  const r = Math.round(x);
  return r >= 0 ? `+${r}` : `${r}`;
}

export function renderTargets(checks: readonly TargetCheck[]): string {
  const w = Math.max(...checks.map((c) => c.target.length));
  return checks
    .map((c) => {
      const verdict = c.met === undefined ? 'not measured' : c.met ? 'met' : 'NOT met';
      return `${c.target.padEnd(w)}  ${c.measured.padEnd(12)}  ${verdict.padEnd(12)}  ${c.context ?? ''}`.trimEnd();
    })
    .join('\n');
}
