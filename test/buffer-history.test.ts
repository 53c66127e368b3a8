// Issue #31: the diverse buffer must keep the stream's history. The buffer diagnostics (class histogram,
// nearest-neighbour cosine by entry age) on a hand-made buffer; ours' refreshed features are a fresh
// embed of the stored images, bit for bit; and on a small class-incremental stream where the old
// classes look the most redundant, the paper's rule empties the oldest class and ours keeps it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DEFAULT_REFRESH_EVERY, ReplayBuffer, type BufferPolicy, type Entry } from '../agent/buffer/buffer.ts';
import { classHistogram, nnCosineByAge, storedRows } from '../agent/eval/redundancy.ts';
import { bufferMix } from '../agent/serve/buffer-view.ts';
import { METHODS } from '../agent/methods.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { Learner, defaultLearnerConfig, type LearnerConfig } from '../agent/trainer/learner.ts';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { Rng } from '../core/rng.ts';
import { tinyPreset } from './helpers/tiny.ts';

const img = (v: number) => new Uint8Array(12).fill(v);

test('class histogram and nearest-neighbour cosine by age of a hand-made buffer', () => {
  // Keys 'source.frame'; labels by source. Four entries, oldest first by stream position (given out of order).
  const es = [
    { key: '10.0', streamIndex: 3, feature: Float32Array.of(0, 2) }, // (0, 1) once normalised
    { key: '11.4', streamIndex: 1, feature: Float32Array.of(1, 0) },
    { key: '12', streamIndex: 4, feature: Float32Array.of(0.6, 0.8) },
    { key: '10.1', streamIndex: 2, feature: Float32Array.of(0.8, 0.6) },
  ];
  const label: Record<string, number> = { '10': 2, '11': 0, '12': 2 };
  assert.deepEqual(classHistogram(es, (k) => label[k.split('.')[0]], 4), [1, 0, 3, 0]);
  // Out-of-range labels are not counted.
  assert.deepEqual(classHistogram(es, (k) => (k.startsWith('12') ? 7 : 1), 3), [0, 3, 0]);
  // Cosines: (1,0)-(.8,.6) .8; (0,1)-(.6,.8) .8; (.6,.8)-(.8,.6) .96. Nearest: s1 .8, s2 .96, s3 .8, s4 .96.
  const rows = storedRows(es, 2);
  const two = nnCosineByAge(es, rows, 2);
  assert.ok(Math.abs(two[0] - 0.88) < 1e-6 && Math.abs(two[1] - 0.88) < 1e-6, `${two}`);
  const four = nnCosineByAge(es, rows, 4);
  [0.8, 0.96, 0.8, 0.96].forEach((v, g) => assert.ok(Math.abs(four[g] - v) < 1e-6, `cohort ${g}: ${four[g]} != ${v}`));
  // An entry never seen (no z*) reads as a zero row: cosine 0 to everything.
  const unseen = [...es.slice(0, 3), { key: '13', streamIndex: 5, feature: null }];
  assert.ok(Math.abs(nnCosineByAge(unseen, storedRows(unseen, 2), 4)[3]) < 1e-6);
});

test("the dashboard's buffer mix: entries per span of the stream so far, distinct source clips, the largest", () => {
  // 16 positions seen, 4 spans of 4: positions 1-4, 5-8, 9-12, 13-16.
  const es = [
    { key: '7.0', streamIndex: 1 },
    { key: '7.1', streamIndex: 2 },
    { key: '7.2', streamIndex: 4 },
    { key: '9', streamIndex: 5 },
    { key: 'cam/a.png', streamIndex: 16 },
  ];
  assert.deepEqual(bufferMix(es, 16, 4), { byAge: [3, 1, 0, 1], sources: 3, largestSource: { source: '7', entries: 3 } });
  assert.deepEqual(bufferMix([], 0, 2), { byAge: [0, 0], sources: 0, largestSource: null });
});

for (const policy of [METHODS.ours.buffer, 'diverse-strata-refresh'] as BufferPolicy[]) test(`${policy}'s refresh: the rows refreshed this round are a fresh embed of the stored images under the current weights, bit for bit`, async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-history-'));
  try {
    const dir = path.join(root, 'art');
    writeArtifacts(compileArtifacts(tinyPreset(['agent={"newPerArrival":2,"updatesPerArrival":2,"bufferSize":6,"replay":"mixed"}'])), dir);
    const trainer = await Trainer.open(dir, { threads: 1 });
    const cfg = defaultLearnerConfig(trainer, { seed: 5 });
    assert.equal(cfg.buffer.policy, METHODS.ours.buffer, "the learner's default is ours' buffer");
    const learner = new Learner(trainer, { ...cfg, buffer: { ...cfg.buffer, policy } });
    const rng = new Rng(9);
    const size = trainer.manifest.preset.image.size;
    for (let a = 0; a < 6; a++) await learner.arrive(Array.from({ length: 2 }, (_, j) => ({ key: `${a}.${j}`, image: Uint8Array.from({ length: 3 * size * size }, () => rng.int(256)) })));
    const r = learner.buffer.lastRefresh;
    assert.ok(r, 'the features were refreshed before removing');
    if (policy === 'diverse-strata-refresh') assert.equal(r.entries.length, 8, 'every entry of the buffer over capacity (6 + 2) was embedded');
    else {
      // Rolling: only the entries due (the arrival's, and those whose lifespan is a multiple of 4)
      // were embedded; every entry left still has its kept row.
      assert.ok(r.entries.length >= 2 && r.entries.length < 8, `${r.entries.length} of 8 embedded`);
      assert.ok(r.entries.every((e) => e.lifespan % DEFAULT_REFRESH_EVERY === 0), `lifespans ${r.entries.map((e) => e.lifespan)}`);
      assert.ok(learner.buffer.entries.every((e) => e.fresh), 'every entry keeps a row');
    }
    const per = 3 * size * size;
    const x = new Float32Array(r.entries.length * per);
    r.entries.forEach((e, j) => e.image.forEach((v, k) => (x[j * per + k] = v / 255)));
    // No step since the last shrink: the same weights, the same session.
    const want = (await trainer.embed(x, r.entries.length)).embedding;
    assert.equal(r.rows.length, want.length);
    assert.ok(Buffer.from(r.rows.buffer, r.rows.byteOffset, r.rows.byteLength).equals(Buffer.from(want.buffer, want.byteOffset, want.byteLength)), 'refreshed rows differ from a fresh embed');
    await trainer.close();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test("the rolling refresh's cadence: about every 8 updates, at most every 4 arrivals (K = 2 and 3 keep 4, K = 1 takes 8); a configured one wins", () => {
  // The constructor reads only the config: no session is needed.
  const cfg = (updates: number, refreshEvery?: number) => ({ updates, replay: 'mixed', warmup: 'none', lr: 0.1, schedule: 'constant', scheduleSteps: 1, seed: 0, augment: {}, buffer: { capacity: 8, policy: METHODS.ours.buffer, alpha: 0.5, ...(refreshEvery ? { refreshEvery } : {}) } }) as unknown as LearnerConfig;
  const every = (updates: number, refreshEvery?: number) => new Learner({} as Trainer, cfg(updates, refreshEvery)).buffer.cfg.refreshEvery;
  assert.equal(DEFAULT_REFRESH_EVERY, 4);
  assert.equal(every(1), 8);
  assert.equal(every(2), 4);
  assert.equal(every(3), 4);
  assert.equal(every(10), 4);
  assert.equal(every(1, 5), 5);
});

test('diverse-strata-rolling: each entry embedded on entry and every n arrivals after; its kept row survives a snapshot and restore', async () => {
  // A fake encoder that changes every round (its version is mixed into every row): a row computed in
  // another round than the straight run's would differ, and so would the removals it ranks.
  const D = 6;
  let version = 0;
  const asked: number[][] = [];
  const features = async (es: Entry[]) => {
    asked.push(es.map((e) => e.streamIndex));
    return Float32Array.from(es.flatMap((e) => Array.from({ length: D }, (_, k) => Math.sin(e.streamIndex * (k + 1) + version * (k + 2)))));
  };
  const open = () => new ReplayBuffer({ capacity: 8, policy: 'diverse-strata-rolling', alpha: 0.5, strata: 2, refreshEvery: 3 });
  const arrive = async (b: ReplayBuffer, a: number, log: string[]) => {
    const added = b.add([0, 1, 2].map((j) => ({ key: `${a}.${j}`, image: img(a) })));
    await b.updateFeatures(added, Float32Array.from(added.flatMap((e) => Array.from({ length: D }, (_, k) => Math.cos(e.streamIndex + k)))));
    log.push(...(await b.shrink(new Rng(a), features)).map((e) => e.key));
    version++;
  };
  const straight = open();
  const log: string[] = [];
  for (let a = 0; a < 5; a++) await arrive(straight, a, log);
  // The rule's first round (the 3rd arrival: 9 entries, 1 removal): every entry is embedded, none has a row yet.
  assert.deepEqual(asked[0], [1, 2, 3, 4, 5, 6, 7, 8, 9]);
  // The next: the arrival's 3 entries, and the first arrival's survivors (lifespan 3); not those of the 2nd and 3rd (lifespans 2, 1).
  assert.deepEqual(asked[1], [1, 2, 3, 10, 11, 12].filter((i) => asked[1].includes(i)));
  assert.deepEqual(asked[1].slice(-3), [10, 11, 12], "the arrival's entries are embedded on entry");
  assert.ok(!asked[1].some((i) => i >= 4 && i <= 9), `${asked[1]}`);
  const snap = straight.snapshot();
  const kept = snap.entries.map((e) => e.fresh);
  assert.ok(kept.every((f) => f), 'every entry keeps a row');
  for (let a = 5; a < 9; a++) await arrive(straight, a, log);
  assert.deepEqual(snap.entries.map((e) => e.fresh), kept, 'the snapshot holds the rows it was taken with');
  const restored = open();
  await restored.restore(snap);
  const vAfter = version;
  version = 5;
  const log2: string[] = [];
  for (let a = 5; a < 9; a++) await arrive(restored, a, log2);
  assert.equal(version, vAfter);
  assert.deepEqual(log2, log.slice(-log2.length), 'removals after the restore');
  assert.deepEqual(restored.entries.map((e) => [e.key, [...e.fresh!]]), straight.entries.map((e) => [e.key, [...e.fresh!]]), 'kept rows after the restore');
});

/**
 * Eight classes of 8 images, 4 an arrival, into a buffer of 12. The features carry no class structure
 * (random directions, stored and recomputed alike), so entries of every age are about as redundant as
 * each other: what bench --orders seq measured of z* and of the current encoder's embeddings (issue #31).
 */
async function classStream(policy: BufferPolicy, strata?: number): Promise<number[]> {
  const D = 8;
  const rng = new Rng(4);
  const feat = new Map<number, Float32Array>();
  const b = new ReplayBuffer({ capacity: 12, policy, alpha: 0.5, ...(strata ? { strata } : {}) });
  for (let c = 0; c < 8; c++) {
    for (let a = 0; a < 2; a++) {
      const added = b.add(Array.from({ length: 4 }, (_, j) => ({ key: `${c}.${a * 4 + j}`, image: img(c) })));
      for (const e of added) feat.set(e.id, Float32Array.from({ length: D }, () => rng.range(-1, 1)));
      await b.updateFeatures(added, Float32Array.from(added.flatMap((e) => [...feat.get(e.id)!])));
      await b.shrink(rng, async (es) => Float32Array.from(es.flatMap((e) => [...feat.get(e.id)!])));
    }
  }
  return classHistogram(b.entries, (k) => Number(k.split('.')[0]), 8);
}

test("a class-incremental stream with no class structure in the features: the paper's rule empties the oldest class, ours keeps it", async () => {
  const old = await classStream('diverse');
  assert.equal(old[0], 0, `the paper's rule was expected to empty class 0: ${old}`);
  const ours = await classStream(METHODS.ours.buffer, METHODS.ours.strata);
  // Fair share 12 / 8 = 1.5: every class keeps one.
  assert.ok(ours.every((n) => n >= 1), `ours' buffer lost a class: ${ours}`);
  assert.equal(ours.reduce((p, q) => p + q, 0), 12);
});

test('the spans of a long stream keep every part of it (40,000 positions, 256 entries, 32 per arrival)', async () => {
  // strata-random isolates the spans from the features: a uniform draw within the densest span. Spans cut
  // as 16 equal parts of the stream so far drifted with every arrival and left 126 entries in the first
  // tenth, 117 in the last and 13 in between; spans on a fixed grid keep each tenth near its share (25.6).
  const b = new ReplayBuffer({ capacity: 256, policy: 'strata-random', alpha: 0.5, strata: 16 });
  const rng = new Rng(3);
  const T = 40_000;
  const image = new Uint8Array(1);
  for (let t = 0; t < T; t += 32) {
    b.add(Array.from({ length: 32 }, (_, j) => ({ key: String(t + j), image })));
    await b.shrink(rng);
  }
  const tenths = classHistogram(b.entries, (k) => Math.floor((Number(k) * 10) / T), 10);
  assert.equal(b.size, 256);
  assert.ok(tenths.every((n) => n >= 0.5 * 25.6), `a tenth of the stream under half its share: ${tenths}`);
});
