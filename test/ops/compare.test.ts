// `weft compare` end to end, small: direct routing and weft udp, 1-second throughput tests
// and 10 pings each. It must finish with exit 0, print a table with both rows and no
// failure, and write a well-formed SVG (checked by a strict little XML reader: balanced
// tags, quoted attributes, known entities) with bars, and JSON whose numbers are > 0.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { runWeft } from './helpers.ts';

interface XmlElement {
  readonly name: string;
  readonly attrs: Readonly<Record<string, string>>;
  readonly children: XmlElement[];
  text: string;
}

/** Parses a self-contained XML document (no DTD, no CDATA); throws on anything malformed. */
function parseXml(src: string): XmlElement {
  const checkText = (t: string, at: number): string => {
    for (const m of t.matchAll(/&([^;\s]*);?/g)) {
      if (!/^&(amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);$/.test(m[0]))
        throw new Error(`bad entity "${m[0]}" near offset ${at}`);
    }
    if (t.includes('<')) throw new Error(`stray "<" near offset ${at}`);
    return t;
  };
  let i = 0;
  const skipMisc = (): void => {
    for (;;) {
      while (i < src.length && /\s/.test(src[i] as string)) i++;
      if (src.startsWith('<?', i)) i = src.indexOf('?>', i) + 2;
      else if (src.startsWith('<!--', i)) i = src.indexOf('-->', i) + 3;
      else return;
      if (i < 2) throw new Error('unterminated prolog or comment');
    }
  };
  const NAME = /[A-Za-z_:][-A-Za-z0-9_:.]*/y;
  const readName = (): string => {
    NAME.lastIndex = i;
    const m = NAME.exec(src);
    if (!m) throw new Error(`expected a name at offset ${i}`);
    i = NAME.lastIndex;
    return m[0];
  };
  const element = (): XmlElement => {
    if (src[i] !== '<') throw new Error(`expected "<" at offset ${i}`);
    i++;
    const name = readName();
    const attrs: Record<string, string> = {};
    for (;;) {
      const ws = i;
      while (/\s/.test(src[i] ?? '')) i++;
      if (src.startsWith('/>', i)) {
        i += 2;
        return { name, attrs, children: [], text: '' };
      }
      if (src[i] === '>') {
        i++;
        break;
      }
      if (i === ws) throw new Error(`expected whitespace before an attribute at offset ${i}`);
      const an = readName();
      if (src[i] !== '=' || (src[i + 1] !== '"' && src[i + 1] !== "'"))
        throw new Error(`attribute ${an} of <${name}> is not quoted (offset ${i})`);
      const q = src[i + 1] as string;
      const end = src.indexOf(q, i + 2);
      if (end < 0) throw new Error(`unterminated attribute ${an}`);
      if (an in attrs) throw new Error(`duplicate attribute ${an} on <${name}>`);
      attrs[an] = checkText(src.slice(i + 2, end), i);
      i = end + 1;
    }
    const el: XmlElement = { name, attrs, children: [], text: '' };
    for (;;) {
      const lt = src.indexOf('<', i);
      if (lt < 0) throw new Error(`<${name}> is never closed`);
      el.text += checkText(src.slice(i, lt), i);
      i = lt;
      if (src.startsWith('</', i)) {
        i += 2;
        const close = readName();
        if (close !== name) throw new Error(`</${close}> closes <${name}> (offset ${i})`);
        while (/\s/.test(src[i] ?? '')) i++;
        if (src[i] !== '>') throw new Error(`expected ">" at offset ${i}`);
        i++;
        return el;
      }
      if (src.startsWith('<!--', i)) {
        const end = src.indexOf('-->', i);
        if (end < 0) throw new Error('unterminated comment');
        i = end + 3;
        continue;
      }
      el.children.push(element());
    }
  };
  skipMisc();
  const root = element();
  skipMisc();
  if (i !== src.length) throw new Error(`content after the root element at offset ${i}`);
  return root;
}

function all(el: XmlElement, name: string): XmlElement[] {
  return [...(el.name === name ? [el] : []), ...el.children.flatMap((c) => all(c, name))];
}

function textOf(el: XmlElement): string {
  return el.text + el.children.map(textOf).join('');
}

void test('the XML reader rejects what is not well formed', () => {
  assert.equal(parseXml('<a x="1"><b/>t &amp; u</a>').children.length, 1);
  for (const bad of ['<a><b></a>', '<a x=1/>', '<a>&nbsp;</a>', '<a/><b/>', '<a>x < y</a>', '<a']) {
    assert.throws(() => parseXml(bad), Error, bad);
  }
});

void test('weft compare --only direct,udp: table, SVG chart and JSON', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-ops-compare-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const svgPath = join(dir, 'chart.svg');
  const jsonPath = join(dir, 'results.json');
  const r = await runWeft(
    undefined,
    [
      'compare',
      '--only',
      'direct,udp',
      '--seconds',
      '1',
      '--pings',
      '10',
      '--chart',
      svgPath,
      '--json',
      jsonPath,
    ],
    { timeoutMs: 150_000 },
  );
  assert.equal(r.code, 0, `exit ${r.code}\n${r.stdout}\n${r.stderr}`);

  // The table: a header, both rows with numbers, nothing failed.
  const lines = r.stdout.split('\n');
  const header = lines.find((l) => l.startsWith('path'));
  assert.ok(header && /TCP Gbit\/s/.test(header) && /RTT p50/.test(header), r.stdout);
  const row = (name: string): string[] => {
    const line = lines.find((l) => l.startsWith(`${name} `));
    assert.ok(line, `a "${name}" row in:\n${r.stdout}`);
    return line
      .slice(name.length)
      .trim()
      .split(/\s{2,}/);
  };
  for (const name of ['direct routing', 'weft udp']) {
    const cells = row(name);
    assert.ok(Number(cells[0]) > 0, `${name}: TCP Gbit/s "${cells[0]}"`);
  }
  assert.doesNotMatch(r.stdout + r.stderr, /fail/i);
  assert.match(row('direct routing').join(' '), /\bkernel\b/, 'direct routing has no forwarder CPU');
  assert.match(row('weft udp').join(' '), /\b\d+%/, 'weft udp shows its forwarder CPU');

  // The chart: well-formed SVG, three panels of bars, both paths named.
  const svgText = readFileSync(svgPath, 'utf8');
  const svg = parseXml(svgText);
  assert.equal(svg.name, 'svg');
  assert.equal(svg.attrs.xmlns, 'http://www.w3.org/2000/svg');
  assert.ok(Number(svg.attrs.width) > 0 && Number(svg.attrs.height) > 0);
  const bars = all(svg, 'rect').filter((b) => b.attrs.width !== '100%');
  assert.equal(bars.length, 3 * 2, 'one bar per path in each of the 3 panels');
  for (const b of bars) assert.ok(Number(b.attrs.width) >= 1 && Number(b.attrs.height) > 0);
  const labels = all(svg, 'text').map(textOf);
  assert.equal(labels.filter((l) => l === 'direct routing').length, 3);
  assert.equal(labels.filter((l) => l === 'weft udp').length, 3);
  assert.ok(!labels.includes('failed'));

  // The JSON: both results, every measured number positive.
  const data = JSON.parse(readFileSync(jsonPath, 'utf8')) as {
    seconds: number;
    pings: number;
    results: Record<string, unknown>[];
  };
  assert.equal(data.seconds, 1);
  assert.equal(data.pings, 10);
  assert.deepEqual(
    data.results.map((x) => x.id),
    ['direct', 'udp'],
  );
  for (const res of data.results) {
    assert.equal(res.error, undefined, `${String(res.id)} failed: ${String(res.error)}`);
    for (const k of ['tcpGbps', 'rttP50Us', 'rttP99Us', 'smallPps', 'mtu'])
      assert.ok(typeof res[k] === 'number' && res[k] > 0, `${String(res.id)}.${k} = ${String(res[k])}`);
    assert.ok((res.rttP99Us as number) >= (res.rttP50Us as number));
  }
  const udp = data.results[1] as Record<string, number>;
  assert.equal(udp.overheadBytes, 28);
  assert.ok(udp.forwarderCpu !== undefined && udp.forwarderCpu > 0, 'weft udp: forwarder CPU measured');
});
