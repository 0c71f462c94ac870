/**
 * PacketConn: a UDP socket moved in batches (the underlay side of the data path).
 *
 * Implementations: NativeConn (src/conn/native-conn.ts: recvmmsg/sendmmsg, UDP_SEGMENT
 * GSO on send and UDP_GRO on receive when the kernel has them) and MemoryConn
 * (src/conn/memory-conn.ts, an in-memory twin on a MemoryNetwork, for unit tests).
 */
import type { PacketBatch } from '../tun/batch.ts';

export interface ConnOffloadState {
  /** Consecutive same-destination, same-size datagrams go out as one UDP_SEGMENT send. */
  readonly gso: boolean;
  /** The kernel coalesces received datagrams (UDP_GRO); split again below this interface. */
  readonly gro: boolean;
}

export interface PacketConn {
  /** Local address (uint32, 0 = any) and port actually bound. */
  readonly localAddr: number;
  readonly localPort: number;
  readonly offloads: ConnOffloadState;
  /**
   * Receives datagrams ready now into `batch` (from count 0), without blocking: one
   * descriptor per datagram, with addr/port = the sender. Returns the count.
   */
  recv(batch: PacketBatch): number;
  /**
   * Sends descriptors [0, batch.count), each to (addr[i], port[i]). Synchronous: the bytes
   * may be reused on return. Returns how many datagrams were sent.
   */
  send(batch: PacketBatch): number;
  startReading(onReadable: () => void): void;
  stopReading(): void;
  close(): void;
}

export interface ConnOptions {
  /** Address to bind (uint32, 0 = any). */
  bindAddr: number;
  port: number;
  /** SO_REUSEPORT, for one socket per worker. */
  reusePort?: boolean;
  /** Receive buffer bytes (SO_RCVBUFFORCE when permitted). */
  rcvbuf?: number;
  sndbuf?: number;
  /** Try UDP_GSO/UDP_GRO (default true). */
  offloads?: boolean;
}
