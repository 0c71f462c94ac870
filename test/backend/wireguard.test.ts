/**
 * The wireguard backend, for real: three node namespaces on one underlay, wireguard-go for
 * the interfaces (this kernel has no WireGuard module), peers from leases. Checks ping and
 * a TCP transfer between node-local pod addresses, that the underlay carries no plaintext,
 * that a peer removed from the leases loses access, and that keys survive a restart.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { NetnsRun } from '../../src/netns/netns.ts';
import type { SpawnedProcess } from '../../src/netns/netns.ts';
import { projectRoot } from '../../src/util/self.ts';
import { parsePeerData, parseWireguardOptions } from '../../src/backend/wireguard/wireguard-backend.ts';
import { generateKeyPair, loadOrCreateKey, publicKeyOf } from '../../src/backend/wireguard/keys.ts';
import { ConfigError } from '../../src/util/errors.ts';

const FIXTURE = join(projectRoot, 'test/backend/fixtures/wireguard-node.ts');

void test('keys: generated once, kept with mode 0600, public key derived like `wg pubkey`', () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-wgkey-'));
  try {
    const path = join(dir, 'sub', 'wireguard.key');
    const a = loadOrCreateKey(path);
    assert.equal(a.created, true);
    assert.equal(statSync(path).mode & 0o777, 0o600);
    const b = loadOrCreateKey(path);
    assert.equal(b.created, false);
    assert.equal(b.privateKey, a.privateKey);
    assert.equal(b.publicKey, publicKeyOf(a.privateKey));
    const p = generateKeyPair();
    assert.notEqual(p.privateKey, a.privateKey);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

void test('options and peer data are validated with clear errors', () => {
  const o = parseWireguardOptions({ Type: 'wireguard' }, '/var/lib/weft');
  assert.equal(o.listenPort, 51820);
  assert.equal(o.keyFile, '/var/lib/weft/wireguard.key');
  assert.equal(o.keepalive, 0);
  assert.equal(parseWireguardOptions({ Type: 'wireguard', ListenPort: 5000 }, '/s').listenPort, 5000);
  assert.throws(() => parseWireguardOptions({ Type: 'wireguard', PSK: 'nope' }, '/s'), ConfigError);
  assert.throws(
    () => parseWireguardOptions({ Type: 'wireguard', ListenPort: 0 }, '/s'),
    /Backend\.ListenPort/,
  );
  assert.throws(() => parseWireguardOptions({ Type: 'wireguard', Bogus: 1 }, '/s'), /Backend\.Bogus/);
  const key = generateKeyPair().publicKey;
  assert.deepEqual(parsePeerData({ PublicKey: key, Port: 51821 }), { publicKey: key, port: 51821 });
  assert.equal(typeof parsePeerData({ PublicKey: 'x' }), 'string');
  assert.equal(typeof parsePeerData(null), 'string');
});

interface Node {
  name: string;
  ns: string;
  addr: string;
  subnet: string;
  pod: string;
  stateDir: string;
  proc?: SpawnedProcess;
  lines?: AsyncIterator<string>;
  backendData?: unknown;
}

async function nextEvent(n: Node, event: string): Promise<Record<string, unknown>> {
  const timeout = new Promise<never>((_, reject) => {
    const t = setTimeout(
      () => reject(new Error(`${n.name}: no ${event} event in 20 s: ${n.proc?.output()}`)),
      20_000,
    );
    t.unref();
  });
  for (;;) {
    const r = await Promise.race([n.lines!.next(), timeout]);
    if (r.done) throw new Error(`${n.name} fixture exited: ${n.proc?.output()}`);
    const msg = JSON.parse(r.value) as Record<string, unknown>;
    if (msg.event === 'error') throw new Error(`${n.name}: ${String(msg.message)}`);
    if (msg.event === event) return msg;
  }
}

function send(n: Node, msg: unknown): void {
  n.proc!.child.stdin!.write(`${JSON.stringify(msg)}\n`);
}

const leaseOf = (n: Node): unknown => ({
  subnet: n.subnet,
  publicIp: n.addr,
  backendType: 'wireguard',
  backendData: n.backendData,
});

void test('wireguard-go mesh of three nodes: ping, TCP, no plaintext on the wire, removal, restart', async (t) => {
  const r = new NetnsRun();
  const tmp = mkdtempSync(join(tmpdir(), 'weft-wg-'));
  t.after(async () => {
    await r.destroy();
    rmSync(tmp, { recursive: true, force: true });
  });
  const sw = await r.addNamespace('sw');
  await r.ip(sw, 'link', 'add', 'br0', 'type', 'bridge');
  await r.ip(sw, 'link', 'set', 'br0', 'up');
  const nodes: Node[] = [];
  for (const i of [1, 2, 3]) {
    const ns = await r.addNamespace(`n${i}`);
    await r.addVeth(ns, 'eth0', sw, `p${i}`);
    await r.ip(sw, 'link', 'set', `p${i}`, 'master', 'br0');
    await r.ip(ns, 'addr', 'add', `198.18.0.${i}/24`, 'dev', 'eth0');
    // A pod-range address on the node itself stands in for a pod (no dummy module here).
    await r.ip(ns, 'addr', 'add', `10.244.${i}.10/32`, 'dev', 'lo');
    nodes.push({
      name: `n${i}`,
      ns,
      addr: `198.18.0.${i}`,
      subnet: `10.244.${i}.0/24`,
      pod: `10.244.${i}.10`,
      stateDir: join(tmp, `n${i}`),
    });
  }

  const startNode = async (n: Node): Promise<void> => {
    const args = JSON.stringify({
      iface: 'weft-wg',
      stateDir: n.stateDir,
      network: '10.244.0.0/16',
      subnet: n.subnet,
      underlayAddr: n.addr,
      underlayMtu: 1500,
      backend: { PersistentKeepaliveInterval: 0 },
    });
    // wireguard-go's control socket lives in /run/wireguard, shared by every namespace:
    // give each node its own (ip netns exec already runs us in a private mount namespace).
    const script = 'mkdir -p /run/wireguard && mount -t tmpfs weft-wg /run/wireguard && exec "$@"';
    n.proc = r.spawn(n.ns, 'sh', ['-c', script, 'sh', process.execPath, '--import', 'tsx', FIXTURE, args], {
      stdio: ['pipe', 'pipe', 'pipe'],
      cwd: projectRoot,
    });
    n.lines = createInterface({ input: n.proc.child.stdout! })[Symbol.asyncIterator]();
    const prepared = await nextEvent(n, 'prepared');
    n.backendData = prepared.backendData;
    assert.equal(prepared.mtu, 1420);
    send(n, { cmd: 'start' });
    await nextEvent(n, 'started');
  };
  const applyPeers = async (
    n: Node,
    events: { type: string; lease: unknown }[],
  ): Promise<Record<string, unknown>> => {
    send(n, { cmd: 'peers', events });
    return nextEvent(n, 'applied');
  };
  const ping = (from: Node, to: Node): Promise<string> =>
    r.exec(from.ns, 'ping', ['-c', '2', '-i', '0.2', '-W', '2', '-I', from.pod, to.pod]);

  for (const n of nodes) await startNode(n);
  for (const n of nodes) {
    const applied = await applyPeers(
      n,
      nodes.filter((p) => p !== n).map((p) => ({ type: 'added', lease: leaseOf(p) })),
    );
    assert.equal((applied.peers as unknown[]).length, 2);
  }
  // The interface is configured as the backend promises.
  const link = await r.ip(nodes[0]!.ns, '-json', 'addr', 'show', 'weft-wg');
  assert.match(link, /"local":"10\.244\.1\.0","prefixlen":32/);
  assert.match(link, /"mtu":1420/);
  assert.match(await r.ip(nodes[0]!.ns, 'route', 'show', '10.244.0.0/16'), /dev weft-wg/);

  // Full mesh: ping every pair.
  for (const a of nodes) for (const b of nodes) if (a !== b) await ping(a, b);

  // TCP: 4 MiB with a recognisable marker; sha256 checked at both ends; capture the underlay.
  const [n1, n2, n3] = nodes as [Node, Node, Node];
  const pcap = join(tmp, 'underlay.pcap');
  const dump = r.spawn(n2.ns, 'tcpdump', ['-i', 'eth0', '-U', '-s', '0', '-w', pcap, 'udp']);
  await sleep(500);
  const server = r.spawn(n2.ns, process.execPath, [
    '-e',
    `const h=require('crypto').createHash('sha256');let n=0;require('net').createServer(s=>{s.on('data',d=>{h.update(d);n+=d.length});s.on('end',()=>{console.log('got '+n+' '+h.digest('hex'));s.end();process.exit(0)})}).listen(9000,'${n2.pod}',()=>console.log('listening'))`,
  ]);
  const deadline = Date.now() + 5000;
  while (!server.output().includes('listening') && Date.now() < deadline) await sleep(20);
  const client = await r.exec(n1.ns, process.execPath, [
    '-e',
    `const c=require('crypto');const m=Buffer.from('WEFT-PLAINTEXT-MARKER-'.repeat(64));const b=Buffer.alloc(4<<20);for(let i=0;i<b.length;i+=m.length)m.copy(b,i);console.log(c.createHash('sha256').update(b).digest('hex'));const s=require('net').connect({port:9000,host:'${n2.pod}',localAddress:'${n1.pod}'},()=>s.end(b));s.on('close',()=>process.exit(0))`,
  ]);
  await server.exited;
  const sent = client.trim();
  const got = /got (\d+) ([0-9a-f]+)/.exec(server.output());
  assert.ok(got, server.output());
  assert.equal(Number(got[1]), 4 << 20);
  assert.equal(got[2], sent, 'sha256 of the received stream matches');
  await sleep(300);
  await dump.stop('SIGINT');
  const captured = readFileSync(pcap);
  assert.ok(captured.length > 4 << 20, `the capture holds the transfer (${captured.length} bytes)`);
  assert.equal(
    captured.indexOf('WEFT-PLAINTEXT-MARKER'),
    -1,
    'no plaintext of the inner payload on the underlay',
  );

  // n1 forgets n3: n3 can no longer reach n1 (and n1 has no route to n3's pods), n2 still can.
  await applyPeers(n1, [{ type: 'removed', lease: leaseOf(n3) }]);
  await assert.rejects(ping(n3, n1));
  await assert.rejects(ping(n1, n3));
  await ping(n2, n1);

  // Restart n1 with the same state dir: same key, and the mesh works again.
  const keyBefore = (n1.backendData as { PublicKey: string }).PublicKey;
  send(n1, { cmd: 'stop' });
  await nextEvent(n1, 'stopped');
  await n1.proc!.exited;
  await assert.rejects(r.ip(n1.ns, 'link', 'show', 'weft-wg'), 'the device is gone after stop');
  await startNode(n1);
  assert.equal(
    (n1.backendData as { PublicKey: string }).PublicKey,
    keyBefore,
    'the key survived the restart',
  );
  await applyPeers(
    n1,
    [n2, n3].map((p) => ({ type: 'added', lease: leaseOf(p) })),
  );
  await ping(n1, n2);
  await ping(n3, n1);
  for (const n of nodes) {
    send(n, { cmd: 'stop' });
    await nextEvent(n, 'stopped');
  }
});
