// The ONNX protobuf messages ssocl reads and writes, as one table of field numbers (from onnx/onnx's
// onnx.proto, the normative IR definition). The hand-written writer (model.ts) and the splicing on
// export name fields through ONNX_FIELDS; the decoder (decode.ts) hands the same table to protobufjs as
// a reflection schema, so the two cannot disagree. Only the messages a dense model uses are declared:
// protobufjs skips fields it does not know (sparse initializers, functions, training info), and the
// decoder refuses a model that needs one of them.

type Kind = 'int64' | 'int32' | 'float' | 'double' | 'uint64' | 'string' | 'bytes';
/** [field number, type (a scalar kind or a message name), repeated?] */
type FieldDef = [number, Kind | string, boolean?];

export const ONNX_FIELDS = {
  ModelProto: {
    ir_version: [1, 'int64'],
    producer_name: [2, 'string'],
    producer_version: [3, 'string'],
    domain: [4, 'string'],
    model_version: [5, 'int64'],
    doc_string: [6, 'string'],
    graph: [7, 'GraphProto'],
    opset_import: [8, 'OperatorSetIdProto', true],
    metadata_props: [14, 'StringStringEntryProto', true],
    training_info: [20, 'bytes', true],
    functions: [25, 'bytes', true],
  },
  OperatorSetIdProto: { domain: [1, 'string'], version: [2, 'int64'] },
  StringStringEntryProto: { key: [1, 'string'], value: [2, 'string'] },
  GraphProto: {
    node: [1, 'NodeProto', true],
    name: [2, 'string'],
    initializer: [5, 'TensorProto', true],
    doc_string: [10, 'string'],
    input: [11, 'ValueInfoProto', true],
    output: [12, 'ValueInfoProto', true],
    value_info: [13, 'ValueInfoProto', true],
    sparse_initializer: [15, 'bytes', true],
  },
  NodeProto: {
    input: [1, 'string', true],
    output: [2, 'string', true],
    name: [3, 'string'],
    op_type: [4, 'string'],
    attribute: [5, 'AttributeProto', true],
    doc_string: [6, 'string'],
    domain: [7, 'string'],
  },
  AttributeProto: {
    name: [1, 'string'],
    f: [2, 'float'],
    i: [3, 'int64'],
    s: [4, 'bytes'],
    t: [5, 'TensorProto'],
    g: [6, 'GraphProto'],
    floats: [7, 'float', true],
    ints: [8, 'int64', true],
    strings: [9, 'bytes', true],
    tensors: [10, 'TensorProto', true],
    graphs: [11, 'GraphProto', true],
    doc_string: [13, 'string'],
    type: [20, 'int32'],
    ref_attr_name: [21, 'string'],
  },
  TensorProto: {
    dims: [1, 'int64', true],
    data_type: [2, 'int32'],
    float_data: [4, 'float', true],
    int32_data: [5, 'int32', true],
    string_data: [6, 'bytes', true],
    int64_data: [7, 'int64', true],
    name: [8, 'string'],
    raw_data: [9, 'bytes'],
    double_data: [10, 'double', true],
    uint64_data: [11, 'uint64', true],
    doc_string: [12, 'string'],
    external_data: [13, 'StringStringEntryProto', true],
    data_location: [14, 'int32'],
  },
  ValueInfoProto: { name: [1, 'string'], type: [2, 'TypeProto'], doc_string: [3, 'string'] },
  TypeProto: { tensor_type: [1, 'TypeProtoTensor'], denotation: [6, 'string'] },
  TypeProtoTensor: { elem_type: [1, 'int32'], shape: [2, 'TensorShapeProto'] },
  TensorShapeProto: { dim: [1, 'Dimension', true] },
  Dimension: { dim_value: [1, 'int64'], dim_param: [2, 'string'], denotation: [3, 'string'] },
} as const satisfies Record<string, Record<string, FieldDef>>;

/** AttributeProto.AttributeType codes. */
export const ATTR_TYPE = { FLOAT: 1, INT: 2, STRING: 3, TENSOR: 4, GRAPH: 5, FLOATS: 6, INTS: 7, STRINGS: 8 } as const;

/** The field number of `message.field`, for the writer. */
export function fieldNo<M extends keyof typeof ONNX_FIELDS>(message: M, field: keyof (typeof ONNX_FIELDS)[M]): number {
  return (ONNX_FIELDS[message][field] as unknown as FieldDef)[0];
}

const PACKED = new Set(['int64', 'int32', 'float', 'double', 'uint64']);

/** The table as a protobufjs JSON descriptor (package onnx, proto2 semantics: numeric repeats accept packed and unpacked). */
export function protobufJsonSchema(): Record<string, unknown> {
  const nested: Record<string, unknown> = {};
  for (const [message, fields] of Object.entries(ONNX_FIELDS)) {
    const out: Record<string, unknown> = {};
    for (const [name, def] of Object.entries(fields as Record<string, FieldDef>)) {
      const [id, type, repeated] = def;
      out[name] = { id, type, ...(repeated ? { rule: 'repeated', ...(PACKED.has(type) ? { options: { packed: false } } : {}) } : {}) };
    }
    nested[message] = { fields: out };
  }
  return { nested: { onnx: { nested } } };
}
