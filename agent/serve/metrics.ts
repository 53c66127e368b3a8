// The agent's --metrics file, followed as it grows: whole JSON lines only (the last one may be half
// written), step records kept compact in memory, eval and health records kept whole. The file is
// opened read-only; a file that shrinks or is replaced (a new run) starts the history over.

import { closeSync, fstatSync, openSync, readSync, statSync } from 'node:fs';
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

const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

/** A step record to a StepPoint; null for lines that are not step records. */
export function stepPoint(r: Record<string, unknown>): StepPoint | null {
  if (typeof r.step !== 'number' || !('loss' in r) || 'health' in r || 'eval' in r) return null;
  const mem = (r.mem ?? {}) as Record<string, unknown>;
  const terms: Record<string, number | null> = {};
  if (r.terms && typeof r.terms === 'object') for (const [k, v] of Object.entries(r.terms)) terms[k] = num(v);
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

/** Reads new whole lines of a growing JSON-lines file. */
export class MetricsTail {
  steps: StepPoint[] = [];
  evals: Record<string, unknown>[] = [];
  health: Record<string, unknown>[] = [];
  private offset = 0;
  private ino = -1;
  private partial = '';
  // A read can end inside a multi-byte character; the decoder holds its first bytes for the next read.
  private decoder = new StringDecoder('utf8');

  constructor(
    readonly file: string | undefined,
    /** Step points kept in memory; beyond it the older half is thinned to every other point. */
    private cap = 200_000,
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
    let reset = false;
    if (st.ino !== this.ino || st.size < this.offset) {
      reset = this.ino !== -1;
      this.ino = st.ino;
      this.offset = 0;
      this.partial = '';
      this.decoder = new StringDecoder('utf8');
      this.steps = [];
      this.evals = [];
      this.health = [];
    }
    if (st.size === this.offset) return reset ? { reset, steps: [], evals: [], health: [] } : null;
    const text = this.read(st.size);
    if (text === null) return null;
    const lines = (this.partial + text).split('\n');
    this.partial = lines.pop() ?? '';
    const batch: MetricsBatch = { reset, steps: [], evals: [], health: [] };
    for (const line of lines) this.take(line, batch);
    this.steps.push(...batch.steps);
    this.evals.push(...batch.evals);
    this.health.push(...batch.health);
    if (this.steps.length > this.cap) {
      const half = this.steps.length >> 1;
      this.steps = [...this.steps.slice(0, half).filter((_, i) => i % 2 === 0), ...this.steps.slice(half)];
    }
    return batch;
  }

  private read(size: number): string | null {
    let fd;
    try {
      fd = openSync(this.file!, 'r');
    } catch {
      return null;
    }
    try {
      // The same file as stat'ed (a rename in between shows next time).
      if (fstatSync(fd).ino !== this.ino) return null;
      const want = Math.min(size - this.offset, 64 << 20);
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
    let r: unknown;
    try {
      r = JSON.parse(line);
    } catch {
      return; // a line damaged by a crash mid-write: skip it, keep the rest
    }
    if (!r || typeof r !== 'object' || Array.isArray(r)) return;
    const rec = r as Record<string, unknown>;
    if (rec.eval && typeof rec.eval === 'object') batch.evals.push({ time: rec.time, ...(rec.eval as object) });
    else if (rec.health && typeof rec.health === 'object') batch.health.push({ time: rec.time, step: rec.step, ...(rec.health as object) });
    else {
      const p = stepPoint(rec);
      if (p) batch.steps.push(p);
    }
  }
}
