// SCALE (Yu et al., CVPRW 2023), as its official code (Orienfish/SCALE, OnlineContrast/) computes it:
// a pseudo-supervised contrastive loss whose positives come from a tSNE-style similarity mask over the
// backbone features, and IRD distillation of the batch similarity distribution toward a past model.
// Two-view layout: row v*b + j is view v of image j; images 0..stream-1 are this arrival's, the rest
// replayed from memory.

import { Graph, Value } from '../graph/graph.ts';
import { l2normalize } from '../nn/layers.ts';

function eye(g: Graph, n: number, scale = 1): Value {
  const a = new Array(n * n).fill(0);
  for (let i = 0; i < n; i++) a[i * n + i] = scale;
  return g.constant(a, [n, n]);
}

/** [n, n] with 1 in the top-left stream x stream block (the code's stream_mask). */
function streamBlock(g: Graph, n: number, stream: number): Value {
  const a = new Array(n * n).fill(0);
  for (let i = 0; i < stream; i++) for (let j = 0; j < stream; j++) a[i * n + j] = 1;
  return g.constant(a, [n, n]);
}

/**
 * similarity_mask_old with simil='tSNE': for each of the v x v view pairs, D = 2 - 2 F_i F_j^T on the
 * raw backbone features (the code's comment says "normalized", but model() returns the pooled features
 * unnormalised), t = -D / tempTsne - 1000 I, S = (softmax_row(t) + softmax_col(t)) / 2; S averaged over
 * the pairs. Positive where the average, with its diagonal set to 1, exceeds mean + thresRatio (max -
 * mean) of its off-diagonal entries, in the stream x stream block only. [b, b] of 0/1, no gradient.
 */
export function scaleMask(g: Graph, feats: Value, views: number, b: number, stream: number, tempTsne: number, thresRatio: number): Value {
  const f = g.stopGradient(feats);
  const fdim = f.shape[1] as number;
  if (f.shape[0] !== views * b) throw new Error(`scale mask: features have ${f.shape[0]} rows, expected ${views}*${b}`);
  const fv = g.reshape(f, [views, b, fdim]);
  const view = (i: number) => g.reshape(g.slice(fv, [i], [i + 1], [0]), [b, fdim]);
  const neg = eye(g, b, -1000);
  let sum: Value | null = null;
  for (let i = 0; i < views; i++) {
    for (let j = 0; j < views; j++) {
      const d = g.sub(g.scalar(2), g.mul(g.matmul(view(i), g.transpose(view(j), [1, 0])), g.scalar(2)));
      const t = g.add(g.mul(d, g.scalar(-1 / tempTsne)), neg);
      const s = g.mul(g.add(g.softmax(t, 1), g.softmax(t, 0)), g.scalar(0.5));
      sum = sum ? g.add(sum, s) : s;
    }
  }
  const avg = g.mul(sum!, g.scalar(1 / (views * views)));
  const off = g.sub(g.scalar(1), eye(g, b));
  const offAvg = g.mul(avg, off); // entries are positive, so the off-diagonal max is the max of this
  const max = g.reduce('ReduceMax', offAvg, [0, 1], false);
  const mean = g.mul(g.reduceSum(offAvg, [0, 1], false), g.scalar(1 / (b * (b - 1))));
  const thres = g.add(mean, g.mul(g.sub(max, mean), g.scalar(thresRatio)));
  const withDiag = g.mul(g.add(offAvg, eye(g, b)), streamBlock(g, b, stream));
  // The stop-gradient sits after the comparison too: nothing past it is differentiated.
  return g.stopGradient(g.cast(g.greater(withDiag, thres), g.dtype));
}

/**
 * SupConLoss with a given [b, b] mask on two views p [2b, d] (raw projector outputs): the mask tiled
 * 2 x 2 less the self-pairs gives each anchor's positives, denominator all other 2b - 1 rows; loss
 * -(tau / baseTau) x the mean log-probability of the positives, averaged over the stream rows of both
 * views (memory rows are negatives only). baseTau is the code's base_temperature, 0.07 by default.
 */
export function scaleContrast(g: Graph, p: Value, mask: Value, stream: number, tau: number, baseTau: number): Value {
  const rows = p.shape[0] as number;
  const b = rows / 2;
  if (mask.shape[0] !== b || mask.shape[1] !== b) throw new Error(`scale contrast: mask must be [${b}, ${b}]`);
  const z = l2normalize(g, p);
  // exp(-1e4) underflows to 0, so the self-pair drops out of the denominator.
  const s = g.add(g.mul(g.matmul(z, g.transpose(z, [1, 0])), g.scalar(1 / tau)), eye(g, rows, -1e4));
  const logProb = g.sub(s, g.reduceLogSumExp(s, [1], true));
  const half = g.concat([mask, mask], 1);
  const m = g.mul(g.concat([half, half], 0), g.sub(g.scalar(1), eye(g, rows)));
  const meanPos = g.div(g.reduceSum(g.mul(m, logProb), [1], false), g.add(g.reduceSum(m, [1], false), g.scalar(1e-10))); // [2b]
  const rowMask = new Array(rows).fill(0);
  for (let v = 0; v < 2; v++) for (let j = 0; j < stream; j++) rowMask[v * b + j] = 1;
  const streamSum = g.reduceSum(g.mul(meanPos, g.constant(rowMask, [rows])), [0], false);
  return g.mul(streamSum, g.scalar(-(tau / baseTau) / (2 * stream)));
}

/**
 * IRDLoss: per row, the softmax over the other rows of the current similarities (curTemp) and of the
 * past ones (pastTemp); loss = mean over rows of the cross-entropy -sum_j past_ij log cur_ij. Both
 * p [n, d] are raw projector outputs; the past side is not detached (the code projects the frozen past
 * backbone's features with the current projector, which this gradient reaches).
 */
export function ird(g: Graph, cur: Value, past: Value, curTemp: number, pastTemp: number): Value {
  const n = cur.shape[0] as number;
  const sims = (x: Value, temp: number) => {
    const z = l2normalize(g, x);
    return g.add(g.mul(g.matmul(z, g.transpose(z, [1, 0])), g.scalar(1 / temp)), eye(g, n, -1e4));
  };
  const logCur = g.logSoftmax(sims(cur, curTemp), 1);
  const pastP = g.softmax(sims(past, pastTemp), 1); // the self-pair is exactly 0, so 0 x log(...) adds nothing
  const ce = g.reduceSum(g.mul(pastP, logCur), [0, 1], false);
  return g.mul(ce, g.scalar(-1 / n));
}

/**
 * The distillation weight of SCALE's train_step: `given` when positive (set at an earlier step), else
 * power x L_contrast / L_distill from this step's values (0 while L_distill is 0). No gradient: the code
 * sets it from the loss meters' floats. The host keeps the returned value once a step is applied.
 */
export function distillWeight(g: Graph, given: Value, contrast: Value, distill: Value, power: Value | number): Value {
  const pw = typeof power === 'number' ? g.scalar(power) : power;
  const c = g.stopGradient(contrast);
  const d = g.stopGradient(distill);
  const fresh = g.whereOp(g.greater(d, g.scalar(0)), g.div(g.mul(pw, c), g.max(d, g.scalar(1e-30))), g.scalar(0));
  return g.stopGradient(g.whereOp(g.greater(given, g.scalar(0)), given, fresh));
}
