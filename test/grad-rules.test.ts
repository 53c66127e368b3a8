// Every gradient rule against central finite differences: float64 where ORT's CPU EP has the kernel,
// float32 with eps = 1 (exact by bilinearity) for Conv and AveragePool, whose CPU kernels are float32
// only, and float32 with a small eps for Erf (float32 only, not linear). Composite rows (BatchNorm) are
// checked through the builders that emit them. `raw` nodes are built as an imported graph holds them
// (ONNX attributes as given, optional inputs and outputs left out).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GRAD_RULES, autoWeightGrad } from '../tools/graph/grad.ts';
import { Graph, Value } from '../tools/graph/graph.ts';
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

// Values kept at least 0.1 from the kinks of piecewise-linear ops (e.g. HardSigmoid's at +-3).
const offKinks = (kinks: number[], lo: number, hi: number) => (rng: { uniform(): number }, n: number) =>
  Array.from({ length: n }, () => {
    for (;;) {
      const v = lo + (hi - lo) * rng.uniform();
      if (kinks.every((k) => Math.abs(v - k) > 0.1)) return v;
    }
  });

/** A node the way an imported graph holds it: the ONNX op and attributes as given, one output. */
const raw = (g: Graph, op: string, inputs: (Value | null)[], shape: number[], attrs: Record<string, import('../tools/graph/graph.ts').Attr> = {}) => {
  const y = new Value(g, `raw_${op}_${g.nodes.length}`, shape, inputs[0]!.dtype);
  g.addNode(op, inputs, [y], attrs);
  return y;
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

type UnfoldCase = GradCase & { attrs: Parameters<Graph['unfoldConv']>[2] };
const unfoldConv = (x: number[], w: number[], attrs: UnfoldCase['attrs'], opts?: GradCase['opts']): UnfoldCase => ({
  ...conv(x, w, attrs, false, opts),
  build: (g, [xv, wv]) => g.unfoldConv(xv, wv, attrs),
  attrs,
});

// convWeightGrad 'auto' cases, x and w shapes with the Conv's attributes, and the formulation each should
// take: a pointwise Conv on a non-square map (C != O), a 1x1 whose map is no larger than O, a strided 1x1,
// a non-square kernel with asymmetric pads on a map larger than O, a 3x3 on a map no larger than O.
const AUTO_CASES: [number[], number[], Parameters<Graph['conv']>[2], string][] = [
  [[2, 4, 5, 6], [3, 4, 1, 1], {}, 'pointwise'],
  [[2, 4, 2, 2], [6, 4, 1, 1], {}, 'im2col-offsets'],
  [[2, 4, 6, 6], [3, 4, 1, 1], { strides: [2, 2] }, 'im2col-offsets'],
  [[2, 3, 7, 6], [3, 3, 2, 3], { pads: [1, 0, 0, 2] }, 'unfold-conv'],
  [[2, 3, 3, 3], [12, 3, 3, 3], { pads: [1, 1, 1, 1] }, 'im2col-offsets'],
  [[2, 3, 8, 8], [4, 3, 3, 3], { strides: [2, 2], pads: [1, 1, 1, 1] }, 'unfold-conv'],
];

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
  Sub: [f64([[3, 4], [4]], (g, [a, b]) => g.sub(a, b)), f64([[5], [2, 5]], (g, [a, b]) => g.sub(a, b)), f64([[1, 5], [4, 1]], (g, [a, b]) => g.sub(a, b))],
  Mul: [
    f64([[3, 4], [3, 4]], (g, [a, b]) => g.mul(a, b)),
    f64([[2, 3, 5], [1, 3, 1]], (g, [a, b]) => g.mul(a, b)),
    f64([[3, 4], []], (g, [a, b]) => g.mul(a, b)),
    f64([[2, 1, 4, 1], [3, 1, 5]], (g, [a, b]) => g.mul(a, b)),
  ],
  Div: [
    { dtype: 'float64', inputs: [{ shape: [3, 4] }, { shape: [3, 1], init: positive }], build: (g, [a, b]) => g.div(a, b) },
    { dtype: 'float64', inputs: [{ shape: [5] }, { shape: [2, 5], init: positive }], build: (g, [a, b]) => g.div(a, b) },
    { dtype: 'float64', inputs: [{ shape: [1, 5] }, { shape: [4, 1], init: positive }], build: (g, [a, b]) => g.div(a, b) },
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
    // Dilations and asymmetric pads (dense).
    conv([2, 3, 9, 9], [4, 3, 3, 3], { pads: [2, 2, 2, 2], dilations: [2, 2] }),
    conv([2, 3, 9, 9], [4, 3, 3, 3], { pads: [2, 2, 2, 2], dilations: [2, 2] }, false, { convWeightGrad: 'batched-offsets', convInputGrad: 'conv' }),
    conv([2, 3, 8, 8], [4, 3, 3, 3], { strides: [2, 2], pads: [0, 0, 1, 1] }),
    conv([2, 3, 7, 8], [4, 3, 3, 3], { pads: [1, 0, 0, 2] }, false, { convInputGrad: 'conv' }),
    conv([2, 3, 9, 9], [4, 3, 3, 3], { strides: [2, 2], pads: [2, 1, 2, 1], dilations: [2, 2] }, false, { convWeightGrad: 'im2col-offsets' }),
    conv([2, 3, 8, 8], [4, 3, 3, 3], { strides: [2, 2], pads: [0, 0, 1, 1] }, false, { convWeightGrad: 'im2col' }),
    // Depthwise (groups = channels, mobilenet), every weight-gradient formulation; the input gradient is
    // the flipped-kernel Conv at stride 1 (whatever convInputGrad says), ConvTranspose otherwise.
    ...(['offsets', 'grouped-conv', 'per-image', 'mul-reduce'] as const).flatMap((dw) => [
      conv([2, 4, 7, 7], [4, 1, 3, 3], { pads: [1, 1, 1, 1], group: 4 }, true, { depthwiseWeightGrad: dw }),
      conv([2, 4, 8, 8], [4, 1, 3, 3], { strides: [2, 2], pads: [1, 1, 1, 1], group: 4 }, false, { depthwiseWeightGrad: dw }),
      conv([2, 3, 9, 9], [3, 1, 5, 5], { strides: [2, 2], pads: [2, 2, 2, 2], group: 3 }, false, { depthwiseWeightGrad: dw }),
      conv([2, 3, 8, 8], [3, 1, 3, 3], { pads: [2, 2, 2, 2], dilations: [2, 2], group: 3 }, false, { depthwiseWeightGrad: dw, convInputGrad: 'conv' }),
      conv([2, 3, 8, 8], [3, 1, 3, 3], { strides: [2, 2], pads: [0, 0, 1, 1], group: 3 }, false, { depthwiseWeightGrad: dw }),
      // Channel multiplier 2: two filters per input channel.
      conv([2, 3, 6, 6], [6, 1, 3, 3], { pads: [1, 1, 1, 1], group: 3 }, false, { depthwiseWeightGrad: dw, convInputGrad: 'conv' }),
    ]),
    // 1 < groups < channels (regnet, shufflenet), 1x1 and 3x3, stride 1 and 2.
    conv([2, 4, 6, 6], [6, 2, 3, 3], { pads: [1, 1, 1, 1], group: 2 }, true),
    conv([2, 4, 6, 6], [6, 2, 3, 3], { pads: [1, 1, 1, 1], group: 2 }, false, { convInputGrad: 'conv' }),
    conv([2, 6, 8, 8], [6, 2, 3, 3], { strides: [2, 2], pads: [1, 1, 1, 1], group: 3 }),
    conv([2, 6, 5, 5], [4, 3, 1, 1], { group: 2 }, false, { convInputGrad: 'conv' }),
    // unfold-conv: non-square kernels and asymmetric pads catch a transposed offset (i*kw + j vs j*kh + i).
    ...[[2, 3, 5, 5, 1], [2, 3, 8, 8, 2], [2, 3, 7, 7, 2]].map(([n, c, h, w, s]) =>
      conv([n, c, h, w], [4, c, 3, 3], { strides: [s, s], pads: [1, 1, 1, 1] }, false, { convWeightGrad: 'unfold-conv', convInputGrad: 'conv' }),
    ),
    conv([2, 4, 6, 6], [3, 4, 1, 1], { strides: [2, 2] }, false, { convWeightGrad: 'unfold-conv' }),
    // An even channel count with a 3x3 kernel: Graph.unfold appends a zero channel (for WebGPU).
    conv([2, 4, 8, 8], [3, 4, 3, 3], { strides: [2, 2], pads: [1, 1, 1, 1] }, false, { convWeightGrad: 'unfold-conv' }),
    conv([2, 3, 7, 6], [3, 3, 2, 3], { pads: [1, 0, 0, 2] }, false, { convWeightGrad: 'unfold-conv' }),
    conv([1, 2, 9, 9], [3, 2, 3, 3], { pads: [2, 2, 2, 2], dilations: [2, 2] }, false, { convWeightGrad: 'unfold-conv' }),
    conv([1, 3, 11, 11], [2, 3, 7, 7], { strides: [2, 2], pads: [3, 3, 3, 3] }, false, { convWeightGrad: 'unfold-conv' }),
    ...[[2, 3, 5, 5, 1], [2, 3, 8, 8, 2]].map(([n, c, h, w, s]) =>
      conv([n, c, h, w], [4, c, 3, 3], { strides: [s, s], pads: [1, 1, 1, 1] }, false, { convWeightGrad: 'unfold-depthwise', convInputGrad: 'conv' }),
    ),
    conv([2, 4, 6, 6], [3, 4, 1, 1], { strides: [2, 2] }, false, { convWeightGrad: 'unfold-depthwise' }),
    conv([2, 3, 7, 6], [3, 3, 2, 3], { pads: [1, 0, 0, 2] }, false, { convWeightGrad: 'unfold-depthwise' }),
    conv([1, 2, 9, 9], [3, 2, 3, 3], { pads: [2, 2, 2, 2], dilations: [2, 2] }, false, { convWeightGrad: 'unfold-depthwise' }),
    // auto: one case per branch of autoWeightGrad (AUTO_PICKS below asserts which each takes).
    ...AUTO_CASES.map(([x, w, attrs]) => conv(x, w, attrs, false, { convWeightGrad: 'auto', convInputGrad: 'conv' })),
  ],
  // Graph.unfoldConv's composite (convWeightGrad 'unfold-forward'): the weight gradient from the
  // forward's unfolded input; non-square kernels and asymmetric pads catch a transposed offset.
  UnfoldConv: [
    ...[[2, 3, 5, 5, 1], [2, 3, 8, 8, 2], [2, 3, 7, 7, 2]].map(([n, c, h, w, s]) => unfoldConv([n, c, h, w], [4, c, 3, 3], { strides: [s, s], pads: [1, 1, 1, 1] }, { convInputGrad: 'conv' })),
    unfoldConv([2, 3, 8, 8], [4, 3, 3, 3], { strides: [2, 2], pads: [1, 1, 1, 1] }),
    unfoldConv([2, 4, 6, 6], [3, 4, 1, 1], { strides: [2, 2] }),
    unfoldConv([2, 4, 8, 8], [3, 4, 3, 3], { strides: [2, 2], pads: [1, 1, 1, 1] }),
    unfoldConv([2, 3, 7, 6], [3, 3, 2, 3], { pads: [1, 0, 0, 2] }),
    unfoldConv([1, 2, 9, 9], [3, 2, 3, 3], { pads: [2, 2, 2, 2], dilations: [2, 2] }, { convInputGrad: 'conv' }),
    unfoldConv([1, 3, 11, 11], [2, 3, 7, 7], { strides: [2, 2], pads: [3, 3, 3, 3] }),
  ],
  ReduceSum: [f64([[3, 4, 5]], (g, [x]) => g.reduceSum(x, [1], true)), f64([[3, 4, 5]], (g, [x]) => g.reduceSum(x, [0, 2], false))],
  ReduceMean: [
    f64([[3, 4, 5]], (g, [x]) => g.reduceMean(x, [2], true)),
    f64([[3, 4, 5]], (g, [x]) => g.reduceMean(x, [0, 1], false)),
    // Negative axes as given; no axes (all of them), keepdims 0.
    f64([[3, 4, 5]], (g, [x]) => raw(g, 'ReduceMean', [x, g.ints([-1, -3])], [4], { keepdims: { i: 0 } })),
    f64([[3, 4]], (g, [x]) => raw(g, 'ReduceMean', [x], [], { keepdims: { i: 0 } })),
  ],
  ReduceLogSumExp: [f64([[3, 5]], (g, [x]) => g.reduceLogSumExp(x, [1], true)), f64([[3, 5, 2]], (g, [x]) => g.reduceLogSumExp(x, [0, 2], false))],
  Softmax: [f64([[3, 5]], (g, [x]) => g.softmax(x, 1)), f64([[3, 5]], (g, [x]) => g.softmax(x, 0))],
  LogSoftmax: [f64([[3, 5]], (g, [x]) => g.logSoftmax(x, 1)), f64([[4, 3]], (g, [x]) => g.logSoftmax(x, 0))],
  // No float64 kernel on CPU; linear, so float32 with eps = 1 is exact.
  GlobalAveragePool: [{ dtype: 'float32', inputs: [{ shape: [2, 3, 5, 4] }], build: (g, [x]) => g.globalAvgPool(x), eps: 1, rtol: 1e-5, atol: 1e-5 }],
  MaxPool: [
    { dtype: 'float64', inputs: [{ shape: [2, 3, 8, 8], init: distinct }], build: (g, [x]) => g.maxPool(x, [3, 3], [2, 2], [1, 1, 1, 1])[0], eps: 1e-5 },
    { dtype: 'float64', inputs: [{ shape: [1, 2, 7, 7], init: distinct }], build: (g, [x]) => g.maxPool(x, [3, 3], [2, 2], [1, 1, 1, 1])[0], eps: 1e-5 },
    // squeezenet's 3x3 s2 ceil mode, on sizes where the last window is cut short and where it is dropped.
    ...[8, 7].map((h): GradCase => ({ dtype: 'float64', inputs: [{ shape: [2, 2, h, h], init: distinct }], build: (g, [x]) => g.maxPool(x, [3, 3], [2, 2], [0, 0, 0, 0], { ceilMode: true })[0], eps: 1e-5 })),
    { dtype: 'float64', inputs: [{ shape: [1, 2, 6, 6], init: distinct }], build: (g, [x]) => g.maxPool(x, [3, 3], [2, 2], [1, 1, 1, 1], { ceilMode: true })[0], eps: 1e-5 },
    { dtype: 'float64', inputs: [{ shape: [1, 2, 9, 9], init: distinct }], build: (g, [x]) => g.maxPool(x, [3, 3], [1, 1], [2, 2, 2, 2], { dilations: [2, 2] })[0], eps: 1e-5 },
    { dtype: 'float64', inputs: [{ shape: [2, 2, 6, 7], init: distinct }], build: (g, [x]) => g.maxPool(x, [2, 2], [2, 2], [0, 1, 0, 0])[0], eps: 1e-5 },
    // Without indices ('mask'), on the same shapes.
    ...(
      [
        [[2, 3, 8, 8], [3, 3], [2, 2], [1, 1, 1, 1], {}],
        [[1, 2, 7, 7], [3, 3], [2, 2], [1, 1, 1, 1], {}],
        [[2, 2, 7, 7], [3, 3], [2, 2], [0, 0, 0, 0], { ceilMode: true }],
        [[1, 2, 6, 6], [3, 3], [2, 2], [1, 1, 1, 1], { ceilMode: true }],
        [[1, 2, 9, 9], [3, 3], [1, 1], [2, 2, 2, 2], { dilations: [2, 2] }],
        [[2, 2, 6, 7], [2, 2], [2, 2], [0, 1, 0, 0], {}],
      ] as [number[], number[], number[], number[], { ceilMode?: boolean; dilations?: number[] }][]
    ).map(([shape, k, s, p, o]): GradCase => ({ dtype: 'float64', inputs: [{ shape, init: distinct }], build: (g, [x]) => g.maxPool(x, k, s, p, o)[0], eps: 1e-5, opts: { maxPoolGrad: 'mask' } })),
    // As imported: one output, no indices (the rule pools again for them).
    {
      dtype: 'float64',
      inputs: [{ shape: [2, 3, 8, 8], init: distinct }],
      build: (g, [x]) => raw(g, 'MaxPool', [x], [2, 3, 4, 4], { kernel_shape: { ints: [3, 3] }, strides: { ints: [2, 2] }, pads: { ints: [1, 1, 1, 1] } }),
      eps: 1e-5,
    },
  ],
  // No float64 kernel on CPU; linear, so float32 with eps = 1 is exact.
  AveragePool: (
    [
      [[2, 3, 6, 6], [3, 3], { pads: [1, 1, 1, 1] }],
      [[2, 3, 6, 6], [3, 3], { pads: [1, 1, 1, 1], countIncludePad: true }],
      [[2, 2, 6, 7], [2, 2], { strides: [2, 2] }],
      [[2, 2, 6, 6], [3, 3], { strides: [2, 2], pads: [1, 1, 1, 1], ceilMode: true }],
      [[2, 2, 6, 6], [3, 3], { strides: [2, 2], pads: [1, 1, 1, 1], ceilMode: true, countIncludePad: true }],
      [[1, 2, 8, 8], [3, 3], { strides: [2, 2], ceilMode: true }],
      [[1, 2, 5, 6], [2, 3], { strides: [2, 1], pads: [0, 1, 1, 0] }],
    ] as [number[], number[], Parameters<Graph['averagePool']>[2]][]
  ).map(([shape, k, o]) => ({ dtype: 'float32', inputs: [{ shape }], build: (g, [x]) => g.averagePool(x, k, o), eps: 1, rtol: 1e-5, atol: 1e-5 })),
  Reshape: [f64([[3, 4]], (g, [x]) => g.reshape(x, [2, -1, 3]))],
  Flatten: [f64([[2, 3, 2, 2]], (g, [x]) => g.flatten(x, 1))],
  Squeeze: [f64([[3, 1, 4]], (g, [x]) => g.squeeze(x, [1]))],
  Unsqueeze: [f64([[3, 4]], (g, [x]) => g.unsqueeze(x, [0, 2]))],
  Transpose: [f64([[2, 3, 4]], (g, [x]) => g.transpose(x, [2, 0, 1])), f64([[2, 3, 4]], (g, [x]) => raw(g, 'Transpose', [x], [4, 3, 2]))],
  Slice: [
    f64([[5, 6]], (g, [x]) => g.slice(x, [1, 2], [4, 5], [0, 1])),
    f64([[3, 7]], (g, [x]) => g.slice(x, [3], [7], [1])),
    // Steps, negative bounds, int64-max ends (as exporters write 'to the end'), reversal.
    f64([[5, 7]], (g, [x]) => g.sliceGeneral(x, [0, 1], [5, 2 ** 63], [0, 1], [2, 3])),
    f64([[4, 6]], (g, [x]) => g.sliceGeneral(x, [-1], [-5], [1], [-2])),
    f64([[3, 5]], (g, [x]) => g.sliceGeneral(x, [-2, -1], [2 ** 63, -(2 ** 63)], [0, -1], [1, -1])),
    f64([[2, 3, 4]], (g, [x]) => g.flip(x, [2])),
    // No axes or steps inputs: the leading axes, step 1.
    f64([[4, 5]], (g, [x]) => raw(g, 'Slice', [x, g.ints([1]), g.ints([-1])], [2, 5])),
  ],
  Concat: [f64([[2, 3], [2, 4], [2, 1]], (g, xs) => g.concat(xs, 1))],
  Expand: [f64([[3, 1]], (g, [x]) => g.expand(x, [2, 3, 4]))],
  Pad: [f64([[3, 4]], (g, [x]) => g.pad(x, [1, 0, 2, 3])), f64([[3, 5]], (g, [x]) => g.pad(x, [-1, 2, 0, -2]))],
  Cast: [
    // float64 -> float32 -> float64 is linear up to float32 rounding: exact with eps = 1.
    f64([[3, 4]], (g, [x]) => g.cast(g.cast(x, 'float32'), 'float64'), { eps: 1, rtol: 1e-6, atol: 1e-5 }),
    // Through an integer there is no gradient (and the rounding is flat away from half-integers).
    { dtype: 'float64', inputs: [{ shape: [6], init: offKinks([-1.5, -0.5, 0.5, 1.5], -2, 2) }], build: (g, [x]) => g.add(g.cast(g.cast(x, 'int64'), 'float64'), g.mul(x, x)) },
  ],
  // float32 only on CPU and not linear: eps 1e-2, tolerances above its O(eps^2) truncation error.
  Erf: [{ dtype: 'float32', inputs: [{ shape: [4, 5] }], build: (g, [x]) => g.erf(x), eps: 1e-2, rtol: 2e-3, atol: 3e-4 }],
  HardSigmoid: [
    { dtype: 'float64', inputs: [{ shape: [4, 6], init: offKinks([-3, 3], -5, 5) }], build: (g, [x]) => g.hardSigmoid(x, 1 / 6, 0.5) },
    { dtype: 'float64', inputs: [{ shape: [4, 6], init: offKinks([-2.5, 2.5], -4, 4) }], build: (g, [x]) => g.hardSigmoid(x) },
  ],
  HardSwish: [{ dtype: 'float64', inputs: [{ shape: [5, 6], init: offKinks([-3, 3], -5, 5) }], build: (g, [x]) => g.hardSwish(x) }],
  Clip: [
    // ReLU6 as exported: bounds as constant inputs.
    { dtype: 'float64', inputs: [{ shape: [4, 6], init: offKinks([0, 6], -3, 9) }], build: (g, [x]) => g.clip(x, g.scalar(0), g.scalar(6)) },
    { dtype: 'float64', inputs: [{ shape: [4, 6], init: offKinks([0.5], -2, 2) }], build: (g, [x]) => g.clip(x, g.scalar(0.5), null) },
    { dtype: 'float64', inputs: [{ shape: [4, 6], init: offKinks([-0.5], -2, 2) }], build: (g, [x]) => g.clip(x, null, g.scalar(-0.5)) },
    // Bounds as computed inputs: their gradients too.
    { dtype: 'float64', inputs: [{ shape: [4, 6], init: offKinks([-0.6, 0.4], -2, 2) }, { shape: [], init: () => [-0.6] }, { shape: [], init: () => [0.4] }], build: (g, [x, lo, hi]) => g.clip(x, lo, hi), eps: 1e-7 },
  ],
  Pow: [
    ...[2, 3, 0.5, -1.5].map((p) => ({ dtype: 'float64' as const, inputs: [{ shape: [3, 4], init: positive }], build: (g: Graph, [x]: Value[]) => g.pow(x, g.scalar(p)) })),
    f64([[3, 4]], (g, [x]) => g.pow(x, g.scalar(2))),
    { dtype: 'float64', inputs: [{ shape: [3, 4], init: positive }, { shape: [4] }], build: (g, [a, b]) => g.pow(a, b) },
  ],
  Gather: [
    // A constant index (vit's class token, x[:, 0]), negative too.
    f64([[2, 3, 4]], (g, [x]) => g.gather(x, g.constant([0], [], 'int64'), 1)),
    f64([[2, 3, 4]], (g, [x]) => g.gather(x, g.constant([-1], [], 'int64'), 2)),
    // Constant indices with repeats and a negative one; computed indices.
    f64([[4, 3]], (g, [x]) => g.gather(x, g.constant([0, 2, 2, -1, 1, 0], [2, 3], 'int64'), 0)),
    f64([[2, 5, 3]], (g, [x]) => g.gather(x, g.cast(g.constant([4, 1, 1], [3], 'float64'), 'int64'), 1)),
    // Shape arithmetic on a live tensor (an exporter's x.size(1)): integers carry no gradient.
    f64([[2, 4]], (g, [x]) => g.mul(x, g.cast(g.gather(g.shape(x), g.constant([1], [], 'int64'), 0), 'float64'))),
  ],
  LayerNormalization: [
    // opset 17's LayerNorm over the last axis (convnext), scale and bias learnt; over the last two; no bias.
    f64([[2, 3, 4], [4], [4]], (g, [x, s, b]) => g.layerNorm(x, s, b, -1, 1e-5)),
    f64([[2, 3, 4], [3, 4], [3, 4]], (g, [x, s, b]) => g.layerNorm(x, s, b, 1, 1e-3)),
    f64([[3, 5], [5]], (g, [x, s]) => g.layerNorm(x, s, null)),
  ],
  // Inference mode (running statistics as inputs), every input differentiated.
  BatchNormalization: [
    {
      dtype: 'float64',
      inputs: [{ shape: [2, 3, 4, 3] }, { shape: [3] }, { shape: [3] }, { shape: [3] }, { shape: [3], init: positive }],
      build: (g, [x, s, b, m, v]) => g.batchNormInference(x, s, b, m, v, 1e-3),
    },
    { dtype: 'float64', inputs: [{ shape: [5, 3] }, { shape: [3] }, { shape: [3] }, { shape: [3] }, { shape: [3], init: positive }], build: (g, [x, s, b, m, v]) => g.batchNormInference(x, s, b, m, v) },
  ],
  // Training mode; gamma and beta (the layer's own inputs) are differentiated too.
  BatchNorm: [
    ...([[[4, 3, 2, 3], true], [[5, 3], true], [[6, 2, 3, 3], false], [[5, 3], false]] as const).map(([shape, affine]) =>
      f64([[...shape]], (g, [x]) => batchNorm(new Model(g, true), 'bn', x, affine), { diffExtras: true }),
    ),
    // As an imported BatchNormalization in training mode builds it, gamma and beta as plain inputs.
    f64([[3, 2, 3, 2], [2], [2]], (g, [x, s, b]) => g.batchNormTraining(x, s, b, 1e-3)[0]),
  ],
};

// Ops whose rule returns no gradient by design.
const NO_GRADIENT = new Set(['Sign', 'StopGradient', 'Shape']);

test("convWeightGrad 'auto' picks by the layer's shape as documented, so its cases above cover every branch", () => {
  for (const [x, w, attrs, want] of AUTO_CASES) {
    const g = new Graph('float64');
    const y = g.conv(g.input('x', x), g.input('w', w), attrs);
    const a = attrs ?? {};
    const picked = autoWeightGrad(y, w, a.strides ?? [1, 1], a.pads ?? [0, 0, 0, 0]);
    assert.equal(picked, want, `x ${x}, w ${w}, ${JSON.stringify(attrs)}`);
  }
});

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

test("Graph.unfoldConv's forward is Conv's (the finite differences above check only its gradient against itself)", async () => {
  const { Graph } = await import('../tools/graph/graph.ts');
  const { session, run, randn } = await import('./helpers/ort.ts');
  const { Rng } = await import('../core/rng.ts');
  for (const c of CASES.UnfoldConv) {
    const [xs, ws] = c.inputs.map((i) => i.shape);
    const attrs = (c as UnfoldCase).attrs;
    const g = new Graph('float32');
    const [x, w] = [g.input('x', xs), g.input('w', ws)];
    g.output(g.unfoldConv(x, w, attrs), 'u');
    g.output(g.conv(x, w, attrs), 'c');
    const rng = new Rng(3);
    const out = await run(await session(g), g, new Map([[x, randn(rng, x.size(), 'float32')], [w, randn(rng, w.size(), 'float32')]]));
    const [u, ref] = [out.u as Float32Array, out.c as Float32Array];
    assert.equal(u.length, ref.length);
    const err = Math.max(...u.map((v, i) => Math.abs(v - ref[i])));
    assert.ok(err <= 1e-5 * Math.max(...ref.map(Math.abs)), `${JSON.stringify(attrs)}: max difference ${err}`);
  }
});

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

test('gradients keep only what the returned gradients read', async () => {
  // d/dw only: the Conv's input gradient (a ConvTranspose) and its constants would be dead weight,
  // which ORT would still run every step.
  const { Graph } = await import('../tools/graph/graph.ts');
  const { gradients } = await import('../tools/graph/grad.ts');
  const g = new Graph('float32');
  const x = g.input('x', [2, 3, 6, 6]);
  const w = g.input('w', [4, 3, 3, 3]);
  const y = g.conv(x, w, { strides: [2, 2], pads: [1, 1, 1, 1] });
  const before = g.mark();
  const [gw] = gradients(g, g.sumAll(g.mul(y, y)), [w]);
  const added = g.nodes.slice(before.nodes);
  assert.ok(added.length > 0 && !added.some((n) => n.op === 'ConvTranspose'), added.map((n) => n.op).join(' '));
  // Every added constant is read by a node.
  const read = new Set(g.nodes.flatMap((n) => n.inputs));
  assert.deepEqual(g.initializers.filter((i) => !read.has(i.value)).map((i) => i.value.name), []);
  // And the pruned graph still computes dw = conv-weight-gradient of 2y.
  const [gx] = gradients(g, g.sumAll(g.mul(y, y)), [x]);
  assert.ok(g.nodes.some((n) => n.op === 'ConvTranspose'));
  const { session, run, randn } = await import('./helpers/ort.ts');
  const { Rng } = await import('../core/rng.ts');
  g.output(gw, 'gw');
  g.output(gx, 'gx');
  const rng = new Rng(3);
  const out = await run(await session(g), g, new Map([[x, randn(rng, 216, 'float32')], [w, randn(rng, 108, 'float32')]]));
  assert.equal(out.gw.length, 108);
  assert.ok(Array.from(out.gw as Float32Array).some((v) => v !== 0));
});

test('an op without a rule fails, naming the op and the node', async () => {
  const { Graph } = await import('../tools/graph/graph.ts');
  const { gradients } = await import('../tools/graph/grad.ts');
  const g = new Graph('float64');
  const x = g.input('x', [3]);
  const y = raw(g, 'Floor', [x], [3]);
  assert.throws(() => gradients(g, g.reduceSum(y, [0], false), [x]), /^Error: no gradient rule for op Floor \(node floor_\d+\)$/);
});

test('training-mode batch norm: running statistics as PyTorch updates them (momentum 0.1, unbiased variance)', async () => {
  const { Graph } = await import('../tools/graph/graph.ts');
  const { session, run, randn } = await import('./helpers/ort.ts');
  const { Rng } = await import('../core/rng.ts');
  const [n, c, h, w] = [4, 3, 2, 2];
  const g = new Graph('float64');
  const x = g.input('x', [n, c, h, w]);
  const rm = g.input('rm', [c]);
  const rv = g.input('rv', [c]);
  const [, mean, varB] = g.batchNormTraining(x, null, null, 1e-5);
  const [m2, v2] = g.batchNormRunningStats(x, mean, varB, rm, rv, 0.1);
  g.output(m2, 'm');
  g.output(v2, 'v');
  const rng = new Rng(5);
  const xs = randn(rng, n * c * h * w, 'float64') as Float64Array;
  const rms = Float64Array.from([0.5, -1, 2]);
  const rvs = Float64Array.from([1, 3, 0.25]);
  const out = await run(await session(g), g, new Map([[x, xs], [rm, rms], [rv, rvs]]));
  for (let k = 0; k < c; k++) {
    const vals: number[] = [];
    for (let i = 0; i < n; i++) for (let j = 0; j < h * w; j++) vals.push(xs[(i * c + k) * h * w + j]);
    const mu = vals.reduce((a, b) => a + b, 0) / vals.length;
    const unbiased = vals.reduce((a, b) => a + (b - mu) ** 2, 0) / (vals.length - 1);
    assert.ok(Math.abs((out.m as Float64Array)[k] - (0.9 * rms[k] + 0.1 * mu)) < 1e-12, `running mean ${k}`);
    assert.ok(Math.abs((out.v as Float64Array)[k] - (0.9 * rvs[k] + 0.1 * unbiased)) < 1e-12, `running var ${k}`);
  }
});

test("MaxPool's two gradient routes agree where windows tie (ReLU zeros): the first maximum takes it", async () => {
  const { Graph } = await import('../tools/graph/graph.ts');
  const { gradients } = await import('../tools/graph/grad.ts');
  const { session, run } = await import('./helpers/ort.ts');
  const { Rng } = await import('../core/rng.ts');
  const rng = new Rng(9);
  const xs = Float32Array.from({ length: 2 * 2 * 7 * 7 }, () => (rng.uniform() < 0.6 ? 0 : Math.round(rng.uniform() * 3)));
  const grads: Float32Array[] = [];
  for (const how of ['indices', 'mask'] as const) {
    const g = new Graph('float32');
    const x = g.input('x', [2, 2, 7, 7]);
    const [y] = g.maxPool(x, [3, 3], [2, 2], [1, 1, 1, 1], { ceilMode: true });
    const r = g.constant(Float32Array.from({ length: y.size() }, (_, i) => 1 + (i % 5)), y.shape);
    const [gx] = gradients(g, g.sumAll(g.mul(y, r)), [x], { maxPoolGrad: how });
    g.output(gx, 'gx');
    grads.push((await run(await session(g), g, new Map([[x, xs]]))).gx as Float32Array);
  }
  assert.ok(xs.filter((v) => v === 0).length > 100, 'many ties');
  assert.deepEqual(Array.from(grads[1]), Array.from(grads[0]));
});

test("a MaxPool's Indices output is serialised only where something reads it", async () => {
  const { Graph } = await import('../tools/graph/graph.ts');
  const { gradients } = await import('../tools/graph/grad.ts');
  const { lowerGraph } = await import('../tools/onnx/encode.ts');
  for (const how of ['indices', 'mask'] as const) {
    const g = new Graph('float32');
    const x = g.input('x', [1, 2, 6, 6]);
    const [y] = g.maxPool(x, [3, 3], [2, 2], [1, 1, 1, 1]);
    const [gx] = gradients(g, g.sumAll(y), [x], { maxPoolGrad: how });
    g.output(gx, 'gx');
    const pools = lowerGraph(g, 't').nodes.filter((n) => n.op === 'MaxPool');
    assert.deepEqual(pools.map((n) => n.outputs.length), [how === 'indices' ? 2 : 1], how);
  }
});

test('ReduceMean with its axes as an attribute (opset 13), as an importer may hand it over', async () => {
  // ORT runs opset 18, where axes are an input: the gradient is built from the opset-13 node, then
  // the forward node is rewritten to its opset-18 form to run.
  const { Graph } = await import('../tools/graph/graph.ts');
  const { gradients } = await import('../tools/graph/grad.ts');
  const { session, run, randn } = await import('./helpers/ort.ts');
  const { Rng } = await import('../core/rng.ts');
  const g = new Graph('float64');
  const x = g.input('x', [3, 4, 5]);
  const y = raw(g, 'ReduceMean', [x], [3, 5], { axes: { ints: [-2] }, keepdims: { i: 0 } });
  const rng = new Rng(4);
  const r = randn(rng, 15, 'float64') as Float64Array;
  const [gx] = gradients(g, g.sumAll(g.mul(y, g.constant(r, [3, 5]))), [x]);
  g.output(gx, 'gx');
  const node = y.producer!;
  node.inputs.push(g.ints([1]));
  delete node.attrs.axes;
  const out = (await run(await session(g), g, new Map([[x, randn(rng, 60, 'float64')]]))).gx as Float64Array;
  for (let i = 0; i < 3; i++) for (let j = 0; j < 4; j++) for (let k = 0; k < 5; k++) assert.ok(Math.abs(out[(i * 4 + j) * 5 + k] - r[i * 5 + k] / 4) < 1e-12);
});

test('Pad in reflect mode is refused by name rather than differentiated as constant padding', async () => {
  const { Graph } = await import('../tools/graph/graph.ts');
  const { gradients } = await import('../tools/graph/grad.ts');
  const g = new Graph('float64');
  const x = g.input('x', [2, 4]);
  const y = raw(g, 'Pad', [x, g.ints([0, 1, 0, 1])], [2, 6], { mode: { s: 'reflect' } });
  assert.throws(() => gradients(g, g.sumAll(y), [x]), /^Error: Pad gradient: mode reflect is not supported, only constant \(node pad_\d+\)$/);
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
