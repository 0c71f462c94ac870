/**
 * NativeTun: the kernel TUN device through the native addon (src/native/addon.ts).
 *
 * With offloads (the default) the device is opened with IFF_VNET_HDR and TSO/USO: one read
 * returns a 64 KiB super-packet that the addon splits into MTU-sized packets directly in
 * the batch's slots, and writes of one TCP flow's consecutive segments are coalesced into
 * a single GSO write. With `offloads: false` it is a plain IFF_TUN|IFF_NO_PI device (one
 * packet per syscall, slower, no vnet header). Opening does not configure addresses or MTU:
 * the backend does that with `ip`.
 */
import type { PacketBatch } from './batch.ts';
import type { TunDevice, TunOffloadState } from './tun.ts';
import { TunOffloadBits, deviceError, loadAddon } from '../native/addon.ts';
import type { NativeHandle, TunCounters, WeftIoAddon } from '../native/addon.ts';
import { DeviceError } from '../util/errors.ts';

export interface OpenTunOptions {
  /** Interface name (at most 15 bytes); may contain %d for the kernel to pick. */
  name: string;
  /** MTU the backend configures; used to size batches (slots needed per super-packet). */
  mtu: number;
  /** IFF_VNET_HDR (default: same as offloads). */
  vnetHdr?: boolean;
  /** IFF_MULTI_QUEUE: one fd per worker on the same device. */
  multiQueue?: boolean;
  /** TSO/USO offloads and write coalescing (default true). false: no vnet header. */
  offloads?: boolean;
  /**
   * Hand TCP super-packets up whole instead of segmenting them, one per read, in the jumbo
   * region of a PacketBatch.forTunRead batch (tunnel GSO: src/backend/tunnel-gso.ts). The
   * socket that sends them must take whole super-packets (NativeConn does).
   */
  keepSuperPackets?: boolean;
}

export class NativeTun implements TunDevice {
  readonly name: string;
  readonly mtu: number;
  readonly offloads: TunOffloadState;
  /** TUNSETOFFLOAD bits the kernel accepted. */
  readonly offloadBits: number;
  private readonly addon: WeftIoAddon;
  private handle: NativeHandle | undefined;

  constructor(
    addon: WeftIoAddon,
    handle: NativeHandle,
    name: string,
    mtu: number,
    vnetHdr: boolean,
    bits: number,
  ) {
    this.addon = addon;
    this.handle = handle;
    this.name = name;
    this.mtu = mtu;
    this.offloadBits = bits;
    const tso = vnetHdr && (bits & TunOffloadBits.TSO4) !== 0;
    this.offloads = {
      vnetHdr,
      tso,
      uso: vnetHdr && (bits & TunOffloadBits.USO4) !== 0,
      gro: tso,
    };
  }

  /** The addon handle (undefined once closed), for calls that take several handles (busyPoll). */
  get nativeHandle(): NativeHandle | undefined {
    return this.handle;
  }

  private h(): NativeHandle {
    if (!this.handle)
      throw new DeviceError(`TUN device ${this.name} is closed; open it again with openTun()`);
    return this.handle;
  }

  read(batch: PacketBatch): number {
    const n = this.addon.tunRead(
      this.h(),
      batch.arena,
      batch.headroom,
      batch.slotSize,
      batch.capacity,
      batch.offset,
      batch.length,
    );
    batch.count = n;
    return n;
  }

  write(batch: PacketBatch): number {
    return this.addon.tunWrite(this.h(), batch.arena, batch.offset, batch.length, batch.count);
  }

  startReading(onReadable: () => void): void {
    this.addon.startReading(this.h(), onReadable);
  }

  stopReading(): void {
    if (this.handle) this.addon.stopReading(this.handle);
  }

  /** Per-device counters kept by the addon (reads, super-packets, coalesced writes, ...). */
  stats(): TunCounters {
    return this.addon.stats(this.h()) as TunCounters;
  }

  close(): void {
    if (!this.handle) return;
    this.addon.close(this.handle);
    this.handle = undefined;
  }
}

/** Opens (creating if needed) a TUN device; see OpenTunOptions. */
export function openTun(opts: OpenTunOptions): NativeTun {
  const addon = loadAddon();
  const offloads = opts.offloads ?? true;
  const vnetHdr = opts.vnetHdr ?? offloads;
  let r;
  try {
    r = addon.tunOpen(
      opts.name,
      vnetHdr,
      opts.multiQueue ?? false,
      offloads && vnetHdr,
      opts.mtu,
      opts.keepSuperPackets ?? false,
    );
  } catch (err) {
    throw deviceError(
      `opening TUN device ${opts.name}`,
      err,
      'weftd needs CAP_NET_ADMIN and /dev/net/tun (modprobe tun); a name in use by a non-TUN device must be freed',
    );
  }
  return new NativeTun(addon, r.handle, r.name, opts.mtu, r.vnetHdr, r.offloadBits);
}
