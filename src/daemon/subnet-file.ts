/**
 * flannel's subnet file (subnet.env): how the CNI plugin learns this node's subnet and MTU,
 * and how a restarted daemon asks for the same subnet again.
 *
 * Written atomically (temp file in the same directory, fsync, rename, fsync of the
 * directory; mode 0644) so a CNI ADD never reads half a file. Read tolerantly (comments,
 * blank lines, quotes, `export`, unknown keys), but a file that has no usable
 * FLANNEL_SUBNET is an error naming the file: the daemon then warns and ignores it.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Ipv4Cidr } from '../routing/ipv4.ts';
import { cidr, formatCidr, formatIpv4, parseCidr, tryParseIpv4 } from '../routing/ipv4.ts';
import { ConfigError, WeftError } from '../util/errors.ts';

export interface SubnetFileContent {
  /** FLANNEL_NETWORK */
  readonly network: Ipv4Cidr;
  /** Our subnet (network address form); written as FLANNEL_SUBNET = first usable address/len. */
  readonly subnet: Ipv4Cidr;
  readonly mtu: number;
  readonly ipMasq: boolean;
}

/** A subnet file exists but cannot be used. */
export class SubnetFileError extends WeftError {
  readonly path: string;
  constructor(path: string, message: string, options?: { cause?: unknown }) {
    super('WEFT_SUBNET_FILE', `${path}: ${message}`, options);
    this.path = path;
  }
}

/** The file's text (keys in flannel's order). */
export function formatSubnetFile(c: SubnetFileContent): string {
  return (
    `FLANNEL_NETWORK=${formatCidr(c.network)}\n` +
    `FLANNEL_SUBNET=${formatIpv4((c.subnet.addr + 1) >>> 0)}/${c.subnet.prefix}\n` +
    `FLANNEL_MTU=${c.mtu}\n` +
    `FLANNEL_IPMASQ=${c.ipMasq ? 'true' : 'false'}\n`
  );
}

/** Writes the subnet file atomically with mode 0644. */
export async function writeSubnetFile(path: string, c: SubnetFileContent): Promise<void> {
  const dir = dirname(path);
  try {
    await mkdir(dir, { recursive: true, mode: 0o755 });
  } catch (err) {
    throw new ConfigError('subnet-file', `cannot create directory ${dir}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}`);
  try {
    const fh = await open(tmp, 'wx', 0o644);
    try {
      await fh.writeFile(formatSubnetFile(c));
      await fh.chmod(0o644); // umask may have narrowed it
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw new ConfigError('subnet-file', `cannot write ${path}: ${(err as Error).message}`, { cause: err });
  }
  // Make the rename itself durable.
  try {
    const d = await open(dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch {
    /* some filesystems refuse fsync on directories; the rename is still atomic */
  }
}

/** Parses subnet-file text; `path` is for messages. */
export function parseSubnetFile(text: string, path = 'subnet file'): SubnetFileContent {
  const kv = new Map<string, string>();
  for (const rawLine of text.split(/\r?\n/)) {
    const line = rawLine.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(line);
    if (!m) continue;
    let v = (m[2] as string).replace(/\s+#.*$/, '').trim();
    if (v.length >= 2 && (v[0] === '"' || v[0] === "'") && v[v.length - 1] === v[0]) v = v.slice(1, -1);
    kv.set(m[1] as string, v);
  }
  const subnetText = kv.get('FLANNEL_SUBNET');
  if (subnetText === undefined) throw new SubnetFileError(path, 'has no FLANNEL_SUBNET line');
  let subnet: Ipv4Cidr;
  try {
    const withHost = parseCidr(subnetText, 'FLANNEL_SUBNET', true);
    const slash = subnetText.indexOf('/');
    const host = tryParseIpv4(subnetText.slice(0, slash)) as number;
    subnet = cidr(host, withHost.prefix);
  } catch (err) {
    throw new SubnetFileError(path, `FLANNEL_SUBNET="${subnetText}" is not a.b.c.d/len`, { cause: err });
  }
  let network: Ipv4Cidr = subnet;
  const netText = kv.get('FLANNEL_NETWORK');
  if (netText !== undefined) {
    try {
      network = parseCidr(netText, 'FLANNEL_NETWORK', true);
    } catch (err) {
      throw new SubnetFileError(path, `FLANNEL_NETWORK="${netText}" is not a.b.c.d/len`, { cause: err });
    }
  }
  const mtuText = kv.get('FLANNEL_MTU');
  const mtu = mtuText !== undefined && /^\d+$/.test(mtuText) ? Number(mtuText) : 0;
  const ipMasq = (kv.get('FLANNEL_IPMASQ') ?? 'false').toLowerCase() === 'true';
  return { network, subnet, mtu, ipMasq };
}

/** Reads the subnet file; undefined when it does not exist, SubnetFileError when unusable. */
export async function readSubnetFile(path: string): Promise<SubnetFileContent | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new SubnetFileError(path, `cannot be read: ${(err as Error).message}`, { cause: err });
  }
  return parseSubnetFile(text, path);
}

/** Removes the subnet file (ignores a missing one). */
export async function removeSubnetFile(path: string): Promise<void> {
  await unlink(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
}
