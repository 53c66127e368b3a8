// The Learner's replay rule (DESIGN.md section 3), through its public surface with a fake trainer:
// which buffer entries each training step was given, read from the batch handed to updateFeatures
// (crops are augmented, so the images cannot tell us which entry they came from).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Learner, type LearnerConfig, type Replay, type Warmup } from '../agent/trainer/learner.ts';
import type { BufferPolicy } from '../agent/buffer/buffer.ts';
import type { StepResult, Trainer } from '../agent/trainer/trainer.ts';
import { CIFAR_AUGMENT } from '../agent/frames/augment.ts';

const B = 4; // images per step
const VIEWS = 2;
const SIZE = 4;
const D = 3; // zbar width per image

/** Just what Learner reads from a Trainer; counts the steps and checks the crops' layout. */
function fakeTrainer() {
  const t = {
    manifest: { trainStep: { crops: { images: B, views: VIEWS } }, preset: { image: { size: SIZE } } },
    steps: 0,
    cropLengths: [] as number[],
    async step(crops: Float32Array, lr: number): Promise<StepResult> {
      t.cropLengths.push(crops.length);
      t.steps++;
      // A distinct, non-zero zbar row per image so updateFeatures has real features to store.
      const zbar = Float32Array.from({ length: B * D }, (_, i) => 1 + ((i * 7) % 5));
      return { step: t.steps, lr, loss: 0, terms: {}, zbar, gradNorm: 0, gradCos: null, applied: true, ms: 0 };
    },
  };
  return t;
}

function makeLearner(replay: Replay, updates = 10, over: { capacity?: number; policy?: BufferPolicy; warmup?: Warmup } = {}) {
  const trainer = fakeTrainer();
  const cfg: LearnerConfig = {
    updates,
    replay,
    warmup: over.warmup ?? 'none',
    // By default a capacity far above what the tests add, so shrink never removes anything.
    buffer: { capacity: over.capacity ?? 100, policy: over.policy ?? 'diverse', alpha: 0.5 },
    lr: 0.01,
    schedule: 'constant',
    scheduleSteps: 1,
    augment: CIFAR_AUGMENT,
    seed: 7,
  };
  const learner = new Learner(trainer as unknown as Trainer, cfg);
  // Spy: every applied step passes its batch (the entries it trained on) to updateFeatures.
  const batches: number[][] = [];
  // ... and how many entries the buffer held while it trained.
  const sizes: number[] = [];
  const orig = learner.buffer.updateFeatures.bind(learner.buffer);
  learner.buffer.updateFeatures = (batch, zbar) => {
    batches.push(batch.map((e) => e.id));
    sizes.push(learner.buffer.size);
    return orig(batch, zbar);
  };
  return { learner, trainer, batches, sizes };
}

const items = (tag: string, n: number) => Array.from({ length: n }, (_, i) => ({ key: `${tag}${i}`, image: new Uint8Array(3 * SIZE * SIZE).fill(10 * i) }));
const newIds = (learner: Learner, before: Set<number>) => learner.buffer.entries.map((e) => e.id).filter((id) => !before.has(id));

test("mixed replay: no step while the buffer holds too few others; then this arrival's images plus distinct others", async () => {
  const { learner, trainer, batches } = makeLearner('mixed');
  // 1 fresh image needs 3 others; the buffer has none.
  let r = await learner.arrive(items('a', 1));
  assert.equal(r.trained, false);
  assert.equal(r.steps.length, 0);
  // 2 fresh need 2 others; only 1 (one short) is there.
  r = await learner.arrive(items('b', 2));
  assert.equal(r.trained, false);
  assert.equal(trainer.steps, 0);
  assert.equal(batches.length, 0);
  // 2 fresh, 3 others: every step trains on both fresh images and 2 of the 3 others.
  const before = new Set(learner.buffer.entries.map((e) => e.id));
  r = await learner.arrive(items('c', 2));
  const fresh = newIds(learner, before);
  assert.equal(fresh.length, 2);
  assert.equal(r.trained, true);
  assert.equal(r.steps.length, 10);
  assert.equal(batches.length, 10);
  assert.deepEqual(trainer.cropLengths, new Array(10).fill(VIEWS * B * 3 * SIZE * SIZE));
  for (const [k, ids] of batches.entries()) {
    assert.equal(ids.length, B, `step ${k}: batch size`);
    assert.deepEqual(ids.slice(0, 2), fresh, `step ${k}: the batch starts with this arrival's images`);
    const replayed = ids.slice(2);
    // The replayed part must come from the rest of the buffer: a fresh image drawn again would be
    // trained on twice in one step.
    assert.ok(replayed.every((id) => before.has(id)), `step ${k}: replayed ${replayed} includes this arrival's images ${fresh}`);
    assert.equal(new Set(ids).size, B, `step ${k}: duplicate entries in the batch ${ids}`);
  }
});

test('buffer replay: no step until the buffer holds a full batch; then whole batches drawn from all of it', async () => {
  const { learner, trainer, batches } = makeLearner('buffer');
  let r = await learner.arrive(items('a', 2));
  assert.equal(r.trained, false);
  assert.equal(trainer.steps, 0);
  r = await learner.arrive(items('b', 1));
  assert.equal(r.trained, false, 'three images are one short of a batch');
  // Exactly a full batch: every step trains on all four.
  r = await learner.arrive(items('c', 1));
  assert.equal(r.trained, true);
  const all = learner.buffer.entries.map((e) => e.id).sort((x, y) => x - y);
  assert.equal(batches.length, 10);
  for (const ids of batches) assert.deepEqual([...ids].sort((x, y) => x - y), all);
  // Six in the buffer: batches are B distinct entries, not forced to hold this arrival's images
  // (which the mixed rule would always include).
  batches.length = 0;
  const before = new Set(learner.buffer.entries.map((e) => e.id));
  await learner.arrive(items('d', 2));
  const fresh = newIds(learner, before);
  const live = new Set(learner.buffer.entries.map((e) => e.id));
  assert.equal(batches.length, 10);
  for (const ids of batches) {
    assert.equal(new Set(ids).size, B);
    assert.ok(ids.every((id) => live.has(id)));
  }
  assert.ok(batches.some((ids) => !fresh.every((id) => ids.includes(id))), 'every batch held all fresh images');
});

test("warm-up 'fill' (MinRed): no step until the buffer first holds its capacity, though a batch could be drawn; then every arrival trains", async () => {
  const trained = async (warmup: Warmup) => {
    const { learner, trainer } = makeLearner('buffer', 2, { capacity: 8, warmup });
    const out: boolean[] = [];
    for (let a = 0; a < 6; a++) {
      const before = trainer.steps;
      const r = await learner.arrive(items(`w${a}`, 2));
      assert.equal(r.trained, trainer.steps > before);
      out.push(r.trained);
    }
    return out;
  };
  // 2, 4, 6, 8, 10 (cut to 8), ... images: a batch of 4 exists from the second arrival on.
  assert.deepEqual(await trained('none'), [false, true, true, true, true, true]);
  assert.deepEqual(await trained('fill'), [false, false, false, true, true, true]);
});

test("'minred' buffer: the redundancy rule cuts the buffer before the arrival's steps ('diverse': after them)", async () => {
  const run = async (policy: BufferPolicy) => {
    const { learner, batches, sizes } = makeLearner('buffer', 10, { capacity: 6, policy });
    // 6 images, every one trained on (seen) by the time the fourth arrival comes.
    for (const tag of ['a', 'b', 'c']) await learner.arrive(items(tag, 2));
    assert.equal(learner.buffer.entries.filter((e) => e.seen).length, 6);
    batches.length = sizes.length = 0;
    const before = new Set(learner.buffer.entries.map((e) => e.id));
    const r = await learner.arrive(items('d', 2));
    const fresh = learner.buffer.entries.map((e) => e.id).filter((id) => !before.has(id));
    const removed = new Set(r.removed.map((e) => e.id));
    assert.equal(removed.size, 2);
    assert.equal(learner.buffer.size, 6);
    return { sizes, trainedOnRemoved: batches.some((ids) => ids.some((id) => removed.has(id))), freshKept: fresh.length };
  };
  const minred = await run('minred');
  // MinRed: the steps draw from the 6 survivors; the 2 new (unseen) images are never the ones removed.
  assert.deepEqual(minred.sizes, new Array(10).fill(6));
  assert.equal(minred.trainedOnRemoved, false);
  assert.equal(minred.freshKept, 2);
  // Ours: the steps draw from all 8, then the buffer is cut.
  const diverse = await run('diverse');
  assert.deepEqual(diverse.sizes, new Array(10).fill(8));
});

// Issue #31, `novel` replay. The fake embedding of an image is the unit vector at the angle (degrees)
// its pixels hold (0-255): 5 degrees apart is a near-duplicate (cosine 0.996), 30 or more is not (0.866).
const angleItems = (tag: string, angles: number[]) => angles.map((a, i) => ({ key: `${tag}${i}`, image: new Uint8Array(3 * SIZE * SIZE).fill(a) }));
const unit = (deg: number) => Float32Array.of(Math.cos((deg * Math.PI) / 180), Math.sin((deg * Math.PI) / 180), 0);
function withEmbed(t: ReturnType<typeof makeLearner>) {
  const per = 3 * SIZE * SIZE;
  (t.trainer as unknown as { embed: Trainer['embed'] }).embed = async (x: Float32Array, n: number) => {
    const embedding = new Float32Array(n * D);
    for (let j = 0; j < n; j++) embedding.set(unit(Math.round(x[j * per] * 255)), j * D);
    return { features: embedding.slice(), embedding };
  };
  return t;
}

test("novel replay: only the arrival's images that are no near-duplicate of a held row or of an earlier image of the arrival take the fixed slots", async () => {
  const t = withEmbed(makeLearner('novel', 5, { policy: 'diverse-strata-rolling' }));
  const { learner, batches } = t;
  await learner.arrive(angleItems('held', [0, 40, 80, 120]));
  // Rows as the rolling policy keeps them (the check made them: the buffer holds too few to shrink).
  assert.deepEqual(learner.buffer.entries.map((e) => [...e.fresh!]), [0, 40, 80, 120].map((a) => [...unit(a)]));
  batches.length = 0;
  const before = new Set(learner.buffer.entries.map((e) => e.id));
  // 200 is new; 205 repeats it within the arrival; 42 repeats the held 40; 250 is new.
  const r = await learner.arrive(angleItems('new', [200, 205, 42, 250]));
  const ids = newIds(learner, before);
  assert.deepEqual(r.novel!.map((e) => e.id), [ids[0], ids[3]]);
  assert.equal(batches.length, 5);
  for (const [k, b] of batches.entries()) {
    assert.deepEqual(b.slice(0, 2), [ids[0], ids[3]], `step ${k}: the novel images first`);
    assert.equal(new Set(b).size, B, `step ${k}: duplicate entries in the batch ${b}`);
    assert.ok(b.slice(2).every((id) => id !== ids[0] && id !== ids[3]), `step ${k}: a novel image replayed again`);
  }
  // The near-duplicates stay in the buffer and are drawn like any held entry.
  assert.ok(batches.some((b) => b.slice(2).some((id) => id === ids[1] || id === ids[2])), 'a near-duplicate of the arrival never drawn in 5 steps');
  // Under mixed the same arrival takes every fixed slot.
  const m = withEmbed(makeLearner('mixed', 5, { policy: 'diverse-strata-rolling' }));
  await m.learner.arrive(angleItems('held', [0, 40, 80, 120]));
  m.batches.length = 0;
  const mb = new Set(m.learner.buffer.entries.map((e) => e.id));
  const mr = await m.learner.arrive(angleItems('new', [200, 205, 42, 250]));
  assert.equal(mr.novel, undefined);
  for (const b of m.batches) assert.deepEqual(b, newIds(m.learner, mb));
});

test('novel replay: where every image is novel the batches are mixed replay\'s, draw for draw', async () => {
  const runs = await Promise.all((['mixed', 'novel'] as const).map(async (replay) => {
    const t = withEmbed(makeLearner(replay, 3, { policy: 'diverse-strata-rolling' }));
    // 30 degrees apart: cosine 0.866, under the threshold (angles stay under 256, a pixel's range).
    await t.learner.arrive(angleItems('a', [0, 30, 60]));
    await t.learner.arrive(angleItems('b', [90, 120]));
    await t.learner.arrive(angleItems('c', [150, 180]));
    await t.learner.arrive(angleItems('d', [210, 240]));
    return t.batches;
  }));
  assert.equal(runs[0].length, 9);
  assert.deepEqual(runs[1], runs[0]);
});

test("novel replay: the check's embeddings are the rolling buffer's first rows, so its shrink does not embed the arrival again", async () => {
  const embedded = async (replay: Replay) => {
    const t = withEmbed(makeLearner(replay, 2, { policy: 'diverse-strata-rolling', capacity: 4 }));
    const calls: number[] = [];
    const embed = (t.trainer as unknown as { embed: Trainer['embed'] }).embed;
    (t.trainer as unknown as { embed: Trainer['embed'] }).embed = (x, n) => (calls.push(n), embed(x, n));
    await t.learner.arrive(angleItems('a', [0, 40, 80, 120]));
    calls.length = 0;
    const r = await t.learner.arrive(angleItems('b', [160, 200]));
    assert.equal(r.removed.length, 2, 'the shrink ran its rule');
    assert.ok(t.learner.buffer.entries.every((e) => e.fresh), 'an entry without a row');
    return calls;
  };
  // novel: the check embeds the 2 new images; every row is then current, the shrink embeds nothing.
  assert.deepEqual(await embedded('novel'), [2]);
  // mixed: the shrink embeds the 2 new images and the 4 that never had a row.
  assert.deepEqual(await embedded('mixed'), [6]);
});

/** An arrival of `angles` (each a novel image); the ids it added to the buffer. */
async function arriveIds(learner: Learner, tag: string, angles: number[]): Promise<number[]> {
  const before = new Set(learner.buffer.entries.map((e) => e.id));
  await learner.arrive(angleItems(tag, angles));
  return newIds(learner, before);
}

/** Four arrivals of 2 images 26 degrees apart (cosine 0.899: every image novel); the last arrival's ids. */
async function fourArrivals(learner: Learner): Promise<number[]> {
  let prev: number[] = [];
  for (let a = 0; a < 4; a++) prev = await arriveIds(learner, `a${a}`, [52 * a, 52 * a + 26]);
  return prev;
}

test("novel-recent replay: half of the replay draws come from the buffer's newest quarter (by stream position), the rest from all of it", async () => {
  const t = withEmbed(makeLearner('novel-recent', 6, { policy: 'diverse-strata-rolling' }));
  const { learner, batches } = t;
  const prev = await fourArrivals(learner);
  batches.length = 0;
  const ids = await arriveIds(learner, 'a4', [208, 234]);
  // Newest quarter of 10 entries, the arrival's own left out: the previous arrival's 2. Batch of 4 =
  // the 2 new images + 1 recent draw (half of 2 replayed) + 1 draw from the rest.
  assert.equal(batches.length, 6);
  for (const [k, b] of batches.entries()) {
    assert.deepEqual(b.slice(0, 2), ids, `step ${k}: the arrival's images first`);
    assert.ok(prev.includes(b[2]), `step ${k}: the recent draw ${b[2]} is not from the previous arrival ${prev}`);
    assert.equal(new Set(b).size, B, `step ${k}: duplicate entries in the batch ${b}`);
  }
  // The rest is drawn from the whole buffer: over 6 steps some draw lands outside the newest quarter.
  assert.ok(batches.some((b) => !prev.includes(b[3])), 'every uniform draw came from the newest quarter');
});

test("novel-recent replay: the arrival's near-duplicates (the buffer's newest entries) are not taken as recent draws", async () => {
  const t = withEmbed(makeLearner('novel-recent', 6, { policy: 'diverse-strata-rolling' }));
  const { learner, batches } = t;
  const prev = await fourArrivals(learner);
  const before = new Set(learner.buffer.entries.map((e) => e.id));
  batches.length = 0;
  // 220 is new, 223 a near-duplicate of it (cosine 0.999): one fixed slot, three replayed, two of them recent.
  const r = await learner.arrive(angleItems('last', [220, 223]));
  const [novelId, dupId] = newIds(learner, before);
  assert.deepEqual(r.novel!.map((e) => e.id), [novelId]);
  for (const [k, b] of batches.entries()) {
    assert.equal(b[0], novelId);
    assert.ok(b.slice(1, 3).every((id) => prev.includes(id)), `step ${k}: recent draws ${b.slice(1, 3)} not from the previous arrival ${prev}`);
  }
  assert.ok(batches.every((b) => !b.slice(1, 3).includes(dupId)), "the arrival's near-duplicate drawn as a recent entry");
});
