/**
 * The CNI commands of weft-cni. `runPlugin` takes the whole world (environment, stdin, how to
 * exec delegates) and returns what to print and the exit code, so tests drive it in-process
 * and main.ts stays a few lines. Nothing here calls process.exit.
 *
 * ADD renders the delegate conf from the subnet file, saves it (for DEL/CHECK/GC), then
 * delegates; a failed delegate ADD is undone with a delegate DEL. DEL uses the saved conf and
 * succeeds when it is already gone. CHECK, STATUS and GC are delegated as well (flannel's
 * plugin does neither CHECK nor GC); GC also DELs our own stale attachments, which is what
 * releases addresses with delegates too old to know GC.
 */
import { existsSync, unlinkSync } from 'node:fs';
import { formatCidr } from '../src/routing/ipv4.ts';
import { parseNetConf, renderDelegate, sniffVersion } from './conf.ts';
import type { WeftNetConf } from './conf.ts';
import { Delegate, execProgram } from './delegate.ts';
import type { Exec } from './delegate.ts';
import { CniCode, CniError, errorJson } from './errors.ts';
import {
  attachmentExists,
  listAttachments,
  loadAttachment,
  removeAttachment,
  saveAttachment,
} from './store.ts';
import { readSubnetEnv } from './subnet-file.ts';
import { LATEST_VERSION, SUPPORTED_VERSIONS, versionAtLeast } from './version.ts';

type Json = Record<string, unknown>;

export interface PluginIo {
  env: NodeJS.ProcessEnv;
  stdin: string;
  /** How delegates are run (tests may wrap it); defaults to spawning the binary. */
  exec?: Exec;
}

export interface PluginOutcome {
  exitCode: number;
  stdout: string;
  stderr: string;
}

const CONTAINER_ID_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

function need(env: NodeJS.ProcessEnv, key: string): string {
  const v = env[key];
  if (v === undefined || v === '') {
    throw new CniError(
      CniCode.InvalidEnv,
      `${key} is not set; weft-cni must be run by a container runtime (CNI spec)`,
    );
  }
  return v;
}

function containerId(env: NodeJS.ProcessEnv): string {
  const id = need(env, 'CNI_CONTAINERID');
  if (!CONTAINER_ID_RE.test(id)) {
    throw new CniError(
      CniCode.InvalidEnv,
      `CNI_CONTAINERID "${id}" may only hold letters, digits, '_', '.', '-'`,
    );
  }
  return id;
}

function ifName(env: NodeJS.ProcessEnv): string {
  const n = need(env, 'CNI_IFNAME');
  if (n.length > 15 || n === '.' || n === '..' || /[/:\s]/.test(n)) {
    throw new CniError(CniCode.InvalidEnv, `CNI_IFNAME "${n}" is not a valid interface name`);
  }
  return n;
}

function requireVersion(conf: WeftNetConf, min: string, command: string): void {
  if (!versionAtLeast(conf.cniVersion, min)) {
    throw new CniError(
      CniCode.IncompatibleVersion,
      `cniVersion ${conf.cniVersion} does not have ${command}; it needs cniVersion ${min} or later`,
    );
  }
}

function delegateType(d: Json): string {
  return typeof d.type === 'string' ? d.type : 'bridge';
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

class Commands {
  constructor(
    private readonly env: NodeJS.ProcessEnv,
    private readonly exec: Exec,
  ) {}

  private delegate(type: string): Delegate {
    return new Delegate(type, need(this.env, 'CNI_PATH'), this.env, this.exec);
  }

  async add(conf: WeftNetConf): Promise<string> {
    const id = containerId(this.env);
    const ifname = ifName(this.env);
    const netns = need(this.env, 'CNI_NETNS');
    need(this.env, 'CNI_PATH');
    if (attachmentExists(conf.dataDir, id, ifname)) {
      throw new CniError(
        CniCode.AlreadyAttached,
        `container ${id} already has interface ${ifname} from network "${conf.name}"; DEL it before adding it again`,
      );
    }
    const subnet = readSubnetEnv(conf.subnetFile);
    const dconf = renderDelegate(conf, subnet);
    const delegate = this.delegate(delegateType(dconf));
    saveAttachment(conf.dataDir, { containerID: id, ifname, netns, delegate: dconf });
    let result: Json | undefined;
    try {
      result = await delegate.invoke('ADD', dconf, {});
      if (!result) throw new CniError(CniCode.Decode, `delegate "${delegate.type}" ADD printed no result`);
    } catch (err) {
      try {
        await delegate.invoke('DEL', dconf, {});
        removeAttachment(conf.dataDir, id, ifname);
      } catch {
        // Keep the saved conf: the runtime's DEL (or GC) retries the cleanup with it. The ADD
        // error is what the runtime must see.
      }
      throw err;
    }
    return JSON.stringify(result);
  }

  async del(conf: WeftNetConf): Promise<string> {
    const id = containerId(this.env);
    const ifname = ifName(this.env);
    need(this.env, 'CNI_PATH');
    const saved = loadAttachment(conf.dataDir, id, ifname);
    if (!saved) return ''; // never added, or already deleted
    const dconf: Json = { ...saved.delegate };
    if (conf.runtimeConfig !== undefined) dconf.runtimeConfig = conf.runtimeConfig;
    await this.delegate(delegateType(dconf)).invoke('DEL', dconf, {});
    removeAttachment(conf.dataDir, id, ifname);
    return '';
  }

  async check(conf: WeftNetConf): Promise<string> {
    requireVersion(conf, '0.4.0', 'CHECK');
    const id = containerId(this.env);
    const ifname = ifName(this.env);
    need(this.env, 'CNI_NETNS');
    need(this.env, 'CNI_PATH');
    if (!conf.prevResult) {
      throw new CniError(CniCode.InvalidConfig, 'CHECK needs "prevResult" (the result of ADD) in the config');
    }
    const saved = loadAttachment(conf.dataDir, id, ifname);
    if (!saved) {
      throw new CniError(
        CniCode.UnknownContainer,
        `no attachment of container ${id} interface ${ifname} is known to weft-cni`,
      );
    }
    const subnet = readSubnetEnv(conf.subnetFile);
    const ranges = (saved.delegate.ipam as Json | undefined)?.ranges as Json[][] | undefined;
    const savedSubnet = ranges?.[0]?.[0]?.subnet;
    if (typeof savedSubnet === 'string' && savedSubnet !== formatCidr(subnet.subnet)) {
      throw new CniError(
        CniCode.SubnetChanged,
        `container ${id} was attached in subnet ${savedSubnet} but this node now has ${formatCidr(subnet.subnet)}; recreate the pod`,
      );
    }
    const dconf: Json = { ...saved.delegate, cniVersion: conf.cniVersion, prevResult: conf.prevResult };
    if (conf.runtimeConfig !== undefined) dconf.runtimeConfig = conf.runtimeConfig;
    await this.delegate(delegateType(dconf)).invoke('CHECK', dconf, {});
    return '';
  }

  async status(conf: WeftNetConf): Promise<string> {
    requireVersion(conf, '1.1.0', 'STATUS');
    let dconf: Json;
    try {
      dconf = renderDelegate(conf, readSubnetEnv(conf.subnetFile, CniCode.NotAvailable));
    } catch (err) {
      if (err instanceof CniError && err.cniCode !== CniCode.NotAvailable) {
        throw new CniError(CniCode.NotAvailable, err.message, err.details);
      }
      throw err;
    }
    let delegate: Delegate;
    try {
      delegate = this.delegate(delegateType(dconf));
    } catch (err) {
      throw new CniError(CniCode.NotAvailable, (err as Error).message);
    }
    // Delegates older than 1.1.0 have no STATUS: the subnet file is then all we can check.
    if ((await delegate.versionFor(conf.cniVersion)) === conf.cniVersion) {
      await delegate.invoke('STATUS', dconf, {});
    }
    return '';
  }

  async gc(conf: WeftNetConf): Promise<string> {
    requireVersion(conf, '1.1.0', 'GC');
    need(this.env, 'CNI_PATH');
    if (!conf.validAttachments) {
      throw new CniError(CniCode.InvalidConfig, 'GC needs "cni.dev/valid-attachments" in the config');
    }
    const valid = new Set(conf.validAttachments.map((a) => `${a.containerID}\n${a.ifname}`));
    const failures: string[] = [];
    for (const { file, attachment } of listAttachments(conf.dataDir)) {
      if (!attachment) {
        const m = /\.tmp-(\d+)-/.exec(file);
        if (m && pidAlive(Number(m[1]))) continue; // an ADD is writing it right now
        try {
          unlinkSync(file);
        } catch {
          /* gone */
        }
        continue;
      }
      if (valid.has(`${attachment.containerID}\n${attachment.ifname}`)) continue;
      const env: NodeJS.ProcessEnv = {
        CNI_CONTAINERID: attachment.containerID,
        CNI_IFNAME: attachment.ifname,
        CNI_NETNS: attachment.netns && existsSync(attachment.netns) ? attachment.netns : '',
      };
      try {
        const dconf = { ...attachment.delegate };
        await this.delegate(delegateType(dconf)).invoke('DEL', dconf, env);
        removeAttachment(conf.dataDir, attachment.containerID, attachment.ifname);
      } catch (err) {
        failures.push(`${attachment.containerID}/${attachment.ifname}: ${(err as Error).message}`);
      }
    }
    // Forward GC to delegates that know it (1.1.0+): they release what they hold for others.
    let subnetOk = true;
    let dconf: Json | undefined;
    try {
      dconf = renderDelegate(conf, readSubnetEnv(conf.subnetFile));
    } catch {
      subnetOk = false; // no lease: nothing to forward to; our own entries are done above
    }
    if (subnetOk && dconf) {
      dconf['cni.dev/valid-attachments'] = conf.validAttachments;
      try {
        const delegate = this.delegate(delegateType(dconf));
        if ((await delegate.versionFor(conf.cniVersion)) === conf.cniVersion) {
          await delegate.invoke('GC', dconf, { CNI_CONTAINERID: '', CNI_IFNAME: '', CNI_NETNS: '' });
        }
      } catch (err) {
        failures.push(`delegate GC: ${(err as Error).message}`);
      }
    }
    if (failures.length > 0) {
      throw new CniError(
        CniCode.TryAgainLater,
        `GC could not remove ${failures.length} attachment(s); it will retry`,
        failures.join('\n'),
      );
    }
    return '';
  }
}

/** Runs one CNI command. */
export async function runPlugin(io: PluginIo): Promise<PluginOutcome> {
  const command = io.env.CNI_COMMAND ?? '';
  let version = sniffVersion(io.stdin) ?? LATEST_VERSION;
  try {
    if (command === 'VERSION') {
      return {
        exitCode: 0,
        stdout: JSON.stringify({ cniVersion: LATEST_VERSION, supportedVersions: SUPPORTED_VERSIONS }),
        stderr: '',
      };
    }
    if (command === '')
      throw new CniError(
        CniCode.InvalidEnv,
        'CNI_COMMAND is not set; weft-cni must be run by a container runtime (CNI spec)',
      );
    const conf = parseNetConf(io.stdin);
    version = conf.cniVersion;
    const cmds = new Commands(io.env, io.exec ?? execProgram);
    let stdout: string;
    switch (command) {
      case 'ADD':
        stdout = await cmds.add(conf);
        break;
      case 'DEL':
        stdout = await cmds.del(conf);
        break;
      case 'CHECK':
        stdout = await cmds.check(conf);
        break;
      case 'STATUS':
        stdout = await cmds.status(conf);
        break;
      case 'GC':
        stdout = await cmds.gc(conf);
        break;
      default:
        throw new CniError(
          CniCode.InvalidEnv,
          `unknown CNI_COMMAND "${command}"; expected ADD, DEL, CHECK, STATUS, GC or VERSION`,
        );
    }
    return { exitCode: 0, stdout, stderr: '' };
  } catch (err) {
    const e = errorJson(err, version);
    return { exitCode: 1, stdout: JSON.stringify(e), stderr: `weft-cni ${command}: ${e.msg}\n` };
  }
}
