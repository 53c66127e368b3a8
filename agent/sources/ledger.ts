// The ingestion ledger: one line per file taken from a watched directory (status, size, mtime, path),
// appended as it happens, so a restarted agent never ingests the same file twice.
//
// File names come from an untrusted directory and may hold any character, so a name is written as-is
// only when it cannot break the line format; otherwise the status field carries the suffix ':e' and the
// name is escaped (\\ \t \n \r, and \uXXXX for a lone surrogate, which UTF-8 could not carry and would
// turn into U+FFFD). An escaped name has no raw tab or newline, so no name can plant a line of its own.
// Plain lines are byte for byte the old format (which had no version header), so ledgers written before
// keep reading as they did and tools that take field 4 of a line still see plain names.

import { appendFileSync, existsSync, mkdirSync } from 'node:fs';
import { readFileInside } from '../../core/safe-read.ts';
import path from 'node:path';

/** 'returned': an earlier line's frame was given back (the checkpoint that learnt it did not verify). */
export type LedgerStatus = 'ingested' | 'quarantined' | 'dropped' | 'returned';

const ESCAPED = ':e';
// Characters a plain line cannot carry: the field and line separators, CR, the escape character itself
// (so a name with a backslash always takes the escaped form, and old plain lines with one stay literal)
// and lone surrogates.
const NEEDS_ESCAPE = /[\t\n\r\\]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const ESCAPE_ALL = new RegExp(NEEDS_ESCAPE.source, 'g');

function escapeName(s: string): string {
  return s.replace(ESCAPE_ALL, (c) =>
    c === '\t' ? '\\t' : c === '\n' ? '\\n' : c === '\r' ? '\\r' : c === '\\' ? '\\\\' : `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

/** The name of an escaped line, or null where the line is not a whole escaped name (cut short by a crash). */
function unescapeName(s: string): string | null {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c !== '\\') {
      out += c;
      continue;
    }
    const n = s[++i];
    if (n === 't') out += '\t';
    else if (n === 'n') out += '\n';
    else if (n === 'r') out += '\r';
    else if (n === '\\') out += '\\';
    else if (n === 'u' && /^[0-9a-f]{4}$/.test(s.slice(i + 1, i + 5))) {
      out += String.fromCharCode(parseInt(s.slice(i + 1, i + 5), 16));
      i += 4;
    } else return null;
  }
  return out;
}

export class Ledger {
  private seen = new Map<string, LedgerStatus>();

  constructor(readonly file: string) {
    mkdirSync(path.dirname(file), { recursive: true });
    if (existsSync(file)) {
      // Only the regular file the agent appends to: a FIFO or a link put in its place is refused (an
      // open of a FIFO would block the agent for good), not followed.
      const text = readFileInside(file, { maxBytes: 2 ** 31 })?.toString('utf8') ?? '';
      // A line cut short by a crash or a full disk: end it, so the next record starts on its own line.
      if (text.length && !text.endsWith('\n')) appendFileSync(file, '\n');
      for (const line of text.split('\n')) {
        const [status, size, mtime, ...rest] = line.split('\t');
        if (!rest.length) continue;
        let rel: string | null;
        let st = status;
        if (status.endsWith(ESCAPED)) {
          st = status.slice(0, -ESCAPED.length);
          // Escaped names hold no raw tab: more fields than four is not a line this code wrote.
          rel = rest.length === 1 ? unescapeName(rest[0]) : null;
        } else rel = rest.join('\t'); // the old (and plain) form: everything after the third tab
        if (rel !== null) this.seen.set(Ledger.key(rel, Number(size), Number(mtime)), st as LedgerStatus);
      }
    }
  }

  /**
   * A file is the same file while its path, size and modification time are. The two numbers come first
   * and hold no tab, so the path, whatever it holds, is everything after the second tab: no two triples
   * share a key.
   */
  static key(rel: string, size: number, mtimeMs: number): string {
    return `${size}\t${Math.floor(mtimeMs)}\t${rel}`;
  }

  has(rel: string, size: number, mtimeMs: number): boolean {
    const st = this.seen.get(Ledger.key(rel, size, mtimeMs));
    return st !== undefined && st !== 'returned';
  }

  record(status: LedgerStatus, rel: string, size: number, mtimeMs: number): void {
    this.seen.set(Ledger.key(rel, size, mtimeMs), status);
    const name = NEEDS_ESCAPE.test(rel) ? { status: status + ESCAPED, rel: escapeName(rel) } : { status, rel };
    appendFileSync(this.file, `${name.status}\t${size}\t${Math.floor(mtimeMs)}\t${name.rel}\n`);
  }

  /** Drops a settled entry from memory (its file was deleted or moved away); the line stays on disk. */
  forget(rel: string, size: number, mtimeMs: number): void {
    this.seen.delete(Ledger.key(rel, size, mtimeMs));
  }

  /** The files recorded with `status` (and not forgotten), in name order: a later pass reads them again. */
  entries(status: LedgerStatus): { rel: string; size: number; mtimeMs: number }[] {
    const out: { rel: string; size: number; mtimeMs: number }[] = [];
    for (const [k, st] of this.seen) {
      if (st !== status) continue;
      const a = k.indexOf('\t');
      const b = k.indexOf('\t', a + 1);
      out.push({ size: Number(k.slice(0, a)), mtimeMs: Number(k.slice(a + 1, b)), rel: k.slice(b + 1) });
    }
    return out.sort((x, y) => (x.rel < y.rel ? -1 : x.rel > y.rel ? 1 : 0));
  }

  get count(): number {
    return this.seen.size;
  }
}
