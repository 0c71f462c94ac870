/**
 * Backend.Type -> how to build that backend. The one place the daemon learns which backends
 * exist; each backend's module is imported only when it is chosen (the udp backend pulls
 * in the native addon, the kernel ones do not need it).
 *
 * To add a backend: one line in BACKENDS.
 */
import type { Backend, BackendContext } from './backend.ts';
import { ConfigError } from '../util/errors.ts';

/** Daemon settings some backends take beyond the BackendContext. */
export interface BackendExtras {
  /** TUN device name for userspace backends (weftd --tun-name). */
  readonly tunName?: string;
}

/** Builds a backend; async so its module loads only when chosen. */
export type RegisteredBackend = (ctx: BackendContext, extras: BackendExtras) => Promise<Backend>;

export const BACKENDS: Readonly<Record<string, RegisteredBackend>> = {
  udp: async (ctx, x) => {
    const { UdpBackend } = await import('./udp/udp.ts');
    return new UdpBackend(ctx, x.tunName !== undefined ? { tunName: x.tunName } : {});
  },
  vxlan: async (ctx) => {
    const { VxlanBackend } = await import('./vxlan/vxlan.ts');
    return new VxlanBackend(ctx);
  },
  wireguard: async (ctx, x) => {
    const { WireguardBackend } = await import('./wireguard/wireguard-backend.ts');
    return new WireguardBackend(ctx, x.tunName);
  },
  'host-gw': async (ctx) => {
    const { HostGwBackend } = await import('./hostgw/hostgw.ts');
    return new HostGwBackend(ctx);
  },
};

/** Backend types weft knows. */
export function backendTypes(): string[] {
  return Object.keys(BACKENDS).sort();
}

/** Builds the backend for `type` (Backend.Type); ConfigError naming the key when unknown. */
export async function createBackend(
  type: string,
  ctx: BackendContext,
  extras: BackendExtras = {},
): Promise<Backend> {
  const entry = Object.hasOwn(BACKENDS, type) ? BACKENDS[type] : undefined;
  if (!entry) {
    throw new ConfigError(
      'Backend.Type',
      `"${type}" is not a backend weft has; use one of ${backendTypes().join(', ')}`,
    );
  }
  return entry(ctx, extras);
}
