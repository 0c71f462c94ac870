// etcd faults while forwarding: a 3-member etcd on the underlay, 3 weftd nodes (udp
// backend) with pods pinging around the ring every 100 ms the whole time. We kill the etcd
// leader (and bring it back), then a follower (and bring it back), then all of etcd for 20 s
// (the 60 s outage of the issue runs in bench/soak.ts --etcd-outage 60, to keep this file
// within its time budget). Throughout: no node loses its lease (subnet unchanged,
// counters.leaseLost == 0), forwarding never stops (pings keep being answered; a few may
// be lost), and after each recovery a lease change made in etcd reaches every node. After
// the full outage every node also renews its lease again (renewals are due every 60 s
// here: --subnet-lease-renew-margin 1439 of a 24 h TTL).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { createEtcdWorld, longestSilence, PREFIX, startPinger, until } from './fixture.ts';
import type { EtcdWorld, NodeStatus, PingLog } from './fixture.ts';
import type { ClusterNode } from '../../src/netns/topology.ts';

const OUTAGE_MS = 20_000;
/**
 * Longest a pod may go without a reply while etcd misbehaves (forwarding must not stop).
 * Unloaded, the worst gap is 150-300 ms, right when etcd's members come back. On the shared
 * 2-core test machine (load average above 10 when other suites run) we once saw a 2.3 s
 * gap there with every reply still arriving (delayed, not lost: CPU starvation while three
 * etcd members replay their logs), hence the headroom; the loss limit below is unchanged.
 */
const MAX_SILENCE_MS = 3_000;

async function statuses(w: EtcdWorld, nodes: readonly ClusterNode[]): Promise<NodeStatus[]> {
  return Promise.all(nodes.map((n) => w.status(n)));
}

/** Puts (or deletes) a lease for a made-up peer and waits until every node agrees. */
async function leaseChangeSeen(
  w: EtcdWorld,
  nodes: readonly ClusterNode[],
  subnet: string,
  present: boolean,
): Promise<number> {
  const key = `${PREFIX}/subnets/${subnet.replace('/', '-')}`;
  const t0 = Date.now();
  if (present)
    await w.etcd.etcdctl([
      'put',
      key,
      JSON.stringify({ PublicIP: '198.18.0.99', PublicIPv6: null, BackendType: 'udp' }),
    ]);
  else await w.etcd.etcdctl(['del', key]);
  await until(
    `every node to ${present ? 'see' : 'drop'} ${subnet}`,
    15_000,
    async () => {
      const all = await statuses(w, nodes);
      return all.every((s) => s.peers.some((p) => p.subnet === subnet) === present) ? true : undefined;
    },
    100,
  );
  return Date.now() - t0;
}

void test('etcd faults while forwarding: leader, follower, full outage', { timeout: 180_000 }, async (t) => {
  const w = await createEtcdWorld(t, { nodes: 3, members: 3 });
  const { cluster, etcd, run } = w;
  const nodes = [cluster.node(1), cluster.node(2), cluster.node(3)];
  const renewEveryMinute = ['--subnet-lease-renew-margin', '1439'];
  await Promise.all(nodes.map((n) => w.startNode(n, renewEveryMinute)));
  for (const n of nodes) await cluster.attachPods(n, n.subnet!);
  const pods = nodes.map((n) => n.pods[0]!);
  for (let i = 0; i < 3; i++) await cluster.waitForPing(pods[i]!, pods[(i + 1) % 3]!.addr, 10_000);

  const initial = await statuses(w, nodes);
  const subnets = initial.map((s) => s.lease?.subnet);
  assert.ok(subnets.every((s) => s !== undefined));

  const pingers = [0, 1, 2].map((i) => startPinger(run, pods[i]!.ns, pods[(i + 1) % 3]!.addr, 0.1));
  let logs: PingLog[] | undefined;
  const stopPingers = async (): Promise<PingLog[]> =>
    (logs ??= await Promise.all(pingers.map((p) => p.stop())));
  t.after(async () => {
    await stopPingers();
  });
  const windows: Array<{ what: string; from: number; to: number }> = [];
  let restartedAt = 0;

  /** Every node still holds its first subnet and never lost its lease. */
  const assertLeasesKept = async (when: string): Promise<NodeStatus[]> => {
    const all = await statuses(w, nodes);
    all.forEach((s, i) => {
      assert.equal(s.lease?.subnet, subnets[i], `${nodes[i]!.name} changed its subnet ${when}`);
      assert.equal(s.counters.leaseLost, 0, `${nodes[i]!.name} lost its lease ${when}`);
      assert.equal(s.counters.subnetChanged, 0, `${nodes[i]!.name} changed subnet ${when}`);
      assert.ok(s.ready, `${nodes[i]!.name} is not ready ${when}`);
    });
    return all;
  };

  for (const [what, pick, probe] of [
    ['leader', () => etcd.leader(), '10.244.251.0/24'],
    [
      'follower',
      async () => {
        const leader = await etcd.leader();
        return etcd.members.find((m) => m.alive && m !== leader)!;
      },
      '10.244.252.0/24',
    ],
  ] as const) {
    await t.test(`kill the etcd ${what}: leases kept, forwarding goes on, changes still arrive`, async () => {
      const victim = await pick();
      const from = Date.now();
      await victim.kill();
      await sleep(2_000);
      // The two survivors keep the quorum; a change made now must reach every node.
      const seenMs = await leaseChangeSeen(w, nodes, probe, true);
      await leaseChangeSeen(w, nodes, probe, false);
      t.diagnostic(`${what} killed: a new lease reached every node ${seenMs} ms after the put`);
      await victim.restart();
      await etcd.waitHealthy(20_000);
      await assertLeasesKept(`after the ${what} was killed`);
      windows.push({ what: `${what} kill`, from, to: Date.now() });
    });
  }

  await t.test(
    `all of etcd down for ${OUTAGE_MS / 1000} s: forwarding on the last known routes, then renew and resync`,
    async () => {
      const beforeOutage = await statuses(w, nodes);
      const from = Date.now();
      await Promise.all(etcd.members.map((m) => m.kill()));
      await sleep(OUTAGE_MS / 2);
      // Mid-outage: the daemons are up, still ready, still hold their leases and all peers.
      const mid = await assertLeasesKept('during the etcd outage');
      for (const s of mid) assert.equal(s.peers.length, 2);
      const mp = await cluster.ping(pods[0]!, pods[2]!.addr, { count: 5 });
      assert.ok(mp.received >= 4, mp.output);
      await sleep(OUTAGE_MS / 2);
      restartedAt = Date.now();
      await Promise.all(etcd.members.map((m) => m.restart()));
      await etcd.waitHealthy(30_000);
      windows.push({ what: 'full outage', from, to: Date.now() });
      const back = Date.now();

      const seenMs = await leaseChangeSeen(w, nodes, '10.244.253.0/24', true);
      await leaseChangeSeen(w, nodes, '10.244.253.0/24', false);
      t.diagnostic(`after the outage: a new lease reached every node ${seenMs} ms after the put`);

      // Renewals: due every minute; one that fell into the outage is retried a minute later.
      const renewed = await until(
        'every node to renew its lease after etcd came back',
        75_000,
        async () => {
          const all = await statuses(w, nodes);
          return all.every(
            (s, i) => s.counters.leaseRenewed! > beforeOutage[i]!.counters.leaseRenewed! || false,
          )
            ? all
            : undefined;
        },
        500,
      );
      t.diagnostic(
        `renewed within ${Date.now() - back} ms of etcd's return; renewals/failures per node: ` +
          renewed.map((s) => `${s.counters.leaseRenewed}/${s.counters.renewFailures}`).join(' '),
      );
      // The renewals were written to etcd: each key's etcd lease is fresh (about 24 h).
      for (const s of renewed) {
        const out = await etcd.etcdctl([
          'get',
          `${PREFIX}/subnets/${s.lease!.subnet.replace('/', '-')}`,
          '-w',
          'json',
        ]);
        const lease = /"lease":(\d+)/.exec(out)?.[1];
        assert.ok(lease, `the lease key of ${s.lease!.subnet} has no etcd lease: ${out}`);
        const ttl = await etcd.etcdctl(['lease', 'timetolive', BigInt(lease).toString(16)]);
        const left = Number(/remaining\((\d+)s\)/.exec(ttl)?.[1]);
        assert.ok(left > 23 * 3600, `etcd lease of ${s.lease!.subnet}: ${ttl}`);
      }
      await assertLeasesKept('after the etcd outage');
    },
  );

  await t.test('forwarding never stopped: pings answered through every fault', async () => {
    const all = await stopPingers();
    assert.ok(windows.length === 3, 'an earlier step failed before its fault window was recorded');
    all.forEach((log, i) => {
      const lost = log.sent - log.replies.length;
      t.diagnostic(
        `${pods[i]!.name} -> ${pods[(i + 1) % 3]!.name}: ${log.replies.length}/${log.sent} answered, ` +
          windows
            .map((x) => {
              const sl = longestSilence(log, x.from, x.to);
              return `${x.what}: longest silence ${Math.round(sl.ms)} ms from +${Math.round(sl.startedAt - x.from)} ms`;
            })
            .join(', ') +
          ` (full outage: etcd back at +${restartedAt - (windows[2]?.from ?? 0)} ms)`,
      );
      assert.ok(log.sent > 300, `only ${log.sent} pings sent`);
      assert.ok(
        lost <= Math.max(5, log.sent * 0.01),
        `${lost} of ${log.sent} pings lost:\n${log.output.slice(-2000)}`,
      );
      for (const x of windows) {
        const silent = longestSilence(log, x.from, x.to);
        assert.ok(
          silent.ms <= MAX_SILENCE_MS,
          `${x.what}: no reply for ${Math.round(silent.ms)} ms, from +${Math.round(silent.startedAt - x.from)} ms into the window`,
        );
      }
    });
  });
});
