// A peer vanishing: three nodes; n2 runs weftd with --release-on-exit and is stopped
// gracefully (it gives its lease back), n3's weftd is SIGKILLed and its lease file deleted
// from the embedded store's directory (an operator removing a dead node). Each time the
// survivor n1 forgets the node within 2 s: it leaves /status peers and the backend's peer
// count, and for the kernel VXLAN plane its route, neighbour and FDB entries go too. Traffic
// between the remaining pods is unaffected. Run for udp, vxlan userspace and vxlan kernel.
//
// Timing comes from weftd's own log timestamps (same clock, no polling lag on a busy
// machine): n2's "lease released" or the moment the lease file was deleted, to n1's
// "peers changed" removing it (and, kernel plane, the reconciler's "peer removed" once the
// route, neighbour and FDB entries are gone). The state itself is then checked directly.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Cluster, ClusterNode } from '../../src/netns/topology.ts';
import { cidrToKey, formatCidr, formatIpv4 } from '../../src/routing/ipv4.ts';
import type { BackendCase } from './helpers.ts';
import {
  BACKENDS,
  logEvents,
  overlayDevice,
  pod,
  stat,
  stateDir,
  status,
  until,
  weftCluster,
} from './helpers.ts';

const GONE_WITHIN_MS = 2000;

interface KernelView {
  routes: string;
  neigh: string;
  fdb: string;
}

async function kernelView(cluster: Cluster, n: ClusterNode, dev: string): Promise<KernelView> {
  const { run } = cluster;
  return {
    routes: await run.ip(n.ns, '-4', 'route', 'show'),
    neigh: await run.ip(n.ns, 'neigh', 'show', 'dev', dev),
    fdb: await run.exec(n.ns, 'bridge', ['fdb', 'show', 'dev', dev]),
  };
}

for (const [name, b] of [
  ['udp', BACKENDS.udp],
  ['vxlan userspace', BACKENDS.vxlanUserspace],
  ['vxlan kernel', BACKENDS.vxlanKernel],
] as const satisfies readonly (readonly [string, BackendCase])[]) {
  void test(`${name}: a peer that leaves (--release-on-exit) or whose lease is deleted is forgotten within 2 s`, async (t) => {
    const cluster = await weftCluster(t, b, {
      nodes: 3,
      withWeftd: [1, 2, 3],
      extraArgs: (i) => ['--log-level=info', ...(i === 2 ? ['--release-on-exit'] : [])],
    });
    const [n1, n2, n3] = [cluster.node(1), cluster.node(2), cluster.node(3)] as [
      ClusterNode,
      ClusterNode,
      ClusterNode,
    ];
    const dev = overlayDevice(b);
    const kernelPlane = b === BACKENDS.vxlanKernel;
    for (const n of [n2, n3]) await cluster.waitForPing(pod(n1), pod(n).addr, 15_000);
    const s0 = await status(cluster, n1);
    assert.equal(s0.peers.length, 2);
    assert.equal(stat(s0, 'peers'), 2);

    /** What n1 knows about `n`: in /status, in the backend, and (kernel plane) in the kernel. */
    const knows = async (n: ClusterNode): Promise<string[]> => {
      const sub = formatCidr(n.subnet!.subnet);
      const s = await status(cluster, n1);
      const where: string[] = [];
      if (s.peers.some((p) => p.subnet === sub)) where.push('/status peers');
      if (kernelPlane) {
        const k = await kernelView(cluster, n1, dev);
        const mac = readFileSync(join(stateDir(n), 'vtep-mac'), 'utf8').trim();
        if (k.routes.includes(`${sub} via`)) where.push('route');
        if (k.neigh.includes(formatIpv4(n.subnet!.subnet.addr) + ' ')) where.push('neighbour');
        if (k.fdb.includes(mac)) where.push('fdb');
      }
      return where;
    };
    const peersIn = async (): Promise<number> => stat(await status(cluster, n1), 'peers');
    /**
     * Waits for n1's log to say `n` was removed (and, kernel plane, its kernel entries);
     * returns how long after `since` (Unix ms) that happened. Then n1 must hold `peers`
     * peers and know nothing of `n` any more.
     */
    const forgotten = async (n: ClusterNode, peers: number, since: number): Promise<number> => {
      const sub = formatCidr(n.subnet!.subnet);
      const key = cidrToKey(n.subnet!.subnet);
      const removedAt = await until(`n1 to log the removal of ${n.name}`, 10_000, () => {
        const ev = logEvents(n1.weftd, 'peers changed').find(
          (e) => e.time >= since - 50 && (e['removed'] as string[] | undefined)?.includes(sub),
        );
        if (!ev) return undefined;
        if (!kernelPlane) return ev.time;
        return logEvents(n1.weftd, 'peer removed').find((e) => e.time >= since - 50 && e['peer'] === key)
          ?.time;
      });
      try {
        await until(`n1 to forget ${n.name}`, 5000, async () =>
          (await knows(n)).length === 0 && (await peersIn()) === peers ? true : undefined,
        );
      } catch (err) {
        const still = (await knows(n)).join(', ');
        throw new Error(
          `${(err as Error).message}; n1 still has it in: ${still}; backend peers ${await peersIn()}`,
        );
      }
      return removedAt - since;
    };
    assert.ok(kernelPlane ? (await knows(n2)).length === 4 : (await knows(n2)).length === 1);

    await t.test('n2 stopped with --release-on-exit: gone from n1 within 2 s', async () => {
      assert.equal(await n2.weftd!.stop('SIGTERM', 10_000), 0, n2.weftd!.output().slice(-2000));
      const released = logEvents(n2.weftd, 'lease released')[0]?.time;
      assert.ok(released !== undefined, `n2 logged no "lease released":\n${n2.weftd!.output().slice(-2000)}`);
      assert.ok(
        !existsSync(join(cluster.storeDir, 'subnets', cidrToKey(n2.subnet!.subnet))),
        'lease released',
      );
      assert.ok(!existsSync(n2.subnetFile), 'subnet file removed with the lease');
      const ms = await forgotten(n2, 1, released);
      t.diagnostic(`${name}: n1 removed n2 ${ms} ms after n2 released its lease`);
      assert.ok(ms < GONE_WITHIN_MS, `n1 removed n2 only ${ms} ms after the release`);
    });

    await t.test('n3 killed and its lease deleted from the store: gone from n1 within 2 s', async () => {
      assert.equal(await n3.weftd!.stop('SIGKILL', 1000), 'SIGKILL');
      // A dead node's lease stays until someone removes it: still known 300 ms later.
      await new Promise((r) => setTimeout(r, 300));
      assert.ok((await knows(n3)).includes('/status peers'));
      const deletedAt = Date.now();
      unlinkSync(join(cluster.storeDir, 'subnets', cidrToKey(n3.subnet!.subnet)));
      const ms = await forgotten(n3, 0, deletedAt);
      t.diagnostic(`${name}: n1 removed n3 ${ms} ms after its lease file was deleted`);
      assert.ok(ms < GONE_WITHIN_MS, `n1 removed n3 only ${ms} ms after the deletion`);
    });

    await t.test('n1 is still ready with no peers and its own data path intact', async () => {
      const s = await status(cluster, n1);
      assert.equal(s.ready, true);
      assert.deepEqual(s.peers, []);
      if (kernelPlane) {
        const k = await kernelView(cluster, n1, dev);
        assert.equal(k.neigh.trim(), '', k.neigh);
        assert.ok(!/dst 198\.18\.0\./.test(k.fdb), k.fdb);
      }
      assert.equal(n1.weftd?.child.exitCode, null);
    });
  });
}
