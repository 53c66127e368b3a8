// Convolutions on the smallest maps (torchvision's last stages at 32 px) are imported as GEMMs over the
// batch (tools/import/ops.ts): from a 1x1 map to a 1x1 map, the one kernel tap it sees (onePixelConv: a
// Gemm, dense 3x3 pad 1 and 1x1 kernels; a per-channel Mul, depthwise with channel multiplier 1 and 2);
// a dense Conv on a 2x2 map, one [N, C*4] x [C*4, O*Ho*Wo] map gathered from its kernel (smallMapConv;
// stride 1 and 2, asymmetric pads). The imported graphs hold no Conv, compute the source's outputs (ORT running the
// source), and a step moves every weight. The gradients are the Gemm/MatMul/Mul/Slice/Transpose rules'
// (test/grad-rules.test.ts) and, end to end against PyTorch, test/import-torch.test.ts.
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
import { bindEncoder } from '../agent/export/export.ts';
import { Rng } from '../core/rng.ts';

const rng = new Rng(5);
const rand = (n: number) => Float32Array.from({ length: n }, () => rng.normal() * 0.5);

function onePixelModel(): Uint8Array {
  const pad1 = { pads: { ints: [1, 1, 1, 1] } };
  const g: OnnxGraph = {
    name: 'one-pixel',
    nodes: [
      { op: 'Conv', name: 'dense', inputs: ['x', 'w1', 'b1'], outputs: ['c1'], attrs: pad1 },
      { op: 'Relu', name: 'relu', inputs: ['c1'], outputs: ['a1'], attrs: {} },
      { op: 'Conv', name: 'dw', inputs: ['a1', 'w2'], outputs: ['c2'], attrs: { ...pad1, group: { i: 6 } } },
      { op: 'Conv', name: 'dw2', inputs: ['c2', 'w3', 'b3'], outputs: ['c3'], attrs: { ...pad1, group: { i: 6 } } },
      { op: 'Conv', name: 'pw', inputs: ['c3', 'w4'], outputs: ['c4'], attrs: {} },
      { op: 'Flatten', name: 'flat', inputs: ['c4'], outputs: ['f'], attrs: { axis: { i: 1 } } },
    ],
    initializers: [
      { name: 'w1', dtype: 'float32', dims: [6, 3, 3, 3], data: rand(162) },
      { name: 'b1', dtype: 'float32', dims: [6], data: rand(6) },
      { name: 'w2', dtype: 'float32', dims: [6, 1, 3, 3], data: rand(54) },
      { name: 'w3', dtype: 'float32', dims: [12, 1, 3, 3], data: rand(108) },
      { name: 'b3', dtype: 'float32', dims: [12], data: rand(12) },
      { name: 'w4', dtype: 'float32', dims: [5, 12, 1, 1], data: rand(60) },
    ],
    inputs: [{ name: 'x', dtype: 'float32', shape: ['N', 3, 1, 1] }],
    outputs: [{ name: 'f', dtype: 'float32', shape: ['N', 5] }],
  };
  return encodeOnnx(g);
}

function twoByTwoModel(): Uint8Array {
  const g: OnnxGraph = {
    name: 'two-by-two',
    nodes: [
      { op: 'Conv', name: 'c2x2', inputs: ['x', 'w1', 'b1'], outputs: ['c1'], attrs: { pads: { ints: [1, 1, 1, 1] } } },
      { op: 'Relu', name: 'relu', inputs: ['c1'], outputs: ['a1'], attrs: {} },
      // Asymmetric pads and stride 2 (2x2 -> 1x1): a transposed or shifted tap table shows.
      { op: 'Conv', name: 'down', inputs: ['a1', 'w2'], outputs: ['c2'], attrs: { pads: { ints: [1, 0, 1, 2] }, strides: { ints: [2, 2] } } },
      { op: 'Flatten', name: 'flat', inputs: ['c2'], outputs: ['f'], attrs: { axis: { i: 1 } } },
    ],
    initializers: [
      { name: 'w1', dtype: 'float32', dims: [6, 3, 3, 3], data: rand(162) },
      { name: 'b1', dtype: 'float32', dims: [6], data: rand(6) },
      { name: 'w2', dtype: 'float32', dims: [4, 6, 3, 3], data: rand(216) },
    ],
    inputs: [{ name: 'x', dtype: 'float32', shape: ['N', 3, 2, 2] }],
    outputs: [{ name: 'f', dtype: 'float32', shape: ['N', 4] }],
  };
  return encodeOnnx(g);
}

const CASES = [
  { name: 'a Conv from a 1x1 map to a 1x1 map imports as its one tap (Gemm / per-channel Mul)', model: onePixelModel, px: 1, weights: ['w1', 'b1', 'w2', 'w3', 'b3', 'w4'] },
  { name: 'a dense Conv on a 2x2 map imports as one GEMM over the batch', model: twoByTwoModel, px: 2, weights: ['w1', 'b1', 'w2'] },
];

for (const { name, model, px, weights } of CASES) test(`${name}: no Conv left, the source's outputs, every weight trains`, async () => {
  const source = model();
  const { built } = compileFromOnnx(source, { train: 'all', name: `px${px}`, set: ['image.mean=[0,0,0]', 'image.std=[1,1,1]', 'batch=4', 'crops=2', 'projector=[{"out":4}]', 'gradCos=false'] });
  for (const file of ['train_step.onnx', 'embed.onnx']) {
    const ops = decodeModel(built.files.get(file)!).graph.nodes.map((n) => n.op);
    assert.ok(!ops.includes('Conv') && !ops.includes('ConvTranspose'), `${file} has no Conv (${[...new Set(ops)].join(', ')})`);
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-one-pixel-'));
  try {
    writeArtifacts(built, dir);
    const tr = await Trainer.open(dir);
    try {
      const x = Float32Array.from({ length: 3 * 3 * px * px }, () => rng.normal());
      const embed = await ort.InferenceSession.create(bindEncoder(dir, tr.manifest, tr.state, {}));
      const ours = (await embed.run({ images: new ort.Tensor('float32', x, [3, 3, px, px]) })).features.data as Float32Array;
      await embed.release();
      const ref = await ort.InferenceSession.create(source);
      const theirs = (await ref.run({ x: new ort.Tensor('float32', x, [3, 3, px, px]) })).f.data as Float32Array;
      await ref.release();
      const scale = theirs.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      assert.ok(scale > 0 && theirs.every((v, i) => Math.abs(v - ours[i]) <= 1e-5 * scale), `features ${Array.from(ours.slice(0, 4))} vs the source's ${Array.from(theirs.slice(0, 4))}`);
      const [rows] = tr.manifest.trainStep.crops.shape as number[];
      const before = new Map(weights.map((k) => [k, Float32Array.from(tr.state.get(`params.encoder.${k}`)!)]));
      const r = await tr.step(Float32Array.from({ length: rows * 3 * px * px }, () => rng.uniform()), 0.05);
      assert.ok(r.applied && Number.isFinite(r.loss));
      for (const [k, w0] of before) assert.ok(tr.state.get(`params.encoder.${k}`)!.some((v, i) => v !== w0[i]), `${k} moved`);
    } finally {
      await tr.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
