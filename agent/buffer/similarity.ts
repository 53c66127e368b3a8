// Similarity blocks for the buffer's nearest-neighbour index: rows of F_a . F_b^T computed by one ORT
// MatMul (multi-threaded GEMM) instead of JavaScript loops, which run at ~0.3 GMAC/s on 2 cores.

import * as ort from 'onnxruntime-node';
import { Graph } from '../../tools/graph/graph.ts';
import { encodeModel } from '../../tools/onnx/model.ts';

export interface SimilarityEngine {
  /** a: [na, d], b: [nb, d] -> [na, nb] row-major. */
  rows(a: Float32Array, na: number, b: Float32Array, nb: number, d: number): Promise<Float32Array>;
}

export async function ortSimilarity(threads?: number): Promise<SimilarityEngine> {
  const g = new Graph();
  const a = g.input('a', ['na', 'd']);
  const b = g.input('b', ['nb', 'd']);
  g.output(g.matmul(a, g.transpose(b, [1, 0])), 's');
  const sess = await ort.InferenceSession.create(encodeModel(g, 'similarity'), { graphOptimizationLevel: 'all', ...(threads ? { intraOpNumThreads: threads } : {}) });
  return {
    async rows(av, na, bv, nb, d) {
      const out = await sess.run({ a: new ort.Tensor('float32', av.subarray(0, na * d), [na, d]), b: new ort.Tensor('float32', bv.subarray(0, nb * d), [nb, d]) });
      return out.s.data as Float32Array;
    },
  };
}
