// The edge-scale preset compiled small and stepped by the Trainer and the Learner: the past model's
// features come from embed.onnx under the snapshot, the distillation weight is set at the first step to
// 0.15 x L_contrast / L_distill and kept, the snapshot is refreshed per arrival, and the loss on a fixed
// batch falls.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { applyOverrides, getPreset } from '../tools/artifacts/presets.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { Learner, defaultLearnerConfig, restoreLearner, snapshotLearner } from '../agent/trainer/learner.ts';
import { fromCheckpoint, toCheckpoint } from '../agent/trainer/checkpoint.ts';
import { Rng } from '../core/rng.ts';
import { psaSelect } from '../agent/buffer/psa.ts';

const STREAM = 4;
const SIZE = 8;
function tinyScale() {
  return applyOverrides(getPreset('edge-scale'), [
    'encoder.widths=[4,8]',
    'encoder.blocks=[1,1]',
    `image.size=${SIZE}`,
    `batch=${2 * STREAM}`,
    `agent.newPerArrival=${STREAM}`,
    'projector=[{"out":8,"act":true},{"out":8}]',
    'gradCos=false',
  ]);
}

async function withArtifacts(f: (dir: string) => Promise<void>) {
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-scale-'));
  try {
    writeArtifacts(compileArtifacts(tinyScale()), path.join(dir, 'a'));
    await f(path.join(dir, 'a'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('edge-scale and scale compile with the distillation inputs described in the manifest', () => {
  for (const name of ['edge-scale', 'scale']) {
    const { manifest } = compileArtifacts(getPreset(name));
    const d = manifest.trainStep.distill!;
    assert.ok(d, name);
    const width = name === 'scale' ? 512 : 64;
    const b = name === 'scale' ? 256 : 32;
    assert.deepEqual(d.pastFeatures.shape, [b, width], name);
    assert.ok(manifest.trainStep.inputs.some((i) => i.name === d.weight) && manifest.trainStep.outputs.some((o) => o.name === d.weightUsed), name);
    assert.deepEqual(Object.keys(manifest.trainStep.terms).sort(), ['ird', 'scale-contrast']);
    assert.equal(manifest.trainStep.crops.views, 2);
  }
});

test('Trainer on edge-scale: weight set once from the first step, snapshot fixed until refreshed, loss falls on a fixed batch', async () => {
  await withArtifacts(async (dir) => {
    const tr = await Trainer.open(dir, { threads: 1 });
    const n = tr.cropsShape.reduce((a, b) => a * b, 1);
    const rng = new Rng(3);
    const crops = Float32Array.from({ length: n }, () => rng.uniform());
    tr.snapshotPast();
    const past = tr.past!;
    const losses: number[] = [];
    for (let k = 0; k < 6; k++) {
      const r = await tr.step(crops, 0.03);
      assert.ok(r.applied && Number.isFinite(r.loss), `step ${k}: ${r.loss}`);
      if (k === 0) {
        const want = (0.15 * r.terms['scale-contrast']) / r.terms.ird;
        assert.ok(r.terms.ird > 0 && Math.abs(tr.distillWeight / want - 1) < 1e-5, `weight ${tr.distillWeight} vs ${want}`);
        // The total is L_contrast + w L_distill with that weight.
        assert.ok(Math.abs(r.loss - (r.terms['scale-contrast'] + tr.distillWeight * r.terms.ird)) < 1e-5 * Math.abs(r.loss));
      }
      losses.push(r.loss);
    }
    const w = tr.distillWeight;
    assert.ok(w > 0);
    // Kept: later steps neither reset nor recompute it, and the snapshot still holds the first weights.
    await tr.step(crops, 0.03);
    assert.equal(tr.distillWeight, w);
    assert.equal(tr.past, past);
    const param = tr.manifest.state.find((s) => s.role === 'param')!.name;
    assert.notDeepEqual(Array.from(tr.state.get(param)!), Array.from(past.get(param)!));
    assert.ok(losses[losses.length - 1] < losses[0], `loss ${losses[0]} -> ${losses[losses.length - 1]}`);
    // What is fed as the past features: embed.onnx under the snapshot's weights, on view 0 (rows 0..b-1).
    const calls: { images: Float32Array; count: number; weights?: Map<string, Float32Array> }[] = [];
    const embed = tr.embed.bind(tr);
    tr.embed = (images, count, weights) => {
      calls.push({ images, count, weights });
      return embed(images, count, weights);
    };
    await tr.step(crops, 0.03);
    const b = 2 * STREAM;
    assert.equal(calls.length, 1);
    assert.equal(calls[0].weights, past);
    assert.equal(calls[0].count, b);
    assert.deepEqual(calls[0].images, crops.subarray(0, b * 3 * SIZE * SIZE));
    await tr.close();
  });
});

test('the past model changes only the IRD term: same current weights, old snapshot vs a fresh one', async () => {
  await withArtifacts(async (dir) => {
    const a = await Trainer.open(dir, { threads: 1 });
    const b = await Trainer.open(dir, { threads: 1 });
    const n = a.cropsShape.reduce((x, y) => x * y, 1);
    const rng = new Rng(4);
    const crops = Float32Array.from({ length: n }, () => rng.uniform());
    a.snapshotPast();
    for (let k = 0; k < 3; k++) await a.step(crops, 0.03);
    const same = (t: Trainer) => {
      t.state = new Map(a.state);
      t.distillWeight = a.distillWeight;
    };
    same(b);
    b.snapshotPast();
    const ra = await a.step(crops, 0);
    const rb = await b.step(crops, 0);
    assert.equal(ra.terms['scale-contrast'], rb.terms['scale-contrast']);
    assert.notEqual(ra.terms.ird, rb.terms.ird);
    // Control: the same snapshot gives the same IRD.
    same(b);
    b.past = a.past;
    a.state = new Map(b.state);
    const [x, y] = [await a.step(crops, 0), await b.step(crops, 0)];
    assert.equal(x.terms.ird, y.terms.ird);
    await a.close();
    await b.close();
  });
});

test('IRD reads view 0 and the contrast anchors only the stream images: permutations that leave one unchanged change the other', async () => {
  await withArtifacts(async (dir) => {
    const tr = await Trainer.open(dir, { threads: 1 });
    const n = tr.cropsShape.reduce((x, y) => x * y, 1);
    const per = 3 * SIZE * SIZE;
    const b = 2 * STREAM;
    const rng = new Rng(6);
    const crops = Float32Array.from({ length: n }, () => rng.uniform());
    tr.snapshotPast();
    await tr.step(crops, 0.03); // past and current differ from here on
    const shuffled = crops.slice();
    for (let j = 0; j < b; j++) shuffled.set(crops.subarray((b + ((j + 3) % b)) * per, (b + ((j + 3) % b) + 1) * per), (b + j) * per);
    const r0 = await tr.step(crops, 0);
    const r1 = await tr.step(shuffled, 0);
    // Equal up to the order of BN's batch sums.
    assert.ok(Math.abs(r0.terms.ird - r1.terms.ird) < 1e-5 * r0.terms.ird, `${r0.terms.ird} vs ${r1.terms.ird}`);
    assert.ok(Math.abs(r0.terms['scale-contrast'] - r1.terms['scale-contrast']) > 1e-3);
    // Swapping a stream image with a memory image (both views) leaves IRD as it was (all of view 0
    // counts) but not the contrastive term: only the first newPerArrival images are anchors.
    const swapped = crops.slice();
    for (const v of [0, 1]) {
      const [s0, m0] = [(v * b) * per, (v * b + b - 1) * per];
      swapped.set(crops.subarray(m0, m0 + per), s0);
      swapped.set(crops.subarray(s0, s0 + per), m0);
    }
    const r2 = await tr.step(swapped, 0);
    assert.ok(Math.abs(r0.terms.ird - r2.terms.ird) < 1e-5 * r0.terms.ird, `${r0.terms.ird} vs ${r2.terms.ird}`);
    assert.ok(Math.abs(r0.terms['scale-contrast'] - r2.terms['scale-contrast']) > 1e-3, `${r0.terms['scale-contrast']} vs ${r2.terms['scale-contrast']}`);
    await tr.close();
  });
});

test('Learner on edge-scale with the psa buffer: arrivals train with finite losses, refresh the snapshot each arrival, and PSA keeps the memory', async () => {
  await withArtifacts(async (dir) => {
    const tr = await Trainer.open(dir, { threads: 1 });
    const l = new Learner(tr, defaultLearnerConfig(tr, { updates: 3, buffer: { capacity: 12, policy: 'psa', alpha: 0.5 }, lr: 0.03, schedule: 'constant', scheduleSteps: 1, seed: 2 }));
    const rng = new Rng(9);
    const snaps = new Set<unknown>();
    let trained = 0;
    for (let a = 0; a < 6; a++) {
      const r = await l.arrive(Array.from({ length: STREAM }, (_, i) => ({ key: `${a}.${i}`, image: Uint8Array.from({ length: 3 * SIZE * SIZE }, () => rng.int(256)) })));
      snaps.add(tr.past);
      if (a >= 2) {
        // What PSA kept: the selection over the backbone features (current weights) of all 16 entries.
        const all = [...l.buffer.entries, ...r.removed].sort((x, y) => x.id - y.id);
        const x = new Float32Array(all.length * 3 * SIZE * SIZE);
        all.forEach((e, j) => e.image.forEach((v, k) => (x[j * 3 * SIZE * SIZE + k] = v / 255)));
        const { features } = await tr.embed(x, all.length);
        const keep = psaSelect(features, features.length / all.length, 12).map((i) => all[i].id);
        assert.deepEqual(l.buffer.entries.map((e) => e.id).sort((p, q) => p - q), keep, `arrival ${a}`);
      }
      assert.ok(l.buffer.size <= 12);
      for (const s of r.steps) assert.ok(s.applied && Number.isFinite(s.loss), `arrival ${a}: ${s.loss}`);
      if (r.trained) trained++;
    }
    assert.ok(trained >= 4, `trained arrivals ${trained}`);
    assert.equal(snaps.size, 6);
    assert.ok(tr.distillWeight > 0);
    await tr.close();
  });
});

test('a checkpoint of an edge-scale learner resumes exactly: the distillation weight travels, the past model is retaken', async () => {
  await withArtifacts(async (dir) => {
    const cfg = (t: Trainer) => defaultLearnerConfig(t, { updates: 2, buffer: { capacity: 12, policy: 'psa', alpha: 0.5 }, lr: 0.03, schedule: 'constant', scheduleSteps: 1, seed: 3 });
    const a = await Trainer.open(dir, { threads: 1 });
    const la = new Learner(a, cfg(a));
    const rng = new Rng(12);
    const arrivals = Array.from({ length: 6 }, (_, k) => Array.from({ length: STREAM }, (_, i) => ({ key: `${k}.${i}`, image: Uint8Array.from({ length: 3 * SIZE * SIZE }, () => rng.int(256)) })));
    for (const items of arrivals.slice(0, 4)) await la.arrive(items);
    assert.ok(a.distillWeight > 0);
    const ck = fromCheckpoint(toCheckpoint(snapshotLearner(la), { artifact: 'x', framesIngested: 0, counters: {}, pending: [] }));
    assert.equal(ck.learner.distillWeight, a.distillWeight);
    const b = await Trainer.open(dir, { threads: 1 });
    const lb = new Learner(b, cfg(b));
    await restoreLearner(lb, ck.learner);
    for (const items of arrivals.slice(4)) {
      const [ra, rb] = [await la.arrive(items), await lb.arrive(items)];
      assert.deepEqual(rb.steps.map((s) => s.loss), ra.steps.map((s) => s.loss));
      assert.deepEqual(rb.removed.map((e) => e.id), ra.removed.map((e) => e.id));
    }
    await a.close();
    await b.close();
  });
});
