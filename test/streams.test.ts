// Streams: per-class counts, class order, the seq-bl swap profile (statistically, over seeds), and
// exact orders for a fixed seed against an independent re-implementation of the procedure.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeStream, streamSpec, SEQ_IM_COUNTS, blurBoundaries } from '../tools/data/streams.ts';
import { readCifar10 } from '../core/codecs/cifar.ts';
import { Rng } from '../core/rng.ts';
import { CIFAR10_DIR } from './helpers/paths.ts';

const cifar = readCifar10(CIFAR10_DIR, 'train');

function classRuns(order: number[], labels: ArrayLike<number>): [number, number][] {
  const runs: [number, number][] = [];
  for (const i of order) {
    const c = labels[i];
    if (runs.length && runs[runs.length - 1][0] === c) runs[runs.length - 1][1]++;
    else runs.push([c, 1]);
  }
  return runs;
}

test('seq: classes in ascending order, 4096 of each CIFAR-10 class, no repeats', () => {
  const order = makeStream(streamSpec('cifar10', 'seq', cifar.labels, 0));
  assert.equal(order.length, 40960);
  assert.equal(new Set(order).size, order.length);
  assert.deepEqual(classRuns(order, cifar.labels), [...Array(10).keys()].map((c) => [c, 4096]));
});

test('seq-im: the imbalanced per-class counts', () => {
  const order = makeStream(streamSpec('cifar10', 'seq-im', cifar.labels, 1));
  assert.deepEqual(classRuns(order, cifar.labels), SEQ_IM_COUNTS.cifar10.map((n, c) => [c, n]));
});

test('seq for a fixed trial equals an independent implementation of the procedure', () => {
  // Independent: per class, Fisher-Yates with the same generator, keep the first 4096; concatenate.
  const rng = new Rng(3);
  const expect: number[] = [];
  for (let c = 0; c < 10; c++) {
    const idx: number[] = [];
    cifar.labels.forEach((l, i) => l === c && idx.push(i));
    for (let i = idx.length - 1; i > 0; i--) {
      const j = Math.floor(rng.uniform() * (i + 1));
      const t = idx[i];
      idx[i] = idx[j];
      idx[j] = t;
    }
    expect.push(...idx.slice(0, 4096));
  }
  assert.deepEqual(makeStream(streamSpec('cifar10', 'seq', cifar.labels, 3)), expect);
  assert.notDeepEqual(makeStream(streamSpec('cifar10', 'seq', cifar.labels, 4)), expect);
});

test('seq-bl: swaps only within 25% of the smaller class around each boundary, with p falling from 0.5 to 0.05', () => {
  const len = 400;
  const n = Math.floor((len * 0.5) / 2); // 100 positions on each side
  const swaps = new Array(n).fill(0);
  const trials = 300;
  for (let t = 0; t < trials; t++) {
    const blocks = [0, 1, 2].map((c) => Array.from({ length: len }, (_, i) => c * 1000 + i));
    const out = blurBoundaries(blocks, new Rng(t), 0.5);
    for (let c = 1; c < 3; c++) {
      const prev = out[c - 1];
      const next = out[c];
      // Outside the windows (head n, and the tail n that the next boundary uses) nothing moved.
      for (let i = n; i < len - n; i++) assert.equal(Math.floor(next[i] / 1000), c);
      for (let tt = 0; tt < n; tt++) {
        const moved = Math.floor(next[tt] / 1000) === c - 1;
        if (c === 1) swaps[tt] += +moved;
        // A swap is a pair: the mirrored position of the previous class holds this class's item.
        assert.equal(moved, Math.floor(prev[len - 1 - tt] / 1000) === c);
      }
    }
  }
  // Empirical swap rate at offset t vs 0.5 -> 0.05 linearly; 300 trials: SE <= 0.029, allow 0.1.
  for (const tt of [0, 25, 50, 75, 99]) {
    const p = 0.5 + ((0.05 - 0.5) * tt) / (n - 1);
    assert.ok(Math.abs(swaps[tt] / trials - p) < 0.1, `offset ${tt}: ${swaps[tt] / trials} vs ${p}`);
  }
});

test('seq-bl on CIFAR-10 keeps the seq items and counts, blurring only the boundaries', () => {
  const seq = makeStream(streamSpec('cifar10', 'seq', cifar.labels, 2));
  const bl = makeStream(streamSpec('cifar10', 'seq-bl', cifar.labels, 2));
  assert.deepEqual([...bl].sort((a, b) => a - b), [...seq].sort((a, b) => a - b));
  assert.ok(classRuns(bl, cifar.labels).length > 10);
});
