/**
 * Node objects <-> leases, in flannel's kube layout (pkg/subnet/kube): the subnet is the
 * Node's spec.podCIDR (or the IPv4 entry of spec.podCIDRs) and the rest of the lease lives
 * in annotations under a prefix (default flannel.alpha.coreos.com/):
 *
 *   backend-type         "vxlan"
 *   backend-data         the backend data as a JSON *string*, e.g. "{\"VNI\":1,...}" ("null" when none)
 *   public-ip            the address peers send to
 *   kube-subnet-manager  "true": the node is managed this way; other nodes do not count
 *   public-ip-overwrite  (set by users) advertise this address instead of the detected one
 *   node-public-ip       (set by users) the node's public address, for choosing the interface
 *
 * Why pure functions apart from the store: parsing what other nodes wrote must never throw
 * (a malformed peer is skipped and logged, never fatal), and the exact wire form of what we
 * write is checked by tests without a server.
 */
import type { Lease, LeaseAttrs } from '../types.ts';
import type { Ipv4Cidr } from '../../routing/ipv4.ts';
import { cidrEquals, formatIpv4, prefixMask, tryParseIpv4 } from '../../routing/ipv4.ts';

/** The fields of a v1 Node this store reads (both client-node's V1Node and raw watch JSON fit). */
export interface NodeLike {
  readonly metadata?: {
    readonly name?: string;
    readonly resourceVersion?: string;
    readonly annotations?: Readonly<Record<string, string>>;
  };
  readonly spec?: { readonly podCIDR?: string; readonly podCIDRs?: readonly string[] };
  readonly status?: { readonly conditions?: readonly NodeConditionLike[] };
}

export interface NodeConditionLike {
  readonly type: string;
  readonly status: string;
  readonly lastTransitionTime?: Date | string;
}

export const ANNOTATION = {
  backendType: 'backend-type',
  backendData: 'backend-data',
  publicIp: 'public-ip',
  kubeSubnetManager: 'kube-subnet-manager',
  publicIpOverwrite: 'public-ip-overwrite',
  nodePublicIp: 'node-public-ip',
} as const;

export type AnnotationKeys = { readonly [K in keyof typeof ANNOTATION]: string };

/** Full annotation keys under `prefix` (which ends in "/"). */
export function annotationKeys(prefix: string): AnnotationKeys {
  return {
    backendType: prefix + ANNOTATION.backendType,
    backendData: prefix + ANNOTATION.backendData,
    publicIp: prefix + ANNOTATION.publicIp,
    kubeSubnetManager: prefix + ANNOTATION.kubeSubnetManager,
    publicIpOverwrite: prefix + ANNOTATION.publicIpOverwrite,
    nodePublicIp: prefix + ANNOTATION.nodePublicIp,
  };
}

export const CONDITION_TYPE = 'NetworkUnavailable';
export const CONDITION_REASON = 'WeftIsUp';
export const CONDITION_MESSAGE = 'weft is running on this node';

/** Parses "a.b.c.d/len" without throwing; host bits must be zero. */
function tryParseCidr(text: string): Ipv4Cidr | undefined {
  const slash = text.indexOf('/');
  if (slash < 0) return undefined;
  const addr = tryParseIpv4(text.slice(0, slash));
  const lenText = text.slice(slash + 1);
  if (addr === undefined || !/^\d{1,2}$/.test(lenText)) return undefined;
  const prefix = Number(lenText);
  if (prefix > 32 || (addr & prefixMask(prefix)) >>> 0 !== addr) return undefined;
  return { addr, prefix };
}

export type PodCidr =
  | { readonly kind: 'ok'; readonly cidr: Ipv4Cidr; readonly text: string }
  | { readonly kind: 'none' }
  | { readonly kind: 'malformed'; readonly text: string };

/** The node's IPv4 pod CIDR: the IPv4 entry of spec.podCIDRs, else spec.podCIDR. */
export function podCidrOf(node: NodeLike): PodCidr {
  const list = node.spec?.podCIDRs ?? [];
  const candidates = list.length > 0 ? list : node.spec?.podCIDR ? [node.spec.podCIDR] : [];
  for (const text of candidates) {
    if (text.includes(':')) continue; // IPv6 entry of a dual-stack node
    const cidr = tryParseCidr(text);
    return cidr ? { kind: 'ok', cidr, text } : { kind: 'malformed', text };
  }
  return { kind: 'none' };
}

export type NodeLease =
  | { readonly kind: 'lease'; readonly lease: Lease }
  /** No kube-subnet-manager=true: not a weft/flannel node; silently ignored. */
  | { readonly kind: 'unmanaged' }
  /** Managed, but unusable; `reason` says why (logged by the caller). */
  | { readonly kind: 'invalid'; readonly reason: string; readonly subnet?: Ipv4Cidr };

/** What `node` publishes as a lease. Never throws. */
export function nodeToLease(node: NodeLike, keys: AnnotationKeys): NodeLease {
  const ann = node.metadata?.annotations ?? {};
  if (ann[keys.kubeSubnetManager] !== 'true') return { kind: 'unmanaged' };
  const pc = podCidrOf(node);
  if (pc.kind === 'none') return { kind: 'invalid', reason: 'it has no IPv4 spec.podCIDR' };
  if (pc.kind === 'malformed')
    return { kind: 'invalid', reason: `its podCIDR "${pc.text}" is not an IPv4 CIDR` };
  const subnet = pc.cidr;
  const backendType = ann[keys.backendType];
  if (!backendType) return { kind: 'invalid', reason: `annotation ${keys.backendType} is missing`, subnet };
  const ipText = ann[keys.publicIp] ?? '';
  if (tryParseIpv4(ipText) === undefined) {
    return {
      kind: 'invalid',
      reason: `annotation ${keys.publicIp}="${ipText}" is not an IPv4 address`,
      subnet,
    };
  }
  const dataText = ann[keys.backendData];
  let backendData: unknown = null;
  if (dataText !== undefined && dataText !== '') {
    try {
      backendData = JSON.parse(dataText);
    } catch {
      return { kind: 'invalid', reason: `annotation ${keys.backendData} is not valid JSON`, subnet };
    }
  }
  return {
    kind: 'lease',
    lease: {
      subnet,
      attrs: { publicIp: ipText, publicIpv6: null, backendType, backendData },
      expiresAt: Infinity,
    },
  };
}

/** The backend data exactly as written into the annotation. */
export function encodeBackendData(data: unknown): string {
  return JSON.stringify(data ?? null);
}

/** The annotations we publish for `attrs`. */
export function leaseAnnotations(keys: AnnotationKeys, attrs: LeaseAttrs): Record<string, string> {
  return {
    [keys.backendType]: attrs.backendType,
    [keys.backendData]: encodeBackendData(attrs.backendData),
    [keys.publicIp]: attrs.publicIp,
    [keys.kubeSubnetManager]: 'true',
  };
}

/** True when the node already carries exactly our annotations. */
export function hasOurAnnotations(node: NodeLike, keys: AnnotationKeys, attrs: LeaseAttrs): boolean {
  const ann = node.metadata?.annotations ?? {};
  const want = leaseAnnotations(keys, attrs);
  return Object.entries(want).every(([k, v]) => ann[k] === v);
}

function isoSeconds(d: Date): string {
  return d.toISOString().replace(/\.\d+Z$/, 'Z');
}

/**
 * The strategic-merge patch for nodes/<name>/status that publishes our lease and sets
 * NetworkUnavailable=False (conditions merge by `type`, so others' conditions are kept;
 * lastTransitionTime moves only when the status actually changes).
 */
export function acquirePatch(node: NodeLike, keys: AnnotationKeys, attrs: LeaseAttrs, now: Date): object {
  const existing = node.status?.conditions?.find((c) => c.type === CONDITION_TYPE);
  const since =
    existing && existing.status === 'False' && existing.lastTransitionTime !== undefined
      ? isoSeconds(new Date(existing.lastTransitionTime))
      : isoSeconds(now);
  return {
    metadata: { annotations: leaseAnnotations(keys, attrs) },
    status: {
      conditions: [
        {
          type: CONDITION_TYPE,
          status: 'False',
          reason: CONDITION_REASON,
          message: CONDITION_MESSAGE,
          lastHeartbeatTime: isoSeconds(now),
          lastTransitionTime: since,
        },
      ],
    },
  };
}

/** The patch that withdraws our lease (annotations removed; peers then drop us). */
export function releasePatch(keys: AnnotationKeys): object {
  return {
    metadata: {
      annotations: {
        [keys.backendType]: null,
        [keys.backendData]: null,
        [keys.publicIp]: null,
        [keys.kubeSubnetManager]: null,
      },
    },
  };
}

/** The address to advertise: a valid public-ip-overwrite annotation wins over `detected`. */
export function advertisedIp(
  node: NodeLike,
  keys: AnnotationKeys,
  detected: string,
): { ip: string; overwrite?: string; invalidOverwrite?: string } {
  const ow = node.metadata?.annotations?.[keys.publicIpOverwrite];
  if (ow === undefined || ow === '') return { ip: detected };
  const v = tryParseIpv4(ow);
  if (v === undefined) return { ip: detected, invalidOverwrite: ow };
  return { ip: formatIpv4(v), overwrite: ow };
}

export function sameSubnet(a: Ipv4Cidr | undefined, b: Ipv4Cidr | undefined): boolean {
  return a !== undefined && b !== undefined && cidrEquals(a, b);
}
