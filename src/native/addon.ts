/**
 * The native batch I/O addon (native/weft_io.c), loaded once per thread and typed here so
 * no `any` leaks into the data path. Built by scripts/build-native.mjs (run by
 * scripts/setup.sh) into native/build/weft_io.node.
 *
 * Handles are opaque externals: every call takes the handle first. Batches cross the
 * boundary as the PacketBatch's own arena and typed arrays (nothing is allocated per call
 * on the JS side).
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { DeviceError } from '../util/errors.ts';
import { projectRoot } from '../util/self.ts';

/** Opaque handle owned by the addon (a TUN fd or a UDP socket plus its poll handle). */
export type NativeHandle = { readonly __weftNativeHandle: unique symbol };

/** TUNSETOFFLOAD bits. */
export const TunOffloadBits = {
  CSUM: 0x01,
  TSO4: 0x02,
  TSO6: 0x04,
  USO4: 0x20,
  USO6: 0x40,
} as const;

export interface TunOpenResult {
  handle: NativeHandle;
  /** Name the kernel gave the device. */
  name: string;
  vnetHdr: boolean;
  /** TUNSETOFFLOAD bits the kernel accepted (0 = none). */
  offloadBits: number;
}

export interface UdpOpenResult {
  handle: NativeHandle;
  addr: number;
  port: number;
  gso: boolean;
  gro: boolean;
  /** Buffer sizes as the kernel reports them (twice the requested size). */
  rcvbuf: number;
  sndbuf: number;
}

export interface TunCounters {
  reads: number;
  packetsIn: number;
  superPackets: number;
  segments: number;
  csumCompleted: number;
  writes: number;
  packetsOut: number;
  coalescedWrites: number;
  coalescedSegments: number;
  eagain: number;
  errors: number;
  dropped: number;
  pendingSuperPackets: number;
  /** Packets whose sender left the checksum partial: written with NEEDS_CSUM, or completed here without a vnet header. */
  partialCsumWrites: number;
  /** TCP packets larger than the MTU written whole as one GSO write. */
  gsoWrites: number;
  /** TCP super-packets handed up whole for a tunnel-GSO send instead of segmented. */
  wholeSuperPackets: number;
  /** TCP packets larger than the MTU cut into segments before the write (TUN without GSO writes). */
  segmentedWrites: number;
}

export interface UdpCounters {
  recvCalls: number;
  messagesIn: number;
  datagramsIn: number;
  groMessages: number;
  sendCalls: number;
  messagesOut: number;
  datagramsOut: number;
  gsoMessages: number;
  eagain: number;
  sendWaits: number;
  errors: number;
  truncated: number;
  dropped: number;
  /** Whole super-packets written to the tunnel-GSO TAP (one per 64 KiB). */
  tunnelWrites: number;
  /** TAP writes that failed; the TAP is detached after the first. */
  tunnelErrors: number;
  /** Whole super-packets segmented by the socket because the TAP failed or was detached. */
  tunnelFallbacks: number;
  /** Whole super-packets segmented by the socket because their peer does not take them whole. */
  tunnelPeerSegmented: number;
  /** Whole super-packets segmented by the socket because no TAP was ever attached (tunnel GSO off). */
  tunnelOff: number;
  /** 1 while UDP_SEGMENT is used (turned off when the egress device refuses it with EIO). */
  gsoEnabled: number;
  /** 1 while a tunnel-GSO TAP is attached (detached after a failed write or by the guard). */
  tunnelAttached: number;
}

export interface WeftIoAddon {
  /** Bytes of the jumbo region of a TUN read batch (JUMBO_REGION; PacketBatch.forTunRead reserves it). */
  readonly jumboRegionBytes: number;
  /** keepSuperPackets: TCP super-packets are handed up whole (in a batch's jumbo region, see PacketBatch.forTunRead). */
  tunOpen(
    name: string,
    vnetHdr: boolean,
    multiQueue: boolean,
    offloads: boolean,
    mtu: number,
    keepSuperPackets?: boolean,
  ): TunOpenResult;
  /** A TAP device with UDP-tunnel GSO offload (kernel 6.17+); throws with the errno otherwise. */
  tapOpen(
    name: string,
    mac?: string,
    multiQueue?: boolean,
  ): { handle: NativeHandle; name: string; mac: string };
  /**
   * Whole super-packets sent on this socket go to the TAP as one tunnel-GSO write each
   * (null detaches: they are then segmented by the socket). The socket keeps its own fd.
   */
  udpAttachTunnel(udp: NativeHandle, tap: NativeHandle | null): void;
  tunRead(
    h: NativeHandle,
    arena: Buffer,
    headroom: number,
    slotSize: number,
    capacity: number,
    offset: Int32Array,
    length: Int32Array,
  ): number;
  tunWrite(h: NativeHandle, arena: Buffer, offset: Int32Array, length: Int32Array, count: number): number;
  udpOpen(
    bindAddr: number,
    port: number,
    reusePort: boolean,
    rcvbuf: number,
    sndbuf: number,
    offloads: boolean,
  ): UdpOpenResult;
  udpSend(
    h: NativeHandle,
    arena: Buffer,
    offset: Int32Array,
    length: Int32Array,
    addr: Uint32Array,
    port: Uint16Array,
    count: number,
  ): number;
  udpRecv(
    h: NativeHandle,
    arena: Buffer,
    messageSize: number,
    capacity: number,
    offset: Int32Array,
    length: Int32Array,
    addr: Uint32Array,
    port: Uint16Array,
  ): number;
  /**
   * Attaches a classic BPF program (struct sock_filter array, 8 bytes per instruction) to
   * the SO_REUSEPORT group of this socket (SO_ATTACH_REUSEPORT_CBPF). The program sees the
   * datagram from the UDP payload on and returns the index of the socket to deliver to.
   */
  udpAttachSteering(h: NativeHandle, program: Buffer): void;
  /**
   * Spins up to maxUs (yielding the CPU between checks) until the TUN handle or the UDP
   * handle is readable. Returns a mask: 1 = TUN readable, 2 = socket readable, 0 = neither.
   */
  busyPoll(tun: NativeHandle, udp: NativeHandle, maxUs: number, clock?: Float64Array): number;
  startReading(h: NativeHandle, onReadable: () => void): void;
  stopReading(h: NativeHandle): void;
  close(h: NativeHandle): void;
  stats(h: NativeHandle): TunCounters | UdpCounters;
  /**
   * Test hook: segments one packet read from a vnet-header device (10-byte header + packet)
   * into the slotted batch described by the arguments, as tunRead would. Returns the count.
   */
  segment(
    vnetHdrPlusPacket: Buffer,
    arena: Buffer,
    headroom: number,
    slotSize: number,
    capacity: number,
    offset: Int32Array,
    length: Int32Array,
  ): number;
  /**
   * Test hook: the bytes each TUN write of this batch would carry (vnet header first), as
   * tunWrite with TSO would issue them. Fixes the first packet's headers in place, as the
   * real write does.
   */
  coalesce(arena: Buffer, offset: Int32Array, length: Int32Array, count: number): Buffer[];
  /**
   * Sends one rtnetlink request (NETLINK_ROUTE) and returns the answer's bytes up to and
   * including the NLMSG_DONE or NLMSG_ERROR that ends it (src/kernel/netlink.ts builds and
   * decodes them). With netnsPath the socket is opened in that network namespace.
   */
  netlinkRequest(request: Buffer, netnsPath?: string): Buffer;
  /**
   * A non-blocking rtnetlink socket joined to the RTMGRP_* groups in `groups`, readable
   * (startReading) when the kernel announces a change in the current namespace.
   */
  netlinkSubscribe(groups: number): NativeHandle;
  /**
   * Reads the next notification datagram of a netlinkSubscribe socket into `buf`: its length
   * (more than buf.length: it was cut), 0 when none is waiting, -1 when some were lost.
   */
  netlinkRecv(h: NativeHandle, buf: Buffer): number;
}

/** Path of the compiled addon. */
export const addonPath = resolve(projectRoot, 'native', 'build', 'weft_io.node');

let cached: WeftIoAddon | undefined;

/** Loads the addon (once per thread). Throws DeviceError when it has not been built. */
export function loadAddon(): WeftIoAddon {
  if (cached) return cached;
  if (!existsSync(addonPath)) {
    throw new DeviceError(
      `native addon ${addonPath} is not built: run scripts/setup.sh (or node scripts/build-native.mjs)`,
    );
  }
  const require = createRequire(import.meta.url);
  try {
    cached = require(addonPath) as WeftIoAddon;
  } catch (err) {
    throw new DeviceError(
      `native addon ${addonPath} failed to load (${(err as Error).message}): rebuild it with node scripts/build-native.mjs`,
      { cause: err },
    );
  }
  return cached;
}

/** Wraps an addon failure (errno-carrying Error) into a DeviceError saying what was attempted. */
export function deviceError(what: string, err: unknown, hint: string): DeviceError {
  const msg = err instanceof Error ? err.message : String(err);
  return new DeviceError(`${what} failed: ${msg}; ${hint}`, { cause: err });
}
