/**
 * The underlay: the interface (and its IPv4 address and MTU) that carries overlay traffic
 * between nodes. Chosen like flannel: the first of `--iface` (a name or an address) that
 * exists, then the first `--iface-regex` (tried in order) matching the name of an
 * interface that has an IPv4 address, else the interface of the default route. Read with
 * `ip -json` in the daemon's own network namespace.
 */
import { isIPv4 } from 'node:net';
import { formatIpv4, parseIpv4 } from '../routing/ipv4.ts';
import { ConfigError } from '../util/errors.ts';
import { run } from '../util/exec.ts';

export interface Underlay {
  readonly iface: string;
  /** IPv4 address (uint32). */
  readonly addr: number;
  readonly mtu: number;
}

/** Runs `ip` with arguments, resolving with stdout (injectable for tests). */
export type IpRunner = (args: readonly string[]) => Promise<string>;

const defaultIp: IpRunner = (args) => run('ip', args);

interface IpAddrInfo {
  family?: string;
  local?: string;
  prefixlen?: number;
  scope?: string;
}
interface IpLink {
  ifname: string;
  mtu?: number;
  flags?: string[];
  addr_info?: IpAddrInfo[];
}
interface IpRoute {
  dev?: string;
  dst?: string;
}

function parseJson<T>(text: string, what: string): T {
  try {
    return JSON.parse(text.trim() === '' ? '[]' : text) as T;
  } catch (err) {
    throw new ConfigError('iface', `cannot parse the output of ${what}: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

function v4Addresses(link: IpLink): string[] {
  return (link.addr_info ?? [])
    .filter((a) => a.family === 'inet' && typeof a.local === 'string' && a.scope !== 'host')
    .map((a) => a.local as string);
}

function describe(links: readonly IpLink[]): string {
  return links.map((l) => `${l.ifname}(${v4Addresses(l).join(',') || 'no IPv4'})`).join(' ');
}

/**
 * Picks the underlay from `--iface` values, then `--iface-regex` expressions (each tried in
 * order against interface names, in the kernel's interface order), or the default route's
 * interface when neither is given.
 */
export async function pickUnderlay(
  iface: readonly string[],
  ip: IpRunner = defaultIp,
  ifaceRegex: readonly string[] = [],
): Promise<Underlay> {
  const links = parseJson<IpLink[]>(await ip(['-json', 'addr', 'show']), 'ip -json addr show');
  const pick = (link: IpLink, addrText?: string): Underlay => {
    const text = addrText ?? v4Addresses(link)[0];
    if (!text) {
      throw new ConfigError(
        'iface',
        `interface ${link.ifname} has no IPv4 address; give it one or pick another --iface`,
      );
    }
    if (!link.mtu) throw new ConfigError('iface', `cannot read the MTU of ${link.ifname}`);
    return { iface: link.ifname, addr: parseIpv4(text, 'iface'), mtu: link.mtu };
  };

  if (iface.length > 0 || ifaceRegex.length > 0) {
    for (const want of iface) {
      if (isIPv4(want)) {
        const link = links.find((l) => v4Addresses(l).includes(want));
        if (link) return pick(link, want);
      } else {
        const link = links.find((l) => l.ifname === want);
        if (link) return pick(link);
      }
    }
    for (const text of ifaceRegex) {
      let re: RegExp;
      try {
        re = new RegExp(text);
      } catch (err) {
        throw new ConfigError('iface-regex', `"${text}" is not a valid regular expression`, { cause: err });
      }
      const link = links.find((l) => re.test(l.ifname) && v4Addresses(l).length > 0);
      if (link) return pick(link);
    }
    if (ifaceRegex.length === 0) {
      throw new ConfigError(
        'iface',
        `none of ${iface.join(', ')} is an interface name or IPv4 address here; interfaces: ${describe(links)}`,
      );
    }
    throw new ConfigError(
      'iface-regex',
      `none of ${[...iface, ...ifaceRegex.map((r) => `/${r}/`)].join(', ')} matches an interface with an IPv4 address here; interfaces: ${describe(links)}`,
    );
  }

  const routes = parseJson<IpRoute[]>(
    await ip(['-json', '-4', 'route', 'show', 'default']),
    'ip route show default',
  );
  const dev = routes.find((r) => r.dev)?.dev;
  if (!dev) {
    throw new ConfigError(
      'iface',
      'there is no default route to pick the underlay from; pass --iface=<name or address>',
    );
  }
  const link = links.find((l) => l.ifname === dev);
  if (!link) throw new ConfigError('iface', `the default route's interface ${dev} is not listed by ip addr`);
  return pick(link);
}

export function describeUnderlay(u: Underlay): string {
  return `${u.iface} ${formatIpv4(u.addr)} mtu ${u.mtu}`;
}
