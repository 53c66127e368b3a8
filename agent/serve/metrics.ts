// The agent's --metrics file, followed as it grows: whole JSON lines only (the last one may be half
// written), step records kept compact in memory, eval and health records kept whole. The file is
// opened read-only; a file that shrinks or is replaced (a new run) starts the history over.
// Whatever the file holds, the server must keep answering: lines are capped in length and nesting
// depth (JSON.stringify of a 5000-deep record overflows the stack), a poll reads at most READ_CHUNK
// bytes, batches are appended without spreading them into arguments, and the history is thinned to a
// bound (steps, evals and health records alike).

import { closeSync, constants, fstatSync, openSync, readSync, statSync } from 'node:fs';
import { StringDecoder } from 'node:string_decoder';

/** One training step as the dashboard plots it (observe.ts StepTally's record, fewer fields). */
export interface StepPoint {
  /** ms since the epoch */
  t: number;
  step: number;
  loss: number | null;
  terms: Record<string, number | null>;
  lr: number | null;
  ms: number | null;
  cropsPerS: number | null;
  gradNorm: number | null;
  gradCos: number | null;
  applied: boolean;
  buffer: number | null;
  nnSim: number | null;
  frames: number | null;
  rss: number | null;
  heap: number | null;
}

export interface MetricsBatch {
  /** The history starts over (first read, or the file was replaced): drop what came before. */
  reset: boolean;
  steps: StepPoint[];
  evals: Record<string, unknown>[];
  health: Record<string, unknown>[];
}

/** Loss terms kept per step point. */
const MAX_TERMS = 32;

const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

/** A step record to a StepPoint; null for lines that are not step records. */
export function stepPoint(r: Record<string, unknown>): StepPoint | null {
  if (typeof r.step !== 'number' || !('loss' in r) || 'health' in r || 'eval' in r) return null;
  const mem = (r.mem ?? {}) as Record<string, unknown>;
  const terms: Record<string, number | null> = {};
  // The agent's losses have a handful of terms; a line with thousands is not kept thousands of times over.
  if (r.terms && typeof r.terms === 'object') for (const [k, v] of Object.entries(r.terms).slice(0, MAX_TERMS)) terms[k] = num(v);
  const t = Date.parse(String(r.time));
  return {
    t: Number.isFinite(t) ? t : 0, step: r.step, loss: num(r.loss), terms, lr: num(r.lr), ms: num(r.ms), cropsPerS: num(r.cropsPerS), gradNorm: num(r.gradNorm),
    gradCos: num(r.gradCos), applied: r.applied !== false, buffer: num(r.buffer), nnSim: num(r.nnSim), frames: num(r.frames), rss: num(mem.rss), heap: num(mem.heap),
  };
}

/**
 * At most `max` points spread over the whole history, the newest always included: a week-long run has
 * millions of steps, and a chart a few thousand pixels wide shows no more.
 */
export function thin<T>(xs: T[], max: number): T[] {
  if (xs.length <= max) return xs;
  const every = Math.ceil(xs.length / max);
  const out = xs.filter((_, i) => i % every === 0);
  if (out.at(-1) !== xs.at(-1)) out.push(xs.at(-1)!);
  return out;
}

/** Appends `xs` to `to` in place. Not `to.push(...xs)`: that passes each element as an argument, and 150,000 overflow the stack. */
export function append<T>(to: T[], xs: T[]): void {
  for (const x of xs) to.push(x);
}

/** Over `max` elements, every other element of the older half is dropped (the newest half stays whole), until within it. */
export function thinOlderHalf<T>(xs: T[], max: number): T[] {
  while (xs.length > max) {
    const half = xs.length >> 1;
    const out: T[] = [];
    for (let i = 0; i < half; i += 2) out.push(xs[i]);
    for (let i = half; i < xs.length; i++) out.push(xs[i]);
    xs = out;
  }
  return xs;
}

/** Longest line read; longer ones (the agent writes a few hundred bytes) are skipped whole. */
export const MAX_LINE = 1 << 20;
/** Deepest nesting of objects and arrays in a line (the agent's records nest 3 deep); deeper lines are skipped. */
export const MAX_DEPTH = 32;
/** At most this much is read per poll; the rest at the next ones. */
const READ_CHUNK = 8 << 20;

/** The deepest nesting of [ and { in a JSON text, outside strings (a scan: JSON.parse is not asked to go there). */
export function jsonDepth(text: string): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 92) i++; // backslash: skip the escaped character
      else if (c === 34) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 123 || c === 91) max = Math.max(max, ++depth);
    else if (c === 125 || c === 93) depth--;
  }
  return max;
}

/** Reads new whole lines of a growing JSON-lines file. */
export class MetricsTail {
  steps: StepPoint[] = [];
  evals: Record<string, unknown>[] = [];
  health: Record<string, unknown>[] = [];
  /** Lines skipped since the file was (re)opened: too long, too deeply nested, or not JSON. */
  skipped = 0;
  private offset = 0;
  private ino = -1;
  private partial = '';
  /** The current line is over MAX_LINE: drop everything up to its end. */
  private overlong = false;
  // A read can end inside a multi-byte character; the decoder holds its first bytes for the next read.
  private decoder = new StringDecoder('utf8');

  constructor(
    readonly file: string | undefined,
    /** Step points kept in memory; beyond it the older half is thinned to every other point. */
    private cap = 200_000,
    /** Eval and health records kept, likewise. */
    private recordCap = 5_000,
  ) {}

  /** What was appended since the last call (reset when the file was replaced or cut); null when nothing. */
  poll(): MetricsBatch | null {
    if (!this.file) return null;
    let st;
    try {
      st = statSync(this.file);
    } catch {
      return null; // not written yet
    }
    if (!st.isFile()) return null; // a FIFO or a device in its place: nothing to follow (opening it could block)
    let reset = false;
    if (st.ino !== this.ino || st.size < this.offset) {
      reset = this.ino !== -1;
      this.ino = st.ino;
      this.offset = 0;
      this.partial = '';
      this.overlong = false;
      this.skipped = 0;
      this.decoder = new StringDecoder('utf8');
      this.steps = [];
      this.evals = [];
      this.health = [];
    }
    if (st.size === this.offset) return reset ? { reset, steps: [], evals: [], health: [] } : null;
    const text = this.read(st.size);
    if (text === null) return null;
    const batch: MetricsBatch = { reset, steps: [], evals: [], health: [] };
    this.split(text, batch);
    append(this.steps, batch.steps);
    append(this.evals, batch.evals);
    append(this.health, batch.health);
    this.steps = thinOlderHalf(this.steps, this.cap);
    this.evals = thinOlderHalf(this.evals, this.recordCap);
    this.health = thinOlderHalf(this.health, this.recordCap);
    return batch;
  }

  /** Whole lines of `text` (after what the last read left) into the batch; an unfinished one is kept, unless over MAX_LINE. */
  private split(text: string, batch: MetricsBatch): void {
    let start = 0;
    for (let nl = text.indexOf('\n'); nl >= 0; start = nl + 1, nl = text.indexOf('\n', start)) {
      if (this.overlong) {
        this.overlong = false; // the end of the overlong line: the next one starts clean
        continue;
      }
      const piece = text.slice(start, nl);
      if (this.partial.length + piece.length > MAX_LINE) this.skipped++;
      else this.take(this.partial + piece, batch);
      this.partial = '';
    }
    if (this.overlong) return;
    const rest = text.slice(start);
    if (this.partial.length + rest.length > MAX_LINE) {
      this.partial = '';
      this.overlong = true;
      this.skipped++;
    } else this.partial += rest;
  }

  private read(size: number): string | null {
    let fd;
    try {
      // Non-blocking: a FIFO swapped in after the stat must not hang the server.
      fd = openSync(this.file!, constants.O_RDONLY | constants.O_NONBLOCK);
    } catch {
      return null;
    }
    try {
      // The same file as stat'ed (a rename in between shows next time).
      const st = fstatSync(fd);
      if (st.ino !== this.ino || !st.isFile()) return null;
      const want = Math.min(size - this.offset, READ_CHUNK);
      const buf = Buffer.alloc(want);
      const got = readSync(fd, buf, 0, want, this.offset);
      this.offset += got;
      return this.decoder.write(buf.subarray(0, got));
    } finally {
      closeSync(fd);
    }
  }

  private take(line: string, batch: MetricsBatch): void {
    if (!line.trim()) return;
    if (jsonDepth(line) > MAX_DEPTH) return void this.skipped++;
    let r: unknown;
    try {
      r = JSON.parse(line);
    } catch {
      return void this.skipped++; // a line damaged by a crash mid-write: skip it, keep the rest
    }
    if (!r || typeof r !== 'object' || Array.isArray(r)) return;
    const rec = r as Record<string, unknown>;
    if (rec.eval && typeof rec.eval === 'object' && !Array.isArray(rec.eval)) batch.evals.push({ time: rec.time, ...(rec.eval as object) });
    else if (rec.health && typeof rec.health === 'object' && !Array.isArray(rec.health)) batch.health.push({ time: rec.time, step: rec.step, ...(rec.health as object) });
    else {
      const p = stepPoint(rec);
      if (p) batch.steps.push(p);
    }
  }
}
