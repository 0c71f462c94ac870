/**
 * WireGuard keys: Curve25519 (X25519) key pairs in WireGuard's base64 form, generated with
 * Node's crypto (no `wg genkey` needed) and kept in a key file (mode 0600) so a node keeps
 * its identity, and so its peers' configuration, across restarts.
 */
import { generateKeyPairSync, createPrivateKey, createPublicKey } from 'node:crypto';
import {
  mkdirSync,
  readFileSync,
  renameSync,
  writeFileSync,
  openSync,
  fsyncSync,
  closeSync,
  chmodSync,
  statSync,
} from 'node:fs';
import { dirname } from 'node:path';
import { ConfigError } from '../../util/errors.ts';

export interface WgKeyPair {
  /** base64 of the 32-byte private key (WireGuard's format). */
  readonly privateKey: string;
  readonly publicKey: string;
}

const KEY_RE = /^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$/;

export function isWgKey(text: string): boolean {
  return KEY_RE.test(text);
}

function b64urlToB64(s: string): string {
  return Buffer.from(s, 'base64url').toString('base64');
}

export function generateKeyPair(): WgKeyPair {
  const { privateKey } = generateKeyPairSync('x25519');
  const jwk = privateKey.export({ format: 'jwk' });
  return { privateKey: b64urlToB64(jwk.d as string), publicKey: b64urlToB64(jwk.x as string) };
}

/** The public key for a base64 private key. */
export function publicKeyOf(privateKey: string): string {
  const raw = Buffer.from(privateKey, 'base64');
  const key = createPrivateKey({
    key: { kty: 'OKP', crv: 'X25519', d: raw.toString('base64url'), x: '' },
    format: 'jwk',
  });
  const jwk = createPublicKey(key).export({ format: 'jwk' });
  return b64urlToB64(jwk.x as string);
}

/**
 * Reads the private key from `path`, or generates one and writes it there atomically with
 * mode 0600. A file with anything but one WireGuard key in it is an error naming the file.
 */
export function loadOrCreateKey(path: string): WgKeyPair & { created: boolean } {
  let text: string | undefined;
  try {
    text = readFileSync(path, 'utf8').trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (text !== undefined) {
    if (!isWgKey(text)) {
      throw new ConfigError(
        'Backend.KeyFile',
        `${path} does not hold a WireGuard private key (44 base64 characters); remove it to generate a new key`,
      );
    }
    if ((statSync(path).mode & 0o077) !== 0) chmodSync(path, 0o600);
    return { privateKey: text, publicKey: publicKeyOf(text), created: false };
  }
  const pair = generateKeyPair();
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, `${pair.privateKey}\n`, { mode: 0o600 });
  const fd = openSync(tmp, 'r');
  fsyncSync(fd);
  closeSync(fd);
  renameSync(tmp, path);
  return { ...pair, created: true };
}
