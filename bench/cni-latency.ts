/**
 * CNI latency: ADD and DEL p50/p95 over N pods (default 100) for weft-cni (installed as the
 * runtime would run it: the bundled plugin with its shebang, delegating to bridge +
 * host-local) next to calling the reference bridge plugin directly with the same rendered
 * conf. The gap is weft-cni's own cost: node start-up, subnet file, saved state, one extra
 * exec. Also VERSION (pure start-up). Target: weft-cni ADD p50 < 150 ms. Rows marked [cpu]
 * are user+sys CPU time of the call's process tree (GNU time), which load does not inflate.
 *
 * Usage: node --import tsx bench/cni-latency.ts [pods]   (root; uses throwaway namespaces)
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
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
    // Separate pods (and bridge + subnet) for each side; calls are interleaved so that load
    // from other processes on the machine hits both sides alike.
    const podsOf = async (side: string): Promise<string[]> => {
      const out: string[] = [];
      for (let i = 0; i < pods; i++) out.push(`/run/netns/${await run.addNamespace(`${side}${i}`)}`);
      return out;
    };
    const weftPods = await podsOf('w');
    const directPods = await podsOf('d');

    const weftConf = {
      cniVersion: '1.0.0',
      name: 'weft',
      type: 'weft-cni',
      subnetFile,
      dataDir: join(dir, 'data'),
      ipam: { dataDir: join(dir, 'ipam') },
    };
    const bridgeConf = renderDelegate(
      parseNetConf(
        JSON.stringify({
          ...weftConf,
          delegate: { bridge: 'cni1' },
          ipam: { dataDir: join(dir, 'ipam-direct') },
        }),
      ),
      parseSubnetEnv(SUBNET_ENV.replace('10.244.3.1/24', '10.244.4.1/24')),
    );
    const cniPath = `${bin}:${REF_PLUGINS}`;
    const results: Record<string, number[]> = {};
    const rec = (k: string, ms: number) => (results[k] ??= []).push(ms);
    // CPU time (user + sys) of the whole process tree, from GNU time: unlike wall time it does
    // not grow when other work on the machine competes for the two cores.
    const cpuFile = join(dir, 'cpu.txt');
    const timed = async (argv: string[], env: NodeJS.ProcessEnv, conf: unknown) => {
      const r = await callPlugin(node, ['/usr/bin/time', '-f', '%U %S', '-o', cpuFile, ...argv], env, conf);
      const [u, sy] = readFileSync(cpuFile, 'utf8').trim().split('\n').at(-1)!.split(' ').map(Number);
      return { ...r, cpuMs: ((u ?? NaN) + (sy ?? NaN)) * 1000 };
    };
    const call = async (
      label: string,
      argv: string[],
      verb: string,
      i: number,
      netns: string,
      conf: unknown,
    ) => {
      const env = {
        CNI_COMMAND: verb,
        CNI_CONTAINERID: `${label === 'weft-cni' ? 'w' : 'd'}${i}`,
        CNI_NETNS: netns,
        CNI_IFNAME: 'eth0',
        CNI_PATH: cniPath,
      };
      const r = await timed(argv, env, conf);
      if (r.code !== 0) throw new Error(`${label} ${verb} pod ${i} failed: ${r.stdout} ${r.stderr}`);
      rec(`${label} ${verb}`, r.ms);
      rec(`${label} ${verb} [cpu]`, r.cpuMs);
    };

    for (let i = 0; i < 20; i++) {
      const v = await timed([binary], { CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}');
      rec('weft-cni VERSION', v.ms);
      rec('weft-cni VERSION [cpu]', v.cpuMs);
    }
    for (const verb of ['ADD', 'DEL']) {
      for (let i = 0; i < pods; i++) {
        await call(
          'bridge (direct)',
          [join(REF_PLUGINS, 'bridge')],
          verb,
          i,
          directPods[i] as string,
          bridgeConf,
        );
        await call('weft-cni', [binary], verb, i, weftPods[i] as string, weftConf);
      }
    }
    const load = loadavg()
      .map((l) => l.toFixed(1))
      .join(' ');
    console.log(
      `CNI latency over ${pods} pods (wall time per call, including 'ip netns exec'; load average ${load} on ${cpus().length} cores):`,
    );
    for (const [k, xs] of Object.entries(results)) console.log(row(k, xs));
    const cpuOver =
      pct(results['weft-cni ADD [cpu]'] ?? [], 50) - pct(results['bridge (direct) ADD [cpu]'] ?? [], 50);
    console.log(`weft-cni's own CPU per ADD (p50 difference): ${cpuOver.toFixed(1)} ms`);
    const addP50 = pct(results['weft-cni ADD'] ?? [], 50);
    const overhead = addP50 - pct(results['bridge (direct) ADD'] ?? [], 50);
    console.log(
      `weft-cni ADD p50 ${addP50.toFixed(1)} ms (${overhead.toFixed(1)} ms over bridge alone): ${addP50 < 150 ? 'meets' : 'MISSES'} the 150 ms target`,
    );
  } finally {
    await run.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
