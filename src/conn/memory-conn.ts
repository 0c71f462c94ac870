/**
 * MemoryConn: an in-memory PacketConn for unit tests, attached to a MemoryNetwork that
 * delivers datagrams between endpoints by (addr, port). send() copies each datagram into
 * the destination's queue and fires its onReadable asynchronously (level-triggered, like
 * uv_poll); datagrams to nowhere are counted as lost. MemoryNetwork.inject() delivers a
 * datagram from any source, to test spoofing and garbage.
 */
import type { PacketBatch } from '../tun/batch.ts';
import { DeviceError } from '../util/errors.ts';
import type { ConnOffloadState, PacketConn } from './conn.ts';

interface Datagram {
  readonly data: Buffer;
  readonly addr: number;
  readonly port: number;
}

const NO_OFFLOADS: ConnOffloadState = { gso: false, gro: false };

function key(addr: number, port: number): string {
  return `${addr >>> 0}:${port}`;
}

export class MemoryNetwork {
  private readonly endpoints = new Map<string, MemoryConn>();
  /** Datagrams sent to an address nobody is bound to. */
  lost = 0;

  /** Binds a new endpoint; throws when (addr, port) is taken. */
  bind(addr: number, port: number): MemoryConn {
    const k = key(addr, port);
    if (this.endpoints.has(k))
      throw new DeviceError(`memory endpoint ${k} is already bound; close it or pick another port`);
    const c = new MemoryConn(this, addr >>> 0, port);
    this.endpoints.set(k, c);
    return c;
  }

  /** Delivers a copy of `data` to (dstAddr, dstPort) as if sent from (srcAddr, srcPort). */
  inject(data: Uint8Array, srcAddr: number, srcPort: number, dstAddr: number, dstPort: number): boolean {
    const dst = this.endpoints.get(key(dstAddr, dstPort));
    if (dst === undefined) {
      this.lost++;
      return false;
    }
    dst.deliver(Buffer.from(data), srcAddr >>> 0, srcPort);
    return true;
  }

  /** @internal */
  unbind(c: MemoryConn): void {
    const k = key(c.localAddr, c.localPort);
    if (this.endpoints.get(k) === c) this.endpoints.delete(k);
  }
}

export class MemoryConn implements PacketConn {
  readonly localAddr: number;
  readonly localPort: number;
  readonly offloads: ConnOffloadState = NO_OFFLOADS;
  /** Accept at most this many datagrams per send() (default: all), to test partial sends. */
  sendLimit = Infinity;
  /** Datagrams dropped because the receive queue was full. */
  overflows = 0;
  /** Receive queue limit in datagrams (like a socket buffer). */
  queueLimit = 1 << 20;
  private readonly net: MemoryNetwork;
  private readonly queue: Datagram[] = [];
  private head = 0;
  private onReadable: (() => void) | undefined;
  private scheduled = false;
  private closed = false;

  constructor(net: MemoryNetwork, addr: number, port: number) {
    this.net = net;
    this.localAddr = addr;
    this.localPort = port;
  }

  get pending(): number {
    return this.queue.length - this.head;
  }

  recv(batch: PacketBatch): number {
    batch.count = 0;
    const arena = batch.arena;
    let at = 0;
    while (this.head < this.queue.length && batch.count < batch.capacity) {
      const d = this.queue[this.head] as Datagram;
      if (at + d.data.length > arena.length) break;
      arena.set(d.data, at);
      batch.push(at, d.data.length, d.addr, d.port);
      at += (d.data.length + 7) & ~7;
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

  send(batch: PacketBatch): number {
    if (this.closed) return 0;
    const n = Math.min(batch.count, this.sendLimit);
    for (let i = 0; i < n; i++) {
      const off = batch.offset[i] as number;
      const data = batch.arena.subarray(off, off + (batch.length[i] as number));
      this.net.inject(data, this.localAddr, this.localPort, batch.addr[i] as number, batch.port[i] as number);
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
    if (this.closed) return;
    this.closed = true;
    this.onReadable = undefined;
    this.queue.length = 0;
    this.head = 0;
    this.net.unbind(this);
  }

  /** @internal Called by MemoryNetwork. */
  deliver(data: Buffer, addr: number, port: number): void {
    if (this.closed) return;
    if (this.pending >= this.queueLimit) {
      this.overflows++;
      return;
    }
    this.queue.push({ data, addr, port });
    this.schedule();
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
