/**
 * The `wireguard` backend: encrypted node-to-node tunnels, compatible with flannel's.
 *
 * Each node publishes `{"PublicKey": "<base64>", "Port": <listen port>}` as its lease's
 * BackendData. The node's WireGuard interface (kernel, or wireguard-go where the kernel has
 * no module) gets one peer per lease: endpoint = the peer's PublicIP:Port, allowed IPs =
 * the peer's subnet, and is kept in step with the leases. Routing is one route for the whole
 * Network through the interface; WireGuard's allowed IPs pick the peer (cryptokey routing).
 * A peer's endpoint is learned from authenticated packets by WireGuard itself, which is what
 * lets nodes behind NAT roam (PersistentKeepaliveInterval keeps their mappings open).
 *
 * net-conf `Backend` options: `ListenPort` (alias `Port`, default 51820), `PSK` (base64
 * preshared key, same on every node), `PersistentKeepaliveInterval` (seconds, default 0 =
 * off), `MTU` (default underlay MTU - 80), `KeyFile` (default <stateDir>/wireguard.key),
 * `Iface` (default "weft-wg"), `Implementation` ("auto" | "kernel" | "wireguard-go").
 */
import { join } from 'node:path';
import { mkdirSync, writeFileSync, renameSync } from 'node:fs';
import type { Backend, BackendContext, BackendStats, PreparedBackend } from '../backend.ts';
import type { Lease, LeaseEvent } from '../../lease/types.ts';
import { loadOrCreateKey, isWgKey } from './keys.ts';
import type { WgKeyPair } from './keys.ts';
import { WgDevice } from './device.ts';
import type { WgImplementation } from './device.ts';
import { ConfigError } from '../../util/errors.ts';
import { cidrToKey, formatCidr, parseIpv4 } from '../../routing/ipv4.ts';
import type { Ipv4Cidr } from '../../routing/ipv4.ts';
import { defaultKernel } from '../../kernel/netlink.ts';
import type { KernelNet } from '../../kernel/kernel.ts';
import { backendMtu } from '../../daemon/netconf.ts';

export const WIREGUARD_DEFAULT_PORT = 51820;
/** IPv4 (20) + UDP (8) + WireGuard data header (16) + auth tag (16) = 60; flannel reserves 80. */
export const WIREGUARD_OVERHEAD = 80;

export interface WireguardOptions {
  readonly listenPort: number;
  readonly psk: string | undefined;
  readonly keepalive: number;
  readonly mtu: number | undefined;
  readonly keyFile: string;
  readonly iface: string;
  readonly implementation: 'auto' | WgImplementation;
}

function optInt(o: Record<string, unknown>, key: string, min: number, max: number): number | undefined {
  const v = o[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new ConfigError(
      `Backend.${key}`,
      `must be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`,
    );
  }
  return v;
}

/** Validates the wireguard options of net-conf's Backend object. */
export function parseWireguardOptions(backend: Record<string, unknown>, stateDir: string): WireguardOptions {
  const known = new Set([
    'type',
    'Type',
    'ListenPort',
    'Port',
    'PSK',
    'PersistentKeepaliveInterval',
    'MTU',
    'KeyFile',
    'Iface',
    'Implementation',
    'Mode',
  ]);
  for (const k of Object.keys(backend)) {
    if (!known.has(k))
      throw new ConfigError(
        `Backend.${k}`,
        `unknown option for the wireguard backend (known: ${[...known].join(', ')})`,
      );
  }
  const listenPort =
    optInt(backend, 'ListenPort', 1, 65535) ?? optInt(backend, 'Port', 1, 65535) ?? WIREGUARD_DEFAULT_PORT;
  const psk = backend.PSK;
  if (psk !== undefined && (typeof psk !== 'string' || !isWgKey(psk))) {
    throw new ConfigError('Backend.PSK', 'must be a base64 WireGuard key (generate one with `wg genpsk`)');
  }
  const iface = backend.Iface ?? 'weft-wg';
  if (typeof iface !== 'string' || !/^[A-Za-z0-9_.-]{1,15}$/.test(iface)) {
    throw new ConfigError('Backend.Iface', 'must be an interface name of 1-15 characters');
  }
  const impl = backend.Implementation ?? 'auto';
  if (impl !== 'auto' && impl !== 'kernel' && impl !== 'wireguard-go') {
    throw new ConfigError('Backend.Implementation', 'must be "auto", "kernel" or "wireguard-go"');
  }
  const keyFile = backend.KeyFile ?? join(stateDir, 'wireguard.key');
  if (typeof keyFile !== 'string' || keyFile.length === 0)
    throw new ConfigError('Backend.KeyFile', 'must be a path');
  const mode = backend.Mode;
  if (mode !== undefined && mode !== 'auto' && mode !== 'ipv4') {
    throw new ConfigError('Backend.Mode', 'only "auto" and "ipv4" are supported (IPv6 comes later)');
  }
  return {
    listenPort,
    psk: psk,
    keepalive: optInt(backend, 'PersistentKeepaliveInterval', 0, 65535) ?? 0,
    mtu: backend.MTU === 0 ? undefined : optInt(backend, 'MTU', 576, 65535),
    keyFile,
    iface,
    implementation: impl,
  };
}

/** A peer's wireguard BackendData, or a reason it is unusable. */
export function parsePeerData(data: unknown): { publicKey: string; port: number } | string {
  if (typeof data !== 'object' || data === null) return 'BackendData is not an object';
  const d = data as Record<string, unknown>;
  if (typeof d.PublicKey !== 'string' || !isWgKey(d.PublicKey))
    return 'BackendData.PublicKey is not a WireGuard key';
  const port = d.Port ?? d.ListenPort ?? WIREGUARD_DEFAULT_PORT;
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535)
    return 'BackendData.Port is invalid';
  return { publicKey: d.PublicKey, port };
}

interface PeerEntry {
  readonly subnet: Ipv4Cidr;
  readonly publicKey: string;
  /** Underlay endpoint: the lease's PublicIP (uint32) and BackendData.Port. */
  readonly addr: number;
  readonly port: number;
}

export class WireguardBackend implements Backend {
  readonly type = 'wireguard';
  private readonly ctx: BackendContext;
  private readonly opts: WireguardOptions;
  private readonly kernel: KernelNet;
  private keys: WgKeyPair | undefined;
  private device: WgDevice | undefined;
  private lease: Lease | undefined;
  private readonly peers = new Map<string, PeerEntry>();
  private queue: Promise<void> = Promise.resolve();
  private watchdog: NodeJS.Timeout | undefined;
  private stopped = false;
  private pskFile: string | undefined;
  private readonly counters = {
    peersAdded: 0,
    peersRemoved: 0,
    peersSkipped: 0,
    peerErrors: 0,
    deviceRecreated: 0,
  };

  /**
   * `deviceName` (weftd --tun-name, when not the udp default "weft0") names the interface
   * unless Backend.Iface does: several nodes on one host (the demo, tests) need distinct
   * names because wireguard-go's control sockets share /var/run/wireguard.
   */
  constructor(ctx: BackendContext, deviceName?: string, kernel: KernelNet = defaultKernel()) {
    this.ctx = ctx;
    this.kernel = kernel;
    const opts = parseWireguardOptions(ctx.network.backend, ctx.stateDir);
    this.opts =
      ctx.network.backend.Iface === undefined && deviceName !== undefined && deviceName !== 'weft0'
        ? { ...opts, iface: deviceName }
        : opts;
  }

  prepare(): Promise<PreparedBackend> {
    // Backend.MTU must fit the underlay after WireGuard's overhead (ConfigError otherwise).
    const mtu = backendMtu(this.ctx.network.backend, this.ctx.underlay, WIREGUARD_OVERHEAD);
    const k = loadOrCreateKey(this.opts.keyFile);
    this.keys = k;
    this.ctx.log.info(
      { keyFile: this.opts.keyFile, created: k.created, publicKey: k.publicKey },
      'wireguard key ready',
    );
    return Promise.resolve({
      backendType: 'wireguard',
      backendData: { PublicKey: k.publicKey, Port: this.opts.listenPort },
      mtu,
    });
  }

  private get mtu(): number {
    return backendMtu(this.ctx.network.backend, this.ctx.underlay, WIREGUARD_OVERHEAD);
  }

  async start(lease: Lease, signal: AbortSignal): Promise<void> {
    if (!this.keys) await this.prepare();
    this.lease = lease;
    if (this.opts.psk) {
      mkdirSync(this.ctx.stateDir, { recursive: true, mode: 0o700 });
      this.pskFile = join(this.ctx.stateDir, 'wireguard.psk');
      writeFileSync(`${this.pskFile}.tmp`, `${this.opts.psk}\n`, { mode: 0o600 });
      renameSync(`${this.pskFile}.tmp`, this.pskFile);
    }
    await this.createDevice();
    this.watchdog = setInterval(() => this.enqueue(() => this.checkDevice()), 2000);
    this.watchdog.unref();
    signal.addEventListener('abort', () => void this.stop(), { once: true });
  }

  private async createDevice(): Promise<void> {
    const lease = this.lease;
    if (!lease) return;
    this.device = await WgDevice.open({
      name: this.opts.iface,
      privateKeyFile: this.opts.keyFile,
      listenPort: this.opts.listenPort,
      implementation: this.opts.implementation,
      log: this.ctx.log,
      onExit: () => this.enqueue(() => this.checkDevice()),
    });
    const dev = this.opts.iface;
    await this.kernel.apply([
      { op: 'addr-replace', dev, addr: { addr: lease.subnet.addr, prefix: 32 } },
      { op: 'link-up', name: dev, mtu: this.mtu },
      { op: 'route-replace', route: { dst: this.ctx.network.network, dev } },
    ]);
    this.ctx.log.info(
      { device: dev, implementation: this.device.implementation, mtu: this.mtu, port: this.opts.listenPort },
      'wireguard device up',
    );
    for (const p of this.peers.values()) await this.pushPeer(p);
  }

  private async checkDevice(): Promise<void> {
    if (this.stopped || !this.device) return;
    if (await this.device.alive()) return;
    this.counters.deviceRecreated++;
    this.ctx.log.warn({ device: this.opts.iface }, 'wireguard device gone; recreating it with all peers');
    await this.device.close();
    await this.createDevice();
  }

  private enqueue(fn: () => Promise<void>): void {
    this.queue = this.queue.then(fn).catch((err: unknown) => {
      this.counters.peerErrors++;
      this.ctx.log.error({ err }, 'wireguard peer update failed');
    });
  }

  /** Resolves when every queued device/peer change has been applied (tests, shutdown). */
  settled(): Promise<void> {
    return this.queue;
  }

  private pushPeer(p: PeerEntry): Promise<void> {
    const device = this.device;
    if (!device) return Promise.resolve();
    return device
      .setPeer({
        publicKey: p.publicKey,
        endpointAddr: p.addr,
        endpointPort: p.port,
        allowedIps: [p.subnet],
        keepalive: this.opts.keepalive,
        presharedKeyFile: this.pskFile,
      })
      .then(() => device.kick(p.publicKey, this.opts.keepalive));
  }

  applyPeers(events: readonly LeaseEvent[]): void {
    for (const ev of events) {
      const key = cidrToKey(ev.lease.subnet);
      if (ev.type === 'removed') {
        const old = this.peers.get(key);
        if (!old) continue;
        this.peers.delete(key);
        this.counters.peersRemoved++;
        const stillUsed = [...this.peers.values()].some((p) => p.publicKey === old.publicKey);
        if (!stillUsed) this.enqueue(async () => this.device?.removePeer(old.publicKey));
        this.ctx.log.info({ subnet: formatCidr(old.subnet) }, 'wireguard peer removed');
        continue;
      }
      const parsed = parsePeerData(ev.lease.attrs.backendData);
      if (typeof parsed === 'string' || ev.lease.attrs.backendType !== 'wireguard') {
        this.counters.peersSkipped++;
        this.ctx.log.warn(
          { subnet: formatCidr(ev.lease.subnet), backendType: ev.lease.attrs.backendType, reason: parsed },
          'skipping peer lease that is not a usable wireguard lease',
        );
        continue;
      }
      let addr: number;
      try {
        addr = parseIpv4(ev.lease.attrs.publicIp, 'PublicIP');
      } catch {
        this.counters.peersSkipped++;
        this.ctx.log.warn({ subnet: formatCidr(ev.lease.subnet) }, 'skipping peer lease with a bad PublicIP');
        continue;
      }
      const entry: PeerEntry = {
        subnet: ev.lease.subnet,
        publicKey: parsed.publicKey,
        addr,
        port: parsed.port,
      };
      const previous = this.peers.get(key);
      this.peers.set(key, entry);
      this.counters.peersAdded++;
      if (previous && previous.publicKey !== parsed.publicKey) {
        this.enqueue(async () => this.device?.removePeer(previous.publicKey));
      }
      this.enqueue(() => this.pushPeer(entry));
      this.ctx.log.info(
        { subnet: formatCidr(entry.subnet), publicIp: ev.lease.attrs.publicIp },
        'wireguard peer added',
      );
    }
  }

  stats(): BackendStats {
    return {
      peers: this.peers.size,
      implementationKernel: this.device?.implementation === 'kernel' ? 1 : 0,
      ...this.counters,
    };
  }

  /** Peers as WireGuard sees them (handshakes, bytes), for status output and tests. */
  async devicePeers(): Promise<Awaited<ReturnType<WgDevice['peers']>>> {
    return this.device ? this.device.peers() : [];
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.watchdog) clearInterval(this.watchdog);
    await this.queue;
    await this.device?.close();
    this.device = undefined;
  }
}
