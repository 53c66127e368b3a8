// ONNX ModelProto (opset 18, IR version 8) from a plain description of its graph, and the two things
// the runtime does with serialised models: bind inputs as initializers (export) and read the
// inputs, outputs and metadata (checks before use). No graph builder here, so the runtime can use it:
// tools/onnx/encode.ts lowers the builder's Graph to an OnnxGraph; agent/buffer/similarity.ts writes
// its one-node model directly.

import { ProtoWriter, readFields } from './protobuf.ts';
import { ATTR_TYPE, ONNX_FIELDS } from './schema.ts';

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
  /** An operator set other than ONNX's own (e.g. ORT's com.microsoft.nchwc); imported at version 1. */
  domain?: string;
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

/** Field numbers, from the one table (schema.ts) the decoder reads with. */
const F = ONNX_FIELDS;
const no = <T extends readonly [number, ...unknown[]]>(def: T): number => def[0];

function writeShape(w: ProtoWriter, dtype: DType, shape: Shape): void {
  w.message(no(F.TypeProto.tensor_type), (tensor) => {
    tensor.int(no(F.TypeProtoTensor.elem_type), ONNX_DTYPE[dtype]);
    tensor.message(no(F.TypeProtoTensor.shape), (s) => {
      for (const d of shape) s.message(no(F.TensorShapeProto.dim), (dim) => (typeof d === 'number' ? dim.int(no(F.Dimension.dim_value), d) : dim.string(no(F.Dimension.dim_param), d)));
    });
  });
}

function writeValueInfo(w: ProtoWriter, field: number, name: string, dtype: DType, shape: Shape): void {
  w.message(field, (vi) => {
    vi.string(no(F.ValueInfoProto.name), name);
    vi.message(no(F.ValueInfoProto.type), (t) => writeShape(t, dtype, shape));
  });
}

export function tensorBytes(data: TypedData): Uint8Array {
  // Little-endian host assumed (x86-64, arm64), as ONNX raw_data requires.
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

export function encodeTensor(name: string, dtype: DType, dims: number[], data: TypedData): Uint8Array {
  const w = new ProtoWriter();
  for (const d of dims) w.int(no(F.TensorProto.dims), d);
  w.int(no(F.TensorProto.data_type), ONNX_DTYPE[dtype]);
  w.string(no(F.TensorProto.name), name);
  w.bytes(no(F.TensorProto.raw_data), tensorBytes(data));
  return w.finish();
}

function writeAttr(w: ProtoWriter, name: string, a: Attr): void {
  const A = F.AttributeProto;
  w.message(no(F.NodeProto.attribute), (m) => {
    m.string(no(A.name), name);
    if ('i' in a) m.int(no(A.i), a.i).int(no(A.type), ATTR_TYPE.INT);
    else if ('f' in a) m.float(no(A.f), a.f).int(no(A.type), ATTR_TYPE.FLOAT);
    else if ('s' in a) m.string(no(A.s), a.s).int(no(A.type), ATTR_TYPE.STRING);
    else if ('ints' in a) {
      for (const v of a.ints) m.int(no(A.ints), v);
      m.int(no(A.type), ATTR_TYPE.INTS);
    } else {
      for (const v of a.floats) m.float(no(A.floats), v);
      m.int(no(A.type), ATTR_TYPE.FLOATS);
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
  const M = F.ModelProto;
  const G = F.GraphProto;
  const N = F.NodeProto;
  const w = new ProtoWriter();
  w.int(no(M.ir_version), IR_VERSION);
  w.string(no(M.producer_name), meta.producer ?? 'ssocl-tools');
  w.string(no(M.producer_version), meta.producerVersion ?? '0');
  if (meta.doc) w.string(no(M.doc_string), meta.doc);
  w.message(no(M.graph), (gw) => {
    for (const n of g.nodes) {
      gw.message(no(G.node), (nw) => {
        for (const i of n.inputs) nw.string(no(N.input), i);
        for (const o of n.outputs) nw.string(no(N.output), o);
        nw.string(no(N.name), n.name);
        nw.string(no(N.op_type), n.op);
        for (const [k, v] of Object.entries(n.attrs)) writeAttr(nw, k, v);
        if (n.domain) nw.string(no(N.domain), n.domain);
      });
    }
    gw.string(no(G.name), g.name);
    for (const t of g.initializers) gw.bytes(no(G.initializer), encodeTensor(t.name, t.dtype, t.dims, t.data));
    for (const v of g.inputs) writeValueInfo(gw, no(G.input), v.name, v.dtype, v.shape);
    for (const v of g.outputs) writeValueInfo(gw, no(G.output), v.name, v.dtype, v.shape);
  });
  w.message(no(M.opset_import), (o) => o.string(no(F.OperatorSetIdProto.domain), '').int(no(F.OperatorSetIdProto.version), OPSET));
  for (const d of new Set(g.nodes.map((n) => n.domain).filter(Boolean))) w.message(no(M.opset_import), (o) => o.string(no(F.OperatorSetIdProto.domain), d!).int(no(F.OperatorSetIdProto.version), 1));
  for (const [k, v] of Object.entries(meta.metadata ?? {})) w.message(no(M.metadata_props), (m) => m.string(no(F.StringStringEntryProto.key), k).string(no(F.StringStringEntryProto.value), v));
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
    if (f.field === no(F.ModelProto.metadata_props) && meta.metadata) continue; // replaced below
    if (f.field !== 7) {
      out.raw(f.raw);
      continue;
    }
    const graph = new ProtoWriter();
    for (const gf of readFields(f.data!)) {
      if (gf.field === no(F.GraphProto.input)) {
        const nameField = readFields(gf.data!).find((x) => x.field === no(F.ValueInfoProto.name));
        const name = decoder.decode(nameField!.data!);
        if (values.has(name)) {
          bound.add(name);
          continue;
        }
      }
      graph.raw(gf.raw);
    }
    for (const [name, t] of values) graph.bytes(no(F.GraphProto.initializer), encodeTensor(name, t.dtype, t.dims, t.data));
    out.bytes(no(F.ModelProto.graph), graph.finish());
  }
  for (const [k, v] of Object.entries(meta.metadata ?? {})) out.message(no(F.ModelProto.metadata_props), (m) => m.string(no(F.StringStringEntryProto.key), k).string(no(F.StringStringEntryProto.value), v));
  for (const name of values.keys()) if (!bound.has(name)) throw new Error(`bindInputs: model has no input '${name}'`);
  return out.finish();
}

/**
 * The same model with new values for some of its weights, everything else as it was (nodes, inputs,
 * outputs, opsets, doc strings, metadata): how an imported model's learnt weights are exported.
 * `values` are initializers by name; a name produced by an Identity copy of an initializer (torch's
 * deduplication) becomes an initializer of its own and its Identity node goes. `metadata` entries are
 * added to the model's own, replacing those of the same key.
 */
export function replaceWeights(model: Uint8Array, values: Map<string, { dtype: DType; dims: number[]; data: TypedData }>, metadata: Record<string, string> = {}): Uint8Array {
  const dec = new TextDecoder();
  const strField = (buf: Uint8Array, field: number) => {
    const f = readFields(buf).find((x) => x.field === field);
    return f?.data ? dec.decode(f.data) : '';
  };
  const out = new ProtoWriter();
  const written = new Set<string>();
  const dropped = new Set<string>();
  for (const f of readFields(model)) {
    if (f.field === no(F.ModelProto.metadata_props)) {
      if (strField(f.data!, no(F.StringStringEntryProto.key)) in metadata) continue; // replaced below
      out.raw(f.raw);
      continue;
    }
    if (f.field !== no(F.ModelProto.graph)) {
      out.raw(f.raw);
      continue;
    }
    const graph = new ProtoWriter();
    for (const gf of readFields(f.data!)) {
      if (gf.field === no(F.GraphProto.node)) {
        const nf = readFields(gf.data!);
        const op = nf.find((x) => x.field === no(F.NodeProto.op_type));
        const outs = nf.filter((x) => x.field === no(F.NodeProto.output)).map((x) => dec.decode(x.data!));
        if (op && dec.decode(op.data!) === 'Identity' && outs.length === 1 && values.has(outs[0])) {
          dropped.add(outs[0]);
          continue;
        }
      } else if (gf.field === no(F.GraphProto.initializer)) {
        const name = strField(gf.data!, no(F.TensorProto.name));
        const t = values.get(name);
        if (t) {
          graph.bytes(no(F.GraphProto.initializer), encodeTensor(name, t.dtype, t.dims, t.data));
          written.add(name);
          continue;
        }
      }
      graph.raw(gf.raw);
    }
    for (const name of dropped) {
      const t = values.get(name)!;
      graph.bytes(no(F.GraphProto.initializer), encodeTensor(name, t.dtype, t.dims, t.data));
      written.add(name);
    }
    out.bytes(no(F.ModelProto.graph), graph.finish());
  }
  for (const [k, v] of Object.entries(metadata)) out.message(no(F.ModelProto.metadata_props), (m) => m.string(no(F.StringStringEntryProto.key), k).string(no(F.StringStringEntryProto.value), v));
  for (const name of values.keys()) if (!written.has(name)) throw new Error(`replaceWeights: the model has no initializer or Identity copy named '${name}'`);
  return out.finish();
}

/**
 * How an imported model's export is read as an ssocl encoder (metadata `ssocl.encoder`, JSON): its image
 * input, the normalisation it expects, the feature tensor and how it becomes [batch, width].
 */
export interface EncoderView {
  input: string;
  mean: number[];
  std: number[];
  feature: string;
  /** none: already [batch, width]; flatten: [batch, C, 1, 1]; pool: [batch, C, h, w], averaged over space. */
  reduce: 'none' | 'flatten' | 'pool';
  width: number;
  /** The side the model trained at: the view's input is [batch, 3, size, size] even where the model's height and width are dynamic. */
  size: number;
}

/**
 * The model seen through ssocl's encoder interface, in memory (the file keeps its own): input `images`
 * in [0, 1] (normalised by two nodes in front of the model's input) and output `features` (the feature
 * tensor, flattened or pooled), beside the model's own outputs. What `ssocl embed`/`eval` load for an
 * imported model's export.
 */
export function encoderView(model: Uint8Array, v: EncoderView): Uint8Array {
  const dec = new TextDecoder();
  const out = new ProtoWriter();
  const node = (w: ProtoWriter, op: string, name: string, inputs: string[], outputs: string[], attrs: Record<string, Attr> = {}) =>
    w.message(no(F.GraphProto.node), (nw) => {
      for (const i of inputs) nw.string(no(F.NodeProto.input), i);
      for (const o of outputs) nw.string(no(F.NodeProto.output), o);
      nw.string(no(F.NodeProto.name), name);
      nw.string(no(F.NodeProto.op_type), op);
      for (const [k, a] of Object.entries(attrs)) writeAttr(nw, k, a);
    });
  let batch: Dim = 'batch';
  for (const f of readFields(model)) {
    if (f.field !== no(F.ModelProto.graph)) {
      out.raw(f.raw);
      continue;
    }
    const graph = new ProtoWriter();
    node(graph, 'Sub', 'ssocl.normalize.sub', ['images', 'ssocl.mean'], ['ssocl.centred']);
    node(graph, 'Mul', 'ssocl.normalize.mul', ['ssocl.centred', 'ssocl.inv_std'], [v.input]);
    if (v.reduce === 'pool') node(graph, 'GlobalAveragePool', 'ssocl.features.pool', [v.feature], ['ssocl.pooled']);
    const src = v.reduce === 'pool' ? 'ssocl.pooled' : v.feature;
    if (v.reduce === 'none') node(graph, 'Identity', 'ssocl.features', [src], ['features']);
    else node(graph, 'Flatten', 'ssocl.features', [src], ['features'], { axis: { i: 1 } });
    for (const gf of readFields(f.data!)) {
      if (gf.field === no(F.GraphProto.input)) {
        const name = readFields(gf.data!).find((x) => x.field === no(F.ValueInfoProto.name));
        if (name && dec.decode(name.data!) === v.input) {
          batch = modelInfo(model).inputs.find((i) => i.name === v.input)!.dims[0] ?? 'batch';
          writeValueInfo(graph, no(F.GraphProto.input), 'images', 'float32', [batch, 3, v.size, v.size]);
          continue;
        }
      }
      graph.raw(gf.raw);
    }
    graph.bytes(no(F.GraphProto.initializer), encodeTensor('ssocl.mean', 'float32', [1, 3, 1, 1], Float32Array.from(v.mean)));
    graph.bytes(no(F.GraphProto.initializer), encodeTensor('ssocl.inv_std', 'float32', [1, 3, 1, 1], Float32Array.from(v.std, (x) => 1 / x)));
    writeValueInfo(graph, no(F.GraphProto.output), 'features', 'float32', [batch, v.width]);
    out.bytes(no(F.ModelProto.graph), graph.finish());
  }
  return out.finish();
}

/** The model as ssocl's tools read an encoder: an imported model's export through its `ssocl.encoder` view, any other unchanged. */
export function asEncoder(model: Uint8Array): Uint8Array {
  const info = modelInfo(model);
  const view = info.metadata['ssocl.encoder'];
  return view && !info.inputs.some((i) => i.name === 'images') ? encoderView(model, JSON.parse(view) as EncoderView) : model;
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
    const type = vi.find((x) => x.field === no(F.ValueInfoProto.type))?.data;
    const tensor = type ? readFields(type).find((x) => x.field === no(F.TypeProto.tensor_type))?.data : undefined;
    const tf = tensor ? readFields(tensor) : [];
    const elem = tf.find((x) => x.field === no(F.TypeProtoTensor.elem_type))?.value;
    const shape = tf.find((x) => x.field === no(F.TypeProtoTensor.shape))?.data;
    if (shape) {
      for (const d of readFields(shape).filter((x) => x.field === no(F.TensorShapeProto.dim))) {
        const df = readFields(d.data!);
        const v = df.find((x) => x.field === no(F.Dimension.dim_value));
        dims.push(v?.value !== undefined ? Number(v.value) : str(df, no(F.Dimension.dim_param)) || '?');
      }
    }
    return { name: str(vi, no(F.ValueInfoProto.name)), dims, elemType: elem !== undefined ? Number(elem) : 0 };
  };
  const info: ModelInfo = { inputs: [], outputs: [], metadata: {} };
  for (const f of readFields(model)) {
    if (f.field === no(F.ModelProto.metadata_props)) {
      const kv = readFields(f.data!);
      info.metadata[str(kv, no(F.StringStringEntryProto.key))] = str(kv, no(F.StringStringEntryProto.value));
    } else if (f.field === no(F.ModelProto.graph)) {
      for (const gf of readFields(f.data!)) {
        if (gf.field === no(F.GraphProto.input)) info.inputs.push(valueInfo(gf.data!));
        else if (gf.field === no(F.GraphProto.output)) info.outputs.push(valueInfo(gf.data!));
      }
    }
  }
  return info;
}
