// How redundant a buffer is (issue #15): for each entry with a representative feature, its nearest
// neighbour among the others by cosine (features are normalised). Reported: the share of entries whose
// nearest neighbour comes from the same source (a frame of the same clip: keys 'source.frame'), and
// the mean nearest-neighbour cosine.

import { dot } from '../buffer/removal.ts';
import { sourceOf } from '../buffer/buffer.ts';

// The clip-key convention is the buffer's (oracle-clip groups by it).
export { sourceOf };

export interface Redundancy {
  /** Share of entries whose nearest neighbour has the same source; NaN with fewer than two entries. */
  sameSource: number;
  /** Mean cosine to the nearest neighbour; NaN with fewer than two entries. */
  nnSim: number;
}

export function redundancy(entries: readonly { key: string; feature: Float32Array | null }[]): Redundancy {
  const es = entries.filter((e) => e.feature);
  if (es.length < 2) return { sameSource: NaN, nnSim: NaN };
  let same = 0;
  let sim = 0;
  for (const a of es) {
    let best = -Infinity;
    let nb = a;
    for (const b of es) {
      if (b === a) continue;
      const d = dot(a.feature!, b.feature!);
      // Ties go to the earlier entry, so the figure does not depend on float noise in the order.
      if (d > best) {
        best = d;
        nb = b;
      }
    }
    sim += best;
    if (sourceOf(nb.key) === sourceOf(a.key)) same++;
  }
  return { sameSource: same / es.length, nnSim: sim / es.length };
}

/** Entries per class (issue #31: does the buffer keep the classes seen so far?); `labelOf` < 0 or >= classes: not counted. */
export function classHistogram(entries: readonly { key: string }[], labelOf: (key: string) => number, classes: number): number[] {
  const hist = new Array(classes).fill(0);
  for (const e of entries) {
    const c = labelOf(e.key);
    if (c >= 0 && c < classes) hist[c]++;
  }
  return hist;
}

/**
 * Mean nearest-neighbour cosine by entry age (issue #31): the entries sorted oldest first (stream
 * position) and cut into `groups` cohorts of (near) equal size; for each cohort, the mean over its
 * entries of the cosine to the nearest other entry of the whole buffer. `rows` are the features to
 * compare, one per entry in the entries' order, [entries, d] (normalised here, so the stored z* and an
 * un-normalised embedding read alike). NaN for an empty cohort or fewer than two entries.
 */
export function nnCosineByAge(entries: readonly { streamIndex: number }[], rows: Float32Array, groups = 4): number[] {
  const m = entries.length;
  if (m < 2) return new Array(groups).fill(NaN);
  const d = rows.length / m;
  const f = new Float32Array(rows.length);
  for (let i = 0; i < m; i++) {
    let s = 0;
    for (let k = 0; k < d; k++) s += rows[i * d + k] * rows[i * d + k];
    const inv = 1 / Math.sqrt(s + 1e-12);
    for (let k = 0; k < d; k++) f[i * d + k] = rows[i * d + k] * inv;
  }
  const nn = new Float64Array(m).fill(-Infinity);
  for (let i = 0; i < m; i++) {
    for (let j = i + 1; j < m; j++) {
      let s = 0;
      for (let k = 0; k < d; k++) s += f[i * d + k] * f[j * d + k];
      if (s > nn[i]) nn[i] = s;
      if (s > nn[j]) nn[j] = s;
    }
  }
  const order = [...entries.keys()].sort((a, b) => entries[a].streamIndex - entries[b].streamIndex);
  const sum = new Array(groups).fill(0);
  const cnt = new Array(groups).fill(0);
  order.forEach((i, r) => {
    const g = Math.min(groups - 1, Math.floor((r * groups) / m));
    sum[g] += nn[i];
    cnt[g]++;
  });
  return sum.map((s, g) => (cnt[g] ? s / cnt[g] : NaN));
}

/** The stored z* of the entries as rows (zeros for an entry never seen: its cosine is then 0). */
export function storedRows(entries: readonly { feature: Float32Array | null }[], d: number): Float32Array {
  const out = new Float32Array(entries.length * d);
  entries.forEach((e, i) => e.feature && out.set(e.feature, i * d));
  return out;
}
