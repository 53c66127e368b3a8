// The shape arithmetic exporters emit folds to constants for the fixed input size: a channel shuffle
// written as torch exports it (Shape -> Gather -> Unsqueeze -> Concat with a Constant -> Cast -> Reshape
// -> Transpose -> Reshape) imports with the batch kept symbolic in the embedding graph, leaves no Shape
// node in either graph, computes what the source computes, and trains; its export (the source's
// interface) loads in ssocl's encoder loader through the view its metadata describes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { encodeOnnx, type OnnxGraph } from '../core/onnx/model.ts';
import { decodeModel } from '../core/onnx/decode.ts';
import { compileFromOnnx } from '../tools/import/artifacts.ts';
import { writeArtifacts } from '../tools/artifacts/write.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { bindEncoder, sourceWithState } from '../agent/export/export.ts';
import { Encoder } from '../agent/infer/encoder.ts';
import { Rng } from '../core/rng.ts';

const S = 6;
const rng = new Rng(11);
const rand = (n: number) => Float32Array.from({ length: n }, () => rng.normal() * 0.5);
const i64 = (xs: number[]) => BigInt64Array.from(xs.map(BigInt));

function shuffleModel(): Uint8Array {
  const g: OnnxGraph = {
    name: 'shuffle',
    nodes: [
      { op: 'Conv', name: 'conv', inputs: ['x', 'w1', 'b1'], outputs: ['c'], attrs: { pads: { ints: [1, 1, 1, 1] } } },
      { op: 'Shape', name: 'shape', inputs: ['c'], outputs: ['s'], attrs: {} },
      { op: 'Gather', name: 'gather', inputs: ['s', 'zero'], outputs: ['n'], attrs: { axis: { i: 0 } } },
      { op: 'Unsqueeze', name: 'unsq', inputs: ['n', 'axes0'], outputs: ['n1'], attrs: {} },
      { op: 'Constant', name: 'groups', inputs: [], outputs: ['rest5'], attrs: { value_ints: { ints: [2, 2, S, S] } } },
      { op: 'Concat', name: 'cat5', inputs: ['n1', 'rest5'], outputs: ['shape5'], attrs: { axis: { i: 0 } } },
      { op: 'Cast', name: 'cast', inputs: ['shape5'], outputs: ['shape5i'], attrs: { to: { i: 7 } } },
      { op: 'Reshape', name: 'split', inputs: ['c', 'shape5i'], outputs: ['r'], attrs: {} },
      { op: 'Transpose', name: 'swap', inputs: ['r'], outputs: ['t'], attrs: { perm: { ints: [0, 2, 1, 3, 4] } } },
      { op: 'Concat', name: 'cat4', inputs: ['n1', 'rest4'], outputs: ['shape4'], attrs: { axis: { i: 0 } } },
      { op: 'Reshape', name: 'merge', inputs: ['t', 'shape4'], outputs: ['sh'], attrs: {} },
      { op: 'Relu', name: 'relu', inputs: ['sh'], outputs: ['a'], attrs: {} },
      { op: 'GlobalAveragePool', name: 'gap', inputs: ['a'], outputs: ['p'], attrs: {} },
      { op: 'Flatten', name: 'flat', inputs: ['p'], outputs: ['f'], attrs: { axis: { i: 1 } } },
      { op: 'Gemm', name: 'fc', inputs: ['f', 'w2', 'b2'], outputs: ['logits'], attrs: { transB: { i: 1 } } },
    ],
    initializers: [
      { name: 'w1', dtype: 'float32', dims: [4, 3, 3, 3], data: rand(108) },
      { name: 'b1', dtype: 'float32', dims: [4], data: rand(4) },
      { name: 'zero', dtype: 'int64', dims: [], data: i64([0]) },
      { name: 'axes0', dtype: 'int64', dims: [1], data: i64([0]) },
      { name: 'rest4', dtype: 'int64', dims: [3], data: i64([-1, S, S]) },
      { name: 'w2', dtype: 'float32', dims: [5, 4], data: rand(20) },
      { name: 'b2', dtype: 'float32', dims: [5], data: rand(5) },
    ],
    inputs: [{ name: 'x', dtype: 'float32', shape: ['N', 3, S, S] }],
    outputs: [{ name: 'logits', dtype: 'float32', shape: ['N', 5] }],
  };
  return encodeOnnx(g);
}

test('a channel shuffle built from Shape/Gather/Unsqueeze/Concat/Cast/Reshape folds for the fixed size, keeps the batch symbolic, matches the source and trains', async () => {
  const source = shuffleModel();
  const { built, src } = compileFromOnnx(source, { train: 'all', name: 'shuffle', set: ['image.mean=[0.4,0.5,0.6]', 'image.std=[0.2,0.25,0.3]', 'batch=4', 'crops=2', 'projector=[{"out":4}]', 'gradCos=false'] });
  assert.equal(src.feature, 'f', 'the feature is what the classifier (Gemm) reads');
  assert.deepEqual(src.params.sort(), ['b1', 'w1']);
  for (const file of ['train_step.onnx', 'embed.onnx']) {
    const nodes = decodeModel(built.files.get(file)!).graph.nodes;
    const ops = new Set(nodes.map((n) => n.op));
    // The only Cast left is the ReLU gradient's mask (bool -> float, to = 1), never shape arithmetic's.
    const casts = nodes.filter((n) => n.op === 'Cast').map((n) => (n.attrs.to as { i: number }).i);
    assert.ok(!ops.has('Shape') && !ops.has('Gather') && casts.every((to) => to === 1), `${file} computes no shapes at run time (${[...ops].join(', ')}; Cast to ${casts.join(', ')})`);
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-fold-'));
  try {
    writeArtifacts(built, dir);
    const tr = await Trainer.open(dir);
    try {
      // The embedding graph at the initial state computes the source's logits, at a batch the graph was not built for.
      const x = Float32Array.from({ length: 3 * 3 * S * S }, () => rng.uniform());
      const embed = await ort.InferenceSession.create(bindEncoder(dir, tr.manifest, tr.state, {}));
      const ours = (await embed.run({ images: new ort.Tensor('float32', x, [3, 3, S, S]) }))['source.logits'].data as Float32Array;
      const ref = await ort.InferenceSession.create(source);
      const [mean, std] = [[0.4, 0.5, 0.6], [0.2, 0.25, 0.3]];
      const xn = x.map((v, i) => (v - mean[Math.floor(i / (S * S)) % 3]) / std[Math.floor(i / (S * S)) % 3]);
      const theirs = (await ref.run({ x: new ort.Tensor('float32', xn, [3, 3, S, S]) })).logits.data as Float32Array;
      const features = (await embed.run({ images: new ort.Tensor('float32', x, [3, 3, S, S]) })).features.data as Float32Array;
      await embed.release();
      await ref.release();
      assert.ok(theirs.every((v, i) => Math.abs(v - ours[i]) <= 1e-5), `logits ${Array.from(ours.slice(0, 3))} vs ${Array.from(theirs.slice(0, 3))}`);
      // Its export keeps the source's interface; ssocl's encoder loader reads it through its view (images in [0, 1] -> features).
      const exported = sourceWithState(dir, tr.manifest, tr.state, { 'ssocl.step': '0' });
      assert.deepEqual(decodeModel(exported).graph.inputs.map((v) => v.name), ['x']);
      const enc = await Encoder.fromBytes('exported.onnx', exported);
      const viaView = await enc.run(x, 3);
      await enc.release();
      assert.equal(enc.dim('features'), 4);
      assert.ok(viaView.every((v, i) => Math.abs(v - features[i]) <= 1e-5), 'the encoder view computes the artifacts\' features');
      const [rows] = tr.manifest.trainStep.crops.shape as number[];
      const w0 = Float32Array.from(tr.state.get('params.encoder.w1')!);
      const r = await tr.step(Float32Array.from({ length: rows * 3 * S * S }, () => rng.uniform()), 0.05);
      assert.ok(r.applied && Number.isFinite(r.loss));
      assert.ok(tr.state.get('params.encoder.w1')!.some((v, i) => v !== w0[i]));
    } finally {
      await tr.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
