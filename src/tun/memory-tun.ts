/**
 * MemoryTun: an in-memory TunDevice for unit tests. inject() plays the kernel routing a
 * packet into the TUN; packets the forwarder writes are collected in `written` (or handed
 * to `onWrite`). Readiness is level-triggered like uv_poll: onReadable fires
 * asynchronously after an inject, and again after a read that left packets queued.
 */
import type { PacketBatch } from './batch.ts';
import type { TunDevice, TunOffloadState } from './tun.ts';

export interface MemoryTunOptions {
  name?: string;
  mtu?: number;
  /** Called with each written packet (a view valid only during the call) instead of collecting copies. */
  onWrite?: (packet: Buffer) => void;
  /** Accept at most this many packets per write() (default: all), to test partial writes. */
  writeLimit?: number;
}

const NO_OFFLOADS: TunOffloadState = { vnetHdr: false, tso: false, uso: false, gro: false };

export class MemoryTun implements TunDevice {
  readonly name: string;
  readonly mtu: number;
  readonly offloads: TunOffloadState = NO_OFFLOADS;
  /** Copies of packets written to the device, oldest first. */
  readonly written: Buffer[] = [];
  /** Injected packets larger than the MTU (the kernel would not deliver them). */
  oversize = 0;
  writeLimit: number;
  private readonly onWrite: ((packet: Buffer) => void) | undefined;
  private readonly queue: Buffer[] = [];
  private head = 0;
  private onReadable: (() => void) | undefined;
  private scheduled = false;
  private closed = false;

  constructor(opts: MemoryTunOptions = {}) {
    this.name = opts.name ?? 'mtun0';
    this.mtu = opts.mtu ?? 1472;
    this.onWrite = opts.onWrite;
    this.writeLimit = opts.writeLimit ?? Infinity;
  }

  /** Packets waiting to be read. */
  get pending(): number {
    return this.queue.length - this.head;
  }

  /** Queues a copy of `packet` as if the kernel routed it into the TUN. */
  inject(packet: Uint8Array): void {
    if (this.closed) return;
    if (packet.length > this.mtu) {
      this.oversize++;
      return;
    }
    this.queue.push(Buffer.from(packet));
    this.schedule();
  }

  read(batch: PacketBatch): number {
    batch.count = 0;
    while (this.head < this.queue.length) {
      const p = this.queue[this.head] as Buffer;
      if (batch.pushCopy(p) < 0) break;
      this.head++;
    }
    if (this.head === this.queue.length) {
      this.queue.length = 0;
      this.head = 0;
    } else {
      this.schedule();
    }
    return batch.count;
  }

  write(batch: PacketBatch): number {
    const n = Math.min(batch.count, this.writeLimit);
    for (let i = 0; i < n; i++) {
      const off = batch.offset[i] as number;
      const view = batch.arena.subarray(off, off + (batch.length[i] as number));
      if (this.onWrite) this.onWrite(view);
      else this.written.push(Buffer.from(view));
    }
    return n;
  }

  startReading(onReadable: () => void): void {
    this.onReadable = onReadable;
    if (this.pending > 0) this.schedule();
  }

  stopReading(): void {
    this.onReadable = undefined;
  }

  close(): void {
    this.closed = true;
    this.onReadable = undefined;
    this.queue.length = 0;
    this.head = 0;
  }

  private schedule(): void {
    if (this.scheduled || this.onReadable === undefined) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      if (this.onReadable !== undefined && this.pending > 0) this.onReadable();
    });
  }
}
