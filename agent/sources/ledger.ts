// The ingestion ledger: one line per file taken from a watched directory (status, size, mtime, path),
// appended as it happens, so a restarted agent never ingests the same file twice.

import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

export type LedgerStatus = 'ingested' | 'quarantined' | 'dropped';

export class Ledger {
  private seen = new Map<string, LedgerStatus>();

  constructor(readonly file: string) {
    mkdirSync(path.dirname(file), { recursive: true });
    if (existsSync(file)) {
      const text = readFileSync(file, 'utf8');
      // A line cut short by a crash or a full disk: end it, so the next record starts on its own line.
      if (text.length && !text.endsWith('\n')) appendFileSync(file, '\n');
      for (const line of text.split('\n')) {
        const [status, size, mtime, ...rest] = line.split('\t');
        if (rest.length) this.seen.set(Ledger.key(rest.join('\t'), Number(size), Number(mtime)), status as LedgerStatus);
      }
    }
  }

  /** A file is the same file while its path, size and modification time are. */
  static key(rel: string, size: number, mtimeMs: number): string {
    return `${rel}\t${size}\t${Math.floor(mtimeMs)}`;
  }

  has(rel: string, size: number, mtimeMs: number): boolean {
    return this.seen.has(Ledger.key(rel, size, mtimeMs));
  }

  record(status: LedgerStatus, rel: string, size: number, mtimeMs: number): void {
    this.seen.set(Ledger.key(rel, size, mtimeMs), status);
    appendFileSync(this.file, `${status}\t${size}\t${Math.floor(mtimeMs)}\t${rel}\n`);
  }

  /** Drops a settled entry from memory (its file was deleted or moved away); the line stays on disk. */
  forget(rel: string, size: number, mtimeMs: number): void {
    this.seen.delete(Ledger.key(rel, size, mtimeMs));
  }

  get count(): number {
    return this.seen.size;
  }
}
