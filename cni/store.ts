/**
 * What DEL, CHECK and GC need after ADD: the rendered delegate conf, saved per attachment in
 * dataDir as `<containerID>-<ifname>` (mode 0600, written atomically: temp file, fsync,
 * rename), like flannel's plugin. The file also names the attachment and its netns so GC can
 * tell stale entries apart without parsing file names.
 */
import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  renameSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { CniCode, CniError } from './errors.ts';

type Json = Record<string, unknown>;

export interface SavedAttachment {
  containerID: string;
  ifname: string;
  netns?: string;
  /** The delegate conf rendered at ADD. */
  delegate: Json;
}

const TMP_MARK = '.tmp-';

export function entryPath(dataDir: string, containerID: string, ifname: string): string {
  return join(dataDir, `${containerID}-${ifname}`);
}

function ioError(what: string, err: unknown): CniError {
  return new CniError(CniCode.Io, `${what}: ${(err as Error).message}`);
}

export function saveAttachment(dataDir: string, a: SavedAttachment): void {
  const final = entryPath(dataDir, a.containerID, a.ifname);
  const tmp = join(dataDir, `${TMP_MARK}${process.pid}-${a.containerID}-${a.ifname}`);
  try {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, JSON.stringify(a));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, final);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      /* not created */
    }
    throw ioError(`cannot save attachment state in ${dataDir} (check that the directory is writable)`, err);
  }
}

function parseEntry(text: string): SavedAttachment | undefined {
  try {
    const v = JSON.parse(text) as Partial<SavedAttachment>;
    if (typeof v.containerID !== 'string' || typeof v.ifname !== 'string') return undefined;
    if (v.delegate === null || typeof v.delegate !== 'object') return undefined;
    return v as SavedAttachment;
  } catch {
    return undefined;
  }
}

/** The saved attachment, or undefined when there is none. A corrupt file raises a decode error. */
export function loadAttachment(
  dataDir: string,
  containerID: string,
  ifname: string,
): SavedAttachment | undefined {
  const p = entryPath(dataDir, containerID, ifname);
  let text: string;
  try {
    text = readFileSync(p, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw ioError(`cannot read ${p}`, err);
  }
  const a = parseEntry(text);
  if (!a) throw new CniError(CniCode.Decode, `saved attachment ${p} is corrupt; delete it and retry`);
  return a;
}

export function attachmentExists(dataDir: string, containerID: string, ifname: string): boolean {
  try {
    readFileSync(entryPath(dataDir, containerID, ifname));
    return true;
  } catch {
    return false;
  }
}

/** Removes the saved attachment; a missing file is fine (DEL is idempotent). */
export function removeAttachment(dataDir: string, containerID: string, ifname: string): void {
  try {
    unlinkSync(entryPath(dataDir, containerID, ifname));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
      throw ioError('cannot remove saved attachment', err);
  }
}

export interface ListedEntry {
  file: string;
  /** undefined when the file is not a readable attachment (GC removes it). */
  attachment: SavedAttachment | undefined;
}

/** Every entry in dataDir (including leftovers of interrupted writes, as corrupt entries). */
export function listAttachments(dataDir: string): ListedEntry[] {
  let names: string[];
  try {
    names = readdirSync(dataDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw ioError(`cannot list ${dataDir}`, err);
  }
  const out: ListedEntry[] = [];
  for (const name of names.sort()) {
    const file = join(dataDir, name);
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    out.push({ file, attachment: name.startsWith(TMP_MARK) ? undefined : parseEntry(text) });
  }
  return out;
}
