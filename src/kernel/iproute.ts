/**
 * IpRouteKernel: KernelNet through iproute2. Reads with `ip -json` / `bridge -json`, writes
 * with `ip -batch -` / `bridge -batch -` (one process per run of same-tool operations, not
 * one per operation), optionally inside a named network namespace (`ip -n <ns>`).
 *
 * Failures raise KernelError naming the exact command that failed and the kernel's answer.
 * Deletes run with -force and ignore "already gone" answers, so removal is idempotent.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { tryParseIpv4, parseCidr } from '../routing/ipv4.ts';
import { KernelError } from '../util/errors.ts';
import { run } from '../util/exec.ts';
import type {
  FdbSpec,
  IfAddr,
  KernelNet,
  KernelOp,
  LinkInfo,
  NeighSpec,
  OpTool,
  RouteSpec,
} from './kernel.ts';
import { isDelete, normalizeMac, renderOp } from './kernel.ts';

export interface IpRouteKernelOptions {
  /** Network namespace to act in (name under /run/netns); default: the current one. */
  readonly netns?: string;
  readonly timeoutMs?: number;
}

/** Kernel answers that mean "the thing to delete is already gone". */
const GONE_RE =
  /No such file or directory|No such process|Cannot find device|Cannot assign requested address|Address not found|does not exist/;

interface RawResult {
  code: number;
  stdout: string;
  stderr: string;
}

function exec(
  cmd: string,
  args: readonly string[],
  input: string | undefined,
  timeoutMs: number,
): Promise<RawResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err && typeof (err as NodeJS.ErrnoException).code === 'string') {
          reject(
            new KernelError(`${cmd} could not be started (${err.message}); is iproute2 installed?`, {
              cause: err,
            }),
          );
          return;
        }
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
    // The tool may exit before reading stdin (e.g. a failed read): ignore EPIPE there.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(input ?? '');
  });
}

interface JsonLink {
  ifname: string;
  ifindex: number;
  mtu: number;
  txqlen?: number;
  flags?: string[];
  address?: string;
  linkinfo?: {
    info_kind?: string;
    info_data?: { id?: number; local?: string; link?: string; port?: number; learning?: boolean };
  };
}

function toLink(j: JsonLink): LinkInfo {
  const kind = j.linkinfo?.info_kind;
  const d = j.linkinfo?.info_data;
  const local = d?.local !== undefined ? tryParseIpv4(d.local) : undefined;
  return {
    name: j.ifname,
    index: j.ifindex,
    mtu: j.mtu,
    up: (j.flags ?? []).includes('UP'),
    mac: normalizeMac(j.address ?? '') ?? '',
    ...(j.txqlen !== undefined ? { txqueuelen: j.txqlen } : {}),
    ...(kind !== undefined ? { kind } : {}),
    ...(kind === 'vxlan' && d
      ? {
          vxlan: {
            vni: d.id ?? 0,
            ...(local !== undefined ? { local } : {}),
            ...(d.link !== undefined ? { dev: d.link } : {}),
            port: d.port ?? 0,
            learning: d.learning ?? true,
          },
        }
      : {}),
  };
}

export class IpRouteKernel implements KernelNet {
  readonly netns: string | undefined;
  private readonly timeoutMs: number;

  constructor(opts: IpRouteKernelOptions = {}) {
    this.netns = opts.netns;
    this.timeoutMs = opts.timeoutMs ?? 30_000;
  }

  private args(rest: readonly string[]): string[] {
    return this.netns ? ['-n', this.netns, ...rest] : [...rest];
  }

  private async json<T>(tool: OpTool, rest: readonly string[]): Promise<T[]> {
    const out = await run(tool, this.args(['-json', ...rest]), { timeoutMs: this.timeoutMs });
    const text = out.trim();
    if (text === '') return [];
    try {
      return JSON.parse(text) as T[];
    } catch (err) {
      throw new KernelError(
        `${tool} ${rest.join(' ')}: unparsable JSON output; is iproute2 >= 4.14 installed?`,
        {
          cause: err,
        },
      );
    }
  }

  async vxlanAvailable(): Promise<boolean> {
    if (existsSync('/sys/module/vxlan')) return true;
    try {
      await run('modprobe', ['-q', 'vxlan'], { timeoutMs: 10_000 });
      return existsSync('/sys/module/vxlan');
    } catch {
      return false;
    }
  }

  async getLink(name: string): Promise<LinkInfo | undefined> {
    const res = await exec(
      'ip',
      this.args(['-d', '-json', 'link', 'show', 'dev', name]),
      undefined,
      this.timeoutMs,
    );
    if (res.code !== 0) {
      if (/does not exist|Cannot find device/.test(res.stderr)) return undefined;
      throw new KernelError(`ip link show dev ${name} failed: ${res.stderr.trim()}`);
    }
    const arr = JSON.parse(res.stdout) as JsonLink[];
    return arr[0] ? toLink(arr[0]) : undefined;
  }

  async listLinks(): Promise<LinkInfo[]> {
    return (await this.json<JsonLink>('ip', ['-d', 'link', 'show'])).map(toLink);
  }

  async listAddrs(dev: string): Promise<IfAddr[]> {
    const links = await this.json<{ addr_info?: { family: string; local: string; prefixlen: number }[] }>(
      'ip',
      ['-4', 'addr', 'show', 'dev', dev],
    );
    const out: IfAddr[] = [];
    for (const l of links) {
      for (const a of l.addr_info ?? []) {
        const addr = a.family === 'inet' ? tryParseIpv4(a.local) : undefined;
        if (addr !== undefined) out.push({ addr, prefix: a.prefixlen });
      }
    }
    return out;
  }

  async listRoutes(dev?: string): Promise<RouteSpec[]> {
    const rows = await this.json<{ dst: string; gateway?: string; dev?: string; flags?: string[] }>('ip', [
      '-4',
      'route',
      'show',
      ...(dev !== undefined ? ['dev', dev] : []),
    ]);
    const out: RouteSpec[] = [];
    for (const r of rows) {
      const dstText = r.dst === 'default' ? '0.0.0.0/0' : r.dst.includes('/') ? r.dst : `${r.dst}/32`;
      let dst;
      try {
        dst = parseCidr(dstText, 'route', true);
      } catch {
        continue;
      }
      const via = r.gateway !== undefined ? tryParseIpv4(r.gateway) : undefined;
      const rdev = r.dev ?? dev;
      out.push({
        dst,
        ...(via !== undefined ? { via } : {}),
        ...(rdev !== undefined ? { dev: rdev } : {}),
        ...((r.flags ?? []).includes('onlink') ? { onlink: true } : {}),
      });
    }
    return out;
  }

  async listNeighs(dev: string): Promise<NeighSpec[]> {
    const rows = await this.json<{ dst: string; lladdr?: string }>('ip', ['-4', 'neigh', 'show', 'dev', dev]);
    const out: NeighSpec[] = [];
    for (const r of rows) {
      const addr = tryParseIpv4(r.dst);
      const mac = r.lladdr !== undefined ? normalizeMac(r.lladdr) : undefined;
      if (addr !== undefined && mac !== undefined) out.push({ addr, lladdr: mac, dev });
    }
    return out;
  }

  async listFdb(dev: string): Promise<FdbSpec[]> {
    const rows = await this.json<{ mac: string; dst?: string }>('bridge', ['fdb', 'show', 'dev', dev]);
    const out: FdbSpec[] = [];
    for (const r of rows) {
      const dst = r.dst !== undefined ? tryParseIpv4(r.dst) : undefined;
      const mac = normalizeMac(r.mac);
      if (dst !== undefined && mac !== undefined && mac !== '00:00:00:00:00:00') out.push({ mac, dev, dst });
    }
    return out;
  }

  async apply(ops: readonly KernelOp[]): Promise<void> {
    let i = 0;
    while (i < ops.length) {
      const first = renderOp(ops[i] as KernelOp);
      const del = isDelete(ops[i] as KernelOp);
      const lines: string[] = [first.line];
      let j = i + 1;
      while (j < ops.length) {
        const op = ops[j] as KernelOp;
        const r = renderOp(op);
        if (r.tool !== first.tool || isDelete(op) !== del) break;
        lines.push(r.line);
        j++;
      }
      await this.runBatch(first.tool, lines, del);
      i = j;
    }
  }

  private async runBatch(tool: OpTool, lines: readonly string[], deletes: boolean): Promise<void> {
    if (tool === 'sysctl') {
      // sysctl has no batch mode and no -n: one call per setting, inside the netns if any.
      for (const line of lines) {
        const args = ['-q', ...line.split(' ')];
        const res = this.netns
          ? await exec('ip', ['netns', 'exec', this.netns, 'sysctl', ...args], undefined, this.timeoutMs)
          : await exec('sysctl', args, undefined, this.timeoutMs);
        if (res.code !== 0) {
          throw new KernelError(`"sysctl ${line}" failed: ${res.stderr.trim() || `exit ${res.code}`}`);
        }
      }
      return;
    }
    const flags = deletes ? ['-force', '-batch', '-'] : ['-batch', '-'];
    const res = await exec(tool, this.args(flags), lines.join('\n') + '\n', this.timeoutMs);
    if (res.code === 0) return;
    const where = this.netns ? ` (netns ${this.netns})` : '';
    if (deletes) {
      // With -force every line ran; fail only on answers other than "already gone".
      const errs = res.stderr
        .split('\n')
        .map((l) => l.trim())
        .filter((l) => l !== '' && !/^Command failed/.test(l) && !GONE_RE.test(l));
      if (errs.length === 0) return;
      throw new KernelError(`${tool} -batch${where} failed on [${lines.join('; ')}]: ${errs.join('; ')}`);
    }
    const m = /Command failed -:(\d+)/.exec(res.stderr);
    const failed = m ? lines[Number(m[1]) - 1] : undefined;
    const answer = res.stderr
      .split('\n')
      .filter((l) => l.trim() !== '' && !/^Command failed/.test(l))
      .join('; ');
    throw new KernelError(
      `"${tool} ${failed ?? lines.join('; ')}"${where} failed: ${answer || `exit code ${res.code}`}`,
    );
  }
}
