/**
 * The VTEP MAC: this node's identity on the VXLAN segment, published in the lease so peers
 * can address frames to it. It must survive restarts (peers' neighbour and FDB entries, and
 * the lease in the store, carry it), so it is generated once and kept in the state dir.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync, openSync, fsyncSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { normalizeMac } from '../../kernel/kernel.ts';
import { DeviceError } from '../../util/errors.ts';

export const VTEP_MAC_FILE = 'vtep-mac';

/** A random locally administered unicast MAC (first octet: bit 1 set, bit 0 clear). */
export function randomVtepMac(): string {
  const b = randomBytes(6);
  b[0] = ((b[0] as number) & 0xfc) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/** True for a 48-bit unicast MAC that is not all zeros. */
export function isUsableMac(mac: string): boolean {
  const m = normalizeMac(mac);
  if (m === undefined || m === '00:00:00:00:00:00') return false;
  return (parseInt(m.slice(0, 2), 16) & 1) === 0;
}

/**
 * Returns the MAC kept in `<stateDir>/vtep-mac`, creating it (atomically) on first use.
 * A file holding something that is not a unicast MAC is replaced.
 */
export function loadOrCreateVtepMac(stateDir: string): string {
  const path = join(stateDir, VTEP_MAC_FILE);
  try {
    const text = readFileSync(path, 'utf8').trim();
    const mac = normalizeMac(text);
    if (mac !== undefined && isUsableMac(mac)) return mac;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new DeviceError(
        `cannot read ${path} (${(err as Error).message}); check the state dir's permissions`,
        {
          cause: err,
        },
      );
    }
  }
  const mac = randomVtepMac();
  try {
    mkdirSync(stateDir, { recursive: true });
    const tmp = `${path}.tmp${process.pid}`;
    writeFileSync(tmp, `${mac}\n`, { mode: 0o644 });
    const fd = openSync(tmp, 'r');
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, path);
  } catch (err) {
    throw new DeviceError(
      `cannot write ${path} (${(err as Error).message}); check the state dir's permissions`,
      {
        cause: err,
      },
    );
  }
  return mac;
}
