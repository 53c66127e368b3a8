// kNN evaluation of features (DESIGN.md section 5): `weighted` (L2-normalised features, cosine
// similarity, votes weighted exp(sim / T), T = 0.07) and `scale` (k = 50, uniform votes, Euclidean on
// raw features). Pure functions over typed arrays; blocked so memory stays bounded.

import { jsSimilarity, type SimilarityEngine } from '../buffer/similarity.ts';

export interface KnnResult {
  k: number;
  accuracy: number;
  correct: number;
  total: number;
  /** knnWeightedBlocks: correct answers and queries per query class (where a stream's classes differ in how much was learnt of them). */
  byClass?: { correct: number[]; total: number[] };
}

export function l2normalizeRows(x: Float32Array, d: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0; r < x.length / d; r++) {
    let s = 0;
    for (let i = 0; i < d; i++) s += x[r * d + i] ** 2;
    const inv = 1 / Math.sqrt(s + 1e-12);
    for (let i = 0; i < d; i++) out[r * d + i] = x[r * d + i] * inv;
  }
  return out;
}

/** Keeps (bi, bv) the best-so-far list, sorted by descending score: a small insertion list, since k is
 * 20-200 and far below the memory size. */
function insertTop(bi: Int32Array, bv: Float64Array, s: number, m: number): void {
  const k = bv.length;
  if (s <= bv[k - 1]) return;
  let p = k - 1;
  while (p > 0 && bv[p - 1] < s) {
    bv[p] = bv[p - 1];
    bi[p] = bi[p - 1];
    p--;
  }
  bv[p] = s;
  bi[p] = m;
}

/** For each query, the indices of its kmax best memory rows (higher score = nearer). */
function topK(kmax: number, score: (q: number, m: number) => number, nm: number, nq: number): Int32Array {
  const idx = new Int32Array(nq * kmax);
  const bi = new Int32Array(kmax);
  const bv = new Float64Array(kmax);
  for (let q = 0; q < nq; q++) {
    bi.fill(-1);
    bv.fill(-Infinity);
    for (let m = 0; m < nm; m++) insertTop(bi, bv, score(q, m), m);
    idx.set(bi, q * kmax);
  }
  return idx;
}

export interface KnnInput {
  memory: Float32Array;
  memoryLabels: ArrayLike<number>;
  queries: Float32Array;
  queryLabels: ArrayLike<number>;
  d: number;
  classes: number;
}

/** Weighted cosine kNN for several k at once (plain loops; knnWeightedBlocks with ORT for large sets). */
export function knnWeighted(inp: KnnInput, ks: number[], temperature = 0.07): Promise<KnnResult[]> {
  return knnWeightedBlocks(jsSimilarity, inp, ks, temperature);
}

/** SCALE's protocol: uniform votes of the k nearest by Euclidean distance on raw features. */
export function knnUniformEuclidean(inp: KnnInput, k = 50): KnnResult {
  const { d } = inp;
  const nm = inp.memory.length / d;
  const nq = inp.queries.length / d;
  const kk = Math.min(k, nm);
  const idx = topK(kk, (q, m) => {
    let s = 0;
    for (let i = 0; i < d; i++) s += (inp.queries[q * d + i] - inp.memory[m * d + i]) ** 2;
    return -s;
  }, nm, nq);
  let correct = 0;
  const votes = new Float64Array(inp.classes);
  for (let q = 0; q < nq; q++) {
    votes.fill(0);
    for (let j = 0; j < kk; j++) votes[inp.memoryLabels[idx[q * kk + j]]] += 1;
    if (argmax(votes) === inp.queryLabels[q]) correct++;
  }
  return { k, accuracy: (100 * correct) / nq, correct, total: nq };
}

export function argmax(v: Float64Array): number {
  let b = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[b]) b = i;
  return b;
}

/**
 * For each query row, its kmax nearest memory rows by dot product (rows already L2-normalised: cosine),
 * best first: `fn(q, indices, similarities)`. Similarity blocks come from `engine` (an ORT MatMul for
 * large memories: 10,000 queries x 50,000 memory rows is 3e10 multiply-adds, minutes in JavaScript).
 */
export async function forEachNearest(
  engine: SimilarityEngine,
  mem: Float32Array,
  qs: Float32Array,
  d: number,
  kmax: number,
  fn: (q: number, idx: Int32Array, sim: Float64Array) => void,
  block = 256,
): Promise<void> {
  const nm = mem.length / d;
  const nq = qs.length / d;
  const k = Math.min(kmax, nm);
  const bi = new Int32Array(k);
  const bv = new Float64Array(k);
  for (let q0 = 0; q0 < nq; q0 += block) {
    const nb = Math.min(block, nq - q0);
    const rows = await engine.rows(qs.subarray(q0 * d, (q0 + nb) * d), nb, mem, nm, d);
    for (let r = 0; r < nb; r++) {
      bi.fill(-1);
      bv.fill(-Infinity);
      const off = r * nm;
      for (let m = 0; m < nm; m++) insertTop(bi, bv, rows[off + m], m);
      fn(q0 + r, bi, bv);
    }
  }
}

/** Votes of the first k neighbours, each weighted exp(sim / T), into `votes` (one slot per class). */
export function weightedVotes(votes: Float64Array, labels: ArrayLike<number>, idx: Int32Array, sim: Float64Array, k: number, temperature: number): Float64Array {
  votes.fill(0);
  // Relative to the best similarity: same argmax and shares, no overflow of exp at small T.
  const top = sim[0];
  for (let j = 0; j < Math.min(k, idx.length); j++) votes[labels[idx[j]]] += Math.exp((sim[j] - top) / temperature);
  return votes;
}

/** Weighted cosine kNN accuracy for several k at once, similarity blocks from `engine`. */
export async function knnWeightedBlocks(
  engine: SimilarityEngine,
  inp: KnnInput,
  ks: number[],
  temperature = 0.07,
  block = 256,
): Promise<KnnResult[]> {
  const { d } = inp;
  const mem = l2normalizeRows(inp.memory, d);
  const qs = l2normalizeRows(inp.queries, d);
  const nq = qs.length / d;
  const correct = new Array(ks.length).fill(0);
  const byClass = ks.map(() => new Array<number>(inp.classes).fill(0));
  const total = new Array<number>(inp.classes).fill(0);
  const votes = new Float64Array(inp.classes);
  await forEachNearest(engine, mem, qs, d, Math.max(...ks), (q, idx, sim) => {
    const y = inp.queryLabels[q];
    total[y]++;
    ks.forEach((k, ki) => {
      if (argmax(weightedVotes(votes, inp.memoryLabels, idx, sim, k, temperature)) === y) {
        correct[ki]++;
        byClass[ki][y]++;
      }
    });
  }, block);
  return ks.map((k, i) => ({ k, accuracy: (100 * correct[i]) / nq, correct: correct[i], total: nq, byClass: { correct: byClass[i], total: [...total] } }));
}
