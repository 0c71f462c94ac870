/**
 * A self-contained SVG chart of a comparison: one panel of horizontal bars per metric
 * (TCP throughput, ping RTT p50 with the p99 as a whisker, small-packet rate; TCP with 4
 * streams and UDP request/response RTT when measured), one bar per path. Opens in any
 * browser; no dependencies.
 */
import type { PathResult } from './measure.ts';

interface Panel {
  readonly title: string;
  readonly unit: string;
  readonly value: (r: PathResult) => number | undefined;
  readonly whisker?: (r: PathResult) => number | undefined;
  readonly color: string;
  readonly digits: number;
  /** Drawn only when some result has a value (fields only bench/run.ts measures). */
  readonly optional?: boolean;
}

const PANELS: readonly Panel[] = [
  {
    title: 'TCP throughput, 1 stream (higher is better)',
    unit: 'Gbit/s',
    value: (r) => r.tcpGbps,
    color: '#3b7dd8',
    digits: 2,
  },
  {
    title: 'TCP throughput, 4 streams (higher is better)',
    unit: 'Gbit/s',
    value: (r) => r.tcp4Gbps,
    color: '#2a5ca8',
    digits: 2,
    optional: true,
  },
  {
    title: 'Ping RTT p50, whisker to p99 (lower is better)',
    unit: 'µs',
    value: (r) => r.rttP50Us,
    whisker: (r) => r.rttP99Us,
    color: '#e08a1e',
    digits: 0,
  },
  {
    title: 'UDP request/response RTT p50, whisker to p99 (lower is better)',
    unit: 'µs',
    value: (r) => r.udpRttP50Us,
    whisker: (r) => r.udpRttP99Us,
    color: '#c0602a',
    digits: 0,
    optional: true,
  },
  {
    title: '64-byte UDP packets received per second (higher is better)',
    unit: 'kpps',
    value: (r) => (r.smallPps !== undefined ? r.smallPps / 1000 : undefined),
    color: '#3a9e5c',
    digits: 0,
  },
];

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

export function renderChart(results: readonly PathResult[], title = 'weft compare'): string {
  const labelW = 200;
  const barW = 420;
  const rowH = 22;
  const panelGap = 46;
  const width = labelW + barW + 170;
  const parts: string[] = [];
  let y = 40;
  parts.push(
    `<text x="${width / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">${esc(title)}</text>`,
  );
  const panels = PANELS.filter((p) => !p.optional || results.some((r) => p.value(r) !== undefined));
  for (const panel of panels) {
    const vals = results.map((r) => Math.max(panel.value(r) ?? 0, panel.whisker?.(r) ?? 0));
    const max = Math.max(1e-9, ...vals);
    parts.push(`<text x="10" y="${y + 14}" font-size="13" font-weight="bold">${esc(panel.title)}</text>`);
    y += 24;
    for (const r of results) {
      const v = panel.value(r);
      parts.push(
        `<text x="${labelW - 8}" y="${y + 15}" text-anchor="end" font-size="12">${esc(r.name)}</text>`,
      );
      if (v === undefined || r.error) {
        parts.push(
          `<text x="${labelW + 4}" y="${y + 15}" font-size="12" fill="#b00">${esc(r.error ? 'failed' : 'n/a')}</text>`,
        );
      } else {
        const w = Math.max(1, (v / max) * barW);
        parts.push(
          `<rect x="${labelW}" y="${y + 3}" width="${w.toFixed(1)}" height="${rowH - 6}" fill="${panel.color}"/>`,
        );
        const wv = panel.whisker?.(r);
        if (wv !== undefined) {
          const x2 = labelW + (wv / max) * barW;
          parts.push(
            `<line x1="${labelW + w}" y1="${y + rowH / 2}" x2="${x2.toFixed(1)}" y2="${y + rowH / 2}" stroke="#555"/>` +
              `<line x1="${x2.toFixed(1)}" y1="${y + 6}" x2="${x2.toFixed(1)}" y2="${y + rowH - 6}" stroke="#555"/>`,
          );
        }
        const labelX = labelW + Math.max(w, wv !== undefined ? (wv / max) * barW : 0) + 6;
        parts.push(
          `<text x="${labelX.toFixed(1)}" y="${y + 15}" font-size="11">${esc(
            wv !== undefined
              ? `p50 ${v.toFixed(panel.digits)} / p99 ${wv.toFixed(panel.digits)} ${panel.unit}`
              : `${v.toFixed(panel.digits)} ${panel.unit}`,
          )}</text>`,
        );
      }
      y += rowH;
    }
    y += panelGap - 24;
  }
  const height = y + 10;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    ...parts,
    '</svg>',
    '',
  ].join('\n');
}
