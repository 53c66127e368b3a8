// A fused training step (preset `fuse: K`: K updates of one arrival in one graph run) against K
// single steps: the same losses, diagnostics and final state; the host's guard applied per inner step
// inside the graph; crops made in the graph against host crops on the same draws; and the Learner
// through a fused artifact against the unfused Learner.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { Trainer, type StepResult } from '../agent/trainer/trainer.ts';
import { Learner, defaultLearnerConfig, snapshotLearner } from '../agent/trainer/learner.ts';
import { CIFAR_AUGMENT, multiCrop, sampleCrop, type CropParams } from '../agent/frames/augment.ts';
import { packCropParams } from '../core/crop-params.ts';
import { Rng } from '../core/rng.ts';
import { tinyPreset, tinyFusedPreset } from './helpers/tiny.ts';

const K = 3;
const S = 8; // tiny preset: image size, 4 images a step, 3 crops each
const B = 4;
const N = 3;
const PER = 3 * S * S;
const CROPS = N * B * PER;

/**
 * Fused vs single steps: the same ops on the same inputs, so only a different fusion or reduction
 * order inside ORT could tell them apart, by float32 rounding: a few ulps of O(1) values (8 ulps of 1
 * is 1e-6). On the CPU EP they agree bit for bit (0 seen).
 */
const SAME = 1e-6;
/**
 * In-graph vs host crops: the crops themselves agree to 1e-5 (test/augment-graph.test.ts); three
 * updates carry that into the state at up to ~1.5e-6 (seen), so 1e-5 absolute on O(1) values.
 */
const CROPS_TOL = 1e-5;

const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-fused-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const ART = { single: path.join(dir, 'single'), fused: path.join(dir, 'fused'), graph: path.join(dir, 'graph') };
writeArtifacts(compileArtifacts(tinyPreset()), ART.single);
writeArtifacts(compileArtifacts(tinyFusedPreset(K)), ART.fused);
writeArtifacts(compileArtifacts(tinyFusedPreset(K, true)), ART.graph);

const open = (d: string) => Trainer.open(d, { threads: 1, noEmbed: true });

/** An arrival's worth of inputs: U distinct images, K batches of rows of them, their crop draws, and the host's crops from those draws. */
function arrivalInputs(seed: number) {
  const rng = new Rng(seed);
  const U = 7;
  const images = Uint8Array.from({ length: U * PER }, () => rng.int(256));
  const index = BigInt64Array.from({ length: K * B }, () => BigInt(rng.int(U)));
  const cropRng = new Rng(seed + 1);
  const crops = new Float32Array(K * CROPS);
  const draws: CropParams[] = [];
  for (let k = 0; k < K; k++) {
    const batch = new Uint8Array(B * PER);
    for (let j = 0; j < B; j++) {
      const u = Number(index[k * B + j]);
      batch.set(images.subarray(u * PER, (u + 1) * PER), j * PER);
    }
    // The same draws twice: once rendered by the host, once packed for the graph.
    const at = cropRng.state;
    crops.set(multiCrop(batch, B, S, N, cropRng, CIFAR_AUGMENT), k * CROPS);
    cropRng.state = at;
    for (let r = 0; r < N * B; r++) draws.push(sampleCrop(cropRng, S, CIFAR_AUGMENT));
  }
  return { images, index, crops, params: packCropParams(draws) };
}

/** What the host does today: one run per update, learning rate by the count of applied updates. */
async function singleSteps(tr: Trainer, crops: Float32Array, lrs: number[]): Promise<StepResult[]> {
  const first = tr.steps;
  const out: StepResult[] = [];
  for (let k = 0; k < K; k++) out.push(await tr.step(crops.slice(k * CROPS, (k + 1) * CROPS), lrs[tr.steps - first]));
  return out;
}

function assertClose(a: ArrayLike<number>, b: ArrayLike<number>, tol: number, what: string): void {
  assert.equal(a.length, b.length, `${what}: length`);
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    // NaN == NaN here: a skipped step reports the same non-finite loss both ways.
    if (Number.isNaN(a[i]) && Number.isNaN(b[i])) continue;
    // Absolute below 1, relative above (grad norms and losses can be tens).
    const d = Math.abs(a[i] - b[i]) / Math.max(1, Math.abs(a[i]));
    if (!(d <= worst)) worst = Number.isNaN(d) ? Infinity : d;
  }
  assert.ok(worst <= tol, `${what}: differs by ${worst} (tolerance ${tol}, absolute below 1, relative above)`);
}

function assertSameSteps(a: StepResult[], b: StepResult[], tol: number, what: string): void {
  assert.deepEqual(b.map((r) => r.applied), a.map((r) => r.applied), `${what}: applied`);
  assert.deepEqual(b.map((r) => r.step), a.map((r) => r.step), `${what}: update numbers`);
  assert.deepEqual(b.map((r) => r.lr), a.map((r) => r.lr), `${what}: learning rates`);
  assertClose(a.map((r) => r.loss), b.map((r) => r.loss), tol, `${what}: losses`);
  assertClose(a.map((r) => r.gradNorm), b.map((r) => r.gradNorm), tol, `${what}: grad norms`);
  for (const t of Object.keys(a[0].terms)) assertClose(a.map((r) => r.terms[t]), b.map((r) => r.terms[t]), tol, `${what}: loss.${t}`);
  a.forEach((r, k) => assertClose(r.zbar, b[k].zbar, tol, `${what}: zbar of step ${k}`));
}

function assertSameState(a: Trainer, b: Trainer, tol: number, what: string): void {
  assert.equal(b.steps, a.steps, `${what}: applied updates`);
  assert.equal(b.state.size, a.state.size);
  for (const [name, v] of a.state) assertClose(v, b.state.get(name)!, tol, `${what}: ${name}`);
}

test(`fused K=${K} gives what ${K} single steps give: losses, diagnostics, zbar and every state tensor`, async () => {
  const { crops } = arrivalInputs(1);
  const lrs = [0.05, 0.04, 0.03]; // distinct, so a step that took the wrong one shows
  const one = await open(ART.single);
  const fused = await open(ART.fused);
  assert.equal(fused.manifest.trainStep.fused?.updates, K);
  // Two arrivals: the second starts from the state (momentum, BN statistics) the first left.
  for (const a of [0, 1]) {
    const want = await singleSteps(one, crops, lrs);
    const got = await fused.arrive({ lrs, crops });
    assert.deepEqual(got.map((r) => r.step), [1, 2, 3].map((s) => s + a * K));
    assertSameSteps(want, got, SAME, `arrival ${a}`);
    assertSameState(one, fused, SAME, `arrival ${a}`);
  }
  // One run of K updates: the state crossed into ORT and back once, not K times.
  assert.equal(fused.io.runs, 2);
  assert.equal(one.io.runs, 2 * K);
  await one.close();
  await fused.close();
});

test('the host guard runs per inner step in the graph: a NaN or a blow-up skips exactly that step, state carried, like single steps', async () => {
  const { crops } = arrivalInputs(2);
  const cases = [
    // NaN crops in inner step 1: non-finite loss; steps 0 and 2 apply, 2 as update number 2.
    { name: 'NaN in step 1', crops: crops.map((v, i) => (i >= CROPS && i < 2 * CROPS ? Number.NaN : v)), lrs: [0.05, 0.04, 0.03], applied: [true, false, true] },
    // NaN in step 0 only: the first update of the run is step 1's.
    { name: 'NaN in step 0', crops: crops.map((v, i) => (i < CROPS ? Number.NaN : v)), lrs: [0.05, 0.04, 0.03], applied: [false, true, true] },
    // A finite update far over MAX_UPDATE_RATIO x |w| from a huge second learning rate: steps 1 and 2
    // both take it (a skipped update does not count) and both are skipped.
    { name: 'blow-up from step 1', crops, lrs: [0.05, 1e5, 1e5], applied: [true, false, false] },
  ];
  for (const c of cases) {
    const one = await open(ART.single);
    const fused = await open(ART.fused);
    const want = await singleSteps(one, c.crops, c.lrs);
    assert.deepEqual(want.map((r) => r.applied), c.applied, `${c.name}: the host guard itself`);
    const got = await fused.arrive({ lrs: c.lrs, crops: c.crops });
    assertSameSteps(want, got, SAME, c.name);
    assertSameState(one, fused, SAME, c.name);
    for (const [name, v] of fused.state) assert.ok(v.every(Number.isFinite), `${c.name}: ${name} is not finite`);
    await one.close();
    await fused.close();
  }
});

test('crops made in the graph from uint8 images, an index and the packed draws give what host crops from the same draws give', async () => {
  const x = arrivalInputs(3);
  const lrs = [0.05, 0.05, 0.05];
  const host = await open(ART.fused);
  const graph = await open(ART.graph);
  const f = graph.manifest.trainStep.fused!;
  assert.equal(f.crops, null);
  assert.deepEqual(f.index?.shape, [K, B]);
  const want = await host.arrive({ lrs, crops: x.crops });
  const got = await graph.arrive({ lrs, images: x.images, index: x.index, params: x.params });
  assertSameSteps(want, got, CROPS_TOL, 'in-graph crops');
  assertSameState(host, graph, CROPS_TOL, 'in-graph crops');
  await assert.rejects(graph.arrive({ lrs, images: x.images, index: x.index.map(() => 7n), params: x.params }), /index 7 outside the 7 images/);
  await assert.rejects(graph.step(x.crops.subarray(0, CROPS), 0.05), /use arrive\(\)/);
  await host.close();
  await graph.close();
});

/** Arrivals of 2 random images into a buffer of 8: no training at first, then training and removals. */
async function learnerRun(artifacts: string, lr: number) {
  const tr = await open(artifacts);
  const l = new Learner(tr, defaultLearnerConfig(tr, { updates: K, buffer: { capacity: 8, policy: 'diverse', alpha: 0.5 }, lr, schedule: 'cosine', scheduleSteps: 20, seed: 5 }));
  const rng = new Rng(11);
  const reports = [];
  for (let a = 0; a < 7; a++) {
    reports.push(await l.arrive(Array.from({ length: 2 }, (_, i) => ({ key: `${a}.${i}`, image: Uint8Array.from({ length: PER }, () => rng.int(256)) }))));
  }
  await tr.close();
  return { l, tr, reports };
}

// In-graph crops at a small learning rate: at 0.05 their 1e-5 crop differences flip ReLU kinks in this
// 4-image network and grow ~10x an arrival from the fourth on (seen); at 0.002 they stay ~1e-6.
const LEARNER_CASES = [
  { art: ART.fused, lr: 0.05, tol: SAME },
  { art: ART.graph, lr: 0.002, tol: CROPS_TOL },
];

test('the Learner through a fused artifact gives the unfused arrival reports, buffer and draws; with in-graph crops the same to rounding', async () => {
  for (const { art, lr, tol } of LEARNER_CASES) {
    const base = await learnerRun(ART.single, lr);
    assert.ok(base.reports.some((r) => !r.trained) && base.reports.some((r) => r.trained) && base.reports.some((r) => r.removed.length), 'the run covers untrained arrivals, training and removals');
    const run = await learnerRun(art, lr);
    const what = path.basename(art);
    run.reports.forEach((r, a) => {
      const b = base.reports[a];
      assert.equal(r.trained, b.trained, `${what} arrival ${a}: trained`);
      assert.equal(r.steps.length, b.steps.length, `${what} arrival ${a}: steps`);
      if (r.steps.length) assertSameSteps(b.steps, r.steps, tol, `${what} arrival ${a}`);
      assert.deepEqual(r.removed.map((e) => e.id), b.removed.map((e) => e.id), `${what} arrival ${a}: removed`);
    });
    // Same replay and crop draws, in the same order: both generators end where the unfused ones do.
    assert.deepEqual(run.l.rng.state, base.l.rng.state, `${what}: replay rng`);
    assert.deepEqual(snapshotLearner(run.l).cropRng, snapshotLearner(base.l).cropRng, `${what}: crop rng (as a checkpoint records it)`);
    const entries = base.l.buffer.entries;
    assert.deepEqual(run.l.buffer.entries.map((e) => [e.id, e.seen, e.lifespan]), entries.map((e) => [e.id, e.seen, e.lifespan]), `${what}: buffer`);
    run.l.buffer.entries.forEach((e, i) => assertClose(e.feature ?? [], entries[i].feature ?? [], tol, `${what}: feature of ${e.id}`));
    assertSameState(base.tr, run.tr, tol, what);
  }
});
