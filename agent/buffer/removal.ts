// The redundancy removal rule (DESIGN.md section 3, MinRed's rule): among candidate features, remove
// n times the entry whose nearest neighbour is most similar, masking it afterwards. Similarities are
// cosines of normalised features (S = (cos + 1) / 2 is monotone in cos, so the choice is the same).
// Two implementations with identical results: a direct O(M^2 d) reference and an incremental
// nearest-neighbour index that costs O(M d) per changed feature.

export function dot(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/** Reference: positions (into `features`) removed, in removal order. Ties go to the lower position. */
export function removeRedundantReference(features: Float32Array[], n: number): number[] {
  const m = features.length;
  const alive = new Array(m).fill(true);
  const removed: number[] = [];
  for (let r = 0; r < n; r++) {
    let best = -Infinity;
    let arg = -1;
    for (let i = 0; i < m; i++) {
      if (!alive[i]) continue;
      let nn = -Infinity;
      for (let j = 0; j < m; j++) if (j !== i && alive[j]) nn = Math.max(nn, dot(features[i], features[j]));
      if (nn > best) {
        best = nn;
        arg = i;
      }
    }
    if (arg < 0) break;
    alive[arg] = false;
    removed.push(arg);
  }
  return removed;
}

/**
 * Nearest-neighbour similarity of every member, kept up to date as features change and members
 * leave. Members are ordered by a caller-given rank (ties in the argmax go to the lower rank).
 */
export class NearestNeighbours {
  private feats = new Map<number, Float32Array>();
  private nnSim = new Map<number, number>();
  private nnId = new Map<number, number>();
  private rank = new Map<number, number>();

  get size(): number {
    return this.feats.size;
  }

  has(id: number): boolean {
    return this.feats.has(id);
  }

  similarity(id: number): number {
    return this.nnSim.get(id) ?? -Infinity;
  }

  private recompute(id: number): void {
    const f = this.feats.get(id)!;
    let best = -Infinity;
    let arg = -1;
    for (const [j, g] of this.feats) {
      if (j === id) continue;
      const s = dot(f, g);
      if (s > best) {
        best = s;
        arg = j;
      }
    }
    this.nnSim.set(id, best);
    this.nnId.set(id, arg);
  }

  /** Inserts or replaces the (normalised) feature of `id`. */
  set(id: number, f: Float32Array, rank: number): void {
    this.rank.set(id, rank);
    this.feats.set(id, f);
    const dirty: number[] = [];
    let best = -Infinity;
    let arg = -1;
    for (const [i, g] of this.feats) {
      if (i === id) continue;
      const s = dot(g, f);
      if (s > best) {
        best = s;
        arg = i;
      }
      if (s > this.nnSim.get(i)! || this.nnId.get(i) === -1) {
        this.nnSim.set(i, s);
        this.nnId.set(i, id);
      } else if (this.nnId.get(i) === id && s < this.nnSim.get(i)!) dirty.push(i); // its neighbour moved away
    }
    this.nnSim.set(id, best);
    this.nnId.set(id, arg);
    for (const i of dirty) this.recompute(i);
  }

  delete(id: number): void {
    if (!this.feats.delete(id)) return;
    this.nnSim.delete(id);
    this.nnId.delete(id);
    this.rank.delete(id);
    for (const [i, j] of this.nnId) if (j === id) this.recompute(i);
  }

  /** The member with the most similar nearest neighbour (lowest rank on ties), or -1. */
  mostRedundant(): number {
    let best = -Infinity;
    let arg = -1;
    let argRank = Infinity;
    for (const [i, s] of this.nnSim) {
      const r = this.rank.get(i)!;
      if (s > best || (s === best && r < argRank)) {
        best = s;
        arg = i;
        argRank = r;
      }
    }
    return arg;
  }

  /** Mean nearest-neighbour similarity (a diversity diagnostic). */
  meanSimilarity(): number {
    if (this.nnSim.size < 2) return NaN;
    let s = 0;
    for (const v of this.nnSim.values()) s += v;
    return s / this.nnSim.size;
  }
}
