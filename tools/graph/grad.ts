// Reverse-mode gradients: one table of per-op rules (each emits standard ops only) and one walker.
// Adding an op means adding a row; reaching an op without a row fails with the op's and node's name.

import { Graph, Value, fmt, sliceRange, type DType, type Node, type Shape } from './graph.ts';

/**
 * How Conv's weight gradient is formed; measured per EP (see bench/train-step):
 * - batch-as-channels: one Conv of x^T with gy^T as the kernel;
 * - im2col: strided slices concatenated, one batched MatMul, a sum over the batch;
 * - im2col-offsets: per kernel offset one strided slice of x^T and one MatMul, no big concatenation;
 * - batched-offsets: per kernel offset one slice of x as it lies (no transposes of x or gy) and one
 *   MatMul batched over the images, summed over them: the GEMMs split across threads by image, where
 *   im2col-offsets' single [O, N*Ho*Wo] x [N*Ho*Wo, C] GEMM has a 16 x 16 output MLAS cannot split;
 * - unfold-conv: im2col in one op (Graph.unfold), a grouped Conv with constant one-hot kernels that copies
 *   each kernel offset's window of every channel into its own output channel ([N, C*kh*kw, Ho, Wo], the
 *   forward's strides, pads and dilations; one zero channel more where C is even, for WebGPU), then
 *   batched-offsets' MatMul over the images on all offsets at once and a sum over them: one
 *   multi-threaded copy instead of kh*kw single-threaded Slices;
 * - unfold-depthwise: per kernel offset one depthwise Conv (one-hot [C, 1, kh, kw] kernel, MLAS's direct
 *   depthwise kernel, no im2col) cuts the window, then one MatMul batched over the images per offset;
 * - unfold-forward: the forward itself unfolds (Graph.unfoldConv: unfold-conv's grouped Conv, then
 *   y = W [O, C*kh*kw] x U as a MatMul batched over the images) and the weight gradient reuses that U
 *   (GRAD_RULES.UnfoldConv): one unfold per layer instead of two, U kept alive until the backward (not
 *   faster on 2 CPU cores, +0.4-1.5 GB peak RSS: RESULTS #33). The training graph's builders
 *   emit it (tools/artifacts/build.ts); a plain Conv node, e.g. an imported model's, falls back to
 *   unfold-conv;
 * - auto: chosen per Conv node by its shape (autoWeightGrad below): the formulations that batch one
 *   GEMM per image (unfold-conv; for a pointwise Conv, 1x1 / stride 1 / no pads, the same MatMul on x
 *   as it lies, which is its own unfolding) where the output map has more pixels than the layer has
 *   output channels, im2col-offsets' one GEMM over the whole batch per kernel offset elsewhere.
 */
export type ConvWeightGrad = 'batch-as-channels' | 'im2col' | 'im2col-offsets' | 'batched-offsets' | 'unfold-conv' | 'unfold-depthwise' | 'unfold-forward' | 'auto';
export const CONV_WEIGHT_GRADS: readonly ConvWeightGrad[] = ['batch-as-channels', 'im2col', 'im2col-offsets', 'batched-offsets', 'unfold-conv', 'unfold-depthwise', 'unfold-forward', 'auto'];
/** How Conv's input gradient is formed: ConvTranspose, or (stride 1) a Conv with the flipped kernel (depthwise: always that at stride 1). */
export type ConvInputGrad = 'conv-transpose' | 'conv';

/**
 * How a depthwise Conv's (one input channel per group) weight gradient is formed:
 * - offsets: the kernel offsets' strided slices of x stacked and multiplied with gy, one GEMM per channel;
 * - grouped-conv (the default): one grouped Conv with the batch as the reduction channel (x^T as
 *   [1, C*N, H, W], gy^T as a [C, N, Ho, Wo] kernel; as fast or up to 2x faster than offsets at
 *   MobileNet shapes on 2 CPU threads, bench/depthwise-grad.ts);
 * - per-image: no transposes: x as [1, N*C, H, W] and gy as an [N*C*m, 1, Ho, Wo] kernel, one depthwise
 *   Conv over every (image, channel) pair, then a sum over the images;
 * - mul-reduce: per kernel offset the strided slice of x times gy, summed over the images and positions
 *   (Mul + ReduceSum, both threaded elementwise kernels; no Conv, no GEMM).
 * Each keeps the forward's strides (as the correlation's dilation), pads and dilations.
 */
export type DepthwiseWeightGrad = 'offsets' | 'grouped-conv' | 'per-image' | 'mul-reduce';
export const DEPTHWISE_WEIGHT_GRADS: readonly DepthwiseWeightGrad[] = ['offsets', 'grouped-conv', 'per-image', 'mul-reduce'];

/**
 * How MaxPool's gradient is routed: through the forward's flat argmax indices, scatter-added
 * ('indices'), or per window offset, to the first element equal to the window's max ('mask': no
 * Indices output, which ORT's WebGPU EP does not implement; see bench/webgpu-grad-ops.ts).
 */
export type MaxPoolGrad = 'indices' | 'mask';

export interface GradOptions {
  convWeightGrad?: ConvWeightGrad;
  convInputGrad?: ConvInputGrad;
  depthwiseWeightGrad?: DepthwiseWeightGrad;
  maxPoolGrad?: MaxPoolGrad;
}

const DEFAULT_OPTIONS: Readonly<Required<GradOptions>> = Object.freeze({ convWeightGrad: 'batch-as-channels', convInputGrad: 'conv-transpose', depthwiseWeightGrad: 'grouped-conv', maxPoolGrad: 'indices' });

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

function isFloat(t: DType): boolean {
  return t === 'float32' || t === 'float64';
}

/** Whether `v` is a builder constant (an initializer): such inputs need no gradient, so rules skip them. */
function isConst(g: Graph, v: Value | null): boolean {
  return !!v && g.initializers.some((i) => i.value === v);
}

/** The values behind a constant input (any numeric type), or null where it is computed. */
function constValues(g: Graph, v: Value | null): number[] | null {
  const init = v ? g.initializers.find((i) => i.value === v) : undefined;
  return init ? Array.from(init.data as ArrayLike<number | bigint>, Number) : null;
}

function axisOf(node: Node, rank: number, dflt: number): number {
  const a = int(node, 'axis', dflt);
  return a < 0 ? a + rank : a;
}

/** gy where `cond` holds, 0 elsewhere. */
function masked(g: Graph, cond: Value, gy: Value): Value {
  return g.whereOp(cond, gy, g.scalar(0, gy.dtype));
}

/** The int64 constant behind an input (axes, shapes, slice bounds are always builder constants). */
function constInts(g: Graph, v: Value | null): number[] {
  const init = g.initializers.find((i) => i.value === v);
  if (!init) throw new Error(`expected a constant int64 input, got ${v?.name}`);
  return Array.from(init.data as BigInt64Array, Number);
}

/** A reduction's axes: the input (opset 18) or the attribute (opset 13); none means all (or, with noop_with_empty_axes, none). */
function reduceAxes(g: Graph, node: Node): number[] {
  const x = node.inputs[0]!;
  const given = node.inputs[1] ? constInts(g, node.inputs[1]) : ints(node, 'axes', []);
  if (!given.length) return int(node, 'noop_with_empty_axes', 0) ? [] : x.shape.map((_, i) => i);
  return given.map((a) => (a < 0 ? a + x.rank : a)).sort((a, b) => a - b);
}

function reduceRule(mean: boolean): GradRule {
  return (g, node, [gy]) => {
    const x = node.inputs[0]!;
    const axes = reduceAxes(g, node);
    const keep = int(node, 'keepdims', 1) === 1;
    let gk = gy!;
    if (!keep && axes.length) gk = g.unsqueeze(gk, axes);
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
  const [o, cg, kh, kw] = w.dims();
  // Depthwise at stride 1 takes the flipped-kernel Conv whatever `how` says: 1.4-2.8x faster than
  // ConvTranspose at MobileNet shapes, in paired runs (bench/depthwise-grad).
  const depthwise = cg === 1 && group > 1;
  if ((how === 'conv' || depthwise) && strides.every((v) => v === 1)) {
    // Stride 1: dx = conv(gy, flip(W)^T) with the complementary padding; grouped, W^T per group.
    const wt = group === 1 ? g.transpose(w, [1, 0, 2, 3]) : depthwise && o === group ? w : g.reshape(g.transpose(g.reshape(w, [group, o / group, cg, kh, kw]), [0, 2, 1, 3, 4]), [group * cg, o / group, kh, kw]);
    const wf = g.flip(wt, [2, 3]);
    const pd = [dil[0] * (kh - 1) - pads[0], dil[1] * (kw - 1) - pads[1], dil[0] * (kh - 1) - pads[2], dil[1] * (kw - 1) - pads[3]];
    if (pd.every((v) => v >= 0)) return g.conv(gy, wf, { pads: pd, dilations: dil, group });
  }
  // output_padding recovers the rows/columns a strided conv skipped (e.g. 1 for 3x3/s2/p1 on even sizes).
  const oph = ((x.shape[2] as number) + pads[0] + pads[2] - dil[0] * (kh - 1) - 1) % strides[0];
  const opw = ((x.shape[3] as number) + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) % strides[1];
  return g.convTranspose(gy, w, { strides, pads, dilations: dil, group, outputPadding: [oph, opw] });
}

function convWeightGrad(g: Graph, node: Node, gy: Value, how: ConvWeightGrad, depthwise: DepthwiseWeightGrad): Value {
  const [x, w] = node.inputs as Value[];
  const strides = ints(node, 'strides', [1, 1]);
  const pads = ints(node, 'pads', [0, 0, 0, 0]);
  const dil = ints(node, 'dilations', [1, 1]);
  const group = int(node, 'group', 1);
  if (group !== 1) return groupedWeightGrad(g, node, gy, group, depthwise);
  const [o, c, kh, kw] = w.dims();
  if (how === 'auto') {
    const pick = autoWeightGrad(gy, [o, c, kh, kw], strides, pads);
    if (pick === 'pointwise') return weightGradFromUnfolded(g, x, gy, [o, c, kh, kw]);
    how = pick;
  }
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
  if (how === 'unfold-conv' || how === 'unfold-forward') return convWeightGradUnfold(g, x, gy, [o, c, kh, kw], { strides, pads, dilations: dil });
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

/**
 * Grouped (and depthwise) Conv's weight gradient, whatever ConvWeightGrad says (those are dense
 * formulations). Batch as the reduction channel, per group: X'[c', (g, n)] = x[n, (g, c')] and
 * W'[(g, o'), n] = gy[n, (g, o')]; one Conv with `group` groups, stride <-> dilation, gives dW^T.
 * Depthwise (one input channel per group) with 'offsets' instead stacks each kernel offset's strided
 * slice of x, channels first, and multiplies it with gy in one GEMM per channel.
 */
function groupedWeightGrad(g: Graph, node: Node, gy: Value, group: number, depthwise: DepthwiseWeightGrad): Value {
  const [x, w] = node.inputs as Value[];
  const strides = ints(node, 'strides', [1, 1]);
  const pads = ints(node, 'pads', [0, 0, 0, 0]);
  const dil = ints(node, 'dilations', [1, 1]);
  const [n, c, h, wd] = x.dims();
  const [o, cg, kh, kw] = w.dims();
  const og = o / group;
  if (cg === 1 && depthwise === 'offsets') {
    // Channels first, so each channel's kernel offsets are one small batched GEMM: [9, K] x [K, og].
    const xp = pads.some((p) => p) ? g.pad(x, [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]) : x;
    const xt = g.transpose(xp, [1, 0, 2, 3]); // [C, N, Hp, Wp]
    const [ho, wo] = [gy.shape[2] as number, gy.shape[3] as number];
    const k = n * ho * wo;
    const gt = og === 1 ? g.reshape(g.transpose(gy, [1, 0, 2, 3]), [c, k, 1]) : g.reshape(g.transpose(g.reshape(gy, [n, c, og, ho * wo]), [1, 0, 3, 2]), [c, k, og]);
    const parts: Value[] = [];
    for (let i = 0; i < kh; i++) {
      for (let j = 0; j < kw; j++) {
        const [h0, w0] = [i * dil[0], j * dil[1]];
        parts.push(g.reshape(g.sliceStrided(xt, [h0, w0], [h0 + strides[0] * (ho - 1) + 1, w0 + strides[1] * (wo - 1) + 1], [2, 3], strides), [c, 1, k]));
      }
    }
    const cols = parts.length > 1 ? g.concat(parts, 1) : parts[0]; // [C, kh*kw, K]
    const dw = g.matmul(cols, gt); // [C, kh*kw, og]
    return og === 1 ? g.reshape(dw, [o, 1, kh, kw]) : g.reshape(g.transpose(dw, [0, 2, 1]), [o, 1, kh, kw]);
  }
  if (cg === 1 && depthwise === 'per-image') {
    // Group (image, channel): input x[n, c] alone, kernels gy[n, (c, o')]; output [1, N*O, kh', kw'].
    const xr = g.reshape(x, [1, n * c, h, wd]);
    const gk = g.reshape(gy, [n * o, 1, gy.shape[2] as number, gy.shape[3] as number]);
    let r = g.conv(xr, gk, { pads, strides: dil, dilations: strides, group: n * c });
    if (r.shape[2] !== kh || r.shape[3] !== kw) r = g.slice(r, [0, 0], [kh, kw], [2, 3]);
    return g.reshape(g.reduceSum(g.reshape(r, [n, o, kh * kw]), [0], false), [o, 1, kh, kw]);
  }
  if (cg === 1 && depthwise === 'mul-reduce') {
    const xp = pads.some((p) => p) ? g.pad(x, [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]) : x;
    const [ho, wo] = [gy.shape[2] as number, gy.shape[3] as number];
    // Channel multiplier m > 1: gy as [N, C, m, Ho, Wo] against each slice broadcast over m.
    const gm = og === 1 ? gy : g.reshape(gy, [n, c, og, ho, wo]);
    const parts: Value[] = [];
    for (let i = 0; i < kh; i++) {
      for (let j = 0; j < kw; j++) {
        const [h0, w0] = [i * dil[0], j * dil[1]];
        const s = g.sliceStrided(xp, [h0, w0], [h0 + strides[0] * (ho - 1) + 1, w0 + strides[1] * (wo - 1) + 1], [2, 3], strides);
        const prod = og === 1 ? g.mul(s, gm) : g.mul(g.unsqueeze(s, [2]), gm);
        parts.push(g.reshape(g.reduceSum(prod, og === 1 ? [0, 2, 3] : [0, 3, 4], false), [o, 1])); // (c, o') order = O
      }
    }
    return g.reshape(parts.length > 1 ? g.concat(parts, 1) : parts[0], [o, 1, kh, kw]);
  }
  if (depthwise !== 'grouped-conv' && depthwise !== 'offsets') throw new Error(`depthwiseWeightGrad "${depthwise}": unknown (accepted: ${DEPTHWISE_WEIGHT_GRADS.join(', ')})`);
  const xt = cg === 1 ? g.reshape(g.transpose(x, [1, 0, 2, 3]), [1, c * n, h, wd]) : g.reshape(g.transpose(g.reshape(x, [n, group, cg, h, wd]), [2, 1, 0, 3, 4]), [cg, group * n, h, wd]);
  const gt = g.transpose(gy, [1, 0, 2, 3]); // [O, N, Ho, Wo]: output channels are already (group, o') ordered
  let r = g.conv(xt, gt, { pads, strides: dil, dilations: strides, group }); // [Cg, O, kh', kw']
  if (r.shape[2] !== kh || r.shape[3] !== kw) r = g.slice(r, [0, 0], [kh, kw], [2, 3]);
  return cg === 1 ? g.reshape(r, [o, 1, kh, kw]) : g.transpose(r, [1, 0, 2, 3]);
}

/** The divisor-aware gradient of AveragePool: each output's gradient spread evenly over its window. */
function averagePoolGrad(g: Graph, n: Node, gy: Value): Value {
  const x = n.inputs[0]!;
  const [bn, c, h, w] = x.dims();
  const [ho, wo] = [gy.shape[2] as number, gy.shape[3] as number];
  const k = ints(n, 'kernel_shape', []);
  const s = ints(n, 'strides', [1, 1]);
  const pads = ints(n, 'pads', [0, 0, 0, 0]);
  if (ints(n, 'dilations', [1, 1]).some((d) => d !== 1)) throw new Error(`AveragePool gradient: dilations are not supported (node ${n.name})`);
  const auto = n.attrs.auto_pad;
  if (auto && 's' in auto && auto.s !== 'NOTSET') throw new Error(`AveragePool gradient: auto_pad ${auto.s} is not supported; give explicit pads (node ${n.name})`);
  // y = sum(window's real inputs) / D, D per output position (window size or real count, and what
  // ceil mode does at the edge). D is read off the forward itself, so the rule follows whatever the
  // runtime divides by: AveragePool(ones) = real count / D, with the real count counted here.
  const ones = g.constant(new Array(h * w).fill(1), [1, 1, h, w], x.dtype);
  const frac = g.averagePool(ones, k, { strides: s, pads, ceilMode: int(n, 'ceil_mode', 0) === 1, countIncludePad: int(n, 'count_include_pad', 0) === 1 });
  const real = (len: number, out: number, kk: number, ss: number, p0: number) =>
    Array.from({ length: out }, (_, i) => Math.max(0, Math.min(i * ss - p0 + kk, len) - Math.max(i * ss - p0, 0)));
  const rh = real(h, ho, k[0], s[0], pads[0]);
  const rw = real(w, wo, k[1], s[1], pads[1]);
  const inv = rh.flatMap((a) => rw.map((b) => (a * b ? 1 / (a * b) : 0)));
  const scale = g.mul(frac, g.constant(inv, [1, 1, ho, wo], x.dtype));
  // Spread: ConvTranspose with a ones kernel, one channel per (image, channel), cropped back to H x W.
  const tail = [0, 1].map((d) => s[d] * ([ho, wo][d] - 1) + k[d] - pads[d] - [h, w][d]);
  const ct = g.convTranspose(g.reshape(g.mul(gy, scale), [bn * c, 1, ho, wo]), g.constant(new Array(k[0] * k[1]).fill(1), [1, 1, k[0], k[1]], x.dtype), {
    strides: s,
    pads: [pads[0], pads[1], Math.max(tail[0], 0), Math.max(tail[1], 0)],
    outputPadding: [Math.max(-tail[0], 0), Math.max(-tail[1], 0)],
  });
  return g.reshape(ct, [bn, c, h, w]);
}

/**
 * MaxPool's gradient without argmax indices: for each window offset in row-major order, the strided
 * slice of the (-inf padded) input that the offset sees is compared with the output; the first offset
 * equal to the max takes gy (ties as the argmax breaks them: the first in the window), spread back to
 * where that slice came from.
 */
function maxPoolMaskGrad(g: Graph, n: Node, gy: Value): Value {
  const x = n.inputs[0]!;
  const y = n.outputs[0];
  const [h, w] = [x.shape[2] as number, x.shape[3] as number];
  const [ho, wo] = [y.shape[2] as number, y.shape[3] as number];
  const k = ints(n, 'kernel_shape', []);
  const s = ints(n, 'strides', [1, 1]);
  const d = ints(n, 'dilations', [1, 1]);
  const pads = ints(n, 'pads', [0, 0, 0, 0]);
  if (int(n, 'storage_order', 0) !== 0) throw new Error(`MaxPool gradient: storage_order 1 is not supported (node ${n.name})`);
  // Padded extent: the pads, and in ceil mode whatever the last window reaches beyond them.
  const ext = [0, 1].map((a) => Math.max([h, w][a] + pads[a] + pads[a + 2], ([ho, wo][a] - 1) * s[a] + (k[a] - 1) * d[a] + 1));
  const tail = [0, 1].map((a) => ext[a] - [h, w][a] - pads[a]);
  const xp = g.pad(x, [0, 0, pads[0], pads[1], 0, 0, tail[0], tail[1]], -Infinity);
  const zero = g.scalar(0, gy.dtype);
  let free: Value | null = null;
  let sum: Value | null = null;
  for (let i = 0; i < k[0]; i++) {
    for (let j = 0; j < k[1]; j++) {
      const [h0, w0] = [i * d[0], j * d[1]];
      const seen = g.sliceStrided(xp, [h0, w0], [h0 + s[0] * (ho - 1) + 1, w0 + s[1] * (wo - 1) + 1], [2, 3], s);
      // `free`: no earlier offset took it (And/Not only: ORT's WebGPU EP has no Or).
      let hit = g.compare('Equal', seen, y);
      if (free) hit = g.and(hit, free);
      free = free ? g.and(free, g.not(hit)) : g.not(hit);
      // Back to the padded grid: s-1 zeros after each element (stride), then offset by (h0, w0).
      let part = g.whereOp(hit, gy, zero);
      if (s[0] > 1 || s[1] > 1) {
        const dims = part.dims();
        part = g.pad(g.unsqueeze(g.unsqueeze(part, [3]), [5]), [0, 0, 0, 0, 0, 0, 0, 0, 0, s[0] - 1, 0, s[1] - 1]);
        part = g.reshape(part, [dims[0], dims[1], ho * s[0], wo * s[1]]);
      }
      const span = [0, 1].map((a) => Math.min(part.shape[2 + a] as number, ext[a] - [h0, w0][a]));
      if (span[0] < (part.shape[2] as number) || span[1] < (part.shape[3] as number)) part = g.slice(part, [0, 0], span, [2, 3]);
      part = g.pad(part, [0, 0, h0, w0, 0, 0, ext[0] - h0 - span[0], ext[1] - w0 - span[1]]);
      sum = sum ? g.add(sum, part) : part;
    }
  }
  return g.slice(sum!, [pads[0], pads[1]], [pads[0] + h, pads[1] + w], [2, 3]);
}

/** Slice's gradient along each sliced axis: gy spread back to the positions it came from, zeros elsewhere. */
function sliceGrad(g: Graph, n: Node, gy: Value): Value {
  const x = n.inputs[0]!;
  const r = x.rank;
  const starts = constInts(g, n.inputs[1]);
  const ends = constInts(g, n.inputs[2]);
  const axes = n.inputs[3] ? constInts(g, n.inputs[3]).map((a) => (a < 0 ? a + r : a)) : starts.map((_, i) => i);
  const steps = n.inputs[4] ? constInts(g, n.inputs[4]) : starts.map(() => 1);
  const pads = new Array(2 * r).fill(0);
  let gx = gy;
  axes.forEach((a, i) => {
    const d = x.shape[a] as number;
    const { first, count } = sliceRange(d, starts[i], ends[i], steps[i], `Slice gradient (node ${n.name})`);
    let step = steps[i];
    let lo = first;
    if (step < 0) {
      // A reversed slice is the forward slice of the same elements, reversed.
      gx = g.flip(gx, [a]);
      step = -step;
      lo = first - (count - 1) * step;
    }
    const span = (count - 1) * step + 1;
    if (step > 1 && count > 1) {
      // Step-1 zeros after each element: [.., count, 1, ..] padded to [.., count, step, ..], merged, cut to the span.
      const pz = new Array(2 * (gx.rank + 1)).fill(0);
      pz[a + 1 + gx.rank + 1] = step - 1;
      const spread = g.pad(g.unsqueeze(gx, [a + 1]), pz);
      const dims = gx.dims();
      dims[a] = count * step;
      gx = g.slice(g.reshape(spread, dims), [0], [span], [a]);
    }
    pads[a] = lo;
    pads[a + r] = d - lo - span;
  });
  return pads.some((p) => p) ? g.pad(gx, pads) : gx;
}

/**
 * convWeightGrad 'auto': the formulation for one dense Conv node, by its shape. unfold-conv's MatMul per
 * image writes a [C*kh*kw, O] product for every image before the sum over the batch; once the output
 * map has no more pixels than O (Ho*Wo <= O: the small maps of a torchvision model's later stages) those
 * products outweigh the unfolded input they are made from, and im2col-offsets' one GEMM per offset over
 * the whole batch (inner dimension N*Ho*Wo) is the cheaper one. Per layer at 2 threads, 128 crops
 * (bench/depthwise-grad.ts --groups 1, RESULTS "bring your own model"): unfold-conv 70 vs 133 ms at
 * 64 x 24x24, 77 vs 88 at 128 x 12x12; im2col-offsets 64 vs 81 at 256 x 6x6, 69 vs 137 at 512 x 3x3.
 * A 1x1 Conv with a stride (a downsampling shortcut) takes im2col-offsets (one strided slice).
 * 'pointwise' (1x1, stride 1, no pads) is unfold-conv without the unfold: x is already [N, C, H*W].
 */
export function autoWeightGrad(gy: Value, [o, , kh, kw]: number[], strides: number[], pads: number[]): 'pointwise' | ConvWeightGrad {
  const pixels = (gy.shape[2] as number) * (gy.shape[3] as number);
  const perImage = pixels > o;
  if (kh === 1 && kw === 1) return perImage && strides.every((s) => s === 1) && pads.every((p) => p === 0) ? 'pointwise' : 'im2col-offsets';
  return perImage ? 'unfold-conv' : 'im2col-offsets';
}

/** unfold-conv (see ConvWeightGrad): dW[o, c, i, j] = sum_n unfold(x)[n, c*kh*kw + i*kw + j, :] . gy[n, o, :]. */
function convWeightGradUnfold(g: Graph, x: Value, gy: Value, dims: number[], attrs: { strides: number[]; pads: number[]; dilations: number[] }): Value {
  return weightGradFromUnfolded(g, g.unfold(x, dims[2], dims[3], attrs), gy, dims);
}

/**
 * dW [O, C, kh, kw] from the unfolded input U [N, C'*kh*kw, Ho, Wo] (Graph.unfold: C' >= C, the rows of an
 * appended zero channel dropped from the small summed product) and gy [N, O, Ho, Wo].
 */
function weightGradFromUnfolded(g: Graph, unf: Value, gy: Value, [o, c, kh, kw]: number[]): Value {
  const n = unf.shape[0] as number;
  const ck = unf.shape[1] as number;
  const hw = (gy.shape[2] as number) * (gy.shape[3] as number);
  // The large unfolded input as the GEMM's A (streamed as it lies), gy^T as its B: MLAS packs B for
  // every image, and packing the small [Ho*Wo, O] instead of the [Ho*Wo, C*kh*kw] side is ~kh*kw*C/O
  // times fewer bytes copied.
  const per = g.matmul(g.reshape(unf, [n, ck, hw]), swapLast(g, g.reshape(gy, [n, o, hw]))); // [N, C'*kh*kw, O]
  const summed = g.reduceSum(per, [0], false);
  const sum = g.reshape(ck > c * kh * kw ? g.slice(summed, [0], [c * kh * kw], [0]) : summed, [c, kh * kw, o]);
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
  Relu: (g, n, [gy]) => {
    // The 0/1 mask as Cast(y > 0): ORT's Sign kernel runs on one thread, and this form measured 20-26 %
    // cheaper per activation (bench/relu-grad.ts); cast to y's type so float64 test graphs stay float64.
    const y = n.outputs[0];
    return [g.mul(gy!, g.cast(g.compare('Greater', y, g.scalar(0, y.dtype)), y.dtype))];
  },
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
    const grads: (Value | null)[] = [convInputGrad(g, n, gy!, opts.convInputGrad), convWeightGrad(g, n, gy!, opts.convWeightGrad, opts.depthwiseWeightGrad)];
    if (n.inputs[2]) grads.push(g.reduceSum(gy!, [0, 2, 3], false));
    return grads;
  },
  // Graph.unfoldConv's composite: inputs [x, w], saved [U], the Conv's attributes. The input gradient as
  // a plain Conv's (the node reads as one: x, w, strides, pads, dilations, group 1); the weight gradient
  // from the forward's U, whatever convWeightGrad says.
  UnfoldConv: (g, n, [gy], opts) => {
    const [, w, u] = n.inputs as Value[];
    return [convInputGrad(g, n, gy!, opts.convInputGrad), weightGradFromUnfolded(g, u, gy!, w.dims())];
  },
  ReduceSum: reduceRule(false),
  ReduceMean: reduceRule(true),
  ReduceLogSumExp: (g, n, [gy]) => {
    const x = n.inputs[0]!;
    const axes = reduceAxes(g, n);
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
  MaxPool: (g, n, [gy], opts) => {
    if (opts.maxPoolGrad === 'mask') return [maxPoolMaskGrad(g, n, gy!)];
    // ONNX MaxPool indices are flat over the whole NCHW input: scatter-add the gradient through them.
    const x = n.inputs[0]!;
    if (int(n, 'storage_order', 0) !== 0) throw new Error(`MaxPool gradient: storage_order 1 is not supported (node ${n.name})`);
    // An imported MaxPool has no indices output: a second pool of the same input computes them.
    const k = ints(n, 'kernel_shape', []);
    const idx = n.outputs[1] ?? g.maxPool(x, k, ints(n, 'strides', [1, 1]), ints(n, 'pads', [0, 0, 0, 0]), { dilations: ints(n, 'dilations', [1, 1]), ceilMode: int(n, 'ceil_mode', 0) === 1 })[1];
    const total = x.size();
    const flat = g.scatterAdd(g.zeros([total], x.dtype), g.reshape(idx, [-1]), g.reshape(gy!, [-1]));
    return [g.reshape(flat, x.dims())];
  },
  Reshape: (g, n, [gy]) => [g.reshape(gy!, n.inputs[0]!.dims()), null],
  Flatten: (g, n, [gy]) => [g.reshape(gy!, n.inputs[0]!.dims())],
  Squeeze: (g, n, [gy]) => [g.reshape(gy!, n.inputs[0]!.dims()), null],
  Unsqueeze: (g, n, [gy]) => [g.reshape(gy!, n.inputs[0]!.dims()), null],
  Transpose: (g, n, [gy]) => {
    const perm = ints(n, 'perm', n.inputs[0]!.shape.map((_, i) => n.inputs[0]!.rank - 1 - i));
    const inv = perm.map((_, i) => perm.indexOf(i));
    return [g.transpose(gy!, inv)];
  },
  Slice: (g, n, [gy]) => [sliceGrad(g, n, gy!), null, null, null, null],
  Concat: (g, n, [gy]) => {
    const axis = axisOf(n, gy!.rank, 0);
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
    const mode = n.attrs.mode && 's' in n.attrs.mode ? n.attrs.mode.s : 'constant';
    if (mode !== 'constant') throw new Error(`Pad gradient: mode ${mode} is not supported, only constant (node ${n.name})`);
    const r = x.rank;
    const given = constInts(g, n.inputs[1]);
    const axes = n.inputs[3] ? constInts(g, n.inputs[3]).map((a) => (a < 0 ? a + r : a)) : x.shape.map((_, i) => i);
    const k = axes.length;
    // Positive pads: cut them off gy; negative pads (crops): pad gy back with zeros.
    const cut = axes.filter((_, i) => given[i] > 0 || given[i + k] > 0);
    const gd = gy!.dims();
    let gx = cut.length ? g.slice(gy!, cut.map((a) => Math.max(given[axes.indexOf(a)], 0)), cut.map((a) => gd[a] - Math.max(given[axes.indexOf(a) + k], 0)), cut) : gy!;
    if (given.some((p) => p < 0)) {
      const back = new Array(2 * r).fill(0);
      axes.forEach((a, i) => {
        back[a] = Math.max(-given[i], 0);
        back[a + r] = Math.max(-given[i + k], 0);
      });
      gx = g.pad(gx, back);
    }
    return [gx, null, null, null];
  },
  Cast: (g, n, [gy]) => {
    // Between float types the gradient passes through (cast back); through an integer there is none.
    const x = n.inputs[0]!;
    if (!isFloat(x.dtype) || !isFloat(n.outputs[0].dtype)) return [null];
    return [gy!.dtype === x.dtype ? gy : g.cast(gy!, x.dtype)];
  },
  Shape: () => [null],
  Erf: (g, n, [gy]) => {
    const x = n.inputs[0]!;
    return [g.mul(gy!, g.mul(g.exp(g.neg(g.mul(x, x))), g.scalar(2 / Math.sqrt(Math.PI), x.dtype)))];
  },
  HardSigmoid: (g, n, [gy]) => {
    // Slope alpha where the output is strictly inside (0, 1), as PyTorch's hardsigmoid backward.
    const y = n.outputs[0];
    const inside = g.and(g.greater(y, g.scalar(0, y.dtype)), g.less(y, g.scalar(1, y.dtype)));
    return [masked(g, inside, g.mul(gy!, g.scalar(float(n, 'alpha', 0.2), y.dtype)))];
  },
  HardSwish: (g, n, [gy]) => {
    // y = x h(x), h = HardSigmoid(x; 1/6, 1/2): dy/dx = h(x) + x/6 on (-3, 3).
    const x = n.inputs[0]!;
    const inside = g.and(g.greater(x, g.scalar(-3, x.dtype)), g.less(x, g.scalar(3, x.dtype)));
    const slope = g.add(g.hardSigmoid(x, 1 / 6, 0.5), masked(g, inside, g.mul(x, g.scalar(1 / 6, x.dtype))));
    return [g.mul(gy!, slope)];
  },
  Clip: (g, n, [gy]) => {
    // Pass-through strictly between the bounds (PyTorch's hardtanh/ReLU6 backward); a bound's gradient
    // is gy where x lies beyond it (bounds are usually constants, then skipped).
    const [x, lo, hi] = n.inputs;
    const above = lo ? g.greater(x!, lo) : null;
    const below = hi ? g.less(x!, hi) : null;
    const inside = above && below ? g.and(above, below) : (above ?? below);
    const dx = inside ? masked(g, inside, gy!) : gy;
    const dlo = lo && !isConst(g, lo) ? sumToShape(g, masked(g, g.less(x!, lo), gy!), lo.shape) : null;
    const dhi = hi && !isConst(g, hi) ? sumToShape(g, masked(g, g.greater(x!, hi), gy!), hi.shape) : null;
    return [dx, dlo, dhi];
  },
  Pow: (g, n, [gy]) => {
    const [a, b] = n.inputs as Value[];
    const p = constValues(g, b);
    let slope: Value; // d a^b / da = b a^(b-1)
    if (p && p.length === 1 && p[0] === 2) slope = g.mul(a, g.scalar(2, a.dtype));
    else if (p && p.length === 1 && p[0] === 1) slope = g.scalar(1, a.dtype);
    else if (p && p.length === 1 && p[0] === 0.5) slope = g.div(g.scalar(0.5, a.dtype), n.outputs[0]);
    else if (p && p.length === 1) slope = g.mul(g.pow(a, g.scalar(p[0] - 1, a.dtype)), g.scalar(p[0], a.dtype));
    else slope = g.mul(b, g.pow(a, g.sub(b, g.scalar(1, b.dtype))));
    const da = sumToShape(g, g.mul(gy!, slope), a.shape);
    const db = p ? null : sumToShape(g, g.mul(gy!, g.mul(n.outputs[0], g.log(a))), b.shape); // a > 0 where b is learnt
    return [da, db];
  },
  Gather: (g, n, [gy]) => {
    const [x, idx] = n.inputs as Value[];
    if (!isFloat(x.dtype)) return [null, null];
    const a = axisOf(n, x.rank, 0);
    const d = x.shape[a] as number;
    const known = constValues(g, idx);
    if (known && known.length === 1 && idx.rank === 0) {
      // One constant index (e.g. a class token, x[:, 0]): gy padded back around it.
      const i = known[0] < 0 ? known[0] + d : known[0];
      const pads = new Array(2 * x.rank).fill(0);
      pads[a] = i;
      pads[a + x.rank] = d - i - 1;
      return [g.pad(g.unsqueeze(gy!, [a]), pads), null];
    }
    // Scatter-add over [pre, k, post], repeated indices accumulating.
    const dims = x.dims();
    const pre = dims.slice(0, a).reduce((p, q) => p * q, 1);
    const post = dims.slice(a + 1).reduce((p, q) => p * q, 1);
    const k = idx.size();
    const ids = known ? g.constant(known.map((i) => (i < 0 ? i + d : i)), [1, k, 1], 'int64') : g.reshape(idx.dtype === 'int64' ? idx : g.cast(idx, 'int64'), [1, k, 1]);
    const flat = g.scatterAdd(g.zeros([pre, d, post], x.dtype), g.expand(ids, [pre, k, post]), g.reshape(gy!, [pre, k, post]), 1);
    return [g.reshape(flat, dims), null];
  },
  AveragePool: (g, n, [gy]) => [averagePoolGrad(g, n, gy!)],
  LayerNormalization: (g, n, [gy, gMean, gInv]) => {
    if (gMean || gInv) throw new Error(`LayerNormalization gradient: only Y is differentiable (node ${n.name})`);
    const [x, scale, bias] = n.inputs as (Value | undefined)[];
    const a = axisOf(n, x!.rank, -1);
    const axes = x!.shape.map((_, i) => i).filter((i) => i >= a);
    const t = x!.dtype;
    // Statistics recomputed (the optional Mean/InvStdDev outputs may be stashed in another type).
    const xc = g.sub(x!, g.reduceMean(x!, axes, true));
    const inv = g.reciprocal(g.sqrt(g.add(g.reduceMean(g.mul(xc, xc), axes, true), g.scalar(float(n, 'epsilon', 1e-5), t))));
    const xhat = g.mul(xc, inv);
    // dx = inv (gxhat - mean(gxhat) - xhat mean(gxhat xhat)), gxhat = gy * scale.
    const gxhat = g.mul(gy!, scale!);
    const dx = g.mul(inv, g.sub(g.sub(gxhat, g.reduceMean(gxhat, axes, true)), g.mul(xhat, g.reduceMean(g.mul(gxhat, xhat), axes, true))));
    const dscale = isConst(g, scale!) ? null : sumToShape(g, g.mul(gy!, xhat), scale!.shape);
    const dbias = bias && !isConst(g, bias) ? sumToShape(g, gy!, bias.shape) : null;
    return [dx, dscale, dbias];
  },
  BatchNormalization: (g, n, [gy, ...stats]) => {
    // Inference mode (running statistics as inputs). Training mode is Graph.batchNormTraining's composite.
    if (int(n, 'training_mode', 0) || stats.some(Boolean)) {
      throw new Error(`BatchNormalization gradient: training mode is not differentiable here, build it with Graph.batchNormTraining (node ${n.name})`);
    }
    const [x, scale, bias, mean, variance] = n.inputs as Value[];
    const t = x.dtype;
    const c = x.shape[1] as number;
    const bshape = x.shape.map((_, i) => (i === 1 ? c : 1));
    const axes = x.shape.map((_, i) => i).filter((i) => i !== 1);
    const inv = g.reciprocal(g.sqrt(g.add(variance, g.scalar(float(n, 'epsilon', 1e-5), t)))); // [C]
    const a = g.mul(scale, inv);
    const dx = g.mul(gy!, g.reshape(a, bshape));
    const need = (v: Value) => !isConst(g, v);
    const dbias = need(bias) || need(mean) ? g.reduceSum(gy!, axes, false) : null;
    const gyXhat = need(scale) || need(variance) ? g.reduceSum(g.mul(gy!, g.mul(g.sub(x, g.reshape(mean, bshape)), g.reshape(inv, bshape))), axes, false) : null;
    const dmean = need(mean) ? g.neg(g.mul(dbias!, a)) : null;
    // dy/dvar = scale xhat * (-1/2) inv^2
    const dvar = need(variance) ? g.mul(gyXhat!, g.mul(a, g.mul(inv, g.scalar(-0.5, t)))) : null;
    return [dx, need(scale) ? gyXhat : null, need(bias) ? dbias : null, dmean, dvar];
  },
  // Composites (Graph.composite)  // Composites (Graph.composite): builder-internal names whose forward is already standard ops.
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
  const mark = g.mark();
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
  const result = wrt.map((w) => grads.get(w) ?? g.zeros(w.dims(), w.dtype));
  // Rules build every input's gradient, constants' and frozen inputs' too (e.g. a Conv's input
  // gradient where the input is the image): drop what no returned gradient reads.
  g.pruneSince(mark, result);
  return result;
}
