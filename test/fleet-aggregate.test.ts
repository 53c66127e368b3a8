// One fleet aggregation round (issues #22, #30): which updates screening refuses and why, with what weight,
// and the combined delta of each robust rule (Krum too) against answers worked out by hand or in plain float64 here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../core/rng.ts';
import { aggregate, krumSelect, parseRobust } from '../agent/fleet/combine.ts';
import { screen, type Candidate } from '../agent/fleet/screen.ts';

const spec = [
  { name: 'w', shape: [2, 2] },
  { name: 'bn.mean', shape: [2] },
];

/** A delta whose every value is v (norm = |v| * sqrt(6)). */
function flat(v: number): Map<string, Float32Array> {
  return new Map([['w', new Float32Array(4).fill(v)], ['bn.mean', new Float32Array(2).fill(v)]]);
}
const cand = (device: string, seq: number, delta = flat(0.01), frames = 100): Candidate => ({ device, seq, frames, delta });
/** Global params with norm 100 * sqrt(6): the absolute rule (1 x that) is far above the good deltas. */
const global = flat(100);

function whyOf(r: ReturnType<typeof screen>, device: string, seq?: number): string {
  const hit = r.rejected.filter((x) => x.device === device && (seq === undefined || x.seq === seq));
  assert.equal(hit.length, 1, `one rejection for ${device}: ${JSON.stringify(r.rejected)}`);
  assert.ok(!hit[0].why.includes('\n'), 'one line');
  return hit[0].why;
}
const keptIds = (r: ReturnType<typeof screen>) => r.kept.map((c) => `${c.device}#${c.seq}`);

test('screen: each bad update is rejected with its reason; the good ones are kept', () => {
  const nan = flat(0.01);
  nan.get('w')![2] = NaN;
  const wrongShape = flat(0.01);
  wrongShape.set('w', new Float32Array(5));
  const extra = new Map([...flat(0.01), ['head.w', new Float32Array(3)]]);
  const missing = flat(0.01);
  missing.delete('bn.mean');
  const r = screen(
    [
      cand('good-1', 1, flat(0.01)),
      cand('nan', 1, nan),
      cand('huge', 1, flat(1e6 / Math.sqrt(6))), // norm 1e6
      cand('good-2', 4, flat(-0.02), 30),
      cand('shape', 1, wrongShape),
      cand('extra', 1, extra),
      cand('missing', 1, missing),
      cand('idle', 1, flat(0.01), 0),
      cand('half', 1, flat(0.01), 1.5),
      cand('dup', 2, flat(0.01)),
      cand('dup', 5, flat(0.015)),
      cand('dup', 3, flat(0.01)),
      cand('outlier', 1, flat(1)), // 100 x the median norm, yet under the absolute limit
      cand('good-3', 2, flat(0.005)),
    ],
    global,
    spec,
  );
  assert.deepEqual(keptIds(r), ['dup#5', 'good-1#1', 'good-2#4', 'good-3#2']);
  assert.match(whyOf(r, 'nan'), /^tensor w has a non-finite value \(NaN\) at 2$/);
  assert.match(whyOf(r, 'huge'), /^delta norm 1000000 exceeds 10 x the global norm 244\.9 \(the first round's bound: no history yet\)$/);
  assert.match(whyOf(r, 'shape'), /^tensor w has 5 values, expected 4$/);
  assert.match(whyOf(r, 'extra'), /^unexpected tensor head\.w$/);
  assert.match(whyOf(r, 'missing'), /^tensor bn\.mean is missing$/);
  assert.match(whyOf(r, 'idle'), /^frames 0 is not a positive integer$/);
  assert.match(whyOf(r, 'half'), /^frames 1\.5 is not a positive integer$/);
  assert.match(whyOf(r, 'dup', 2), /^superseded by seq 5 from the same device this round$/);
  assert.match(whyOf(r, 'dup', 3), /^superseded by seq 5/);
  // The median is over the six that passed the other checks (huge and outlier included): (0.015 + 0.02) / 2 x sqrt(6).
  assert.match(whyOf(r, 'outlier'), /^delta norm 2\.449 exceeds 10 x the median norm 0\.04287$/);
  assert.equal(r.rejected.length, 10);
  assert.deepEqual(
    r.rejected.map((x) => x.device),
    [...r.rejected.map((x) => x.device)].sort(),
    'rejected come sorted by device',
  );
});

test('screen: the newest of a device is checked alone (a bad newest is not replaced by an older one); an exact repeat keeps the first', () => {
  const nan = flat(0.01);
  nan.get('bn.mean')![0] = Infinity;
  const r = screen([cand('a', 1), cand('a', 2, nan), cand('b', 3, flat(0.01)), cand('b', 3, flat(0.02))], global, spec);
  assert.deepEqual(keptIds(r), ['b#3']);
  assert.equal(r.kept[0].delta.get('w')![0], Math.fround(0.01), 'the first of the repeat');
  assert.match(whyOf(r, 'a', 1), /superseded by seq 2/);
  assert.match(whyOf(r, 'a', 2), /non-finite value \(Infinity\)/);
  assert.match(r.rejected.find((x) => x.device === 'b')!.why, /^duplicate of seq 3 from the same device this round$/);
});

test('screen: with 2 candidates the median rule is not applied, the absolute one is; options change both limits', () => {
  const two = screen([cand('a', 1, flat(0.01)), cand('b', 1, flat(1))], global, spec);
  assert.deepEqual(keptIds(two), ['a#1', 'b#1'], 'b is 100 x a, but there is no median of two');
  // Under a ratio below 2 a median of two could reject the larger (1 > 1.5 x 0.505): it must not be applied.
  assert.deepEqual(keptIds(screen([cand('a', 1, flat(0.01)), cand('b', 1, flat(1))], global, spec, { maxNormRatio: 1.5 })), ['a#1', 'b#1']);
  assert.deepEqual(keptIds(screen([cand('a', 1, flat(0.01)), cand('b', 1, flat(1)), cand('c', 1, flat(0.01))], global, spec, { maxNormRatio: 1.5 })), ['a#1', 'c#1']);
  const three = screen([cand('a', 1, flat(0.01)), cand('b', 1, flat(1)), cand('c', 1, flat(0.01))], global, spec);
  assert.deepEqual(keptIds(three), ['a#1', 'c#1']);
  assert.match(whyOf(three, 'b'), /median norm/);
  const abs = screen([cand('a', 1, flat(0.01)), cand('b', 1, flat(2001))], global, spec);
  assert.deepEqual(keptIds(abs), ['a#1']);
  assert.match(whyOf(abs, 'b'), /exceeds 10 x the global norm/);
  // Bad candidates do not count towards the three: a NaN one leaves two.
  const nan = flat(0.01);
  nan.get('w')![0] = NaN;
  assert.deepEqual(keptIds(screen([cand('a', 1, flat(0.01)), cand('b', 1, flat(1)), cand('c', 1, nan)], global, spec)), ['a#1', 'b#1']);
  assert.deepEqual(keptIds(screen([cand('a', 1, flat(0.01)), cand('b', 1, flat(2001))], global, spec, { absMaxRatio: 21 })), ['a#1', 'b#1']);
  assert.deepEqual(keptIds(screen([cand('a', 1, flat(0.01)), cand('b', 1, flat(1)), cand('c', 1, flat(0.01))], global, spec, { maxNormRatio: 200 })), ['a#1', 'b#1', 'c#1']);
  assert.deepEqual(screen([], global, spec), { kept: [], rejected: [], keptNorm: NaN });
  assert.throws(() => screen([], global, spec, { maxNormRatio: 0 }), /^Error: screen: maxNormRatio must be a positive number, got 0$/);
});

test('screen (issue #30, B7): with a history the absolute bound is k x the median accepted norm of recent rounds, not the global norm; the first round keeps the global-norm bound', () => {
  const g = flat(1); // global norm sqrt(6) = 2.449
  const norm = (d: Map<string, Float32Array>) => Math.sqrt([...d.values()].reduce((s, v) => s + v.reduce((a, x) => a + x * x, 0), 0));
  const steer = flat(0.99); // 9.9 x the global norm / sqrt(6) x sqrt(6): 9.9 x ... under the old 10 x global rule
  assert.ok(norm(steer) < 10 * norm(g));
  const history = [norm(flat(0.01)), norm(flat(0.012)), norm(flat(0.008))]; // median 0.0245
  // Alone, and in a round of two: the history bound (10 x 0.0245 = 0.245) refuses it.
  for (const cands of [[cand('evil', 1, steer, 1e12)], [cand('evil', 1, steer, 1e12), cand('good', 1, flat(0.01))]]) {
    const r = screen(cands, g, spec, { history });
    assert.match(whyOf(r, 'evil'), /^delta norm 2\.425 exceeds 10 x the median accepted norm of the last 3 round\(s\) 0\.02449$/);
  }
  // The same round without history (the first): only the global-norm bound, which it passes.
  assert.deepEqual(keptIds(screen([cand('evil', 1, steer)], g, spec)), ['evil#1']);
  // Under the bound: kept; options change k; a history of zeros or non-finite values counts as none.
  assert.deepEqual(keptIds(screen([cand('a', 1, flat(0.09))], g, spec, { history })), ['a#1']);
  assert.deepEqual(keptIds(screen([cand('a', 1, flat(0.09))], g, spec, { history, historyRatio: 3 })), []);
  assert.deepEqual(keptIds(screen([cand('evil', 1, steer)], g, spec, { history: [0, NaN] })), ['evil#1']);
  // keptNorm: the median of the kept norms, this round's history entry.
  const r = screen([cand('a', 1, flat(0.01)), cand('b', 1, flat(0.02)), cand('c', 1, flat(0.03))], g, spec, { history });
  assert.ok(Math.abs(r.keptNorm - norm(flat(0.02))) < 1e-9, String(r.keptNorm));
});

test('screen (issue #30, B6/B7): a device weighs at most c x the lower median of the reported frames; a safe-integer claim of 2^53 - 1 frames is capped, never thrown on', () => {
  const weights = (r: ReturnType<typeof screen>) => Object.fromEntries(r.kept.map((c) => [c.device, c.weight]));
  assert.deepEqual(weights(screen([cand('a', 1, flat(0.01), 10), cand('b', 1, flat(0.01), 30), cand('evil', 1, flat(0.01), 1e12)], global, spec)), { a: 10, b: 30, evil: 120 });
  // Two devices: the lower median is the honest one's report (a mean of the two would be the liar's half).
  assert.deepEqual(weights(screen([cand('a', 1, flat(0.01), 10), cand('evil', 1, flat(0.01), Number.MAX_SAFE_INTEGER)], global, spec)), { a: 10, evil: 40 });
  assert.deepEqual(weights(screen([cand('a', 1, flat(0.01), 10), cand('evil', 1, flat(0.01), Number.MAX_SAFE_INTEGER)], global, spec, { weightCap: 1 })), { a: 10, evil: 10 });
  // Alone, a device weighs what it reports; the mean then never overflows.
  const alone = screen([cand('evil', 1, flat(0.01), Number.MAX_SAFE_INTEGER)], global, spec);
  assert.deepEqual(weights(alone), { evil: Number.MAX_SAFE_INTEGER });
  assert.equal(aggregate(alone.kept, spec, 'mean').get('w')![0], Math.fround(0.01));
  // The capped weights are what the mean uses: 0 x 10 + 1 x 40 over 50.
  const r = screen([cand('a', 1, flat(0), 10), cand('evil', 1, flat(1), 1e12)], flat(100), spec);
  assert.equal(aggregate(r.kept, spec, 'mean').get('w')![0], Math.fround(40 / 50));
});

test('Krum and Multi-Krum (Flower\'s aggregate_krum): a hand-computed case', () => {
  // One value per delta (both tensors hold it): 0, 1, 3, 10. With f = 0 each scores the squared distances
  // to its n - f - 2 = 2 nearest others, x 6 values: 0 -> (1 + 9) x 6 = 60, 1 -> (1 + 4) x 6 = 30,
  // 3 -> (4 + 9) x 6 = 78, 10 -> (49 + 81) x 6 = 780. Krum takes 1; Multi-Krum with 2 takes 1 and 0.
  const cs = [cand('a', 1, flat(0), 30), cand('b', 1, flat(1), 10), cand('c', 1, flat(3), 10), cand('d', 1, flat(10), 10)];
  assert.deepEqual(krumSelect(cs, 0, 1).map((c) => c.device), ['b']);
  assert.deepEqual(krumSelect(cs, 0, 2).map((c) => c.device), ['a', 'b']);
  assert.equal(aggregate(cs, spec, { krum: 0, keep: 1 }).get('w')![0], 1);
  assert.equal(aggregate(cs, spec, { krum: 0, keep: 2 }).get('w')![0], 0.25); // (0 x 30 + 1 x 10) / 40
  // f = 1: max(1, 4 - 1 - 2) = 1 nearest: 0 -> 6, 1 -> 6, 3 -> 24, 10 -> 294: a tie, the first in device order wins.
  assert.deepEqual(krumSelect(cs, 1, 1).map((c) => c.device), ['a']);
  assert.deepEqual(krumSelect(cs, 1, 3).map((c) => c.device), ['a', 'b', 'c']);
  // An outlier with the most frames is never chosen; keep beyond n keeps all.
  assert.equal(aggregate([...cs.slice(0, 3), cand('d', 1, flat(1e6), 1e9)], spec, { krum: 1, keep: 3 }).get('w')![0], Math.fround(40 / 50)); // (0 x 30 + 1 x 10 + 3 x 10) / 50
  assert.equal(krumSelect(cs, 0, 9).length, 4);
  // Squared distances, as Flower's: on 0, 1, 2, 4, 5 (3 nearest) the scores are 21, 11, 9, 14, 26 (x 6): 2 wins; plain distances would pick 1.
  assert.deepEqual(krumSelect([0, 1, 2, 4, 5].map((v) => cand(`k${v}`, 1, flat(v))), 0, 1).map((c) => c.device), ['k2']);
  // Tensors listed in another order by one message are compared name by name: b equals a, listed bn.mean first.
  const t = (w: number, bn: number[]) => new Map([['w', new Float32Array(4).fill(w)], ['bn.mean', Float32Array.from(bn)]]);
  const b = t(0, [5, 5]);
  const order = [cand('d', 1, t(50, [50, 50])), cand('c', 1, t(0, [5, 6])), cand('a', 1, t(0, [5, 5])), cand('b', 1, new Map([...b].reverse()))];
  assert.deepEqual([...order[3].delta.keys()], ['bn.mean', 'w']);
  assert.deepEqual(krumSelect(order, 0, 2, spec).map((c) => c.device), ['a', 'b']); // by position: tensors of other sizes compared, no answer
  assert.deepEqual(parseRobust('krum:1'), { krum: 1, keep: 1 });
  assert.deepEqual(parseRobust('multi-krum:1,3'), { krum: 1, keep: 3 });
  for (const s of ['krum', 'krum:', 'krum:1,2', 'multi-krum:1', 'multi-krum:1,0', 'krum:-1', 'krum:x']) assert.throws(() => parseRobust(s), /expected krum:F .* or multi-krum:F,M/, s);
});

// ---- aggregate

function randomCands(seed: number, n: number): Candidate[] {
  const r = new Rng(seed);
  return Array.from({ length: n }, (_, i) => ({
    device: `cam-${(i * 7) % n}`,
    seq: r.int(100),
    frames: 1 + r.int(1000),
    delta: new Map(spec.map((s) => [s.name, Float32Array.from({ length: s.shape.reduce((a, b) => a * b, 1) }, () => r.normal() * 10 ** r.range(-4, 1))])),
  }));
}

/** Each coordinate's values across candidates, one tensor's worth. */
function perCoord(cs: Candidate[], name: string, i: number): number[] {
  return cs.map((c) => c.delta.get(name)![i]);
}

test('aggregate mean: frame-weighted, in float64, matching a plain computation here', () => {
  const cs = randomCands(7, 6);
  const got = aggregate(cs, spec, 'mean');
  const total = cs.reduce((s, c) => s + c.frames, 0);
  for (const s of spec) {
    const g = got.get(s.name)!;
    assert.ok(g instanceof Float32Array);
    for (let i = 0; i < g.length; i++) {
      const want = perCoord(cs, s.name, i).reduce((acc, v, j) => acc + (cs[j].frames / total) * v, 0);
      // float32 rounding of the float64 value: within half an ulp (a hair more for the float64 order).
      assert.ok(Math.abs(g[i] - want) <= Math.abs(want) * 2 ** -24 * 1.0001, `${s.name}[${i}]: ${g[i]} vs ${want}`);
    }
  }
  // By hand: weights 1 and 3 on 0 and 4 give 3, not the unweighted 2.
  const w = aggregate([cand('a', 1, flat(0), 1), cand('b', 1, flat(4), 3)], spec, 'mean');
  assert.deepEqual(Array.from(w.get('w')!), [3, 3, 3, 3]);
  // 2^24 + 1 + 1 loses both ones in float32 sums; float64 keeps them: (2^24 + 2) / 3 = 5592406 exactly.
  const big = aggregate([cand('a', 1, flat(2 ** 24), 1), cand('b', 1, flat(1), 1), cand('c', 1, flat(1), 1)], spec, 'mean');
  assert.equal(big.get('bn.mean')![0], 5592406);
});

/** Candidates whose tensors all hold the given value per candidate (one coordinate problem, repeated). */
const column = (vals: number[]) => vals.map((v, j) => cand(`d${j}`, 1, flat(v), 1 + j));

test('aggregate median and trimmed: hand-made cases', () => {
  const at = (vals: number[], robust: Parameters<typeof aggregate>[2]) => aggregate(column(vals), spec, robust).get('w')![0];
  assert.equal(at([1, 5, 2], 'median'), 2);
  assert.equal(at([1, 4, 2, 10], 'median'), 3); // even count: the mean of the middle two
  assert.equal(at([-3, -1, -2, 7, 100], 'median'), -1);
  assert.equal(at([0.5], 'median'), 0.5);
  assert.equal(at([100, 1, 2, 3, -50], { trimmed: 0.2 }), 2); // one cut at each end
  assert.equal(at([100, 1, 2, 3, -50], { trimmed: 0.1 }), Math.fround(56 / 5)); // floor(0.5) = 0: the unweighted mean
  assert.equal(at([1, 2, 4, 10], { trimmed: 0.49 }), 3); // floor(1.96) = 1
  assert.equal(at([9, 1, 8, 2, 7, 3, 6, 4, 5, 0], { trimmed: 0.3 }), 4.5); // cut 3 each end: mean of 3..6
  // Coordinates are independent: a different answer per coordinate.
  const cs = [
    cand('a', 1, new Map([['w', new Float32Array([1, 10, -1, 0])], ['bn.mean', new Float32Array([5, 5])]])),
    cand('b', 1, new Map([['w', new Float32Array([3, 20, -3, 0])], ['bn.mean', new Float32Array([6, 9])]])),
    cand('c', 1, new Map([['w', new Float32Array([2, 90, -2, 1])], ['bn.mean', new Float32Array([7, 1])]])),
  ];
  const m = aggregate(cs, spec, 'median');
  assert.deepEqual(Array.from(m.get('w')!), [2, 20, -2, 0]);
  assert.deepEqual(Array.from(m.get('bn.mean')!), [6, 5]);
  assert.deepEqual([...m.keys()], ['w', 'bn.mean']);
});

test('aggregate: the result does not depend on the order of the candidates', () => {
  const cs = randomCands(11, 9);
  const r = new Rng(3);
  for (const robust of ['mean', 'median', { trimmed: 0.2 }] as const) {
    const ref = aggregate(cs, spec, robust);
    for (let k = 0; k < 10; k++) {
      const shuffled = [...cs];
      for (let i = shuffled.length - 1; i > 0; i--) {
        const j = r.int(i + 1);
        [shuffled[i], shuffled[j]] = [shuffled[j], shuffled[i]];
      }
      assert.deepEqual(aggregate(shuffled, spec, robust), ref, JSON.stringify(robust));
    }
  }
  assert.deepEqual(cs, randomCands(11, 9), 'inputs untouched');
  // Where the float64 sum's order decides the answer: 2^60 + 1 - 2^60 is 0 one way and 1 another.
  const tri = [cand('a', 1, flat(2 ** 60), 1), cand('b', 1, flat(1), 1), cand('c', 1, flat(-(2 ** 60)), 1)];
  const want = aggregate(tri, spec, 'mean').get('w')![0];
  for (const p of [[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]]) assert.equal(aggregate(p.map((i) => tri[i]), spec, 'mean').get('w')![0], want, `order ${p}`);
});

test('aggregate and parseRobust refuse bad input in one line', () => {
  assert.throws(() => aggregate([], spec, 'mean'), /^Error: aggregate: no candidates$/);
  assert.throws(() => aggregate(column([1]), spec, { trimmed: 0.5 }), /robust must be mean, median or \{ trimmed: f \} with 0 <= f < 0\.5/);
  assert.throws(() => aggregate([cand('a', 1), cand('a', 1)], spec, 'median'), /two candidates from a seq 1/);
  assert.throws(() => aggregate([cand('a', 1, flat(1), 0)], spec, 'mean'), /frames 0 is not a positive integer/);
  const bad = flat(1);
  bad.delete('w');
  assert.throws(() => aggregate([cand('a', 1, bad)], spec, 'median'), /update from a seq 1: tensor w is missing/);

  assert.equal(parseRobust('mean'), 'mean');
  assert.equal(parseRobust('median'), 'median');
  assert.deepEqual(parseRobust('trimmed:0.2'), { trimmed: 0.2 });
  assert.deepEqual(parseRobust('trimmed:0'), { trimmed: 0 });
  assert.deepEqual(parseRobust('trimmed:.25'), { trimmed: 0.25 });
  for (const s of ['trimmed:0.5', 'trimmed:-0.1', 'trimmed:', 'trimmed', 'trimmed:abc', 'trimmed:0.2x', 'Mean', '', 'trimmed:1e-1']) {
    assert.throws(
      () => parseRobust(s),
      (e: Error) => e.message === `robust ${JSON.stringify(s)}: expected mean, median, trimmed:F with 0 <= F < 0.5 (e.g. trimmed:0.2), krum:F or multi-krum:F,M`,
      s,
    );
  }
});
