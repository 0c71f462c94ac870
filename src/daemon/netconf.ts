/**
 * flannel's net-conf JSON -> a validated NetworkConfig.
 *
 * Why here and not in each store: every store (embedded, etcd, kube) serves the same JSON
 * and must apply the same defaults and rules, so a node sees the same network whichever
 * store it uses. Rules follow flannel (pkg/subnet/config.go) with one deliberate fix: the
 * SubnetLen default is 24 only when Network is /22 or larger, so the default always leaves
 * room for the 4 subnets a network must hold.
 *
 * Backend options: Type defaults to "udp"; udp's Port is checked and defaulted here. Two
 * options every backend shares are checked here too: `MTU` (0/absent = underlay MTU minus
 * the backend's overhead; else 576..65535, and backendMtu() checks it against the underlay
 * once that is known) and `PersistentKeepaliveInterval` (seconds, 0 = off; NAT keepalives).
 * Other options are checked by each backend (src/backend/<type>) and passed as given.
 */
import type { BackendConfig, NetworkConfig } from '../lease/types.ts';
import { cidrContains, formatCidr, formatIpv4, parseCidr, parseIpv4, prefixMask } from '../routing/ipv4.ts';
import { ConfigError } from '../util/errors.ts';

export const DEFAULT_BACKEND_TYPE = 'udp';
/** The smallest MTU IPv4 hosts must accept (RFC 791); below it pods break in odd ways. */
export const MIN_MTU = 576;
export const MAX_MTU = 65535;
export const UDP_DEFAULT_PORT = 8285;

/** Parses net-conf JSON text (`source` names the file or key in messages). */
export function parseNetConfig(text: string, source = 'net-conf'): NetworkConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(
      source,
      `is not valid JSON (${(err as Error).message}); expected e.g. {"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`,
      { cause: err },
    );
  }
  return validateNetConfig(raw);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function optionalInt(obj: Record<string, unknown>, key: string, label = key): number | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v)) {
    throw new ConfigError(label, `must be an integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

function optionalBool(obj: Record<string, unknown>, key: string): boolean | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw new ConfigError(key, `must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

/** Validates an already parsed net-conf object and fills flannel's defaults. */
export function validateNetConfig(raw: unknown): NetworkConfig {
  if (!isObject(raw)) {
    throw new ConfigError('net-conf', 'must be a JSON object like {"Network":"10.244.0.0/16"}');
  }
  const enableIPv4 = optionalBool(raw, 'EnableIPv4') ?? true;
  const enableIPv6 = optionalBool(raw, 'EnableIPv6') ?? false;
  if (enableIPv6) {
    throw new ConfigError(
      'EnableIPv6',
      'IPv6 is not supported by weft yet; remove EnableIPv6 or set it to false',
    );
  }
  if (!enableIPv4) {
    throw new ConfigError('EnableIPv4', 'must be true (weft carries IPv4 only); remove it or set it to true');
  }

  const netText = raw.Network;
  if (netText === undefined || netText === null || netText === '') {
    throw new ConfigError('Network', 'is required: set it to the pod network, e.g. "10.244.0.0/16"');
  }
  if (typeof netText !== 'string') {
    throw new ConfigError('Network', `must be a string like "10.244.0.0/16", got ${JSON.stringify(netText)}`);
  }
  const network = parseCidr(netText, 'Network');
  if (network.prefix > 28) {
    throw new ConfigError('Network', `${netText} is too small; use a /28 or larger network`);
  }

  let subnetLen = optionalInt(raw, 'SubnetLen');
  if (subnetLen === undefined || subnetLen === 0) {
    subnetLen = network.prefix <= 22 ? 24 : network.prefix + 2;
  }
  if (subnetLen > 30) {
    throw new ConfigError('SubnetLen', `${subnetLen} is too long; use at most 30 (a /30 holds one pod)`);
  }
  if (subnetLen < network.prefix + 2) {
    throw new ConfigError(
      'SubnetLen',
      `${subnetLen} leaves fewer than 4 subnets in Network ${netText}; use at least ${network.prefix + 2}`,
    );
  }

  const subnetSize = 2 ** (32 - subnetLen);
  const mask = prefixMask(subnetLen);
  const lastSubnet = (network.addr + 2 ** (32 - network.prefix) - subnetSize) >>> 0;
  const subnetMin = boundary(raw, 'SubnetMin', (network.addr + subnetSize) >>> 0);
  const subnetMax = boundary(raw, 'SubnetMax', lastSubnet);

  function boundary(obj: Record<string, unknown>, key: string, dflt: number): number {
    const v = obj[key];
    if (v === undefined || v === null || v === '') return dflt;
    if (typeof v !== 'string')
      throw new ConfigError(key, `must be an address string, got ${JSON.stringify(v)}`);
    const addr = parseIpv4(v, key);
    if (!cidrContains(network, addr)) {
      throw new ConfigError(key, `${v} is not inside Network ${formatCidr(network)}`);
    }
    if ((addr & mask) >>> 0 !== addr) {
      throw new ConfigError(
        key,
        `${v} is not on a /${subnetLen} (SubnetLen) boundary; did you mean ${formatIpv4((addr & mask) >>> 0)}?`,
      );
    }
    return addr;
  }
  if (subnetMin > subnetMax) {
    throw new ConfigError(
      'SubnetMin',
      `${formatIpv4(subnetMin)} is above SubnetMax ${formatIpv4(subnetMax)}; swap them or widen the range`,
    );
  }

  const backend = validateBackend(raw.Backend);
  return { network, subnetLen, subnetMin, subnetMax, enableIPv4, backend, raw: Object.freeze({ ...raw }) };
}

function validateBackend(raw: unknown): BackendConfig {
  if (raw !== undefined && raw !== null && !isObject(raw)) {
    throw new ConfigError('Backend', 'must be an object like {"Type":"udp"}');
  }
  const opts: Record<string, unknown> = isObject(raw) ? { ...raw } : {};
  const typeRaw = opts.Type;
  delete opts.Type;
  if (typeRaw !== undefined && typeRaw !== null && typeof typeRaw !== 'string') {
    throw new ConfigError('Backend.Type', `must be a string such as "udp", got ${JSON.stringify(typeRaw)}`);
  }
  const type = typeRaw ? typeRaw.toLowerCase() : DEFAULT_BACKEND_TYPE;
  if (type === 'udp') {
    const port = optionalInt(opts, 'Port', 'Backend.Port') ?? UDP_DEFAULT_PORT;
    if (port < 1 || port > 65535) {
      throw new ConfigError(
        'Backend.Port',
        `${port} is not a UDP port; use 1..65535 (default ${UDP_DEFAULT_PORT})`,
      );
    }
    opts.Port = port;
  }
  const mtu = optionalInt(opts, 'MTU', 'Backend.MTU');
  if (mtu !== undefined && mtu !== 0 && (mtu < MIN_MTU || mtu > MAX_MTU)) {
    throw new ConfigError(
      'Backend.MTU',
      `${mtu} is out of range; use ${MIN_MTU}..${MAX_MTU}, or leave it out for underlay MTU minus the backend's overhead`,
    );
  }
  const ka = optionalInt(opts, 'PersistentKeepaliveInterval', 'Backend.PersistentKeepaliveInterval');
  if (ka !== undefined && (ka < 0 || ka > 65535)) {
    throw new ConfigError(
      'Backend.PersistentKeepaliveInterval',
      `${ka} is out of range; use seconds 1..65535 (25 is usual behind NAT), or 0 to turn keepalives off`,
    );
  }
  return Object.freeze({ ...opts, type });
}

/**
 * The device MTU for a backend: Backend.MTU when given, else underlay MTU - `overhead`.
 * Either way it must fit the underlay after encapsulation (MTU + overhead <= underlay MTU)
 * and be at least 576; otherwise a ConfigError says what to change.
 */
export function backendMtu(
  backend: BackendConfig,
  underlay: { readonly iface: string; readonly mtu: number },
  overhead: number,
): number {
  const raw = backend.MTU;
  const max = underlay.mtu - overhead;
  const type = backend.type;
  if (raw === undefined || raw === null || raw === 0) {
    if (max < MIN_MTU) {
      throw new ConfigError(
        'Backend.MTU',
        `underlay ${underlay.iface} has MTU ${underlay.mtu}, which leaves ${max} for the ${type} backend (overhead ${overhead}); pods need at least ${MIN_MTU}: raise the underlay MTU`,
      );
    }
    return max;
  }
  if (typeof raw !== 'number' || !Number.isInteger(raw) || raw < MIN_MTU) {
    throw new ConfigError(
      'Backend.MTU',
      `must be an integer of at least ${MIN_MTU}, got ${JSON.stringify(raw)}`,
    );
  }
  if (raw > max) {
    throw new ConfigError(
      'Backend.MTU',
      `${raw} does not fit underlay ${underlay.iface} (MTU ${underlay.mtu}) with the ${type} backend's ${overhead}-byte overhead; use at most ${max}`,
    );
  }
  return raw;
}

/** Backend.PersistentKeepaliveInterval in seconds (0 = off), as validated by validateNetConfig. */
export function keepaliveSeconds(backend: BackendConfig): number {
  const v = backend.PersistentKeepaliveInterval;
  if (v === undefined || v === null) return 0;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 65535) {
    throw new ConfigError(
      'Backend.PersistentKeepaliveInterval',
      `must be whole seconds 0..65535 (0 = off), got ${JSON.stringify(v)}`,
    );
  }
  return v;
}
