// The replay buffer and its removal rule, on hand-made feature sets with known answers and against
// the direct O(M^2 d) reference on random ones.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { removeRedundantReference, NearestNeighbours } from '../agent/buffer/removal.ts';
import { ReplayBuffer } from '../agent/buffer/buffer.ts';
import { ortSimilarity } from '../agent/buffer/similarity.ts';
import { openChosen } from '../agent/trainer/backend.ts';
import { Rng } from '../core/rng.ts';

const unit = (v: number[]) => {
  const n = Math.hypot(...v);
  return Float32Array.from(v, (x) => x / n);
};

test('removal rule: the near-duplicate goes first, then the next most redundant', async () => {
  // a and a2 are nearly identical; b and c are apart from everything; d is halfway between b and c.
  const f = [unit([1, 0, 0, 0]), unit([0, 1, 0, 0]), unit([1, 0.05, 0, 0]), unit([0, 0, 1, 0]), unit([0, 1, 1, 0])];
  // First: the pair (0, 2) has the highest similarity; position 0 wins the tie. Then 2 has no close
  // neighbour left, and d (4) is the most similar to b and c (cos 0.707).
  assert.deepEqual(removeRedundantReference(f, 1), [0]);
  assert.deepEqual(removeRedundantReference(f, 2), [0, 1]);
  const nn = new NearestNeighbours();
  for (const [i, v] of f.entries()) await nn.set(i, v, i);
  const out: number[] = [];
  for (let k = 0; k < 2; k++) {
    const id = nn.mostRedundant();
    out.push(id);
    await nn.delete(id);
  }
  assert.deepEqual(out, [0, 1]);
});

for (const engine of [false, true]) test(`incremental nearest neighbours${engine ? ' (ORT MatMul blocks) pick the most redundant to within rounding' : ' give exactly the reference removals'} under updates and deletions`, async () => {
  const rng = new Rng(4);
  const eng = engine ? await ortSimilarity((m) => openChosen(m, { threads: 1 })) : null;
  for (let trial = 0; trial < (engine ? 6 : 20); trial++) {
    // With the engine: sizes large enough that the similarity blocks go to ORT.
    const m = engine ? 150 + rng.int(100) : 10 + rng.int(30);
    const d = engine ? 64 : 2 + rng.int(6);
    const feats = Array.from({ length: m }, () => unit(Array.from({ length: d }, () => rng.normal())));
    const nn = new NearestNeighbours(eng);
    await nn.setMany(feats.map((v, i) => ({ id: i, feature: v, rank: i })));
    // Some features change (as the EMA moves them), one at a time and in batches, in random order.
    for (let k = 0; k < Math.min(m, 40); k++) {
      const i = rng.int(m);
      feats[i] = unit(Array.from({ length: d }, () => rng.normal()));
      await nn.set(i, feats[i], i);
    }
    for (let k = 0; k < 3; k++) {
      const ids = [...new Set(Array.from({ length: 1 + rng.int(m / 2), }, () => rng.int(m)))];
      for (const i of ids) feats[i] = unit(Array.from({ length: d }, () => rng.normal()));
      await nn.setMany(ids.map((i) => ({ id: i, feature: feats[i], rank: i })));
    }
    const n = 1 + rng.int(Math.min(m - 2, 40));
    const expected = removeRedundantReference(feats, n);
    const got: number[] = [];
    const alive = new Set(feats.map((_, i) => i));
    for (let r = 0; r < n; r++) {
      const id = nn.mostRedundant();
      if (eng) {
        // float32 GEMM rounds differently from the float64 reference, so near-ties may break the
        // other way: check that each pick is most redundant to within rounding instead.
        const nnSim = (i: number) => Math.max(...[...alive].filter((j) => j !== i).map((j) => feats[i].reduce((a, v, k) => a + v * feats[j][k], 0)));
        const best = Math.max(...[...alive].map(nnSim));
        assert.ok(nnSim(id) >= best - 1e-5, `trial ${trial}: picked ${nnSim(id)}, best ${best}`);
      }
      alive.delete(id);
      got.push(id);
      await nn.delete(id);
    }
    if (!eng) assert.deepEqual(got, expected, `trial ${trial}`);
  }
});

const img = (v: number) => new Uint8Array(12).fill(v);

test('diverse buffer: oldest first while fewer than 2n entries are seen, then the redundancy rule', async () => {
  const b = new ReplayBuffer({ capacity: 4, policy: 'diverse', alpha: 0.5 });
  const rng = new Rng(1);
  b.add([0, 1, 2].map((i) => ({ key: `a${i}`, image: img(i) })));
  b.add([3, 4].map((i) => ({ key: `b${i}`, image: img(i) })));
  // No entry seen: the oldest (a0) goes.
  assert.deepEqual((await b.shrink(rng)).map((e) => e.key), ['a0']);
  // All seen, with b3 a near copy of a1: one of that pair goes (a1, the earlier).
  const batch = [...b.entries];
  const z = new Float32Array([1, 0, 0, /**/ 0, 1, 0, /**/ 1, 0.01, 0, /**/ 0, 0, 1].map((x) => x * 3));
  await b.updateFeatures(batch, z);
  b.add([{ key: 'c5', image: img(5) }]);
  assert.deepEqual((await b.shrink(rng)).map((e) => e.key), ['a1']);
  assert.equal(b.size, 4);
});

test('representative feature: first the step feature, then the normalised EMA with alpha', async () => {
  const b = new ReplayBuffer({ capacity: 10, policy: 'diverse', alpha: 0.5 });
  const [e] = b.add([{ key: 'x', image: img(0) }]);
  await b.updateFeatures([e], new Float32Array([2, 0]));
  assert.deepEqual(Array.from(e.feature!), [1, 0]);
  await b.updateFeatures([e], new Float32Array([0, 5]));
  const s = Math.SQRT1_2;
  assert.ok(Math.abs(e.feature![0] - s) < 1e-6 && Math.abs(e.feature![1] - s) < 1e-6);
  assert.equal(e.seen, true);
});

test('representative feature: updated in place within an arrival, but never inside a snapshot', async () => {
  // Checkpoints are written from snapshots while training goes on; the EMA must not reach into them.
  const b = new ReplayBuffer({ capacity: 10, policy: 'diverse', alpha: 0.5 });
  const [e] = b.add([{ key: 'x', image: img(0) }]);
  await b.updateFeatures([e], new Float32Array([2, 0]));
  const snap = b.snapshot();
  const held = snap.entries[0].feature!;
  await b.updateFeatures([e], new Float32Array([0, 5]));
  assert.deepEqual(Array.from(held), [1, 0], 'the snapshot keeps the feature it was taken with');
  assert.notEqual(e.feature, held);
  const after = e.feature!;
  await b.updateFeatures([e], new Float32Array([0, 5]));
  assert.equal(e.feature, after, 'a feature no snapshot holds is reused');
  await b.restore(snap);
  const [r] = b.entries;
  await b.updateFeatures([r], new Float32Array([0, 5]));
  assert.deepEqual(Array.from(snap.entries[0].feature!), [1, 0], 'nor one restored from');
});

test('fifo keeps the newest; reservoir keeps a uniform sample of the stream', async () => {
  const fifo = new ReplayBuffer({ capacity: 5, policy: 'fifo', alpha: 0.5 });
  const rng = new Rng(2);
  for (let t = 0; t < 20; t++) {
    fifo.add([{ key: String(t), image: img(0) }]);
    await fifo.shrink(rng);
  }
  assert.deepEqual(fifo.entries.map((e) => e.key), ['15', '16', '17', '18', '19']);
  // Reservoir: over many runs each stream position is kept with probability M / T.
  const M = 20;
  const T = 200;
  const counts = new Array(T).fill(0);
  const runs = 400;
  for (let r = 0; r < runs; r++) {
    const res = new ReplayBuffer({ capacity: M, policy: 'reservoir', alpha: 0.5 });
    const rr = new Rng(100 + r);
    for (let t = 0; t < T; t += 4) {
      res.add([0, 1, 2, 3].map((k) => ({ key: String(t + k), image: img(0) })));
      await res.shrink(rr);
    }
    for (const e of res.entries) counts[Number(e.key)]++;
  }
  const firstHalf = counts.slice(0, T / 2).reduce((a, b) => a + b, 0) / (runs * M);
  // Expected 0.5 of the kept items from the first half of the stream; +-0.04 is > 5 sigma here.
  assert.ok(Math.abs(firstHalf - 0.5) < 0.04, `share of the first half ${firstHalf}`);
});

test('sample draws without replacement and honours exclusions', () => {
  const b = new ReplayBuffer({ capacity: 100, policy: 'diverse', alpha: 0.5 });
  const added = b.add(Array.from({ length: 30 }, (_, i) => ({ key: String(i), image: img(i) })));
  const exclude = new Set(added.slice(0, 10).map((e) => e.id));
  const s = b.sample(new Rng(3), 20, exclude);
  assert.equal(new Set(s.map((e) => e.id)).size, 20);
  assert.ok(s.every((e) => !exclude.has(e.id)));
  assert.throws(() => b.sample(new Rng(3), 21, exclude), /21 samples asked of 20/);
});

test('reservoir: a capacity lowered on resume is restored at the next shrink', async () => {
  const b = new ReplayBuffer({ capacity: 10, policy: 'reservoir', alpha: 0.5 });
  const rng = new Rng(9);
  b.add(Array.from({ length: 10 }, (_, i) => ({ key: String(i), image: img(i) })));
  await b.shrink(rng);
  const small = new ReplayBuffer({ capacity: 4, policy: 'reservoir', alpha: 0.5 });
  await small.restore(b.snapshot());
  small.add([{ key: 'new', image: img(0) }]);
  await small.shrink(rng);
  assert.equal(small.size, 4);
});

test('representative feature: the EMA weighs the old feature by alpha (alpha 0.9 and 0.2, a batch of two)', async () => {
  // alpha 0.5 cannot tell alpha from 1 - alpha; these can. Expected values are computed here in float64.
  const norm = (v: number[]) => {
    const n = Math.hypot(...v);
    return v.map((x) => x / n);
  };
  for (const alpha of [0.9, 0.2]) {
    const b = new ReplayBuffer({ capacity: 10, policy: 'diverse', alpha });
    const es = b.add([{ key: 'x', image: img(0) }, { key: 'y', image: img(1) }]);
    // Per-image rows of zbar for three steps (rows are normalised before use).
    const steps = [
      [[3, 4, 0], [0, 0, 2]],
      [[0, 2, 0], [1, 1, 0]],
      [[1, 0, 1], [0, -3, 4]],
    ];
    const want: number[][] = [];
    for (const [s, rows] of steps.entries()) {
      await b.updateFeatures(es, Float32Array.from(rows.flat()));
      rows.forEach((row, j) => {
        const f = norm(row);
        want[j] = s === 0 ? f : norm(want[j].map((z, k) => alpha * z + (1 - alpha) * f[k]));
      });
      es.forEach((e, j) => {
        for (let k = 0; k < 3; k++) assert.ok(Math.abs(e.feature![k] - want[j][k]) < 1e-6, `alpha ${alpha}, step ${s}, entry ${e.key}: feature ${Array.from(e.feature!)} expected ${want[j]}`);
      });
    }
  }
});

for (const policy of ['diverse', 'minred'] as const) test(`${policy} buffer: the seen threshold is exactly 2n (2n - 1 seen: oldest first; 2n seen: redundancy rule)`, async () => {
  // n = 2 to remove from 6 entries e0..e5 (e0 oldest). e0 and e1 stay unseen, so the redundancy rule
  // can never pick them while oldest-first must. Features: e3 and e4 are near copies (the most
  // redundant pair, e3 the earlier), e2 and e5 the next closest pair.
  const feats = [[1, 0, 0], [0, 1, 0], [0, 1, 0.05], [1, 0, 0.5]];
  const make = async (seen: number) => {
    const b = new ReplayBuffer({ capacity: 4, policy, alpha: 0.5 });
    // One per arrival so the lifespans are 5..0 with no ties.
    const es = [0, 1, 2, 3, 4, 5].flatMap((i) => b.add([{ key: `e${i}`, image: img(i) }]));
    const batch = es.slice(2, 2 + seen);
    await b.updateFeatures(batch, Float32Array.from(feats.slice(0, seen).flat()));
    return b;
  };
  const removedKeys = async (b: ReplayBuffer) => (await b.shrink(new Rng(5))).map((e) => e.key).sort();
  // 3 = 2n - 1 seen: too few, so the two oldest go (the redundancy rule would take e3, then e2).
  assert.deepEqual(await removedKeys(await make(3)), ['e0', 'e1'], '2n - 1 seen must remove the oldest');
  // 4 = 2n seen: the redundancy rule, e3 (near copy of e4) then e2 (closest to e5).
  assert.deepEqual(await removedKeys(await make(4)), ['e2', 'e3'], '2n seen must use the redundancy rule');
});

// The full-matrix removal (removeRedundant's path when most rows change anyway) against the
// incremental index: the same ids in the same order, ties and near-duplicates included, and an index
// that goes on to give the same answers.
type Way = 'full' | 'incremental';
const randomFeature = (rng: Rng, d: number, kind: number) =>
  // kind 0: generic; 1: small integer components (exact ties in the sums); 2: a near copy is made by the caller.
  kind === 1 ? unit(Array.from({ length: d }, () => rng.int(3) - 1 || 1)) : unit(Array.from({ length: d }, () => rng.normal()));
const jitter = (rng: Rng, v: Float32Array, eps: number) => unit(Array.from(v, (x) => x + eps * rng.normal()));

for (const engine of [false, true]) test(`full-matrix removal picks exactly what the incremental index picks${engine ? ' (ORT engine: each pick most redundant to within rounding)' : ' (JS: identical ids, ties and near-duplicates)'}`, async () => {
  const eng = engine ? await ortSimilarity((m) => openChosen(m, { threads: 1 })) : null;
  const rng = new Rng(21);
  // The ORT engine's incremental path makes one session run per row: a few small indexes keep this
  // under a few seconds (the JS trials are the exhaustive ones).
  for (let trial = 0; trial < (engine ? 3 : 60); trial++) {
    const m = engine ? 60 + rng.int(40) : 6 + rng.int(60);
    const d = engine ? 64 : 2 + rng.int(6);
    const kind = rng.int(3);
    const pool = Array.from({ length: 1 + rng.int(m) }, () => randomFeature(rng, d, kind));
    // Exact duplicates (kind 1 draws from few vectors), near copies, and generic features.
    const draw = () => (kind === 2 && rng.int(2) ? jitter(rng, pool[rng.int(pool.length)], 1e-4 * rng.int(3)) : kind === 1 ? randomFeature(rng, d, 1) : pool[rng.int(pool.length)]);
    // Ranks shuffled against slot order, so the rank tie-break is what decides ties.
    const ranks = Array.from({ length: 4 * m }, (_, i) => i);
    for (let i = ranks.length - 1; i > 0; i--) {
      const k = rng.int(i + 1);
      [ranks[i], ranks[k]] = [ranks[k], ranks[i]];
    }
    const feats = new Map<number, Float32Array>();
    const ops: { items: { id: number; feature: Float32Array; rank: number }[]; del: number[] }[] = [];
    // History: inserts, deletions (free slots reused out of order), updates.
    let next = 0;
    for (let k = 0; k < 3; k++) {
      const items = Array.from({ length: 1 + rng.int(m) }, () => ({ id: next, feature: draw(), rank: ranks[next++] }));
      for (const it of items) feats.set(it.id, it.feature);
      const ids = [...feats.keys()];
      const del = [...new Set(Array.from({ length: rng.int(Math.max(1, ids.length / 4)) }, () => ids[rng.int(ids.length)]))];
      for (const id of del) feats.delete(id);
      ops.push({ items, del });
    }
    const ids = [...feats.keys()];
    // The arrival: some members change, new ones come, then n removals.
    const changed = [...new Set(Array.from({ length: rng.int(ids.length + 1) }, () => ids[rng.int(ids.length)]))].map((id) => ({ id, feature: draw(), rank: ranks[id] }));
    const fresh = Array.from({ length: rng.int(m / 2) }, () => ({ id: next, feature: draw(), rank: ranks[next++] }));
    const arrival = [...changed, ...fresh];
    const total = new Set([...ids, ...fresh.map((f) => f.id)]).size;
    const n = rng.int(total + 1);
    const run = async (way: Way) => {
      const nn = new NearestNeighbours(eng);
      for (const op of ops) {
        await nn.setMany(op.items);
        for (const id of op.del) await nn.delete(id);
      }
      const picks = await nn.removeRedundant(n, arrival, way);
      // And afterwards the index answers alike: a further change and removals, incrementally.
      const left = [...new Set([...ids, ...fresh.map((f) => f.id)])].filter((id) => nn.has(id));
      const sims = left.map((id) => nn.similarity(id));
      const later = left.slice(0, 3).map((id) => ({ id, feature: draw(), rank: ranks[id] }));
      return { nn, picks, sims, left, later };
    };
    // draw() is consumed identically by both runs only if called in the same order: replay the Rng.
    const state = rng.state;
    const a = await run('full');
    rng.state = state;
    const b = await run('incremental');
    if (!eng) {
      assert.deepEqual(a.picks, b.picks, `trial ${trial}: m ${total}, n ${n}, kind ${kind}`);
      assert.deepEqual(a.sims, b.sims, `trial ${trial}: nearest-neighbour similarities after removal`);
      const k = Math.min(2, Math.floor(a.left.length / 2));
      assert.deepEqual(await a.nn.removeRedundant(k, a.later, 'incremental'), await b.nn.removeRedundant(k, b.later, 'incremental'), `trial ${trial}: later removals`);
    } else {
      // Each full-matrix pick is most redundant among what was left, to within float32 GEMM rounding.
      const all = new Map([...feats, ...arrival.map((it) => [it.id, it.feature] as const)]);
      const alive = new Set(all.keys());
      const dotf = (x: Float32Array, y: Float32Array) => x.reduce((s, v, k) => s + v * y[k], 0);
      const nnSim = (i: number) => Math.max(...[...alive].filter((j) => j !== i).map((j) => dotf(all.get(i)!, all.get(j)!)));
      for (const id of a.picks) {
        const best = Math.max(...[...alive].map(nnSim));
        assert.ok(nnSim(id) >= best - 1e-5, `trial ${trial}: picked ${nnSim(id)}, best ${best}`);
        alive.delete(id);
      }
      assert.equal(a.picks.length, b.picks.length);
    }
  }
});

for (const policy of ['diverse', 'minred'] as const) test(`${policy} buffer: shrink removes the same entries whichever way the index takes`, async () => {
  const proto = NearestNeighbours.prototype as unknown as { removeRedundant: (n: number, items: unknown[], way?: string) => Promise<number[]> };
  const orig = proto.removeRedundant;
  const history = async (way: Way | 'auto') => {
    proto.removeRedundant = function (n, items) {
      return orig.call(this, n, items, way);
    };
    try {
      const rng = new Rng(31);
      const b = new ReplayBuffer({ capacity: 40, policy, alpha: 0.5 });
      const d = 6;
      const base = Array.from({ length: 12 }, () => randomFeature(rng, d, 1));
      const removed: string[][] = [];
      for (let t = 0; t < 12; t++) {
        const fresh = b.add(Array.from({ length: 10 + rng.int(15) }, (_, i) => ({ key: `${t}-${i}`, image: img(i) })));
        for (let k = 0; k < 3; k++) {
          const pick = b.sample(rng, Math.min(b.size, 20));
          const batch = [...new Set([...fresh.slice(0, 5 + rng.int(5)), ...pick])];
          // Features near a few base vectors, some exact copies: ties and near-duplicates.
          const z = Float32Array.from(batch.flatMap(() => Array.from(rng.int(2) ? base[rng.int(base.length)] : jitter(rng, base[rng.int(base.length)], 1e-3))));
          await b.updateFeatures(batch, z);
        }
        removed.push((await b.shrink(rng)).map((e) => e.key));
      }
      return removed;
    } finally {
      proto.removeRedundant = orig;
    }
  };
  const full = await history('full');
  assert.ok(full.some((r) => r.length > 0));
  assert.deepEqual(full, await history('incremental'));
  assert.deepEqual(full, await history('auto'));
});

// The buffer's host cost as similarity work (entries of similarity rows computed, counted by the index),
// not time: deterministic under a seeded stream, and what grew with M^2 would show here as a ratio.
test('similarity work: an update of every member costs exactly a rebuild (m x m), part of them less', async () => {
  const rng = new Rng(5);
  const d = 8;
  // 65 members: one past a power of two, where the slot storage has just doubled to 128.
  const m = 65;
  const nn = new NearestNeighbours();
  const draw = () => unit(Array.from({ length: d }, () => rng.normal()));
  await nn.setMany(Array.from({ length: m }, (_, i) => ({ id: i, feature: draw(), rank: i })));
  assert.equal(nn.dots, m * m, 'the build');
  let w = nn.dots;
  await nn.setMany(Array.from({ length: m }, (_, i) => ({ id: i, feature: draw(), rank: i })));
  assert.equal(nn.dots - w, m * m, 'every member changed');
  for (const k of [m - 1, m - 3, m / 2, 1]) {
    w = nn.dots;
    await nn.setMany(Array.from({ length: k }, (_, i) => ({ id: i, feature: draw(), rank: i })));
    assert.ok(nn.dots - w <= m * m, `${k} members changed: ${nn.dots - w} entries, a rebuild is ${m * m}`);
  }
});

test('similarity work per arrival is linear in the buffer size (the same rows whatever M)', async () => {
  // The edge arrival's shape (16 new, 3 steps of 32, 16 removals) with small features and the JS engine.
  const rowsPerArrival = async (M: number) => {
    const rng = new Rng(9);
    const d = 8;
    const buf = new ReplayBuffer({ capacity: M, policy: 'diverse', alpha: 0.5 });
    const fill = buf.add(Array.from({ length: M }, (_, i) => ({ key: String(i), image: img(0) })));
    await buf.updateFeatures(fill, Float32Array.from({ length: M * d }, () => rng.normal()));
    await buf.flush();
    const built = buf.similarityWork;
    assert.equal(built, M * M, `M ${M}: the build is one row per member`);
    const arrivals = 6;
    for (let r = 0; r < arrivals; r++) {
      const fresh = buf.add(Array.from({ length: 16 }, (_, i) => ({ key: `n${r}-${i}`, image: img(0) })));
      for (let k = 0; k < 3; k++) {
        const batch = [...fresh, ...buf.sample(rng, 16, new Set(fresh.map((e) => e.id)))];
        await buf.updateFeatures(batch, Float32Array.from({ length: 32 * d }, () => rng.normal()));
      }
      assert.equal((await buf.shrink(rng)).length, 16);
    }
    return (buf.similarityWork - built) / arrivals / M;
  };
  const small = await rowsPerArrival(256);
  const large = await rowsPerArrival(2048);
  // Rows of width ~M per arrival: about the changed members, their orphans and the removals' rows,
  // whatever M; work growing as M^2 would make this ratio ~8.
  assert.ok(large < 1.5 * small, `rows per arrival: ${small.toFixed(1)} at M 256, ${large.toFixed(1)} at M 2048`);
  assert.ok(large < 256, `rows per arrival at M 2048: ${large.toFixed(1)}`);
});
