// Reading a file the agent (or the dashboard) finds in a folder the user named: models/, state/, the
// quarantine, the artifacts. Whoever can write there may leave a symlink to /etc/passwd, a hard link to
// another file, a FIFO (which would block a plain open for ever) or a device in place of latest.json or
// a checkpoint. So a file is opened with O_NOFOLLOW | O_NONBLOCK (never blocks, never follows a final
// link), then checked on the open descriptor: a regular file, one link, its real path the folder's real
// path joined with the name (no symlinked component in between), within a size limit; only then read,
// through that same descriptor. Anything else is refused with a reason the caller reports and skips.

import { closeSync, constants, fstatSync, openSync, readlinkSync, readSync, realpathSync } from 'node:fs';
import path from 'node:path';

/** Why a file was not read: a reason for a log line ('a symbolic link', 'a FIFO', ...). */
export class UnsafeFile extends Error {
  constructor(
    readonly file: string,
    readonly reason: string,
  ) {
    super(`${file}: not read: ${reason}`);
  }
}

export interface SafeReadOptions {
  /** Larger files are refused (default 1 GiB). */
  maxBytes?: number;
}

function kind(st: import('node:fs').Stats): string {
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device';
  if (st.isSocket()) return 'a socket';
  if (st.isDirectory()) return 'a directory';
  return 'not a regular file';
}

/** `size` bytes from the start of `fd` (fewer if it was cut short meanwhile). */
function readAll(fd: number, size: number): Buffer {
  const buf = Buffer.allocUnsafe(size);
  let off = 0;
  while (off < size) {
    const n = readSync(fd, buf, off, size - off, off);
    if (n === 0) break;
    off += n;
  }
  return off === size ? buf : buf.subarray(0, off);
}

/** The real path of what `fd` refers to (Linux: /proc; elsewhere the path's own, a little racier). */
function realPathOf(fd: number, file: string): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return realpathSync(file);
  }
}

/**
 * The bytes of `name` (a plain relative path, e.g. 'latest.json' or 'sub/x.reason') inside `dir`, or
 * null when there is no such file. Throws UnsafeFile when something is there but is not a regular,
 * singly linked file inside `dir` within the size limit; other errors (EACCES, EIO) are thrown as they are.
 */
export function readInside(dir: string, name: string, o: SafeReadOptions = {}): Buffer | null {
  const maxBytes = o.maxBytes ?? 1 << 30;
  const file = path.join(dir, name);
  if (path.isAbsolute(name) || name.split(/[\\/]/).includes('..')) throw new UnsafeFile(file, `the name ${JSON.stringify(name)} leaves ${dir}`);
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    if (code === 'ELOOP') throw new UnsafeFile(file, 'a symbolic link (only regular files inside the folder are read)');
    throw e;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new UnsafeFile(file, `${kind(st)} (only regular files are read)`);
    if (st.nlink !== 1) throw new UnsafeFile(file, `a hard link (${st.nlink} names): it may alias a file outside ${dir}`);
    let root: string;
    try {
      root = realpathSync(dir);
    } catch {
      throw new UnsafeFile(file, `its folder ${dir} changed while it was opened`);
    }
    // A file renamed over since it was opened still reads whole; /proc names it '<path> (deleted)'.
    const real = realPathOf(fd, file).replace(/ \(deleted\)$/, '');
    if (real !== path.join(root, name)) throw new UnsafeFile(file, `resolves to ${real}, not inside ${dir} by that name (a symbolic link on the way)`);
    if (st.size > maxBytes) throw new UnsafeFile(file, `${st.size} bytes, over the ${maxBytes}-byte limit`);
    return readAll(fd, st.size);
  } finally {
    closeSync(fd);
  }
}

/** What readInside reports through `warn` is said once per file and reason (pollers ask again and again). */
const said = new Set<string>();

/**
 * readInside for callers that skip what they cannot read: null for a missing file, and for an unsafe
 * one (reported through `warn` once per file and reason), or for one that cannot be read at all.
 */
export function tryReadInside(dir: string, name: string, warn?: (msg: string) => void, o: SafeReadOptions = {}): Buffer | null {
  try {
    return readInside(dir, name, o);
  } catch (e) {
    const msg = e instanceof UnsafeFile ? e.message : `${path.join(dir, name)}: not read: ${(e as Error).message}`;
    if (warn && !said.has(msg)) {
      if (said.size > 10_000) said.clear();
      said.add(msg);
      warn(msg);
    }
    return null;
  }
}

/** A file's bytes by its full path: readInside(dirname, basename). */
export const readFileInside = (file: string, o: SafeReadOptions = {}) => readInside(path.dirname(file), path.basename(file), o);

/**
 * A file the user named directly (e.g. `--model`): links are followed (the user chose the path), but
 * it is opened without blocking and read only when it is a regular file within `maxBytes`: a FIFO or a
 * device named there is refused with UnsafeFile instead of hanging or reading for ever. Missing: the
 * open's own error (ENOENT) is thrown.
 */
export function readRegular(file: string, o: SafeReadOptions = {}): Buffer {
  const maxBytes = o.maxBytes ?? 1 << 30;
  const fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new UnsafeFile(file, `${kind(st)} (only regular files are read)`);
    if (st.size > maxBytes) throw new UnsafeFile(file, `${st.size} bytes, over the ${maxBytes}-byte limit`);
    return readAll(fd, st.size);
  } finally {
    closeSync(fd);
  }
}
