// A user's ONNX image model as an encoder: what it is (its input, the feature tensor, which weights
// learn) and its graph rebuilt on the builder for a fixed input size (lowerSource), with its
// initializers as the starting weights. Everything the import refuses is refused here, before
// anything is written: unsupported ops, external data, inputs that are not one NCHW RGB image batch.

import { decodeModel, type DecodedModel } from '../../core/onnx/decode.ts';
import type { OnnxNode, OnnxTensor, OnnxValueInfo, DType } from '../../core/onnx/model.ts';
import { Value } from '../graph/graph.ts';
import type { Model } from '../nn/layers.ts';
import { foldNode, valuesOf, type Const } from './fold.ts';
import { HOST_OPS, OPS, type LowerCtx } from './ops.ts';

/** An op or model the import cannot take: the CLI prints the message and exits 2, writing nothing. */
export class ImportError extends Error {}

export interface ImportOptions {
  /** The tensor the SSL loss and kNN use; default: the model's output, or the input of its last Gemm/MatMul when that is the output (a classifier). */
  feature?: string;
  /** Input side in pixels; needed when the model's height and width are dynamic. */
  inputSize?: number;
  /** all | last:N (the last N layers with weights before the feature) | a regular expression over weight names. */
  train: string;
}

export interface SourceModel {
  decoded: DecodedModel;
  input: OnnxValueInfo;
  size: number;
  feature: string;
  /** The model's outputs, as the exported model keeps them. */
  outputs: string[];
  /** Nodes in order, the Identity copies of initializers removed (they are weights of their own: `tensors`). */
  nodes: OnnxNode[];
  /** Float weights by the name the graph uses: initializers, and names an exporter gave a copy of one (torch's deduplication). */
  tensors: Map<string, OnnxTensor>;
  /** Copies: name -> the initializer it copies (the export writes them back as initializers of their own). */
  copies: Map<string, string>;
  /** Weights that learn (parameters) and the running statistics of their batch norms (buffers). */
  params: string[];
  buffers: string[];
  /** Weighted layers that learn (node names). */
  trainNodes: Set<string>;
  /** Weighted layers before the feature, in order (what last:N counts). */
  layers: string[];
}

const DTYPES: Record<number, DType> = { 1: 'float32', 2: 'uint8', 6: 'int32', 7: 'int64', 9: 'bool', 11: 'float64' };
const dtypeOf = (code: number): DType => {
  const d = DTYPES[code];
  if (!d) throw new ImportError(`Cast to element type ${code} is not supported`);
  return d;
};

/** Which inputs of a weighted op are its weights (the rest are activations). */
function weightInputs(n: OnnxNode, isWeight: (name: string) => boolean): number[] {
  return n.inputs.map((x, k) => (x && isWeight(x) ? k : -1)).filter((k) => k >= 0);
}

/** Names the node `target` depends on, by walking producers back. */
function ancestors(nodes: OnnxNode[], target: string): Set<OnnxNode> {
  const producer = new Map<string, OnnxNode>();
  for (const n of nodes) for (const o of n.outputs) producer.set(o, n);
  const seen = new Set<OnnxNode>();
  const stack = [target];
  while (stack.length) {
    const p = producer.get(stack.pop()!);
    if (!p || seen.has(p)) continue;
    seen.add(p);
    stack.push(...p.inputs.filter((x) => x));
  }
  return seen;
}

function defaultFeature(nodes: OnnxNode[], output: string): string {
  const producer = new Map<string, OnnxNode>();
  for (const n of nodes) for (const o of n.outputs) producer.set(o, n);
  let p = producer.get(output);
  while (p?.op === 'Identity') p = producer.get(p.inputs[0]);
  // A classifier: the output comes from a last Gemm/MatMul; the feature is what it classifies.
  return p && (p.op === 'Gemm' || p.op === 'MatMul') ? p.inputs[0] : output;
}

export function prepareSource(bytes: Uint8Array, o: ImportOptions): SourceModel {
  let decoded: DecodedModel;
  try {
    decoded = decodeModel(bytes);
  } catch (e) {
    throw new ImportError((e as Error).message);
  }
  const g = decoded.graph;
  for (const [domain, v] of Object.entries(decoded.opsets)) if ((domain === '' || domain === 'ai.onnx') && v < 9) throw new ImportError(`opset ${v}: ssocl imports models of opset 9 or later`);
  const inits = new Map(g.initializers.map((t) => [t.name, t]));
  const inputs = g.inputs.filter((v) => !inits.has(v.name));
  if (inputs.length !== 1) throw new ImportError(`the model has ${inputs.length} inputs (${inputs.map((v) => v.name).join(', ')}); ssocl imports image models with one input`);
  const input = inputs[0];
  const [, ch, h, w] = input.shape;
  if (input.shape.length !== 4 || ch !== 3 || input.dtype !== 'float32' || g.elemTypes[input.name] !== 1) {
    throw new ImportError(`input '${input.name}' is [${input.shape.join(', ')}] ${input.dtype}; ssocl imports models whose input is float32 [batch, 3, height, width]`);
  }
  // The export keeps this interface and ssocl runs it on batches (the export check, embed, eval): a batch
  // fixed by the exporter (torch.onnx.export without dynamic_axes: 1) would fail there, after training.
  if (typeof input.shape[0] === 'number') {
    const out = g.outputs[0]?.name ?? 'output';
    throw new ImportError(`input '${input.name}' is [${input.shape.join(', ')}], its batch fixed at ${input.shape[0]}; ssocl runs the model on batches of frames: export it with a dynamic batch (torch.onnx.export(..., dynamic_axes={'${input.name}': {0: 'batch'}, '${out}': {0: 'batch'}}))`);
  }
  let size: number;
  if (typeof h === 'number' && typeof w === 'number') {
    if (h !== w) throw new ImportError(`input '${input.name}' is ${h}x${w}; ssocl trains on square images (export the model at a square size, or with dynamic height and width and --input-size)`);
    if (o.inputSize !== undefined && o.inputSize !== h) throw new ImportError(`--input-size ${o.inputSize}: the model's input '${input.name}' is fixed at ${h}x${w} (export it with dynamic height and width to train at another size)`);
    size = h;
  } else {
    if (o.inputSize === undefined) throw new ImportError(`input '${input.name}' has dynamic height and width: give --input-size S`);
    size = o.inputSize;
  }
  // Refuse what cannot be lowered before anything else, naming the first such node.
  for (const n of g.nodes) {
    if ((n.domain && n.domain !== 'ai.onnx') || !(n.op in OPS || HOST_OPS.has(n.op))) {
      throw new ImportError(`unsupported op ${n.domain ? `${n.domain}.` : ''}${n.op} (node '${n.name}'); supported: ${[...Object.keys(OPS), ...HOST_OPS].sort().join(', ')}`);
    }
  }
  // torch.onnx.export stores equal initializers once and makes the others Identity copies of it: each copy is its own weight.
  const tensors = new Map<string, OnnxTensor>();
  for (const t of g.initializers) if (t.dtype === 'float32') tensors.set(t.name, t);
  const copies = new Map<string, string>();
  const nodes: OnnxNode[] = [];
  for (const n of g.nodes) {
    const src = n.op === 'Identity' ? tensors.get(n.inputs[0]) : undefined;
    if (src && !g.outputs.some((v) => v.name === n.outputs[0])) {
      tensors.set(n.outputs[0], { ...src, name: n.outputs[0], data: (src.data as Float32Array).slice() });
      copies.set(n.outputs[0], copies.get(src.name) ?? src.name);
    } else nodes.push(n);
  }
  const outputs = g.outputs.map((v) => v.name);
  const feature = o.feature ?? defaultFeature(nodes, outputs[0]);
  const needed = ancestors(nodes, feature);
  if (!needed.size && feature !== input.name) throw new ImportError(`--feature ${feature}: no node of the model computes a tensor of that name`);
  // ssocl's own export writes BN in inference form, its running statistics as plain constants named
  // buffers.*: not weights (trained by gradient, a variance pushed below 0 turns Sqrt into NaN), frozen.
  const isWeight = (name: string) => tensors.has(name) && tensors.get(name)!.data.length > 1 && !name.startsWith('buffers.');
  const layers = nodes.filter((n) => needed.has(n) && weightInputs(n, isWeight).length);
  const train = selectLayers(layers, o.train, isWeight);
  const params: string[] = [];
  const buffers: string[] = [];
  for (const n of layers) {
    if (!train.has(n.name)) continue;
    for (const k of weightInputs(n, isWeight)) {
      const list = n.op === 'BatchNormalization' && k >= 3 ? buffers : params;
      if (!params.includes(n.inputs[k]) && !buffers.includes(n.inputs[k])) list.push(n.inputs[k]);
    }
  }
  if (!params.length) throw new ImportError(`--train ${o.train}: selects no weights before the feature '${feature}' (the model has ${layers.length} layers with weights there)`);
  return { decoded, input, size, feature, outputs, nodes, tensors, copies, params, buffers, trainNodes: train, layers: layers.map((n) => n.name) };
}

function selectLayers(layers: OnnxNode[], spec: string, isWeight: (name: string) => boolean): Set<string> {
  if (spec === 'all') return new Set(layers.map((n) => n.name));
  const last = /^last:(\d+)$/.exec(spec);
  if (last) {
    const k = Number(last[1]);
    if (k < 1) throw new ImportError(`--train ${spec}: N must be at least 1`);
    return new Set(layers.slice(-k).map((n) => n.name));
  }
  let re: RegExp;
  try {
    re = new RegExp(spec);
  } catch (e) {
    throw new ImportError(`--train ${spec}: not all, last:N or a valid regular expression (${(e as Error).message})`);
  }
  return new Set(layers.filter((n) => weightInputs(n, isWeight).some((k) => re.test(n.inputs[k]))).map((n) => n.name));
}

/** State name of a source weight (a graph input of the step, as params.<name> / buffers.<name>). */
export const stateName = (tensor: string) => `encoder.${tensor}`;

type Entry = { v: Value } | { c: Const; weight?: string };

/**
 * The source graph on the builder from `x` (normalised images): up to the feature in a training
 * model (only what the loss needs), everything in an inference model (the feature and every output).
 */
export function lowerSource(src: SourceModel, model: Model, x: Value): { feature: Value; outputs: Map<string, Value> } {
  const g = model.g;
  const env = new Map<string, Entry>();
  for (const [name, t] of src.tensors) env.set(name, { c: { dtype: t.dtype, dims: t.dims, data: t.data }, weight: name });
  for (const t of src.decoded.graph.initializers) if (!env.has(t.name)) env.set(t.name, { c: { dtype: t.dtype, dims: t.dims, data: t.data } });
  env.set(src.input.name, { v: x });
  const params = new Set(src.params);
  const buffers = new Set(src.buffers);
  const wanted = model.training ? ancestors(src.nodes, src.feature) : null;
  const state = (name: string): Value => {
    const spec = stateName(name);
    const have = model.values.get(spec);
    if (have) return have;
    const t = src.tensors.get(name)!;
    const role = params.has(name) ? 'param' : 'buffer';
    return model.state(spec, t.dims, role, { kind: 'given', data: t.data as Float32Array }, role === 'param' && t.dims.length >= 2);
  };
  const asValue = (name: string, e: Entry, where: OnnxNode): Value => {
    if ('v' in e) return e.v;
    if (e.weight && (params.has(e.weight) || buffers.has(e.weight))) return state(e.weight);
    const vals = e.c.data ?? valuesOf(e.c).map((v) => {
      if (typeof v !== 'number') throw new ImportError(`node '${where.name}' (${where.op}): input '${name}' holds the symbolic size '${v}' as data; not supported`);
      return v;
    });
    return g.constant(vals as never, e.c.dims, e.c.dtype);
  };
  for (const n of src.nodes) {
    if (wanted && !wanted.has(n)) continue;
    const ins = n.inputs.map((name) => (name ? env.get(name) ?? null : null));
    ins.forEach((e, k) => {
      if (!e && n.inputs[k]) throw new ImportError(`node '${n.name}' (${n.op}): input '${n.inputs[k]}' is computed by no node before it`);
    });
    const outs = lowerNode(n, ins, asValue, model, params, buffers);
    n.outputs.forEach((o, k) => {
      if (o && outs[k]) env.set(o, outs[k]!);
    });
  }
  const get = (name: string): Value => {
    const e = env.get(name);
    if (!e) throw new ImportError(`--feature ${name}: no tensor of that name`);
    if (!('v' in e)) throw new ImportError(`--feature ${name}: a constant, not computed from the image`);
    return e.v;
  };
  const outputs = new Map<string, Value>();
  if (!model.training) for (const o of src.outputs) outputs.set(o, get(o));
  return { feature: get(src.feature), outputs };
}

function lowerNode(n: OnnxNode, ins: (Entry | null)[], asValue: (name: string, e: Entry, where: OnnxNode) => Value, model: Model, params: Set<string>, buffers: Set<string>): (Entry | null)[] {
  const where = `node '${n.name}' (${n.op})`;
  if (n.op === 'Constant') {
    const a = n.attrs as Record<string, unknown>;
    const t = (a.value as { t?: OnnxTensor } | undefined)?.t;
    if (t) return [{ c: { dtype: t.dtype, dims: t.dims, data: t.data } }];
    if (a.value_float) return [{ c: { dtype: 'float32', dims: [], vals: [(a.value_float as { f: number }).f] } }];
    if (a.value_int) return [{ c: { dtype: 'int64', dims: [], vals: [(a.value_int as { i: number }).i] } }];
    if (a.value_ints) return [{ c: { dtype: 'int64', dims: [(a.value_ints as { ints: number[] }).ints.length], vals: (a.value_ints as { ints: number[] }).ints } }];
    if (a.value_floats) return [{ c: { dtype: 'float32', dims: [(a.value_floats as { floats: number[] }).floats.length], vals: (a.value_floats as { floats: number[] }).floats } }];
    throw new ImportError(`${where}: a Constant of a kind ssocl does not read`);
  }
  if (n.op === 'Shape') {
    const e = ins[0]!;
    const shape = 'v' in e ? e.v.shape : e.c.dims;
    const r = shape.length;
    const norm = (v: number) => Math.max(0, Math.min(r, v < 0 ? v + r : v));
    const start = norm((n.attrs.start as { i?: number } | undefined)?.i ?? 0);
    const end = norm((n.attrs.end as { i?: number } | undefined)?.i ?? r);
    const vals = shape.slice(start, end);
    return [{ c: { dtype: 'int64', dims: [vals.length], vals } }];
  }
  // Shape arithmetic: every input known on the host and none of them a weight that learns.
  if (ins.every((e) => !e || ('c' in e && !(e.weight && params.has(e.weight))))) {
    try {
      const c = foldNode(n.op, ins.map((e) => (e && 'c' in e ? e.c : null)), n.attrs, dtypeOf);
      if (c) return [{ c }];
    } catch (e) {
      throw new ImportError(`${where}: ${(e as Error).message}`);
    }
  }
  const lower = OPS[n.op];
  if (!lower) throw new ImportError(`unsupported op ${n.op} (${where.replace(/^node /, 'node ').replace(/ \(.*\)$/, '')})`);
  const constOf = (k: number): Const => {
    const e = ins[k];
    if (!e || !('c' in e)) throw new ImportError(`${where}: input ${k} ('${n.inputs[k]}') must be a constant (it is computed from the image)`);
    return e.c;
  };
  const ctx: LowerCtx = {
    g: model.g,
    model,
    node: n,
    value: (k) => {
      const e = ins[k];
      if (!e) throw new ImportError(`${where}: input ${k} is missing`);
      return asValue(n.inputs[k], e, n);
    },
    consts: (k) =>
      valuesOf(constOf(k)).map((v) => {
        if (typeof v !== 'number') throw new ImportError(`${where}: input ${k} holds the symbolic size '${v}'`);
        return v;
      }),
    constsRaw: (k) => valuesOf(constOf(k)),
    constDims: (k) => constOf(k).dims,
    has: (k) => Boolean(n.inputs[k]) && ins[k] !== null,
    bnTraining: () => model.training && params.has(n.inputs[1]),
    bnState: (k) => asValue(n.inputs[k], ins[k]!, n),
    bnUpdate: (k, v) => {
      if (!buffers.has(n.inputs[k])) throw new ImportError(`${where}: running statistic '${n.inputs[k]}' is not state`);
      model.updates.set(stateName(n.inputs[k]), v);
    },
  };
  try {
    return lower(ctx).map((v) => ({ v }));
  } catch (e) {
    if (e instanceof ImportError) throw e;
    throw new ImportError(`${where}: ${(e as Error).message}`);
  }
}
