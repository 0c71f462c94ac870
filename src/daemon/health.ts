/**
 * weftd's small HTTP server on --healthz-ip:--healthz-port.
 *
 *   GET /healthz  200 "ok" while the process is alive (liveness)
 *   GET /readyz   200 when the lease is held, the subnet file written and the data path up;
 *                 503 with {"ready":false,"reason":...,"checks":...} otherwise (readiness; a
 *                 CNI STATUS or a kubelet probe can use it)
 *   GET /status   the daemon's status as JSON (lease, peers, backend counters) for `weft status`
 *
 * A tiny router (exact path -> handler) so later features (Prometheus /metrics) add one
 * route with `addRoute` instead of growing a switch.
 */
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ConfigError } from '../util/errors.ts';
import type { Logger } from '../util/log.ts';
import type { DaemonStatus } from './daemon.ts';

export type RouteHandler = (req: IncomingMessage, res: ServerResponse) => void | Promise<void>;

export interface HealthServerOptions {
  readonly host: string;
  /** 0 picks a free port (tests); weftd does not start the server at all for --healthz-port=0. */
  readonly port: number;
  readonly status: () => DaemonStatus;
  readonly log: Logger;
}

export interface HealthServer {
  readonly server: Server;
  /** The bound address and port. */
  readonly address: { readonly host: string; readonly port: number };
  /** Adds (or replaces) the handler for GET/HEAD on an exact path. */
  addRoute(path: string, handler: RouteHandler): void;
  close(): Promise<void>;
}

export function sendJson(res: ServerResponse, code: number, body: unknown): void {
  const text = `${JSON.stringify(body, null, 2)}\n`;
  res.writeHead(code, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
  res.end(text);
}

export async function startHealthServer(opts: HealthServerOptions): Promise<HealthServer> {
  const routes = new Map<string, RouteHandler>();
  routes.set('/healthz', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
    res.end('ok\n');
  });
  routes.set('/readyz', (_req, res) => {
    const s = opts.status();
    if (s.ready) sendJson(res, 200, { ready: true, checks: s.checks });
    else sendJson(res, 503, { ready: false, reason: s.reason, checks: s.checks, state: s.state });
  });
  routes.set('/status', (_req, res) => sendJson(res, 200, opts.status()));

  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] as string;
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' });
      res.end();
      return;
    }
    const handler = routes.get(path);
    if (!handler) {
      sendJson(res, 404, { error: `no such path ${path}`, paths: [...routes.keys()].sort() });
      return;
    }
    Promise.resolve()
      .then(() => handler(req, res))
      .catch((err: unknown) => {
        opts.log.error({ err, path }, 'health server handler failed');
        if (!res.headersSent) sendJson(res, 500, { error: String(err) });
        else res.end();
      });
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      reject(
        new ConfigError(
          'healthz-port',
          `cannot listen on ${opts.host}:${opts.port} (${err.code ?? err.message}); pick a free port or address`,
          { cause: err },
        ),
      );
    };
    server.once('error', onError);
    server.listen(opts.port, opts.host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  server.on('error', (err) => opts.log.error({ err }, 'health server error'));
  const addr = server.address() as AddressInfo;
  opts.log.info({ host: addr.address, port: addr.port }, 'health server listening');
  return {
    server,
    address: { host: addr.address, port: addr.port },
    addRoute: (path, handler) => {
      routes.set(path, handler);
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
