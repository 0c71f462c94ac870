// "Nobody gets in": forged encapsulated datagrams never reach a pod, and weftd counts them.
//
// Three underlay hosts; weftd (and a pod) on n1 and n2 only, so n3 is on the wire but is no
// peer. A UDP listener in n1's pod records what arrives. A forged datagram built exactly like
// n2's real traffic (outer source n2's address and port, inner source n2's pod) is delivered:
// that proves the forgery is well-formed, so "nothing arrives" below means "dropped". Then:
//   (a) the same datagrams from n3 (not a peer), and for udp from n2's address but another
//       port: dropped as unknownPeer;
//   (b) from n2's real address and port but with inner sources outside n2's lease (an
//       unleased address, an address of n1's own subnet): dropped as spoofedSource;
// all while pods keep pinging each other without loss. The counters are checked in /status
// and in /metrics. Also "health endpoint binding": inside the node namespace weftd listens
// on 127.0.0.1:<healthz port> only (TCP) and its only UDP socket is the data-path port on
// the underlay address.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { NetnsRun } from '../../src/netns/netns.ts';
import { WEFTD_HEALTHZ_PORT } from '../../src/netns/topology.ts';
import type { ClusterNode } from '../../src/netns/topology.ts';
import { cidrContains, formatIpv4, parseIpv4 } from '../../src/routing/ipv4.ts';
import type { BackendCase } from './helpers.ts';
import {
  BACKENDS,
  innerUdp,
  listenUdp,
  metricDrops,
  pod,
  sendRaw,
  stat,
  status,
  until,
  vxlanFrame,
  weftCluster,
} from './helpers.ts';

const LISTEN_PORT = 7777;
const FORGED = 5;

interface SsLine {
  local: string;
  pids: number[];
}

/** `ss -H -l<proto>np` in `ns`: local address:port and owning PIDs of each socket. */
async function listening(run: NetnsRun, ns: string, proto: 't' | 'u'): Promise<SsLine[]> {
  const out = await run.exec(ns, 'ss', ['-H', `-l${proto}np`]);
  return out
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => {
      const cols = l.trim().split(/\s+/);
      // State Recv-Q Send-Q Local Peer [Process]
      const local = cols[3] as string;
      const pids = [...l.matchAll(/pid=(\d+)/g)].map((m) => Number(m[1]));
      return { local, pids };
    });
}

for (const [name, b] of [
  ['udp', BACKENDS.udp],
  ['vxlan userspace', BACKENDS.vxlanUserspace],
] as const satisfies readonly (readonly [string, BackendCase])[]) {
  void test(`${name}: forged datagrams never reach a pod and are counted; health server on loopback only`, async (t) => {
    const cluster = await weftCluster(t, b, { nodes: 3, withWeftd: [1, 2] });
    const { run } = cluster;
    const [n1, n2, n3] = [cluster.node(1), cluster.node(2), cluster.node(3)] as [
      ClusterNode,
      ClusterNode,
      ClusterNode,
    ];
    const a = pod(n1);
    const bp = pod(n2);
    await cluster.waitForPing(a, bp.addr, 15_000);
    await cluster.waitForPing(bp, a.addr, 15_000);

    const isVxlan = b.backend === 'vxlan';
    const macOf = (n: ClusterNode): string => readFileSync(join(n.dir, 'state', 'vtep-mac'), 'utf8').trim();
    /** The payload an encapsulating node sends for inner packet `ip`. */
    const wrap = (ip: Buffer): Buffer => (isVxlan ? vxlanFrame(1, macOf(n1), macOf(n2), ip) : ip);
    // udp peers send from their fixed port; vxlan varies the source port (any is accepted).
    const peerPort = isVxlan ? 40123 : b.port;
    const target = { addr: n1.underlayIp, port: b.port };
    const listener = await listenUdp(run, a, LISTEN_PORT);

    await t.test('control: a forgery shaped like n2 real traffic is delivered to the pod', async () => {
      const sent = await sendRaw(run, n2.ns, { addr: n2.underlayIp, port: peerPort }, target, [
        wrap(innerUdp(bp.addr, a.addr, LISTEN_PORT, 'control')),
      ]);
      assert.equal(sent, 1);
      const got = await until('the control datagram in the pod', 3000, () =>
        listener.received().length > 0 ? listener.received() : undefined,
      );
      assert.deepEqual(got, [`GOT ${bp.addr} control`]);
    });

    await t.test('(a) from a namespace that is no peer: dropped as unknownPeer', async () => {
      const s0 = await status(cluster, n1);
      const forged = [wrap(innerUdp(bp.addr, a.addr, LISTEN_PORT, 'spoof-nonpeer'))];
      const [sent, ping] = await Promise.all([
        sendRaw(run, n3.ns, { addr: n3.underlayIp, port: peerPort }, target, forged, FORGED),
        cluster.ping(bp, a.addr, { count: 5, intervalS: 0.1 }),
      ]);
      assert.equal(sent, FORGED);
      assert.equal(ping.received, 5, `real traffic kept flowing:\n${ping.output}`);
      let extra = 0;
      if (!isVxlan) {
        // A peer's address but not its port is not that peer either (udp peers send from Port).
        extra = await sendRaw(run, n3.ns, { addr: n2.underlayIp, port: 9999 }, target, forged, 2);
      }
      const s1 = await until('unknownPeer drops', 3000, async () => {
        const s = await status(cluster, n1);
        return stat(s, 'drops.unknownPeer') - stat(s0, 'drops.unknownPeer') >= FORGED + extra ? s : undefined;
      });
      assert.equal(stat(s1, 'drops.unknownPeer') - stat(s0, 'drops.unknownPeer'), FORGED + extra);
      assert.equal(stat(s1, 'drops.spoofedSource'), stat(s0, 'drops.spoofedSource'));
    });

    await t.test(
      '(b) from a real peer address, inner source outside its lease: dropped as spoofedSource',
      async () => {
        const s0 = await status(cluster, n1);
        const n2Subnet = n2.subnet!.subnet;
        const n1Subnet = n1.subnet!.subnet;
        const unleased = cluster.unleasedAddress();
        // Inside the Network but in no lease; n1's own gateway (a local address); outside the Network.
        const sources = [unleased, formatIpv4((n1Subnet.addr + 1) >>> 0), '192.0.2.66'];
        for (const src of sources) {
          assert.ok(!cidrContains(n2Subnet, parseIpv4(src)), `${src} must lie outside n2's lease`);
        }
        const forged = sources.map((src) => wrap(innerUdp(src, a.addr, LISTEN_PORT, `spoof-${src}`)));
        const [sent, ping] = await Promise.all([
          sendRaw(run, n2.ns, { addr: n2.underlayIp, port: peerPort }, target, forged, FORGED),
          cluster.ping(a, bp.addr, { count: 5, intervalS: 0.1 }),
        ]);
        assert.equal(sent, FORGED * sources.length);
        assert.equal(ping.received, 5, `real traffic kept flowing:\n${ping.output}`);
        const want = FORGED * sources.length;
        const s1 = await until('spoofedSource drops', 3000, async () => {
          const s = await status(cluster, n1);
          return stat(s, 'drops.spoofedSource') - stat(s0, 'drops.spoofedSource') >= want ? s : undefined;
        });
        assert.equal(stat(s1, 'drops.spoofedSource') - stat(s0, 'drops.spoofedSource'), want);
        assert.equal(stat(s1, 'drops.unknownPeer'), stat(s0, 'drops.unknownPeer'));
      },
    );

    await t.test('the pod saw only the control datagram; /metrics carries the same drop counts', async () => {
      await sleep(300); // anything still in flight lands now
      assert.deepEqual(listener.received(), [`GOT ${bp.addr} control`]);
      const s = await status(cluster, n1);
      const m = await metricDrops(cluster, n1);
      assert.equal(m.get('unknown_peer'), stat(s, 'drops.unknownPeer'));
      assert.equal(m.get('spoofed_source'), stat(s, 'drops.spoofedSource'));
      assert.ok((m.get('spoofed_source') ?? 0) >= FORGED * 3);
      // And real traffic is still fine both ways.
      assert.equal((await cluster.ping(a, bp.addr, { count: 3 })).received, 3);
      assert.equal((await cluster.ping(bp, a.addr, { count: 3 })).received, 3);
    });

    await t.test(
      'health endpoint binding: TCP 127.0.0.1 only; one UDP socket, the data path port',
      async () => {
        const pid = n1.weftd!.pid;
        const tcp = await listening(run, n1.ns, 't');
        assert.deepEqual(
          tcp.map((l) => l.local),
          [`127.0.0.1:${WEFTD_HEALTHZ_PORT}`],
          `TCP listeners in ${n1.name}: ${JSON.stringify(tcp)}`,
        );
        assert.deepEqual(tcp[0]?.pids, [pid], 'the health server is weftd');
        const udp = (await listening(run, n1.ns, 'u')).filter((l) => l.pids.includes(pid));
        assert.deepEqual(
          udp.map((l) => l.local),
          [`${n1.underlayIp}:${b.port}`],
          `weftd's UDP sockets: ${JSON.stringify(udp)}`,
        );
      },
    );

    await t.test('weftd stayed up on both nodes', () => {
      for (const n of [n1, n2]) assert.equal(n.weftd?.child.exitCode, null, n.weftd?.output().slice(-2000));
    });
  });
}
