// `weft status` against a running weftd, run inside the node's namespace as an operator
// would: the table shows this node's subnet, the peer's subnet routed via its public IP, and
// non-zero data-path counters after traffic; `--json` is the daemon's /status JSON; a wrong
// endpoint exits 1 with a message saying what to do, a malformed one exits 2.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { NetnsRun } from '../../src/netns/netns.ts';
import { Cluster, WEFTD_HEALTHZ_PORT } from '../../src/netns/topology.ts';
import { formatCidr } from '../../src/routing/ipv4.ts';
import { httpGet, runWeft } from './helpers.ts';

const ENDPOINT = `http://127.0.0.1:${WEFTD_HEALTHZ_PORT}`;

/** The value in the row of the "counter | value" table whose first cell is `name`. */
function counterRow(out: string, name: string): number | undefined {
  const m = new RegExp(`^${name.replace(/[.[\]]/g, '\\$&')}\\s+(\\d+)\\s*$`, 'm').exec(out);
  return m ? Number(m[1]) : undefined;
}

void test('weft status shows the lease, the peer route and counters; --json; wrong endpoints', async (t) => {
  const run = new NetnsRun();
  const cluster = await Cluster.create(run, { nodes: 2, podsPerNode: 1 });
  t.after(() => cluster.destroy());
  await cluster.startWeftdAll({ backend: 'udp' });
  const n1 = cluster.node(1);
  const n2 = cluster.node(2);
  const a = n1.pods[0];
  const b = n2.pods[0];
  assert.ok(a && b && n1.subnet && n2.subnet);
  await cluster.waitForPing(a, b.addr, 15_000);
  const ping = await cluster.ping(a, b.addr, { count: 20, intervalS: 0.01 });
  assert.equal(ping.received, 20, ping.output);

  const own = formatCidr(n1.subnet.subnet);
  const peer = formatCidr(n2.subnet.subnet);
  const r = await runWeft(n1.ns, ['status', '--endpoint', ENDPOINT]);
  assert.equal(r.code, 0, r.stderr);
  const out = r.stdout;
  assert.match(out, /^state\s+running \(ready\)$/m);
  assert.match(out, new RegExp(`^subnet\\s+${own.replace(/\./g, '\\.')}$`, 'm'));
  assert.match(out, new RegExp(`^public ip\\s+${n1.underlayIp.replace(/\./g, '\\.')}$`, 'm'));
  assert.match(out, /^backend\s+udp$/m);
  assert.match(out, /^store\s+embedded$/m);
  // The route table: the peer's subnet via the peer's public IP.
  assert.match(out, /route \(peer subnet\)\s+via \(peer public ip\)/);
  assert.match(
    out,
    new RegExp(`^${peer.replace(/\./g, '\\.')}\\s+${n2.underlayIp.replace(/\./g, '\\.')}\\s+udp\\b`, 'm'),
  );
  // Counters after traffic: at least the 20 requests sent and 20 replies received.
  const sent = counterRow(out, 'backend.counters.sendPackets');
  const recv = counterRow(out, 'backend.counters.recvPackets');
  assert.ok(sent !== undefined && sent >= 20, `sendPackets row in:\n${out}`);
  assert.ok(recv !== undefined && recv >= 20, `recvPackets row in:\n${out}`);
  assert.equal(counterRow(out, 'daemon.leaseAcquired'), 1);
  assert.equal(counterRow(out, 'backend.peers'), 1);

  // --json: the daemon's own /status document.
  const j = await runWeft(n1.ns, ['status', '--json', `--endpoint=${ENDPOINT}`]);
  assert.equal(j.code, 0, j.stderr);
  const fromCli = JSON.parse(j.stdout) as Record<string, unknown>;
  const direct = await httpGet(n1, '/status');
  assert.equal(direct.status, 200);
  const fromDaemon = JSON.parse(direct.body) as Record<string, unknown>;
  assert.deepEqual(Object.keys(fromCli).sort(), Object.keys(fromDaemon).sort());
  for (const k of ['state', 'ready', 'checks', 'lease', 'peers', 'network', 'backend', 'store', 'mtu'])
    assert.deepEqual(fromCli[k], fromDaemon[k], `--json field ${k}`);
  assert.deepEqual(fromCli.peers, [
    { subnet: peer, publicIp: n2.underlayIp, backendType: 'udp', backendData: { TunnelGSO: true } },
  ]);

  // WEFT_ENDPOINT works in place of --endpoint.
  const e = await runWeft(n1.ns, ['status'], { env: { ...process.env, WEFT_ENDPOINT: ENDPOINT } });
  assert.equal(e.code, 0, e.stderr);
  assert.match(e.stdout, new RegExp(`^subnet\\s+${own.replace(/\./g, '\\.')}$`, 'm'));

  // Nothing listens there: exit 1 and advice.
  const wrong = await runWeft(n1.ns, ['status', '--endpoint', 'http://127.0.0.1:1']);
  assert.equal(wrong.code, 1, wrong.stdout + wrong.stderr);
  assert.equal(wrong.stdout, '');
  assert.match(wrong.stderr, /cannot reach weftd at http:\/\/127\.0\.0\.1:1/);
  assert.match(wrong.stderr, /--healthz-port/);
  assert.match(wrong.stderr, /--endpoint|WEFT_ENDPOINT/);
  // Not a URL at all: a usage error.
  const bad = await runWeft(n1.ns, ['status', '--endpoint', 'not a url']);
  assert.equal(bad.code, 2, bad.stdout + bad.stderr);
  assert.match(bad.stderr, /is not a URL/);
});
