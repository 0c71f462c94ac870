/**
 * flannel's subnet file (subnet.env), written by weftd once it holds a lease:
 *   FLANNEL_NETWORK=10.244.0.0/16  FLANNEL_SUBNET=10.244.3.1/24  FLANNEL_MTU=1450
 *   FLANNEL_IPMASQ=false  (and optionally FLANNEL_IPV6_NETWORK / FLANNEL_IPV6_SUBNET)
 * Parsed here, not imported from the daemon, so the plugin stays small and starts fast.
 */
import { readFileSync } from 'node:fs';
import { cidrContainsCidr, formatCidr, parseCidr } from '../src/routing/ipv4.ts';
import type { Ipv4Cidr } from '../src/routing/ipv4.ts';
import { CniCode, CniError } from './errors.ts';

export const DEFAULT_SUBNET_FILE = '/run/weft/subnet.env';

export interface SubnetEnv {
  /** Cluster network, e.g. 10.244.0.0/16. */
  network: Ipv4Cidr;
  /** This node's subnet as a network address, e.g. 10.244.3.0/24. */
  subnet: Ipv4Cidr;
  mtu?: number;
  /** True when the daemon masquerades itself (then the bridge must not). */
  ipMasq: boolean;
  ipv6Network?: string;
  ipv6Subnet?: string;
}

function bad(path: string, what: string): CniError {
  return new CniError(
    CniCode.InvalidConfig,
    `subnet file ${path}: ${what}; it is written by weftd: check the weftd log on this node`,
  );
}

const IPV6_CIDR_RE = /^[0-9a-fA-F:.]+\/\d{1,3}$/;

/** Parses subnet file text; `path` is only used in error messages. */
export function parseSubnetEnv(text: string, path = DEFAULT_SUBNET_FILE): SubnetEnv {
  const vars = new Map<string, string>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    if (eq <= 0) throw bad(path, `line "${line}" is not KEY=VALUE`);
    let value = line.slice(eq + 1).trim();
    if (value.length >= 2 && (value[0] === '"' || value[0] === "'") && value.at(-1) === value[0]) {
      value = value.slice(1, -1);
    }
    vars.set(line.slice(0, eq).trim(), value);
  }
  const net = vars.get('FLANNEL_NETWORK');
  const sub = vars.get('FLANNEL_SUBNET');
  if (net === undefined) throw bad(path, 'FLANNEL_NETWORK is missing');
  if (sub === undefined) throw bad(path, 'FLANNEL_SUBNET is missing');
  let network: Ipv4Cidr;
  let subnet: Ipv4Cidr;
  try {
    network = parseCidr(net, 'FLANNEL_NETWORK');
    subnet = parseCidr(sub, 'FLANNEL_SUBNET', true);
  } catch (err) {
    throw bad(path, (err as Error).message);
  }
  if (!cidrContainsCidr(network, subnet)) {
    throw bad(
      path,
      `FLANNEL_SUBNET ${formatCidr(subnet)} is not inside FLANNEL_NETWORK ${formatCidr(network)}`,
    );
  }
  const env: SubnetEnv = { network, subnet, ipMasq: false };
  const mtu = vars.get('FLANNEL_MTU');
  if (mtu !== undefined && mtu !== '') {
    const n = Number(mtu);
    if (!Number.isInteger(n) || n < 68 || n > 65535) throw bad(path, `FLANNEL_MTU "${mtu}" is not an MTU`);
    env.mtu = n;
  }
  const masq = vars.get('FLANNEL_IPMASQ');
  if (masq !== undefined && masq !== '') {
    if (masq !== 'true' && masq !== 'false') throw bad(path, `FLANNEL_IPMASQ "${masq}" is not true/false`);
    env.ipMasq = masq === 'true';
  }
  const v6net = vars.get('FLANNEL_IPV6_NETWORK');
  const v6sub = vars.get('FLANNEL_IPV6_SUBNET');
  if (v6net && v6sub) {
    if (!IPV6_CIDR_RE.test(v6net) || !IPV6_CIDR_RE.test(v6sub)) {
      throw bad(path, 'FLANNEL_IPV6_NETWORK / FLANNEL_IPV6_SUBNET are not IPv6 CIDRs');
    }
    env.ipv6Network = v6net;
    env.ipv6Subnet = v6sub;
  }
  return env;
}

/**
 * Reads the subnet file. A missing file means weftd has no lease yet (or is not running):
 * `missingCode` lets STATUS report 50 while ADD reports "try again later".
 */
export function readSubnetEnv(path: string, missingCode: number = CniCode.TryAgainLater): SubnetEnv {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      throw new CniError(
        missingCode,
        `subnet file ${path} does not exist: weftd has not acquired a subnet lease for this node yet. Is weftd running on this node? Check the weftd log`,
      );
    }
    throw new CniError(CniCode.Io, `cannot read subnet file ${path}: ${(err as Error).message}`);
  }
  return parseSubnetEnv(text, path);
}
