/**
 * Installs weft's CNI plugin on a node, like flannel's install-cni init container: copies the
 * bundled plugin (dist/weft-cni.cjs, see scripts/build-cni.mjs) into the CNI bin dir as
 * `weft-cni` with a shebang naming this node binary, and writes a conflist (weft-cni, then
 * portmap) into the CNI conf dir. Both writes are atomic (temp file, fsync, rename) so a
 * runtime never reads half a file. weftd calls this when asked by a flag.
 */
import {
  chmodSync,
  statSync,
  writeFileSync,
  closeSync,
  fchmodSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { ConfigError } from '../util/errors.ts';
import { projectRoot } from '../util/self.ts';

export interface InstallCniOptions {
  /** CNI bin dir (default /opt/cni/bin). */
  binDir?: string;
  /** CNI conf dir (default /etc/cni/net.d). */
  confDir?: string;
  /** Conflist file name (default 10-weft.conflist; lowest name wins in most runtimes). */
  confName?: string;
  /** Network name in the conflist (default "weft"). */
  networkName?: string;
  /** cniVersion of the conflist (default 1.0.0, which libcni 1.0+ and containerd 1.6 accept). */
  cniVersion?: string;
  /** The bundled plugin, CommonJS (default <project>/dist/weft-cni.cjs from scripts/build-cni.mjs). */
  source?: string;
  /** Node binary named in the shebang (default: the one running now). */
  nodePath?: string;
  /**
   * Also copy the running node binary into the bin dir as `weft-cni-node` and name that in
   * the shebang, for hosts without Node.js (weftd in a container installing onto the host).
   */
  bundleNode?: boolean;
  /** The bin dir as the host sees it, for the shebang (default: binDir). */
  hostBinDir?: string;
  /** Extra keys for the weft-cni entry (subnetFile, dataDir, delegate, ipam). */
  pluginConf?: Record<string, unknown>;
  /** Add portmap after weft-cni (default true). */
  portmap?: boolean;
}

export interface InstalledCni {
  binary: string;
  conflist: string;
}

function writeAtomic(path: string, data: string, mode: number): void {
  const tmp = join(resolve(path, '..'), `.${basename(path)}.tmp-${process.pid}`);
  try {
    const fd = openSync(tmp, 'w', mode);
    try {
      writeSync(fd, data);
      fchmodSync(fd, mode); // the open mode is filtered by the umask
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      /* not created */
    }
    throw err;
  }
}

/** Name of the node binary copy that --cni-bundle-node puts next to the plugin. */
export const NODE_COPY = 'weft-cni-node';

/** Copies `src` to `dst` atomically (mode 0755) unless `dst` already has the same bytes. */
function copyIfChanged(src: string, dst: string): boolean {
  const data = readFileSync(src);
  try {
    const have = statSync(dst);
    if (have.size === data.length && readFileSync(dst).equals(data)) return false;
  } catch {
    /* not there yet */
  }
  const tmp = join(resolve(dst, '..'), `.${basename(dst)}.tmp-${process.pid}`);
  writeFileSync(tmp, data, { mode: 0o755 });
  chmodSync(tmp, 0o755);
  renameSync(tmp, dst);
  return true;
}

/** The conflist weft installs (pure; exported for tests and `weft` to print). */
export function renderConflist(opts: InstallCniOptions = {}): Record<string, unknown> {
  const plugins: Record<string, unknown>[] = [
    { type: 'weft-cni', delegate: { hairpinMode: true, isDefaultGateway: true }, ...(opts.pluginConf ?? {}) },
  ];
  if (opts.portmap ?? true) plugins.push({ type: 'portmap', capabilities: { portMappings: true } });
  return { name: opts.networkName ?? 'weft', cniVersion: opts.cniVersion ?? '1.0.0', plugins };
}

/** Copies the plugin and writes the conflist. Throws ConfigError when the bundle is missing. */
export function installCni(opts: InstallCniOptions = {}): InstalledCni {
  const binDir = opts.binDir ?? '/opt/cni/bin';
  const confDir = opts.confDir ?? '/etc/cni/net.d';
  const source = opts.source ?? resolve(projectRoot, 'dist/weft-cni.cjs');
  let code: string;
  try {
    code = readFileSync(source, 'utf8');
  } catch (err) {
    throw new ConfigError(
      'cni-source',
      `cannot read the bundled plugin ${source}; run "node scripts/build-cni.mjs" first`,
      {
        cause: err,
      },
    );
  }
  if (code.startsWith('#!')) code = code.slice(code.indexOf('\n') + 1);
  // The plugin never uses TLS: dropping NODE_EXTRA_CA_CERTS saves loading a CA bundle per pod.
  mkdirSync(binDir, { recursive: true, mode: 0o755 });
  let nodePath = opts.nodePath ?? process.execPath;
  if (opts.bundleNode) {
    copyIfChanged(process.execPath, join(binDir, NODE_COPY));
    nodePath = join(opts.hostBinDir ?? binDir, NODE_COPY);
  }
  const shebang = `#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS ${nodePath}\n`;
  mkdirSync(confDir, { recursive: true, mode: 0o755 });
  const binary = join(binDir, 'weft-cni');
  writeAtomic(binary, shebang + code, 0o755);
  const conflist = join(confDir, opts.confName ?? '10-weft.conflist');
  writeAtomic(conflist, JSON.stringify(renderConflist(opts), null, 2) + '\n', 0o644);
  return { binary, conflist };
}
