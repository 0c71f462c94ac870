/**
 * weftd: the node daemon's entry point. Parses options, creates the logger, starts the
 * daemon (src/daemon/daemon.ts) and the health server, turns SIGTERM/SIGINT into a graceful
 * stop, and maps the outcome to an exit code. This is the only place that exits.
 *
 * Exit codes: 0 stopped by a signal, 1 failed while running, 2 bad flags or config.
 */
import { pathToFileURL } from 'node:url';
import { startDaemon } from '../daemon/daemon.ts';
import type { DaemonHandle } from '../daemon/daemon.ts';
import { startHealthServer } from '../daemon/health.ts';
import type { HealthServer } from '../daemon/health.ts';
import { helpText, parseOptions } from '../daemon/options.ts';
import type { DaemonOptions } from '../daemon/options.ts';
import { ConfigError } from '../util/errors.ts';
import { createLogger } from '../util/log.ts';
import { WEFT_VERSION } from '../util/self.ts';

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_CONFIG = 2;

function exitCodeFor(err: unknown): number {
  return err instanceof ConfigError ? EXIT_CONFIG : EXIT_FAILED;
}

export async function main(
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>> = process.env,
): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(helpText());
    return EXIT_OK;
  }
  let options: DaemonOptions;
  try {
    options = parseOptions(argv, env);
  } catch (err) {
    process.stderr.write(`weftd: ${(err as Error).message}\n`);
    return exitCodeFor(err);
  }
  const log = createLogger({ level: options.logLevel, name: 'weftd' });
  const daemon: DaemonHandle = startDaemon(options, { log });

  let health: HealthServer | undefined;
  if (options.healthzPort > 0) {
    try {
      health = await startHealthServer({
        host: options.healthzIp,
        port: options.healthzPort,
        status: () => daemon.status(),
        log,
      });
      const { createMetrics } = await import('../metrics/metrics.ts');
      const registry = createMetrics({
        status: () => daemon.status(),
        forwarder: () => daemon.dataplaneInfo()?.forwarder,
        info: () => {
          const d = daemon.dataplaneInfo();
          return { version: WEFT_VERSION, dataplane: d?.dataplane ?? 'none', offloads: d?.offloads ?? {} };
        },
      });
      health.addRoute('/metrics', async (_req, res) => {
        const text = await registry.metrics();
        res.writeHead(200, { 'content-type': registry.contentType });
        res.end(text);
      });
    } catch (err) {
      log.error({ err }, 'cannot start the health server');
      await daemon.stop();
      return exitCodeFor(err);
    }
  }

  const onSignal = (sig: NodeJS.Signals): void => {
    log.info({ signal: sig }, 'signal received; stopping gracefully');
    void daemon.stop();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    const result = await daemon.done;
    if (result.error !== undefined) {
      log.fatal({ err: result.error }, 'weftd failed');
      return exitCodeFor(result.error);
    }
    return EXIT_OK;
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    await health?.close();
  }
}

const invokedDirectly =
  process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (invokedDirectly) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`weftd: unexpected failure: ${String((err as Error)?.stack ?? err)}\n`);
      process.exit(EXIT_FAILED);
    },
  );
}
