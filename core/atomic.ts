// Durable files: a write that leaves either the old file or the new one whole, whatever kills the
// process (temp file, fsync, rename, fsync of the directory), the clean-up of the temp files a killed
// writer leaves, and the sha256 the callers name files' contents by.

import { createHash } from 'node:crypto';
import { closeSync, existsSync, fchmodSync, fsyncSync, mkdirSync, openSync, readdirSync, renameSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';
import { fault } from './faults.ts';

/** Writes bytes to `file` atomically: temp file, fsync, rename, fsync of the directory. `mode`: the file's permissions (e.g. 0o600 for a private key), set before any byte is written. */
export function writeFileAtomic(file: string, bytes: Uint8Array | string, mode?: number): void {
  const data = typeof bytes === 'string' ? Buffer.from(bytes) : bytes;
  const dir = path.dirname(file);
  mkdirSync(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(file)}.tmp-${process.pid}`);
  const fd = openSync(tmp, 'w', mode);
  try {
    if (mode !== undefined) fchmodSync(fd, mode); // a temp file left by a killed writer keeps its old mode otherwise
    let off = 0;
    while (off < data.length) off += writeSync(fd, data, off, data.length - off);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  const k = fault('kill-before-rename');
  if (k !== undefined && path.basename(file).includes(k)) process.kill(process.pid, 'SIGKILL');
  renameSync(tmp, file);
  const dfd = openSync(dir, 'r');
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
}

/**
 * Removes temp files that a killed writer left in `dir` (writeFileAtomic's). Called at start, before
 * this process writes anything there; one writer per directory, so any pid's are stale (in a
 * container the restarted process often has the same pid as the killed one).
 */
export function removeStaleTemps(dir: string): number {
  if (!existsSync(dir)) return 0;
  let n = 0;
  for (const f of readdirSync(dir)) {
    if (/^\..+\.tmp-\d+$/.test(f)) {
      rmSync(path.join(dir, f), { force: true });
      n++;
    }
  }
  return n;
}

export function sha256(b: Uint8Array | string): string {
  return createHash('sha256').update(b).digest('hex');
}
