/**
 * The vxlan backend's options from net-conf.json's `Backend` object, validated once at
 * start so the rest of the backend works with plain numbers. Names and defaults follow
 * flannel (VNI 1, Port 8472 = the Linux default, DirectRouting false); `Dataplane`, `MTU`
 * and `PersistentKeepaliveInterval` (seconds, userspace plane) are weft's additions.
 */
import type { BackendConfig } from '../../lease/types.ts';
import { ConfigError } from '../../util/errors.ts';

export const Dataplane = { kernel: 'kernel', userspace: 'userspace', auto: 'auto' } as const;
export type Dataplane = (typeof Dataplane)[keyof typeof Dataplane];

export interface VxlanOptions {
  readonly vni: number;
  readonly port: number;
  readonly directRouting: boolean;
  /** Explicit device MTU; undefined = underlay MTU - 50. */
  readonly mtu: number | undefined;
  readonly dataplane: Dataplane;
  /** NAT keepalive interval in seconds (userspace plane only); absent = off. */
  readonly keepalive?: number;
}

/** Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14). */
export const VXLAN_OVERHEAD = 50;

function intOption(cfg: BackendConfig, key: string, def: number, min: number, max: number): number {
  const v = cfg[key];
  if (v === undefined || v === null) return def;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new ConfigError(
      `Backend.${key}`,
      `must be an integer from ${min} to ${max} (got ${JSON.stringify(v)})`,
    );
  }
  return v;
}

export function parseVxlanOptions(cfg: BackendConfig): VxlanOptions {
  const vni = intOption(cfg, 'VNI', 1, 0, 0xffffff);
  const port = intOption(cfg, 'Port', 8472, 1, 65535);
  const mtuRaw = cfg['MTU'];
  const mtu =
    mtuRaw === undefined || mtuRaw === null || mtuRaw === 0
      ? undefined
      : intOption(cfg, 'MTU', 0, 576, 65535);
  const dr = cfg['DirectRouting'];
  if (dr !== undefined && dr !== null && typeof dr !== 'boolean') {
    throw new ConfigError('Backend.DirectRouting', `must be true or false (got ${JSON.stringify(dr)})`);
  }
  const dp = cfg['Dataplane'] ?? 'auto';
  if (dp !== 'kernel' && dp !== 'userspace' && dp !== 'auto') {
    throw new ConfigError(
      'Backend.Dataplane',
      `must be "kernel", "userspace" or "auto" (got ${JSON.stringify(dp)})`,
    );
  }
  const keepalive = intOption(cfg, 'PersistentKeepaliveInterval', 0, 0, 65535);
  return {
    vni,
    port,
    directRouting: dr === true,
    mtu,
    dataplane: dp,
    ...(keepalive > 0 ? { keepalive } : {}),
  };
}
