// End to end over the udp backend: two nodes in network namespaces, one weftd each on the
// embedded lease store, pods behind cni0. Pods on different nodes ping both ways and move a
// few MB over TCP intact (sha256 on both ends) and bursts of UDP datagrams intact (runs of
// them reach the receiving pod through one USO TUN write); a destination inside the Network that no
// node leases gets "Destination Net Unreachable" from the node's TUN address. Everything
// again with --no-offloads. Afterwards the root namespace is unchanged and no namespace
// with the run's prefix is left.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { NetnsRun, rootSnapshot } from '../../src/netns/netns.ts';
import { Cluster, WEFT_TUN } from '../../src/netns/topology.ts';
import type { ClusterNode } from '../../src/netns/topology.ts';
import { setTimeout as sleep } from 'node:timers/promises';

import { TUN_TXQUEUELEN } from '../../src/backend/udp/udp.ts';
import { cidrContains, cidrOverlaps, formatIpv4, parseIpv4 } from '../../src/routing/ipv4.ts';

/** Prints "<error code> <ms>" for a TCP connect to argv[1]:80 (or "connected"/"timeout"). */
const CONNECT_SCRIPT = `const t=Date.now();const s=require('net').connect({host:process.argv[1],port:80});s.on('connect',()=>{console.log('connected 0');process.exit(0)});s.on('error',e=>{console.log(e.code+' '+(Date.now()-t));process.exit(0)});setTimeout(()=>{console.log('timeout '+(Date.now()-t));process.exit(0)},5000)`;

/** weftd's count of ICMP net-unreachable replies on `node` (from /status). */
async function icmpUnreachableSent(cluster: Cluster, node: ClusterNode): Promise<number> {
  const status = JSON.parse((await cluster.httpGet(node, '/status')).stdout) as {
    backendStats?: { counters?: { icmpUnreachableSent?: number } };
  };
  return status.backendStats?.counters?.icmpUnreachableSent ?? -1;
}

const MB = 1024 * 1024;

function leftovers(prefix: string): string[] {
  try {
    return readdirSync('/run/netns').filter((n) => n.startsWith(`${prefix}-`));
  } catch {
    return [];
  }
}

for (const offloads of [true, false]) {
  const label = offloads ? 'offloads on' : '--no-offloads';
  void test(`udp backend, ${label}: two nodes, weftd on the embedded store`, async (t) => {
    const before = rootSnapshot();
    const run = new NetnsRun();
    const cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 2 });
    try {
      const [s1, s2] = await cluster.startWeftdAll({ backend: 'udp', noOffloads: !offloads });
      const n1 = cluster.node(1);
      const n2 = cluster.node(2);
      const [a0, a1] = n1.pods;
      const [b0, b1] = n2.pods;
      assert.ok(s1 && s2 && a0 && a1 && b0 && b1);

      await t.test(
        'each node leases its own subnet; subnet file, TUN and pods use MTU 1500 - 28',
        async () => {
          assert.ok(!cidrOverlaps(s1.subnet, s2.subnet), 'the two nodes got overlapping subnets');
          for (const s of [s1, s2]) {
            assert.ok(cidrContains(cluster.network, s.subnet.addr));
            assert.equal(s.mtu, 1472);
          }
          assert.equal(a0.addr, formatIpv4((s1.subnet.addr + 10) >>> 0));
          assert.equal((await run.exec(n1.ns, 'cat', [`/sys/class/net/${WEFT_TUN}/mtu`])).trim(), '1472');
          assert.equal(
            (await run.exec(n1.ns, 'cat', [`/sys/class/net/${WEFT_TUN}/tx_queue_len`])).trim(),
            String(TUN_TXQUEUELEN),
            'the TUN queue is deeper than the kernel default of 500',
          );
          assert.equal((await cluster.execPod(b1, 'cat', ['/sys/class/net/eth0/mtu'])).trim(), '1472');
        },
      );

      await t.test('pods on different nodes ping both ways, also with full-size packets', async () => {
        // Peers' routes come from the lease watch: wait for first contact, then measure.
        await cluster.waitForPing(a0, b0.addr, 15_000);
        const there = await cluster.ping(a0, b0.addr, { count: 5 });
        assert.equal(there.received, 5, there.output);
        const back = await cluster.ping(b1, a1.addr, { count: 5 });
        assert.equal(back.received, 5, back.output);
        assert.ok([...there.rtts, ...back.rtts].every((r) => r > 0 && r < 500));
        const big = await cluster.ping(a1, b0.addr, { count: 3, size: 1472 - 28 });
        assert.equal(big.received, 3, big.output);
      });

      await t.test('4 MB over TCP each way arrive intact (sha256 on both ends)', async () => {
        const [x, y] = await Promise.all([
          cluster.tcpTransfer(a0, b1, 4 * MB),
          cluster.tcpTransfer(b0, a1, 4 * MB),
        ]);
        assert.equal(x.bytes, 4 * MB);
        assert.equal(x.receivedBytes, 4 * MB);
        assert.equal(x.receivedSha256, x.sentSha256);
        assert.equal(y.receivedBytes, 4 * MB);
        assert.equal(y.receivedSha256, y.sentSha256);
      });

      await t.test(
        offloads
          ? 'bursts of UDP datagrams arrive intact; the receiving node writes runs of them to its TUN as one USO write'
          : 'bursts of UDP datagrams arrive intact, written to the TUN one by one',
        async () => {
          const io = async (): Promise<{ writes: number; segments: number }> => {
            const st = JSON.parse((await cluster.httpGet(n2, '/status')).stdout) as {
              backendStats?: { tunIo?: { coalescedWrites?: number; coalescedSegments?: number } };
            };
            const tunIo = st.backendStats?.tunIo;
            assert.ok(tunIo, 'the status shows the TUN counters');
            return { writes: tunIo.coalescedWrites ?? NaN, segments: tunIo.coalescedSegments ?? NaN };
          };
          const before = await io();
          // Payload sizes from 4 bytes to the largest that fits the MTU (1472 - 28).
          const r = await cluster.udpTrain(a0, b0, [64, 1444, 200, 4, 1000, 64, 512, 1300], 64);
          assert.equal(r.sent, 8 * 64);
          assert.equal(r.corrupt, 0, 'every datagram has its own length and contents');
          assert.equal(r.duplicates, 0);
          assert.equal(r.received, r.sent, 'none lost');
          const after = await io();
          const writes = after.writes - before.writes;
          const segments = after.segments - before.segments;
          if (offloads) {
            assert.ok(writes > 0, 'coalesced writes happened');
            assert.ok(segments >= 2 * writes, `${segments} datagrams in ${writes} writes`);
          } else {
            assert.equal(writes, 0);
          }
        },
      );

      await t.test(
        'a destination in the Network without a lease: ICMP net unreachable from the TUN address (TCP), none for ICMP',
        async () => {
          const unknown = cluster.unleasedAddress();
          assert.ok(cidrContains(cluster.network, parseIpv4(unknown)));
          const tunAddr = await cluster.tunAddress(n1);
          const icmpBefore = await icmpUnreachableSent(cluster, n1);
          // Watch the pod's interface for the ICMP error while a TCP connect to the unleased
          // address is refused by it.
          const dump = cluster.run.spawn(a0.ns, 'tcpdump', ['-i', 'eth0', '-n', '-l', '-c', '1', 'icmp']);
          const until = Date.now() + 10_000;
          while (!dump.output().includes('listening on') && Date.now() < until) await sleep(20);
          const out = await cluster.execPod(a0, process.execPath, ['-e', CONNECT_SCRIPT, unknown]);
          const [code, ms] = out.trim().split(' ');
          assert.equal(
            code,
            'ENETUNREACH',
            `connect to ${unknown} should fail with ENETUNREACH, got: ${out}`,
          );
          assert.ok(Number(ms) < 3000, `the ICMP error came back fast (${ms} ms)`);
          await Promise.race([dump.exited, sleep(5000)]);
          const m = /IP (\d+\.\d+\.\d+\.\d+) > (\S+): ICMP net (\S+) unreachable/.exec(dump.output());
          assert.ok(m, `tcpdump saw no ICMP net unreachable:\n${dump.output()}`);
          assert.equal(m[1], tunAddr, 'the ICMP error comes from the TUN address');
          assert.equal(m[2], a0.addr);
          assert.equal(m[3], unknown);
          assert.equal(await icmpUnreachableSent(cluster, n1), icmpBefore + 1);
          // A ping (ICMP) to the same address is dropped and counted, never answered with ICMP.
          const nr = await cluster.ping(a0, unknown, { count: 2, waitS: 1 });
          assert.equal(nr.received, 0, nr.output);
          assert.equal(nr.errors.length, 0, `no ICMP errors in reply to ICMP: ${nr.output}`);
          assert.equal(await icmpUnreachableSent(cluster, n1), icmpBefore + 1);
        },
      );

      await t.test('weftd stays up throughout', () => {
        for (const n of cluster.nodes) assert.equal(n.weftd?.child.exitCode, null, n.weftd?.output());
      });
    } finally {
      await cluster.destroy();
    }
    assert.deepEqual(leftovers(run.prefix), []);
    assert.equal(rootSnapshot(), before);
  });
}
