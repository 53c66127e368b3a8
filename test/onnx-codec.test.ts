// The hand-written ONNX writer (core/onnx/model.ts) against the protobufjs decoder (core/onnx/decode.ts):
// every kind of model ssocl writes decodes to exactly the graph it was written from (nodes, attributes,
// initializers bit for bit, inputs, outputs, opset, metadata), and the two export paths (bindInputs,
// replaceWeights) change only what they are asked to. External-data initializers are refused by name.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeModel, type DecodedModel } from '../core/onnx/decode.ts';
import { IR_VERSION, OPSET, bindInputs, encodeOnnx, replaceWeights, type OnnxGraph } from '../core/onnx/model.ts';
import { ProtoWriter } from '../core/onnx/protobuf.ts';
import { fieldNo } from '../core/onnx/schema.ts';
import { buildEmbed, buildTrainStep } from '../tools/artifacts/build.ts';
import { lowerGraph } from '../tools/onnx/encode.ts';
import { similarityModel } from '../agent/buffer/similarity.ts';
import { tinyFusedPreset, tinyPreset } from './helpers/tiny.ts';

const bytesOf = (d: ArrayBufferView) => Buffer.from(d.buffer, d.byteOffset, d.byteLength);

/** The decoded model is the graph it was written from, field by field. */
function assertSame(decoded: DecodedModel, g: OnnxGraph, meta: Record<string, string> = {}): void {
  assert.equal(decoded.irVersion, IR_VERSION);
  assert.deepEqual(decoded.opsets, { '': OPSET });
  assert.deepEqual(decoded.metadata, meta);
  const d = decoded.graph;
  assert.equal(d.name, g.name);
  assert.equal(d.nodes.length, g.nodes.length);
  g.nodes.forEach((n, i) => {
    const m = d.nodes[i];
    assert.deepEqual({ op: m.op, name: m.name, inputs: m.inputs, outputs: m.outputs }, { op: n.op, name: n.name, inputs: n.inputs, outputs: n.outputs }, `node ${n.name}`);
    // Floats are written as float32: compare with the value rounded as the file holds it.
    const attrs = Object.fromEntries(Object.entries(n.attrs).map(([k, a]) => [k, 'f' in a ? { f: Math.fround(a.f) } : 'floats' in a ? { floats: a.floats.map(Math.fround) } : a]));
    assert.deepEqual(m.attrs, attrs, `attributes of node ${n.name}`);
  });
  assert.deepEqual(d.initializers.map((t) => [t.name, t.dtype, t.dims]), g.initializers.map((t) => [t.name, t.dtype, t.dims]));
  d.initializers.forEach((t, i) => assert.ok(bytesOf(t.data).equals(bytesOf(g.initializers[i].data)), `initializer ${t.name} bytes`));
  assert.deepEqual(d.inputs, g.inputs);
  assert.deepEqual(d.outputs, g.outputs);
}

test('every model the writer makes decodes to the graph it was written from: train steps (single, fused, crops in the graph), embed graphs, the similarity model', () => {
  for (const p of [tinyPreset(), tinyFusedPreset(2, true)]) {
    for (const [name, g] of [['train_step', buildTrainStep(p).g], ['embed', buildEmbed(p).g]] as const) {
      const graph = lowerGraph(g, `${p.name}.${name}`);
      const meta = { producer: 'ssocl-tools', producerVersion: '9.9.9', metadata: { 'ssocl.test': name } };
      const decoded = decodeModel(encodeOnnx(graph, meta));
      assert.equal(decoded.producer, 'ssocl-tools');
      assert.equal(decoded.producerVersion, '9.9.9');
      assertSame(decoded, graph, { 'ssocl.test': name });
    }
  }
  const sim = decodeModel(similarityModel());
  assert.deepEqual(sim.graph.nodes.map((n) => [n.op, n.attrs]), [['Gemm', { transB: { i: 1 } }]]);
  assert.deepEqual(sim.graph.inputs.map((v) => v.shape), [['na', 'd'], ['nb', 'd']]);
});

test('bindInputs and replaceWeights change only the tensors named: bound inputs become initializers, replaced initializers and Identity copies take the new values, metadata merges', () => {
  const graph: OnnxGraph = {
    name: 'g',
    nodes: [
      { op: 'Identity', name: 'copy', inputs: ['w'], outputs: ['w2'] , attrs: {} },
      { op: 'Mul', name: 'm1', inputs: ['x', 'w'], outputs: ['h'], attrs: {} },
      { op: 'Add', name: 'a1', inputs: ['h', 'w2'], outputs: ['y'], attrs: {} },
    ],
    initializers: [{ name: 'w', dtype: 'float32', dims: [2], data: Float32Array.from([1, 2]) }],
    inputs: [
      { name: 'x', dtype: 'float32', shape: ['batch', 2] },
      { name: 'v', dtype: 'float32', shape: [2] },
    ],
    outputs: [{ name: 'y', dtype: 'float32', shape: ['batch', 2] }],
  };
  const bytes = encodeOnnx(graph, { metadata: { keep: 'me', 'ssocl.step': '0' } });
  const bound = decodeModel(bindInputs(bytes, new Map([['v', { dtype: 'float32', dims: [2], data: Float32Array.from([5, 6]) }]]), { metadata: { a: 'b' } }));
  assert.deepEqual(bound.graph.inputs.map((v) => v.name), ['x']);
  assert.deepEqual(Array.from(bound.graph.initializers.find((t) => t.name === 'v')!.data as Float32Array), [5, 6]);
  assert.deepEqual(bound.metadata, { a: 'b' });

  const replaced = decodeModel(replaceWeights(bytes, new Map([
    ['w', { dtype: 'float32', dims: [2], data: Float32Array.from([3, 4]) }],
    ['w2', { dtype: 'float32', dims: [2], data: Float32Array.from([7, 8]) }],
  ]), { 'ssocl.step': '12' }));
  assert.deepEqual(replaced.graph.nodes.map((n) => n.name), ['m1', 'a1'], 'the Identity copy became an initializer of its own');
  assert.deepEqual(replaced.graph.initializers.map((t) => [t.name, Array.from(t.data as Float32Array)]), [['w', [3, 4]], ['w2', [7, 8]]]);
  assert.deepEqual(replaced.graph.inputs, decodeModel(bytes).graph.inputs);
  assert.deepEqual(replaced.graph.outputs, decodeModel(bytes).graph.outputs);
  assert.deepEqual(replaced.metadata, { keep: 'me', 'ssocl.step': '12' });
  assert.throws(() => replaceWeights(bytes, new Map([['nope', { dtype: 'float32', dims: [1], data: new Float32Array(1) }]])), /no initializer or Identity copy named 'nope'/);
});

test('an initializer whose data lives in an external file is refused, naming it and the file', () => {
  const F = (m: Parameters<typeof fieldNo>[0], f: string) => fieldNo(m, f as never);
  const w = new ProtoWriter();
  w.int(F('ModelProto', 'ir_version'), 8);
  w.message(F('ModelProto', 'graph'), (g) => {
    g.message(F('GraphProto', 'initializer'), (t) => {
      t.int(F('TensorProto', 'dims'), 4).int(F('TensorProto', 'data_type'), 1).string(F('TensorProto', 'name'), 'conv.weight');
      t.message(F('TensorProto', 'external_data'), (kv) => kv.string(1, 'location').string(2, 'weights.bin'));
      t.int(F('TensorProto', 'data_location'), 1);
    });
  });
  assert.throws(() => decodeModel(w.finish()), /initializer 'conv\.weight' keeps its data in an external file \(weights\.bin\)/);
  assert.throws(() => decodeModel(Uint8Array.from([0xff, 0xff, 0xff])), /not an ONNX model/);
});
