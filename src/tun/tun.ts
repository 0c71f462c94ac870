/**
 * TunDevice: a layer-3 TUN device moved in batches.
 *
 * Implementations: NativeTun (src/tun/native-tun.ts, the kernel device through the native
 * addon, with vnet header + TSO/USO offloads when the kernel accepts them) and MemoryTun
 * (src/tun/memory-tun.ts, an in-memory twin for unit tests).
 *
 * Offloads are hidden behind this interface: read() always yields IPv4 packets no larger
 * than the device MTU (super-packets are segmented below it), and write() accepts ordinary
 * packets (runs of one TCP flow may be coalesced into one kernel write below it).
 */
import type { PacketBatch } from './batch.ts';

export interface TunOffloadState {
  /** IFF_VNET_HDR is in use. */
  readonly vnetHdr: boolean;
  /** Kernel hands us TCP super-packets (TUN_F_TSO4). */
  readonly tso: boolean;
  /** Kernel hands us UDP super-packets (TUN_F_USO4). */
  readonly uso: boolean;
  /** Received TCP segments are coalesced into one write (needs vnetHdr). */
  readonly gro: boolean;
}

export interface TunDevice {
  readonly name: string;
  readonly mtu: number;
  readonly offloads: TunOffloadState;
  /**
   * Fills `batch` (from count 0, slotted layout: packet i at slotStart(i)) with packets
   * ready now, without blocking. Returns the number of packets (0 when none are ready).
   * Super-packets are split into MTU-sized packets, each in its own slot.
   */
  read(batch: PacketBatch): number;
  /**
   * Writes descriptors [0, batch.count) to the kernel, synchronously. Returns how many
   * packets were accepted; the rest are dropped by the device (counted by the caller).
   */
  write(batch: PacketBatch): number;
  /** Calls `onReadable` each time the device becomes readable (libuv readiness, not a thread pool). */
  startReading(onReadable: () => void): void;
  stopReading(): void;
  close(): void;
}
