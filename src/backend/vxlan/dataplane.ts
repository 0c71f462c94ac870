/**
 * The two ways the vxlan backend moves frames: the Linux VXLAN device (kernel) or weft's
 * own forwarder over a TUN device (userspace). Both speak the same wire format and take the
 * same per-peer plans, so the backend above them does not care which one runs.
 */
import type { DataplaneInfo } from '../backend.ts';
import type { Lease } from '../../lease/types.ts';
import type { VxlanPeerPlan } from './plan.ts';

export interface VxlanDataplane {
  readonly kind: 'kernel' | 'userspace';
  /** Device name ("weft.<VNI>"). */
  readonly device: string;
  start(lease: Lease, signal: AbortSignal): Promise<void>;
  /** Sets or clears one peer; takes effect at the next commit(). */
  setPeer(key: string, plan: VxlanPeerPlan | undefined): void;
  /** Applies the peer changes made since the last commit (asynchronously, in order). */
  commit(): void;
  /** Resolves when every committed change has reached the data path. */
  settled(): Promise<void>;
  /** Asks for a device/peer check now (kernel plane; also done periodically). */
  check?(): void;
  stats(): Record<string, number | Record<string, number>>;
  /** Forwarder counters and offloads (userspace plane only). */
  dataplaneInfo?(): DataplaneInfo;
  stop(): Promise<void>;
}
