/**
 * One forwarding thread of the worker pool (pool.ts): its own TUN queue (IFF_MULTI_QUEUE on
 * the backend's device), its own SO_REUSEPORT socket on the backend's address and port, and
 * its own Forwarder with the main forwarder's settings, and with tunnel GSO its own queue
 * of the main thread's multi-queue TAP for whole super-packets. The kernel spreads outgoing flows
 * over the TUN queues and the pool's steering program spreads incoming datagrams over the
 * sockets by inner flow, so each thread forwards its share of the flows in both directions.
 *
 * The native addon keeps no static state, so it loads and works here as on the main thread.
 * Counters (the forwarder's and the native layer's) go to the main thread every
 * statsIntervalMs and on request; 'detachTunnel' (the guard gave up on the TAP) makes the
 * socket segment from then on; on 'stop' the thread
 * closes its handles, reports its final counters and lets its event loop end.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { openConn } from '../../conn/native-conn.ts';
import type { NativeConn } from '../../conn/native-conn.ts';
import { UdpEncap, VxlanEncap } from '../../encap/encap.ts';
import type { Encap } from '../../encap/encap.ts';
import { openTun } from '../../tun/native-tun.ts';
import type { NativeTun } from '../../tun/native-tun.ts';
import { Forwarder } from '../forwarder.ts';
import type { Peer } from '../peer.ts';
import { ForwarderStats } from '../stats.ts';
import type { FromWorker, RawStats, ToWorker, WirePeer, WorkerInit, WorkerIo } from './messages.ts';

const port = parentPort;
if (!port) throw new Error('src/dataplane/workers/worker.ts runs only as a worker thread (see pool.ts)');
const init = workerData as WorkerInit;

function post(m: FromWorker): void {
  port?.postMessage(m);
}

function toPeer(p: WirePeer): Peer {
  const mac = p.vtepMac;
  return {
    id: p.id,
    subnet: p.subnet,
    publicIp: p.publicIp,
    port: p.port,
    leaseKey: p.leaseKey,
    tunnelGso: p.tunnelGso === true,
    vtepMac: mac === undefined ? undefined : Buffer.from(mac.buffer, mac.byteOffset, mac.byteLength),
  };
}

function seeded(seed: RawStats | undefined): ForwarderStats {
  const s = new ForwarderStats();
  if (!seed) return s;
  s.counters.set(seed.counters.subarray(0, s.counters.length));
  s.drops.set(seed.drops.subarray(0, s.drops.length));
  s.tunReadSizes.set(seed.tunReadSizes.subarray(0, s.tunReadSizes.length));
  s.recvSizes.set(seed.recvSizes.subarray(0, s.recvSizes.length));
  const n = seed.peerTxPackets.length;
  if (n > 0) s.ensurePeer(n - 1);
  s.peerTxPackets.set(seed.peerTxPackets);
  s.peerTxBytes.set(seed.peerTxBytes);
  s.peerRxPackets.set(seed.peerRxPackets);
  s.peerRxBytes.set(seed.peerRxBytes);
  return s;
}

function raw(s: ForwarderStats): RawStats {
  return {
    counters: s.counters.slice(),
    drops: s.drops.slice(),
    tunReadSizes: s.tunReadSizes.slice(),
    recvSizes: s.recvSizes.slice(),
    peerTxPackets: s.peerTxPackets.slice(),
    peerTxBytes: s.peerTxBytes.slice(),
    peerRxPackets: s.peerRxPackets.slice(),
    peerRxBytes: s.peerRxBytes.slice(),
  };
}

let tun: NativeTun | undefined;
let conn: NativeConn | undefined;
let fwd: Forwarder | undefined;
let timer: NodeJS.Timeout | undefined;
let tunnelError: string | undefined;

function io(): WorkerIo {
  const out: { tunIo?: Record<string, number>; connIo?: Record<string, number> } = {};
  if (tun?.nativeHandle) out.tunIo = { ...tun.stats() };
  if (conn?.nativeHandle) out.connIo = { ...conn.stats() };
  return out;
}

function closeAll(): void {
  if (timer) clearInterval(timer);
  timer = undefined;
  fwd?.stop();
  conn?.close();
  conn = undefined;
  tun?.close();
  tun = undefined;
}

try {
  // With offloads, TCP super-packets come up whole: the socket sends them whole to the TAP
  // or segments them itself (as the main thread's forwarder does).
  tun = openTun({
    name: init.tun.name,
    mtu: init.tun.mtu,
    offloads: init.tun.offloads,
    multiQueue: true,
    keepSuperPackets: init.tun.offloads,
  });
  conn = openConn({
    bindAddr: init.conn.bindAddr,
    port: init.conn.port,
    offloads: init.conn.offloads,
    reusePort: true,
    ...(init.conn.rcvbuf !== undefined ? { rcvbuf: init.conn.rcvbuf } : {}),
    ...(init.conn.sndbuf !== undefined ? { sndbuf: init.conn.sndbuf } : {}),
  });
  if (init.tunnel) {
    try {
      conn.attachTunnelQueue(init.tunnel.name);
    } catch (err) {
      tunnelError = err instanceof Error ? err.message : String(err);
    }
  }
  const e = init.encap;
  const encap: Encap = e.kind === 'udp' ? new UdpEncap() : new VxlanEncap(e.vni, e.localMac);
  const vtep = init.local.vtepMac;
  fwd = new Forwarder({
    tun,
    conn,
    encap,
    local: {
      subnet: init.local.subnet,
      tunAddr: init.local.tunAddr,
      vtepMac: vtep === undefined ? undefined : Buffer.from(vtep),
    },
    port: init.port,
    stats: seeded(init.seed),
    checkPeerPort: init.checkPeerPort,
    icmpForIcmpQueries: init.icmpForIcmpQueries,
    maxBatchesPerTurn: init.maxBatchesPerTurn,
    ...(init.busyPollUs !== undefined ? { busyPollUs: init.busyPollUs } : {}),
    // Keepalives go out from the main thread's forwarder only (one per peer, not one per worker).
    keepaliveIntervalMs: 0,
  });
  fwd.setPeers(init.peers.map(toPeer));
  fwd.start();
} catch (err) {
  closeAll();
  post({ type: 'failed', message: err instanceof Error ? err.message : String(err) });
  port.close();
  fwd = undefined;
}

if (fwd && tun && conn) {
  const f = fwd;
  const report = (seq: number): void => {
    post({ type: 'stats', seq, snapshot: f.snapshot(), raw: raw(f.stats), io: io() });
  };
  timer = setInterval(() => report(-1), Math.max(50, init.statsIntervalMs));
  timer.unref();
  port.on('message', (m: ToWorker) => {
    switch (m.type) {
      case 'setPeers':
        f.setPeers(m.peers.map(toPeer));
        break;
      case 'addPeer':
        f.addPeer(toPeer(m.peer));
        break;
      case 'removePeer':
        f.removePeer(m.id);
        break;
      case 'stats':
        report(m.seq);
        break;
      case 'detachTunnel':
        conn?.attachTunnel(undefined);
        break;
      case 'attachTunnel':
        try {
          conn?.attachTunnelQueue(m.name);
        } catch (err) {
          post({ type: 'tunnelError', message: err instanceof Error ? err.message : String(err) });
        }
        break;
      case 'stop': {
        const last = io();
        closeAll();
        post({ type: 'stopped', snapshot: f.snapshot(), raw: raw(f.stats), io: last });
        port.close();
        break;
      }
    }
  });
  post({
    type: 'ready',
    localPort: conn.localPort,
    tunOffloads: { ...tun.offloads },
    connOffloads: { ...conn.offloads },
    ...(tunnelError !== undefined ? { tunnelError } : {}),
  });
}
