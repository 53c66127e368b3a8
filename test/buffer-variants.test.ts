// Issue #15's variants of the redundancy rule, on hand-made feature sets with known answers:
// diverse-strata (the rule within the most crowded span of the stream) and diverse-fresh (the rule on
// the current model's backbone features instead of the stored z*).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ReplayBuffer, type BufferPolicy, type Entry } from '../agent/buffer/buffer.ts';
import { Rng } from '../core/rng.ts';

const img = (v: number) => new Uint8Array(12).fill(v);
const flat = (vs: number[][]) => Float32Array.from(vs.flat());

// Three old entries crowded around one direction (pairwise cos >= 0.96), three new ones apart (cos <= 0.5).
const OLD = [[1, 0.1, 0, 0, 0], [1, 0, 0.1, 0, 0], [1, 0, 0, 0.25, 0]];
const NEW = [[0, 1, 0, 0, 0], [0, 0.5, 0.866, 0, 0], [0, 0, 0, 0.3, 1]];

/** Capacity 4, the six entries a0-a2, b3-b5 added and seen with the stored features OLD, NEW. */
async function six(policy: BufferPolicy, strata?: number): Promise<ReplayBuffer> {
  const b = new ReplayBuffer({ capacity: 4, policy, alpha: 0.5, ...(strata ? { strata } : {}) });
  b.add([0, 1, 2].map((i) => ({ key: `a${i}`, image: img(i) })));
  b.add([3, 4, 5].map((i) => ({ key: `b${i}`, image: img(i) })));
  await b.updateFeatures([...b.entries], flat([...OLD, ...NEW]));
  return b;
}
const keys = (es: Entry[]) => es.map((e) => e.key);

test("diverse (the paper's rule) takes both removals from the crowded old entries", async () => {
  // a0-a1 is the closest pair (a0 goes, the earlier); then a1-a2 (cos 0.96) beats everything left.
  const b = await six('diverse');
  assert.deepEqual(keys(await b.shrink(new Rng(1))), ['a0', 'a1']);
});

test('diverse-strata: each removal from the most crowded span of the stream, its most redundant entry', async () => {
  // strata 2: spans of 2 positions (the smallest power of two giving at most 4 spans): a0-a1 | a2-b3 |
  // b4-b5, two entries each. All tie, and so do their pairs (a0-b3: 4 in 4 positions; b4-b5: 2 in 2):
  // the newest span goes first, its most redundant entry b4 (cos 0.5 to b3, above b5's 0.07). Then
  // a0-a1 and a2-b3 tie (2 in 2) above b5 (1 in 2), and within one pair: the newer, a2-b3, gives up a2
  // (cos 0.97 to a1).
  const b = await six('diverse-strata', 2);
  assert.deepEqual(keys(await b.shrink(new Rng(1))), ['b4', 'a2']);
  assert.deepEqual(keys(b.entries), ['a0', 'a1', 'b3', 'b5']);
  // a0-a1 is now the densest span: a0 and a1 are each other's nearest, a0 the earlier.
  b.cfg.capacity = 3;
  assert.deepEqual(keys(await b.shrink(new Rng(1))), ['a0']);
  // strata 1: spans of 4, a0-b3 (4 in 4) | b4-b5 (2 in 2): the tie to the newer (b4), then a0 (its pair
  // with a1 the closest in the buffer).
  const one = await six('diverse-strata', 1);
  assert.deepEqual(keys(await one.shrink(new Rng(1))), ['b4', 'a0']);
  // Eight spans by default: with six positions each entry is a span of its own and every level ties,
  // so the newest goes first whatever the features (b5); then the pair b4-b5 holds 1 in 2 against the
  // others' 2 in 2, and the first four positions give up their newest, b3.
  const dflt = await six('diverse-strata');
  assert.deepEqual(keys(await dflt.shrink(new Rng(1))), ['b5', 'b3']);
});

test('diverse-strata: oldest first while fewer than 2n entries are seen', async () => {
  const b = new ReplayBuffer({ capacity: 4, policy: 'diverse-strata', alpha: 0.5, strata: 2 });
  b.add([0, 1, 2, 3, 4, 5].map((i) => ({ key: `a${i}`, image: img(i) })));
  assert.deepEqual(keys(await b.shrink(new Rng(1))), ['a0', 'a1']);
});

test("diverse-fresh: ranks the features the model gives now, never the stored ones", async () => {
  // The current model says a0-a2 are apart and b4, b5 near copies: b4 goes (the earlier of the pair),
  // then b3 (its neighbour b5 at 0.78 is now the closest pair), where the stored features would drop a0, a1.
  const now: Record<string, number[]> = { a0: [1, 0, 0, 0], a1: [0, 1, 0, 0], a2: [0, 0, 1, 0], b3: [0.6, 0, 0, 0.8], b4: [0, 0, -0.2, 1], b5: [0, 0, -0.21, 1] };
  let calls = 0;
  const features = async (es: Entry[]) => {
    calls++;
    return flat(es.map((e) => now[e.key].map((x) => 3 * x)));
  };
  const b = await six('diverse-fresh');
  const stored = b.entries.map((e) => e.feature);
  assert.deepEqual(keys(await b.shrink(new Rng(1), features)), ['b4', 'b3']);
  assert.equal(calls, 1);
  assert.deepEqual(b.entries.map((e) => e.feature), [stored[0], stored[1], stored[2], stored[5]], 'stored features untouched');
  b.add([{ key: 'b4', image: img(4) }]);
  await b.updateFeatures(b.entries.slice(-1), flat([NEW[1]]));
  await assert.rejects(b.shrink(new Rng(1)), /diverse-fresh: shrinking needs the entries' backbone features/);
});

test('diverse-refresh and diverse-strata-refresh (issue #31): rank the embeddings the model gives now, asked for as embeddings', async () => {
  // The same current view as above: the paper's rule on it drops b4 then b3; with strata 2 (spans a0-a1 |
  // a2-b3 | b4-b5, all tied) the newest span goes first, b4 (b4-b5 the closest pair), then of the tied
  // a0-a1 and a2-b3 the newer gives up its most redundant by the current view, b3 (cos 0.78 to b5).
  const now: Record<string, number[]> = { a0: [1, 0, 0, 0], a1: [0, 1, 0, 0], a2: [0, 0, 1, 0], b3: [0.6, 0, 0, 0.8], b4: [0, 0, -0.2, 1], b5: [0, 0, -0.21, 1] };
  const asked: string[] = [];
  const features = async (es: Entry[], space?: 'features' | 'embedding') => {
    asked.push(space ?? 'features');
    return flat(es.map((e) => now[e.key].map((x) => 3 * x)));
  };
  assert.deepEqual(keys(await (await six('diverse-refresh')).shrink(new Rng(1), features)), ['b4', 'b3']);
  assert.deepEqual(keys(await (await six('diverse-strata-refresh', 2)).shrink(new Rng(1), features)), ['b4', 'b3']);
  assert.deepEqual(asked, ['embedding', 'embedding']);
  await assert.rejects((await six('diverse-strata-refresh')).shrink(new Rng(1)), /diverse-strata-refresh: shrinking needs the entries' embeddings/);
});

test('diverse-span-refresh (issue #31): embeds only the spans that give up entries, ranks each entry within its span', async () => {
  // strata 2: spans a0-a1 | a2-b3 | b4-b5. The newest first on the tie: within it b4-b5 are the closest
  // pair (b4, the earlier, goes); then the newer of the tied a0-a1 and a2-b3, where the current view has
  // a2 and b3 apart (cos 0): a2, the earlier.
  const now: Record<string, number[]> = { a0: [1, 0, 0, 0], a1: [0, 1, 0, 0], a2: [0, 0, 1, 0], b3: [0.6, 0, 0, 0.8], b4: [0, 0, -0.2, 1], b5: [0, 0, -0.21, 1] };
  const asked: string[][] = [];
  const features = async (es: Entry[], space?: 'features' | 'embedding') => {
    asked.push([space ?? 'features', ...keys(es)]);
    return flat(es.map((e) => now[e.key]));
  };
  const b = await six('diverse-span-refresh', 2);
  assert.deepEqual(keys(await b.shrink(new Rng(1), features)), ['b4', 'a2']);
  assert.deepEqual(asked, [['embedding', 'b4', 'b5'], ['embedding', 'a2', 'b3']]);
  assert.deepEqual(keys(b.entries), ['a0', 'a1', 'b3', 'b5']);
});

test('diverse-fresh: oldest first, no features asked, while fewer than 2n entries are seen', async () => {
  const b = new ReplayBuffer({ capacity: 4, policy: 'diverse-fresh', alpha: 0.5 });
  b.add([0, 1, 2, 3, 4, 5].map((i) => ({ key: `a${i}`, image: img(i) })));
  let calls = 0;
  assert.deepEqual(keys(await b.shrink(new Rng(1), async () => (calls++, new Float32Array(0)))), ['a0', 'a1']);
  assert.equal(calls, 0);
});

test('diverse-reservoir: new entries admitted with probability M / t, the evictions by the redundancy rule', async () => {
  // Draws fixed by hand: b4 (t 5) draws 0 < 4, admitted; b5 (t 6) draws 5 >= 4, dropped. One eviction
  // is still needed: a1 and b4 are near copies, a1 (the earlier) goes.
  const draws: [number, number][] = [];
  const rng = { int: (k: number) => (draws.push([k, k === 5 ? 0 : 5]), k === 5 ? 0 : 5) } as unknown as Rng;
  const b = new ReplayBuffer({ capacity: 4, policy: 'diverse-reservoir', alpha: 0.5 });
  b.add([0, 1, 2, 3].map((i) => ({ key: `a${i}`, image: img(i) })));
  b.add([4, 5].map((i) => ({ key: `b${i}`, image: img(i) })));
  await b.updateFeatures([...b.entries], flat([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 0.05, 0], [0.7, 0.7, 0, 0.1]]));
  assert.deepEqual(keys(await b.shrink(rng)), ['b5', 'a1']);
  assert.deepEqual(draws, [[5, 0], [6, 5]]);
  assert.deepEqual(keys(b.entries), ['a0', 'a2', 'a3', 'b4']);
  // Both admitted: both evictions by the rule (b6 and b7 near copies of a2, all three tied: a2 goes, the earliest, then b6).
  b.add([6, 7].map((i) => ({ key: `b${i}`, image: img(i) })));
  await b.updateFeatures(b.entries.slice(-2), flat([[0, 0, 1, 0.01], [0, 0.01, 1, 0]]));
  const admit = { int: () => 0 } as unknown as Rng;
  assert.deepEqual(keys(await b.shrink(admit)), ['a2', 'b6']);
  // All dropped: the old entries stay whatever the features.
  b.add([8, 9].map((i) => ({ key: `b${i}`, image: img(i) })));
  await b.updateFeatures(b.entries.slice(-2), flat([[1, 0, 0, 0], [1, 0, 0, 0.001]]));
  assert.deepEqual(keys(await b.shrink({ int: (k: number) => k - 1 } as unknown as Rng)), ['b8', 'b9']);
});

test('diverse-strata-fresh: the spans of diverse-strata, the nearest neighbours of the current backbone features', async () => {
  // Spans a0-a1 | a2-b3 | b4-b5 tie; in the newest the current features make b4, b5 near copies: b4 goes.
  // Then the newer of the tied a0-a1 and a2-b3 gives up b3 (cos 0.78 to b5; a2 is apart from all).
  const now: Record<string, number[]> = { a0: [1, 0, 0, 0], a1: [0, 1, 0, 0], a2: [0, 0, 1, 0], b3: [0.6, 0, 0, 0.8], b4: [0, 0, -0.2, 1], b5: [0, 0, -0.21, 1] };
  const features = async (es: Entry[]) => flat(es.map((e) => now[e.key]));
  const b = await six('diverse-strata-fresh', 2);
  assert.deepEqual(keys(await b.shrink(new Rng(1), features)), ['b4', 'b3']);
  // One more: a0-a1 is the densest span, its entries all apart by the current view: a0, the earlier.
  b.cfg.capacity = 3;
  assert.deepEqual(keys(await b.shrink(new Rng(1), features)), ['a0']);
  // The buffer's own index (stored features) lost the removed entries too: its mean nearest-neighbour
  // similarity is that of a1, a2, b5 alone.
  const dot = (u: Float32Array, v: Float32Array) => u.reduce((acc, x, k) => acc + x * v[k], 0);
  const left = b.entries.map((e) => e.feature!);
  const mean = left.map((u, i) => Math.max(...left.filter((_, j) => j !== i).map((v) => dot(u, v)))).reduce((p, q) => p + q, 0) / left.length;
  assert.ok(Math.abs(b.meanNearestSimilarity() - mean) < 1e-6, `${b.meanNearestSimilarity()} vs ${mean}`);
  await assert.rejects(b.add([{ key: 'x', image: img(9) }]) && b.shrink(new Rng(1)), /diverse-strata-fresh: shrinking needs the entries' backbone features/);
});

test('strata-random: the spans of diverse-strata, a uniform draw within, no features read', async () => {
  // Draws fixed by hand (index into the span's entries in buffer order). strata 2: spans a0-a1 | a2-b3 |
  // b4-b5 tie, the newest gives up its second (b5); then the newer of the tied a0-a1 and a2-b3 its first
  // (a2). No entry has been seen.
  const draws: number[] = [];
  const rng = { int: (k: number) => (draws.push(k), draws.length === 1 ? 1 : 0) } as unknown as Rng;
  const b = new ReplayBuffer({ capacity: 4, policy: 'strata-random', alpha: 0.5, strata: 2 });
  b.add([0, 1, 2].map((i) => ({ key: `a${i}`, image: img(i) })));
  b.add([3, 4, 5].map((i) => ({ key: `b${i}`, image: img(i) })));
  assert.deepEqual(keys(await b.shrink(rng)), ['b5', 'a2']);
  assert.deepEqual(draws, [2, 2]);
});

test('diverse-reservoir-fresh: reservoir admission, the evictions by the current backbone features', async () => {
  // As the diverse-reservoir test: b4 admitted, b5 dropped, one eviction. The stored features make a1
  // and b4 near copies; the current features make a0 and a3 near copies instead: a0 goes (the earlier).
  const rng = { int: (k: number) => (k === 5 ? 0 : 5) } as unknown as Rng;
  const now: Record<string, number[]> = { a0: [1, 0, 0, 0], a1: [0, 1, 0, 0], a2: [0, 0, 1, 0], a3: [1, 0, 0, 0.05], b4: [0, 0.5, 0.5, 0.7] };
  const asked: string[][] = [];
  const features = async (es: Entry[]) => (asked.push(keys(es)), flat(es.map((e) => now[e.key])));
  const b = new ReplayBuffer({ capacity: 4, policy: 'diverse-reservoir-fresh', alpha: 0.5 });
  b.add([0, 1, 2, 3].map((i) => ({ key: `a${i}`, image: img(i) })));
  b.add([4, 5].map((i) => ({ key: `b${i}`, image: img(i) })));
  await b.updateFeatures([...b.entries], flat([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 0.05, 0], [0.7, 0.7, 0, 0.1]]));
  assert.deepEqual(keys(await b.shrink(rng, features)), ['b5', 'a0']);
  assert.deepEqual(asked, [['a0', 'a1', 'a2', 'a3', 'b4']], 'features of the entries left after admission, once');
  assert.deepEqual(keys(b.entries), ['a1', 'a2', 'a3', 'b4']);
  // The buffer's own index lost a0 too: its mean nearest-neighbour similarity is over the four left.
  const dot = (u: Float32Array, v: Float32Array) => u.reduce((acc, x, k) => acc + x * v[k], 0);
  const left = b.entries.map((e) => e.feature!);
  const mean = left.map((u, i) => Math.max(...left.filter((_, j) => j !== i).map((v) => dot(u, v)))).reduce((p, q) => p + q, 0) / left.length;
  assert.ok(Math.abs(b.meanNearestSimilarity() - mean) < 1e-6, `${b.meanNearestSimilarity()} vs ${mean}`);
  // All new ones dropped: no features asked.
  b.add([{ key: 'b6', image: img(6) }]);
  await b.updateFeatures(b.entries.slice(-1), flat([[1, 0, 0, 0]]));
  assert.deepEqual(keys(await b.shrink({ int: (k: number) => k - 1 } as unknown as Rng, features)), ['b6']);
  assert.equal(asked.length, 1);
});

test('oracle-clip (a benchmark yardstick): drops from the clip with the most frames, by the clip id in the key, until every clip keeps one', async () => {
  const b = new ReplayBuffer({ capacity: 4, policy: 'oracle-clip', alpha: 0.5 });
  b.add(['7.0', '7.1', '7.2', '9.0', '12.0'].map((key, i) => ({ key, image: img(i) })));
  // Clip 7 holds three frames: the one drop is one of them, whatever the draws.
  const gone = await b.shrink(new Rng(3));
  assert.equal(gone.length, 1);
  assert.match(gone[0].key, /^7\./);
  // Clip 20 arrives with four frames (7: 2, 9: 1, 12: 1, 20: 4): the four drops take 20 down to 2,
  // then 7 and 20 to 1 each, so the buffer holds every clip once.
  b.add(['20.0', '20.1', '20.2', '20.3'].map((key, i) => ({ key, image: img(10 + i) })));
  await b.shrink(new Rng(4));
  assert.deepEqual(b.entries.map((e) => e.key.split('.')[0]).sort(), ['12', '20', '7', '9']);
  // Among equally crowded clips the draw decides (here 4 single-frame clips, one goes).
  b.add([{ key: '30.0', image: img(30) }]);
  const one = await b.shrink(new Rng(5));
  assert.equal(one.length, 1);
  assert.equal(b.size, 4);
});
