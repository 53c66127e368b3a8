// Similarity blocks for the buffer's nearest-neighbour index: rows of F_a . F_b^T computed by one ORT
// MatMul (multi-threaded GEMM) instead of JavaScript loops, which run at ~0.3 GMAC/s on 2 cores.

import { encodeOnnx } from '../../core/onnx/model.ts';

export interface SimilarityEngine {
  /** a: [na, d], b: [nb, d] -> [na, nb] row-major. */
  rows(a: Float32Array, na: number, b: Float32Array, nb: number, d: number): Promise<Float32Array>;
}

/** Plain loops: for small blocks, where an ORT call costs more than it saves, and as a reference. */
export const jsSimilarity: SimilarityEngine = {
  async rows(a, na, b, nb, d) {
    const out = new Float32Array(na * nb);
    for (let r = 0; r < na; r++) {
      for (let j = 0; j < nb; j++) {
        let s = 0;
        for (let k = 0, x = r * d, y = j * d; k < d; k++) s += a[x + k] * b[y + k];
        out[r * nb + j] = s;
      }
    }
    return out;
  },
};

/**
 * What the engine needs of a session: agent/trainer/backend.ts's Session, which callers open with
 * `openChosen` on their EP choice. Taken as an argument because agent/trainer imports this folder
 * (the learner holds the buffer), and an import back would be a cycle (test/modules.test.ts).
 */
export interface GemmSession {
  run(feeds: Record<string, { type: 'float32'; data: Float32Array; dims: number[] }>): Promise<Record<string, { data: unknown }>>;
}

/** The one-node model: s = a . b^T as one Gemm (transB) node, the same GEMM as MatMul after a Transpose, in one op. */
export function similarityModel(): Uint8Array {
  return encodeOnnx({
    name: 'similarity',
    nodes: [{ op: 'Gemm', name: 'similarity', inputs: ['a', 'b'], outputs: ['s'], attrs: { transB: { i: 1 } } }],
    initializers: [],
    inputs: [
      { name: 'a', dtype: 'float32', shape: ['na', 'd'] },
      { name: 'b', dtype: 'float32', shape: ['nb', 'd'] },
    ],
    outputs: [{ name: 's', dtype: 'float32', shape: ['na', 'nb'] }],
  });
}

/** `open` puts the one-node model on the caller's EP, e.g. `(m) => openChosen(m, { ep, epFallback, threads })`. */
export async function ortSimilarity(open: (model: Uint8Array) => Promise<GemmSession>): Promise<SimilarityEngine> {
  const sess = await open(similarityModel());
  return {
    async rows(av, na, bv, nb, d) {
      const out = await sess.run({ a: { type: 'float32', data: av.subarray(0, na * d), dims: [na, d] }, b: { type: 'float32', data: bv.subarray(0, nb * d), dims: [nb, d] } });
      return out.s.data as Float32Array;
    },
  };
}
