// PSA selection (agent/buffer/psa.ts, diversipy's psa_select) on cases worked out by hand and against
// a plain reimplementation written here (a linear scan for the widest box instead of Python's heap;
// the two agree whenever no two boxes have the same extent), and the buffer's psa policy.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { psaSelect } from '../agent/buffer/psa.ts';
import { ReplayBuffer } from '../agent/buffer/buffer.ts';
import { Rng } from '../core/rng.ts';

/** Partition-and-select as Salomon et al. describe it, written plainly. */
function refPsa(pts: number[][], k: number): number[] {
  const d = pts[0].length;
  const extent = (m: number[]) => {
    let best = -1;
    let dim = 0;
    for (let j = 0; j < d; j++) {
      const vs = m.map((i) => pts[i][j]);
      const e = Math.max(...vs) - Math.min(...vs);
      if (e > best) [best, dim] = [e, j];
    }
    return { best, dim };
  };
  const boxes: number[][] = [pts.map((_, i) => i)];
  while (boxes.length < k) {
    let w = 0;
    for (let i = 1; i < boxes.length; i++) if (extent(boxes[i]).best > extent(boxes[w]).best) w = i;
    const { dim } = extent(boxes[w]);
    const vs = boxes[w].map((i) => pts[i][dim]);
    const mid = (Math.max(...vs) + Math.min(...vs)) / 2;
    const m = boxes.splice(w, 1)[0];
    boxes.push(m.filter((i) => pts[i][dim] < mid), m.filter((i) => pts[i][dim] >= mid));
  }
  return boxes
    .map((m) => {
      // The centre in float32, as diversipy has it from float32 points: a 2-point box is an exact tie
      // in real numbers, so which point is kept is decided by this rounding (there and here).
      const centre = Array.from({ length: d }, (_, j) => Math.fround(Math.fround(Math.max(...m.map((i) => pts[i][j])) + Math.min(...m.map((i) => pts[i][j]))) / 2));
      const dist = (i: number) => pts[i].reduce((s, v, j) => s + (v - centre[j]) ** 2, 0);
      return m.reduce((a, b) => (dist(b) < dist(a) ? b : a));
    })
    .sort((a, b) => a - b);
}

const flat = (pts: number[][]) => Float32Array.from(pts.flat());

// Worked by hand: split x at 5 -> {0,1,2} (extent 4) | {3,4,5} (extent 5); split the latter at 7.5 ->
// {3} | {4,5}; three boxes. Centres: {0,1,2} (2, 0.1) -> point 1; {4,5} equidistant -> the first, 4.
const HAND = [[0, 0], [1, 0.2], [4, 0], [5, 1], [9, 0], [10, 0.5]];

test('psa: a hand-worked case, and selecting all or one point', () => {
  assert.deepEqual(psaSelect(flat(HAND), 2, 3), [1, 3, 4]);
  assert.deepEqual(refPsa(HAND, 3), [1, 3, 4]);
  assert.deepEqual(psaSelect(flat(HAND), 2, 6), [0, 1, 2, 3, 4, 5]);
  // One box: the point nearest the centre of the whole box (5, 0.5) is point 3.
  assert.deepEqual(psaSelect(flat(HAND), 2, 1), [3]);
  // 1-D, two equal halves: heapq splits the upper one first, then the lower; one pick per pair.
  assert.deepEqual(psaSelect(Float32Array.from([0, 1, 2, 3, 10, 11, 12, 13]), 1, 4), [0, 2, 4, 6]);
  // Equal extents in x and y: the first dimension is split (x at 1: {0, 2} | {1}; on y it would be [0, 2]).
  assert.deepEqual(psaSelect(flat([[0, 0], [2, 0.5], [0.5, 2]]), 2, 2), [0, 1]);
  assert.throws(() => psaSelect(flat(HAND), 2, 7), /cannot select 7 of 6/);
});

test('psa: random point sets agree with the plain reimplementation', () => {
  for (const seed of [1, 2, 3, 4, 5]) {
    const rng = new Rng(seed);
    const n = 40;
    const d = 5;
    const pts = Array.from({ length: n }, () => Array.from({ length: d }, () => Math.fround(rng.normal())));
    for (const k of [1, 2, 7, 20, 33, 40]) assert.deepEqual(psaSelect(flat(pts), d, k), refPsa(pts, k), `seed ${seed} k ${k}`);
  }
});

test('buffer psa: keeps what PSA picks from the features of all entries, asks for features only when over capacity', async () => {
  const b = new ReplayBuffer({ capacity: 3, policy: 'psa', alpha: 0.5 });
  const rng = new Rng(1);
  b.add([0, 1].map((i) => ({ key: `k${i}`, image: new Uint8Array(3) })));
  let calls = 0;
  const features = async (es: { key: string }[]) => {
    calls++;
    return flat(es.map((e) => HAND[Number(e.key.slice(1))]));
  };
  assert.deepEqual(await b.shrink(rng, features), []);
  assert.equal(calls, 0);
  b.add([2, 3, 4, 5].map((i) => ({ key: `k${i}`, image: new Uint8Array(3) })));
  const removed = await b.shrink(rng, features);
  assert.equal(calls, 1);
  assert.deepEqual(removed.map((e) => e.key).sort(), ['k0', 'k2', 'k5']);
  assert.deepEqual(b.entries.map((e) => e.key), ['k1', 'k3', 'k4']);
  b.add([{ key: 'k0', image: new Uint8Array(3) }]);
  await assert.rejects(b.shrink(rng), /psa: shrinking needs the entries' backbone features/);
});
