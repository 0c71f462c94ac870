/**
 * weft-cni's network configuration and the delegate configuration rendered from it.
 *
 * Input (one plugin of a conflist, as the runtime hands it over):
 *   { cniVersion, name, type: "weft-cni", subnetFile?, dataDir?, delegate?, ipam?,
 *     runtimeConfig?, args?, prevResult?, "cni.dev/valid-attachments"? }
 * Output: the delegate's conf, by default `bridge` (cni0, gateway, MTU and masquerade from the
 * subnet file) with `host-local` IPAM over this node's subnet, routing the cluster network.
 * Rendering is a pure function of (conf, subnet file) so it is unit-tested for every version.
 */
import { formatCidr, formatIpv4 } from '../src/routing/ipv4.ts';
import { CniCode, CniError } from './errors.ts';
import { DEFAULT_SUBNET_FILE } from './subnet-file.ts';
import type { SubnetEnv } from './subnet-file.ts';
import { SUPPORTED_VERSIONS, isSupported } from './version.ts';

export const DEFAULT_DATA_DIR = '/var/lib/cni/weft';
export const DEFAULT_BRIDGE = 'cni0';

type Json = Record<string, unknown>;

export interface Attachment {
  containerID: string;
  ifname: string;
}

export interface WeftNetConf {
  cniVersion: string;
  name: string;
  subnetFile: string;
  dataDir: string;
  delegate: Json;
  ipam: Json | undefined;
  runtimeConfig: Json | undefined;
  args: unknown;
  prevResult: Json | undefined;
  validAttachments: Attachment[] | undefined;
}

function isObject(v: unknown): v is Json {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Best-effort version for error reports when the conf itself is broken. */
export function sniffVersion(text: string): string | undefined {
  try {
    const v = (JSON.parse(text) as Json).cniVersion;
    return typeof v === 'string' && isSupported(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

function optString(obj: Json, key: string, fallback: string): string {
  const v = obj[key];
  if (v === undefined || v === null || v === '') return fallback;
  if (typeof v !== 'string')
    throw new CniError(CniCode.InvalidConfig, `config field "${key}" must be a string`);
  return v;
}

function optObject(obj: Json, key: string): Json | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  if (!isObject(v)) throw new CniError(CniCode.InvalidConfig, `config field "${key}" must be an object`);
  return v;
}

/** Parses and validates the plugin conf from stdin. */
export function parseNetConf(text: string): WeftNetConf {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new CniError(CniCode.Decode, `network config on stdin is not JSON: ${(err as Error).message}`);
  }
  if (!isObject(raw)) throw new CniError(CniCode.Decode, 'network config on stdin must be a JSON object');
  const version = raw.cniVersion;
  if (typeof version !== 'string' || version === '') {
    throw new CniError(
      CniCode.IncompatibleVersion,
      'network config has no "cniVersion"; set one of ' + SUPPORTED_VERSIONS.join(', '),
    );
  }
  if (!isSupported(version)) {
    throw new CniError(
      CniCode.IncompatibleVersion,
      `weft-cni does not support cniVersion "${version}"; use one of ${SUPPORTED_VERSIONS.join(', ')}`,
    );
  }
  const name = raw.name;
  if (typeof name !== 'string' || name === '') {
    throw new CniError(CniCode.InvalidConfig, 'network config needs a "name"');
  }
  const delegate = optObject(raw, 'delegate') ?? {};
  const dtype = delegate.type;
  if (dtype !== undefined && (typeof dtype !== 'string' || dtype === '' || dtype.includes('/'))) {
    throw new CniError(CniCode.InvalidConfig, '"delegate.type" must be a plugin name (e.g. "bridge")');
  }
  let validAttachments: Attachment[] | undefined;
  const va = raw['cni.dev/valid-attachments'];
  if (va !== undefined && va !== null) {
    if (!Array.isArray(va)) {
      throw new CniError(
        CniCode.InvalidConfig,
        '"cni.dev/valid-attachments" must be a list of {containerID, ifname}',
      );
    }
    validAttachments = va.map((a) => {
      if (!isObject(a) || typeof a.containerID !== 'string' || typeof a.ifname !== 'string') {
        throw new CniError(
          CniCode.InvalidConfig,
          '"cni.dev/valid-attachments" entries need string containerID and ifname',
        );
      }
      return { containerID: a.containerID, ifname: a.ifname };
    });
  }
  return {
    cniVersion: version,
    name,
    subnetFile: optString(raw, 'subnetFile', DEFAULT_SUBNET_FILE),
    dataDir: optString(raw, 'dataDir', DEFAULT_DATA_DIR),
    delegate,
    ipam: optObject(raw, 'ipam'),
    runtimeConfig: optObject(raw, 'runtimeConfig'),
    args: raw.args,
    prevResult: optObject(raw, 'prevResult'),
    validAttachments,
  };
}

function routeList(v: unknown): Json[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || !v.every(isObject)) {
    throw new CniError(CniCode.InvalidConfig, '"ipam.routes" must be a list of {dst, gw?}');
  }
  return v.map((r) => ({ ...r }));
}

/**
 * Renders the delegate conf (pure). Keys the user set in `delegate` win, except `name` and
 * `cniVersion` (always ours) and the IPAM ranges (always this node's subnet).
 */
export function renderDelegate(conf: WeftNetConf, env: SubnetEnv): Json {
  const d: Json = { ...conf.delegate };
  d.cniVersion = conf.cniVersion;
  d.name = conf.name;
  if (d.type === undefined) d.type = 'bridge';
  if (d.type === 'bridge') {
    if (d.bridge === undefined) d.bridge = DEFAULT_BRIDGE;
    if (d.isGateway === undefined) d.isGateway = true;
  }
  if (d.ipMasq === undefined) d.ipMasq = !env.ipMasq;
  if (d.mtu === undefined && env.mtu !== undefined) d.mtu = env.mtu;

  const base = isObject(d.ipam) ? d.ipam : {};
  const ipam: Json = { ...base, ...(conf.ipam ?? {}) };
  if (ipam.type === undefined) ipam.type = 'host-local';
  const ranges: Json[][] = [[{ subnet: formatCidr(env.subnet) }]];
  const routes = routeList(ipam.routes);
  const network = formatCidr(env.network);
  if (!routes.some((r) => r.dst === network)) routes.push({ dst: network });
  if (env.ipv6Subnet && env.ipv6Network) {
    ranges.push([{ subnet: env.ipv6Subnet }]);
    if (!routes.some((r) => r.dst === env.ipv6Network)) routes.push({ dst: env.ipv6Network });
  }
  // A bridge gateway routes everything it is given via itself; saying so explicitly keeps the
  // reference bridge's CHECK (which compares gateways literally) from failing on `gw: null`.
  if (d.type === 'bridge' && d.isGateway === true) {
    const gw = formatIpv4(env.subnet.addr + 1);
    for (const r of routes)
      if (r.gw === undefined && typeof r.dst === 'string' && !r.dst.includes(':')) r.gw = gw;
  }
  ipam.ranges = ranges;
  ipam.routes = routes;
  delete ipam.subnet;
  d.ipam = ipam;

  if (conf.runtimeConfig !== undefined) d.runtimeConfig = conf.runtimeConfig;
  if (conf.args !== undefined) d.args = conf.args;
  return d;
}
