/**
 * Errors with a stable identity. Every error weft raises on purpose is a WeftError
 * with a `code` (stable, machine-readable) and a message that says what to do.
 * Nothing in the data path throws: drops are counted instead (see DropReason).
 */
export class WeftError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Network config, flags or environment are invalid. `key` names the offending setting. */
export class ConfigError extends WeftError {
  readonly key: string;
  constructor(key: string, message: string, options?: { cause?: unknown }) {
    super('WEFT_CONFIG', `${key}: ${message}`, options);
    this.key = key;
  }
}

/** A lease could not be acquired, renewed or read. */
export class LeaseError extends WeftError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WEFT_LEASE', message, options);
  }
}

/** Opening or configuring a device (TUN, VXLAN, socket) failed. */
export class DeviceError extends WeftError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WEFT_DEVICE', message, options);
  }
}

/** A command talking to the kernel (ip, nft, ...) failed. */
export class KernelError extends WeftError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WEFT_KERNEL', message, options);
  }
}
