/**
 * KernelNet: the one place weft talks to the Linux network stack (links, addresses, routes,
 * neighbours, VXLAN FDB). Backends describe what they want as plain operations (KernelOp)
 * and read state back through typed queries, so a backend can be unit-tested against the
 * in-memory twin (RecordingKernel) and run for real through iproute2 (IpRouteKernel).
 *
 * Every operation renders to exactly one iproute2 batch line (renderOp); the recording twin
 * records those same lines, so a unit test's expected list reads like the commands an
 * operator would type.
 */
import type { Ipv4Cidr } from '../routing/ipv4.ts';
import { formatCidr, formatIpv4 } from '../routing/ipv4.ts';

/** Settings of a VXLAN device, as flannel creates it. */
export interface VxlanSpec {
  readonly name: string;
  readonly vni: number;
  /** Local (source) underlay address, uint32. */
  readonly local: number;
  /** Underlay device the VXLAN is bound to. */
  readonly dev: string;
  readonly port: number;
  /** Address of the device (VTEP MAC), "aa:bb:cc:dd:ee:ff". */
  readonly mac: string;
  readonly mtu: number;
}

export interface LinkInfo {
  readonly name: string;
  readonly index: number;
  readonly mtu: number;
  readonly up: boolean;
  readonly mac: string;
  /** Transmit queue length, when the kernel reports it. */
  readonly txqueuelen?: number;
  /** info_kind ("vxlan", "veth", "tun", ...); undefined for plain devices. */
  readonly kind?: string;
  /** Present when kind === "vxlan". */
  readonly vxlan?: {
    readonly vni: number;
    readonly local?: number;
    readonly dev?: string;
    readonly port: number;
    readonly learning: boolean;
  };
}

/** An address on a device: `addr/prefix` (host bits kept). */
export interface IfAddr {
  readonly addr: number;
  readonly prefix: number;
}

export interface RouteSpec {
  readonly dst: Ipv4Cidr;
  readonly via?: number;
  readonly dev?: string;
  readonly onlink?: boolean;
}

export interface NeighSpec {
  readonly addr: number;
  readonly lladdr: string;
  readonly dev: string;
}

export interface FdbSpec {
  readonly mac: string;
  readonly dev: string;
  readonly dst: number;
}

/** One change to the kernel. Deletes of things already gone are not errors. */
export type KernelOp =
  | { readonly op: 'link-add-vxlan'; readonly spec: VxlanSpec }
  | { readonly op: 'link-del'; readonly name: string }
  | {
      readonly op: 'link-up';
      readonly name: string;
      readonly mtu?: number;
      /** Device transmit queue length (for a TUN: packets queued for the reader). */
      readonly txqueuelen?: number;
    }
  | { readonly op: 'addr-replace'; readonly dev: string; readonly addr: IfAddr }
  | { readonly op: 'addr-del'; readonly dev: string; readonly addr: IfAddr }
  | { readonly op: 'route-replace'; readonly route: RouteSpec }
  | { readonly op: 'route-del'; readonly route: RouteSpec }
  | { readonly op: 'neigh-replace'; readonly neigh: NeighSpec }
  | { readonly op: 'neigh-del'; readonly neigh: Omit<NeighSpec, 'lladdr'> }
  | { readonly op: 'fdb-append'; readonly fdb: FdbSpec }
  | { readonly op: 'fdb-del'; readonly fdb: FdbSpec }
  /** An IPv4 setting of one interface (net/ipv4/conf/<dev>/<key>), e.g. accept_local. */
  | { readonly op: 'iface-sysctl'; readonly dev: string; readonly key: string; readonly value: string };

export const OpTool = { ip: 'ip', bridge: 'bridge', sysctl: 'sysctl' } as const;
export type OpTool = (typeof OpTool)[keyof typeof OpTool];

export interface KernelNet {
  /** True when VXLAN devices can be created here (module loaded, built in, or loadable). */
  vxlanAvailable(): Promise<boolean>;
  getLink(name: string): Promise<LinkInfo | undefined>;
  listLinks(): Promise<LinkInfo[]>;
  /** IPv4 addresses on `dev`. */
  listAddrs(dev: string): Promise<IfAddr[]>;
  /** IPv4 routes in the main table, optionally only those via `dev`. */
  listRoutes(dev?: string): Promise<RouteSpec[]>;
  listNeighs(dev: string): Promise<NeighSpec[]>;
  /** Unicast FDB entries with a remote dst on `dev` (VXLAN). */
  listFdb(dev: string): Promise<FdbSpec[]>;
  /**
   * Applies `ops` in order. Stops at the first failure of a create/replace (KernelError
   * naming the command); deletes of objects that no longer exist are ignored.
   */
  apply(ops: readonly KernelOp[]): Promise<void>;
}

export function isDelete(op: KernelOp): boolean {
  return (
    op.op === 'link-del' ||
    op.op === 'addr-del' ||
    op.op === 'route-del' ||
    op.op === 'neigh-del' ||
    op.op === 'fdb-del'
  );
}

function routeArgs(r: RouteSpec): string {
  let s = formatCidr(r.dst);
  if (r.via !== undefined) s += ` via ${formatIpv4(r.via)}`;
  if (r.dev !== undefined) s += ` dev ${r.dev}`;
  if (r.onlink) s += ' onlink';
  return s;
}

/** The tool and the batch line (`ip -batch` / `bridge -batch` syntax) for one operation. */
export function renderOp(op: KernelOp): { tool: OpTool; line: string } {
  switch (op.op) {
    case 'link-add-vxlan': {
      const s = op.spec;
      return {
        tool: 'ip',
        line:
          `link add ${s.name} address ${s.mac} mtu ${s.mtu} type vxlan id ${s.vni} ` +
          `local ${formatIpv4(s.local)} dev ${s.dev} dstport ${s.port} nolearning`,
      };
    }
    case 'link-del':
      return { tool: 'ip', line: `link del ${op.name}` };
    case 'link-up':
      return {
        tool: 'ip',
        line:
          `link set ${op.name}${op.mtu !== undefined ? ` mtu ${op.mtu}` : ''}` +
          `${op.txqueuelen !== undefined ? ` txqueuelen ${op.txqueuelen}` : ''} up`,
      };
    case 'addr-replace':
      return { tool: 'ip', line: `addr replace ${formatIpv4(op.addr.addr)}/${op.addr.prefix} dev ${op.dev}` };
    case 'addr-del':
      return { tool: 'ip', line: `addr del ${formatIpv4(op.addr.addr)}/${op.addr.prefix} dev ${op.dev}` };
    case 'route-replace':
      return { tool: 'ip', line: `route replace ${routeArgs(op.route)}` };
    case 'route-del':
      return { tool: 'ip', line: `route del ${routeArgs(op.route)}` };
    case 'neigh-replace':
      return {
        tool: 'ip',
        line: `neigh replace ${formatIpv4(op.neigh.addr)} lladdr ${op.neigh.lladdr} dev ${op.neigh.dev} nud permanent`,
      };
    case 'neigh-del':
      return { tool: 'ip', line: `neigh del ${formatIpv4(op.neigh.addr)} dev ${op.neigh.dev}` };
    case 'fdb-append':
      return {
        tool: 'bridge',
        line: `fdb append ${op.fdb.mac} dev ${op.fdb.dev} dst ${formatIpv4(op.fdb.dst)}`,
      };
    case 'fdb-del':
      return {
        tool: 'bridge',
        line: `fdb del ${op.fdb.mac} dev ${op.fdb.dev} dst ${formatIpv4(op.fdb.dst)}`,
      };
    case 'iface-sysctl':
      // Slashes, not dots: device names such as weft.1 contain dots.
      return { tool: 'sysctl', line: `-w net/ipv4/conf/${op.dev}/${op.key}=${op.value}` };
  }
}

/** "bridge fdb append ..." / "ip route replace ...": how an operation reads as a command. */
export function describeOp(op: KernelOp): string {
  const { tool, line } = renderOp(op);
  return `${tool} ${line}`;
}

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** Normalises a MAC to lower-case colon form; undefined when it is not a 48-bit MAC. */
export function normalizeMac(text: string): string | undefined {
  const m = text.trim().toLowerCase().replace(/-/g, ':');
  return MAC_RE.test(m) ? m : undefined;
}
