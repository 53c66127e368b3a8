// Bring your own model without torch: an encoder ssocl exported (the tiny preset's) imported back with
// --from-onnx trains on (steps applied, weights move, loss finite), and its export through the agent's
// exportEncoder keeps the imported model's interface (input and output names, dynamic batch, opset,
// its metadata plus ssocl's) with the learnt weights; --train freezes what it does not select.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { compileFromOnnx } from '../tools/import/artifacts.ts';
import { ImportError } from '../tools/import/source.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { exportEncoder, initialEncoder } from '../agent/export/export.ts';
import { decodeModel } from '../core/onnx/decode.ts';
import { replaceWeights } from '../core/onnx/model.ts';
import { Rng } from '../core/rng.ts';
import { tinyPreset } from './helpers/tiny.ts';

// The source takes images in [0, 1] (its normalisation is inside), so the import adds none.
const SETS = ['image.mean=[0,0,0]', 'image.std=[1,1,1]', 'batch=4', 'crops=2', 'projector=[{"out":8}]', 'gradCos=false'];

function ssoclEncoder(dir: string): Uint8Array {
  writeArtifacts(compileArtifacts(tinyPreset()), dir);
  // With metadata of its own, which the export must keep.
  return replaceWeights(initialEncoder(dir), new Map(), { 'app.version': '3' });
}

test('an ssocl-exported encoder imported back trains on, and exports with its own interface and the learnt weights', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-roundtrip-'));
  try {
    const source = ssoclEncoder(path.join(dir, 'tiny'));
    const { built, src } = compileFromOnnx(source, { train: 'all', name: 'roundtrip', set: SETS });
    assert.equal(src.feature, 'features', 'the default feature is the output (no classifier after it)');
    const art = path.join(dir, 'art');
    writeArtifacts(built, art);
    const tr = await Trainer.open(art);
    try {
      const [rows, , s] = tr.manifest.trainStep.crops.shape as number[];
      const rng = new Rng(3);
      const w0 = Float32Array.from(tr.state.get('params.encoder.params.encoder.conv1.weight')!);
      for (let k = 0; k < 3; k++) {
        const r = await tr.step(new Float32Array(rows * 3 * s * s).map(() => rng.uniform()), 0.05);
        assert.ok(r.applied && Number.isFinite(r.loss), `step ${k}: applied ${r.applied}, loss ${r.loss}`);
      }
      const w1 = tr.state.get('params.encoder.params.encoder.conv1.weight')!;
      assert.ok(w1.some((v, i) => v !== w0[i]), 'the imported weights learn');

      const models = path.join(dir, 'models');
      mkdirSync(models);
      const probe = new Float32Array(2 * 3 * s * s).map(() => rng.uniform());
      await exportEncoder(tr, models, { framesSeen: 12, loss: 1, probe, probeCount: 2 });
      const latest = readFileSync(path.join(models, 'latest.onnx'));
      const a = decodeModel(source);
      const b = decodeModel(latest);
      assert.deepEqual([b.graph.inputs, b.graph.outputs, b.opsets], [a.graph.inputs, a.graph.outputs, a.opsets], 'the source interface, dynamic batch included');
      assert.equal(b.metadata['app.version'], '3');
      assert.equal(b.metadata['ssocl.step'], '3');
      const learnt = b.graph.initializers.find((t) => t.name === 'params.encoder.conv1.weight')!;
      assert.deepEqual(Array.from(learnt.data as Float32Array), Array.from(w1), 'the learnt weights are in the exported model');
      // The application's view: the same session code runs the update.
      const sess = await ort.InferenceSession.create(latest);
      const out = await sess.run({ images: new ort.Tensor('float32', probe, [2, 3, s, s]) });
      await sess.release();
      const ref = await tr.embed(probe, 2);
      const got = out.features.data as Float32Array;
      assert.ok(got.every((v, i) => Math.abs(v - ref.features[i]) <= 1e-4), 'the exported model computes what the trainer does');
    } finally {
      await tr.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--train last:N learns only the last N layers with weights; the rest is frozen into the graphs', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-roundtrip-'));
  try {
    const source = ssoclEncoder(path.join(dir, 'tiny'));
    const all = compileFromOnnx(source, { train: 'all', name: 'all', set: SETS }).src;
    // An ssocl export's BN running statistics (constants named buffers.*) are never trained by gradient.
    assert.ok(all.params.length > 0 && !all.params.some((p) => p.startsWith('buffers.')), `params: ${all.params.join(', ')}`);
    const last = compileFromOnnx(source, { train: 'last:2', name: 'last', set: SETS });
    const learns = last.built.manifest.state.filter((e) => e.role === 'param' && e.name.startsWith('params.encoder.')).map((e) => e.name);
    const lastTwo = all.layers.slice(-2);
    assert.ok(learns.length >= 2 && learns.length < all.params.length, `${learns.length} of ${all.params.length} source weights learn`);
    assert.deepEqual([...last.src.trainNodes], lastTwo);
    const byName = compileFromOnnx(source, { train: 'conv1', name: 're', set: SETS }).src;
    assert.ok(byName.params.length > 0 && byName.params.every((p) => /conv1/.test(p)), `--train conv1 selected ${byName.params.join(', ')}`);
    assert.throws(() => compileFromOnnx(source, { train: 'nothing-matches-this', name: 'x', set: SETS }), ImportError);
    assert.throws(() => compileFromOnnx(source, { train: 'last:0', name: 'x', set: SETS }), /--train last:0: N must be at least 1/);
    assert.throws(() => compileFromOnnx(source, { train: 'all', feature: 'no_such_tensor', name: 'x', set: SETS }), /--feature no_such_tensor/);
    assert.throws(() => compileFromOnnx(source, { train: 'all', inputSize: 16, name: 'x', set: SETS }), /--input-size 16: the model's input 'images' is fixed at 8x8/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
