/**
 * CNI latency: ADD and DEL p50/p95 over N pods (default 100) for weft-cni (installed as the
 * runtime would run it: the bundled plugin with its shebang, delegating to bridge +
 * host-local) next to calling the reference bridge plugin directly with the same rendered
 * conf. The gap is weft-cni's own cost: node start-up, subnet file, saved state, one extra
 * exec. Also VERSION (pure start-up). Target: weft-cni ADD p50 < 150 ms.
 *
 * Usage: node --import tsx bench/cni-latency.ts [pods]   (root; uses throwaway namespaces)
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseNetConf, renderDelegate } from '../cni/conf.ts';
import { parseSubnetEnv } from '../cni/subnet-file.ts';
import { installCni } from '../src/daemon/install-cni.ts';
import { NetnsRun } from '../src/netns/netns.ts';
import { REF_PLUGINS, SUBNET_ENV, buildBundle, callPlugin } from '../test/cni/helpers.ts';

const pods = Number(process.argv[2] ?? 100);

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
}

function row(name: string, xs: number[]): string {
  return `${name.padEnd(28)} p50 ${pct(xs, 50).toFixed(1).padStart(7)} ms   p95 ${pct(xs, 95).toFixed(1).padStart(7)} ms   n=${xs.length}`;
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'weft-cni-bench-'));
  const run = new NetnsRun();
  try {
    const subnetFile = join(dir, 'subnet.env');
    writeFileSync(subnetFile, SUBNET_ENV);
    const bin = join(dir, 'bin');
    mkdirSync(bin);
    const { binary } = installCni({ binDir: bin, confDir: join(dir, 'net.d'), source: buildBundle(dir) });
    const node = await run.addNamespace('node');
    const nsPaths: string[] = [];
    for (let i = 0; i < pods; i++) nsPaths.push(`/run/netns/${await run.addNamespace(`p${i}`)}`);

    const weftConf = {
      cniVersion: '1.0.0',
      name: 'weft',
      type: 'weft-cni',
      subnetFile,
      dataDir: join(dir, 'data'),
      ipam: { dataDir: join(dir, 'ipam') },
    };
    const bridgeConf = renderDelegate(
      parseNetConf(JSON.stringify({ ...weftConf, ipam: { dataDir: join(dir, 'ipam-direct') } })),
      parseSubnetEnv(SUBNET_ENV),
    );
    const cniPath = `${bin}:${REF_PLUGINS}`;
    const results: Record<string, number[]> = {};
    const rec = (k: string, ms: number) => (results[k] ??= []).push(ms);

    for (let i = 0; i < 20; i++)
      rec(
        'weft-cni VERSION',
        (await callPlugin(node, [binary], { CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}')).ms,
      );

    for (const [label, argv, conf] of [
      ['bridge (direct)', [join(REF_PLUGINS, 'bridge')], bridgeConf],
      ['weft-cni', [binary], weftConf],
    ] as const) {
      for (const verb of ['ADD', 'DEL']) {
        for (const [i, netns] of nsPaths.entries()) {
          const env = {
            CNI_COMMAND: verb,
            CNI_CONTAINERID: `bench${i}`,
            CNI_NETNS: netns,
            CNI_IFNAME: 'eth0',
            CNI_PATH: cniPath,
          };
          const r = await callPlugin(node, [...argv], env, conf);
          if (r.code !== 0) throw new Error(`${label} ${verb} pod ${i} failed: ${r.stdout} ${r.stderr}`);
          rec(`${label} ${verb}`, r.ms);
        }
      }
    }
    console.log(`CNI latency over ${pods} pods (each call includes 'ip netns exec'):`);
    for (const [k, xs] of Object.entries(results)) console.log(row(k, xs));
    const addP50 = pct(results['weft-cni ADD'] ?? [], 50);
    console.log(
      `weft-cni ADD p50 ${addP50.toFixed(1)} ms: ${addP50 < 150 ? 'meets' : 'MISSES'} the 150 ms target`,
    );
  } finally {
    await run.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
