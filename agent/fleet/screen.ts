// Screening one aggregation round (issues #22, #30): which devices' deltas may be combined, and with what
// weight. A delta is refused if malformed (tensors, shapes, non-finite values), if its frames are not a
// positive integer, or if its norm is over a bound no single client sets: k x the median accepted norm of
// the fleet's recent rounds (its own history, so the bound does not grow with the global model), and in
// rounds of 3 or more k x the round's median. A device's weight is the frames it reports, capped at c x the
// round's (lower) median report, so a client claiming 1e12 frames counts as c typical ones.

import type { Spec } from './codec.ts';

export interface Candidate {
  device: string;
  seq: number;
  frames: number;
  delta: Map<string, Float32Array>;
  /** Set by screen(): the frames it counts for in a weighted mean (frames capped, see ScreenOptions.weightCap). */
  weight?: number;
}

export interface ScreenOptions {
  /** With >= 3 candidates, a delta whose norm exceeds this x the candidates' median norm is rejected. */
  maxNormRatio: number;
  /** With a history of accepted norms: a delta whose norm exceeds this x the history's median is rejected. */
  historyRatio: number;
  /** Without a history (the fleet's first round): a delta whose norm exceeds this x the global params' norm is rejected. */
  absMaxRatio: number;
  /** A device's weight is at most this x the lower median of the frames the round's valid candidates report. */
  weightCap: number;
  /** The median accepted norm of each recent round (the fleet's own history, from the global header); empty: none yet. */
  history: readonly number[];
}

export const SCREEN_DEFAULTS: ScreenOptions = { maxNormRatio: 10, historyRatio: 10, absMaxRatio: 10, weightCap: 4, history: [] };

/** Rounds of history the norm bound looks back on. */
export const HISTORY_ROUNDS = 10;

// Code-unit order, not localeCompare: the same on every machine.
export function byDeviceSeq(a: { device: string; seq: number }, b: { device: string; seq: number }): number {
  return a.device < b.device ? -1 : a.device > b.device ? 1 : a.seq - b.seq;
}

const fmt = (x: number) => (Number.isFinite(x) ? Number(x.toPrecision(4)).toString() : String(x));

export interface Screened {
  kept: Candidate[];
  rejected: { device: string; seq: number; why: string }[];
  /** The median norm of the kept deltas (NaN when none): this round's entry in the history. */
  keptNorm: number;
}

/**
 * Rejects candidates whose delta is non-finite or has the wrong tensors (checkTensors), whose frames is not
 * a positive integer, whose L2 norm is over the absolute bound (historyRatio x median(history), or with no
 * history absMaxRatio x l2(global)), or — when >= 3 candidates passed the other checks — over maxNormRatio x
 * their median norm. A device that sent several updates this round is represented by its highest seq
 * alone (checked first, so a bad newest update is not replaced by an older one). Kept candidates get their
 * weight. kept and rejected come sorted by device then seq.
 */
export function screen(cands: Candidate[], global: Map<string, Float32Array>, spec: Spec, o: Partial<ScreenOptions> = {}): Screened {
  const opt = { ...SCREEN_DEFAULTS, ...o };
  for (const k of ['maxNormRatio', 'historyRatio', 'absMaxRatio', 'weightCap'] as const) {
    if (!(opt[k] > 0) || !Number.isFinite(opt[k])) throw new Error(`screen: ${k} must be a positive number, got ${opt[k]}`);
  }
  const rejected: { device: string; seq: number; why: string }[] = [];
  const reject = (c: Candidate, why: string) => rejected.push({ device: c.device, seq: c.seq, why });

  // Highest seq per device; of an exact (device, seq) repeat, the first one given.
  const byDevice = new Map<string, Candidate>();
  for (const c of cands) {
    const best = byDevice.get(c.device);
    if (!best || c.seq > best.seq) byDevice.set(c.device, c);
  }
  const latest: Candidate[] = [];
  for (const c of cands) {
    const best = byDevice.get(c.device)!;
    if (c === best && !latest.includes(c)) latest.push(c); // the same object twice is a duplicate too
    else reject(c, c.seq === best.seq ? `duplicate of seq ${best.seq} from the same device this round` : `superseded by seq ${best.seq} from the same device this round`);
  }
  latest.sort(byDeviceSeq);

  const valid: { c: Candidate; norm: number }[] = [];
  for (const c of latest) {
    if (!Number.isSafeInteger(c.frames) || c.frames <= 0) {
      reject(c, `frames ${c.frames} is not a positive integer`);
      continue;
    }
    const why = checkTensors(spec, c.delta);
    if (why) {
      reject(c, why);
      continue;
    }
    valid.push({ c, norm: l2(c.delta) });
  }

  // The absolute bound: from the fleet's history of accepted norms; in its first round, from the global model.
  const hist = opt.history.filter((x) => Number.isFinite(x) && x > 0);
  const ref = hist.length ? median(sorted(hist)) : l2(global);
  const limit = (hist.length ? opt.historyRatio : opt.absMaxRatio) * ref;
  const over = (n: number) =>
    hist.length
      ? `delta norm ${fmt(n)} exceeds ${opt.historyRatio} x the median accepted norm of the last ${hist.length} round(s) ${fmt(ref)}`
      : `delta norm ${fmt(n)} exceeds ${opt.absMaxRatio} x the global norm ${fmt(ref)} (the first round's bound: no history yet)`;
  const med = valid.length >= 3 ? median(sorted(valid.map((v) => v.norm))) : NaN;
  const kept: { c: Candidate; norm: number }[] = [];
  for (const v of valid) {
    if (!(v.norm <= limit)) reject(v.c, over(v.norm));
    else if (v.norm > opt.maxNormRatio * med) reject(v.c, `delta norm ${fmt(v.norm)} exceeds ${opt.maxNormRatio} x the median norm ${fmt(med)}`);
    else kept.push(v);
  }
  // The cap comes from the reports of all valid candidates (a liar's report is one of them, and the lower median of two is the smaller).
  const reports = sorted(valid.map((v) => v.c.frames));
  const cap = reports.length ? Math.max(1, Math.floor(opt.weightCap * reports[(reports.length - 1) >> 1])) : 0;
  rejected.sort(byDeviceSeq);
  return {
    kept: kept.map(({ c }) => ({ ...c, weight: Math.min(c.frames, cap) })),
    rejected,
    keptNorm: kept.length ? median(sorted(kept.map((v) => v.norm))) : NaN,
  };
}

/** The history after a round: its kept norm appended, the last HISTORY_ROUNDS kept. */
export function nextHistory(history: readonly number[], keptNorm: number): number[] {
  const h = history.filter((x) => Number.isFinite(x) && x > 0);
  if (Number.isFinite(keptNorm) && keptNorm > 0) h.push(Number(keptNorm.toPrecision(6)));
  return h.slice(-HISTORY_ROUNDS);
}

function sorted(v: number[]): Float64Array {
  return Float64Array.from(v).sort();
}

/** The median of sorted values (even count: the mean of the middle two). */
export function median(v: ArrayLike<number>): number {
  const n = v.length;
  return n % 2 ? v[(n - 1) / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

function count(shape: number[]): number {
  return shape.reduce((x, y) => x * y, 1);
}

/** A name from the wire as it can appear in a one-line message. */
function show(s: string): string {
  const t = s.length > 80 ? s.slice(0, 80) + '…' : s;
  return /^[\w.\-/:[\]]+$/.test(t) ? t : JSON.stringify(t);
}

/** Checks names/shapes against the spec exactly (no missing, no extra, value counts equal) and every value finite; returns '' or the one-line reason. */
export function checkTensors(spec: Spec, t: Map<string, Float32Array>): string {
  const names = new Set(spec.map((s) => s.name));
  for (const s of spec) {
    const v = t.get(s.name);
    if (!v) return `tensor ${show(s.name)} is missing`;
    if (!(v instanceof Float32Array)) return `tensor ${show(s.name)} is not float32`;
    const want = count(s.shape);
    if (v.length !== want) return `tensor ${show(s.name)} has ${v.length} values, expected ${want}`;
  }
  for (const name of t.keys()) if (!names.has(name)) return `unexpected tensor ${show(name)}`;
  for (const s of spec) {
    const v = t.get(s.name)!;
    for (let i = 0; i < v.length; i++) if (!Number.isFinite(v[i])) return `tensor ${show(s.name)} has a non-finite value (${v[i]}) at ${i}`;
  }
  return '';
}

/** L2 norm over all tensors, accumulated in float64. */
export function l2(t: Map<string, Float32Array>): number {
  let s = 0;
  for (const v of t.values()) for (let i = 0; i < v.length; i++) s += v[i] * v[i];
  return Math.sqrt(s);
}
