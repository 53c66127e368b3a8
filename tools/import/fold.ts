// Constant folding of the shape arithmetic exporters emit (Shape -> Gather -> Unsqueeze -> Concat ->
// Reshape, Cast, Constant, ...) for a fixed input size. A folded value is a small tensor held on the
// host; a dimension that stays symbolic (the batch of the embedding graph) is carried as its name, so
// Shape(x)[0] -> Concat -> Reshape still folds to "keep dimension 0".

import type { DType, TypedData } from '../../core/onnx/model.ts';

/** A host-side tensor: `data` for initializers as read, `vals` for folded results (strings: symbolic dims). */
export interface Const {
  dtype: DType;
  dims: number[];
  data?: TypedData;
  vals?: (number | string)[];
}

export function valuesOf(c: Const): (number | string)[] {
  if (c.vals) return c.vals;
  return Array.from(c.data as ArrayLike<number | bigint>, (v) => Number(v));
}

const size = (dims: number[]) => dims.reduce((a, b) => a * b, 1);

function make(dtype: DType, dims: number[], vals: (number | string)[]): Const {
  if (vals.length !== size(dims)) throw new Error(`fold: ${vals.length} values for dims [${dims.join(', ')}]`);
  return { dtype, dims, vals };
}

function ints(c: Const, what: string): number[] {
  return valuesOf(c).map((v) => {
    if (typeof v !== 'number') throw new Error(`${what}: needs a number where the model has the symbolic size '${v}'`);
    return v;
  });
}

/** Strided positions of a tensor: row-major index of each element. */
function strides(dims: number[]): number[] {
  const s = new Array(dims.length).fill(1);
  for (let i = dims.length - 2; i >= 0; i--) s[i] = s[i + 1] * dims[i + 1];
  return s;
}

function elementwise(op: string, a: Const, b: Const): Const {
  const va = valuesOf(a);
  const vb = valuesOf(b);
  const n = Math.max(va.length, vb.length);
  if (!(va.length === n || va.length === 1) || !(vb.length === n || vb.length === 1)) throw new Error(`fold ${op}: broadcasting beyond scalars`);
  const dims = va.length >= vb.length ? a.dims : b.dims;
  const isInt = a.dtype === 'int64' || a.dtype === 'int32';
  const out: (number | string)[] = [];
  for (let i = 0; i < n; i++) {
    const x = va[va.length === 1 ? 0 : i];
    const y = vb[vb.length === 1 ? 0 : i];
    if (typeof x !== 'number' || typeof y !== 'number') throw new Error(`fold ${op}: arithmetic on the symbolic size '${typeof x === 'string' ? x : y}'`);
    const r = op === 'Add' ? x + y : op === 'Sub' ? x - y : op === 'Mul' ? x * y : isInt ? Math.trunc(x / y) : x / y;
    out.push(r);
  }
  return make(a.dtype, dims, out);
}

/** Folds one node whose inputs are all known; null when the op is not shape arithmetic. */
export function foldNode(op: string, ins: (Const | null)[], attrs: Record<string, unknown>, dtypeOf: (code: number) => DType): Const | null {
  const attrInts = (name: string): number[] | undefined => (attrs[name] as { ints?: number[] } | undefined)?.ints;
  const attrInt = (name: string, d: number): number => (attrs[name] as { i?: number } | undefined)?.i ?? d;
  const [a, b] = ins;
  switch (op) {
    case 'Identity':
      return a;
    case 'Cast':
      return make(dtypeOf(attrInt('to', 1)), a!.dims, valuesOf(a!));
    case 'Add':
    case 'Sub':
    case 'Mul':
    case 'Div':
      return elementwise(op, a!, b!);
    case 'Unsqueeze': {
      const axes = attrInts('axes') ?? ints(b!, 'Unsqueeze axes');
      const dims = [...a!.dims];
      const r = dims.length + axes.length;
      for (const ax of axes.map((x) => (x < 0 ? x + r : x)).sort((p, q) => p - q)) dims.splice(ax, 0, 1);
      return make(a!.dtype, dims, valuesOf(a!));
    }
    case 'Squeeze': {
      const axes = attrInts('axes') ?? (b ? ints(b, 'Squeeze axes') : a!.dims.map((d, i) => (d === 1 ? i : -1)).filter((i) => i >= 0));
      const norm = axes.map((x) => (x < 0 ? x + a!.dims.length : x));
      return make(a!.dtype, a!.dims.filter((_, i) => !norm.includes(i)), valuesOf(a!));
    }
    case 'Concat': {
      const axis = attrInt('axis', 0);
      if (ins.some((c) => c!.dims.length !== 1) || (axis !== 0 && axis !== -1)) throw new Error('fold Concat: only 1-D constants');
      const vals = ins.flatMap((c) => valuesOf(c!));
      return make(a!.dtype, [vals.length], vals);
    }
    case 'Gather': {
      const axis = attrInt('axis', 0);
      if (a!.dims.length !== 1 || axis !== 0) throw new Error('fold Gather: only from 1-D constants');
      const src = valuesOf(a!);
      const idx = ints(b!, 'Gather indices').map((i) => (i < 0 ? i + src.length : i));
      return make(a!.dtype, b!.dims, idx.map((i) => src[i]));
    }
    case 'Slice': {
      if (a!.dims.length !== 1) throw new Error('fold Slice: only 1-D constants');
      const src = valuesOf(a!);
      const n = src.length;
      const starts = attrInts('starts') ?? ints(ins[1]!, 'Slice starts');
      const ends = attrInts('ends') ?? ints(ins[2]!, 'Slice ends');
      const step = ins[4] ? ints(ins[4], 'Slice steps')[0] : 1;
      const clamp = (v: number) => Math.max(0, Math.min(n, v < 0 ? v + n : v));
      const out: (number | string)[] = [];
      if (step > 0) for (let i = clamp(starts[0]); i < clamp(ends[0]); i += step) out.push(src[i]);
      else throw new Error('fold Slice: negative steps');
      return make(a!.dtype, [out.length], out);
    }
    case 'Reshape': {
      const target = ints(b!, 'Reshape shape');
      const n = size(a!.dims);
      const dims = target.map((d, i) => (d === 0 ? a!.dims[i] : d));
      const neg = dims.indexOf(-1);
      if (neg >= 0) dims[neg] = n / size(dims.filter((d) => d !== -1));
      return make(a!.dtype, dims, valuesOf(a!));
    }
    case 'ConstantOfShape': {
      const dims = ints(a!, 'ConstantOfShape shape');
      const t = (attrs.value as { t?: Const } | undefined)?.t;
      const v = t ? valuesOf(t)[0] : 0;
      return make(t?.dtype ?? 'float32', dims, new Array(size(dims)).fill(v));
    }
    case 'Transpose': {
      const perm = attrInts('perm') ?? a!.dims.map((_, i) => a!.dims.length - 1 - i);
      const src = valuesOf(a!);
      const dims = perm.map((p) => a!.dims[p]);
      const si = strides(a!.dims);
      const so = strides(dims);
      const out = new Array(src.length);
      for (let k = 0; k < src.length; k++) {
        let rest = k;
        let from = 0;
        for (let d = 0; d < dims.length; d++) {
          const q = Math.floor(rest / so[d]);
          rest -= q * so[d];
          from += q * si[perm[d]];
        }
        out[k] = src[from];
      }
      return make(a!.dtype, dims, out);
    }
    default:
      return null;
  }
}
