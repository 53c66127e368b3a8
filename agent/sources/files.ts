// Moving frames the agent is done with: into the quarantine (with a reason), into --processed, or
// deleted, only ever from inside the watched directory or the agent's own held/ folder.

import { copyFileSync, existsSync, mkdirSync, realpathSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { FileFrame } from './dir.ts';
import { confinedPath } from './read.ts';

/** rename, or copy and unlink where the target is on another filesystem (EXDEV). */
export function moveFile(from: string | Buffer, to: string): void {
  try {
    renameSync(from, to);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
    copyFileSync(from, to);
    unlinkSync(from);
  }
}

/** `dir/rel`, or `dir/rel.1.ext`, `.2`... if taken; its parent created. */
export function uniqueTarget(dir: string, rel: string): string {
  let target = path.join(dir, rel);
  for (let k = 1; existsSync(target); k++) {
    const ext = path.extname(rel);
    target = path.join(dir, `${rel.slice(0, rel.length - ext.length)}.${k}${ext}`);
  }
  mkdirSync(path.dirname(target), { recursive: true });
  return target;
}

/** The quarantine folder: a bad frame is moved there with a `.reason` file beside it, never deleted. */
export class Quarantine {
  constructor(
    private dir: string,
    private log: (line: string) => void,
  ) {}

  /** Moves what `from()` names (which checks it is inside the watched root) to `rel`. */
  move(from: () => string | Buffer, rel: string, shown: string, reason: string, note = reason): void {
    try {
      const src = from();
      const target = uniqueTarget(this.dir, rel);
      moveFile(src, target);
      writeFileSync(`${target}.reason`, `${note}\n`);
      this.log(`quarantined ${shown}: ${reason}`);
    } catch (e) {
      this.log(`could not quarantine ${shown} (${(e as Error).message}); reason was: ${reason}`);
    }
  }

  /**
   * A name that is not valid UTF-8 cannot be reached through a string path (nor kept in the ledger as
   * it is): moved aside by its raw bytes under a %-escaped name, with a reason.
   */
  moveRawName(root: string, dir: string, raw: Buffer): void {
    const shown = [...raw].map((b) => (b < 0x20 || b >= 0x7f || b === 0x25 ? `%${b.toString(16).padStart(2, '0')}` : String.fromCharCode(b))).join('');
    const from = () => {
      confinedPath(path.join(dir, 'x'), root);
      return Buffer.concat([Buffer.from(dir + path.sep), raw]);
    };
    const note = 'file name is not valid UTF-8 (shown with its bytes %-escaped); rename it and put it back to have it learnt';
    this.move(from, path.join(path.relative(root, dir), shown), shown, 'file name is not valid UTF-8', note);
  }
}

/** --after-ingest: what happens to a frame once checkpoints hold what was learnt from it. */
export class AfterIngest {
  constructor(
    private mode: 'keep' | 'move' | 'delete',
    private processed: string,
    private heldDir: string,
    private root: () => string,
    private log: (line: string) => void,
  ) {}

  /** true when the file is gone from the watched directory (so the ledger need not remember it in memory). */
  apply(f: FileFrame): boolean {
    try {
      if (this.mode === 'keep') return false;
      // Only ever inside the watched directory or our own held/ (a parent swapped for a link is refused).
      const held = path.resolve(f.path).startsWith(path.resolve(this.heldDir) + path.sep);
      const from = confinedPath(f.path, held ? realpathSync(this.heldDir) : this.root());
      if (this.mode === 'delete') rmSync(from, { force: true });
      else moveFile(from, uniqueTarget(this.processed, f.key));
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return true; // already gone
      this.log(`after-ingest ${this.mode} failed for ${f.key}: ${(e as Error).message}`);
      return false;
    }
  }
}
