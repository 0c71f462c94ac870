/**
 * Steering of received datagrams to the worker that owns their inner flow.
 *
 * Why: every datagram between two nodes carries the same outer addresses and ports (udp
 * 8285 <-> 8285, vxlan likewise per flow only on the kernel side), so the kernel's default
 * SO_REUSEPORT hash would put a node pair's whole traffic on one socket, i.e. one worker.
 * This classic BPF program (SO_ATTACH_REUSEPORT_CBPF; the kernel runs it with the packet
 * data starting at the UDP payload) hashes the INNER IPv4 flow instead: source and
 * destination address and, for TCP/UDP packets that are not fragments, the port pair, then
 * returns hash % workers as the socket's index in the reuseport group (bind order). The
 * same flow always lands on the same worker; anything it cannot parse (too short, not
 * IPv4) goes to index 0. A load past the end of the packet makes the kernel return 0 too.
 *
 * The module also holds a small classic BPF interpreter, used by the tests to predict
 * where the kernel delivers a datagram; it is not used in the data path.
 */
import { ConfigError } from '../util/errors.ts';

/** Classic BPF opcodes (linux/filter.h, linux/bpf_common.h) this module uses. */
export const Bpf = {
  LD: 0x00,
  LDX: 0x01,
  ST: 0x02,
  STX: 0x03,
  ALU: 0x04,
  JMP: 0x05,
  RET: 0x06,
  MISC: 0x07,
  W: 0x00,
  H: 0x08,
  B: 0x10,
  IMM: 0x00,
  ABS: 0x20,
  IND: 0x40,
  MEM: 0x60,
  LEN: 0x80,
  MSH: 0xa0,
  ADD: 0x00,
  SUB: 0x10,
  MUL: 0x20,
  DIV: 0x30,
  OR: 0x40,
  AND: 0x50,
  LSH: 0x60,
  RSH: 0x70,
  NEG: 0x80,
  MOD: 0x90,
  XOR: 0xa0,
  JA: 0x00,
  JEQ: 0x10,
  JGT: 0x20,
  JGE: 0x30,
  JSET: 0x40,
  K: 0x00,
  X: 0x08,
  A: 0x10,
  TAX: 0x00,
  TXA: 0x80,
} as const;

/** One struct sock_filter. */
export interface BpfInsn {
  readonly code: number;
  readonly jt: number;
  readonly jf: number;
  readonly k: number;
}

/** Bytes per struct sock_filter. */
export const BPF_INSN_SIZE = 8;
/** Most workers a program can steer to (also weftd's --workers limit). */
export const MAX_STEERING_WORKERS = 64;

/** Inner IPv4 offset in the UDP payload: udp wire format (raw IPv4). */
export const UDP_INNER_OFFSET = 0;
/** Inner IPv4 offset in the UDP payload: vxlan (8-byte VXLAN + 14-byte Ethernet header). */
export const VXLAN_INNER_OFFSET = 22;

export interface SteeringOptions {
  /** Where the inner IPv4 header starts in the UDP payload. */
  readonly innerOffset: number;
  /** Sockets in the reuseport group (1..64). */
  readonly workers: number;
}

const B = Bpf;

/** The instructions of the steering program (see the module comment). */
export function steeringInsns(opts: SteeringOptions): BpfInsn[] {
  const { innerOffset: o, workers } = opts;
  if (!Number.isInteger(o) || o < 0 || o > 1500) {
    throw new ConfigError('innerOffset', `must be an integer 0..1500, got ${o}`);
  }
  if (!Number.isInteger(workers) || workers < 1 || workers > MAX_STEERING_WORKERS) {
    throw new ConfigError('workers', `must be an integer 1..${MAX_STEERING_WORKERS}, got ${workers}`);
  }
  if (workers === 1) return [{ code: B.RET | B.K, jt: 0, jf: 0, k: 0 }];
  // Assembled with symbolic jump targets, resolved below (cBPF jumps are forward only).
  type Asm = { code: number; k: number; jt?: string; jf?: string; label?: string };
  const s = (code: number, k = 0, extra: Partial<Asm> = {}): Asm => ({ code, k, ...extra });
  const prog: Asm[] = [
    s(B.LD | B.W | B.LEN),
    s(B.JMP | B.JGE | B.K, o + 20, { jf: 'zero' }),
    s(B.LD | B.B | B.ABS, o),
    s(B.ALU | B.AND | B.K, 0xf0),
    s(B.JMP | B.JEQ | B.K, 0x40, { jf: 'zero' }),
    // h = src * K1 ^ dst, times K2
    s(B.LD | B.W | B.ABS, o + 12),
    s(B.ALU | B.MUL | B.K, 0x9e3779b1),
    s(B.ST, 0),
    s(B.LD | B.W | B.ABS, o + 16),
    s(B.LDX | B.MEM, 0),
    s(B.ALU | B.XOR | B.X),
    s(B.ALU | B.MUL | B.K, 0x85ebca77),
    s(B.ST, 0),
    // Ports for TCP (6) and UDP (17) only.
    s(B.LD | B.B | B.ABS, o + 9),
    s(B.JMP | B.JEQ | B.K, 6, { jt: 'ports' }),
    s(B.JMP | B.JEQ | B.K, 17, { jf: 'mix' }),
    // Not a fragment (MF set or a fragment offset): fragments carry no (or no reliable) ports.
    s(B.LD | B.H | B.ABS, o + 6, { label: 'ports' }),
    s(B.JMP | B.JSET | B.K, 0x3fff, { jt: 'mix' }),
    s(B.LDX | B.B | B.MSH, o),
    s(B.LD | B.W | B.IND, o),
    s(B.LDX | B.MEM, 0),
    s(B.ALU | B.XOR | B.X),
    s(B.ST, 0),
    // Finalizer (murmur3 fmix32), then the index.
    s(B.LD | B.MEM, 0, { label: 'mix' }),
    s(B.MISC | B.TAX),
    s(B.ALU | B.RSH | B.K, 16),
    s(B.ALU | B.XOR | B.X),
    s(B.ALU | B.MUL | B.K, 0x85ebca6b),
    s(B.MISC | B.TAX),
    s(B.ALU | B.RSH | B.K, 13),
    s(B.ALU | B.XOR | B.X),
    s(B.ALU | B.MUL | B.K, 0xc2b2ae35),
    s(B.MISC | B.TAX),
    s(B.ALU | B.RSH | B.K, 16),
    s(B.ALU | B.XOR | B.X),
    s(B.ALU | B.MOD | B.K, workers),
    s(B.RET | B.A),
    s(B.RET | B.K, 0, { label: 'zero' }),
  ];
  const at = new Map<string, number>();
  prog.forEach((p, i) => {
    if (p.label !== undefined) at.set(p.label, i);
  });
  const rel = (i: number, label: string | undefined): number => {
    if (label === undefined) return 0;
    const to = at.get(label);
    if (to === undefined || to <= i || to - i - 1 > 255) throw new Error(`bad BPF jump to ${label}`);
    return to - i - 1;
  };
  return prog.map((p, i) => ({ code: p.code, jt: rel(i, p.jt), jf: rel(i, p.jf), k: p.k >>> 0 }));
}

/** The instructions as struct sock_filter bytes (host byte order), ready for the kernel. */
export function encodeInsns(insns: readonly BpfInsn[]): Buffer {
  const buf = Buffer.alloc(insns.length * BPF_INSN_SIZE);
  const le = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  insns.forEach((x, i) => {
    const at = i * BPF_INSN_SIZE;
    if (le) {
      buf.writeUInt16LE(x.code, at);
      buf.writeUInt32LE(x.k >>> 0, at + 4);
    } else {
      buf.writeUInt16BE(x.code, at);
      buf.writeUInt32BE(x.k >>> 0, at + 4);
    }
    buf[at + 2] = x.jt;
    buf[at + 3] = x.jf;
  });
  return buf;
}

/** The steering program as struct sock_filter bytes, for addon.udpAttachSteering(). */
export function steeringProgram(opts: SteeringOptions): Buffer {
  return encodeInsns(steeringInsns(opts));
}

/**
 * Runs a classic BPF program over `pkt` the way the kernel does for socket filters (loads
 * are big-endian, a load out of bounds or a division by zero ends the program with 0).
 * Returns the program's return value. Tests only.
 */
export function runCbpf(insns: readonly BpfInsn[], pkt: Uint8Array): number {
  let a = 0;
  let x = 0;
  const mem = new Uint32Array(16);
  const load = (off: number, size: number): number | undefined => {
    if (off < 0 || off + size > pkt.length) return undefined;
    let v = 0;
    for (let i = 0; i < size; i++) v = (v * 256 + (pkt[off + i] as number)) >>> 0;
    return v;
  };
  for (let pc = 0; pc < insns.length; pc++) {
    const { code, jt, jf, k } = insns[pc] as BpfInsn;
    const cls = code & 0x07;
    switch (cls) {
      case B.LD:
      case B.LDX: {
        const mode = code & 0xe0;
        const size = (code & 0x18) === B.W ? 4 : (code & 0x18) === B.H ? 2 : 1;
        let v: number | undefined;
        if (mode === B.IMM) v = k;
        else if (mode === B.LEN) v = pkt.length;
        else if (mode === B.MEM) v = mem[k & 15];
        else if (mode === B.ABS) v = load(k, size);
        else if (mode === B.IND) v = load(x + k, size);
        else if (mode === B.MSH) {
          const b = load(k, 1);
          v = b === undefined ? undefined : (b & 0xf) * 4;
        }
        if (v === undefined) return 0;
        if (cls === B.LD) a = v >>> 0;
        else x = v >>> 0;
        break;
      }
      case B.ST:
        mem[k & 15] = a;
        break;
      case B.STX:
        mem[k & 15] = x;
        break;
      case B.ALU: {
        const op = code & 0xf0;
        const v = (code & B.X) !== 0 ? x : k >>> 0;
        if ((op === B.DIV || op === B.MOD) && v === 0) return 0;
        switch (op) {
          case B.ADD:
            a = (a + v) >>> 0;
            break;
          case B.SUB:
            a = (a - v) >>> 0;
            break;
          case B.MUL:
            a = Math.imul(a, v) >>> 0;
            break;
          case B.DIV:
            a = Math.floor(a / v) >>> 0;
            break;
          case B.MOD:
            a = a % v >>> 0;
            break;
          case B.OR:
            a = (a | v) >>> 0;
            break;
          case B.AND:
            a = (a & v) >>> 0;
            break;
          case B.XOR:
            a = (a ^ v) >>> 0;
            break;
          case B.LSH:
            a = v >= 32 ? 0 : (a << v) >>> 0;
            break;
          case B.RSH:
            a = v >= 32 ? 0 : a >>> v;
            break;
          case B.NEG:
            a = -a >>> 0;
            break;
          default:
            throw new Error(`unsupported ALU op 0x${code.toString(16)} at ${pc}`);
        }
        break;
      }
      case B.JMP: {
        const op = code & 0xf0;
        if (op === B.JA) {
          pc += k;
          break;
        }
        const v = (code & B.X) !== 0 ? x : k >>> 0;
        const cond = op === B.JEQ ? a === v : op === B.JGT ? a > v : op === B.JGE ? a >= v : (a & v) !== 0;
        pc += cond ? jt : jf;
        break;
      }
      case B.RET:
        return ((code & 0x18) === B.A ? a : k) >>> 0;
      case B.MISC:
        if ((code & 0xf8) === B.TXA) a = x;
        else x = a;
        break;
      default:
        throw new Error(`unsupported BPF class at ${pc}`);
    }
  }
  throw new Error('BPF program fell off its end');
}
