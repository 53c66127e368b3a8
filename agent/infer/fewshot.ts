// Few-shot recognition: a support set DIR/<label>/*.png|jpg embedded with the current encoder;
// each query gets the weighted cosine kNN vote of its nearest support embeddings (the evaluation's
// rule, T 0.07), a score (the winning label's share of the vote) and its cosine similarity to the
// nearest support embedding. Novelty is 1 minus the similarity to the nearest reference embedding.

import { jsSimilarity, type SimilarityEngine } from '../buffer/similarity.ts';
import { argmax, forEachNearest, l2normalizeRows, weightedVotes } from '../eval/knn.ts';

export interface Prediction {
  label: string;
  /** Share of the weighted vote that went to `label`, in (0, 1]. */
  score: number;
  /** Cosine similarity to the nearest support embedding. */
  similarity: number;
}

export class FewShot {
  private mem: Float32Array;
  constructor(
    support: Float32Array,
    private labelOf: number[],
    readonly labels: string[],
    readonly d: number,
    readonly k = 20,
    readonly temperature = 0.07,
    private engine: SimilarityEngine = jsSimilarity,
  ) {
    this.mem = l2normalizeRows(support, d);
  }

  async classify(queries: Float32Array): Promise<Prediction[]> {
    const qs = l2normalizeRows(queries, this.d);
    const out: Prediction[] = [];
    const votes = new Float64Array(this.labels.length);
    await forEachNearest(this.engine, this.mem, qs, this.d, this.k, (_q, idx, sim) => {
      weightedVotes(votes, this.labelOf, idx, sim, this.k, this.temperature);
      const b = argmax(votes);
      const total = votes.reduce((a, v) => a + v, 0);
      out.push({ label: this.labels[b], score: votes[b] / total, similarity: sim[0] });
    });
    return out;
  }
}

/** For each query, 1 - cosine similarity to its nearest reference row (0: seen before; up to 2). */
export async function noveltyScores(queries: Float32Array, refs: Float32Array, d: number, engine: SimilarityEngine = jsSimilarity): Promise<number[]> {
  const out: number[] = [];
  await forEachNearest(engine, l2normalizeRows(refs, d), l2normalizeRows(queries, d), d, 1, (_q, _i, sim) => out.push(1 - sim[0]));
  return out;
}
