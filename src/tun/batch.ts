/**
 * PacketBatch: the one currency of the data path.
 *
 * A batch is an arena Buffer plus parallel typed arrays of descriptors: packet i lives at
 * arena[offset[i], offset[i] + length[i]). `addr`/`port` carry the outer peer endpoint
 * (IPv4 as uint32, host order): the source after a socket receive, the destination for a
 * socket send. TUN reads leave them untouched.
 *
 * Ownership: a batch belongs to exactly one forwarder loop. Readers (TunDevice.read,
 * PacketConn.recv) overwrite it; writers (TunDevice.write, PacketConn.send) are synchronous
 * and have finished with the bytes when they return, so the batch may be refilled at once.
 * Nothing here allocates per packet: descriptors are rewritten in place (decap moves
 * offset forward, encap moves it back into the headroom and writes the header there).
 */
/**
 * Bytes of the jumbo region of a TUN read batch: 4 slots, each 16 bytes of metadata, 256 of
 * headroom and one 64 KiB super-packet plus 64 of slack (JUMBO_REGION in native/weft_io.c).
 */
export const JUMBO_REGION_BYTES = 4 * (16 + 256 + 65535 + 64);
/** One jumbo slot: its 16 bytes of metadata come first (JUMBO_SLOT in native/weft_io.c). */
const JUMBO_SLOT_BYTES = JUMBO_REGION_BYTES / 4;
/** The metadata byte that lets udpSend write the slot's packet whole (JUMBO_META_WHOLE). */
const JUMBO_META_WHOLE = 11;

export class PacketBatch {
  /** Backing store. Layout is decided by whoever fills the batch (see forSlots / forReceive). */
  readonly arena: Buffer;
  /** Bytes of headroom reserved in front of each slot's packet (for encap headers). */
  readonly headroom: number;
  /** Stride between slots, for batches laid out in fixed slots (0 when not slotted). */
  readonly slotSize: number;
  /** Maximum number of descriptors. */
  readonly capacity: number;
  /** Number of valid descriptors. */
  count = 0;
  readonly offset: Int32Array;
  readonly length: Int32Array;
  readonly addr: Uint32Array;
  readonly port: Uint16Array;
  /** Where the jumbo region starts (forTunRead); arena.length when there is none. */
  readonly jumboStart: number;

  constructor(
    arena: Buffer,
    capacity: number,
    slotSize: number,
    headroom: number,
    jumboStart = arena.length,
  ) {
    this.arena = arena;
    this.jumboStart = jumboStart;
    this.capacity = capacity;
    this.slotSize = slotSize;
    this.headroom = headroom;
    this.offset = new Int32Array(capacity);
    this.length = new Int32Array(capacity);
    this.addr = new Uint32Array(capacity);
    this.port = new Uint16Array(capacity);
  }

  /**
   * A batch of `capacity` fixed slots of `slotSize` bytes, each with `headroom` bytes in
   * front of the packet. Used for TUN reads (one MTU-sized packet per slot).
   */
  static forSlots(capacity: number, slotSize: number, headroom: number): PacketBatch {
    if (headroom >= slotSize) throw new RangeError('headroom must be smaller than slotSize');
    return new PacketBatch(Buffer.allocUnsafeSlow(capacity * slotSize), capacity, slotSize, headroom);
  }

  /**
   * A TUN read batch: forSlots plus a jumbo region (JUMBO_REGION_BYTES) at the arena's end,
   * where a TUN opened with keepSuperPackets puts up to 4 whole TCP super-packets per read (see
   * native/weft_io.c, tunnel GSO). Descriptors into it are ordinary descriptors to JS.
   */
  static forTunRead(capacity: number, slotSize: number, headroom: number): PacketBatch {
    if (headroom >= slotSize) throw new RangeError('headroom must be smaller than slotSize');
    const arena = Buffer.allocUnsafeSlow(capacity * slotSize + JUMBO_REGION_BYTES);
    return new PacketBatch(arena, capacity, slotSize, headroom, capacity * slotSize);
  }

  /**
   * Lets the whole super-packet whose descriptor starts at `offset` go to the tunnel-GSO TAP
   * as one write, for a peer that takes tunnel-GSO datagrams. Without it the socket
   * segments it into ordinary datagrams (what any flannel-format peer can read). Does
   * nothing for an offset outside the jumbo region. Allocation-free.
   */
  sendWhole(offset: number): void {
    const rel = offset - this.jumboStart;
    if (rel < 0) return;
    this.arena[rel - (rel % JUMBO_SLOT_BYTES) + this.jumboStart + JUMBO_META_WHOLE] = 1;
  }

  /**
   * A batch for socket receives with UDP GRO: `messages` receive buffers of `messageSize`
   * bytes; each coalesced message may hold up to 64 datagrams, each of which gets its own
   * descriptor, so capacity = messages * 64.
   */
  static forReceive(messages: number, messageSize = 65536): PacketBatch {
    return new PacketBatch(Buffer.allocUnsafeSlow(messages * messageSize), messages * 64, messageSize, 0);
  }

  /** Start offset of slot i's packet area (after the headroom). */
  slotStart(i: number): number {
    return i * this.slotSize + this.headroom;
  }

  /** Appends a descriptor; returns its index, or -1 when full. */
  push(offset: number, length: number, addr = 0, port = 0): number {
    const i = this.count;
    if (i >= this.capacity) return -1;
    this.offset[i] = offset;
    this.length[i] = length;
    this.addr[i] = addr;
    this.port[i] = port;
    this.count = i + 1;
    return i;
  }

  /** Copies a packet into slot `count` (slotted batches only); returns its index or -1. */
  pushCopy(packet: Uint8Array, addr = 0, port = 0): number {
    const i = this.count;
    if (i >= this.capacity || packet.length > this.slotSize - this.headroom) return -1;
    const start = this.slotStart(i);
    this.arena.set(packet, start);
    return this.push(start, packet.length, addr, port);
  }

  /** A view (no copy) of packet i. Not for hot paths: it allocates a view object. */
  view(i: number): Buffer {
    const off = this.offset[i] as number;
    return this.arena.subarray(off, off + (this.length[i] as number));
  }

  clear(): void {
    this.count = 0;
  }
}
