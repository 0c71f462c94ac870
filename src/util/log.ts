/**
 * Structured logs (pino). One root logger, per-component children: log.child({component}).
 * The data path never logs per packet: it counts, and the daemon logs counters at the edges.
 */
import { pino } from 'pino';
import type { Logger as PinoLogger } from 'pino';

export type Logger = PinoLogger;

export interface LogOptions {
  level?: string;
  /** Defaults to stderr (fd 2), so stdout stays free for command output. */
  destination?: number;
  name?: string;
}

export function createLogger(opts: LogOptions = {}): Logger {
  return pino(
    {
      name: opts.name ?? 'weft',
      level: opts.level ?? process.env.WEFT_LOG_LEVEL ?? 'info',
      base: { pid: process.pid },
    },
    pino.destination({ fd: opts.destination ?? 2, sync: true }),
  );
}

/** A logger that drops everything (unit tests). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
