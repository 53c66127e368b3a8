// Issue #31, static camera: crowding (the mean cosine to an entry's k nearest) against the nearest
// neighbour alone. A scene watched along a slow pan and a few short events, each of two near-identical
// frames: by the nearest neighbour the events' frames are the most redundant; by crowding, the scene's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crowding } from '../agent/buffer/crowding.ts';
import { ReplayBuffer, type BufferPolicy, type Entry } from '../agent/buffer/buffer.ts';
import { Rng } from '../core/rng.ts';

test('crowding: the mean of the k highest cosines, all of them when fewer, -Infinity with none', () => {
  const at = (c: number) => Float32Array.of(c, Math.sqrt(1 - c * c));
  const row = Float32Array.of(1, 0);
  const others = [at(0.9), at(0.5), at(0.8), at(-1)];
  assert.ok(Math.abs(crowding(row, others, 2) - 0.85) < 1e-6);
  assert.ok(Math.abs(crowding(row, others, 1) - 0.9) < 1e-6);
  assert.ok(Math.abs(crowding(row, others, 10) - 0.3) < 1e-6);
  assert.equal(crowding(row, [], 3), -Infinity);
});

/** Six frames of one scene along an arc (neighbours at cosine 0.955) and three events of two frames (cosine 0.99), each in its own plane. */
async function removed(policy: BufferPolicy): Promise<string[]> {
  const D = 8;
  const rows = new Map<string, number[]>();
  // In stream order two scene frames then an event, three times: with strata 2 the 12 positions make
  // three spans of 4 (the grid's), each holding the same mix, so the spans leave the choice to the ranking.
  for (let ev = 0; ev < 3; ev++) {
    for (const j of [2 * ev, 2 * ev + 1]) rows.set(`scene.${j}`, [Math.cos(0.3 * j), Math.sin(0.3 * j), 0, 0, 0, 0, 0, 0]);
    for (let f = 0; f < 2; f++) {
      const v = new Array(D).fill(0);
      v[2 + 2 * ev] = Math.cos(0.14 * f);
      v[3 + 2 * ev] = Math.sin(0.14 * f);
      rows.set(`event${ev}.${f}`, v);
    }
  }
  const b = new ReplayBuffer({ capacity: 9, policy, alpha: 0.5, strata: 2 });
  const added = b.add([...rows.keys()].map((key) => ({ key, image: new Uint8Array(12) })));
  await b.updateFeatures(added, Float32Array.from(added.flatMap((e) => rows.get(e.key)!)));
  const features = async (es: Entry[]) => Float32Array.from(es.flatMap((e) => rows.get(e.key)!));
  return (await b.shrink(new Rng(1), features)).map((e) => e.key).sort();
}

test('diverse-strata-crowd drops the crowded scene; the nearest-neighbour rule (ours) drops a frame of each event', async () => {
  assert.deepEqual(await removed('diverse-strata-rolling'), ['event0.0', 'event1.0', 'event2.0']);
  const crowd = await removed('diverse-strata-crowd');
  assert.ok(crowd.every((k) => k.startsWith('scene.')), crowd.join(', '));
  assert.equal(crowd.length, 3);
});
