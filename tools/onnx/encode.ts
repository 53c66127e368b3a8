// Serialises a builder Graph to an ONNX ModelProto through core's encoder. Builder-only markers
// (StopGradient, Custom) become Identity nodes; everything else is emitted as the standard op it is.

import { encodeOnnx, type ModelMeta, type OnnxGraph, type OnnxNode } from '../../core/onnx/model.ts';
import type { Graph, Value } from '../graph/graph.ts';

/**
 * Builder markers to standard ops: StopGradient is Identity; Custom is one Identity per forward result.
 * A MaxPool's Indices output that nothing reads is left off (ORT's WebGPU EP refuses to compute it).
 */
function lowerNodes(g: Graph): OnnxNode[] {
  const out: OnnxNode[] = [];
  const read = new Set<Value>(g.outputs);
  for (const n of g.nodes) for (const i of n.inputs) if (i) read.add(i);
  for (const n of g.nodes) {
    const names = (vs: (Value | null)[]) => vs.map((v) => (v ? v.name : ''));
    if (n.op === 'MaxPool' && n.outputs.length === 2 && !read.has(n.outputs[1])) {
      out.push({ op: n.op, name: n.name, inputs: names(n.inputs), outputs: [n.outputs[0].name], attrs: n.attrs });
      continue;
    }
    if (n.op === 'Custom') {
      const inner = n.inputs.slice(n.inputs.length - n.outputs.length);
      n.outputs.forEach((o, k) => out.push({ op: 'Identity', name: `${n.name}_${k}`, inputs: [inner[k]!.name], outputs: [o.name], attrs: {} }));
    } else {
      out.push({ op: n.op === 'StopGradient' ? 'Identity' : n.op, name: n.name, inputs: names(n.inputs), outputs: names(n.outputs), attrs: n.attrs, ...(n.domain ? { domain: n.domain } : {}) });
    }
  }
  return out;
}

export function lowerGraph(g: Graph, graphName: string): OnnxGraph {
  return {
    name: graphName,
    nodes: lowerNodes(g),
    initializers: g.initializers.map((init) => ({ name: init.value.name, dtype: init.value.dtype, dims: init.value.dims(), data: init.data })),
    inputs: g.inputs.map((v) => ({ name: v.name, dtype: v.dtype, shape: v.shape })),
    outputs: g.outputs.map((v) => ({ name: v.name, dtype: v.dtype, shape: v.shape })),
  };
}

export function encodeModel(g: Graph, graphName: string, meta: ModelMeta = {}): Uint8Array {
  return encodeOnnx(lowerGraph(g, graphName), meta);
}
