// The quarantine folder as the dashboard shows it: how many frames were set aside, grouped by the kind
// of reason, and the newest few with their reasons (sources/files.ts writes `<frame>.reason` beside each,
// in subfolders too when the watched directory had them). Read-only; reason texts are cached by mtime.

import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { readInside, UnsafeFile } from '../../core/safe-read.ts';

export interface QuarantineView {
  count: number;
  /** Reasons grouped by kind ('truncated', 'unreadable image', ...), most frequent first. */
  kinds: { kind: string; count: number }[];
  /** The newest `recent` entries, newest first. */
  recent: { file: string; reason: string; time: string }[];
  /** More files than the scan limit: count and kinds cover the first ones found. */
  partial: boolean;
}

/** A reason's kind: its first line up to the first ':' (the detail after it names sizes and offsets), digits as N. */
export function reasonKind(reason: string): string {
  const first = reason.split('\n')[0].trim();
  const colon = first.indexOf(':');
  return (colon > 0 && colon <= 60 ? first.slice(0, colon) : first.slice(0, 80)).replace(/\d+/g, 'N') || '(empty reason)';
}

export class QuarantineReader {
  private cache = new Map<string, { mtimeMs: number; text: string }>();

  constructor(
    readonly dir: string,
    private limit = 20_000,
    private recent = 50,
    /** Says why a reason file was not read (a link, a FIFO, ...), once per file. */
    private warn?: (msg: string) => void,
  ) {}

  read(): QuarantineView {
    const found: { rel: string; mtimeMs: number }[] = [];
    let partial = false;
    const walk = (rel: string, depth: number) => {
      let names;
      try {
        names = readdirSync(path.join(this.dir, rel), { withFileTypes: true });
      } catch {
        return; // not there (yet), or removed while reading
      }
      for (const e of names) {
        if (found.length >= this.limit) return void (partial = true);
        const r = rel ? `${rel}/${e.name}` : e.name;
        if (e.isDirectory() && depth < 16) walk(r, depth + 1);
        else if (e.isFile() && e.name.endsWith('.reason')) {
          try {
            found.push({ rel: r, mtimeMs: statSync(path.join(this.dir, r)).mtimeMs });
          } catch {
            // removed while listing
          }
        }
      }
    };
    walk('', 0);
    const kinds = new Map<string, number>();
    const seen = new Set<string>();
    const withText = found.map((f) => {
      seen.add(f.rel);
      const text = this.text(f.rel, f.mtimeMs);
      const kind = reasonKind(text);
      kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
      return { ...f, text };
    });
    for (const k of this.cache.keys()) if (!seen.has(k)) this.cache.delete(k);
    withText.sort((a, b) => b.mtimeMs - a.mtimeMs || a.rel.localeCompare(b.rel));
    return {
      count: found.length,
      kinds: [...kinds].map(([kind, count]) => ({ kind, count })).sort((a, b) => b.count - a.count || a.kind.localeCompare(b.kind)),
      recent: withText.slice(0, this.recent).map((f) => ({ file: f.rel.replace(/\.reason$/, ''), reason: f.text, time: new Date(f.mtimeMs).toISOString() })),
      partial,
    };
  }

  private text(rel: string, mtimeMs: number): string {
    const c = this.cache.get(rel);
    if (c && c.mtimeMs === mtimeMs) return c.text;
    // A reason is a line or two: a larger file is not read, nor a link (hard or symbolic) to another file.
    let text = '';
    try {
      text = (readInside(this.dir, rel, { maxBytes: 64 << 10 })?.toString('utf8') ?? '').slice(0, 2000).trim();
    } catch (e) {
      // Listed as set aside, its text not shown.
      text = e instanceof UnsafeFile ? `(reason not shown: ${e.reason})` : '';
      if (e instanceof UnsafeFile && !c) this.warn?.(e.message);
    }
    this.cache.set(rel, { mtimeMs, text });
    return text;
  }
}
