// Combining one aggregation round's screened deltas (issues #22, #30): a mean weighted by (capped)
// frames, a coordinate-wise median or trimmed mean, or (Multi-)Krum as Flower and FedML ship it. Pure:
// screening is screen.ts, the transport and versioning the aggregator's.

import type { Spec } from './codec.ts';
import { byDeviceSeq, checkTensors, median, type Candidate } from './screen.ts';

export type { Candidate } from './screen.ts';

/**
 * trimmed: fraction cut at EACH end, 0 <= f < 0.5. krum: f, the Byzantine clients tolerated; keep, how
 * many of the best-scored deltas are averaged (1: Krum, the single best; more: Multi-Krum).
 */
export type Robust = 'mean' | 'median' | { trimmed: number } | { krum: number; keep: number };

/**
 * The aggregated delta. 'mean' = sum(w_i * delta_i) / sum(w_i) in float64, rounded to float32, w_i the
 * candidate's weight (screen() sets it: frames capped) or else its frames; 'median' = coordinate-wise
 * median (even count: mean of the middle two); trimmed = coordinate-wise unweighted mean after dropping
 * floor(f*n) lowest and highest values; krum = the weighted mean of the `keep` deltas with the lowest Krum
 * scores (krumSelect). Sorted by device then seq first, so the result does not depend on the order of cands.
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
    const w = weightOf(c);
    if ((robust === 'mean' || typeof robust === 'object' && 'krum' in robust) && (!Number.isSafeInteger(w) || w <= 0)) throw new Error(`aggregate: update from ${c.device} seq ${c.seq}: ${c.weight === undefined ? 'frames' : 'weight'} ${w} is not a positive integer`);
  }
  if (robust === 'mean') return weightedMean(cs, spec);
  if (typeof robust === 'object' && 'krum' in robust) return weightedMean(krumSelect(cs, robust.krum, robust.keep, spec), spec);
  const n = cs.length;
  const out = new Map<string, Float32Array>();
  const cut = robust === 'median' ? 0 : Math.floor((robust as { trimmed: number }).trimmed * n);
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

const weightOf = (c: Candidate) => c.weight ?? c.frames;

/** sum(w_i * delta_i) / sum(w_i), in float64 (the weights are safe integers; their sum is at most n x 2^53, exact enough and never thrown on). */
function weightedMean(cs: Candidate[], spec: Spec): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  const total = cs.reduce((s, c) => s + weightOf(c), 0);
  for (const s of spec) {
    const acc = new Float64Array(cs[0].delta.get(s.name)!.length);
    for (const c of cs) {
      const d = c.delta.get(s.name)!;
      const w = weightOf(c);
      for (let i = 0; i < acc.length; i++) acc[i] += w * d[i];
    }
    const r = new Float32Array(acc.length);
    for (let i = 0; i < r.length; i++) r[i] = acc[i] / total;
    out.set(s.name, r);
  }
  return out;
}

/**
 * Krum (Blanchard et al. 2017) as Flower's aggregate_krum computes it: each delta's score is the sum of
 * its squared L2 distances to its max(1, n - f - 2) nearest others; the `keep` lowest scores are chosen
 * (ties: the first in device order). Returns them in device order.
 */
export function krumSelect(cs: Candidate[], f: number, keep: number, spec?: Spec): Candidate[] {
  const n = cs.length;
  // In the spec's order: a message may list its tensors in any order.
  const names = spec ? spec.map((s) => s.name) : [...(cs[0]?.delta.keys() ?? [])];
  const flat = cs.map((c) => names.map((name) => c.delta.get(name)!));
  const d = Array.from({ length: n }, () => new Float64Array(n));
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      let s = 0;
      for (let t = 0; t < flat[i].length; t++) {
        const a = flat[i][t];
        const b = flat[j][t];
        for (let k = 0; k < a.length; k++) s += (a[k] - b[k]) ** 2;
      }
      d[i][j] = d[j][i] = s;
    }
  }
  const closest = Math.max(1, n - f - 2);
  const score = d.map((row, i) => {
    const others = Float64Array.from(row.filter((_, j) => j !== i)).sort();
    let s = 0;
    for (let k = 0; k < Math.min(closest, others.length); k++) s += others[k];
    return s;
  });
  const order = score.map((s, i) => i).sort((a, b) => score[a] - score[b] || a - b);
  return order.slice(0, Math.min(keep, n)).sort((a, b) => a - b).map((i) => cs[i]);
}

function checkRobust(r: Robust): void {
  if (r === 'mean' || r === 'median') return;
  if (typeof r === 'object' && r !== null && 'krum' in r) {
    if (Number.isSafeInteger(r.krum) && r.krum >= 0 && Number.isSafeInteger(r.keep) && r.keep >= 1) return;
    throw new Error(`aggregate: krum needs f >= 0 and keep >= 1 integers, got ${JSON.stringify(r)}`);
  }
  const f = typeof r === 'object' && r !== null ? (r as { trimmed: number }).trimmed : NaN;
  if (!(typeof f === 'number' && f >= 0 && f < 0.5)) throw new Error(`aggregate: robust must be mean, median or { trimmed: f } with 0 <= f < 0.5, got ${JSON.stringify(r)}`);
}

/** Parses the CLI form: 'mean' | 'median' | 'trimmed:0.2' | 'krum:F' | 'multi-krum:F,M' -> Robust; throws Error with a one-line message otherwise. */
export function parseRobust(s: string): Robust {
  if (s === 'mean' || s === 'median') return s;
  const k = /^(krum|multi-krum):(\d{1,4})(?:,(\d{1,4}))?$/.exec(s);
  if (s.startsWith('krum') || s.startsWith('multi-krum')) {
    if (!k || (k[1] === 'krum') === (k[3] !== undefined) || (k[3] !== undefined && Number(k[3]) < 1)) throw new Error(`robust ${JSON.stringify(s)}: expected krum:F (F Byzantine devices tolerated, e.g. krum:1) or multi-krum:F,M (the M best averaged, M >= 1, e.g. multi-krum:1,3)`);
    return { krum: Number(k[2]), keep: k[3] === undefined ? 1 : Number(k[3]) };
  }
  const m = /^trimmed:(\d+(?:\.\d*)?|\.\d+)$/.exec(s);
  const f = m ? Number(m[1]) : NaN;
  if (!(f >= 0 && f < 0.5)) throw new Error(`robust ${JSON.stringify(s)}: expected mean, median, trimmed:F with 0 <= F < 0.5 (e.g. trimmed:0.2), krum:F or multi-krum:F,M`);
  return { trimmed: f };
}
