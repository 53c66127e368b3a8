// SCALE's losses (tools/losses/scale.ts) against an independent float64 reimplementation written here
// from the official code's definitions (similarity_mask_old, SupConLoss, IRDLoss, the distill_power
// rule), on small hand-made batches; gradients against float64 finite differences.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Graph, Value } from '../tools/graph/graph.ts';
import { gradients } from '../tools/graph/grad.ts';
import * as S from '../tools/losses/scale.ts';
import { ntXent } from '../tools/losses/index.ts';
import { Rng } from '../core/rng.ts';
import { gradCheck, run, session } from './helpers/ort.ts';

type M = number[][];
const dot = (a: number[], b: number[]) => a.reduce((s, x, i) => s + x * b[i], 0);
const norm = (a: number[]) => a.map((x) => x / Math.sqrt(dot(a, a) + 1e-12));
const rows = (flat: number[], d: number): M => Array.from({ length: flat.length / d }, (_, i) => flat.slice(i * d, (i + 1) * d));
function softmaxRow(r: number[]): number[] {
  const m = Math.max(...r);
  const e = r.map((x) => Math.exp(x - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}

/** similarity_mask_old (tSNE), returning the mask and the smallest |entry - threshold| (the tie margin). */
function refMask(feats: M, views: number, b: number, stream: number, temp: number, ratio: number): { mask: M; margin: number } {
  const avg: M = Array.from({ length: b }, () => new Array(b).fill(0));
  let cnt = 0;
  for (let vi = 0; vi < views; vi++) {
    for (let vj = 0; vj < views; vj++) {
      const t = Array.from({ length: b }, (_, i) => Array.from({ length: b }, (_, j) => -(2 - 2 * dot(feats[vi * b + i], feats[vj * b + j])) / temp - (i === j ? 1000 : 0)));
      const r = t.map(softmaxRow);
      const colT = Array.from({ length: b }, (_, j) => softmaxRow(t.map((row) => row[j])));
      const s = t.map((row, i) => row.map((_, j) => 0.5 * r[i][j] + 0.5 * colT[j][i]));
      for (let i = 0; i < b; i++) for (let j = 0; j < b; j++) avg[i][j] = (cnt * avg[i][j] + s[i][j]) / (cnt + 1);
      cnt++;
    }
  }
  const offs: number[] = [];
  for (let i = 0; i < b; i++) for (let j = 0; j < b; j++) if (i !== j) offs.push(avg[i][j]);
  const max = Math.max(...offs);
  const mean = offs.reduce((a, x) => a + x, 0) / offs.length;
  const thres = mean + ratio * (max - mean);
  let margin = Infinity;
  const mask = avg.map((row, i) =>
    row.map((x, j) => {
      const v = i < stream && j < stream ? (i === j ? 1 : x) : 0;
      if (i < stream && j < stream) margin = Math.min(margin, Math.abs(v - thres));
      return v > thres ? 1 : 0;
    }),
  );
  return { mask, margin };
}

/** SupConLoss with an explicit mask, loss over the stream rows of both views. */
function refContrast(p: M, mask: M, stream: number, tau: number, baseTau: number): number {
  const n = p.length;
  const b = n / 2;
  const z = p.map(norm);
  let total = 0;
  for (let i = 0; i < n; i++) {
    const logits = z.map((zj) => dot(z[i], zj) / tau);
    let den = 0;
    for (let k = 0; k < n; k++) if (k !== i) den += Math.exp(logits[k]);
    let num = 0;
    let pos = 0;
    for (let k = 0; k < n; k++) {
      if (k === i) continue;
      const m = mask[i % b][k % b];
      num += m * (logits[k] - Math.log(den));
      pos += m;
    }
    const l = (-(tau / baseTau) * num) / (pos + 1e-10);
    if (i % b < stream) total += l;
  }
  return total / (2 * stream);
}

function refIrd(cur: M, past: M, ct: number, pt: number): number {
  const n = cur.length;
  const dist = (x: M, t: number) => {
    const z = x.map(norm);
    return z.map((zi, i) => softmaxRow(z.filter((_, k) => k !== i).map((zk) => dot(zi, zk) / t)));
  };
  const c = dist(cur, ct);
  const p = dist(past, pt);
  let s = 0;
  for (let i = 0; i < n; i++) for (let j = 0; j < n - 1; j++) s -= p[i][j] * Math.log(c[i][j]);
  return s / n;
}

const B = 5; // images: 3 stream + 2 memory
const STREAM = 3;
const FD = 4; // backbone feature size
const PD = 3; // projection size
// Hand-made features: images 0 and 1 alike, 2 apart, memory images 3 and 4 alike each other; two views.
const FEATS: number[] = [
  [0.9, 0.1, 0.3, 0.0], [0.8, 0.2, 0.35, 0.05], [0.1, 0.9, 0.0, 0.4], [0.3, 0.3, 0.9, 0.1], [0.35, 0.25, 0.85, 0.2],
  [0.85, 0.15, 0.25, 0.1], [0.9, 0.1, 0.4, 0.0], [0.0, 0.8, 0.1, 0.5], [0.25, 0.35, 0.95, 0.0], [0.3, 0.3, 0.8, 0.15],
].flat();
const PROJ: number[] = [
  [0.5, -0.2, 0.8], [0.4, -0.1, 0.9], [-0.7, 0.6, 0.1], [0.2, 0.9, -0.3], [0.1, 0.8, -0.5],
  [0.6, -0.3, 0.7], [0.5, 0.0, 0.8], [-0.6, 0.7, 0.2], [0.3, 0.8, -0.2], [0.0, 0.9, -0.4],
].flat();
const PAST: number[] = [[0.6, -0.1, 0.7], [0.2, 0.1, 0.9], [-0.5, 0.8, 0.0], [0.1, 0.7, -0.6], [0.3, 0.9, -0.1]].flat();

async function evalGraph(dtype: 'float32' | 'float64', build: (g: Graph, xs: Value[]) => Record<string, Value>, inputs: [number[], number[]][]) {
  const g = new Graph(dtype);
  const xs = inputs.map(([, shape], i) => g.input(`x${i}`, shape));
  for (const [name, v] of Object.entries(build(g, xs))) g.output(v, name);
  const Arr = dtype === 'float64' ? Float64Array : Float32Array;
  const out = await run(await session(g), g, new Map(xs.map((x, i) => [x, Arr.from(inputs[i][0])])));
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, Array.from(v as Float64Array, Number)]));
}

const TAU = 0.1;
const BASE = 0.07;

for (const tempTsne of [0.1, 1]) {
  test(`scale mask (temp_tSNE ${tempTsne}) and contrast match the float64 reference, float64 and float32`, async () => {
    const ref = refMask(rows(FEATS, FD), 2, B, STREAM, tempTsne, 0.1);
    const contrast = refContrast(rows(PROJ, PD), ref.mask, STREAM, TAU, BASE);
    // The batch is far from a tie, so float32 cannot flip an entry.
    assert.ok(ref.margin > 1e-3, `tie margin ${ref.margin}`);
    // Non-trivial: some off-diagonal positive, some stream pair negative.
    const offPos = ref.mask.flatMap((r, i) => r.filter((x, j) => i !== j && x === 1)).length;
    assert.ok(offPos > 0 && offPos < STREAM * (STREAM - 1), `off-diagonal positives ${offPos}`);
    for (const dtype of ['float64', 'float32'] as const) {
      const out = await evalGraph(
        dtype,
        (g, [f, p]) => {
          const mask = S.scaleMask(g, f, 2, B, STREAM, tempTsne, 0.1);
          return { mask, loss: S.scaleContrast(g, p, mask, STREAM, TAU, BASE) };
        },
        [[FEATS, [2 * B, FD]], [PROJ, [2 * B, PD]]],
      );
      assert.deepEqual(out.mask, ref.mask.flat(), dtype);
      const tol = dtype === 'float64' ? 1e-10 : 1e-5;
      assert.ok(Math.abs(out.loss[0] - contrast) <= tol * Math.max(1, Math.abs(contrast)), `${dtype} loss ${out.loss[0]} vs ${contrast}`);
    }
  });
}

test('scale contrast with the identity mask and no memory is SimCLR NT-Xent x tau/base_tau', async () => {
  const p = PROJ.slice(0, 2 * 4 * PD); // any 8 rows: 4 images x 2 views
  const eye = Array.from({ length: 4 * 4 }, (_, k) => (k % 5 === 0 ? 1 : 0));
  const out = await evalGraph(
    'float64',
    (g, [x, m]) => ({ a: S.scaleContrast(g, x, m, 4, TAU, BASE), b: ntXent(g, x, TAU) }),
    [[p, [8, PD]], [eye, [4, 4]]],
  );
  // Relative 1e-9: SupCon divides by (positives + 1e-10), 1 + 1e-10 here.
  assert.ok(Math.abs(out.a[0] / ((TAU / BASE) * out.b[0]) - 1) < 1e-9, `${out.a[0]} vs ${(TAU / BASE) * out.b[0]}`);
});

test('IRD matches the float64 reference (current_temp 0.1, past_temp 0.01), float64 and float32', async () => {
  const cur = rows(PROJ, PD).slice(0, B);
  const want = refIrd(cur, rows(PAST, PD), 0.1, 0.01);
  for (const dtype of ['float64', 'float32'] as const) {
    const out = await evalGraph(dtype, (g, [c, p]) => ({ loss: S.ird(g, c, p, 0.1, 0.01) }), [[cur.flat(), [B, PD]], [PAST, [B, PD]]]);
    const tol = dtype === 'float64' ? 1e-10 : 1e-5;
    assert.ok(Math.abs(out.loss[0] - want) <= tol * Math.max(1, want), `${dtype} ${out.loss[0]} vs ${want}`);
  }
});

test('distill weight: 0.15 x L_contrast / L_distill when none is given, the given one after', async () => {
  const out = await evalGraph(
    'float64',
    (g, [given, c, d]) => ({ w: S.distillWeight(g, g.reshape(given, []), g.reshape(c, []), g.reshape(d, []), 0.15) }),
    [[[0], [1]], [[4.2], [1]], [[2.1], [1]]],
  );
  assert.ok(Math.abs(out.w[0] - 0.3) < 1e-12, String(out.w[0]));
  const kept = await evalGraph(
    'float64',
    (g, [given, c, d]) => ({ w: S.distillWeight(g, g.reshape(given, []), g.reshape(c, []), g.reshape(d, []), 0.15) }),
    [[[0.7], [1]], [[4.2], [1]], [[2.1], [1]]],
  );
  assert.equal(kept.w[0], 0.7);
  const zero = await evalGraph(
    'float64',
    (g, [given, c, d]) => ({ w: S.distillWeight(g, g.reshape(given, []), g.reshape(c, []), g.reshape(d, []), 0.15) }),
    [[[0], [1]], [[4.2], [1]], [[0], [1]]],
  );
  assert.equal(zero.w[0], 0);
});

test('no gradient reaches the features through the mask or the distill weight', async () => {
  const g = new Graph('float64');
  const f = g.input('f', [2 * B, FD]);
  const p = g.input('p', [2 * B, PD]);
  const mask = S.scaleMask(g, f, 2, B, STREAM, 0.1, 0.1);
  const c = S.scaleContrast(g, p, mask, STREAM, TAU, BASE);
  const w = S.distillWeight(g, g.scalar(0), c, g.reduceSum(f, [0, 1], false), 0.15);
  const [gf] = gradients(g, g.add(c, w), [f]);
  g.output(gf, 'gf');
  const out = await run(await session(g), g, new Map([[f, Float64Array.from(FEATS)], [p, Float64Array.from(PROJ)]]));
  assert.ok(Array.from(out.gf as Float64Array).every((x) => x === 0));
});

// Gradients: random batches, the mask from random features (not differentiated, it is a step function).
const FD_CASES: [string, { shape: number[]; diff?: boolean }[], (g: Graph, xs: Value[]) => Value][] = [
  ['scale contrast', [{ shape: [2 * 6, 5] }, { shape: [2 * 6, 7], diff: false }], (g, [p, f]) => S.scaleContrast(g, p, S.scaleMask(g, f, 2, 6, 4, 0.1, 0.1), 4, TAU, BASE)],
  ['scale contrast, dense mask', [{ shape: [2 * 5, 4] }, { shape: [5, 5], diff: false }], (g, [p, m]) => S.scaleContrast(g, p, g.stopGradient(g.cast(g.greater(m, g.scalar(-0.3)), 'float64')), 3, 0.5, 0.07)],
  ['ird (both sides)', [{ shape: [7, 5] }, { shape: [7, 5] }], (g, [c, p]) => S.ird(g, c, p, 0.1, 0.01)],
  ['ird, milder temperatures', [{ shape: [6, 4] }, { shape: [6, 4] }], (g, [c, p]) => S.ird(g, c, p, 0.5, 0.3)],
];
for (const [name, inputs, build] of FD_CASES) {
  test(`${name}: gradient passes finite differences`, async () => {
    const r = await gradCheck({ dtype: 'float64', inputs, build, samples: 30, seed: 11 });
    assert.ok(r.checked > 0);
    assert.deepEqual(r.failures, [], `max abs err ${r.maxAbsErr}`);
  });
}

test('random batches: masks and losses agree at several temp_tSNE and thres_ratio settings (float64)', async () => {
  const b = 8;
  const stream = 6;
  const seen = new Set<string>();
  for (const seed of [1, 2, 3, 4]) {
    const rng = new Rng(seed);
    // Small features: the tSNE softmax is not saturated, so the mask depends on both settings.
    const f = Array.from({ length: 2 * b * 4 }, () => 0.4 * rng.uniform());
    const p = Array.from({ length: 2 * b * 3 }, () => rng.normal());
    for (const [temp, ratio] of [[0.1, 0.1], [0.05, 0.1], [0.1, 0.3], [0.2, 0.5]]) {
      const ref = refMask(rows(f, 4), 2, b, stream, temp, ratio);
      const want = refContrast(rows(p, 3), ref.mask, stream, TAU, BASE);
      const out = await evalGraph(
        'float64',
        (g, [fv, pv]) => {
          const mask = S.scaleMask(g, fv, 2, b, stream, temp, ratio);
          return { mask, loss: S.scaleContrast(g, pv, mask, stream, TAU, BASE) };
        },
        [[f, [2 * b, 4]], [p, [2 * b, 3]]],
      );
      assert.deepEqual(out.mask, ref.mask.flat(), `seed ${seed} temp ${temp} ratio ${ratio}`);
      assert.ok(Math.abs(out.loss[0] - want) < 1e-10, `${out.loss[0]} vs ${want}`);
      seen.add(`${seed}:${ref.mask.flat().join('')}`);
    }
  }
  // The settings change the masks (else this test could not see a wrong temperature or ratio).
  assert.ok(seen.size >= 8, `distinct masks ${seen.size} of 16`);
});
