/**
 * Masquerade and forward rules for pod traffic (`weftd --ip-masq`), in nftables.
 *
 * flannel does this with iptables chains; weft keeps everything in ONE nftables table,
 * `ip weft`, replaced atomically (`nft -f` with delete+add in one transaction), checked
 * and re-applied periodically (someone flushing the ruleset must not break pods for long),
 * and deleted on shutdown. The policy, in order, for traffic leaving the node:
 *   1. packets kube-proxy marked 0x4000/0x4000 are left alone (it masquerades them itself);
 *   2. pod -> pod inside the cluster Network: no NAT;
 *   3. from outside the Network to our own subnet: no NAT (traffic arriving for our pods);
 *   4. pod -> outside the Network (not multicast): MASQUERADE, fully random ports;
 *   5. host/outside -> pods elsewhere in the Network: MASQUERADE (so replies come back
 *      through the overlay).
 * And in the forward hook: accept anything from or to the Network.
 *
 * Note on nftables semantics: an accept in our table does not override a drop verdict
 * issued by another table on the same hook (e.g. an iptables-nft FORWARD policy DROP).
 */
import type { Logger } from '../util/log.ts';
import { run } from '../util/exec.ts';
import { formatCidr } from '../routing/ipv4.ts';
import type { Ipv4Cidr } from '../routing/ipv4.ts';

export const IPMASQ_TABLE = 'weft';
/** kube-proxy's masquerade mark. */
export const KUBE_PROXY_MARK = 0x4000;

export interface IpMasqOptions {
  readonly network: Ipv4Cidr;
  readonly subnet: Ipv4Cidr;
  /** Run nft inside this network namespace (tests); default: the current one. */
  readonly netns?: string;
  /** Resync period in ms (default 60 s; 0 = never). */
  readonly resyncMs?: number;
  readonly log?: Logger;
}

/** The complete `ip weft` table for a node, as nft script text (without the replace prologue). */
export function renderMasqTable(network: Ipv4Cidr, subnet: Ipv4Cidr): string {
  const net = formatCidr(network);
  const sub = formatCidr(subnet);
  const mark = `0x${KUBE_PROXY_MARK.toString(16)}`;
  return [
    `table ip ${IPMASQ_TABLE} {`,
    `  chain postrouting {`,
    `    type nat hook postrouting priority srcnat; policy accept;`,
    `    meta mark & ${mark} == ${mark} return comment "kube-proxy masquerades these"`,
    `    ip saddr ${net} ip daddr ${net} return comment "pod to pod"`,
    `    ip saddr != ${net} ip daddr ${sub} return comment "to our pods"`,
    `    ip saddr ${net} ip daddr != 224.0.0.0/4 masquerade fully-random comment "pods to outside"`,
    `    ip saddr != ${net} ip daddr ${net} masquerade fully-random comment "host to remote pods"`,
    `  }`,
    `  chain forward {`,
    `    type filter hook forward priority filter; policy accept;`,
    `    ip saddr ${net} accept comment "from pods"`,
    `    ip daddr ${net} accept comment "to pods"`,
    `  }`,
    `}`,
    '',
  ].join('\n');
}

/** An nft script that replaces the table atomically (creates it first so delete never fails). */
export function renderMasqReplace(network: Ipv4Cidr, subnet: Ipv4Cidr): string {
  return `table ip ${IPMASQ_TABLE}\ndelete table ip ${IPMASQ_TABLE}\n${renderMasqTable(network, subnet)}`;
}

/** Normalises `nft list table` output for comparison (whitespace, handles). */
function normalise(text: string): string {
  return text
    .split('\n')
    .map((l) => l.replace(/#.*$/, '').trim())
    .filter((l) => l.length > 0)
    .join('\n');
}

export class IpMasq {
  private readonly opts: IpMasqOptions;
  private timer: NodeJS.Timeout | undefined;
  private expected: string | undefined;
  /** Times the table was found missing or changed and re-applied by a resync. */
  resyncs = 0;
  applied = false;

  constructor(opts: IpMasqOptions) {
    this.opts = opts;
  }

  private nft(args: string[], input?: string): Promise<string> {
    return run('nft', args, { netns: this.opts.netns, input });
  }

  /** Installs the table (atomic replace) and starts the periodic resync. */
  async start(): Promise<void> {
    await this.apply();
    const every = this.opts.resyncMs ?? 60_000;
    if (every > 0) {
      this.timer = setInterval(() => {
        this.resync().catch((err: unknown) => this.opts.log?.warn({ err }, 'ip-masq resync failed'));
      }, every);
      this.timer.unref();
    }
  }

  async apply(): Promise<void> {
    await this.nft(['-f', '-'], renderMasqReplace(this.opts.network, this.opts.subnet));
    this.expected = normalise(await this.nft(['list', 'table', 'ip', IPMASQ_TABLE]));
    this.applied = true;
    this.opts.log?.info({ table: IPMASQ_TABLE }, 'ip-masq rules installed');
  }

  /** Re-applies the table when it is missing or differs from what we installed. Returns true if it did. */
  async resync(): Promise<boolean> {
    let current: string | undefined;
    try {
      current = normalise(await this.nft(['list', 'table', 'ip', IPMASQ_TABLE]));
    } catch {
      current = undefined;
    }
    if (current !== undefined && current === this.expected) return false;
    this.resyncs++;
    this.opts.log?.warn({ table: IPMASQ_TABLE }, 'ip-masq rules missing or changed; re-applying');
    await this.apply();
    return true;
  }

  /** Stops the resync and deletes the table (idempotent). */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.nft(['-f', '-'], `table ip ${IPMASQ_TABLE}\ndelete table ip ${IPMASQ_TABLE}\n`);
    this.applied = false;
    this.opts.log?.info({ table: IPMASQ_TABLE }, 'ip-masq rules removed');
  }
}
