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
