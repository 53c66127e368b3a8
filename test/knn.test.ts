// kNN on hand-made feature sets where the answer is known, and against a brute-force reference.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { knnWeighted, knnUniformEuclidean, knnWeightedBlocks } from '../agent/eval/knn.ts';
import { ortSimilarity } from '../agent/buffer/similarity.ts';
import { openChosen } from '../agent/trainer/backend.ts';
import { Rng } from '../core/rng.ts';

test('weighted kNN: queries next to their class cluster are all right; k beyond a cluster still weights the near ones', async () => {
  // Two clusters on the unit circle: class 0 near angle 0, class 1 near angle pi/2; 3 vs 7 members.
  const pts = (a: number) => [Math.cos(a), Math.sin(a)];
  const memory = Float32Array.from([0, 0.05, -0.05].flatMap(pts).concat([1.5, 1.55, 1.6, 1.58, 1.52, 1.54, 1.56].flatMap(pts)));
  const memoryLabels = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1];
  const queries = Float32Array.from([0.02, 1.57].flatMap(pts));
  const r = await knnWeighted({ memory, memoryLabels, queries, queryLabels: [0, 1], d: 2, classes: 2 }, [1, 10]);
  assert.equal(r[0].accuracy, 100);
  // k = 10 takes every member: class 1 has more votes in number, but exp(sim/0.07) favours the near three.
  assert.equal(r[1].accuracy, 100);
  // With uniform votes over all 10, class 1 wins for the first query.
  const u = knnUniformEuclidean({ memory, memoryLabels, queries, queryLabels: [0, 1], d: 2, classes: 2 }, 10);
  assert.equal(u.correct, 1);
});

test('weighted kNN equals a brute-force reference on random data', async () => {
  const rng = new Rng(5);
  const d = 6;
  const nm = 200;
  const nq = 50;
  const memory = Float32Array.from({ length: nm * d }, () => rng.normal());
  const queries = Float32Array.from({ length: nq * d }, () => rng.normal());
  const memoryLabels = Array.from({ length: nm }, () => rng.int(4));
  const queryLabels = Array.from({ length: nq }, () => rng.int(4));
  const [r] = await knnWeighted({ memory, memoryLabels, queries, queryLabels, d, classes: 4 }, [7]);
  const norm = (a: Float32Array, i: number) => {
    const v = Array.from(a.subarray(i * d, (i + 1) * d));
    const n = Math.hypot(...v);
    return v.map((x) => x / n);
  };
  let correct = 0;
  for (let q = 0; q < nq; q++) {
    const qv = norm(queries, q);
    const sims = Array.from({ length: nm }, (_, m) => ({ m, s: norm(memory, m).reduce((a, x, i) => a + x * qv[i], 0) })).sort((a, b) => b.s - a.s);
    const votes = [0, 0, 0, 0];
    for (const { m, s } of sims.slice(0, 7)) votes[memoryLabels[m]] += Math.exp(s / 0.07);
    if (votes.indexOf(Math.max(...votes)) === queryLabels[q]) correct++;
  }
  assert.equal(r.correct, correct);
});

test('weighted kNN through ORT similarity blocks agrees with the plain-loop version', async () => {
  const rng = new Rng(8);
  const d = 16;
  const nm = 3000;
  const nq = 700;
  const centers = Array.from({ length: 5 }, () => Array.from({ length: d }, () => rng.normal()));
  const memoryLabels = Array.from({ length: nm }, () => rng.int(5));
  const queryLabels = Array.from({ length: nq }, () => rng.int(5));
  const pts = (labels: number[]) => Float32Array.from(labels.flatMap((c) => centers[c].map((v) => v + 1.5 * rng.normal())));
  const inp = { memory: pts(memoryLabels), memoryLabels, queries: pts(queryLabels), queryLabels, d, classes: 5 };
  const a = await knnWeighted(inp, [20, 50]);
  const b = await knnWeightedBlocks(await ortSimilarity((m) => openChosen(m, { threads: 1 })), inp, [20, 50]);
  // float32 GEMM vs float64 sums can swap near-tied neighbours: allow a handful of queries to differ.
  for (let i = 0; i < 2; i++) assert.ok(Math.abs(a[i].correct - b[i].correct) <= 3, `${a[i].correct} vs ${b[i].correct}`);
  assert.ok(a[0].accuracy > 40, 'the clusters are separable');
});

test('weighted kNN counts correct answers per query class', async () => {
  // Class 0 near angle 0, class 1 near pi/2, class 2 has no memory rows (never learnt): its queries
  // can only be wrong. Queries: two of class 0 (one sits in class 1's cluster), one of 1, two of 2.
  const pts = (a: number) => [Math.cos(a), Math.sin(a)];
  const memory = Float32Array.from([0, 0.05, 1.55, 1.6].flatMap(pts));
  const queries = Float32Array.from([0.02, 1.57, 1.58, 0.01, 1.56].flatMap(pts));
  const [r] = await knnWeighted({ memory, memoryLabels: [0, 0, 1, 1], queries, queryLabels: [0, 0, 1, 2, 2], d: 2, classes: 3 }, [2]);
  assert.deepEqual(r.byClass, { correct: [1, 1, 0], total: [2, 1, 2] });
  assert.equal(r.correct, 2);
});
