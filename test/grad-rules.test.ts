// Every gradient rule against central finite differences: float64 where ORT's CPU EP has the kernel,
// float32 with eps = 1 (exact by bilinearity) for Conv, whose CPU kernel is float32 only. Composite
// rows (BatchNorm) are checked through the layer that emits them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GRAD_RULES } from '../tools/graph/grad.ts';
import type { Graph, Value } from '../tools/graph/graph.ts';
import { Model, batchNorm } from '../tools/nn/layers.ts';
import { gradCheck, type GradCase } from './helpers/ort.ts';

const positive = (rng: { uniform(): number }, n: number) => Array.from({ length: n }, () => 0.5 + 2 * rng.uniform());
// Values kept away from 0 so the ReLU kink is never within eps.
const offZero = (rng: { uniform(): number }, n: number) =>
  Array.from({ length: n }, () => (rng.uniform() < 0.5 ? -1 : 1) * (0.1 + rng.uniform()));
const distinct = (rng: { uniform(): number }, n: number) => {
  // A shuffled grid: no ties within max-pool windows, so the argmax is stable under eps.
  const v = Array.from({ length: n }, (_, i) => i / n);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng.uniform() * (i + 1));
    [v[i], v[j]] = [v[j], v[i]];
  }
  return v;
};

const f64 = (shapes: number[][], build: (g: Graph, xs: Value[]) => Value, extra: Partial<GradCase> = {}): GradCase => ({
  dtype: 'float64',
  inputs: shapes.map((shape) => ({ shape })),
  build,
  ...extra,
});
const conv = (x: number[], w: number[], attrs: Parameters<Graph['conv']>[2], bias = false, opts?: GradCase['opts']): GradCase => ({
  dtype: 'float32',
  inputs: bias ? [{ shape: x }, { shape: w }, { shape: [w[0]] }] : [{ shape: x }, { shape: w }],
  // Linear in each input separately: check each with the others fixed.
  build: (g, [xv, wv, b]) => g.conv(xv, wv, attrs, b ?? null),
  eps: 1,
  rtol: 2e-4,
  atol: 2e-4,
  opts,
});

// Several cases per op: odd sizes, broadcasting, stride 2.
const CASES: Record<string, GradCase[]> = {
  Identity: [f64([[3, 4]], (g, [x]) => g.identity(x))],
  Relu: [{ dtype: 'float64', inputs: [{ shape: [5, 7], init: offZero }], build: (g, [x]) => g.relu(x) }],
  Sigmoid: [f64([[4, 3]], (g, [x]) => g.sigmoid(x))],
  Softplus: [f64([[4, 3]], (g, [x]) => g.softplus(x))],
  Exp: [f64([[3, 5]], (g, [x]) => g.exp(x))],
  Log: [{ dtype: 'float64', inputs: [{ shape: [3, 5], init: positive }], build: (g, [x]) => g.log(x) }],
  Sqrt: [{ dtype: 'float64', inputs: [{ shape: [7], init: positive }], build: (g, [x]) => g.sqrt(x) }],
  Neg: [f64([[2, 3]], (g, [x]) => g.neg(x))],
  Reciprocal: [{ dtype: 'float64', inputs: [{ shape: [6], init: positive }], build: (g, [x]) => g.reciprocal(x) }],
  Add: [f64([[3, 4], [3, 4]], (g, [a, b]) => g.add(a, b)), f64([[2, 3, 5], [3, 1]], (g, [a, b]) => g.add(a, b)), f64([[1, 5], [4, 1]], (g, [a, b]) => g.add(a, b))],
  Sub: [f64([[3, 4], [4]], (g, [a, b]) => g.sub(a, b)), f64([[5], [2, 5]], (g, [a, b]) => g.sub(a, b))],
  Mul: [f64([[3, 4], [3, 4]], (g, [a, b]) => g.mul(a, b)), f64([[2, 3, 5], [1, 3, 1]], (g, [a, b]) => g.mul(a, b)), f64([[3, 4], []], (g, [a, b]) => g.mul(a, b))],
  Div: [
    { dtype: 'float64', inputs: [{ shape: [3, 4] }, { shape: [3, 1], init: positive }], build: (g, [a, b]) => g.div(a, b) },
    { dtype: 'float64', inputs: [{ shape: [5] }, { shape: [2, 5], init: positive }], build: (g, [a, b]) => g.div(a, b) },
  ],
  MatMul: [f64([[3, 4], [4, 5]], (g, [a, b]) => g.matmul(a, b)), f64([[2, 3, 4], [4, 5]], (g, [a, b]) => g.matmul(a, b)), f64([[2, 3, 4], [2, 4, 3]], (g, [a, b]) => g.matmul(a, b))],
  Gemm: [
    f64([[3, 4], [4, 5], [5]], (g, [a, b, c]) => g.gemm(a, b, c)),
    f64([[4, 3], [5, 4], [3, 5]], (g, [a, b, c]) => g.gemm(a, b, c, { transA: true, transB: true, alpha: 0.7, beta: 1.3 })),
    f64([[3, 4], [5, 4]], (g, [a, b]) => g.gemm(a, b, null, { transB: true })),
  ],
  Conv: [
    conv([2, 3, 5, 5], [4, 3, 3, 3], { pads: [1, 1, 1, 1] }),
    conv([2, 3, 8, 8], [4, 3, 3, 3], { strides: [2, 2], pads: [1, 1, 1, 1] }),
    conv([2, 3, 7, 7], [4, 3, 3, 3], { strides: [2, 2], pads: [1, 1, 1, 1] }),
    conv([2, 4, 6, 6], [3, 4, 1, 1], { strides: [2, 2] }),
    conv([1, 3, 11, 11], [2, 3, 7, 7], { strides: [2, 2], pads: [3, 3, 3, 3] }),
    conv([2, 3, 5, 5], [4, 3, 3, 3], { pads: [1, 1, 1, 1] }, true),
    conv([2, 3, 8, 8], [4, 3, 3, 3], { strides: [2, 2], pads: [1, 1, 1, 1] }, false, { convWeightGrad: 'im2col' }),
    conv([2, 3, 7, 7], [4, 3, 3, 3], { strides: [2, 2], pads: [1, 1, 1, 1] }, false, { convWeightGrad: 'im2col' }),
    conv([2, 4, 6, 6], [3, 4, 1, 1], { strides: [2, 2] }, false, { convWeightGrad: 'im2col' }),
    ...[[2, 3, 5, 5, 1], [2, 3, 8, 8, 2], [2, 3, 7, 7, 2]].map(([n, c, h, w, s]) =>
      conv([n, c, h, w], [4, c, 3, 3], { strides: [s, s], pads: [1, 1, 1, 1] }, false, { convWeightGrad: 'im2col-offsets', convInputGrad: 'conv' }),
    ),
    conv([2, 4, 6, 6], [3, 4, 1, 1], {}, false, { convWeightGrad: 'im2col-offsets', convInputGrad: 'conv' }),
    conv([2, 4, 6, 6], [3, 4, 1, 1], { strides: [2, 2] }, false, { convWeightGrad: 'im2col-offsets', convInputGrad: 'conv' }),
    conv([1, 2, 9, 9], [3, 2, 5, 5], { pads: [2, 2, 2, 2] }, false, { convWeightGrad: 'im2col-offsets', convInputGrad: 'conv' }),
    ...[[2, 3, 5, 5, 1], [2, 3, 8, 8, 2], [2, 3, 7, 7, 2]].map(([n, c, h, w, s]) =>
      conv([n, c, h, w], [4, c, 3, 3], { strides: [s, s], pads: [1, 1, 1, 1] }, false, { convWeightGrad: 'batched-offsets', convInputGrad: 'conv' }),
    ),
    conv([2, 4, 6, 6], [3, 4, 1, 1], {}, false, { convWeightGrad: 'batched-offsets' }),
    conv([2, 4, 6, 6], [3, 4, 1, 1], { strides: [2, 2] }, false, { convWeightGrad: 'batched-offsets' }),
    conv([1, 2, 9, 9], [3, 2, 5, 5], { pads: [2, 2, 2, 2] }, false, { convWeightGrad: 'batched-offsets' }),
    conv([1, 3, 11, 11], [2, 3, 7, 7], { strides: [2, 2], pads: [3, 3, 3, 3] }, false, { convWeightGrad: 'batched-offsets' }),
    // unfold-conv: non-square kernels and asymmetric pads catch a transposed offset (i*kw + j vs j*kh + i).
    ...[[2, 3, 5, 5, 1], [2, 3, 8, 8, 2], [2, 3, 7, 7, 2]].map(([n, c, h, w, s]) =>
      conv([n, c, h, w], [4, c, 3, 3], { strides: [s, s], pads: [1, 1, 1, 1] }, false, { convWeightGrad: 'unfold-conv', convInputGrad: 'conv' }),
    ),
    conv([2, 4, 6, 6], [3, 4, 1, 1], { strides: [2, 2] }, false, { convWeightGrad: 'unfold-conv' }),
    conv([2, 3, 7, 6], [3, 3, 2, 3], { pads: [1, 0, 0, 2] }, false, { convWeightGrad: 'unfold-conv' }),
    conv([1, 2, 9, 9], [3, 2, 3, 3], { pads: [2, 2, 2, 2], dilations: [2, 2] }, false, { convWeightGrad: 'unfold-conv' }),
    conv([1, 3, 11, 11], [2, 3, 7, 7], { strides: [2, 2], pads: [3, 3, 3, 3] }, false, { convWeightGrad: 'unfold-conv' }),
    ...[[2, 3, 5, 5, 1], [2, 3, 8, 8, 2]].map(([n, c, h, w, s]) =>
      conv([n, c, h, w], [4, c, 3, 3], { strides: [s, s], pads: [1, 1, 1, 1] }, false, { convWeightGrad: 'unfold-depthwise', convInputGrad: 'conv' }),
    ),
    conv([2, 4, 6, 6], [3, 4, 1, 1], { strides: [2, 2] }, false, { convWeightGrad: 'unfold-depthwise' }),
    conv([2, 3, 7, 6], [3, 3, 2, 3], { pads: [1, 0, 0, 2] }, false, { convWeightGrad: 'unfold-depthwise' }),
    conv([1, 2, 9, 9], [3, 2, 3, 3], { pads: [2, 2, 2, 2], dilations: [2, 2] }, false, { convWeightGrad: 'unfold-depthwise' }),
  ],
  ReduceSum: [f64([[3, 4, 5]], (g, [x]) => g.reduceSum(x, [1], true)), f64([[3, 4, 5]], (g, [x]) => g.reduceSum(x, [0, 2], false))],
  ReduceMean: [f64([[3, 4, 5]], (g, [x]) => g.reduceMean(x, [2], true)), f64([[3, 4, 5]], (g, [x]) => g.reduceMean(x, [0, 1], false))],
  ReduceLogSumExp: [f64([[3, 5]], (g, [x]) => g.reduceLogSumExp(x, [1], true)), f64([[3, 5, 2]], (g, [x]) => g.reduceLogSumExp(x, [0, 2], false))],
  Softmax: [f64([[3, 5]], (g, [x]) => g.softmax(x, 1)), f64([[3, 5]], (g, [x]) => g.softmax(x, 0))],
  LogSoftmax: [f64([[3, 5]], (g, [x]) => g.logSoftmax(x, 1)), f64([[4, 3]], (g, [x]) => g.logSoftmax(x, 0))],
  // No float64 kernel on CPU; linear, so float32 with eps = 1 is exact.
  GlobalAveragePool: [{ dtype: 'float32', inputs: [{ shape: [2, 3, 5, 4] }], build: (g, [x]) => g.globalAvgPool(x), eps: 1, rtol: 1e-5, atol: 1e-5 }],
  MaxPool: [
    { dtype: 'float64', inputs: [{ shape: [2, 3, 8, 8], init: distinct }], build: (g, [x]) => g.maxPool(x, [3, 3], [2, 2], [1, 1, 1, 1])[0], eps: 1e-5 },
    { dtype: 'float64', inputs: [{ shape: [1, 2, 7, 7], init: distinct }], build: (g, [x]) => g.maxPool(x, [3, 3], [2, 2], [1, 1, 1, 1])[0], eps: 1e-5 },
  ],
  Reshape: [f64([[3, 4]], (g, [x]) => g.reshape(x, [2, -1, 3]))],
  Flatten: [f64([[2, 3, 2, 2]], (g, [x]) => g.flatten(x, 1))],
  Squeeze: [f64([[3, 1, 4]], (g, [x]) => g.squeeze(x, [1]))],
  Unsqueeze: [f64([[3, 4]], (g, [x]) => g.unsqueeze(x, [0, 2]))],
  Transpose: [f64([[2, 3, 4]], (g, [x]) => g.transpose(x, [2, 0, 1]))],
  Slice: [f64([[5, 6]], (g, [x]) => g.slice(x, [1, 2], [4, 5], [0, 1])), f64([[3, 7]], (g, [x]) => g.slice(x, [3], [7], [1]))],
  Concat: [f64([[2, 3], [2, 4], [2, 1]], (g, xs) => g.concat(xs, 1))],
  Expand: [f64([[3, 1]], (g, [x]) => g.expand(x, [2, 3, 4]))],
  Pad: [f64([[3, 4]], (g, [x]) => g.pad(x, [1, 0, 2, 3]))],
  // Training mode; gamma and beta (the layer's own inputs) are differentiated too.
  BatchNorm: ([[[4, 3, 2, 3], true], [[5, 3], true], [[6, 2, 3, 3], false], [[5, 3], false]] as const).map(([shape, affine]) =>
    f64([[...shape]], (g, [x]) => batchNorm(new Model(g, true), 'bn', x, affine), { diffExtras: true }),
  ),
};

// Ops whose rule returns no gradient by design.
const NO_GRADIENT = new Set(['Sign', 'StopGradient']);

test('every gradient rule has finite-difference cases', () => {
  const missing = Object.keys(GRAD_RULES).filter((op) => !CASES[op] && !NO_GRADIENT.has(op));
  assert.deepEqual(missing, []);
});

for (const [op, cases] of Object.entries(CASES)) {
  cases.forEach((c, k) => {
    test(`gradient of ${op} #${k} matches finite differences (${c.dtype})`, async () => {
      const r = await gradCheck(c);
      assert.ok(r.checked > 0);
      assert.deepEqual(r.failures, [], `max abs err ${r.maxAbsErr}`);
    });
  });
}

test('stop-gradient blocks exactly its own path', async () => {
  // d/da [sg(a) * b + a * b] = b, where finite differences see 2b.
  const { Graph } = await import('../tools/graph/graph.ts');
  const { gradients } = await import('../tools/graph/grad.ts');
  const { session, run } = await import('./helpers/ort.ts');
  const g = new Graph('float64');
  const a = g.input('a', [3]);
  const b = g.input('b', [3]);
  const loss = g.reduceSum(g.add(g.mul(g.stopGradient(a), b), g.mul(a, b)), [0], false);
  const [ga] = gradients(g, loss, [a]);
  g.output(ga, 'ga');
  const bv = Float64Array.from([0.5, -2, 3]);
  const out = await run(await session(g), g, new Map([[a, Float64Array.from([1, 2, 3])], [b, bv]]));
  assert.deepEqual(Array.from(out.ga as Float64Array), Array.from(bv));
});

test('negative control: batch norm is differentiated by its table row', async () => {
  const saved = GRAD_RULES.BatchNorm;
  // dx shifted by mean(gy) per channel, as a slip in that term would do; gamma's and beta's stay right.
  GRAD_RULES.BatchNorm = (g, n, gys, opts) => {
    const [dx, ...rest] = saved(g, n, gys, opts);
    return [g.add(dx!, g.reduceMean(gys[0]!, (n.attrs.axes as { ints: number[] }).ints, true)), ...rest];
  };
  try {
    const r = await gradCheck(CASES.BatchNorm[0]);
    assert.ok(r.failures.length > 0);
  } finally {
    GRAD_RULES.BatchNorm = saved;
  }
});

test('negative control: the harness catches a wrong rule', async () => {
  const saved = GRAD_RULES.Sigmoid;
  // Off by a factor: y(1-y) replaced by y.
  GRAD_RULES.Sigmoid = (g, n, [gy]) => [g.mul(gy!, n.outputs[0])];
  try {
    const r = await gradCheck(f64([[4, 3]], (g, [x]) => g.sigmoid(x)));
    assert.ok(r.failures.length > 0);
  } finally {
    GRAD_RULES.Sigmoid = saved;
  }
});

test('an unknown Conv weight-gradient formulation is an error naming the accepted ones, not im2col', async () => {
  const { Graph } = await import('../tools/graph/graph.ts');
  const { gradients } = await import('../tools/graph/grad.ts');
  const g = new Graph('float32');
  const x = g.input('x', [1, 2, 4, 4]);
  const w = g.input('w', [3, 2, 3, 3]);
  const loss = g.reduceSum(g.conv(x, w, { pads: [1, 1, 1, 1] }), [0, 1, 2, 3], false);
  assert.throws(() => gradients(g, loss, [w], { convWeightGrad: 'unfold-cnv' as never }), /convWeightGrad "unfold-cnv": unknown \(accepted: .*unfold-conv.*\)/);
});
