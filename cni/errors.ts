/**
 * CNI errors. The spec's error object is `{cniVersion, code, msg, details}` on stdout with a
 * non-zero exit; the codes below are the spec's well-known ones (0-99 reserved) plus weft's own
 * (100+). A delegate's error keeps the delegate's code so a runtime sees the real cause.
 */
import { WeftError } from '../src/util/errors.ts';

export const CniCode = {
  IncompatibleVersion: 1,
  UnsupportedField: 2,
  UnknownContainer: 3,
  InvalidEnv: 4,
  Io: 5,
  Decode: 6,
  InvalidConfig: 7,
  TryAgainLater: 11,
  /** STATUS: cannot service ADD. */
  NotAvailable: 50,
  /** STATUS: not available, existing pods may have limited connectivity. */
  NotAvailableLimited: 51,
  /** weft: an attachment for this container and interface already exists. */
  AlreadyAttached: 100,
  /** weft: a delegate plugin failed without a CNI error object. */
  DelegateFailed: 101,
  /** weft: the node's subnet changed since the pod was attached (CHECK). */
  SubnetChanged: 102,
} as const;
export type CniCode = (typeof CniCode)[keyof typeof CniCode];

export class CniError extends WeftError {
  readonly cniCode: number;
  readonly details: string;
  constructor(cniCode: number, msg: string, details = '', options?: { cause?: unknown }) {
    super(`WEFT_CNI_${cniCode}`, msg, options);
    this.cniCode = cniCode;
    this.details = details;
  }
}

export interface CniErrorJson {
  cniVersion: string;
  code: number;
  msg: string;
  details?: string;
}

/** The spec's error object for `err` (any thrown value), reported under `cniVersion`. */
export function errorJson(err: unknown, cniVersion: string): CniErrorJson {
  if (err instanceof CniError) {
    const out: CniErrorJson = { cniVersion, code: err.cniCode, msg: err.message };
    if (err.details) out.details = err.details;
    return out;
  }
  const msg = err instanceof Error ? err.message : String(err);
  return { cniVersion, code: CniCode.Io, msg: `weft-cni internal error: ${msg}` };
}
