// Reading a file from an untrusted directory: opened without blocking, checked on the open descriptor
// to be a regular file (not a FIFO that would hang the agent, not a device such as /dev/zero) of the
// expected size, inside the watched root (the descriptor's real path, so a directory swapped for a link
// at any level between listing and opening is caught) and not a hard link (which may alias a file
// outside), then read through that same descriptor.

import { closeSync, constants, fstatSync, openSync, readlinkSync, readSync, realpathSync } from 'node:fs';
import path from 'node:path';

export interface Confinement {
  /** Real path of the watched root. */
  root: string;
  /** Accept files with more than one hard link (the user vouches for them). */
  allowHardLinks: boolean;
}

export function isInside(root: string, real: string): boolean {
  return real === root || real.startsWith(root + path.sep);
}

/** The real path of what `fd` refers to (Linux: /proc; elsewhere the path's, a little racier). */
function realPathOf(fd: number, file: string): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return realpathSync(file);
  }
}

/**
 * The real path of an entry to move or delete, refused unless its directory is inside `root`: a
 * rename through a parent swapped for a link would move a file outside the directories we were given.
 */
export function confinedPath(file: string, root: string): string {
  const dir = realpathSync(path.dirname(file));
  const real = path.join(dir, path.basename(file));
  if (!isInside(root, real)) throw new UnreadableFile('EOUTSIDE', `${file} now resolves to ${real}, outside ${root}; left alone`);
  return real;
}

export class UnreadableFile extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export function readRegularFile(file: string, expectedSize?: number, maxBytes = 1 << 30, confine?: Confinement): Buffer {
  const fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new UnreadableFile('ENOTREG', 'not a regular file');
    if (confine) {
      const real = realPathOf(fd, file);
      if (!isInside(confine.root, real)) throw new UnreadableFile('EOUTSIDE', `resolves to ${real}, outside the watched directory`);
      if (st.nlink > 1 && !confine.allowHardLinks) throw new UnreadableFile('EHARDLINK', `a hard link (${st.nlink} names): it may alias a file outside the watched directory (--allow-hard-links accepts it)`);
    }
    if (st.size > maxBytes) throw new UnreadableFile('EFBIG', `${st.size} bytes, over the ${maxBytes}-byte limit`);
    if (expectedSize !== undefined && st.size !== expectedSize) throw new UnreadableFile('ECHANGED', `size changed since it was queued (${expectedSize} -> ${st.size} bytes)`);
    const buf = Buffer.allocUnsafe(st.size);
    let off = 0;
    while (off < st.size) {
      const n = readSync(fd, buf, off, st.size - off, off);
      if (n === 0) break;
      off += n;
    }
    return off === st.size ? buf : buf.subarray(0, off);
  } finally {
    closeSync(fd);
  }
}
