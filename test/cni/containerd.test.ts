/**
 * weft-cni under a real runtime: a private containerd (temp root/state/socket, CRI plugin off,
 * started here and stopped by PID) runs a busybox image built here from Debian's
 * busybox-static with `ctr run --rm --cni` inside a node namespace. ctr only reads CNI files
 * from /etc/cni/net.d and /opt/cni/bin, so it runs in a private mount namespace where both are
 * overlays whose upper layers are temp dirs filled by installCni (the real /etc and /opt are
 * never written). weftd's subnet file is written by the test.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { installCni } from '../../src/daemon/install-cni.ts';
import { writeEmbeddedConfig } from '../../src/lease/embedded/store.ts';
import { NetnsRun, rootSnapshot } from '../../src/netns/netns.ts';
import type { SpawnedProcess } from '../../src/netns/netns.ts';
import { run as runCmd, runSync } from '../../src/util/exec.ts';
import { programCommand } from '../../src/util/self.ts';
import { REF_PLUGINS, SUBNET_ENV, buildBundle, callPlugin } from './helpers.ts';

const IMAGE = 'docker.io/weft/busybox:1';
const dir = mkdtempSync(join(tmpdir(), 'weft-cni-ctr-'));
const sock = join(dir, 'containerd.sock');
const subnetFile = join(dir, 'subnet.env');
const dataDir = join(dir, 'data');
const ipamDir = join(dir, 'ipam');
let run: NetnsRun;
let nodeNs = '';
let containerd: SpawnedProcess | undefined;
let rootBefore = '';
let bundle = '';

function sha256(path: string): { digest: string; size: number } {
  return {
    digest: `sha256:${createHash('sha256').update(readFileSync(path)).digest('hex')}`,
    size: statSync(path).size,
  };
}

/** An OCI image layout (one layer: /bin/busybox) as a tar that `ctr image import` reads. */
function buildImage(): string {
  const rootfs = join(dir, 'rootfs');
  for (const d of ['bin', 'proc', 'sys', 'dev', 'etc', 'tmp'])
    mkdirSync(join(rootfs, d), { recursive: true });
  copyFileSync('/bin/busybox', join(rootfs, 'bin/busybox'));
  const layout = join(dir, 'layout');
  const blobs = join(layout, 'blobs/sha256');
  mkdirSync(blobs, { recursive: true });
  const put = (path: string) => {
    const d = sha256(path);
    copyFileSync(path, join(blobs, d.digest.slice(7)));
    return d;
  };
  const layerTar = join(dir, 'layer.tar');
  runSync('tar', ['-C', rootfs, '-cf', layerTar, '.']);
  const layer = put(layerTar);
  const cfgPath = join(dir, 'config.json');
  writeFileSync(
    cfgPath,
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Env: ['PATH=/bin'], Cmd: ['/bin/busybox', 'sh'] },
      rootfs: { type: 'layers', diff_ids: [layer.digest] },
    }),
  );
  const cfg = put(cfgPath);
  const manPath = join(dir, 'manifest.json');
  writeFileSync(
    manPath,
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...cfg },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layer }],
    }),
  );
  const man = put(manPath);
  writeFileSync(
    join(layout, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          ...man,
          annotations: { 'io.containerd.image.name': IMAGE, 'org.opencontainers.image.ref.name': '1' },
        },
      ],
    }),
  );
  writeFileSync(join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  const tar = join(dir, 'image.tar');
  runSync('tar', ['-C', layout, '-cf', tar, 'oci-layout', 'index.json', 'blobs']);
  return tar;
}

function ctr(...args: string[]): Promise<string> {
  return runCmd('ctr', ['-a', sock, '-n', 'weft', ...args], { timeoutMs: 60_000 });
}

/** `ctr run --rm --cni` in the node namespace, with /etc/cni and /opt/cni from our temp dirs. */
function ctrRunCni(id: string, script: string, ns = nodeNs): Promise<string> {
  const mounts = ['etc', 'opt']
    .map(
      (d) =>
        `mount -t overlay overlay -o lowerdir=/${d},upperdir=${dir}/${d}-up,workdir=${dir}/${d}-work /${d}`,
    )
    .join(' && ');
  const ctrCmd = [
    `exec ip netns exec ${ns} ctr -a ${sock} -n weft run --rm --cni`,
    `--runc-root ${dir}/runc --fifo-dir ${dir}/fifo`,
    `${IMAGE} ${id} /bin/busybox sh -c "$0"`,
  ].join(' ');
  usedIds.push(id);
  return runCmd('unshare', ['-m', '--propagation', 'private', 'sh', '-c', `${mounts} && ${ctrCmd}`, script], {
    timeoutMs: 60_000,
  });
}

const usedIds: string[] = [];
const SHIM_SOCKETS = '/run/containerd/s';
const hadRunContainerd = existsSync('/run/containerd');

/**
 * containerd 1.6 puts shim sockets in /run/containerd/s (not configurable), named by the hash
 * of <address>/<namespace>/<id>; a shim killed in teardown leaves its socket. Remove ours, and
 * the directories if this test created them and they are empty.
 */
function removeShimLeftovers(): void {
  for (const id of usedIds) {
    const hash = createHash('sha256')
      .update(join(sock, 'weft', id))
      .digest('hex');
    rmSync(join(SHIM_SOCKETS, hash), { force: true });
  }
  if (!hadRunContainerd) {
    for (const d of [SHIM_SOCKETS, '/run/containerd']) {
      try {
        rmdirSync(d);
      } catch {
        /* not empty (someone else's) or gone */
      }
    }
  }
}

/** Shims of our containerd (found by our socket path in their command line), by PID. */
function killOurShims(): void {
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    let cmdline = '';
    try {
      cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (cmdline.startsWith('/usr/bin/containerd-shim') && cmdline.includes(sock)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
}

before(async () => {
  rootBefore = rootSnapshot();
  for (const d of ['etc-up', 'etc-work', 'opt-up', 'opt-work']) mkdirSync(join(dir, d));
  bundle = buildBundle(dir);
  installCni({
    binDir: join(dir, 'opt-up/cni/bin'),
    confDir: join(dir, 'etc-up/cni/net.d'),
    source: bundle,
    pluginConf: { subnetFile, dataDir, ipam: { dataDir: ipamDir } },
  });
  writeFileSync(subnetFile, SUBNET_ENV);
  run = new NetnsRun();
  nodeNs = await run.addNamespace('node');
  const cfg = join(dir, 'containerd.toml');
  writeFileSync(
    cfg,
    [
      'version = 2',
      `root = "${dir}/root"`,
      `state = "${dir}/state"`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      '[grpc]',
      `  address = "${sock}"`,
      '',
    ].join('\n'),
  );
  // Not under `ip netns exec`: that remounts /sys and runc then finds no cgroups. containerd
  // only listens on a unix socket in our temp dir; the containers get their own netns.
  containerd = run.track(spawn('containerd', ['--config', cfg], { stdio: ['ignore', 'pipe', 'pipe'] }));
  for (let i = 0; ; i++) {
    try {
      await ctr('version');
      break;
    } catch (err) {
      if (i > 100) throw new Error(`containerd did not start: ${containerd.output()}`, { cause: err });
      await sleep(50);
    }
  }
  await ctr('images', 'import', buildImage());
});

after(async () => {
  await containerd?.stop('SIGTERM', 3000);
  killOurShims();
  await run.destroy();
  removeShimLeftovers();
  for (const line of readFileSync('/proc/mounts', 'utf8').split('\n').reverse()) {
    const mnt = line.split(' ')[1];
    if (mnt?.startsWith(dir)) runSync('umount', ['-l', mnt]);
  }
  rmSync(dir, { recursive: true, force: true });
  assert.equal(rootSnapshot(), rootBefore, 'root namespace changed');
  assert.equal(existsSync('/etc/cni/net.d/10-weft.conflist'), false);
  assert.equal(existsSync('/opt/cni/bin/weft-cni'), false);
});

void test('ctr run --cni: the container gets an address from our subnet, reaches the gateway, and DEL cleans up', async () => {
  const out = await ctrRunCni(
    'weft-c1',
    '/bin/busybox ip -4 -o addr show eth0; /bin/busybox ip route; /bin/busybox ping -c 2 -W 2 10.244.3.1',
  );
  assert.match(out, /inet 10\.244\.3\.\d+\/24/, out);
  assert.match(out, /10\.244\.0\.0\/16 via 10\.244\.3\.1/, out);
  assert.match(out, /default via 10\.244\.3\.1/, out);
  assert.match(out, /2 packets transmitted, 2 packets received/, out);
  assert.match(await run.ip(nodeNs, '-o', 'addr', 'show', 'dev', 'cni0'), /inet 10\.244\.3\.1\/24/);
  // `run --rm` sent DEL: our saved state and host-local's address are gone.
  assert.deepEqual(existsSync(dataDir) ? readdirSync(dataDir) : [], []);
  assert.deepEqual(
    readdirSync(join(ipamDir, 'weft')).filter((f) => /^\d/.test(f)),
    [],
  );
  const ports = await run.ip(nodeNs, '-o', 'link', 'show', 'master', 'cni0');
  assert.equal(ports.trim(), '', 'the veth left the bridge');
});

void test('ctr run --cni without a subnet file fails with a message that points at weftd', async () => {
  rmSync(subnetFile);
  try {
    await assert.rejects(ctrRunCni('weft-c2', 'true'), /weftd/);
  } finally {
    writeFileSync(subnetFile, SUBNET_ENV);
    await ctr('task', 'rm', '-f', 'weft-c2').catch(() => '');
    await ctr('container', 'rm', 'weft-c2').catch(() => '');
  }
  assert.deepEqual(existsSync(dataDir) ? readdirSync(dataDir) : [], []);
});

void test('ctr run --cni: the container reaches a pod on another node (host-gw style routes between node namespaces)', async () => {
  // weftd is not used here: the two nodes' subnet files and the routes it would program are
  // written by the test, so what is exercised is weft-cni on both nodes under a real runtime.
  const nodeB = await run.addNamespace('node-b');
  await run.addVeth(nodeNs, 'und0', nodeB, 'und0');
  await run.ip(nodeNs, 'addr', 'add', '198.18.0.1/24', 'dev', 'und0');
  await run.ip(nodeB, 'addr', 'add', '198.18.0.2/24', 'dev', 'und0');
  await run.ip(nodeNs, 'route', 'add', '10.244.4.0/24', 'via', '198.18.0.2');
  await run.ip(nodeB, 'route', 'add', '10.244.3.0/24', 'via', '198.18.0.1');
  // The daemon masquerades (FLANNEL_IPMASQ=true), so the bridges must not: pod-to-pod keeps its source.
  writeFileSync(subnetFile, SUBNET_ENV.replace('FLANNEL_IPMASQ=false', 'FLANNEL_IPMASQ=true'));
  const subnetB = join(dir, 'subnet-b.env');
  writeFileSync(
    subnetB,
    'FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.4.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n',
  );
  const podB = await run.addNamespace('pod-b');
  const confB = {
    cniVersion: '1.0.0',
    name: 'weft',
    type: 'weft-cni',
    subnetFile: subnetB,
    dataDir: join(dir, 'data-b'),
    ipam: { dataDir: join(dir, 'ipam-b') },
  };
  const envB = {
    CNI_CONTAINERID: 'pod-b',
    CNI_NETNS: `/run/netns/${podB}`,
    CNI_IFNAME: 'eth0',
    CNI_PATH: REF_PLUGINS,
  };
  try {
    const add = await callPlugin(nodeB, [process.execPath, bundle], { ...envB, CNI_COMMAND: 'ADD' }, confB);
    assert.equal(add.code, 0, add.stdout + add.stderr);
    const addrB = String(
      ((add.json as Record<string, unknown>).ips as Record<string, unknown>[])[0]?.address,
    ).split('/')[0] as string;
    assert.match(addrB, /^10\.244\.4\.\d+$/);
    const out = await ctrRunCni(
      'weft-c3',
      `/bin/busybox ip -4 -o addr show eth0; /bin/busybox ping -c 2 -W 2 ${addrB}`,
    );
    assert.match(out, /inet 10\.244\.3\.\d+\/24/, out);
    assert.match(out, /2 packets transmitted, 2 packets received/, out);
    const del = await callPlugin(nodeB, [process.execPath, bundle], { ...envB, CNI_COMMAND: 'DEL' }, confB);
    assert.equal(del.code, 0, del.stdout + del.stderr);
  } finally {
    writeFileSync(subnetFile, SUBNET_ENV);
  }
});

async function until<T>(
  what: string,
  fn: () => T | undefined,
  procs: SpawnedProcess[],
  timeoutMs = 20_000,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > end) {
      throw new Error(
        `timed out waiting for ${what}\n${procs.map((p) => p.output().slice(-2000)).join('\n---\n')}`,
      );
    }
    await sleep(100);
  }
}

function subnetOf(file: string): string | undefined {
  try {
    return /^FLANNEL_SUBNET=(\S+)$/m.exec(readFileSync(file, 'utf8'))?.[1];
  } catch {
    return undefined;
  }
}

void test('with real weftd on two nodes (udp backend): the container reaches a pod on the other node', async () => {
  // Node A is the containerd node (its weftd writes the subnet file the installed conflist
  // names); node B gets a pod through weft-cni directly. weftd carries the traffic.
  const nodeB = await run.addNamespace('wd-b');
  // A fresh node A: cni0 in the first node namespace already has the other tests' subnet.
  const nodeA = await run.addNamespace('wd-a');
  await run.addVeth(nodeA, 'eth0', nodeB, 'eth0', 1500);
  await run.ip(nodeA, 'addr', 'add', '198.18.1.1/24', 'dev', 'eth0');
  await run.ip(nodeB, 'addr', 'add', '198.18.1.2/24', 'dev', 'eth0');
  const storeDir = join(dir, 'wd-store');
  await writeEmbeddedConfig(storeDir, { Network: '10.78.0.0/16', Backend: { Type: 'udp' } });
  const subnetB = join(dir, 'wd-b', 'subnet.env');
  rmSync(subnetFile);
  const { cmd, args } = programCommand('weftd');
  const weftd = (ns: string, name: string, file: string): SpawnedProcess =>
    run.spawn(ns, cmd, [
      ...args,
      '--lease-store=embedded',
      `--store-dir=${storeDir}`,
      `--subnet-file=${file}`,
      `--state-dir=${join(dir, name, 'state')}`,
      '--iface=eth0',
      '--ip-masq',
      '--log-level=warn',
    ]);
  const procs = [weftd(nodeA, 'wd-a', subnetFile), weftd(nodeB, 'wd-b', subnetB)];
  try {
    const subA = await until('subnet file of node A', () => subnetOf(subnetFile), procs);
    const subB = await until('subnet file of node B', () => subnetOf(subnetB), procs);
    assert.notEqual(subA, subB);
    const podB = await run.addNamespace('wd-pod-b');
    const confB = {
      cniVersion: '1.0.0',
      name: 'weft',
      type: 'weft-cni',
      subnetFile: subnetB,
      dataDir: join(dir, 'wd-data-b'),
      ipam: { dataDir: join(dir, 'wd-ipam-b') },
    };
    const envB = {
      CNI_CONTAINERID: 'wd-pod-b',
      CNI_NETNS: `/run/netns/${podB}`,
      CNI_IFNAME: 'eth0',
      CNI_PATH: REF_PLUGINS,
    };
    const add = await callPlugin(nodeB, [process.execPath, bundle], { ...envB, CNI_COMMAND: 'ADD' }, confB);
    assert.equal(add.code, 0, add.stdout + add.stderr);
    const addrB = String(
      ((add.json as Record<string, unknown>).ips as Record<string, unknown>[])[0]?.address,
    ).split('/')[0] as string;
    const prefixA = (subA.split('/')[0] as string).split('.').slice(0, 3).join('\\.');
    // Peers are learnt within a second or so; ping until the path is up.
    const script = `for i in 1 2 3 4 5 6 7 8 9 10; do /bin/busybox ping -c 1 -W 1 ${addrB} >/dev/null && break; done; /bin/busybox ip -4 -o addr show eth0; /bin/busybox ping -c 2 -W 2 ${addrB}`;
    const out = await ctrRunCni('weft-c4', script, nodeA);
    assert.match(out, new RegExp(`inet ${prefixA}\\.\\d+/24`), out);
    assert.match(out, /2 packets transmitted, 2 packets received/, out);
    const del = await callPlugin(nodeB, [process.execPath, bundle], { ...envB, CNI_COMMAND: 'DEL' }, confB);
    assert.equal(del.code, 0, del.stdout + del.stderr);
  } finally {
    await Promise.all(procs.map((p) => p.stop('SIGTERM', 5000)));
    writeFileSync(subnetFile, SUBNET_ENV);
  }
});
