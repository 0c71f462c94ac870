/**
 * Encapsulation strategies: what goes between the outer UDP header (written by the socket)
 * and the inner IPv4 packet. Both work in place on a batch arena: encapsulate() writes its
 * header into the headroom in front of the packet and returns the new offset; decapsulate()
 * checks the header and leaves the inner packet at offset + headroom. Neither allocates nor
 * throws; failures are DropReason codes.
 *
 *  - udp (flannel's udp backend): the UDP payload is the raw IPv4 packet, headroom 0.
 *  - vxlan (RFC 7348, as the Linux vxlan driver writes it): 8-byte VXLAN header
 *    (flags 0x08, 24-bit VNI), then Ethernet dst = peer's VTEP MAC, src = ours, type 0x0800.
 *    Decap accepts only frames addressed to our own VTEP MAC: flannel programs permanent
 *    neighbour entries, so peers never flood broadcast frames to us, and anything but
 *    unicast IPv4 to us (ARP, multicast, another VTEP's traffic) is dropped as wrongMac or
 *    wrongEtherType. Reserved header bits are ignored on receipt (RFC 7348 section 5).
 */
import { ConfigError } from '../util/errors.ts';
import { DropReason } from './drop-reason.ts';

/** What an Encap needs from a peer (src/dataplane/peer.ts's Peer satisfies it). */
export interface EncapPeer {
  /** 6-byte VTEP MAC (vxlan only). */
  readonly vtepMac?: Buffer | undefined;
}

export interface Encap {
  readonly name: 'udp' | 'vxlan';
  /** Bytes written in front of the inner packet; also the bytes decap strips. */
  readonly headroom: number;
  /**
   * Writes the header into arena[offset - headroom, offset) and returns the new start
   * offset (the datagram is then headroom + length bytes long), or -DropReason when the
   * peer cannot be addressed. The caller guarantees offset >= headroom.
   */
  encapsulate(arena: Buffer, offset: number, length: number, peer: EncapPeer): number;
  /**
   * Checks the encapsulation header of the datagram at (offset, length). Returns
   * DropReason.none when valid (the inner packet is at offset + headroom, length - headroom
   * bytes, not yet validated as IPv4), else the drop reason.
   */
  decapsulate(arena: Buffer, offset: number, length: number): DropReason;
}

/** flannel udp: nothing added. */
export class UdpEncap implements Encap {
  readonly name = 'udp' as const;
  readonly headroom = 0;

  encapsulate(_arena: Buffer, offset: number, _length: number, _peer: EncapPeer): number {
    return offset;
  }

  decapsulate(_arena: Buffer, _offset: number, length: number): DropReason {
    return length > 0 ? DropReason.none : DropReason.truncated;
  }
}

export const VXLAN_HEADER = 8;
export const ETHERNET_HEADER = 14;
export const VXLAN_OVERHEAD = VXLAN_HEADER + ETHERNET_HEADER;
export const VXLAN_FLAG_I = 0x08;
export const ETHERTYPE_IPV4 = 0x0800;

export class VxlanEncap implements Encap {
  readonly name = 'vxlan' as const;
  readonly headroom = VXLAN_OVERHEAD;
  readonly vni: number;
  /** Our VTEP MAC (a private copy). */
  readonly localMac: Buffer;
  private readonly mac0: number;
  private readonly mac1: number;
  private readonly mac2: number;
  private readonly mac3: number;
  private readonly mac4: number;
  private readonly mac5: number;

  constructor(vni: number, localMac: Uint8Array) {
    if (!Number.isInteger(vni) || vni < 0 || vni > 0xffffff) {
      throw new ConfigError(
        'Backend.VNI',
        `VNI ${vni} is outside 0..16777215; pick a 24-bit VNI (flannel's default is 1)`,
      );
    }
    if (localMac.length !== 6) {
      throw new ConfigError('VtepMAC', `the local VTEP MAC has ${localMac.length} bytes; it must have 6`);
    }
    this.vni = vni;
    this.localMac = Buffer.from(localMac);
    this.mac0 = localMac[0] as number;
    this.mac1 = localMac[1] as number;
    this.mac2 = localMac[2] as number;
    this.mac3 = localMac[3] as number;
    this.mac4 = localMac[4] as number;
    this.mac5 = localMac[5] as number;
  }

  encapsulate(arena: Buffer, offset: number, _length: number, peer: EncapPeer): number {
    const mac = peer.vtepMac;
    if (mac === undefined || mac.length !== 6) return -DropReason.noPeerMac;
    const h = offset - VXLAN_OVERHEAD;
    const vni = this.vni;
    arena[h] = VXLAN_FLAG_I;
    arena[h + 1] = 0;
    arena[h + 2] = 0;
    arena[h + 3] = 0;
    arena[h + 4] = vni >>> 16;
    arena[h + 5] = (vni >>> 8) & 0xff;
    arena[h + 6] = vni & 0xff;
    arena[h + 7] = 0;
    const e = h + VXLAN_HEADER;
    arena[e] = mac[0] as number;
    arena[e + 1] = mac[1] as number;
    arena[e + 2] = mac[2] as number;
    arena[e + 3] = mac[3] as number;
    arena[e + 4] = mac[4] as number;
    arena[e + 5] = mac[5] as number;
    arena[e + 6] = this.mac0;
    arena[e + 7] = this.mac1;
    arena[e + 8] = this.mac2;
    arena[e + 9] = this.mac3;
    arena[e + 10] = this.mac4;
    arena[e + 11] = this.mac5;
    arena[e + 12] = ETHERTYPE_IPV4 >>> 8;
    arena[e + 13] = ETHERTYPE_IPV4 & 0xff;
    return h;
  }

  decapsulate(arena: Buffer, offset: number, length: number): DropReason {
    if (length <= VXLAN_OVERHEAD) return DropReason.truncated;
    if (((arena[offset] as number) & VXLAN_FLAG_I) === 0) return DropReason.badVxlanFlags;
    const vni =
      ((arena[offset + 4] as number) << 16) |
      ((arena[offset + 5] as number) << 8) |
      (arena[offset + 6] as number);
    if (vni !== this.vni) return DropReason.wrongVni;
    const e = offset + VXLAN_HEADER;
    if (
      arena[e] !== this.mac0 ||
      arena[e + 1] !== this.mac1 ||
      arena[e + 2] !== this.mac2 ||
      arena[e + 3] !== this.mac3 ||
      arena[e + 4] !== this.mac4 ||
      arena[e + 5] !== this.mac5
    ) {
      return DropReason.wrongMac;
    }
    if ((((arena[e + 12] as number) << 8) | (arena[e + 13] as number)) !== ETHERTYPE_IPV4) {
      return DropReason.wrongEtherType;
    }
    return DropReason.none;
  }
}

export type EncapConfig =
  | { readonly type: 'udp' }
  | { readonly type: 'vxlan'; readonly vni: number; readonly localMac: Uint8Array };

export function createEncap(config: EncapConfig): Encap {
  return config.type === 'udp' ? new UdpEncap() : new VxlanEncap(config.vni, config.localMac);
}
