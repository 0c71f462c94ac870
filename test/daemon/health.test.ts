// The health server: /healthz, /readyz (503 with a reason until ready), /status, extra routes.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { test } from 'node:test';
import type { DaemonStatus } from '../../src/daemon/daemon.ts';
import { startHealthServer } from '../../src/daemon/health.ts';
import { ConfigError } from '../../src/util/errors.ts';
import { silentLogger } from '../../src/util/log.ts';

function status(ready: boolean, reason?: string): DaemonStatus {
  return {
    state: ready ? 'running' : 'starting',
    ready,
    reason,
    checks: { leaseHeld: ready, subnetFileWritten: ready, dataPathUp: ready },
    store: 'embedded',
    network: '10.1.0.0/16',
    backend: 'udp',
    underlay: { iface: 'eth0', addr: '198.18.0.1', mtu: 1500 },
    lease: ready
      ? { subnet: '10.1.3.0/24', publicIp: '198.18.0.1', expiresAt: null, backendData: null }
      : undefined,
    mtu: 1472,
    subnetFile: '/run/weft/subnet.env',
    peers: [],
    counters: {
      leaseAcquired: 1,
      leaseRenewed: 0,
      renewFailures: 0,
      leaseLost: 0,
      subnetChanged: 0,
      peerEvents: 0,
      watchRestarts: 0,
      acquireFailures: 0,
    },
    backendStats: { peers: 0 },
    error: undefined,
  };
}

void test('healthz, readyz and status follow the daemon; unknown paths 404; only GET/HEAD', async (t) => {
  let current = status(false, 'weftd is starting');
  const h = await startHealthServer({
    host: '127.0.0.1',
    port: 0,
    status: () => current,
    log: silentLogger(),
  });
  t.after(() => h.close());
  const base = `http://127.0.0.1:${h.address.port}`;

  const live = await fetch(`${base}/healthz`);
  assert.equal(live.status, 200);
  assert.equal(await live.text(), 'ok\n');

  const notReady = await fetch(`${base}/readyz`);
  assert.equal(notReady.status, 503);
  const body = (await notReady.json()) as { ready: boolean; reason: string; checks: Record<string, boolean> };
  assert.equal(body.ready, false);
  assert.equal(body.reason, 'weftd is starting');
  assert.equal(body.checks.leaseHeld, false);

  current = status(true);
  const ready = await fetch(`${base}/readyz?verbose=1`);
  assert.equal(ready.status, 200);
  assert.equal(((await ready.json()) as { ready: boolean }).ready, true);

  const st = await fetch(`${base}/status`);
  assert.equal(st.status, 200);
  assert.match(st.headers.get('content-type') ?? '', /application\/json/);
  assert.equal(((await st.json()) as DaemonStatus).lease?.subnet, '10.1.3.0/24');

  const missing = await fetch(`${base}/nope`);
  assert.equal(missing.status, 404);
  assert.deepEqual(((await missing.json()) as { paths: string[] }).paths, ['/healthz', '/readyz', '/status']);
  assert.equal((await fetch(`${base}/healthz`, { method: 'POST' })).status, 405);

  h.addRoute('/metrics', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('weft_up 1\n');
  });
  assert.equal(await (await fetch(`${base}/metrics`)).text(), 'weft_up 1\n');
  h.addRoute('/boom', () => {
    throw new Error('handler broke');
  });
  assert.equal((await fetch(`${base}/boom`)).status, 500);
});

void test('a port in use is a ConfigError naming --healthz-port', async (t) => {
  const blocker = createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
  t.after(() => new Promise<void>((r) => blocker.close(() => r())));
  const port = (blocker.address() as { port: number }).port;
  await assert.rejects(
    startHealthServer({ host: '127.0.0.1', port, status: () => status(true), log: silentLogger() }),
    (err: unknown) =>
      err instanceof ConfigError && err.key === 'healthz-port' && /EADDRINUSE/.test(err.message),
  );
});
