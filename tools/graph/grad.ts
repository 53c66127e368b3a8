// Reverse-mode gradients: one table of per-op rules (each emits standard ops only) and one walker.
// Adding an op means adding a row; reaching an op without a row fails with the op's and node's name.

import { Graph, Value, fmt, type Node, type Shape } from './graph.ts';

/**
 * How Conv's weight gradient is formed; measured per EP (see bench/train-step):
 * - batch-as-channels: one Conv of x^T with gy^T as the kernel;
 * - im2col: strided slices concatenated, one batched MatMul, a sum over the batch;
 * - im2col-offsets: per kernel offset one strided slice of x^T and one MatMul, no big concatenation;
 * - batched-offsets: per kernel offset one slice of x as it lies (no transposes of x or gy) and one
 *   MatMul batched over the images, summed over them: the GEMMs split across threads by image, where
 *   im2col-offsets' single [O, N*Ho*Wo] x [N*Ho*Wo, C] GEMM has a 16 x 16 output MLAS cannot split;
 * - unfold-conv: im2col in one op, a grouped Conv (group C) with constant one-hot kernels that copies
 *   each kernel offset's window of every channel into its own output channel ([N, C*kh*kw, Ho, Wo], the
 *   forward's strides, pads and dilations), then batched-offsets' MatMul over the images on all offsets
 *   at once and a sum over them: one multi-threaded copy instead of kh*kw single-threaded Slices;
 * - unfold-depthwise: per kernel offset one depthwise Conv (one-hot [C, 1, kh, kw] kernel, MLAS's direct
 *   depthwise kernel, no im2col) cuts the window, then one MatMul batched over the images per offset.
 */
export type ConvWeightGrad = 'batch-as-channels' | 'im2col' | 'im2col-offsets' | 'batched-offsets' | 'unfold-conv' | 'unfold-depthwise';
export const CONV_WEIGHT_GRADS: readonly ConvWeightGrad[] = ['batch-as-channels', 'im2col', 'im2col-offsets', 'batched-offsets', 'unfold-conv', 'unfold-depthwise'];
/** How Conv's input gradient is formed: ConvTranspose, or (stride 1) a Conv with the flipped kernel. */
export type ConvInputGrad = 'conv-transpose' | 'conv';

export interface GradOptions {
  convWeightGrad?: ConvWeightGrad;
  convInputGrad?: ConvInputGrad;
}

const DEFAULT_OPTIONS: Readonly<Required<GradOptions>> = Object.freeze({ convWeightGrad: 'batch-as-channels', convInputGrad: 'conv-transpose' });

/**
 * One op's gradient: the gradients of the node's inputs (null or missing: none) from its outputs'.
 * `opts` is the walker's resolved options, passed down rather than held in module state.
 */
export type GradRule = (g: Graph, node: Node, gys: (Value | null)[], opts: Required<GradOptions>) => (Value | null)[];

function sameShape(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Sums a broadcast gradient back to the shape of the operand it belongs to. */
export function sumToShape(g: Graph, gx: Value, shape: Shape): Value {
  if (sameShape(gx.shape, shape)) return gx;
  const k = gx.rank - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < gx.rank; i++) {
    if (i < k || (shape[i - k] === 1 && gx.shape[i] !== 1)) axes.push(i);
  }
  const r = axes.length ? g.reduceSum(gx, axes, true) : gx;
  return sameShape(r.shape, shape) ? r : g.reshape(r, shape as number[]);
}

function expandTo(g: Graph, v: Value, shape: Shape): Value {
  return sameShape(v.shape, shape) ? v : g.expand(v, shape as number[]);
}

function swapLast(g: Graph, v: Value): Value {
  const perm = v.shape.map((_, i) => i);
  perm[perm.length - 1] = perm.length - 2;
  perm[perm.length - 2] = perm.length - 1;
  return g.transpose(v, perm);
}

function ints(node: Node, name: string, dflt: number[]): number[] {
  const a = node.attrs[name];
  return a && 'ints' in a ? a.ints : dflt;
}
function int(node: Node, name: string, dflt: number): number {
  const a = node.attrs[name];
  return a && 'i' in a ? a.i : dflt;
}
function float(node: Node, name: string, dflt: number): number {
  const a = node.attrs[name];
  return a && 'f' in a ? a.f : dflt;
}

/** The int64 constant behind an input (axes, shapes, slice bounds are always builder constants). */
function constInts(g: Graph, v: Value | null): number[] {
  const init = g.initializers.find((i) => i.value === v);
  if (!init) throw new Error(`expected a constant int64 input, got ${v?.name}`);
  return Array.from(init.data as BigInt64Array, Number);
}

function reduceRule(mean: boolean): GradRule {
  return (g, node, [gy]) => {
    const x = node.inputs[0]!;
    const axes = constInts(g, node.inputs[1]);
    const keep = int(node, 'keepdims', 1) === 1;
    let gk = gy!;
    if (!keep) gk = g.unsqueeze(gk, axes);
    if (mean) {
      const count = axes.reduce((a, ax) => a * (x.shape[ax] as number), 1);
      gk = g.mul(gk, g.scalar(1 / count, x.dtype));
    }
    return [expandTo(g, gk, x.shape), null];
  };
}

function convInputGrad(g: Graph, node: Node, gy: Value, how: ConvInputGrad): Value {
  const [x, w] = node.inputs as Value[];
  const strides = ints(node, 'strides', [1, 1]);
  const pads = ints(node, 'pads', [0, 0, 0, 0]);
  const dil = ints(node, 'dilations', [1, 1]);
  const group = int(node, 'group', 1);
  const [, , kh, kw] = w.dims();
  if (how === 'conv' && strides.every((v) => v === 1) && group === 1) {
    // Stride 1: dx = conv(gy, flip(W)^T) with the complementary padding.
    const wf = g.flip(g.transpose(w, [1, 0, 2, 3]), [2, 3]);
    const pd = [dil[0] * (kh - 1) - pads[0], dil[1] * (kw - 1) - pads[1], dil[0] * (kh - 1) - pads[2], dil[1] * (kw - 1) - pads[3]];
    if (pd.every((v) => v >= 0)) return g.conv(gy, wf, { pads: pd, dilations: dil });
  }
  // output_padding recovers the rows/columns a strided conv skipped (e.g. 1 for 3x3/s2/p1 on even sizes).
  const oph = ((x.shape[2] as number) + pads[0] + pads[2] - dil[0] * (kh - 1) - 1) % strides[0];
  const opw = ((x.shape[3] as number) + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) % strides[1];
  return g.convTranspose(gy, w, { strides, pads, dilations: dil, group, outputPadding: [oph, opw] });
}

function convWeightGrad(g: Graph, node: Node, gy: Value, how: ConvWeightGrad): Value {
  const [x, w] = node.inputs as Value[];
  const strides = ints(node, 'strides', [1, 1]);
  const pads = ints(node, 'pads', [0, 0, 0, 0]);
  const dil = ints(node, 'dilations', [1, 1]);
  if (int(node, 'group', 1) !== 1) throw new Error(`Conv weight gradient: grouped conv not supported (node ${node.name})`);
  const [o, c, kh, kw] = w.dims();
  if (how === 'batch-as-channels') {
    // Batch becomes the reduction channel: conv(x^T [C,N,H,W], gy^T [O,N,Ho,Wo]) = dW^T, stride <-> dilation.
    const xt = g.transpose(x, [1, 0, 2, 3]);
    const gt = g.transpose(gy, [1, 0, 2, 3]);
    let r = g.conv(xt, gt, { pads, strides: dil, dilations: strides });
    if (r.shape[2] !== kh || r.shape[3] !== kw) r = g.slice(r, [0, 0], [kh, kw], [2, 3]);
    return g.transpose(r, [1, 0, 2, 3]);
  }
  const n = x.shape[0] as number;
  const [ho, wo] = [gy.shape[2] as number, gy.shape[3] as number];
  if (how === 'im2col-offsets') {
    // Channels first, so each offset's slice is a [C, N*Ho*Wo] matrix for one large GEMM.
    const xt = g.transpose(x, [1, 0, 2, 3]);
    const xtp = pads.some((p) => p) ? g.pad(xt, [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]) : xt;
    const gt = g.reshape(g.transpose(gy, [1, 0, 2, 3]), [o, n * ho * wo]);
    const parts: Value[] = new Array(kh * kw);
    const unit = strides.every((s) => s === 1) && dil.every((d) => d === 1);
    for (let j = 0; j < kw; j++) {
      // Stride 1: one column shift per kernel column, then each row offset is a contiguous window of
      // the flattened rows (a fast block copy instead of a row-by-row strided one).
      const hp = xtp.shape[2] as number;
      const cols = unit ? (kw === 1 && xtp.shape[3] === wo ? xtp : g.slice(xtp, [j], [j + wo], [3])) : null;
      const flat = cols ? g.reshape(cols, [c, n, hp * wo]) : null;
      for (let i = 0; i < kh; i++) {
        let s: Value;
        if (flat) {
          s = kh === 1 && hp === ho ? flat : g.slice(flat, [i * wo], [i * wo + ho * wo], [2]);
        } else {
          const h0 = i * dil[0];
          const w0 = j * dil[1];
          s = g.sliceStrided(xtp, [h0, w0], [h0 + strides[0] * (ho - 1) + 1, w0 + strides[1] * (wo - 1) + 1], [2, 3], strides);
        }
        parts[i * kw + j] = g.unsqueeze(g.matmul(gt, g.transpose(g.reshape(s, [c, n * ho * wo]), [1, 0])), [2]); // [O, C, 1]
      }
    }
    return g.reshape(parts.length > 1 ? g.concat(parts, 2) : parts[0], [o, c, kh, kw]);
  }
  if (how === 'unfold-conv') return convWeightGradUnfold(g, x, gy, [o, c, kh, kw], { strides, pads, dilations: dil });
  if (how === 'unfold-depthwise') return convWeightGradDepthwise(g, x, gy, [o, c, kh, kw], { strides, pads, dilations: dil });
  if (how === 'batched-offsets') {
    const xp = pads.some((p) => p) ? g.pad(x, [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]) : x;
    const gr = g.reshape(gy, [n, o, ho * wo]);
    const hp = xp.shape[2] as number;
    const unit = strides.every((s) => s === 1) && dil.every((d) => d === 1);
    const parts: Value[] = new Array(kh * kw);
    for (let j = 0; j < kw; j++) {
      // Stride 1: as im2col-offsets, one column shift per kernel column, then each row offset is a
      // contiguous window of the flattened rows.
      const cols = unit ? (kw === 1 && xp.shape[3] === wo ? xp : g.slice(xp, [j], [j + wo], [3])) : null;
      const flat = cols ? g.reshape(cols, [n, c, hp * wo]) : null;
      for (let i = 0; i < kh; i++) {
        let s: Value;
        if (flat) s = kh === 1 && hp === ho ? flat : g.slice(flat, [i * wo], [i * wo + ho * wo], [2]);
        else {
          const h0 = i * dil[0];
          const w0 = j * dil[1];
          s = g.reshape(g.sliceStrided(xp, [h0, w0], [h0 + strides[0] * (ho - 1) + 1, w0 + strides[1] * (wo - 1) + 1], [2, 3], strides), [n, c, ho * wo]);
        }
        parts[i * kw + j] = g.unsqueeze(g.matmul(gr, swapLast(g, s)), [3]); // [N, O, C, 1]
      }
    }
    const all = parts.length > 1 ? g.concat(parts, 3) : parts[0]; // [N, O, C, kh*kw]
    return g.reshape(g.reduceSum(all, [0], false), [o, c, kh, kw]);
  }
  // A misspelt preset value would otherwise fall through to im2col below.
  if (how !== 'im2col') throw new Error(`convWeightGrad "${how}": unknown (accepted: ${CONV_WEIGHT_GRADS.join(', ')})`);
  // im2col by strided slices of the padded input, then one batched MatMul and a sum over the batch.
  const xp = pads.some((p) => p) ? g.pad(x, [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]) : x;
  const cols: Value[] = [];
  for (let i = 0; i < kh; i++) {
    for (let j = 0; j < kw; j++) {
      const h0 = i * dil[0];
      const w0 = j * dil[1];
      cols.push(g.sliceStrided(xp, [h0, w0], [h0 + strides[0] * (ho - 1) + 1, w0 + strides[1] * (wo - 1) + 1], [2, 3], strides));
    }
  }
  const stacked = g.reshape(g.concat(cols, 1), [n, kh * kw * c, ho * wo]); // [N, (i,j,c), HoWo]
  const gr = g.reshape(gy, [n, o, ho * wo]);
  const per = g.matmul(gr, swapLast(g, stacked)); // [N, O, (i,j,c)]
  const dw = g.reshape(g.reduceSum(per, [0], false), [o, kh, kw, c]);
  return g.transpose(dw, [0, 3, 1, 2]);
}

/** One-hot unfolding kernels per graph, shared by every Conv with the same channels and kernel size. */
const unfoldKernels = new WeakMap<Graph, Map<string, Value>>();

/** [C*kh*kw, 1, kh, kw]: output channel c*kh*kw + i*kw + j picks input channel c at kernel offset (i, j). */
function unfoldKernel(g: Graph, c: number, kh: number, kw: number, dtype: Value['dtype']): Value {
  const key = `${c}x${kh}x${kw}|${dtype}`;
  let cache = unfoldKernels.get(g);
  if (!cache) unfoldKernels.set(g, (cache = new Map()));
  let k = cache.get(key);
  if (!k) {
    const kk = kh * kw;
    const data = new Array<number>(c * kk * kk).fill(0);
    for (let ch = 0; ch < c; ch++) for (let t = 0; t < kk; t++) data[(ch * kk + t) * kk + t] = 1;
    k = g.constant(data, [c * kk, 1, kh, kw], dtype);
    cache.set(key, k);
  }
  return k;
}

/** unfold-conv (see ConvWeightGrad): dW[o, c, i, j] = sum_n unfold(x)[n, c*kh*kw + i*kw + j, :] . gy[n, o, :]. */
function convWeightGradUnfold(g: Graph, x: Value, gy: Value, [o, c, kh, kw]: number[], attrs: { strides: number[]; pads: number[]; dilations: number[] }): Value {
  const n = x.shape[0] as number;
  const hw = (gy.shape[2] as number) * (gy.shape[3] as number);
  const unf = g.conv(x, unfoldKernel(g, c, kh, kw, x.dtype), { ...attrs, group: c }); // [N, C*kh*kw, Ho, Wo]
  // The large unfolded input as the GEMM's A (streamed as it lies), gy^T as its B: MLAS packs B for
  // every image, and packing the small [Ho*Wo, O] instead of the [Ho*Wo, C*kh*kw] side is ~kh*kw*C/O
  // times fewer bytes copied.
  const per = g.matmul(g.reshape(unf, [n, c * kh * kw, hw]), swapLast(g, g.reshape(gy, [n, o, hw]))); // [N, C*kh*kw, O]
  const sum = g.reshape(g.reduceSum(per, [0], false), [c, kh * kw, o]);
  return g.reshape(g.transpose(sum, [2, 0, 1]), [o, c, kh, kw]);
}

/** unfold-depthwise (see ConvWeightGrad): the window of offset (i, j) as a depthwise Conv with a one-hot kernel. */
function convWeightGradDepthwise(g: Graph, x: Value, gy: Value, [o, c, kh, kw]: number[], attrs: { strides: number[]; pads: number[]; dilations: number[] }): Value {
  const n = x.shape[0] as number;
  const hw = (gy.shape[2] as number) * (gy.shape[3] as number);
  const gt = swapLast(g, g.reshape(gy, [n, o, hw])); // [N, HoWo, O]
  const parts: Value[] = [];
  for (let t = 0; t < kh * kw; t++) {
    const data = new Array<number>(c * kh * kw).fill(0);
    for (let ch = 0; ch < c; ch++) data[ch * kh * kw + t] = 1;
    const win = g.conv(x, g.constant(data, [c, 1, kh, kw], x.dtype), { ...attrs, group: c }); // [N, C, Ho, Wo]
    parts.push(g.unsqueeze(g.matmul(g.reshape(win, [n, c, hw]), gt), [3])); // [N, C, O, 1]
  }
  const all = parts.length > 1 ? g.concat(parts, 3) : parts[0]; // [N, C, O, kh*kw]
  return g.reshape(g.transpose(g.reduceSum(all, [0], false), [1, 0, 2]), [o, c, kh, kw]);
}

export const GRAD_RULES: Record<string, GradRule> = {
  Identity: (_g, _n, [gy]) => [gy],
  StopGradient: () => [null],
  Relu: (g, n, [gy]) => [g.mul(gy!, g.sign(n.outputs[0]))], // y >= 0, so Sign(y) is the 0/1 mask
  Sigmoid: (g, n, [gy]) => {
    const y = n.outputs[0];
    return [g.mul(gy!, g.mul(y, g.sub(g.scalar(1, y.dtype), y)))];
  },
  Softplus: (g, n, [gy]) => [g.mul(gy!, g.sigmoid(n.inputs[0]!))],
  Exp: (g, n, [gy]) => [g.mul(gy!, n.outputs[0])],
  Log: (g, n, [gy]) => [g.div(gy!, n.inputs[0]!)],
  Sqrt: (g, n, [gy]) => [g.div(g.mul(gy!, g.scalar(0.5, gy!.dtype)), n.outputs[0])],
  Neg: (g, _n, [gy]) => [g.neg(gy!)],
  Reciprocal: (g, n, [gy]) => {
    const y = n.outputs[0];
    return [g.neg(g.mul(gy!, g.mul(y, y)))];
  },
  Sign: () => [null],
  Add: (g, n, [gy]) => [sumToShape(g, gy!, n.inputs[0]!.shape), sumToShape(g, gy!, n.inputs[1]!.shape)],
  Sub: (g, n, [gy]) => [sumToShape(g, gy!, n.inputs[0]!.shape), sumToShape(g, g.neg(gy!), n.inputs[1]!.shape)],
  Mul: (g, n, [gy]) => {
    const [a, b] = n.inputs as Value[];
    return [sumToShape(g, g.mul(gy!, b), a.shape), sumToShape(g, g.mul(gy!, a), b.shape)];
  },
  Div: (g, n, [gy]) => {
    const [a, b] = n.inputs as Value[];
    const ga = g.div(gy!, b);
    return [sumToShape(g, ga, a.shape), sumToShape(g, g.neg(g.mul(ga, n.outputs[0])), b.shape)];
  },
  MatMul: (g, n, [gy]) => {
    const [a, b] = n.inputs as Value[];
    return [sumToShape(g, g.matmul(gy!, swapLast(g, b)), a.shape), sumToShape(g, g.matmul(swapLast(g, a), gy!), b.shape)];
  },
  Gemm: (g, n, [gy]) => {
    const [a, b, c] = n.inputs;
    const transA = int(n, 'transA', 0) === 1;
    const transB = int(n, 'transB', 0) === 1;
    const alpha = float(n, 'alpha', 1);
    const beta = float(n, 'beta', 1);
    // d(opA) = alpha gy opB^T; d(opB) = alpha opA^T gy; transpose back where the input was transposed.
    const dOpA = g.gemm(gy!, b!, null, { transB: !transB, alpha });
    const dOpB = g.gemm(a!, gy!, null, { transA: !transA, alpha });
    const dA = transA ? g.transpose(dOpA, [1, 0]) : dOpA;
    const dB = transB ? g.transpose(dOpB, [1, 0]) : dOpB;
    const dC = c ? sumToShape(g, beta === 1 ? gy! : g.mul(gy!, g.scalar(beta, gy!.dtype)), c.shape) : null;
    return c ? [dA, dB, dC] : [dA, dB];
  },
  Conv: (g, n, [gy], opts) => {
    const grads: (Value | null)[] = [convInputGrad(g, n, gy!, opts.convInputGrad), convWeightGrad(g, n, gy!, opts.convWeightGrad)];
    if (n.inputs[2]) grads.push(g.reduceSum(gy!, [0, 2, 3], false));
    return grads;
  },
  ReduceSum: reduceRule(false),
  ReduceMean: reduceRule(true),
  ReduceLogSumExp: (g, n, [gy]) => {
    const x = n.inputs[0]!;
    const axes = constInts(g, n.inputs[1]);
    const keep = int(n, 'keepdims', 1) === 1;
    const y = keep ? n.outputs[0] : g.unsqueeze(n.outputs[0], axes);
    const gk = keep ? gy! : g.unsqueeze(gy!, axes);
    return [g.mul(gk, g.exp(g.sub(x, y))), null];
  },
  Softmax: (g, n, [gy]) => {
    const y = n.outputs[0];
    const axis = int(n, 'axis', -1);
    return [g.mul(y, g.sub(gy!, g.reduceSum(g.mul(gy!, y), [axis], true)))];
  },
  LogSoftmax: (g, n, [gy]) => {
    const y = n.outputs[0];
    const axis = int(n, 'axis', -1);
    return [g.sub(gy!, g.mul(g.exp(y), g.reduceSum(gy!, [axis], true)))];
  },
  GlobalAveragePool: (g, n, [gy]) => {
    const x = n.inputs[0]!;
    const hw = (x.shape[2] as number) * (x.shape[3] as number);
    return [expandTo(g, g.mul(gy!, g.scalar(1 / hw, x.dtype)), x.shape)];
  },
  MaxPool: (g, n, [gy]) => {
    // ONNX MaxPool indices are flat over the whole NCHW input: scatter-add the gradient through them.
    const x = n.inputs[0]!;
    const total = x.size();
    const flat = g.scatterAdd(g.zeros([total], x.dtype), g.reshape(n.outputs[1], [-1]), g.reshape(gy!, [-1]));
    return [g.reshape(flat, x.dims())];
  },
  Reshape: (g, n, [gy]) => [g.reshape(gy!, n.inputs[0]!.dims()), null],
  Flatten: (g, n, [gy]) => [g.reshape(gy!, n.inputs[0]!.dims())],
  Squeeze: (g, n, [gy]) => [g.reshape(gy!, n.inputs[0]!.dims()), null],
  Unsqueeze: (g, n, [gy]) => [g.reshape(gy!, n.inputs[0]!.dims()), null],
  Transpose: (g, n, [gy]) => {
    const perm = ints(n, 'perm', []);
    const inv = perm.map((_, i) => perm.indexOf(i));
    return [g.transpose(gy!, inv)];
  },
  Slice: (g, n, [gy]) => {
    const x = n.inputs[0]!;
    const starts = constInts(g, n.inputs[1]);
    const ends = constInts(g, n.inputs[2]);
    const axes = constInts(g, n.inputs[3]);
    if (n.inputs[4]) throw new Error(`Slice gradient: only step 1 slices are differentiable (node ${n.name})`);
    const r = x.rank;
    const pads = new Array(2 * r).fill(0);
    axes.forEach((a, i) => {
      const d = x.shape[a] as number;
      pads[a] = starts[i];
      pads[a + r] = d - Math.min(ends[i], d);
    });
    return [g.pad(gy!, pads), null, null, null];
  },
  Concat: (g, n, [gy]) => {
    const axis = int(n, 'axis', 0);
    let off = 0;
    return n.inputs.map((x) => {
      const len = x!.shape[axis] as number;
      const part = g.slice(gy!, [off], [off + len], [axis]);
      off += len;
      return part;
    });
  },
  Expand: (g, n, [gy]) => [sumToShape(g, gy!, n.inputs[0]!.shape), null],
  Pad: (g, n, [gy]) => {
    const x = n.inputs[0]!;
    const pads = constInts(g, n.inputs[1]);
    const r = x.rank;
    const axes = x.shape.map((_, i) => i).filter((i) => pads[i] || pads[i + r]);
    if (pads.some((p) => p < 0)) throw new Error(`Pad gradient: negative pads (node ${n.name})`);
    return [axes.length ? g.slice(gy!, axes.map((a) => pads[a]), axes.map((a) => pads[a] + (x.shape[a] as number)), axes) : gy, null];
  },
  // Composites (Graph.composite): builder-internal names whose forward is already standard ops.
  // Training-mode batch norm from nn/layers batchNorm: inputs [x, gamma, beta] (or [x]), saved
  // [xhat, inv, gamma] (or [xhat, inv]; gamma as the forward read it), results [y, mean, var].
  BatchNorm: (g, n, [gy, gMean, gVar]) => {
    // mean and var feed only the running statistics; a gradient through them would need more terms.
    if (gMean || gVar) throw new Error(`BatchNorm gradient: only the normalised output is differentiable (node ${n.name})`);
    const x = n.inputs[0]!;
    const [xhat, inv, gamma] = n.inputs.slice(n.composite!.inputs, n.inputs.length - n.outputs.length) as Value[];
    const axes = ints(n, 'axes', []);
    const count = axes.reduce((a, ax) => a * (x.shape[ax] as number), 1);
    // dx = gamma * inv * (gy - mean(gy) - xhat * mean(gy * xhat)); the two means are dbeta and
    // dgamma over the count, so dx = gy * a + xhat * b + c with per-channel a, b, c (fewer full passes).
    const dgamma = g.reduceSum(g.mul(gy!, xhat), axes, true);
    const dbeta = g.reduceSum(gy!, axes, true);
    const a = gamma ? g.mul(inv, g.reshape(gamma, inv.dims())) : inv;
    const invCount = g.scalar(-1 / count, x.dtype);
    const b = g.mul(g.mul(a, dgamma), invCount);
    const c = g.mul(g.mul(a, dbeta), invCount);
    const dx = g.add(g.add(g.mul(gy!, a), g.mul(xhat, b)), c);
    if (!gamma) return [dx];
    const ch = [x.shape[1] as number];
    return [dx, g.reshape(dgamma, ch), g.reshape(dbeta, ch)];
  },
};

/**
 * Gradients of scalar `loss` with respect to `wrt`, built into `g`. Inputs that `loss` does not
 * depend on get zeros.
 */
export function gradients(g: Graph, loss: Value, wrt: Value[], opts: GradOptions = {}): Value[] {
  if (loss.rank !== 0) throw new Error(`gradients: loss must be a scalar, got shape ${fmt(loss.shape)}`);
  const options: Required<GradOptions> = { ...DEFAULT_OPTIONS, ...opts };
  const nodes = g.nodes.slice();
  // Forward: which values depend on wrt.
  const live = new Set<Value>(wrt);
  for (const n of nodes) if (n.inputs.some((i) => i && live.has(i))) for (const o of n.outputs) live.add(o);
  const grads = new Map<Value, Value>();
  grads.set(loss, g.scalar(1, loss.dtype));
  g.scope('grad', () => {
    for (let k = nodes.length - 1; k >= 0; k--) {
      const n = nodes[k];
      if (!n.outputs.some((o) => live.has(o))) continue;
      const gys = n.outputs.map((o) => grads.get(o) ?? null);
      if (gys.every((x) => x === null)) continue;
      const op = n.composite?.op ?? n.op;
      const rule = GRAD_RULES[op];
      if (!rule) throw new Error(`no gradient rule for op ${op} (node ${n.name})`);
      const gxs = g.scope(n.name, () => rule(g, n, gys, options));
      n.inputs.forEach((x, i) => {
        const gx = gxs[i];
        if (!x || !gx || !live.has(x)) return;
        if (!sameShape(gx.shape, x.shape)) {
          throw new Error(`gradient rule for ${op} (node ${n.name}) gave ${fmt(gx.shape)} for input ${fmt(x.shape)}`);
        }
        const prev = grads.get(x);
        grads.set(x, prev ? g.add(prev, gx) : gx);
      });
    }
  });
  return wrt.map((w) => grads.get(w) ?? g.zeros(w.dims(), w.dtype));
}
