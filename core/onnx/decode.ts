// Reads a serialised ONNX model (any producer) into plain objects: nodes with typed attributes,
// initializers as typed arrays, graph inputs/outputs with their element types and shapes, opsets and
// metadata. protobufjs decodes the wire format against the field table in schema.ts.
//
// Refused with a line naming the tensor or field: initializers whose data lives in an external file
// (ssocl reads one self-contained file), sparse initializers, and element types ssocl has no use for.

import protobuf from 'protobufjs';
import { protobufJsonSchema } from './schema.ts';
import type { Attr, DType, OnnxNode, OnnxTensor, OnnxValueInfo, TypedData } from './model.ts';

export interface DecodedModel {
  irVersion: number;
  producer: string;
  producerVersion: string;
  domain: string;
  modelVersion: number;
  doc: string;
  /** Opset per domain ('' is ai.onnx). */
  opsets: Record<string, number>;
  metadata: Record<string, string>;
  graph: {
    name: string;
    nodes: (OnnxNode & { domain: string })[];
    initializers: OnnxTensor[];
    inputs: OnnxValueInfo[];
    outputs: OnnxValueInfo[];
    /** Elem types as ONNX codes, for inputs/outputs whose type ssocl does not model (kept on export). */
    elemTypes: Record<string, number>;
  };
}

/** TensorProto.DataType code -> the dtypes ssocl computes with. */
const DTYPE_OF: Record<number, DType> = { 1: 'float32', 2: 'uint8', 6: 'int32', 7: 'int64', 9: 'bool', 11: 'float64' };

let messageType: protobuf.Type | null = null;
function modelType(): protobuf.Type {
  messageType ??= protobuf.Root.fromJSON(protobufJsonSchema()).lookupType('onnx.ModelProto');
  return messageType;
}

type Msg = Record<string, unknown>;
const num = (v: unknown): number => (v === undefined || v === null ? 0 : typeof v === 'number' ? v : Number(String(v)));
const str = (v: unknown): string => (typeof v === 'string' ? v : '');
const text = (b: unknown): string => (b instanceof Uint8Array ? new TextDecoder().decode(b) : '');

function tensorOf(t: Msg, where: string): OnnxTensor {
  const name = str(t.name);
  if (num(t.data_location) === 1 || (Array.isArray(t.external_data) && t.external_data.length)) {
    const loc = (t.external_data as Msg[] | undefined)?.find((e) => e.key === 'location')?.value;
    throw new Error(
      `${where} '${name}' keeps its data in an external file${loc ? ` (${String(loc)})` : ''}: ssocl reads self-contained models only; ` +
        `save it with the data inside the .onnx file (onnx.save_model(model, path, save_as_external_data=False))`,
    );
  }
  const code = num(t.data_type);
  const dtype = DTYPE_OF[code];
  if (!dtype) throw new Error(`${where} '${name}': element type ${code} (TensorProto.DataType) is not supported (accepted: float32, float64, int64, int32, uint8, bool)`);
  const dims = ((t.dims as unknown[]) ?? []).map(num);
  const n = dims.reduce((a, b) => a * b, 1);
  const raw = t.raw_data instanceof Uint8Array && t.raw_data.length ? t.raw_data : null;
  let data: TypedData;
  if (raw) {
    // Copy: the decoded buffer is a view into the file and may not be aligned for the element size.
    const copy = new Uint8Array(raw);
    data =
      dtype === 'float32' ? new Float32Array(copy.buffer) :
      dtype === 'float64' ? new Float64Array(copy.buffer) :
      dtype === 'int64' ? new BigInt64Array(copy.buffer) :
      dtype === 'int32' ? new Int32Array(copy.buffer) : copy;
  } else {
    const list = (field: string) => ((t[field] as unknown[]) ?? []);
    if (dtype === 'float32') data = Float32Array.from(list('float_data') as number[]);
    else if (dtype === 'float64') data = Float64Array.from(list('double_data') as number[]);
    else if (dtype === 'int64') data = BigInt64Array.from(list('int64_data').map((v) => BigInt(String(v))));
    else if (dtype === 'int32') data = Int32Array.from(list('int32_data') as number[]);
    else data = Uint8Array.from(list('int32_data') as number[]);
  }
  if (data.length !== n) throw new Error(`${where} '${name}': ${data.length} values for dims [${dims.join(', ')}]`);
  return { name, dtype, dims, data };
}

function attrOf(a: Msg, node: string): [string, Attr | { t: OnnxTensor }] | null {
  const name = str(a.name);
  switch (num(a.type)) {
    case 1:
      return [name, { f: num(a.f) }];
    case 2:
      return [name, { i: num(a.i) }];
    case 3:
      return [name, { s: text(a.s) }];
    case 4:
      return [name, { t: tensorOf(a.t as Msg, `node '${node}' attribute ${name}`) }];
    case 6:
      return [name, { floats: ((a.floats as number[]) ?? []).slice() }];
    case 7:
      return [name, { ints: ((a.ints as unknown[]) ?? []).map(num) }];
    default:
      // Graphs, strings lists and the rest: ops that carry them are not supported anyway; the op table names them.
      return null;
  }
}

function valueInfo(v: Msg, elemTypes: Record<string, number>): OnnxValueInfo {
  const name = str(v.name);
  const tt = (v.type as Msg | undefined)?.tensor_type as Msg | undefined;
  const code = num(tt?.elem_type);
  elemTypes[name] = code;
  const dims = (((tt?.shape as Msg | undefined)?.dim as Msg[]) ?? []).map((d, i) => (Object.hasOwn(d, 'dim_value') ? num(d.dim_value) : str(d.dim_param) || `${name}_dim${i}`));
  return { name, dtype: DTYPE_OF[code] ?? 'float32', shape: dims };
}

export function decodeModel(bytes: Uint8Array): DecodedModel {
  let m: Msg;
  try {
    m = modelType().decode(bytes) as unknown as Msg;
  } catch (e) {
    throw new Error(`not an ONNX model (protobuf: ${(e as Error).message})`);
  }
  const g = m.graph as Msg | undefined;
  if (!g) throw new Error('not an ONNX model: it has no graph');
  if (Array.isArray(g.sparse_initializer) && g.sparse_initializer.length) throw new Error('the model has sparse initializers; ssocl reads dense initializers only');
  const opsets: Record<string, number> = {};
  for (const o of (m.opset_import as Msg[]) ?? []) opsets[str(o.domain)] = num(o.version);
  const metadata: Record<string, string> = {};
  for (const kv of (m.metadata_props as Msg[]) ?? []) metadata[str(kv.key)] = str(kv.value);
  const elemTypes: Record<string, number> = {};
  const nodes = ((g.node as Msg[]) ?? []).map((n, k) => {
    const name = str(n.name) || `${str(n.op_type)}_${k}`;
    const attrs: Record<string, Attr> = {};
    for (const a of (n.attribute as Msg[]) ?? []) {
      const kv = attrOf(a, name);
      if (kv) attrs[kv[0]] = kv[1] as Attr;
    }
    return { op: str(n.op_type), name, domain: str(n.domain), inputs: ((n.input as string[]) ?? []).slice(), outputs: ((n.output as string[]) ?? []).slice(), attrs };
  });
  return {
    irVersion: num(m.ir_version),
    producer: str(m.producer_name),
    producerVersion: str(m.producer_version),
    domain: str(m.domain),
    modelVersion: num(m.model_version),
    doc: str(m.doc_string),
    opsets,
    metadata,
    graph: {
      name: str(g.name),
      nodes,
      initializers: ((g.initializer as Msg[]) ?? []).map((t) => tensorOf(t, 'initializer')),
      inputs: ((g.input as Msg[]) ?? []).map((v) => valueInfo(v, elemTypes)),
      outputs: ((g.output as Msg[]) ?? []).map((v) => valueInfo(v, elemTypes)),
      elemTypes,
    },
  };
}
