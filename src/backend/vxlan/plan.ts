/**
 * Pure planning for the vxlan backend: turn a peer's lease into what the kernel (or the
 * userspace forwarder) needs, and a plan into the exact iproute2 operations flannel uses.
 *
 * Per peer, in order (removal is the reverse):
 *   neigh replace <peer subnet addr> lladdr <peer VTEP MAC> dev weft.<VNI> nud permanent
 *   bridge fdb append <peer VTEP MAC> dev weft.<VNI> dst <peer public ip>
 *   route replace <peer subnet> via <peer subnet addr> dev weft.<VNI> onlink
 * With DirectRouting, a peer whose public IP is on one of our underlay's connected subnets
 * gets only `route replace <peer subnet> via <peer public ip> dev <underlay>`.
 */
import type { IfAddr, KernelOp } from '../../kernel/kernel.ts';
import { normalizeMac } from '../../kernel/kernel.ts';
import type { Ipv4Cidr } from '../../routing/ipv4.ts';
import { cidr, cidrContains, cidrToKey, tryParseIpv4 } from '../../routing/ipv4.ts';
import type { Lease } from '../../lease/types.ts';
import { takesTunnelGso } from '../tunnel-gso.ts';
import { isUsableMac } from './vtep-mac.ts';

/** flannel's vxlan BackendData: {"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}. */
export interface VxlanLeaseData {
  readonly VNI: number;
  readonly VtepMAC: string;
  /** weft: this node takes whole tunnel-GSO datagrams (src/backend/tunnel-gso.ts). */
  readonly TunnelGSO?: boolean;
}

export interface VxlanPeerPlan {
  readonly key: string;
  readonly subnet: Ipv4Cidr;
  readonly publicIp: number;
  /** Normalised VTEP MAC. */
  readonly mac: string;
  /** DirectRouting applies: plain route via the public IP, no VXLAN state. */
  readonly direct: boolean;
  /** The peer takes whole tunnel-GSO datagrams (BackendData "TunnelGSO": true). */
  readonly tunnelGso: boolean;
}

export interface VxlanPlanContext {
  /** VXLAN device (or TUN) name, "weft.<VNI>". */
  readonly dev: string;
  readonly underlay: string;
  readonly vni: number;
  readonly directRouting: boolean;
  /** Addresses on the underlay (their subnets are "our L2 segment"). */
  readonly connected: readonly IfAddr[];
}

export type PlanResult = { readonly plan: VxlanPeerPlan } | { readonly ignored: string };

/** True when `ip` lies in a subnet directly connected through one of `addrs`. */
export function onConnectedSubnet(addrs: readonly IfAddr[], ip: number): boolean {
  return addrs.some((a) => a.prefix < 32 && cidrContains(cidr(a.addr, a.prefix), ip));
}

export function planVxlanPeer(lease: Lease, ctx: VxlanPlanContext): PlanResult {
  const a = lease.attrs;
  if (a.backendType !== 'vxlan') return { ignored: `backend type "${a.backendType}" is not vxlan` };
  const publicIp = tryParseIpv4(a.publicIp);
  if (publicIp === undefined) return { ignored: `public IP "${a.publicIp}" is not IPv4` };
  const data = a.backendData as Partial<Record<string, unknown>> | null | undefined;
  const macText = typeof data?.['VtepMAC'] === 'string' ? data['VtepMAC'] : undefined;
  const mac = macText !== undefined ? normalizeMac(macText) : undefined;
  if (mac === undefined || !isUsableMac(mac)) return { ignored: `BackendData has no usable VtepMAC` };
  const vni = data?.['VNI'];
  if (typeof vni === 'number' && vni !== ctx.vni)
    return { ignored: `peer uses VNI ${vni}, we use ${ctx.vni}` };
  const direct = ctx.directRouting && onConnectedSubnet(ctx.connected, publicIp);
  const tunnelGso = takesTunnelGso(data);
  return { plan: { key: cidrToKey(lease.subnet), subnet: lease.subnet, publicIp, mac, direct, tunnelGso } };
}

/**
 * Whether two plans need the same kernel state (route, neighbour, FDB entry). tunnelGso is
 * not part of it: only the userspace forwarder's peer depends on it (sameAsPeer there).
 */
export function samePlan(a: VxlanPeerPlan, b: VxlanPeerPlan): boolean {
  return (
    a.subnet.addr === b.subnet.addr &&
    a.subnet.prefix === b.subnet.prefix &&
    a.publicIp === b.publicIp &&
    a.mac === b.mac &&
    a.direct === b.direct
  );
}

export function vxlanAddOps(p: VxlanPeerPlan, ctx: VxlanPlanContext): KernelOp[] {
  if (p.direct) {
    return [{ op: 'route-replace', route: { dst: p.subnet, via: p.publicIp, dev: ctx.underlay } }];
  }
  const gw = p.subnet.addr;
  return [
    { op: 'neigh-replace', neigh: { addr: gw, lladdr: p.mac, dev: ctx.dev } },
    { op: 'fdb-append', fdb: { mac: p.mac, dev: ctx.dev, dst: p.publicIp } },
    { op: 'route-replace', route: { dst: p.subnet, via: gw, dev: ctx.dev, onlink: true } },
  ];
}

export function vxlanRemoveOps(p: VxlanPeerPlan, ctx: VxlanPlanContext): KernelOp[] {
  if (p.direct) {
    return [{ op: 'route-del', route: { dst: p.subnet, via: p.publicIp, dev: ctx.underlay } }];
  }
  const gw = p.subnet.addr;
  return [
    { op: 'route-del', route: { dst: p.subnet, via: gw, dev: ctx.dev, onlink: true } },
    { op: 'fdb-del', fdb: { mac: p.mac, dev: ctx.dev, dst: p.publicIp } },
    { op: 'neigh-del', neigh: { addr: gw, dev: ctx.dev } },
  ];
}

/** Parses "aa:bb:cc:dd:ee:ff" into 6 bytes (for the userspace encap). */
export function macBytes(mac: string): Buffer {
  return Buffer.from(mac.split(':').map((h) => parseInt(h, 16)));
}
