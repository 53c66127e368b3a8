// Losses of the paper and its baselines (DESIGN.md sections 3-4). Inputs are raw projector outputs;
// every loss normalises them itself. Multi-crop layout: row i*b + j is crop i of image j.

import { Graph, Value } from '../graph/graph.ts';
import { l2normalize } from '../nn/layers.ts';

export type LossName = 'mcc' | 'mcc-paper' | 'tcr' | 'empssl-inv' | 'nt-xent' | 'simsiam' | 'scale-contrast' | 'ird';
export const LOSS_NAMES: LossName[] = ['mcc', 'mcc-paper', 'tcr', 'empssl-inv', 'nt-xent', 'simsiam', 'scale-contrast', 'ird'];

export { scaleMask, scaleContrast, ird, distillWeight } from './scale.ts';

export interface MultiCrop {
  /** Normalised crop embeddings [N*b, d]. */
  z: Value;
  /** Per-image mean of the normalised crops [b, d] (not normalised, not detached). */
  zbar: Value;
  n: number;
  b: number;
  d: number;
}

export function multiCrop(g: Graph, p: Value, n: number, b: number): MultiCrop {
  const d = p.shape[1] as number;
  if (p.shape[0] !== n * b) throw new Error(`multi-crop input has ${p.shape[0]} rows, expected N*b = ${n}*${b}`);
  const z = l2normalize(g, p);
  const zbar = g.reduceMean(g.reshape(z, [n, b, d]), [0], false);
  return { z, zbar, n, b, d };
}

function mean(g: Graph, x: Value): Value {
  return g.reduceMean(x, x.shape.map((_, i) => i), false);
}

/** Author's code: each crop is an anchor; logits against the b normalised image means; target = its own image. */
export function mcc(g: Graph, mc: MultiCrop, tau: number): Value {
  const zn = l2normalize(g, mc.zbar);
  const invTau = g.scalar(1 / tau);
  const logits = g.mul(g.matmul(mc.z, g.transpose(zn, [1, 0])), invTau); // [N*b, b]
  const lse = g.reduceLogSumExp(logits, [1], false);
  const pos = g.mul(g.reduceSum(g.mul(g.reshape(mc.z, [mc.n, mc.b, mc.d]), zn), [2], false), invTau); // [N, b]
  return g.sub(mean(g, lse), mean(g, pos));
}

/** Paper eq. 1: anchor = zbar_j (not normalised), positives its crops, denominator over all N*b crops. */
export function mccPaper(g: Graph, mc: MultiCrop, tau: number): Value {
  const invTau = g.scalar(1 / tau);
  const s = g.mul(g.matmul(mc.zbar, g.transpose(mc.z, [1, 0])), invTau); // [b, N*b]
  const lse = g.reduceLogSumExp(s, [1], false); // [b]
  const pos = g.mul(g.reduceSum(g.mul(g.reshape(mc.z, [mc.n, mc.b, mc.d]), mc.zbar), [2], false), invTau); // [N, b]
  return g.sub(mean(g, lse), mean(g, pos));
}

/**
 * log det of a batch of symmetric positive-definite matrices [B, m, m] by an unrolled Cholesky
 * elimination (standard ops only; its gradient comes from the per-op rules).
 */
export function logdetSPD(g: Graph, a: Value): Value {
  const m = a.shape[1] as number;
  const pivots: Value[] = [];
  let rest = a;
  for (let j = 0; j < m; j++) {
    const size = m - j;
    const d = g.slice(rest, [0, 0], [1, 1], [1, 2]); // [B, 1, 1]
    pivots.push(d);
    if (size === 1) break;
    const col = g.slice(rest, [1, 0], [size, 1], [1, 2]); // [B, size-1, 1]
    const l = g.div(col, g.sqrt(d));
    rest = g.sub(g.slice(rest, [1, 1], [size, size], [1, 2]), g.matmul(l, g.transpose(l, [0, 2, 1])));
  }
  return g.reduceSum(g.log(g.concat(pivots, 2)), [1, 2], false);
}

/** EMP-SSL total coding rate: mean over crop index i of -1/2 logdet(I + d/(b eps) Z_i Z_i^T), the b x b form. */
export function tcr(g: Graph, mc: MultiCrop, eps: number): Value {
  const zr = g.reshape(mc.z, [mc.n, mc.b, mc.d]);
  const c = mc.d / (mc.b * eps);
  const eye = new Array(mc.b * mc.b).fill(0);
  for (let i = 0; i < mc.b; i++) eye[i * mc.b + i] = 1;
  const a = g.add(g.constant(eye, [mc.b, mc.b]), g.mul(g.matmul(zr, g.transpose(zr, [0, 2, 1])), g.scalar(c)));
  return g.mul(mean(g, logdetSPD(g, a)), g.scalar(-0.5));
}

/** EMP-SSL invariance: -mean over crops and images of cos(z_ij, zbar_j), zbar not detached. */
export function empsslInv(g: Graph, mc: MultiCrop): Value {
  const zn = l2normalize(g, mc.zbar);
  const cos = g.reduceSum(g.mul(g.reshape(mc.z, [mc.n, mc.b, mc.d]), zn), [2], false);
  return g.neg(mean(g, cos));
}

/** Swaps the two views of a two-view batch [2b, d] (row v*b + j). */
function swapViews(g: Graph, x: Value, b: number): Value {
  return g.concat([g.slice(x, [b], [2 * b], [0]), g.slice(x, [0], [b], [0])], 0);
}

/** SimCLR NT-Xent on two views: diagonal excluded, positive = the other view of the same image. */
export function ntXent(g: Graph, p: Value, tau: number): Value {
  const rows = p.shape[0] as number;
  const b = rows / 2;
  const z = l2normalize(g, p);
  const invTau = g.scalar(1 / tau);
  const mask = new Array(rows * rows).fill(0);
  for (let i = 0; i < rows; i++) mask[i * rows + i] = -1e4; // exp underflows to 0: the diagonal drops out
  const s = g.add(g.mul(g.matmul(z, g.transpose(z, [1, 0])), invTau), g.constant(mask, [rows, rows]));
  const lse = g.reduceLogSumExp(s, [1], false);
  const pos = g.mul(g.reduceSum(g.mul(z, swapViews(g, z, b)), [1], false), invTau);
  return g.sub(mean(g, lse), mean(g, pos));
}

/** SimSiam: -1/2 [mean cos(q1, sg(z2)) + mean cos(q2, sg(z1))], q predictor and z projector outputs [2b, d]. */
export function simsiam(g: Graph, q: Value, z: Value): Value {
  const b = (q.shape[0] as number) / 2;
  const target = l2normalize(g, swapViews(g, g.stopGradient(z), b));
  const cos = g.reduceSum(g.mul(l2normalize(g, q), target), [1], false);
  return g.neg(mean(g, cos));
}
