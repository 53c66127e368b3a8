// Buffer redundancy (agent/eval/redundancy.ts) on hand-made features with known nearest neighbours.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { redundancy, sourceOf } from '../agent/eval/redundancy.ts';

const unit = (...v: number[]) => {
  const n = Math.hypot(...v);
  return Float32Array.from(v, (x) => x / n);
};

test('redundancy: same-source nearest neighbours and the mean nearest cosine', () => {
  // Two frames of clip 1 close together, one of clip 2 near them, clip 3 alone on the other axis.
  const r = redundancy([
    { key: '1.0', feature: unit(1, 0.05, 0) },
    { key: '1.1', feature: unit(1, 0, 0) },
    { key: '2.0', feature: unit(1, 0.3, 0) },
    { key: '3.0', feature: unit(0, 0, 1) },
    { key: '4', feature: null }, // never trained on: no feature, not counted
  ]);
  // Nearest: 1.0 -> 1.1 (same), 1.1 -> 1.0 (same), 2.0 -> 1.0 (other), 3.0 -> any at cosine 0 (other).
  assert.equal(r.sameSource, 2 / 4);
  const c = (a: Float32Array, b: Float32Array) => a.reduce((s, v, i) => s + v * b[i], 0);
  const want = (c(unit(1, 0.05, 0), unit(1, 0, 0)) * 2 + c(unit(1, 0.3, 0), unit(1, 0.05, 0)) + 0) / 4;
  assert.ok(Math.abs(r.nnSim - want) < 1e-6, `${r.nnSim} vs ${want}`);
});

test('redundancy: fewer than two features give NaN; keys without a frame are their own source', () => {
  assert.ok(Number.isNaN(redundancy([{ key: '1.0', feature: unit(1, 0) }]).sameSource));
  assert.equal(sourceOf('12.3'), '12');
  assert.equal(sourceOf('12'), '12');
});
