// The ONNX ops an imported model may use, each lowered onto the graph builder (so shapes are checked
// and every op has a gradient rule in tools/graph/grad.ts), plus the shape arithmetic that folds to
// constants (fold.ts). One row per op; an op without a row is refused at import, naming op and node.

import { Graph, Value } from '../graph/graph.ts';
import { Model } from '../nn/layers.ts';
import type { OnnxNode } from '../../core/onnx/model.ts';

export interface LowerCtx {
  g: Graph;
  model: Model;
  node: OnnxNode;
  /** Input k as a graph value (weights become state or graph constants, as the import decided). */
  value(k: number): Value;
  /** Input k as a host constant (shape arguments); throws naming the node when it is computed at run time. */
  consts(k: number): number[];
  /** Input k as host constant values, symbolic sizes kept as their names (Reshape targets). */
  constsRaw(k: number): (number | string)[];
  constDims(k: number): number[];
  has(k: number): boolean;
  /** Batch norm: whether this node trains (batch statistics, running statistics as state). */
  bnTraining(): boolean;
  bnState(k: number): Value;
  /** Batch norm in training: the new value of its running statistic input k (state `next`). */
  bnUpdate(k: number, v: Value): void;
}

export type Lowering = (c: LowerCtx) => Value[];

const ints = (n: OnnxNode, name: string, d: number[]): number[] => ((n.attrs[name] as { ints?: number[] } | undefined)?.ints ?? d);
const int = (n: OnnxNode, name: string, d: number): number => ((n.attrs[name] as { i?: number } | undefined)?.i ?? d);
const float = (n: OnnxNode, name: string, d: number): number => ((n.attrs[name] as { f?: number } | undefined)?.f ?? d);
const str = (n: OnnxNode, name: string, d: string): string => ((n.attrs[name] as { s?: string } | undefined)?.s ?? d);

function noAutoPad(n: OnnxNode): void {
  if (str(n, 'auto_pad', 'NOTSET') !== 'NOTSET') throw new Error(`node '${n.name}' (${n.op}): auto_pad ${str(n, 'auto_pad', '')} is not supported (export with explicit pads)`);
}

/**
 * A Conv from a 1x1 map to a 1x1 map (the last stages of torchvision models at 32 px) sees one tap of
 * its kernel: the layer is a Gemm of the [N, C] input with that tap ([O, C]; depthwise: a per-channel
 * Mul). ORT's Conv runs it as one GEMM per image with a single column (bench/RESULTS.md, #32: 4-9x
 * PyTorch's time at 1x1 and 2x2 maps); one Gemm takes the batch at once. Null where it does not apply
 * (larger maps, no tap in range, 1 < groups < channels).
 */
function onePixelConv(g: Graph, x: Value, w: Value, a: { strides: number[]; pads: number[]; dilations: number[]; group: number }, b: Value | null): Value | null {
  const [, ch, h, wd] = x.shape;
  const [o, cg, kh, kw] = w.shape as number[];
  if (h !== 1 || wd !== 1) return null;
  // Along one axis: one output position (0 <= pads + 1 - extent < stride), and the tap that reads input 0.
  const tap = (k: number, pad: number, end: number, dil: number, stride: number) => {
    const span = pad + end - dil * (k - 1);
    return span >= 0 && span < stride && pad % dil === 0 && pad / dil < k ? pad / dil : -1;
  };
  const [ti, tj] = [tap(kh, a.pads[0], a.pads[2], a.dilations[0], a.strides[0]), tap(kw, a.pads[1], a.pads[3], a.dilations[1], a.strides[1])];
  if (ti < 0 || tj < 0) return null;
  const wt = kh === 1 && kw === 1 ? w : g.slice(w, [ti, tj], [ti + 1, tj + 1], [2, 3]);
  const xf = g.flatten(x, 1); // [N, C]
  let y: Value;
  if (a.group === 1) y = g.gemm(xf, g.reshape(wt, [o, cg]), b, { transB: true });
  else if (cg === 1 && a.group === ch) {
    const m = o / (ch as number);
    const prod = m === 1 ? g.mul(xf, g.reshape(wt, [1, o])) : g.flatten(g.mul(g.unsqueeze(xf, [2]), g.reshape(wt, [1, ch as number, m])), 1);
    y = b ? g.add(prod, g.reshape(b, [1, o])) : prod;
  } else return null;
  return g.unsqueeze(y, [2, 3]);
}

/**
 * A dense Conv on a map of at most 4 pixels (2x2: torchvision's second-to-last stage at 32 px) as one
 * linear map over the whole batch: y[n, (o, q)] = x[n, (c, p)] W[(o, q), (c, p)], with W gathered from
 * the kernel by a constant one-hot tap matrix (which tap joins input pixel p to output pixel q; none for
 * padding). At 2x2 with a 3x3 kernel and pad 1 every output pixel sees 4 taps, so the GEMM does the
 * Conv's own multiply-adds, in one [N, C*4] x [C*4, O*Ho*Wo] product instead of ORT's per-image Conv
 * with 4 columns (and its gradients are GEMMs too, in place of ConvTranspose and the batch-as-channels
 * Conv). Null elsewhere.
 */
function smallMapConv(g: Graph, x: Value, w: Value, a: { strides: number[]; pads: number[]; dilations: number[]; group: number }, b: Value | null): Value | null {
  const [, ch, h, wd] = x.shape as number[];
  const [o, cg, kh, kw] = w.shape as number[];
  // Dense only: the same map per channel for depthwise layers (Mul + ReduceSum) took 10% off a
  // mobilenet_v2 step but its early layers' gradients then missed torch's by 10x float32's own error
  // (test/import-torch.test.ts; cause not found): not used.
  if (a.group !== 1 || h * wd > 4 || kh * kw < h * wd) return null;
  const ho = Math.floor((h + a.pads[0] + a.pads[2] - a.dilations[0] * (kh - 1) - 1) / a.strides[0]) + 1;
  const wo = Math.floor((wd + a.pads[1] + a.pads[3] - a.dilations[1] * (kw - 1) - 1) / a.strides[1]) + 1;
  // taps[(i, j), (q, p)] = 1 where kernel tap (i, j) joins input pixel p to output pixel q.
  const taps = new Array(kh * kw * ho * wo * h * wd).fill(0);
  for (let qy = 0; qy < ho; qy++)
    for (let qx = 0; qx < wo; qx++)
      for (let i = 0; i < kh; i++)
        for (let j = 0; j < kw; j++) {
          const [py, px] = [qy * a.strides[0] - a.pads[0] + i * a.dilations[0], qx * a.strides[1] - a.pads[1] + j * a.dilations[1]];
          if (py >= 0 && py < h && px >= 0 && px < wd) taps[(i * kw + j) * ho * wo * h * wd + (qy * wo + qx) * h * wd + py * wd + px] = 1;
        }
  const sel = g.constant(taps, [kh * kw, ho * wo * h * wd], x.dtype);
  const bias = (y: Value) => (b ? g.add(y, g.reshape(b, [1, o, 1, 1])) : y);
  const wq = g.reshape(g.matmul(g.reshape(w, [o * cg, kh * kw]), sel), [o, cg, ho * wo, h * wd]); // [O, C, q, p]
  const big = g.reshape(g.transpose(wq, [0, 2, 1, 3]), [o * ho * wo, ch * h * wd]); // rows (o, q), columns (c, p)
  return bias(g.reshape(g.gemm(g.flatten(x, 1), big, null, { transB: true }), [0, o, ho, wo]));
}

const unary = (op: 'Relu' | 'Sigmoid' | 'Sqrt' | 'Exp' | 'Log' | 'Neg' | 'Reciprocal' | 'Abs'): Lowering => (c) => [c.g.unary(op, c.value(0))];
const binary = (op: 'Add' | 'Sub' | 'Mul' | 'Div' | 'Pow'): Lowering => (c) => [c.g.binary(op, c.value(0), c.value(1))];
function batchNorm(c: LowerCtx): Value[] {
  const { g, node } = c;
  if (int(node, 'training_mode', 0) === 1) {
    throw new Error(`node '${node.name}' (BatchNormalization) was exported in training mode: export the model in eval mode (model.eval()) with training=torch.onnx.TrainingMode.PRESERVE to keep the BN layers`);
  }
  const x = c.value(0);
  const eps = float(node, 'epsilon', 1e-5);
  const ch = x.shape[1] as number;
  const bshape = x.rank === 4 ? [1, ch, 1, 1] : [1, ch];
  const axes = x.rank === 4 ? [0, 2, 3] : [0];
  const gamma = c.value(1);
  const beta = c.value(2);
  const epsV = g.scalar(eps);
  if (!c.bnTraining()) {
    const inv = g.reciprocal(g.sqrt(g.add(c.value(4), epsV)));
    const scale = g.mul(inv, gamma);
    const shift = g.sub(beta, g.mul(c.value(3), scale));
    return [g.add(g.mul(x, g.reshape(scale, bshape)), g.reshape(shift, bshape))];
  }
  const rm = c.bnState(3);
  const rv = c.bnState(4);
  // One composite op with a closed-form gradient (GRAD_RULES.BatchNorm), as the built-in encoders' batch
  // norm, with one correction pass on the mean: ORT's float32 mean of a channel that is constant over the
  // batch (dead after a ReLU6, common in mobilenet_v2 at small sizes) can be an ulp off, which leaves
  // +-tiny where PyTorch's is exactly 0, and the next Clip then passes a gradient amplified by
  // 1/sqrt(eps). Subtracting the first mean is exact for such a channel, so the corrected mean is exact.
  const [y, mean, varB] = g.composite('BatchNorm', [x, gamma, beta], { axes: { ints: axes } }, ([xs, gs, bs]) => {
    const m0 = g.reduceMean(xs, axes, true);
    const mean = g.add(m0, g.reduceMean(g.sub(xs, m0), axes, true));
    const xc = g.sub(xs, mean);
    const varB = g.reduceMean(g.mul(xc, xc), axes, true);
    const inv = g.reciprocal(g.sqrt(g.add(varB, epsV)));
    const xhat = g.mul(xc, inv);
    return { results: [g.add(g.mul(xhat, g.reshape(gs, bshape)), g.reshape(bs, bshape)), mean, varB], saved: [xhat, inv, gs] };
  });
  // ONNX momentum is the weight of the running value (PyTorch's 1 - momentum); variance unbiased, as PyTorch keeps it.
  const count = axes.reduce((a, ax) => a * (x.shape[ax] as number), 1);
  const keep = g.scalar(float(node, 'momentum', 0.9));
  const mom = g.scalar(1 - float(node, 'momentum', 0.9));
  c.bnUpdate(3, g.add(g.mul(rm, keep), g.mul(g.reshape(mean, [ch]), mom)));
  c.bnUpdate(4, g.add(g.mul(rv, keep), g.mul(g.mul(g.reshape(varB, [ch]), g.scalar(count / Math.max(count - 1, 1))), mom)));
  return [y];
}

function reshapeTarget(x: Value, target: (number | string)[], node: OnnxNode): number[] {
  // A symbolic entry (the batch) must be the input's own dimension at that place: keep it (0).
  return target.map((d, i) => {
    if (typeof d === 'number') return d === 0 && int(node, 'allowzero', 0) ? d : d;
    if (x.shape[i] === d) return 0;
    throw new Error(`node '${node.name}' (Reshape): symbolic size '${d}' moves to another axis; not supported`);
  });
}

/** Opset 13 gives ReduceMean's axes as an attribute, 18 as an input (ReduceSum: from 13). */
const reduce = (op: 'ReduceMean' | 'ReduceSum'): Lowering => (c) => {
  const x = c.value(0);
  const axes = c.has(1) ? c.consts(1) : ints(c.node, 'axes', x.shape.map((_, i) => i));
  return [c.g.reduce(op, x, axes, int(c.node, 'keepdims', 1) === 1)];
};

export const OPS: Record<string, Lowering> = {
  Identity: (c) => [c.value(0)],
  Dropout: (c) => [c.value(0)],
  Relu: unary('Relu'),
  Sigmoid: unary('Sigmoid'),
  Sqrt: unary('Sqrt'),
  Exp: unary('Exp'),
  Log: unary('Log'),
  Neg: unary('Neg'),
  Reciprocal: unary('Reciprocal'),
  Abs: unary('Abs'),
  Add: binary('Add'),
  Sub: binary('Sub'),
  Mul: binary('Mul'),
  Div: binary('Div'),
  Pow: binary('Pow'),
  Erf: (c) => [c.g.unary('Erf', c.value(0))],
  HardSwish: (c) => [c.g.unary('HardSwish', c.value(0))],
  HardSigmoid: (c) => [c.g.hardSigmoid(c.value(0), float(c.node, 'alpha', 0.2), float(c.node, 'beta', 0.5))],
  Clip: (c) => {
    const x = c.value(0);
    // Opset >= 11 gives the bounds as inputs, older opsets as attributes; either way they become scalar inputs.
    const bound = (k: number, attr: string) => (c.has(k) ? c.g.scalar(c.consts(k)[0], x.dtype) : c.node.attrs[attr] ? c.g.scalar(float(c.node, attr, 0), x.dtype) : null);
    const lo = bound(1, 'min');
    const hi = bound(2, 'max');
    return [c.g.clip(x, lo ?? (hi ? c.g.scalar(-3.4028234663852886e38, x.dtype) : null), hi)];
  },
  Conv: (c) => {
    const n = c.node;
    if (str(n, 'auto_pad', 'NOTSET') !== 'NOTSET') throw new Error(`node '${n.name}' (Conv): auto_pad ${str(n, 'auto_pad', '')} is not supported (export with explicit pads)`);
    const x = c.value(0);
    const w = c.value(1);
    if (x.rank !== 4) throw new Error(`node '${n.name}' (Conv): only 2-D convolutions (NCHW) are supported`);
    const attrs = { strides: ints(n, 'strides', [1, 1]), pads: ints(n, 'pads', [0, 0, 0, 0]), dilations: ints(n, 'dilations', [1, 1]), group: int(n, 'group', 1) };
    const b = c.has(2) ? c.value(2) : null;
    return [onePixelConv(c.g, x, w, attrs, b) ?? smallMapConv(c.g, x, w, attrs, b) ?? c.g.conv(x, w, attrs, b)];
  },
  BatchNormalization: batchNorm,
  Gemm: (c) => {
    const n = c.node;
    return [c.g.gemm(c.value(0), c.value(1), c.has(2) ? c.value(2) : null, { transA: int(n, 'transA', 0) === 1, transB: int(n, 'transB', 0) === 1, alpha: float(n, 'alpha', 1), beta: float(n, 'beta', 1) })];
  },
  MatMul: (c) => [c.g.matmul(c.value(0), c.value(1))],
  MaxPool: (c) => {
    const x = c.value(0);
    const n = c.node;
    noAutoPad(n);
    if (n.outputs.length > 1 && n.outputs[1]) throw new Error(`node '${n.name}' (MaxPool): the indices output is not supported`);
    return [c.g.maxPool(x, ints(n, 'kernel_shape', []), ints(n, 'strides', [1, 1]), ints(n, 'pads', [0, 0, 0, 0]), { dilations: ints(n, 'dilations', [1, 1]), ceilMode: int(n, 'ceil_mode', 0) === 1 })[0]];
  },
  AveragePool: (c) => {
    const n = c.node;
    noAutoPad(n);
    return [c.g.averagePool(c.value(0), ints(n, 'kernel_shape', []), { strides: ints(n, 'strides', [1, 1]), pads: ints(n, 'pads', [0, 0, 0, 0]), ceilMode: int(n, 'ceil_mode', 0) === 1, countIncludePad: int(n, 'count_include_pad', 0) === 1 })];
  },
  GlobalAveragePool: (c) => [c.g.globalAvgPool(c.value(0))],
  Flatten: (c) => [c.g.flatten(c.value(0), int(c.node, 'axis', 1))],
  Reshape: (c) => {
    const x = c.value(0);
    return [c.g.reshape(x, reshapeTarget(x, c.constsRaw(1), c.node))];
  },
  Transpose: (c) => {
    const x = c.value(0);
    return [c.g.transpose(x, ints(c.node, 'perm', x.shape.map((_, i) => x.rank - 1 - i)))];
  },
  Concat: (c) => {
    const xs = c.node.inputs.map((_, k) => c.value(k));
    return [c.g.concat(xs, int(c.node, 'axis', 0))];
  },
  Slice: (c) => {
    const x = c.value(0);
    const starts = c.has(1) ? c.consts(1) : ints(c.node, 'starts', []);
    const ends = c.has(2) ? c.consts(2) : ints(c.node, 'ends', []);
    const axes = (c.has(3) ? c.consts(3) : ints(c.node, 'axes', starts.map((_, i) => i))).map((a) => (a < 0 ? a + x.rank : a));
    const steps = c.has(4) ? c.consts(4) : starts.map(() => 1);
    return [c.g.sliceGeneral(x, starts, ends, axes, steps)];
  },
  Pad: (c) => {
    const x = c.value(0);
    if (str(c.node, 'mode', 'constant') !== 'constant') throw new Error(`node '${c.node.name}' (Pad): mode ${str(c.node, 'mode', '')} is not supported (constant only)`);
    const pads = c.has(1) ? c.consts(1) : ints(c.node, 'pads', []);
    if (c.has(2) && c.consts(2)[0] !== 0) throw new Error(`node '${c.node.name}' (Pad): only zero padding is supported`);
    if (pads.some((p) => p < 0)) throw new Error(`node '${c.node.name}' (Pad): negative pads are not supported`);
    return [c.g.pad(x, pads)];
  },
  ReduceMean: reduce('ReduceMean'),
  ReduceSum: reduce('ReduceSum'),
  Unsqueeze: (c) => [c.g.unsqueeze(c.value(0), c.has(1) ? c.consts(1) : ints(c.node, 'axes', []))],
  Squeeze: (c) => {
    const x = c.value(0);
    const axes = c.has(1) ? c.consts(1) : ints(c.node, 'axes', x.shape.map((d, i) => (d === 1 ? i : -1)).filter((i) => i >= 0));
    return [c.g.squeeze(x, axes)];
  },
  Softmax: (c) => [c.g.softmax(c.value(0), int(c.node, 'axis', -1))],
  // A Cast of a computed tensor to float (a Cast of shapes folds on the host).
  Cast: (c) => {
    const to = int(c.node, 'to', 1);
    if (to !== 1) throw new Error(`node '${c.node.name}' (Cast): only casts to float32 of computed tensors are supported`);
    return [c.g.cast(c.value(0), 'float32')];
  },
  Gather: (c) => [c.g.gather(c.value(0), c.g.constant(c.consts(1), c.constDims(1), 'int64'), int(c.node, 'axis', 0))],
  LayerNormalization: (c) => {
    if (c.node.outputs.filter((o) => o).length > 1) throw new Error(`node '${c.node.name}' (LayerNormalization): only the normalised output is supported`);
    return [c.g.layerNorm(c.value(0), c.value(1), c.has(2) ? c.value(2) : null, int(c.node, 'axis', -1), float(c.node, 'epsilon', 1e-5))];
  },
};

/** Ops that never reach the graph: they fold on the host (Shape of a known size, Constant). */
export const HOST_OPS = new Set(['Constant', 'Shape', 'ConstantOfShape']);
