// ONNX ModelProto (opset 18, IR version 8) from a plain description of its graph, and the two things
// the runtime does with serialised models: bind inputs as initializers (export) and read the
// inputs, outputs and metadata (checks before use). No graph builder here, so the runtime can use it:
// tools/onnx/encode.ts lowers the builder's Graph to an OnnxGraph; agent/buffer/similarity.ts writes
// its one-node model directly.

import { ProtoWriter, readFields } from './protobuf.ts';

// The builder (tools/graph/graph.ts) declares the same unions for its values; tools/onnx/encode.ts hands
// its values to encodeModel, so tsc reports it if the two ever drift apart.
export type DType = 'float32' | 'float64' | 'int64' | 'int32' | 'uint8' | 'bool';
export type Dim = number | string;
export type Shape = Dim[];
export type Attr = { i: number } | { f: number } | { ints: number[] } | { floats: number[] } | { s: string };
export type TypedData = Float32Array | Float64Array | BigInt64Array | Int32Array | Uint8Array;

/** TensorProto.DataType codes. */
export const ONNX_DTYPE: Record<DType, number> = { float32: 1, uint8: 2, int32: 6, int64: 7, bool: 9, float64: 11 };

export interface OnnxNode {
  op: string;
  name: string;
  inputs: string[];
  outputs: string[];
  attrs: Record<string, Attr>;
}

export interface OnnxTensor {
  name: string;
  dtype: DType;
  dims: number[];
  data: TypedData;
}

export interface OnnxValueInfo {
  name: string;
  dtype: DType;
  shape: Shape;
}

/** A graph in the order it is serialised: nodes, then initializers, inputs and outputs. */
export interface OnnxGraph {
  name: string;
  nodes: OnnxNode[];
  initializers: OnnxTensor[];
  inputs: OnnxValueInfo[];
  outputs: OnnxValueInfo[];
}

export const OPSET = 18;
export const IR_VERSION = 8;

function writeShape(w: ProtoWriter, dtype: DType, shape: Shape): void {
  w.message(1, (tensor) => {
    tensor.int(1, ONNX_DTYPE[dtype]);
    tensor.message(2, (s) => {
      for (const d of shape) s.message(1, (dim) => (typeof d === 'number' ? dim.int(1, d) : dim.string(2, d)));
    });
  });
}

function writeValueInfo(w: ProtoWriter, field: number, name: string, dtype: DType, shape: Shape): void {
  w.message(field, (vi) => {
    vi.string(1, name);
    vi.message(2, (t) => writeShape(t, dtype, shape));
  });
}

export function tensorBytes(data: TypedData): Uint8Array {
  // Little-endian host assumed (x86-64, arm64), as ONNX raw_data requires.
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

export function encodeTensor(name: string, dtype: DType, dims: number[], data: TypedData): Uint8Array {
  const w = new ProtoWriter();
  for (const d of dims) w.int(1, d);
  w.int(2, ONNX_DTYPE[dtype]);
  w.string(8, name);
  w.bytes(9, tensorBytes(data));
  return w.finish();
}

function writeAttr(w: ProtoWriter, name: string, a: Attr): void {
  w.message(5, (m) => {
    m.string(1, name);
    if ('i' in a) m.int(3, a.i).int(20, 2);
    else if ('f' in a) m.float(2, a.f).int(20, 1);
    else if ('s' in a) m.string(4, a.s).int(20, 3);
    else if ('ints' in a) {
      for (const v of a.ints) m.int(8, v);
      m.int(20, 7);
    } else {
      for (const v of a.floats) m.float(7, v);
      m.int(20, 6);
    }
  });
}

export interface ModelMeta {
  producer?: string;
  producerVersion?: string;
  doc?: string;
  metadata?: Record<string, string>;
}

export function encodeOnnx(g: OnnxGraph, meta: ModelMeta = {}): Uint8Array {
  const w = new ProtoWriter();
  w.int(1, IR_VERSION);
  w.string(2, meta.producer ?? 'ssocl-tools');
  w.string(3, meta.producerVersion ?? '0');
  if (meta.doc) w.string(6, meta.doc);
  w.message(7, (gw) => {
    for (const n of g.nodes) {
      gw.message(1, (nw) => {
        for (const i of n.inputs) nw.string(1, i);
        for (const o of n.outputs) nw.string(2, o);
        nw.string(3, n.name);
        nw.string(4, n.op);
        for (const [k, v] of Object.entries(n.attrs)) writeAttr(nw, k, v);
      });
    }
    gw.string(2, g.name);
    for (const t of g.initializers) gw.bytes(5, encodeTensor(t.name, t.dtype, t.dims, t.data));
    for (const v of g.inputs) writeValueInfo(gw, 11, v.name, v.dtype, v.shape);
    for (const v of g.outputs) writeValueInfo(gw, 12, v.name, v.dtype, v.shape);
  });
  w.message(8, (o) => o.string(1, '').int(2, OPSET));
  for (const [k, v] of Object.entries(meta.metadata ?? {})) w.message(14, (m) => m.string(1, k).string(2, v));
  return w.finish();
}

/**
 * Turns graph inputs into initializers with the given values (used on export: the embed graph takes
 * its weights as inputs; the exported model carries them). Works on the serialised model directly.
 */
export function bindInputs(model: Uint8Array, values: Map<string, { dtype: DType; dims: number[]; data: TypedData }>, meta: ModelMeta = {}): Uint8Array {
  const top = readFields(model);
  const out = new ProtoWriter();
  const decoder = new TextDecoder();
  const bound = new Set<string>();
  for (const f of top) {
    if (f.field === 14 && meta.metadata) continue; // replaced below
    if (f.field !== 7) {
      out.raw(f.raw);
      continue;
    }
    const graph = new ProtoWriter();
    for (const gf of readFields(f.data!)) {
      if (gf.field === 11) {
        const nameField = readFields(gf.data!).find((x) => x.field === 1);
        const name = decoder.decode(nameField!.data!);
        if (values.has(name)) {
          bound.add(name);
          continue;
        }
      }
      graph.raw(gf.raw);
    }
    for (const [name, t] of values) graph.bytes(5, encodeTensor(name, t.dtype, t.dims, t.data));
    out.bytes(7, graph.finish());
  }
  for (const [k, v] of Object.entries(meta.metadata ?? {})) out.message(14, (m) => m.string(1, k).string(2, v));
  for (const name of values.keys()) if (!bound.has(name)) throw new Error(`bindInputs: model has no input '${name}'`);
  return out.finish();
}

/** elemType: ONNX TensorProto.DataType (1 = float32), 0 where not declared. */
export interface ValueInfo {
  name: string;
  dims: (number | string)[];
  elemType: number;
}

export interface ModelInfo {
  inputs: ValueInfo[];
  outputs: ValueInfo[];
  metadata: Record<string, string>;
}

/** Graph inputs/outputs (names, element types and shapes) and metadata_props of a serialised model, without loading it. */
export function modelInfo(model: Uint8Array): ModelInfo {
  const dec = new TextDecoder();
  const str = (fs: ReturnType<typeof readFields>, n: number) => {
    const f = fs.find((x) => x.field === n);
    return f?.data ? dec.decode(f.data) : '';
  };
  const valueInfo = (buf: Uint8Array) => {
    const vi = readFields(buf);
    const dims: (number | string)[] = [];
    const type = vi.find((x) => x.field === 2)?.data;
    const tensor = type ? readFields(type).find((x) => x.field === 1)?.data : undefined;
    const tf = tensor ? readFields(tensor) : [];
    const elem = tf.find((x) => x.field === 1)?.value;
    const shape = tf.find((x) => x.field === 2)?.data;
    if (shape) {
      for (const d of readFields(shape).filter((x) => x.field === 1)) {
        const df = readFields(d.data!);
        const v = df.find((x) => x.field === 1);
        dims.push(v?.value !== undefined ? Number(v.value) : str(df, 2) || '?');
      }
    }
    return { name: str(vi, 1), dims, elemType: elem !== undefined ? Number(elem) : 0 };
  };
  const info: ModelInfo = { inputs: [], outputs: [], metadata: {} };
  for (const f of readFields(model)) {
    if (f.field === 14) {
      const kv = readFields(f.data!);
      info.metadata[str(kv, 1)] = str(kv, 2);
    } else if (f.field === 7) {
      for (const gf of readFields(f.data!)) {
        if (gf.field === 11) info.inputs.push(valueInfo(gf.data!));
        else if (gf.field === 12) info.outputs.push(valueInfo(gf.data!));
      }
    }
  }
  return info;
}
