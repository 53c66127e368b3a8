// The graph builder: an IR of ONNX nodes with static shape inference, so a wrong shape fails while the
// graph is built, naming the node. Every method emits standard ai.onnx ops (opset 18) or one of two
// markers (StopGradient, Custom) that lower to Identity.

// The tensor types are the ONNX codec's (core/), so the two cannot drift apart.
import { ONNX_DTYPE, type Attr, type DType, type Dim, type Shape, type TypedData } from '../../core/onnx/model.ts';

export { ONNX_DTYPE, type Attr, type DType, type Dim, type Shape, type TypedData };

/** Graph.sumAll: tensors up to this many elements are summed by one ReduceSum. */
export const SUM_ALL_DIRECT = 1 << 16;

export class Value {
  producer: Node | null = null;
  constructor(
    readonly graph: Graph,
    public name: string,
    readonly shape: Shape,
    readonly dtype: DType,
  ) {}
  get rank(): number {
    return this.shape.length;
  }
  /** Static shape; throws if any dimension is symbolic. */
  dims(): number[] {
    return this.shape.map((d) => {
      if (typeof d !== 'number') throw new Error(`${this.name}: shape ${fmt(this.shape)} is not static`);
      return d;
    });
  }
  size(): number {
    return this.dims().reduce((a, b) => a * b, 1);
  }
}

export interface Node {
  op: string;
  name: string;
  inputs: (Value | null)[];
  outputs: Value[];
  attrs: Record<string, Attr>;
  /** Set on Graph.composite's Custom nodes: the gradient-table row and how many leading inputs are real. */
  composite?: { op: string; inputs: number };
  /** An operator set other than ONNX's (set by rewrites after the gradients, e.g. nchwcConvs). */
  domain?: string;
}

export interface Initializer {
  value: Value;
  data: TypedData;
}

export function fmt(shape: Shape): string {
  return `[${shape.join(', ')}]`;
}

export function numel(shape: Shape): number {
  return shape.reduce<number>((a, d) => {
    if (typeof d !== 'number') throw new Error(`numel of symbolic shape ${fmt(shape)}`);
    return a * d;
  }, 1);
}

function normAxis(axis: number, rank: number, where: string): number {
  const a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) throw new Error(`${where}: axis ${axis} out of range for rank ${rank}`);
  return a;
}

export function broadcastShapes(a: Shape, b: Shape, where: string): Shape {
  const n = Math.max(a.length, b.length);
  const out: Shape = [];
  for (let i = 0; i < n; i++) {
    const da = i < n - a.length ? 1 : a[i - (n - a.length)];
    const db = i < n - b.length ? 1 : b[i - (n - b.length)];
    if (da === db || db === 1) out.push(da);
    else if (da === 1) out.push(db);
    else throw new Error(`${where}: cannot broadcast ${fmt(a)} with ${fmt(b)}`);
  }
  return out;
}

export interface ConvAttrs {
  strides?: number[];
  pads?: number[]; // [top, left, bottom, right]
  dilations?: number[];
  group?: number;
}

export class Graph {
  readonly nodes: Node[] = [];
  readonly inputs: Value[] = [];
  readonly outputs: Value[] = [];
  readonly initializers: Initializer[] = [];
  private names = new Set<string>();
  private counter = 0;
  private scopes: string[] = [];
  private constCache = new Map<string, Value>();
  /** unfold()'s one-hot kernels, one per channels x kernel size x type, shared by every Conv that unfolds. */
  private unfoldKernels = new Map<string, Value>();

  /** `dtype` is the floating type of constants the builder makes (float64 for gradient tests). */
  constructor(readonly dtype: 'float32' | 'float64' = 'float32') {}

  // ---------- naming and structure ----------

  scope<T>(name: string, fn: () => T): T {
    this.scopes.push(name);
    try {
      return fn();
    } finally {
      this.scopes.pop();
    }
  }

  private fresh(base: string): string {
    const prefix = this.scopes.length ? this.scopes.join('/') + '/' : '';
    let name = `${prefix}${base}_${this.counter++}`;
    while (this.names.has(name)) name = `${prefix}${base}_${this.counter++}`;
    this.names.add(name);
    return name;
  }

  private claim(name: string): string {
    if (this.names.has(name)) throw new Error(`duplicate tensor name '${name}'`);
    this.names.add(name);
    return name;
  }

  input(name: string, shape: Shape, dtype: DType = this.dtype): Value {
    const v = new Value(this, this.claim(name), shape, dtype);
    this.inputs.push(v);
    return v;
  }

  /** Marks `v` as a graph output under `name` (an Identity node does the renaming). */
  output(v: Value, name: string): Value {
    const out = new Value(this, this.claim(name), v.shape, v.dtype);
    this.addNode('Identity', [v], [out], {});
    this.outputs.push(out);
    return out;
  }

  constant(data: TypedData | number[], shape: Shape, dtype: DType = this.dtype, name?: string): Value {
    const typed = toTyped(data, dtype);
    if (typed.length !== numel(shape)) throw new Error(`constant ${name ?? ''}: ${typed.length} values for shape ${fmt(shape)}`);
    const small = typed.length <= 64;
    const key = small && !name ? `${dtype}|${fmt(shape)}|${Array.from(typed as ArrayLike<number | bigint>).join(',')}` : '';
    if (key && this.constCache.has(key)) return this.constCache.get(key)!;
    const v = new Value(this, name ? this.claim(name) : this.fresh('const'), shape, dtype);
    this.initializers.push({ value: v, data: typed });
    if (key) this.constCache.set(key, v);
    return v;
  }

  scalar(x: number, dtype: DType = this.dtype): Value {
    return this.constant([x], [], dtype);
  }

  ints(xs: number[]): Value {
    return this.constant(xs, [xs.length], 'int64');
  }

  addNode(op: string, inputs: (Value | null)[], outputs: Value[], attrs: Record<string, Attr>): Node {
    const node: Node = { op, name: this.fresh(op.toLowerCase()), inputs, outputs, attrs };
    for (const o of outputs) o.producer = node;
    this.nodes.push(node);
    return node;
  }

  private emit(op: string, inputs: (Value | null)[], shape: Shape, dtype: DType, attrs: Record<string, Attr> = {}): Value {
    const out = new Value(this, this.fresh(op.toLowerCase()), shape, dtype);
    this.addNode(op, inputs, [out], attrs);
    return out;
  }

  private where(op: string): string {
    return `${this.scopes.join('/') || '<root>'}: ${op}`;
  }

  private sameFloat(op: string, ...vs: Value[]): DType {
    const t = vs[0].dtype;
    for (const v of vs) if (v.dtype !== t) throw new Error(`${this.where(op)}: dtype mismatch ${vs.map((x) => x.dtype).join(' vs ')}`);
    return t;
  }

  // ---------- element-wise ----------

  unary(op: 'Relu' | 'Sigmoid' | 'Softplus' | 'Exp' | 'Log' | 'Sqrt' | 'Neg' | 'Reciprocal' | 'Sign' | 'Abs' | 'Identity' | 'Erf' | 'HardSwish', x: Value): Value {
    return this.emit(op, [x], x.shape, x.dtype);
  }
  relu = (x: Value) => this.unary('Relu', x);
  sigmoid = (x: Value) => this.unary('Sigmoid', x);
  softplus = (x: Value) => this.unary('Softplus', x);
  exp = (x: Value) => this.unary('Exp', x);
  log = (x: Value) => this.unary('Log', x);
  sqrt = (x: Value) => this.unary('Sqrt', x);
  neg = (x: Value) => this.unary('Neg', x);
  reciprocal = (x: Value) => this.unary('Reciprocal', x);
  sign = (x: Value) => this.unary('Sign', x);
  identity = (x: Value) => this.unary('Identity', x);
  /** Erf has a float32 kernel only on ORT's CPU EP. */
  erf = (x: Value) => this.unary('Erf', x);
  hardSwish = (x: Value) => this.unary('HardSwish', x);

  /** max(0, min(1, alpha x + beta)); ONNX's defaults (PyTorch's hardsigmoid is alpha 1/6, beta 0.5). */
  hardSigmoid(x: Value, alpha = 0.2, beta = 0.5): Value {
    return this.emit('HardSigmoid', [x], x.shape, x.dtype, { alpha: { f: alpha }, beta: { f: beta } });
  }

  /** Clip to [min, max]; either bound may be absent (null). Bounds are scalars of x's type. */
  clip(x: Value, min: Value | null, max: Value | null): Value {
    for (const b of [min, max]) if (b && b.rank !== 0) throw new Error(`${this.where('Clip')}: bounds must be scalars, got ${fmt(b.shape)}`);
    const ins = max ? [x, min, max] : min ? [x, min] : [x];
    return this.emit('Clip', ins, x.shape, this.sameFloat('Clip', x, ...([min, max].filter(Boolean) as Value[])));
  }

  binary(op: 'Add' | 'Sub' | 'Mul' | 'Div' | 'Max' | 'Min' | 'Pow', a: Value, b: Value): Value {
    const t = this.sameFloat(op, a, b);
    return this.emit(op, [a, b], broadcastShapes(a.shape, b.shape, this.where(op)), t);
  }
  add = (a: Value, b: Value) => this.binary('Add', a, b);
  sub = (a: Value, b: Value) => this.binary('Sub', a, b);
  mul = (a: Value, b: Value) => this.binary('Mul', a, b);
  div = (a: Value, b: Value) => this.binary('Div', a, b);
  max = (a: Value, b: Value) => this.binary('Max', a, b);
  min = (a: Value, b: Value) => this.binary('Min', a, b);

  pow = (a: Value, b: Value) => this.binary('Pow', a, b);

  compare(op: 'Greater' | 'Less' | 'GreaterOrEqual' | 'LessOrEqual' | 'Equal', a: Value, b: Value): Value {
    return this.emit(op, [a, b], broadcastShapes(a.shape, b.shape, this.where(op)), 'bool');
  }
  greater = (a: Value, b: Value) => this.compare('Greater', a, b);
  less = (a: Value, b: Value) => this.compare('Less', a, b);

  logical(op: 'And' | 'Or', a: Value, b: Value): Value {
    return this.emit(op, [a, b], broadcastShapes(a.shape, b.shape, this.where(op)), 'bool');
  }
  and = (a: Value, b: Value) => this.logical('And', a, b);
  or = (a: Value, b: Value) => this.logical('Or', a, b);
  not(a: Value): Value {
    return this.emit('Not', [a], a.shape, 'bool');
  }

  whereOp(cond: Value, a: Value, b: Value): Value {
    const s = broadcastShapes(broadcastShapes(cond.shape, a.shape, this.where('Where')), b.shape, this.where('Where'));
    return this.emit('Where', [cond, a, b], s, this.sameFloat('Where', a, b));
  }

  cast(x: Value, to: DType): Value {
    return this.emit('Cast', [x], x.shape, to, { to: { i: ONNX_DTYPE[to] } });
  }

  /** Marks a value whose gradient is not propagated (lowered to Identity). */
  stopGradient(x: Value): Value {
    return this.emit('StopGradient', [x], x.shape, x.dtype);
  }

  /**
   * An op built from standard ops but differentiated as a whole, by its row `op` in the gradient table
   * (a closed form beats differentiating the pieces). `forward` runs on stop-gradient copies of
   * `inputs`, so no gradient leaks through the pieces, and returns its results and the intermediates
   * the rule reads. The Custom node holds [...inputs, ...saved, ...results] and `attrs` for the rule;
   * it lowers to one Identity per result.
   */
  composite(
    op: string,
    inputs: Value[],
    attrs: Record<string, Attr>,
    forward: (xs: Value[]) => { results: Value[]; saved: Value[] },
  ): Value[] {
    const sg = inputs.map((x) => this.stopGradient(x));
    const { results, saved } = forward(sg);
    const outs = results.map((y) => new Value(this, this.fresh(op.toLowerCase()), y.shape, y.dtype));
    const node = this.addNode('Custom', [...inputs, ...saved, ...results], outs, attrs);
    node.composite = { op, inputs: inputs.length };
    return outs;
  }

  // ---------- linear algebra ----------

  matmul(a: Value, b: Value): Value {
    const where = this.where('MatMul');
    const t = this.sameFloat('MatMul', a, b);
    if (a.rank < 2 || b.rank < 2) throw new Error(`${where}: MatMul needs rank >= 2, got ${fmt(a.shape)} x ${fmt(b.shape)}`);
    const [m, ka] = a.shape.slice(-2);
    const [kb, n] = b.shape.slice(-2);
    if (ka !== kb) throw new Error(`${where}: inner dimensions differ: ${fmt(a.shape)} x ${fmt(b.shape)}`);
    const batch = broadcastShapes(a.shape.slice(0, -2), b.shape.slice(0, -2), where);
    return this.emit('MatMul', [a, b], [...batch, m, n], t);
  }

  gemm(a: Value, b: Value, c: Value | null, opts: { transA?: boolean; transB?: boolean; alpha?: number; beta?: number } = {}): Value {
    const where = this.where('Gemm');
    if (a.rank !== 2 || b.rank !== 2) throw new Error(`${where}: Gemm needs 2-D inputs`);
    const [m, ka] = opts.transA ? [a.shape[1], a.shape[0]] : a.shape;
    const [kb, n] = opts.transB ? [b.shape[1], b.shape[0]] : b.shape;
    if (ka !== kb) throw new Error(`${where}: inner dimensions differ: ${fmt(a.shape)} x ${fmt(b.shape)}`);
    if (c) broadcastShapes([m, n], c.shape, where);
    const attrs: Record<string, Attr> = {};
    if (opts.transA) attrs.transA = { i: 1 };
    if (opts.transB) attrs.transB = { i: 1 };
    if (opts.alpha !== undefined) attrs.alpha = { f: opts.alpha };
    if (opts.beta !== undefined) attrs.beta = { f: opts.beta };
    return this.emit('Gemm', c ? [a, b, c] : [a, b], [m, n], this.sameFloat('Gemm', a, b), attrs);
  }

  // ---------- convolution and pooling ----------

  conv(x: Value, w: Value, attrs: ConvAttrs = {}, bias: Value | null = null): Value {
    const where = this.where('Conv');
    if (x.rank !== 4 || w.rank !== 4) throw new Error(`${where}: Conv needs NCHW input and OIHW weight, got ${fmt(x.shape)}, ${fmt(w.shape)}`);
    const group = attrs.group ?? 1;
    const [n, c, h, wd] = x.shape;
    const [o, ci, kh, kw] = w.dims();
    if (typeof c === 'number' && c !== ci * group) throw new Error(`${where}: input has ${c} channels, weight expects ${ci * group}`);
    const [sh, sw] = attrs.strides ?? [1, 1];
    const [pt, pl, pb, pr] = attrs.pads ?? [0, 0, 0, 0];
    const [dh, dw] = attrs.dilations ?? [1, 1];
    const oh = convOut(h as number, kh, sh, pt + pb, dh, where);
    const ow = convOut(wd as number, kw, sw, pl + pr, dw, where);
    return this.emit('Conv', bias ? [x, w, bias] : [x, w], [n, o, oh, ow], this.sameFloat('Conv', x, w), convAttrs(attrs));
  }

  /**
   * im2col as one op: a grouped Conv (group C') with constant one-hot kernels [C'*kh*kw, 1, kh, kw] that
   * copies each kernel offset's window of every channel into its own output channel: [N, C'*kh*kw, Ho, Wo],
   * channel c*kh*kw + i*kw + j holding input channel c at kernel offset (i, j) under `attrs`' strides,
   * pads and dilations. C' is C, or C + 1 (a zero channel appended, its kh*kw rows zero) where C is even
   * and kh*kw odd: ORT 1.29's WebGPU EP computes a grouped Conv with several outputs per group wrong when
   * the output count is even (it vectorises across the groups' boundaries; measured C = 2, 4, 6, 8 wrong,
   * 1, 3, 5, 7, 9, 17 right; RESULTS #33). Folding the channels into the batch instead (one Conv of
   * [N*C, 1, H, W], no groups) is right there but 12-18% slower on the CPU. Even kh*kw is not covered.
   */
  unfold(x: Value, kh: number, kw: number, attrs: Omit<ConvAttrs, 'group'> = {}): Value {
    const kk = kh * kw;
    const c0 = x.shape[1] as number;
    const extra = kk > 1 && kk % 2 === 1 && c0 % 2 === 0 ? 1 : 0;
    const c = c0 + extra;
    const key = `${c}x${kh}x${kw}|${x.dtype}`;
    let k = this.unfoldKernels.get(key);
    if (!k) {
      const data = new Array<number>(c * kk * kk).fill(0);
      for (let ch = 0; ch < c; ch++) for (let t = 0; t < kk; t++) data[(ch * kk + t) * kk + t] = 1;
      k = this.constant(data, [c * kk, 1, kh, kw], x.dtype);
      this.unfoldKernels.set(key, k);
    }
    return this.conv(extra ? this.pad(x, [0, 0, 0, 0, 0, extra, 0, 0]) : x, k, { ...attrs, group: c });
  }

  /**
   * A dense Conv (group 1, no bias) computed as unfold(x) (kept, as `saved`) and one MatMul batched over
   * the images, W [O, C*kh*kw] x U_n [C*kh*kw, Ho*Wo]; differentiated as a whole by
   * GRAD_RULES.UnfoldConv, whose weight gradient reads the forward's unfolded input instead of unfolding
   * x again (convWeightGrad 'unfold-forward').
   */
  unfoldConv(x: Value, w: Value, attrs: Omit<ConvAttrs, 'group'> = {}): Value {
    const where = this.where('UnfoldConv');
    if (x.rank !== 4 || w.rank !== 4) throw new Error(`${where}: needs NCHW input and OIHW weight, got ${fmt(x.shape)}, ${fmt(w.shape)}`);
    const [o, c, kh, kw] = w.dims();
    if (x.shape[1] !== c) throw new Error(`${where}: input has ${x.shape[1]} channels, weight expects ${c}`);
    const n = x.shape[0] as number;
    return this.composite('UnfoldConv', [x, w], convAttrs(attrs), ([xs, ws]) => {
      const u = this.unfold(xs, kh, kw, attrs); // [N, C'*kh*kw, Ho, Wo]
      const [ck, ho, wo] = [u.shape[1] as number, u.shape[2] as number, u.shape[3] as number];
      const wf = this.reshape(ws, [o, c * kh * kw]);
      // unfold's appended zero channel (if any) meets zero weights.
      const y = this.matmul(ck > c * kh * kw ? this.pad(wf, [0, 0, 0, ck - c * kh * kw]) : wf, this.reshape(u, [n, ck, ho * wo]));
      return { results: [this.reshape(y, [n, o, ho, wo])], saved: [u] };
    })[0];
  }

  convTranspose(x: Value, w: Value, attrs: ConvAttrs & { outputPadding?: number[] }): Value {
    const where = this.where('ConvTranspose');
    const group = attrs.group ?? 1;
    const [n, c, h, wd] = x.shape;
    const [ci, co, kh, kw] = w.dims();
    if (c !== ci) throw new Error(`${where}: input has ${c} channels, weight expects ${ci}`);
    const [sh, sw] = attrs.strides ?? [1, 1];
    const [pt, pl, pb, pr] = attrs.pads ?? [0, 0, 0, 0];
    const [dh, dw] = attrs.dilations ?? [1, 1];
    const [oph, opw] = attrs.outputPadding ?? [0, 0];
    const oh = sh * ((h as number) - 1) + oph + (kh - 1) * dh + 1 - pt - pb;
    const ow = sw * ((wd as number) - 1) + opw + (kw - 1) * dw + 1 - pl - pr;
    const a = convAttrs(attrs);
    if (oph || opw) a.output_padding = { ints: [oph, opw] };
    return this.emit('ConvTranspose', [x, w], [n, co * group, oh, ow], this.sameFloat('ConvTranspose', x, w), a);
  }

  globalAvgPool(x: Value): Value {
    if (x.rank !== 4) throw new Error(`${this.where('GlobalAveragePool')}: needs NCHW, got ${fmt(x.shape)}`);
    return this.emit('GlobalAveragePool', [x], [x.shape[0], x.shape[1], 1, 1], x.dtype);
  }

  /**
   * MaxPool with its flat argmax indices (the gradient scatters through them). `ceilMode` rounds the
   * output size up as PyTorch and ORT's kernels do: a last window must start inside the input or its
   * leading pad. (ONNX's shape inference omits that rule, so ORT rejects a graph where it matters and a
   * later op meets a tensor of the true size; it needs ceil mode with pads, which PyTorch models rarely use.)
   */
  maxPool(x: Value, kernel: number[], strides: number[], pads: number[], opts: { dilations?: number[]; ceilMode?: boolean } = {}): [Value, Value] {
    const where = this.where('MaxPool');
    const dil = opts.dilations ?? [1, 1];
    const [oh, ow] = poolOut(x, kernel, strides, pads, dil, opts.ceilMode ?? false, where);
    const [n, c] = x.shape;
    const y = new Value(this, this.fresh('maxpool'), [n, c, oh, ow], x.dtype);
    const idx = new Value(this, this.fresh('maxpool_idx'), [n, c, oh, ow], 'int64');
    const attrs: Record<string, Attr> = { kernel_shape: { ints: kernel }, strides: { ints: strides }, pads: { ints: pads } };
    if (opts.dilations) attrs.dilations = { ints: dil };
    if (opts.ceilMode) attrs.ceil_mode = { i: 1 };
    this.addNode('MaxPool', [x], [y, idx], attrs);
    return [y, idx];
  }

  /** AveragePool (float32 only on ORT's CPU EP); `countIncludePad` divides by the whole window, pads included. */
  averagePool(x: Value, kernel: number[], opts: { strides?: number[]; pads?: number[]; ceilMode?: boolean; countIncludePad?: boolean } = {}): Value {
    const where = this.where('AveragePool');
    const strides = opts.strides ?? [1, 1];
    const pads = opts.pads ?? [0, 0, 0, 0];
    const [oh, ow] = poolOut(x, kernel, strides, pads, [1, 1], opts.ceilMode ?? false, where);
    const attrs: Record<string, Attr> = { kernel_shape: { ints: kernel }, strides: { ints: strides }, pads: { ints: pads } };
    if (opts.ceilMode) attrs.ceil_mode = { i: 1 };
    if (opts.countIncludePad) attrs.count_include_pad = { i: 1 };
    return this.emit('AveragePool', [x], [x.shape[0], x.shape[1], oh, ow], x.dtype, attrs);
  }

  /** Constant-mode Pad; `value` fills the new elements (0 unless given, e.g. -Infinity before a max). */
  pad(x: Value, pads: number[], value?: number): Value {
    const r = x.rank;
    if (pads.length !== 2 * r) throw new Error(`${this.where('Pad')}: need ${2 * r} pads`);
    const shape = x.shape.map((d, i) => (d as number) + pads[i] + pads[i + r]);
    return this.emit('Pad', value === undefined ? [x, this.ints(pads)] : [x, this.ints(pads), this.scalar(value, x.dtype)], shape, x.dtype);
  }

  // ---------- reductions and normalisers ----------

  reduce(op: 'ReduceSum' | 'ReduceMean' | 'ReduceLogSumExp' | 'ReduceMax', x: Value, axes: number[], keepdims = true): Value {
    const ax = axes.map((a) => normAxis(a, x.rank, this.where(op))).sort((a, b) => a - b);
    const shape: Shape = [];
    x.shape.forEach((d, i) => {
      if (!ax.includes(i)) shape.push(d);
      else if (keepdims) shape.push(1);
    });
    return this.emit(op, [x, this.ints(ax)], shape, x.dtype, { keepdims: { i: keepdims ? 1 : 0 } });
  }
  reduceSum = (x: Value, axes: number[], keepdims = true) => this.reduce('ReduceSum', x, axes, keepdims);
  reduceMean = (x: Value, axes: number[], keepdims = true) => this.reduce('ReduceMean', x, axes, keepdims);
  reduceLogSumExp = (x: Value, axes: number[], keepdims = true) => this.reduce('ReduceLogSumExp', x, axes, keepdims);

  /**
   * Sum of every element to a scalar, accurate for large tensors: above SUM_ALL_DIRECT elements it sums
   * rows of ~sqrt(n) elements, then the row sums (zero-padded to a [rows, cols] matrix). ORT's CPU ReduceSum
   * over all axes accumulates each lane sequentially, so in float32 a sum of millions of squares loses
   * small terms once the accumulator is large: the 34M-value gradient norm of paper-cifar came out 0.76%
   * low, a 4096 x 4096 gradient's norm 0.1% low (bench/peer against PyTorch; test/train-step.test.ts).
   */
  sumAll(x: Value): Value {
    const n = x.size();
    const all = x.shape.map((_, i) => i);
    if (n <= SUM_ALL_DIRECT) return this.reduceSum(x, all, false);
    const cols = Math.ceil(Math.sqrt(n));
    const rows = Math.ceil(n / cols);
    const flat = this.reshape(x, [n]);
    const padded = rows * cols > n ? this.concat([flat, this.constant(new Array(rows * cols - n).fill(0), [rows * cols - n], x.dtype)], 0) : flat;
    return this.reduceSum(this.reduceSum(this.reshape(padded, [rows, cols]), [1], false), [0], false);
  }

  /** ONNX LayerNormalization over the axes from `axis` on; scale (and bias) broadcast to those axes. */
  layerNorm(x: Value, scale: Value, bias: Value | null, axis = -1, epsilon = 1e-5): Value {
    const where = this.where('LayerNormalization');
    const a = normAxis(axis, x.rank, where);
    const t = this.sameFloat('LayerNormalization', x, scale, ...(bias ? [bias] : []));
    for (const p of bias ? [scale, bias] : [scale]) broadcastShapes(x.shape.slice(a), p.shape, where);
    return this.emit('LayerNormalization', bias ? [x, scale, bias] : [x, scale], x.shape, t, { axis: { i: a }, epsilon: { f: epsilon } });
  }

  /** Inference-mode BatchNormalization (running statistics as inputs), NC... layout. */
  batchNormInference(x: Value, scale: Value, bias: Value, mean: Value, variance: Value, epsilon = 1e-5): Value {
    const c = x.shape[1];
    for (const p of [scale, bias, mean, variance]) {
      if (p.rank !== 1 || p.shape[0] !== c) throw new Error(`${this.where('BatchNormalization')}: per-channel inputs must be [${c}], got ${fmt(p.shape)}`);
    }
    return this.emit('BatchNormalization', [x, scale, bias, mean, variance], x.shape, this.sameFloat('BatchNormalization', x, scale, bias, mean, variance), { epsilon: { f: epsilon } });
  }

  /**
   * Training-mode batch norm over every axis but 1, from standard ops (ORT runs BatchNormalization's
   * training mode only in its training builds), differentiated as one op by GRAD_RULES.BatchNorm.
   * Returns [y, mean, biased variance], the statistics keeping their reduced axes as 1.
   */
  batchNormTraining(x: Value, gamma: Value | null, beta: Value | null, epsilon = 1e-5): [Value, Value, Value] {
    if ((gamma === null) !== (beta === null)) throw new Error(`${this.where('BatchNorm')}: give both gamma and beta, or neither`);
    const axes = x.shape.map((_, i) => i).filter((i) => i !== 1);
    const bshape = x.shape.map((d, i) => (i === 1 ? (d as number) : 1));
    const epsV = this.scalar(epsilon, x.dtype);
    const ins = gamma ? [x, gamma, beta!] : [x];
    const [y, mean, varB] = this.composite('BatchNorm', ins, { axes: { ints: axes } }, ([xs, gs, bs]) => {
      const mean = this.reduceMean(xs, axes, true);
      const xc = this.sub(xs, mean);
      const varB = this.reduceMean(this.mul(xc, xc), axes, true);
      const inv = this.reciprocal(this.sqrt(this.add(varB, epsV)));
      const xhat = this.mul(xc, inv);
      const y = gs ? this.add(this.mul(xhat, this.reshape(gs, bshape)), this.reshape(bs, bshape)) : xhat;
      return { results: [y, mean, varB], saved: gs ? [xhat, inv, gs] : [xhat, inv] };
    });
    return [y, mean, varB];
  }

  /**
   * Running statistics after a training-mode batch norm, as PyTorch keeps them: `momentum` is the new
   * batch's weight (PyTorch's 0.1; ONNX's BatchNormalization attribute is 1 minus it) and the variance
   * is unbiased. `mean` and `varB` are batchNormTraining's; returns the new [running mean, running var].
   */
  batchNormRunningStats(x: Value, mean: Value, varB: Value, runningMean: Value, runningVar: Value, momentum: number): [Value, Value] {
    const c = x.shape[1] as number;
    const count = x.size() / c;
    const mom = this.scalar(momentum, x.dtype);
    const keep = this.scalar(1 - momentum, x.dtype);
    const meanFlat = this.reshape(mean, [c]);
    const varUnbiased = this.mul(this.reshape(varB, [c]), this.scalar(count / Math.max(count - 1, 1), x.dtype));
    const newMean = this.add(this.mul(runningMean, keep), this.mul(meanFlat, mom));
    return [newMean, this.add(this.mul(runningVar, keep), this.mul(varUnbiased, mom))];
  }

  softmax(x: Value, axis = -1): Value {
    return this.emit('Softmax', [x], x.shape, x.dtype, { axis: { i: normAxis(axis, x.rank, this.where('Softmax')) } });
  }
  logSoftmax(x: Value, axis = -1): Value {
    return this.emit('LogSoftmax', [x], x.shape, x.dtype, { axis: { i: normAxis(axis, x.rank, this.where('LogSoftmax')) } });
  }

  // ---------- shape ops ----------

  reshape(x: Value, target: number[]): Value {
    const where = this.where('Reshape');
    const shape: Shape = target.map((d, i) => (d === 0 ? x.shape[i] : d));
    const neg = shape.indexOf(-1);
    const symbolicIn = x.shape.filter((d) => typeof d !== 'number');
    const symbolicOut = shape.filter((d) => typeof d !== 'number');
    const symMatch = symbolicIn.length === symbolicOut.length && symbolicIn.every((d, i) => d === symbolicOut[i]);
    if (!symMatch) throw new Error(`${where}: symbolic dims of ${fmt(x.shape)} must be kept (0) in ${fmt(target)}`);
    const known = (s: Shape) => s.filter((d): d is number => typeof d === 'number' && d !== -1).reduce((a, b) => a * b, 1);
    const total = known(x.shape);
    if (neg >= 0) {
      if (total % known(shape) !== 0) throw new Error(`${where}: cannot reshape ${fmt(x.shape)} to ${fmt(target)}`);
      shape[neg] = total / known(shape);
    } else if (known(shape) !== total) throw new Error(`${where}: cannot reshape ${fmt(x.shape)} to ${fmt(target)}`);
    return this.emit('Reshape', [x, this.ints(target)], shape, x.dtype);
  }

  flatten(x: Value, axis = 1): Value {
    const lead = x.shape.slice(0, axis);
    const rest = numel(x.shape.slice(axis));
    const outer = lead.every((d) => typeof d === 'number') ? [numel(lead)] : lead.length === 1 ? lead : null;
    if (!outer) throw new Error(`${this.where('Flatten')}: unsupported symbolic shape ${fmt(x.shape)}`);
    return this.emit('Flatten', [x], [outer[0], rest], x.dtype, { axis: { i: axis } });
  }

  transpose(x: Value, perm: number[]): Value {
    if (perm.length !== x.rank) throw new Error(`${this.where('Transpose')}: perm ${perm} for rank ${x.rank}`);
    return this.emit('Transpose', [x], perm.map((p) => x.shape[p]), x.dtype, { perm: { ints: perm } });
  }

  /** Slice with step 1 along the given axes (negative ends are not supported: give real bounds). */
  slice(x: Value, starts: number[], ends: number[], axes: number[]): Value {
    const where = this.where('Slice');
    const shape = [...x.shape];
    axes.forEach((a, i) => {
      const ax = normAxis(a, x.rank, where);
      const d = x.shape[ax] as number;
      const s = starts[i];
      const e = Math.min(ends[i], d);
      if (s < 0 || s >= e) throw new Error(`${where}: empty or negative slice [${s}, ${ends[i]}) of axis ${ax} (size ${d})`);
      shape[ax] = e - s;
    });
    return this.emit('Slice', [x, this.ints(starts), this.ints(ends), this.ints(axes)], shape, x.dtype);
  }

  /** Slice with positive steps (used by gradient formulations; not itself differentiable). */
  sliceStrided(x: Value, starts: number[], ends: number[], axes: number[], steps: number[]): Value {
    const shape = [...x.shape];
    axes.forEach((a, i) => {
      const e = Math.min(ends[i], x.shape[a] as number);
      shape[a] = Math.ceil((e - starts[i]) / steps[i]);
    });
    return this.emit('Slice', [x, this.ints(starts), this.ints(ends), this.ints(axes), this.ints(steps)], shape, x.dtype);
  }

  /** Reverses the given axes (Slice with step -1; used on small weight tensors in gradients). */
  flip(x: Value, axes: number[]): Value {
    const big = -(2 ** 31);
    return this.emit('Slice', [x, this.ints(axes.map(() => -1)), this.ints(axes.map(() => big)), this.ints(axes), this.ints(axes.map(() => -1))], x.shape, x.dtype);
  }

  /**
   * Slice as ONNX defines it: negative starts/ends count from the end, bounds are clamped, steps may be
   * negative (int64 extremes such as 2^63-1 work as 'to the end').
   */
  sliceGeneral(x: Value, starts: number[], ends: number[], axes: number[], steps: number[]): Value {
    const where = this.where('Slice');
    const shape = [...x.shape];
    axes.forEach((a, i) => {
      const ax = normAxis(a, x.rank, where);
      shape[ax] = sliceRange(x.shape[ax] as number, starts[i], ends[i], steps[i], where).count;
    });
    return this.emit('Slice', [x, this.ints(starts), this.ints(ends), this.ints(axes), this.ints(steps)], shape, x.dtype);
  }

  /** The shape of x as an int64 vector (exporters' shape arithmetic starts here). */
  shape(x: Value): Value {
    return this.emit('Shape', [x], [x.rank], 'int64');
  }

  /** Gather along `axis` (negative indices count from the end). */
  gather(x: Value, indices: Value, axis = 0): Value {
    const where = this.where('Gather');
    const a = normAxis(axis, x.rank, where);
    if (indices.dtype !== 'int64' && indices.dtype !== 'int32') throw new Error(`${where}: indices must be int64 or int32, got ${indices.dtype}`);
    return this.emit('Gather', [x, indices], [...x.shape.slice(0, a), ...indices.shape, ...x.shape.slice(a + 1)], x.dtype, { axis: { i: a } });
  }

  concat(xs: Value[], axis: number): Value {
    const where = this.where('Concat');
    const ax = normAxis(axis, xs[0].rank, where);
    const shape = [...xs[0].shape];
    let total = 0;
    for (const x of xs) {
      x.shape.forEach((d, i) => {
        if (i !== ax && d !== shape[i]) throw new Error(`${where}: shapes ${xs.map((v) => fmt(v.shape)).join(', ')} differ off axis ${ax}`);
      });
      total += x.shape[ax] as number;
    }
    shape[ax] = total;
    return this.emit('Concat', xs, shape, this.sameFloat('Concat', ...xs), { axis: { i: ax } });
  }

  unsqueeze(x: Value, axes: number[]): Value {
    const shape = [...x.shape];
    const r = x.rank + axes.length;
    for (const a of axes.map((a) => (a < 0 ? a + r : a)).sort((p, q) => p - q)) shape.splice(a, 0, 1);
    return this.emit('Unsqueeze', [x, this.ints(axes)], shape, x.dtype);
  }

  squeeze(x: Value, axes: number[]): Value {
    const ax = axes.map((a) => normAxis(a, x.rank, this.where('Squeeze')));
    for (const a of ax) if (x.shape[a] !== 1) throw new Error(`${this.where('Squeeze')}: axis ${a} of ${fmt(x.shape)} is not 1`);
    return this.emit('Squeeze', [x, this.ints(ax)], x.shape.filter((_, i) => !ax.includes(i)), x.dtype);
  }

  expand(x: Value, shape: number[]): Value {
    const out = broadcastShapes(x.shape, shape, this.where('Expand'));
    return this.emit('Expand', [x, this.ints(shape)], out, x.dtype);
  }

  zeros(shape: number[], dtype: DType = this.dtype): Value {
    const n = numel(shape);
    if (n <= 64) return this.constant(new Array(n).fill(0), shape, dtype);
    return this.expand(this.constant([0], [], dtype), shape);
  }

  /** Where the graph stands now, for pruneSince. */
  mark(): { nodes: number; initializers: number } {
    return { nodes: this.nodes.length, initializers: this.initializers.length };
  }

  /**
   * Drops the nodes added since `mark` that none of `keep` (nor a graph output) depends on, and the
   * constants added since then that nothing reads any more. ORT runs every node it is given, used or not.
   */
  pruneSince(mark: { nodes: number; initializers: number }, keep: Value[]): void {
    const needed = new Set<Value>([...keep, ...this.outputs]);
    const kept: Node[] = [];
    for (let k = this.nodes.length - 1; k >= mark.nodes; k--) {
      const n = this.nodes[k];
      if (!n.outputs.some((o) => needed.has(o))) continue;
      kept.push(n);
      for (const i of n.inputs) if (i) needed.add(i);
    }
    this.nodes.splice(mark.nodes, this.nodes.length - mark.nodes, ...kept.reverse());
    const read = new Set<Value>(needed);
    for (const n of this.nodes.slice(0, mark.nodes)) for (const i of n.inputs) if (i) read.add(i);
    const gone = new Set<Value>();
    for (const init of this.initializers.splice(mark.initializers)) {
      if (read.has(init.value)) this.initializers.push(init);
      else gone.add(init.value);
    }
    // A dropped constant must not be handed out again by constant()'s cache.
    if (gone.size) for (const cache of [this.constCache, this.unfoldKernels]) for (const [key, v] of cache) if (gone.has(v)) cache.delete(key);
  }

  /**
   * Rewrites Convs whose weight is a graph value into ORT's blocked-layout kernel, com.microsoft.nchwc
   * Conv (ORT swaps that kernel in by itself only for constant weights; a training step's weights are
   * values): the input reordered in (ReorderInput), the weight reordered inside the graph as ORT's NCHWc
   * transformer lays out a constant one, the output reordered back (ReorderOutput), so the rest of the
   * graph is unchanged. Depthwise Convs (group = input = output channels, weight [C, 1, kh, kw]): weight
   * [C/B, 1, kh, kw, B], blocked on output channels. With `dense`, also group-1 Convs: weight [O/B, C/B,
   * kh, kw, B (in), B (out)]. Channel counts must be multiples of `block`, MLAS's NCHWc block size on the
   * machine that runs the graph (16 with AVX-512, 8 with AVX2); the kernels exist only in x86-64's CPU EP.
   * Run after the gradients (it rewrites the gradients' Convs too). Returns how many Convs it rewrote.
   */
  nchwcConvs(block: number, opts: { dense?: boolean } = {}): number {
    const D = 'com.microsoft.nchwc';
    let done = 0;
    for (let k = 0; k < this.nodes.length; k++) {
      const n = this.nodes[k];
      if (n.op !== 'Conv' || n.domain) continue;
      const [x, w, bias] = n.inputs;
      if (!x || !w || x.rank !== 4 || w.rank !== 4 || x.dtype !== 'float32') continue;
      const [c, o, kh, kw] = [x.shape[1], w.shape[0], w.shape[2], w.shape[3]] as number[];
      const group = (n.attrs.group as { i: number } | undefined)?.i ?? 1;
      const depthwise = group === c && o === c && w.shape[1] === 1;
      const dense = opts.dense && group === 1;
      if ((!depthwise && !dense) || c % block || o % block) continue;
      const y = n.outputs[0];
      const start = this.nodes.length;
      const xb = this.emit('ReorderInput', [x], x.shape, 'float32');
      xb.producer!.domain = D;
      const wb = depthwise
        ? this.reshape(this.transpose(this.reshape(w, [c / block, block, 1, kh, kw]), [0, 2, 3, 4, 1]), [c, 1, kh, kw])
        : this.reshape(this.transpose(this.reshape(w, [o / block, block, c / block, block, kh, kw]), [0, 2, 4, 5, 3, 1]), [o, c, kh, kw]);
      const yb = this.emit('Conv', bias ? [xb, wb, bias] : [xb, wb], y.shape, 'float32', { ...n.attrs, kernel_shape: { ints: [kh, kw] } });
      yb.producer!.domain = D;
      this.addNode('ReorderOutput', [yb], [y], { channels: { i: o } }).domain = D;
      const added = this.nodes.splice(start);
      this.nodes.splice(k, 1, ...added);
      k += added.length - 1;
      done++;
    }
    return done;
  }

  scatterAdd(data: Value, indices: Value, updates: Value, axis = 0): Value {
    return this.emit('ScatterElements', [data, indices, updates], data.shape, data.dtype, { axis: { i: axis }, reduction: { s: 'add' } });
  }
}

function convOut(h: number, k: number, s: number, padTotal: number, d: number, where: string): number {
  const o = Math.floor((h + padTotal - d * (k - 1) - 1) / s) + 1;
  if (!(o > 0)) throw new Error(`${where}: kernel ${k} (stride ${s}, pad ${padTotal}) does not fit input size ${h}`);
  return o;
}

/** Pooling output size; with ceil mode, as PyTorch (and ORT) drop a last window that starts past the input and its leading pad. */
function poolOut(x: Value, kernel: number[], strides: number[], pads: number[], dil: number[], ceil: boolean, where: string): [number, number] {
  if (x.rank !== 4) throw new Error(`${where}: needs NCHW, got ${fmt(x.shape)}`);
  return [0, 1].map((k) => {
    const h = x.shape[2 + k] as number;
    const span = h + pads[k] + pads[k + 2] - dil[k] * (kernel[k] - 1) - 1;
    if (span < 0) throw new Error(`${where}: kernel ${kernel[k]} (pad ${pads[k] + pads[k + 2]}) does not fit input size ${h}`);
    let o = (ceil ? Math.ceil(span / strides[k]) : Math.floor(span / strides[k])) + 1;
    if (ceil && (o - 1) * strides[k] >= h + pads[k]) o--;
    return o;
  }) as [number, number];
}

/**
 * The elements an ONNX Slice takes along one axis of size d: `first`, then `count` more each `step`
 * apart (ONNX's clamping: to [0, d] for positive steps, to [-1, d - 1] for negative ones).
 */
export function sliceRange(d: number, start: number, end: number, step: number, where = 'Slice'): { first: number; count: number } {
  if (step === 0 || !Number.isFinite(step)) throw new Error(`${where}: step ${step} is not allowed`);
  const norm = (v: number) => (v < 0 ? v + d : v);
  const clamp = (v: number, lo: number, hi: number) => Math.min(Math.max(v, lo), hi);
  const s = step > 0 ? clamp(norm(start), 0, d) : clamp(norm(start), -1, d - 1);
  const e = step > 0 ? clamp(norm(end), 0, d) : clamp(norm(end), -1, d - 1);
  const count = Math.max(0, Math.ceil((e - s) / step));
  if (count === 0) throw new Error(`${where}: empty slice (start ${start}, end ${end}, step ${step}) of an axis of size ${d}`);
  return { first: s, count };
}

function convAttrs(a: ConvAttrs): Record<string, Attr> {
  const out: Record<string, Attr> = {};
  if (a.strides) out.strides = { ints: a.strides };
  if (a.pads) out.pads = { ints: a.pads };
  if (a.dilations) out.dilations = { ints: a.dilations };
  if (a.group && a.group !== 1) out.group = { i: a.group };
  return out;
}

export function toTyped(data: TypedData | number[], dtype: DType): TypedData {
  switch (dtype) {
    case 'float32':
      return data instanceof Float32Array ? data : Float32Array.from(data as ArrayLike<number>);
    case 'float64':
      return data instanceof Float64Array ? data : Float64Array.from(data as ArrayLike<number>);
    case 'int64':
      // A number at or beyond +-2^63 stands for int64's extreme (how exporters write 'to the end').
      return data instanceof BigInt64Array ? data : BigInt64Array.from(Array.from(data as ArrayLike<number>, (x) => (x >= 2 ** 63 ? 2n ** 63n - 1n : x <= -(2 ** 63) ? -(2n ** 63n) : BigInt(x))));
    case 'int32':
      return data instanceof Int32Array ? data : Int32Array.from(data as ArrayLike<number>);
    case 'uint8':
    case 'bool':
      return data instanceof Uint8Array ? data : Uint8Array.from(data as ArrayLike<number>);
  }
}
