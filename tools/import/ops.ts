// The ONNX ops an imported model may use, each lowered onto the graph builder (so shapes are checked
// and every op has a gradient rule in tools/graph/grad.ts), plus the shape arithmetic that folds to
// constants (fold.ts). One row per op; an op without a row is refused at import, naming op and node.

import { Graph, Value, type Attr, type DType, type Shape } from '../graph/graph.ts';
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

const counters = new WeakMap<Graph, number>();
/** A node of an op the builder has no method for; the name cannot meet a builder name (those end in _N). */
export function emit(g: Graph, op: string, inputs: (Value | null)[], shape: Shape, dtype: DType, attrs: Record<string, Attr> = {}): Value {
  const k = counters.get(g) ?? 0;
  counters.set(g, k + 1);
  const out = new Value(g, `import.${k}.${op.toLowerCase()}`, shape, dtype);
  g.addNode(op, inputs, [out], attrs);
  return out;
}

function pool2d(c: LowerCtx, x: Value): { kernel: number[]; strides: number[]; pads: number[]; shape: Shape } {
  const n = c.node;
  if (str(n, 'auto_pad', 'NOTSET') !== 'NOTSET') throw new Error(`node '${n.name}' (${n.op}): auto_pad ${str(n, 'auto_pad', '')} is not supported (export with explicit pads)`);
  const kernel = ints(n, 'kernel_shape', []);
  const strides = ints(n, 'strides', [1, 1]);
  const pads = ints(n, 'pads', [0, 0, 0, 0]);
  if (ints(n, 'dilations', [1, 1]).some((d) => d !== 1)) throw new Error(`node '${n.name}' (${n.op}): dilations are not supported`);
  const [b, ch, h, w] = x.shape as number[];
  const out = (len: number, k: number, s: number, p: number) => (int(n, 'ceil_mode', 0) ? Math.ceil : Math.floor)((len + p - k) / s) + 1;
  const oh = out(h, kernel[0], strides[0], pads[0] + pads[2]);
  const ow = out(w, kernel[1], strides[1], pads[1] + pads[3]);
  if (int(n, 'ceil_mode', 0) && (oh !== Math.floor((h + pads[0] + pads[2] - kernel[0]) / strides[0]) + 1 || ow !== Math.floor((w + pads[1] + pads[3] - kernel[1]) / strides[1]) + 1)) {
    throw new Error(`node '${n.name}' (${n.op}): ceil_mode changes the output size at this input size; not supported`);
  }
  return { kernel, strides, pads, shape: [b, ch, oh, ow] };
}

const unary = (op: 'Relu' | 'Sigmoid' | 'Sqrt' | 'Exp' | 'Log' | 'Neg' | 'Reciprocal' | 'Abs'): Lowering => (c) => [c.g.unary(op, c.value(0))];
const binary = (op: 'Add' | 'Sub' | 'Mul' | 'Div' | 'Pow'): Lowering => (c) => [c.g.binary(op, c.value(0), c.value(1))];
/** Element-wise ops the builder has no method for (their gradients are rows of the same name). */
const elementwise = (op: string, attrs: (n: OnnxNode) => Record<string, Attr> = () => ({})): Lowering => (c) => {
  const x = c.value(0);
  return [emit(c.g, op, [x], x.shape, x.dtype, attrs(c.node))];
};

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
  // Differentiated as one op by GRAD_RULES.BatchNorm, as the built-in encoders' batch norm (nn/layers.ts).
  const [y, mean, varB] = g.composite('BatchNorm', [x, gamma, beta], { axes: { ints: axes } }, ([xs, gs, bs]) => {
    const mean = g.reduceMean(xs, axes, true);
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
  Erf: elementwise('Erf'),
  Tanh: elementwise('Tanh'),
  HardSigmoid: elementwise('HardSigmoid', (n) => ({ alpha: { f: float(n, 'alpha', 0.2) }, beta: { f: float(n, 'beta', 0.5) } })),
  HardSwish: elementwise('HardSwish'),
  Clip: (c) => {
    const x = c.value(0);
    // Opset >= 11 gives the bounds as inputs, older opsets as attributes; either way they become scalar inputs.
    const lo = c.has(1) ? c.consts(1)[0] : float(c.node, 'min', -3.4028234663852886e38);
    const hi = c.has(2) ? c.consts(2)[0] : float(c.node, 'max', 3.4028234663852886e38);
    return [emit(c.g, 'Clip', [x, c.g.scalar(lo, x.dtype), c.g.scalar(hi, x.dtype)], x.shape, x.dtype)];
  },
  Conv: (c) => {
    const n = c.node;
    if (str(n, 'auto_pad', 'NOTSET') !== 'NOTSET') throw new Error(`node '${n.name}' (Conv): auto_pad ${str(n, 'auto_pad', '')} is not supported (export with explicit pads)`);
    const x = c.value(0);
    const w = c.value(1);
    if (x.rank !== 4) throw new Error(`node '${n.name}' (Conv): only 2-D convolutions (NCHW) are supported`);
    return [c.g.conv(x, w, { strides: ints(n, 'strides', [1, 1]), pads: ints(n, 'pads', [0, 0, 0, 0]), dilations: ints(n, 'dilations', [1, 1]), group: int(n, 'group', 1) }, c.has(2) ? c.value(2) : null)];
  },
  BatchNormalization: batchNorm,
  Gemm: (c) => {
    const n = c.node;
    return [c.g.gemm(c.value(0), c.value(1), c.has(2) ? c.value(2) : null, { transA: int(n, 'transA', 0) === 1, transB: int(n, 'transB', 0) === 1, alpha: float(n, 'alpha', 1), beta: float(n, 'beta', 1) })];
  },
  MatMul: (c) => [c.g.matmul(c.value(0), c.value(1))],
  MaxPool: (c) => {
    const x = c.value(0);
    const p = pool2d(c, x);
    if (c.node.outputs.length > 1 && c.node.outputs[1]) throw new Error(`node '${c.node.name}' (MaxPool): the indices output is not supported`);
    const [y] = c.g.maxPool(x, p.kernel, p.strides, p.pads);
    if (y.shape.some((d, i) => d !== p.shape[i])) throw new Error(`node '${c.node.name}' (MaxPool): ceil_mode is not supported`);
    return [y];
  },
  AveragePool: (c) => {
    const x = c.value(0);
    const p = pool2d(c, x);
    const attrs: Record<string, Attr> = { kernel_shape: { ints: p.kernel }, strides: { ints: p.strides }, pads: { ints: p.pads }, count_include_pad: { i: int(c.node, 'count_include_pad', 0) } };
    if (int(c.node, 'ceil_mode', 0)) attrs.ceil_mode = { i: 1 };
    return [emit(c.g, 'AveragePool', [x], p.shape, x.dtype, attrs)];
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
    if (steps.some((s) => s !== 1)) throw new Error(`node '${c.node.name}' (Slice): only step 1 slices are supported`);
    const clamp = (v: number, d: number) => Math.max(0, Math.min(d, v < 0 ? v + d : v));
    const s = axes.map((a, i) => clamp(starts[i], x.shape[a] as number));
    const e = axes.map((a, i) => clamp(ends[i], x.shape[a] as number));
    return [c.g.slice(x, s, e, axes)];
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
  Gather: (c) => {
    const x = c.value(0);
    const idx = c.consts(1);
    const axis = int(c.node, 'axis', 0);
    const ax = axis < 0 ? axis + x.rank : axis;
    const idxDims = c.constDims(1);
    const shape = [...x.shape.slice(0, ax), ...idxDims, ...x.shape.slice(ax + 1)];
    return [emit(c.g, 'Gather', [x, c.g.constant(idx, idxDims, 'int64')], shape, x.dtype, { axis: { i: ax } })];
  },
  LayerNormalization: (c) => {
    const x = c.value(0);
    const attrs: Record<string, Attr> = { axis: { i: int(c.node, 'axis', -1) }, epsilon: { f: float(c.node, 'epsilon', 1e-5) } };
    if (c.node.outputs.filter((o) => o).length > 1) throw new Error(`node '${c.node.name}' (LayerNormalization): only the normalised output is supported`);
    return [emit(c.g, 'LayerNormalization', [x, c.value(1), c.has(2) ? c.value(2) : null], x.shape, x.dtype, attrs)];
  },
};

/** Ops that never reach the graph: they fold on the host (Shape of a known size, Constant). */
export const HOST_OPS = new Set(['Constant', 'Shape', 'ConstantOfShape', 'Cast']);
