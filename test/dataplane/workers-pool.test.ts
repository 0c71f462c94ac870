// The worker pool on its own, in a throwaway namespace: a main forwarder plus 2 worker
// threads over one multi-queue TUN device and 3 reuseport sockets. Datagrams from a peer
// land on exactly the workers the steering program predicts (exact per-worker figures after
// refreshStats()); a worker that crashes is counted and restarted with its counters and the
// current peers; peer changes reach every worker; close() ends every thread.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { NetnsRun } from '../../src/netns/netns.ts';
import { projectRoot } from '../../src/util/self.ts';

/** Runs in the namespace; prints one JSON line with what it saw. */
const CHILD = `
const root = process.env.ROOT;
const { execFileSync } = await import('node:child_process');
const { openTun } = await import(root + '/src/tun/native-tun.ts');
const { openConn } = await import(root + '/src/conn/native-conn.ts');
const { Forwarder } = await import(root + '/src/dataplane/forwarder.ts');
const { UdpEncap } = await import(root + '/src/encap/encap.ts');
const { WorkerPool } = await import(root + '/src/dataplane/workers/pool.ts');
const { silentLogger } = await import(root + '/src/util/log.ts');
const { steeringInsns, runCbpf } = await import(root + '/src/conn/steering.ts');
const { PacketBatch } = await import(root + '/src/tun/batch.ts');
const { internetChecksum } = await import(root + '/src/encap/checksum.ts');

const LO = 0x7f000001, PORT = 8285, PEER_PORT = 9999, W = 3;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const tun = openTun({ name: 'wq0', mtu: 1400, offloads: true, multiQueue: true });
execFileSync('ip', ['link', 'set', 'dev', 'wq0', 'up']);
const conn = openConn({ bindAddr: LO, port: PORT, reusePort: true });
const fwd = new Forwarder({
  tun, conn, encap: new UdpEncap(), port: PORT,
  local: { subnet: { addr: 0x0af40100, prefix: 24 }, tunAddr: 0x0af40100 },
});
fwd.start();
const pool = await WorkerPool.start({
  workers: W, main: fwd, mainConn: conn, log: silentLogger(), restartDelayMs: 100,
  tun: { name: 'wq0', mtu: 1400, offloads: true },
  conn: { bindAddr: LO, port: PORT, offloads: true },
});
const peer = { id: 0, subnet: { addr: 0x0af40200, prefix: 24 }, publicIp: LO, port: PEER_PORT, leaseKey: '10.244.2.0-24' };
pool.setPeers([peer]);
await pool.refreshStats(); // every worker has handled setPeers once it answered

const prog = steeringInsns({ innerOffset: 0, workers: W });
const tx = openConn({ bindAddr: LO, port: PEER_PORT, offloads: false });
function packet(f) {
  const b = Buffer.alloc(20 + 8 + 32, 0x5a);
  b[0] = 0x45; b.writeUInt16BE(b.length, 2); b[8] = 64; b[9] = 17;
  b.writeUInt32BE(0x0af4020a + (f % 5), 12); b.writeUInt32BE(0x0af4010a, 16);
  b.writeUInt16BE(20000 + f * 13, 20); b.writeUInt16BE(7000 + (f % 3), 22);
  b.writeUInt16BE(b.length - 20, 24); b.writeUInt16BE(0, 26);
  b.writeUInt16BE(0, 10); b.writeUInt16BE(internetChecksum(b, 0, 20), 10);
  return b;
}
const N = 60;
const predicted = new Array(W).fill(0);
async function sendAll() {
  const batch = PacketBatch.forSlots(N, 128, 0);
  for (let f = 0; f < N; f++) {
    const p = packet(f);
    predicted[runCbpf(prog, p)]++;
    batch.pushCopy(p, LO, PORT);
  }
  if (tx.send(batch) !== N) throw new Error('short send');
  await sleep(300);
  await pool.refreshStats();
}
const out = {};
await sendAll();
out.predicted1 = [...predicted];
out.snap1 = pool.snapshot();

await pool.crashWorker(1);
const until = Date.now() + 5000;
while (!(pool.workerFigures()[1].alive && pool.counters.restarts === 1) && Date.now() < until) await sleep(50);
await pool.refreshStats();
out.snap2 = pool.snapshot();
out.counters2 = { ...pool.counters };

await sendAll();
out.snap3 = pool.snapshot();

pool.removePeer(0);
await sendAll();
out.snap4 = pool.snapshot();

await pool.close();
out.afterClose = pool.workerFigures().map((f) => f.alive);
fwd.stop(); conn.close(); tun.close(); tx.close();
process.stdout.write(JSON.stringify(out) + '\\n');
process.exit(0);
`;

interface Fig {
  worker: number;
  alive: boolean;
  restarts: number;
  fromNetwork: number;
  toTun: number;
}
interface Snap {
  counters: Record<string, number>;
  drops: Record<string, number>;
  peers: { id: number; rxPackets: number }[];
  workers: Fig[];
}
interface Out {
  predicted1: number[];
  snap1: Snap;
  snap2: Snap;
  snap3: Snap;
  snap4: Snap;
  counters2: { deaths: number; restarts: number };
  afterClose: boolean[];
}

void test('worker pool: exact steering, crash and restart with counters kept, peer changes, close', async (t) => {
  const run = new NetnsRun();
  t.after(() => run.destroy());
  const ns = await run.addNamespace('pool');
  const proc = run.spawn(ns, process.execPath, ['--import', 'tsx', '--input-type=module', '-e', CHILD], {
    env: { ...process.env, ROOT: projectRoot },
  });
  const code = await proc.exited;
  assert.equal(code, 0, proc.output());
  const line = proc
    .output()
    .split('\n')
    .find((l) => l.startsWith('{'));
  assert.ok(line, proc.output());
  const o = JSON.parse(line) as Out;

  // Every datagram on the worker the program names, and forwarded into the TUN there.
  assert.ok(
    o.predicted1.every((n) => n > 0),
    `all 3 workers should get flows: ${o.predicted1.join('/')}`,
  );
  assert.deepEqual(
    o.snap1.workers.map((w) => w.fromNetwork),
    o.predicted1,
  );
  assert.deepEqual(
    o.snap1.workers.map((w) => w.toTun),
    o.predicted1,
  );
  assert.equal(o.snap1.counters.recvPackets, 60);
  assert.equal(o.snap1.counters.tunWritePackets, 60);
  assert.equal(o.snap1.peers.find((p) => p.id === 0)?.rxPackets, 60);

  // The crash: counted, restarted, and the restarted worker continues its counters.
  assert.deepEqual(o.counters2, { deaths: 1, restarts: 1, steeringAttached: 2 });
  assert.equal(o.snap2.workers[1]?.alive, true);
  assert.equal(o.snap2.workers[1]?.restarts, 1);
  assert.equal(o.snap2.workers[1]?.fromNetwork, o.predicted1[1]);
  assert.equal(o.snap2.counters.recvPackets, 60);

  // The same flows again: the restarted worker has the peers (no unknownPeer drops) and the
  // reuseport group still steers by flow (the restarted socket may hold another index).
  assert.equal(o.snap3.counters.recvPackets, 120);
  assert.equal(o.snap3.counters.tunWritePackets, 120);
  assert.equal(o.snap3.drops.unknownPeer, 0);
  const per3 = o.snap3.workers.map((w) => w.fromNetwork - (o.snap1.workers[w.worker]?.fromNetwork ?? 0));
  assert.deepEqual(
    [...per3].sort((a, b) => a - b),
    [...o.predicted1].sort((a, b) => a - b),
    'each worker took a whole flow group',
  );

  // Peer removal reached every worker: everything is now from an unknown peer.
  assert.equal(o.snap4.drops.unknownPeer, 60);
  assert.equal(o.snap4.counters.tunWritePackets, 120);
  assert.deepEqual(o.afterClose, [true, false, false]);
});
