/**
 * NativeConn: the underlay UDP socket through the native addon (src/native/addon.ts).
 *
 * send() is one sendmmsg per batch: adjacent datagrams to the same peer with the same size
 * (the last may be shorter) go out as one UDP_SEGMENT message (at most 64 segments, 65507
 * bytes). recv() is one recvmmsg (MSG_DONTWAIT) into the batch's messageSize-sized buffers;
 * UDP_GRO messages are split into one descriptor per datagram without copying.
 *
 * Backpressure: when the socket's send buffer is full, send() waits for it to drain for
 * at most 50 ms per call (poll POLLOUT) and then returns the count sent so far; the caller
 * counts the rest as dropped. That pushes back on TCP without stalling the loop for long.
 */
import type { PacketBatch } from '../tun/batch.ts';
import type { ConnOffloadState, ConnOptions, PacketConn } from './conn.ts';
import { deviceError, loadAddon } from '../native/addon.ts';
import type { NativeHandle, UdpCounters, WeftIoAddon } from '../native/addon.ts';
import { DeviceError } from '../util/errors.ts';
import { formatIpv4 } from '../routing/ipv4.ts';
import type { TunnelGsoDevice } from '../backend/tunnel-gso.ts';

/** Default socket buffers: several MiB, so bursts of GSO traffic are not dropped. */
export const DEFAULT_RCVBUF = 8 * 1024 * 1024;
export const DEFAULT_SNDBUF = 4 * 1024 * 1024;

export class NativeConn implements PacketConn {
  readonly localAddr: number;
  readonly localPort: number;
  readonly offloads: ConnOffloadState;
  /** Buffer sizes the kernel reports (twice what was granted to the socket). */
  readonly rcvbuf: number;
  readonly sndbuf: number;
  private readonly addon: WeftIoAddon;
  private handle: NativeHandle | undefined;

  constructor(
    addon: WeftIoAddon,
    r: {
      handle: NativeHandle;
      addr: number;
      port: number;
      gso: boolean;
      gro: boolean;
      rcvbuf: number;
      sndbuf: number;
    },
  ) {
    this.addon = addon;
    this.handle = r.handle;
    this.localAddr = r.addr;
    this.localPort = r.port;
    this.offloads = { gso: r.gso, gro: r.gro };
    this.rcvbuf = r.rcvbuf;
    this.sndbuf = r.sndbuf;
  }

  /** The addon handle (undefined once closed), for calls that take several handles (busyPoll). */
  get nativeHandle(): NativeHandle | undefined {
    return this.handle;
  }

  private h(): NativeHandle {
    if (!this.handle) {
      throw new DeviceError(
        `UDP socket ${formatIpv4(this.localAddr)}:${this.localPort} is closed; open it again`,
      );
    }
    return this.handle;
  }

  recv(batch: PacketBatch): number {
    const n = this.addon.udpRecv(
      this.h(),
      batch.arena,
      batch.slotSize,
      batch.capacity,
      batch.offset,
      batch.length,
      batch.addr,
      batch.port,
    );
    batch.count = n;
    return n;
  }

  send(batch: PacketBatch): number {
    return this.addon.udpSend(
      this.h(),
      batch.arena,
      batch.offset,
      batch.length,
      batch.addr,
      batch.port,
      batch.count,
    );
  }

  startReading(onReadable: () => void): void {
    this.addon.startReading(this.h(), onReadable);
  }

  stopReading(): void {
    if (this.handle) this.addon.stopReading(this.handle);
  }

  /** Per-socket counters kept by the addon (GSO/GRO messages, EAGAINs, ...). */
  stats(): UdpCounters {
    return this.addon.stats(this.h()) as UdpCounters;
  }

  /**
   * Attaches a classic BPF steering program to this socket's SO_REUSEPORT group (see
   * src/conn/steering.ts): datagrams go to the group member whose index it returns.
   */
  attachSteering(program: Buffer): void {
    try {
      this.addon.udpAttachSteering(this.h(), program);
    } catch (err) {
      throw deviceError(
        `attaching the steering program to ${formatIpv4(this.localAddr)}:${this.localPort}`,
        err,
        'the socket must be open with SO_REUSEPORT (workers > 1) and the program valid cBPF',
      );
    }
  }

  /**
   * Whole TCP super-packets in a send batch (from a TUN opened with keepSuperPackets) go to
   * this tunnel-GSO TAP, one write each (src/backend/tunnel-gso.ts); undefined detaches,
   * and they are then segmented here. The socket keeps its own fd of the TAP.
   */
  attachTunnel(tap: Pick<TunnelGsoDevice, 'handle'> | undefined): void {
    this.addon.udpAttachTunnel(this.h(), tap?.handle ?? null);
  }

  /**
   * A forwarding worker's socket: opens this thread's own queue of the main thread's
   * multi-queue tunnel-GSO TAP `tapName` and attaches it as attachTunnel does (the socket
   * keeps its fd; the queue goes away with the socket or on detach).
   */
  attachTunnelQueue(tapName: string): void {
    let tap: { handle: NativeHandle } | undefined;
    try {
      tap = this.addon.tapOpen(tapName, undefined, true);
      this.addon.udpAttachTunnel(this.h(), tap.handle);
    } catch (err) {
      throw deviceError(
        `opening a queue of the tunnel-GSO TAP ${tapName}`,
        err,
        'the TAP must exist, opened multi-queue by the main thread (workers > 1)',
      );
    } finally {
      if (tap) this.addon.close(tap.handle);
    }
  }

  close(): void {
    if (!this.handle) return;
    this.addon.close(this.handle);
    this.handle = undefined;
  }
}

/** Opens and binds the underlay socket; see ConnOptions. */
export function openConn(opts: ConnOptions): NativeConn {
  const addon = loadAddon();
  try {
    const r = addon.udpOpen(
      opts.bindAddr >>> 0,
      opts.port,
      opts.reusePort ?? false,
      opts.rcvbuf ?? DEFAULT_RCVBUF,
      opts.sndbuf ?? DEFAULT_SNDBUF,
      opts.offloads ?? true,
    );
    return new NativeConn(addon, r);
  } catch (err) {
    throw deviceError(
      `binding UDP ${formatIpv4(opts.bindAddr >>> 0)}:${opts.port}`,
      err,
      'check that the address is on this node and the port is free (or use reusePort for one socket per worker)',
    );
  }
}
