/**
 * A WireGuard interface, kernel or userspace, configured with `wg`.
 *
 * Where the kernel has the wireguard module, `ip link add <name> type wireguard` makes the
 * device. Where it has not (as on this machine kind), weft runs Debian's `wireguard-go` for
 * the interface, in the foreground as our child, and configures it identically: `wg` talks
 * to either (kernel netlink, or wireguard-go's UAPI socket /var/run/wireguard/<name>.sock).
 * If wireguard-go dies, `onExit` fires so the backend can recreate the device and its peers.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { run } from '../../util/exec.ts';
import { DeviceError } from '../../util/errors.ts';
import { formatCidr, formatIpv4 } from '../../routing/ipv4.ts';
import type { Ipv4Cidr } from '../../routing/ipv4.ts';
import type { Logger } from '../../util/log.ts';

export interface WgPeerSpec {
  readonly publicKey: string;
  /** Underlay endpoint (uint32 address, port). */
  readonly endpointAddr: number;
  readonly endpointPort: number;
  readonly allowedIps: readonly Ipv4Cidr[];
  /** Seconds; 0 or undefined = off. */
  readonly keepalive?: number;
  /** Path of a file holding the preshared key (wg reads keys from files only). */
  readonly presharedKeyFile?: string;
}

export interface WgPeerState {
  readonly publicKey: string;
  readonly endpoint: string | undefined;
  readonly allowedIps: readonly string[];
  /** Seconds since the epoch of the last handshake (0 = never). */
  readonly latestHandshake: number;
  readonly rxBytes: number;
  readonly txBytes: number;
}

export type WgImplementation = 'kernel' | 'wireguard-go';

export interface WgDeviceOptions {
  readonly name: string;
  readonly privateKeyFile: string;
  readonly listenPort: number;
  /** 'auto' (default): kernel when `ip link add type wireguard` works, else wireguard-go. */
  readonly implementation?: 'auto' | WgImplementation;
  readonly log?: Logger;
  /** Called when a wireguard-go child exits without being asked to. */
  readonly onExit?: (code: number | string) => void;
}

const UAPI_DIR = '/var/run/wireguard';

export class WgDevice {
  readonly name: string;
  readonly implementation: WgImplementation;
  private child: ChildProcess | undefined;
  private closing = false;

  private constructor(name: string, implementation: WgImplementation, child?: ChildProcess) {
    this.name = name;
    this.implementation = implementation;
    this.child = child;
  }

  /** Creates (or takes over) the interface and sets its key and listen port. */
  static async open(opts: WgDeviceOptions): Promise<WgDevice> {
    const impl = opts.implementation ?? 'auto';
    // A device left by a previous run (crash) is removed first: its peers may be stale.
    await run('ip', ['link', 'del', opts.name]).catch(() => undefined);
    let dev: WgDevice | undefined;
    if (impl !== 'wireguard-go') {
      try {
        await run('ip', ['link', 'add', opts.name, 'type', 'wireguard']);
        dev = new WgDevice(opts.name, 'kernel');
      } catch (err) {
        if (impl === 'kernel')
          throw new DeviceError(`cannot create kernel WireGuard device ${opts.name}`, { cause: err });
        opts.log?.info({ device: opts.name }, 'no kernel WireGuard here; using wireguard-go');
      }
    }
    dev ??= await WgDevice.startUserspace(opts);
    try {
      await run('wg', [
        'set',
        opts.name,
        'private-key',
        opts.privateKeyFile,
        'listen-port',
        String(opts.listenPort),
      ]);
    } catch (err) {
      await dev.close();
      throw new DeviceError(`configuring WireGuard device ${opts.name} failed`, { cause: err });
    }
    return dev;
  }

  private static async startUserspace(opts: WgDeviceOptions): Promise<WgDevice> {
    const child = spawn('wireguard-go', ['-f', opts.name], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD: '1', LOG_LEVEL: 'error' },
    });
    let output = '';
    const keep = (d: Buffer): void => {
      output = (output + d.toString()).slice(-4096);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    const dev = new WgDevice(opts.name, 'wireguard-go', child);
    let exited: number | string | undefined;
    child.once('error', (err) => {
      exited = -1;
      output += String(err);
    });
    child.once('exit', (code, sig) => {
      exited = code ?? sig ?? -1;
      if (!dev.closing) {
        opts.log?.error({ device: opts.name, code: exited, output }, 'wireguard-go exited');
        opts.onExit?.(exited);
      }
    });
    const sock = `${UAPI_DIR}/${opts.name}.sock`;
    const deadline = Date.now() + 5000;
    for (;;) {
      if (exited !== undefined) {
        throw new DeviceError(
          `wireguard-go for ${opts.name} exited (${exited}): ${output.trim() || 'no output'}`,
        );
      }
      if (existsSync(sock)) {
        const ok = await run('ip', ['link', 'show', opts.name]).then(
          () => true,
          () => false,
        );
        if (ok) return dev;
      }
      if (Date.now() > deadline) {
        await dev.close();
        throw new DeviceError(`wireguard-go did not create ${opts.name} within 5 s: ${output.trim()}`);
      }
      await sleep(25);
    }
  }

  /** PID of the wireguard-go child (undefined for kernel devices). */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  async setPeer(p: WgPeerSpec): Promise<void> {
    const args = [
      'set',
      this.name,
      'peer',
      p.publicKey,
      'endpoint',
      `${formatIpv4(p.endpointAddr)}:${p.endpointPort}`,
      'allowed-ips',
      p.allowedIps.map(formatCidr).join(','),
      'persistent-keepalive',
      p.keepalive ? String(p.keepalive) : 'off',
    ];
    if (p.presharedKeyFile) args.push('preshared-key', p.presharedKeyFile);
    await run('wg', args);
  }

  /**
   * Makes the device send one keepalive to `publicKey` now, which starts a handshake when
   * there is no session. Used after (re)configuring a peer so that a restarted node's peers
   * drop their stale session at once instead of after WireGuard's 15 s rekey timeout.
   * (Setting a persistent keepalive from off to on sends a keepalive immediately.)
   */
  async kick(publicKey: string, keepalive: number): Promise<void> {
    if (keepalive > 0) return; // already sending keepalives
    await run('wg', ['set', this.name, 'peer', publicKey, 'persistent-keepalive', '1']);
    await run('wg', ['set', this.name, 'peer', publicKey, 'persistent-keepalive', 'off']);
  }

  async removePeer(publicKey: string): Promise<void> {
    await run('wg', ['set', this.name, 'peer', publicKey, 'remove']);
  }

  async peers(): Promise<WgPeerState[]> {
    const out = await run('wg', ['show', this.name, 'dump']);
    // First line: the interface; then one line per peer:
    // public-key preshared-key endpoint allowed-ips latest-handshake rx tx keepalive
    return out
      .trim()
      .split('\n')
      .slice(1)
      .filter((l) => l.length > 0)
      .map((l) => {
        const f = l.split('\t');
        return {
          publicKey: f[0] ?? '',
          endpoint: f[2] === '(none)' ? undefined : f[2],
          allowedIps: f[3] && f[3] !== '(none)' ? f[3].split(',') : [],
          latestHandshake: Number(f[4] ?? 0),
          rxBytes: Number(f[5] ?? 0),
          txBytes: Number(f[6] ?? 0),
        };
      });
  }

  /** True while the device exists (and, for wireguard-go, its process runs). */
  async alive(): Promise<boolean> {
    if (this.child && (this.child.exitCode !== null || this.child.signalCode !== null)) return false;
    return run('ip', ['link', 'show', this.name]).then(
      () => true,
      () => false,
    );
  }

  /** Removes the interface (and with it its addresses and routes). Idempotent. */
  async close(): Promise<void> {
    this.closing = true;
    const child = this.child;
    this.child = undefined;
    if (child && child.exitCode === null && child.signalCode === null && child.pid) {
      const gone = new Promise((r) => child.once('exit', r));
      try {
        process.kill(child.pid, 'SIGTERM');
      } catch {
        /* gone */
      }
      const t = setTimeout(() => {
        try {
          if (child.pid) process.kill(child.pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }, 3000);
      await gone;
      clearTimeout(t);
    }
    await run('ip', ['link', 'del', this.name]).catch(() => undefined);
  }
}
