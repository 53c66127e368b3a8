// The redundancy removal rule (DESIGN.md section 3, MinRed's rule): among candidate features, remove
// n times the entry whose nearest neighbour is most similar, masking it afterwards. Similarities are
// cosines of normalised features (S = (cos + 1) / 2 is monotone in cos, so the choice is the same).
import { jsSimilarity, type SimilarityEngine } from './similarity.ts';

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

/** Largest member count squared for which removeRedundant may hold the whole similarity matrix (64 MB). */
const FULL_MAX = 1 << 24;

/**
 * Nearest-neighbour similarity of every member, kept up to date as features change and members
 * leave. Dense storage (a feature matrix of slots) so the inner loops are plain typed-array dot
 * products. Members are ordered by a caller-given rank (ties in the argmax go to the lower rank).
 */
export class NearestNeighbours {
  private d = 0;
  private cap = 0;
  /**
   * Slots ever handed out (free slots go lowest first): rows and scans stop here, not at `cap`, which
   * doubles when full and would otherwise double every row's work just past a power of two.
   */
  private top = 0;
  /** Similarity entries computed so far (rows x width, or m x m for a full matrix): the cost measure of bench/agent.ts and the buffer tests. */
  dots = 0;
  private feats = new Float32Array(0);
  private nnSim = new Float64Array(0);
  private nnSlot = new Int32Array(0);
  private ranks = new Float64Array(0);
  private alive = new Uint8Array(0);
  private slotOf = new Map<number, number>();
  private idOf: number[] = [];
  private free: number[] = [];

  /** With an engine, large similarity blocks go to ORT; without, plain loops (small buffers, tests). */
  constructor(private engine: SimilarityEngine | null = null) {}

  get size(): number {
    return this.slotOf.size;
  }

  has(id: number): boolean {
    return this.slotOf.has(id);
  }

  similarity(id: number): number {
    const s = this.slotOf.get(id);
    return s === undefined ? -Infinity : this.nnSim[s];
  }

  private grow(d: number): void {
    if (this.d === 0) this.d = d;
    if (d !== this.d) throw new Error(`feature of length ${d}, expected ${this.d}`);
    const cap = Math.max(16, this.cap * 2);
    const f = new Float32Array(cap * d);
    f.set(this.feats);
    const ns = new Float64Array(cap).fill(-Infinity);
    ns.set(this.nnSim);
    const nl = new Int32Array(cap).fill(-1);
    nl.set(this.nnSlot);
    const rk = new Float64Array(cap);
    rk.set(this.ranks);
    const al = new Uint8Array(cap);
    al.set(this.alive);
    for (let i = cap - 1; i >= this.cap; i--) this.free.push(i);
    this.feats = f;
    this.nnSim = ns;
    this.nnSlot = nl;
    this.ranks = rk;
    this.alive = al;
    this.cap = cap;
  }

  /** Similarity rows of the given slots against every slot up to `top` ([slots.length, top]). */
  private simRows(slots: number[]): Promise<Float32Array> {
    const { d, feats: f, top } = this;
    const a = new Float32Array(slots.length * d);
    slots.forEach((sl, r) => a.set(f.subarray(sl * d, (sl + 1) * d), r * d));
    this.dots += slots.length * top;
    const engine = this.engine && slots.length * top * d >= 1 << 18 ? this.engine : jsSimilarity;
    return engine.rows(a, slots.length, f, top, d);
  }

  /**
   * Full similarity rows of `slots`, in blocks so a rebuild of a large buffer stays within memory:
   * each slot gets its nearest neighbour, and `visit` sees every (slot, other, similarity) on the way.
   */
  private async scanRows(slots: number[], visit?: (slot: number, j: number, v: number) => void): Promise<void> {
    const { alive, top, nnSim, nnSlot } = this;
    const block = Math.max(1, Math.floor((1 << 24) / Math.max(top, 1)));
    for (let s0 = 0; s0 < slots.length; s0 += block) {
      const part = slots.slice(s0, s0 + block);
      const rows = await this.simRows(part);
      part.forEach((slot, r) => {
        let best = -Infinity;
        let arg = -1;
        for (let j = 0; j < top; j++) {
          if (!alive[j] || j === slot) continue;
          const v = rows[r * top + j];
          if (v > best) {
            best = v;
            arg = j;
          }
          visit?.(slot, j, v);
        }
        nnSim[slot] = best;
        nnSlot[slot] = arg;
      });
    }
  }

  /** Inserts or replaces the (normalised) features of several members at once. */
  async setMany(items: { id: number; feature: Float32Array; rank: number }[]): Promise<void> {
    await this.refresh(this.load(items));
  }

  /** Writes features into slots without touching any nearest neighbour; returns the changed slots. */
  private load(items: { id: number; feature: Float32Array; rank: number }[]): number[] {
    const changed: number[] = [];
    for (const it of items) {
      let slot = this.slotOf.get(it.id);
      if (slot === undefined) {
        if (!this.free.length) this.grow(it.feature.length);
        slot = this.free.pop()!;
        this.top = Math.max(this.top, slot + 1);
        this.slotOf.set(it.id, slot);
        this.idOf[slot] = it.id;
        this.alive[slot] = 1;
      }
      if (it.feature.length !== this.d) throw new Error(`feature of length ${it.feature.length}, expected ${this.d}`);
      this.feats.set(it.feature, slot * this.d);
      this.ranks[slot] = it.rank;
      changed.push(slot);
    }
    return changed;
  }

  /** Updates every nearest neighbour after `changed` slots got new features. */
  private async refresh(slots: number[]): Promise<void> {
    // Each changed member once (an id given twice is one row), and with the members whose neighbour it
    // was, never more rows than members: an update costs at most a rebuild.
    const changed = [...new Set(slots)];
    if (!changed.length) return;
    const isChanged = new Uint8Array(this.top);
    for (const c of changed) isChanged[c] = 1;
    const { alive, top, nnSim, nnSlot } = this;
    const dirty: number[] = [];
    const isDirty = new Uint8Array(top);
    for (let i = 0; i < top; i++) {
      if (alive[i] && !isChanged[i] && nnSlot[i] >= 0 && isChanged[nnSlot[i]]) {
        dirty.push(i);
        isDirty[i] = 1;
      }
    }
    // The changed members get full rows; the same rows update everyone else's comparison with them.
    await this.scanRows(changed, (c, j, v) => {
      if (!isChanged[j] && !isDirty[j] && v > nnSim[j]) {
        nnSim[j] = v;
        nnSlot[j] = c;
      }
    });
    // Members whose neighbour moved need a full recompute.
    await this.scanRows(dirty);
  }

  set(id: number, f: Float32Array, rank: number): Promise<void> {
    return this.setMany([{ id, feature: f, rank }]);
  }

  async delete(id: number): Promise<void> {
    const slot = this.slotOf.get(id);
    if (slot === undefined) return;
    this.slotOf.delete(id);
    this.alive[slot] = 0;
    this.nnSim[slot] = -Infinity;
    this.nnSlot[slot] = -1;
    this.free.push(slot);
    const dirty: number[] = [];
    for (let i = 0; i < this.top; i++) if (this.alive[i] && this.nnSlot[i] === slot) dirty.push(i);
    await this.scanRows(dirty);
  }

  /** The member with the most similar nearest neighbour (lowest rank on ties), or -1. */
  mostRedundant(): number {
    let best = -Infinity;
    let arg = -1;
    for (let i = 0; i < this.top; i++) {
      if (!this.alive[i]) continue;
      const s = this.nnSim[i];
      if (s > best || (s === best && arg >= 0 && this.ranks[i] < this.ranks[arg])) {
        best = s;
        arg = i;
      }
    }
    return arg < 0 ? -1 : this.idOf[arg];
  }

  /**
   * Sets `items`, then removes n times the most redundant member (mostRedundant, then delete) and
   * returns the removed ids in order. When the changed rows plus the removals' recomputed rows would
   * cost about as much as the whole matrix, the matrix over all members is computed once instead and
   * the removals run on it (DESIGN.md section 3 as written): the same picks, ties and final index.
   */
  async removeRedundant(n: number, items: { id: number; feature: Float32Array; rank: number }[] = [], way: 'auto' | 'full' | 'incremental' = 'auto'): Promise<number[]> {
    const changed = this.load(items);
    const m = this.size;
    // Incremental: rows for the changed slots, then about two rows per removal (the removed entry's
    // mutual neighbour and whoever else pointed at it). Full: m rows once, in memory as [m, m] float32.
    const full = way === 'full' || (way === 'auto' && n > 0 && m * m <= FULL_MAX && m <= changed.length + 2 * n);
    if (full) return this.removeFull(n);
    await this.refresh(changed);
    const out: number[] = [];
    for (let r = 0; r < n; r++) {
      const id = this.mostRedundant();
      if (id < 0) break;
      out.push(id);
      await this.delete(id);
    }
    return out;
  }

  private async removeFull(n: number): Promise<number[]> {
    const { d, top, alive, ranks, feats, nnSim, nnSlot } = this;
    // Members in slot order, so scans and ties go exactly as in the slot loops above.
    const slots: number[] = [];
    for (let i = 0; i < top; i++) if (alive[i]) slots.push(i);
    const m = slots.length;
    const F = new Float32Array(m * d);
    slots.forEach((sl, p) => F.set(feats.subarray(sl * d, (sl + 1) * d), p * d));
    let S: Float32Array;
    this.dots += m * m;
    if (this.engine && m * m * d >= 1 << 18) S = await this.engine.rows(F, m, F, m, d);
    else {
      // jsSimilarity's sums (float64 in k order, stored as float32) over one triangle: a.b and b.a
      // are the same products in the same order, so the mirror is exact.
      S = new Float32Array(m * m);
      for (let p = 0; p < m; p++) {
        for (let q = p + 1; q < m; q++) {
          let s = 0;
          for (let k = 0, x = p * d, y = q * d; k < d; k++) s += F[x + k] * F[y + k];
          S[p * m + q] = s;
          S[q * m + p] = S[p * m + q];
        }
      }
    }
    const live = new Uint8Array(m).fill(1);
    const best = new Float64Array(m);
    const arg = new Int32Array(m);
    const scan = (p: number) => {
      let b = -Infinity;
      let a = -1;
      for (let q = 0, o = p * m; q < m; q++) {
        if (!live[q] || q === p) continue;
        const v = S[o + q];
        if (v > b) {
          b = v;
          a = q;
        }
      }
      best[p] = b;
      arg[p] = a;
    };
    for (let p = 0; p < m; p++) scan(p);
    const out: number[] = [];
    for (let r = 0; r < n; r++) {
      // mostRedundant over the compact rows.
      let b = -Infinity;
      let pick = -1;
      for (let p = 0; p < m; p++) {
        if (!live[p]) continue;
        const s = best[p];
        if (s > b || (s === b && pick >= 0 && ranks[slots[p]] < ranks[slots[pick]])) {
          b = s;
          pick = p;
        }
      }
      if (pick < 0) break;
      live[pick] = 0;
      const slot = slots[pick];
      out.push(this.idOf[slot]);
      // As delete(): the slot is freed in removal order, so later inserts land where they would have.
      this.slotOf.delete(this.idOf[slot]);
      alive[slot] = 0;
      nnSim[slot] = -Infinity;
      nnSlot[slot] = -1;
      this.free.push(slot);
      for (let p = 0; p < m; p++) if (live[p] && arg[p] === pick) scan(p);
    }
    for (let p = 0; p < m; p++) {
      if (!live[p]) continue;
      nnSim[slots[p]] = best[p];
      nnSlot[slots[p]] = arg[p] < 0 ? -1 : slots[arg[p]];
    }
    return out;
  }

  /** Mean nearest-neighbour similarity (a diversity diagnostic). */
  meanSimilarity(): number {
    if (this.size < 2) return NaN;
    let s = 0;
    for (let i = 0; i < this.top; i++) if (this.alive[i]) s += this.nnSim[i];
    return s / this.size;
  }
}
