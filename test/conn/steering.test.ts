// The reuseport steering program: on hand-built inner packets (through the test-only cBPF
// interpreter) the same flow always gets the same index, flows spread fairly, and anything
// odd gets a valid index; then in a throwaway namespace the kernel delivers datagrams to the
// reuseport socket the interpreter predicts.
import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  MAX_STEERING_WORKERS,
  runCbpf,
  steeringInsns,
  steeringProgram,
  UDP_INNER_OFFSET,
  VXLAN_INNER_OFFSET,
} from '../../src/conn/steering.ts';
import { NetnsRun } from '../../src/netns/netns.ts';
import { projectRoot } from '../../src/util/self.ts';

interface Inner {
  src: number;
  dst: number;
  proto: number;
  sport?: number;
  dport?: number;
  /** Fragment offset in 8-byte units; mf = more fragments. */
  fragOffset?: number;
  mf?: boolean;
  /** Bytes of IP options (multiple of 4). */
  options?: number;
  payload?: number;
  ttl?: number;
}

function ipv4(p: Inner): Buffer {
  const ihl = 20 + (p.options ?? 0);
  const l4 = p.proto === 6 ? 20 : p.proto === 17 ? 8 : 8;
  const len = ihl + l4 + (p.payload ?? 16);
  const b = Buffer.alloc(len, 0xa5);
  b[0] = 0x40 | (ihl / 4);
  b[1] = 0;
  b.writeUInt16BE(len, 2);
  b.writeUInt16BE(0x1234, 4);
  b.writeUInt16BE(((p.mf ? 1 : 0) << 13) | (p.fragOffset ?? 0), 6);
  b[8] = p.ttl ?? 64;
  b[9] = p.proto;
  b.writeUInt32BE(p.src >>> 0, 12);
  b.writeUInt32BE(p.dst >>> 0, 16);
  for (let i = 20; i < ihl; i++) b[i] = 1; // NOP options
  if (p.sport !== undefined) b.writeUInt16BE(p.sport, ihl);
  if (p.dport !== undefined) b.writeUInt16BE(p.dport, ihl + 2);
  return b;
}

/** The UDP payload for `inner` in the wire format with the inner packet at `offset`. */
function wire(inner: Buffer, offset: number): Buffer {
  const head = Buffer.alloc(offset, 0x11);
  if (offset === VXLAN_INNER_OFFSET) {
    head[0] = 0x08;
    head.writeUInt16BE(0x0800, 20);
  }
  return Buffer.concat([head, inner]);
}

function rnd32(): number {
  return (Math.random() * 0x100000000) >>> 0;
}

const POD_A = 0x0af40100; // 10.244.1.0
const POD_B = 0x0af40200;

for (const offset of [UDP_INNER_OFFSET, VXLAN_INNER_OFFSET]) {
  void test(`same flow -> same index, odd packets -> a valid index (inner offset ${offset})`, () => {
    for (const workers of [2, 3, 4, 8]) {
      const prog = steeringInsns({ innerOffset: offset, workers });
      const idx = (inner: Buffer): number => runCbpf(prog, wire(inner, offset));
      for (let f = 0; f < 200; f++) {
        const flow = {
          src: POD_A + 10 + (f % 50),
          dst: POD_B + 10 + (f % 7),
          proto: f % 2 ? 6 : 17,
          sport: 1024 + ((f * 7919) % 60000),
          dport: 5201 + (f % 13),
        };
        const want = idx(ipv4(flow));
        assert.ok(want >= 0 && want < workers);
        // Payload size, TTL and IP options do not move a flow.
        assert.equal(idx(ipv4({ ...flow, payload: 1400 })), want);
        assert.equal(idx(ipv4({ ...flow, payload: 0, ttl: 3 })), want);
        assert.equal(idx(ipv4({ ...flow, options: 12 })), want);
        // Every fragment of one datagram lands together (ports are not looked at in fragments).
        const first = idx(ipv4({ ...flow, mf: true }));
        assert.equal(idx(ipv4({ ...flow, sport: 1, dport: 2, fragOffset: 185 })), first);
        assert.equal(idx(ipv4({ ...flow, sport: 3, dport: 4, fragOffset: 370, mf: true })), first);
        // Not TCP/UDP: addresses only.
        const icmp = idx(ipv4({ src: flow.src, dst: flow.dst, proto: 1 }));
        assert.ok(icmp >= 0 && icmp < workers);
        assert.equal(idx(ipv4({ src: flow.src, dst: flow.dst, proto: 1, payload: 56 })), icmp);
      }
      // Unparsable: too short, not IPv4, TCP header cut off -> 0.
      assert.equal(idx(Buffer.alloc(0)), 0);
      assert.equal(runCbpf(prog, Buffer.alloc(offset + 19, 0x45)), 0);
      const v6 = ipv4({ src: POD_A, dst: POD_B, proto: 6, sport: 1, dport: 2 });
      v6[0] = 0x60;
      assert.equal(idx(v6), 0);
      const cut = ipv4({ src: POD_A, dst: POD_B, proto: 6, sport: 1, dport: 2, options: 40 });
      assert.equal(idx(cut.subarray(0, 22)), 0);
    }
  });

  void test(`1000 random flows spread fairly over 2 and 4 workers (inner offset ${offset})`, () => {
    for (const workers of [2, 4]) {
      const prog = steeringInsns({ innerOffset: offset, workers });
      const per = new Array<number>(workers).fill(0);
      const n = 1000;
      for (let f = 0; f < n; f++) {
        const inner = ipv4({
          src: rnd32(),
          dst: rnd32(),
          proto: f % 3 === 0 ? 17 : 6,
          sport: (Math.random() * 65536) | 0,
          dport: (Math.random() * 65536) | 0,
        });
        const i = runCbpf(prog, wire(inner, offset));
        per[i] = (per[i] ?? 0) + 1;
      }
      const fair = n / workers;
      for (const c of per) assert.ok(c > fair * 0.75 && c < fair * 1.25, `uneven spread ${per.join('/')}`);
      // Flows that differ only in the client port (pods talking over many connections) spread too.
      const byPort = new Array<number>(workers).fill(0);
      for (let sport = 40000; sport < 40000 + n; sport++) {
        const inner = ipv4({ src: POD_A + 10, dst: POD_B + 10, proto: 6, sport, dport: 5201 });
        const i = runCbpf(prog, wire(inner, offset));
        byPort[i] = (byPort[i] ?? 0) + 1;
      }
      for (const c of byPort)
        assert.ok(c > fair * 0.75 && c < fair * 1.25, `uneven spread ${byPort.join('/')}`);
    }
  });
}

void test('any bytes at all give an index in range; one worker is always index 0', () => {
  const progs = [2, 3, 4, 7, MAX_STEERING_WORKERS].map((w) => ({
    w,
    p: steeringInsns({ innerOffset: VXLAN_INNER_OFFSET, workers: w }),
    q: steeringInsns({ innerOffset: UDP_INNER_OFFSET, workers: w }),
  }));
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 0, maxLength: 120 }), (bytes) => {
      for (const { w, p, q } of progs) {
        const a = runCbpf(p, bytes);
        const b = runCbpf(q, bytes);
        if (!(a >= 0 && a < w && b >= 0 && b < w)) return false;
      }
      return true;
    }),
    { numRuns: 2000 },
  );
  const one = steeringInsns({ innerOffset: 0, workers: 1 });
  assert.equal(runCbpf(one, ipv4({ src: 1, dst: 2, proto: 6, sport: 3, dport: 4 })), 0);
  assert.equal(steeringProgram({ innerOffset: 0, workers: 4 }).length % 8, 0);
  assert.throws(() => steeringProgram({ innerOffset: 0, workers: 0 }), /workers/);
  assert.throws(() => steeringProgram({ innerOffset: 0, workers: 65 }), /workers/);
});

// ---- the real kernel -------------------------------------------------------------------

/**
 * Runs inside the namespace: N reuseport sockets on 127.0.0.1:PORT (bind order = index),
 * the program attached, every datagram of SEND (hex payloads) sent from another socket;
 * prints which socket got which payload number (first 4 bytes after the inner headers).
 */
const CHILD = `
const root = process.env.ROOT;
const { openConn } = await import(root + '/src/conn/native-conn.ts');
const { loadAddon } = await import(root + '/src/native/addon.ts');
const { PacketBatch } = await import(root + '/src/tun/batch.ts');
const N = Number(process.env.N), PORT = Number(process.env.PORT), LO = 0x7f000001;
const socks = [];
for (let i = 0; i < N; i++) socks.push(openConn({ bindAddr: LO, port: PORT, reusePort: true, offloads: false }));
// NativeConn keeps its addon handle in a (TypeScript-private) field.
loadAddon().udpAttachSteering(socks[0].handle, Buffer.from(process.env.PROG, 'hex'));
const tx = openConn({ bindAddr: LO, port: 0, offloads: false });
const payloads = JSON.parse(process.env.SEND).map((x) => Buffer.from(x, 'hex'));
const b = PacketBatch.forSlots(payloads.length, 2048, 0);
for (const p of payloads) b.pushCopy(p, LO, PORT);
if (tx.send(b) !== payloads.length) throw new Error('short send');
await new Promise((r) => setTimeout(r, 300));
const rx = PacketBatch.forReceive(4);
const got = socks.map(() => []);
socks.forEach((s, i) => {
  for (;;) {
    const n = s.recv(rx);
    if (n <= 0) break;
    for (let k = 0; k < n; k++) got[i].push(rx.arena.readUInt32BE((rx.offset[k]) + Number(process.env.TAG)));
  }
});
process.stdout.write(JSON.stringify(got));
process.exit(0);
`;

void test('the kernel delivers each datagram to the socket the program names', async (t) => {
  const run = new NetnsRun();
  t.after(() => run.destroy());
  const ns = await run.addNamespace('steer');
  for (const [offset, workers] of [
    [UDP_INNER_OFFSET, 2],
    [UDP_INNER_OFFSET, 4],
    [VXLAN_INNER_OFFSET, 3],
  ] as const) {
    const prog = steeringInsns({ innerOffset: offset, workers });
    const tagAt = offset + 40;
    const sends: Buffer[] = [];
    const want = new Array<number>();
    for (let f = 0; f < 64; f++) {
      const inner = ipv4({
        src: POD_A + 10,
        dst: POD_B + 10 + (f % 3),
        proto: f % 5 === 4 ? 1 : 6,
        sport: 30000 + f * 17,
        dport: 5201,
        payload: 16,
      });
      const d = wire(inner, offset);
      // The datagram's number, in the inner payload (past the TCP header; the ICMP
      // packets are long enough too), where the hash does not look.
      d.writeUInt32BE(f, tagAt);
      sends.push(d);
      want.push(runCbpf(prog, d));
    }
    const proc = run.spawn(ns, process.execPath, ['--import', 'tsx', '--input-type=module', '-e', CHILD], {
      env: {
        ...process.env,
        ROOT: resolve(projectRoot),
        N: String(workers),
        PORT: String(9000 + workers),
        PROG: steeringProgram({ innerOffset: offset, workers }).toString('hex'),
        SEND: JSON.stringify(sends.map((d) => d.toString('hex'))),
        TAG: String(tagAt),
      },
    });
    const code = await proc.exited;
    assert.equal(code, 0, proc.output());
    const got = JSON.parse(proc.output()) as number[][];
    assert.equal(got.length, workers);
    assert.equal(
      got.reduce((n, g) => n + g.length, 0),
      sends.length,
      'every datagram arrived',
    );
    const used = new Set<number>();
    got.forEach((tags, sock) => {
      for (const f of tags) {
        assert.equal(sock, want[f], `datagram ${f} landed on socket ${sock}, predicted ${want[f]}`);
        used.add(sock);
      }
    });
    assert.equal(
      used.size,
      workers,
      `all ${workers} sockets received some: ${got.map((g) => g.length).join('/')}`,
    );
  }
});
