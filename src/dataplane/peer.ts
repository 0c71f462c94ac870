/**
 * A peer as the data path sees it: a remote node's subnet and how to reach it. Ids are
 * small dense integers so per-peer counters live in typed arrays indexed by id;
 * PeerIdAllocator hands them out (lowest free first) keyed by lease key.
 */
import type { Ipv4Cidr } from '../routing/ipv4.ts';

export interface Peer {
  /** Dense id (0, 1, 2, ...), unique among live peers; indexes per-peer counters. */
  readonly id: number;
  /** The peer's pod subnet (its lease). */
  readonly subnet: Ipv4Cidr;
  /** Underlay address datagrams go to and come from (uint32). */
  readonly publicIp: number;
  /** UDP port to send to; 0 = the forwarder's port. */
  readonly port: number;
  /** The peer's VTEP MAC, 6 bytes (vxlan only). */
  readonly vtepMac?: Buffer | undefined;
  /** The lease key ("10.244.3.0-24"), for status and metrics labels. */
  readonly leaseKey: string;
  /**
   * The peer takes whole tunnel-GSO datagrams (its lease says "TunnelGSO": true); only then
   * does a whole TCP super-packet go to it through the tunnel-GSO TAP. Absent = no.
   */
  readonly tunnelGso?: boolean;
}

/** Dense ids for peers, reused after release (lowest free first). */
export class PeerIdAllocator {
  private readonly byKey = new Map<string, number>();
  private readonly free: number[] = [];
  private next = 0;

  /** The id held by `leaseKey`, allocating one when it has none. */
  acquire(leaseKey: string): number {
    const have = this.byKey.get(leaseKey);
    if (have !== undefined) return have;
    let id: number;
    if (this.free.length > 0) {
      this.free.sort((a, b) => b - a);
      id = this.free.pop() as number;
    } else {
      id = this.next++;
    }
    this.byKey.set(leaseKey, id);
    return id;
  }

  /** Frees `leaseKey`'s id; returns it, or undefined when it held none. */
  release(leaseKey: string): number | undefined {
    const id = this.byKey.get(leaseKey);
    if (id === undefined) return undefined;
    this.byKey.delete(leaseKey);
    this.free.push(id);
    return id;
  }

  get size(): number {
    return this.byKey.size;
  }
}
