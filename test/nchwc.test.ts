// Convolutions in ORT's blocked-layout (NCHWc) CPU kernels with their weights as graph values
// (Graph.nchwcConvs, `ssocl artifacts --nchwc`): the block size read from the runtime, the rewritten
// Convs computing the plain Convs' outputs, a whole training step (forward and gradient Convs) giving
// the plain step's loss and new state, and the refusals where such a step cannot run. The kernels exist
// only in x86-64's CPU EP: where this machine's onnxruntime-node has none, the runtime parts are skipped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { Graph } from '../tools/graph/graph.ts';
import { encodeModel } from '../tools/onnx/encode.ts';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { getPreset } from '../tools/artifacts/presets.ts';
import { nchwcBlockOf } from '../core/onnx/nchwc.ts';
import { nchwcBlock } from '../agent/trainer/backend.ts';
import { Trainer, ManifestError } from '../agent/trainer/trainer.ts';
import { Rng } from '../core/rng.ts';
import { decodeModel } from '../core/onnx/decode.ts';
import { ssocl } from './helpers/byom.ts';

const block = await nchwcBlock();
const noKernels = block ? false : "this machine's onnxruntime-node has no NCHWc kernels (not x86-64)";

test('the NCHWc block is read from the reordered layout', () => {
  // Element (c, p) of a [1, 32, 1, 2] input holds 2c + p; blocked by B, pixel 0 of channels 0..B-1 comes first.
  const blocked = (b: number) => Array.from({ length: 64 }, (_, i) => {
    const blk = Math.floor(i / (2 * b));
    const r = i % (2 * b);
    return 2 * (blk * b + (r % b)) + Math.floor(r / b);
  });
  assert.equal(nchwcBlockOf(blocked(16)), 16);
  assert.equal(nchwcBlockOf(blocked(8)), 8);
  assert.equal(nchwcBlockOf(Array.from({ length: 64 }, (_, i) => i)), 0); // plain NCHW: not blocked
});

/** Depthwise (stride 1 and 2, with a bias), dense (stride 2) and two Convs the rewrite must leave alone. */
function convGraph(nchwc: number): { bytes: Uint8Array; rewritten: number } {
  const g = new Graph('float32');
  const x = g.input('x', [2, 16, 9, 9]);
  const w1 = g.input('w1', [16, 1, 3, 3]);
  const b1 = g.input('b1', [16]);
  const w2 = g.input('w2', [16, 1, 3, 3]);
  const w3 = g.input('w3', [32, 16, 3, 3]);
  const w4 = g.input('w4', [16, 8, 1, 1]); // grouped, not depthwise: left as it is
  const w5 = g.input('w5', [16, 3, 3, 3]); // 3 input channels, not a multiple of the block
  const a = g.conv(x, w1, { pads: [1, 1, 1, 1], group: 16 }, b1);
  const d = g.conv(a, w2, { pads: [1, 1, 1, 1], strides: [2, 2], group: 16 });
  const e = g.conv(d, w3, { pads: [1, 0, 1, 2], strides: [2, 2] });
  const f = g.conv(x, w4, { group: 2 });
  const h = g.conv(g.slice(x, [0], [3], [1]), w5, { pads: [1, 1, 1, 1] });
  g.output(e, 'e');
  g.output(f, 'f');
  g.output(h, 'h');
  const rewritten = nchwc ? g.nchwcConvs(nchwc, { dense: true }) : 0;
  return { bytes: encodeModel(g, 'convs'), rewritten };
}

test('nchwcConvs: which Convs it rewrites, in graph order, and the operator set the model imports for them (no runtime needed)', () => {
  const { bytes, rewritten } = convGraph(16);
  assert.equal(rewritten, 3); // the two depthwise and the dense; not the grouped one, not the 3-channel one
  const m = decodeModel(bytes);
  assert.equal(m.opsets['com.microsoft.nchwc'], 1);
  const ops = m.graph.nodes.map((n) => `${n.domain ? 'nchwc.' : ''}${n.op}`);
  assert.equal(ops.filter((o) => o === 'nchwc.Conv').length, 3);
  assert.equal(ops.filter((o) => o === 'Conv').length, 2);
  // Each rewritten Conv is ReorderInput ... Conv ... ReorderOutput in order, and every input is made before it is read.
  const made = new Set([...m.graph.inputs.map((v) => v.name), ...m.graph.initializers.map((t) => t.name)]);
  for (const n of m.graph.nodes) {
    for (const i of n.inputs) if (i) assert.ok(made.has(i), `${n.name} reads ${i} before it is made`);
    for (const o of n.outputs) made.add(o);
  }
  assert.equal(convGraph(8).rewritten, 3);
});

test('ssocl artifacts: --nchwc and --set nchwc= are one choice; a preset with --nchwc gets its own name; a bad block is refused', () => {
  const both = ssocl(['artifacts', '--nchwc', '16', '--set', 'nchwc=8', '--out', path.join(tmpdir(), 'ssocl-nchwc-never')]);
  assert.equal(both.status, 2);
  assert.match(both.stderr, /give --nchwc or --set nchwc=\.\.\., not both/);
  const bad = ssocl(['artifacts', '--set', 'nchwc=12', '--check']);
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /NCHWc block is 16 \(AVX-512\) or 8 \(AVX2\)/);
  const deep = ssocl(['artifacts', '--set', 'agent.nchwc=16', '--check']);
  assert.match(deep.stderr, /unknown field 'nchwc'/);
  // The committed portable directory is never what --nchwc 16 writes: --check names the other directory.
  const check = ssocl(['artifacts', '--preset', 'edge', '--nchwc', '16', '--check']);
  assert.match(check.stderr + check.stdout, /edge-custom/);
});

test('nchwcConvs: depthwise and dense Convs in the blocked kernels give the plain Convs\' outputs', { skip: noKernels }, async () => {
  const rng = new Rng(11);
  const t = (dims: number[]) => new ort.Tensor('float32', Float32Array.from({ length: dims.reduce((p, q) => p * q, 1) }, () => rng.normal()), dims);
  const feeds = { x: t([2, 16, 9, 9]), w1: t([16, 1, 3, 3]), b1: t([16]), w2: t([16, 1, 3, 3]), w3: t([32, 16, 3, 3]), w4: t([16, 8, 1, 1]), w5: t([16, 3, 3, 3]) };
  const plain = convGraph(0);
  const blocked = convGraph(block);
  assert.equal(blocked.rewritten, 3);
  const run = async (bytes: Uint8Array) => {
    const s = await ort.InferenceSession.create(bytes, { graphOptimizationLevel: 'all', intraOpNumThreads: 1 });
    const out = await s.run(feeds);
    await s.release();
    return out;
  };
  const want = await run(plain.bytes);
  const got = await run(blocked.bytes);
  for (const k of ['e', 'f', 'h']) {
    const a = want[k].data as Float32Array;
    const b = got[k].data as Float32Array;
    assert.deepEqual(got[k].dims, want[k].dims);
    let worst = 0;
    for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]) / (1 + Math.abs(a[i])));
    assert.ok(worst < 1e-4, `${k}: the blocked kernels' output is ${worst} off the plain Conv's`);
  }
});

test('a training step in the blocked kernels gives the plain step\'s loss and new state; elsewhere it is refused', { skip: noKernels }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-nchwc-'));
  try {
    // The edge encoder (16, 32, 64 channels) at a small batch: its forward Convs and the input gradients'
    // flipped-kernel Convs are rewritten, the stem (3 channels) and the unfold's constant kernels are not.
    const sets = ['batch=4', 'crops=2', 'agent.newPerArrival=4'];
    const plain = compileArtifacts(getPreset('edge', sets));
    const blocked = compileArtifacts(getPreset('edge', [...sets, `nchwc=${block}`]));
    assert.equal(plain.manifest.trainStep.nchwc, undefined);
    assert.ok(blocked.manifest.trainStep.nchwc!.convs >= 10, `only ${blocked.manifest.trainStep.nchwc?.convs} Convs rewritten`);
    assert.equal(blocked.manifest.trainStep.nchwc!.block, block);
    writeArtifacts(plain, path.join(dir, 'plain'));
    writeArtifacts(blocked, path.join(dir, 'blocked'));
    const a = await Trainer.open(path.join(dir, 'plain'), { threads: 1 });
    const b = await Trainer.open(path.join(dir, 'blocked'), { threads: 1 });
    const rng = new Rng(3);
    const crops = Float32Array.from({ length: a.cropsShape.reduce((p, q) => p * q, 1) }, () => rng.uniform());
    for (let s = 0; s < 2; s++) {
      const ra = await a.step(crops, 0.05);
      const rb = await b.step(crops, 0.05);
      assert.ok(ra.applied && rb.applied);
      assert.ok(Math.abs(ra.loss - rb.loss) <= 1e-5 * Math.abs(ra.loss), `step ${s + 1}: loss ${rb.loss} vs ${ra.loss}`);
    }
    for (const [name, va] of a.state) {
      const vb = b.state.get(name)!;
      let worst = 0;
      let norm = 0;
      for (let i = 0; i < va.length; i++) {
        worst = Math.max(worst, Math.abs(va[i] - vb[i]));
        norm = Math.max(norm, Math.abs(va[i]));
      }
      // (plus an absolute 1e-6: a bias before a batch norm has a gradient of float noise, ~1e-7)
      assert.ok(worst <= 1e-4 * norm + 1e-6, `${name}: ${worst} off the plain step's (max |value| ${norm})`);
    }
    await a.close();
    await b.close();

    // Another EP, or a machine of another block, is refused with the way out.
    await assert.rejects(Trainer.open(path.join(dir, 'blocked'), { ep: 'webgpu' }), (e: Error) => e instanceof ManifestError && /--ep webgpu does not have.*--nchwc off/.test(e.message));
    const mf = path.join(dir, 'blocked', 'manifest.json');
    const m = JSON.parse(readFileSync(mf, 'utf8'));
    m.trainStep.nchwc.block = block === 16 ? 8 : 16;
    writeFileSync(mf, JSON.stringify(m));
    await assert.rejects(Trainer.open(path.join(dir, 'blocked'), { threads: 1 }), (e: Error) => e instanceof ManifestError && new RegExp(`built for ORT's NCHWc block ${m.trainStep.nchwc.block}.*uses block ${block}`).test(e.message));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
