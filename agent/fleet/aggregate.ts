// One aggregation round (issue #22): screen the devices' deltas, then combine the kept ones. Pure: the
// aggregator's transport and versioning live elsewhere.

import { checkTensors, l2, type Spec } from './codec.ts';

/** trimmed: fraction cut at EACH end, 0 <= f < 0.5. */
export type Robust = 'mean' | 'median' | { trimmed: number };

export interface Candidate {
  device: string;
  seq: number;
  frames: number;
  delta: Map<string, Float32Array>;
}

export interface ScreenOptions {
  /** With >= 3 candidates, a delta whose norm exceeds this x the candidates' median norm is rejected. */
  maxNormRatio: number;
  /** A delta whose norm exceeds this x the global params' norm is rejected. */
  absMaxRatio: number;
}

const SCREEN_DEFAULTS: ScreenOptions = { maxNormRatio: 10, absMaxRatio: 10 };

// Code-unit order, not localeCompare: the same on every machine.
function byDeviceSeq(a: { device: string; seq: number }, b: { device: string; seq: number }): number {
  return a.device < b.device ? -1 : a.device > b.device ? 1 : a.seq - b.seq;
}

const fmt = (x: number) => (Number.isFinite(x) ? Number(x.toPrecision(4)).toString() : String(x));

/**
 * Rejects candidates whose delta is non-finite or has the wrong tensors (checkTensors), whose frames is not
 * a positive integer, whose L2 norm exceeds absMaxRatio x l2(global), or — when >= 3 candidates passed the
 * other checks — exceeds maxNormRatio x their median norm. A device that sent several updates this round
 * is represented by its highest seq alone (checked first, so a bad newest update is not replaced by an
 * older one). kept and rejected come sorted by device then seq.
 */
export function screen(
  cands: Candidate[],
  global: Map<string, Float32Array>,
  spec: Spec,
  o: Partial<ScreenOptions> = {},
): { kept: Candidate[]; rejected: { device: string; seq: number; why: string }[] } {
  const opt = { ...SCREEN_DEFAULTS, ...o };
  for (const k of ['maxNormRatio', 'absMaxRatio'] as const) {
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

  const gNorm = l2(global);
  const norms = valid.map((v) => v.norm).sort((a, b) => a - b);
  const med = norms.length >= 3 ? median(norms) : NaN;
  const kept: Candidate[] = [];
  for (const { c, norm } of valid) {
    if (norm > opt.absMaxRatio * gNorm) reject(c, `delta norm ${fmt(norm)} exceeds ${opt.absMaxRatio} x the global norm ${fmt(gNorm)}`);
    else if (norm > opt.maxNormRatio * med) reject(c, `delta norm ${fmt(norm)} exceeds ${opt.maxNormRatio} x the median norm ${fmt(med)}`);
    else kept.push(c);
  }
  rejected.sort(byDeviceSeq);
  return { kept, rejected };
}

/** The median of sorted values (even count: the mean of the middle two). */
function median(v: ArrayLike<number>): number {
  const n = v.length;
  return n % 2 ? v[(n - 1) / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/**
 * The aggregated delta. 'mean' = sum(frames_i * delta_i) / sum(frames_i) in float64, rounded to float32;
 * 'median' = coordinate-wise median (even count: mean of the middle two); trimmed = coordinate-wise
 * unweighted mean after dropping floor(f*n) lowest and highest values. Sorted by device then seq first,
 * so the result does not depend on the order of cands.
 */
export function aggregate(cands: Candidate[], spec: Spec, robust: Robust): Map<string, Float32Array> {
  checkRobust(robust);
  if (cands.length === 0) throw new Error('aggregate: no candidates');
  const cs = [...cands].sort(byDeviceSeq);
  for (let j = 1; j < cs.length; j++) {
    // Equal keys would leave the float64 sum's order to the caller.
    if (byDeviceSeq(cs[j - 1], cs[j]) === 0) throw new Error(`aggregate: two candidates from ${cs[j].device} seq ${cs[j].seq}`);
  }
  for (const c of cs) {
    const why = checkTensors(spec, c.delta);
    if (why) throw new Error(`aggregate: update from ${c.device} seq ${c.seq}: ${why}`);
    if (robust === 'mean' && (!Number.isSafeInteger(c.frames) || c.frames <= 0)) throw new Error(`aggregate: update from ${c.device} seq ${c.seq}: frames ${c.frames} is not a positive integer`);
  }
  const n = cs.length;
  const out = new Map<string, Float32Array>();
  if (robust === 'mean') {
    const total = cs.reduce((s, c) => s + c.frames, 0);
    for (const s of spec) {
      const acc = new Float64Array(cs[0].delta.get(s.name)!.length);
      for (const c of cs) {
        const d = c.delta.get(s.name)!;
        for (let i = 0; i < acc.length; i++) acc[i] += c.frames * d[i];
      }
      const r = new Float32Array(acc.length);
      for (let i = 0; i < r.length; i++) r[i] = acc[i] / total;
      out.set(s.name, r);
    }
    return out;
  }
  const cut = robust === 'median' ? 0 : Math.floor(robust.trimmed * n);
  const col = new Float64Array(n); // one coordinate across candidates; a typed array sorts numerically
  for (const s of spec) {
    const ds = cs.map((c) => c.delta.get(s.name)!);
    const r = new Float32Array(ds[0].length);
    for (let i = 0; i < r.length; i++) {
      for (let j = 0; j < n; j++) col[j] = ds[j][i];
      col.sort();
      if (robust === 'median') r[i] = median(col);
      else {
        let sum = 0;
        for (let j = cut; j < n - cut; j++) sum += col[j];
        r[i] = sum / (n - 2 * cut);
      }
    }
    out.set(s.name, r);
  }
  return out;
}

function checkRobust(r: Robust): void {
  if (r === 'mean' || r === 'median') return;
  const f = typeof r === 'object' && r !== null ? r.trimmed : NaN;
  if (!(typeof f === 'number' && f >= 0 && f < 0.5)) throw new Error(`aggregate: robust must be mean, median or { trimmed: f } with 0 <= f < 0.5, got ${JSON.stringify(r)}`);
}

/** Parses the CLI form: 'mean' | 'median' | 'trimmed:0.2' -> Robust; throws Error with a one-line message otherwise. */
export function parseRobust(s: string): Robust {
  if (s === 'mean' || s === 'median') return s;
  const m = /^trimmed:(\d+(?:\.\d*)?|\.\d+)$/.exec(s);
  const f = m ? Number(m[1]) : NaN;
  if (!(f >= 0 && f < 0.5)) throw new Error(`robust ${JSON.stringify(s)}: expected mean, median or trimmed:F with 0 <= F < 0.5 (e.g. trimmed:0.2)`);
  return { trimmed: f };
}
