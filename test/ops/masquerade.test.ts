// weftd --ip-masq on node 1 of a 2-node udp cluster, plus an "outside" namespace joined to
// node 1 by a veth on an address outside the Network (it has no route to the pods):
//   - a pod's TCP connection to the outside arrives from node 1's address (masqueraded; the
//     reply finds its way back only because of that);
//   - pod -> pod across nodes keeps the pod's own source address (no NAT in the overlay);
//   - on SIGTERM weftd exits 0 and the `ip weft` nftables table is gone.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { SpawnedProcess } from '../../src/netns/netns.ts';
import { NetnsRun } from '../../src/netns/netns.ts';
import type { SubnetInfo } from '../../src/netns/topology.ts';
import { Cluster, summarizeLog } from '../../src/netns/topology.ts';
import { capture, TCP_PROBE, TCP_WHOAMI, until, within } from './helpers.ts';

const NODE_OUTSIDE_IP = '203.0.113.1';
const OUTSIDE_IP = '203.0.113.2';

interface Probe {
  ok: boolean;
  reply?: string;
  code?: string;
}

void test('--ip-masq: pods reach the outside as the node, keep their address in the overlay; SIGTERM removes the table', async (t) => {
  const run = new NetnsRun();
  const cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 1 });
  t.after(() => cluster.destroy());
  const n1 = cluster.node(1);
  const n2 = cluster.node(2);

  cluster.writeNetConf('udp');
  const masqd = cluster.startWeftd(n1, { extraArgs: ['--ip-masq'] });
  cluster.startWeftd(n2);
  for (const n of [n1, n2]) await cluster.attachPods(n, await cluster.waitWeftdReady(n));
  assert.equal((n1.subnet as SubnetInfo).ipMasq, true, 'FLANNEL_IPMASQ=true on node 1');
  assert.equal((n2.subnet as SubnetInfo).ipMasq, false);
  const a = n1.pods[0];
  const b = n2.pods[0];
  assert.ok(a && b);
  assert.match(await run.exec(n1.ns, 'nft', ['list', 'tables']), /^table ip weft$/m);
  assert.doesNotMatch(await run.exec(n2.ns, 'nft', ['list', 'tables']), /table ip weft/);

  // The outside: one namespace, reachable from node 1 only, with no route to the pods.
  const out = await run.addNamespace('out');
  await run.addVeth(n1.ns, 'ext0', out, 'eth0', 1500);
  await run.ip(n1.ns, 'addr', 'add', `${NODE_OUTSIDE_IP}/24`, 'dev', 'ext0');
  await run.ip(out, 'addr', 'add', `${OUTSIDE_IP}/24`, 'dev', 'eth0');
  assert.doesNotMatch(await run.ip(out, 'route', 'show'), /10\.244\./);

  const whoami = async (ns: string, port: number): Promise<SpawnedProcess> => {
    const srv = run.spawn(ns, process.execPath, ['-e', TCP_WHOAMI], {
      env: { ...process.env, PORT: String(port) },
    });
    await until(`the whoami server in ${ns}`, 10_000, () =>
      Promise.resolve(srv.output().includes('LISTENING') ? true : undefined),
    );
    return srv;
  };
  const probe = async (ns: string, host: string, port: number, timeoutMs = 5000): Promise<Probe> => {
    const c = await capture(ns, process.execPath, ['-e', TCP_PROBE], {
      env: { ...process.env, HOST: host, PORT: String(port), TIMEOUT_MS: String(timeoutMs) },
      timeoutMs: 10_000,
    });
    return JSON.parse(c.stdout) as Probe;
  };

  // Pod -> outside: seen as node 1's address on that link.
  await whoami(out, 7001);
  const seenOutside = await probe(a.ns, OUTSIDE_IP, 7001);
  assert.deepEqual(seenOutside, { ...seenOutside, ok: true, reply: NODE_OUTSIDE_IP });

  // Pod -> pod across nodes: the pod's own address (peers may take a second to appear).
  await whoami(b.ns, 7002);
  await cluster.waitForPing(a, b.addr, 15_000);
  const seenByPod = await probe(a.ns, b.addr, 7002);
  assert.deepEqual(seenByPod, { ...seenByPod, ok: true, reply: a.addr });
  // And the other way, into the masquerading node's pod.
  await whoami(a.ns, 7003);
  const seenByA = await probe(b.ns, a.addr, 7003);
  assert.deepEqual(seenByA, { ...seenByA, ok: true, reply: b.addr });

  // SIGTERM: a clean exit that takes the table with it.
  const code = await within(masqd.stop('SIGTERM', 10_000), 15_000, 'hung');
  assert.equal(code, 0, summarizeLog(masqd.output(), 5));
  assert.doesNotMatch(await run.exec(n1.ns, 'nft', ['list', 'tables']), /table ip weft/);
  // Without the table nothing masquerades any more: the outside cannot answer the pod.
  const after = await probe(a.ns, OUTSIDE_IP, 7001, 1500);
  assert.equal(after.ok, false, `pod still reached the outside without masquerade: ${JSON.stringify(after)}`);
});
