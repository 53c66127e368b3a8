// Losses against independent float64 reference values (../shared/testvectors/losses.json), in float64
// and float32, plus finite-difference checks of their gradients on further random inputs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Graph, Value } from '../tools/graph/graph.ts';
import { gradients } from '../tools/graph/grad.ts';
import * as L from '../tools/losses/index.ts';
import { TESTVECTORS } from './helpers/paths.ts';
import { gradCheck, run, session } from './helpers/ort.ts';

const tv = JSON.parse(readFileSync(path.join(TESTVECTORS, 'losses.json'), 'utf8'));
const N: number = tv.N;
const B: number = tv.b;

type Build = (g: Graph, xs: Value[]) => Value;
interface Case {
  key: string;
  inputs: number[][][]; // raw inputs
  build: Build;
  grad: number[][]; // reference gradient w.r.t. the first input
}

const mc = (f: (g: Graph, m: L.MultiCrop) => Value): Build => (g, [p]) => f(g, L.multiCrop(g, p, N, B));
const CASES: Case[] = [
  { key: 'mcc', inputs: [tv.multi_crop_input], build: mc((g, m) => L.mcc(g, m, tv.mcc.tau)), grad: tv.mcc.grad },
  { key: 'mcc_paper', inputs: [tv.multi_crop_input], build: mc((g, m) => L.mccPaper(g, m, tv.mcc_paper.tau)), grad: tv.mcc_paper.grad },
  { key: 'tcr', inputs: [tv.multi_crop_input], build: mc((g, m) => L.tcr(g, m, tv.tcr.eps)), grad: tv.tcr.grad },
  { key: 'empssl_inv', inputs: [tv.multi_crop_input], build: mc((g, m) => L.empsslInv(g, m)), grad: tv.empssl_inv.grad },
  { key: 'nt_xent', inputs: [tv.nt_xent.input], build: (g, [p]) => L.ntXent(g, p, tv.nt_xent.tau), grad: tv.nt_xent.grad },
  { key: 'simsiam', inputs: [tv.simsiam.predictor_input, tv.simsiam.projector_input], build: (g, [q, z]) => L.simsiam(g, q, z), grad: tv.simsiam.grad_predictor },
];

async function evaluate(c: Case, dtype: 'float32' | 'float64') {
  const g = new Graph(dtype);
  const xs = c.inputs.map((m, i) => g.input(`x${i}`, [m.length, m[0].length]));
  const loss = c.build(g, xs);
  const grads = gradients(g, loss, xs);
  g.output(loss, 'loss');
  grads.forEach((gv, i) => g.output(gv, `grad${i}`));
  const Arr = dtype === 'float64' ? Float64Array : Float32Array;
  const out = await run(await session(g), g, new Map(xs.map((x, i) => [x, Arr.from(c.inputs[i].flat())])));
  return { loss: out.loss[0] as number, grad: Array.from(out.grad0 as Float64Array), grads: grads.length, out };
}

for (const c of CASES) {
  test(`${c.key}: value and gradient match the float64 reference`, async () => {
    const ref = tv[c.key];
    const r64 = await evaluate(c, 'float64');
    assert.ok(Math.abs(r64.loss - ref.loss) <= 1e-6 * Math.abs(ref.loss), `float64 loss ${r64.loss} vs ${ref.loss}`);
    const flat: number[] = c.grad.flat();
    const err = Math.max(...flat.map((v, i) => Math.abs(v - r64.grad[i])));
    assert.ok(err <= 1e-6, `float64 gradient max error ${err}`);
    const r32 = await evaluate(c, 'float32');
    assert.ok(Math.abs(r32.loss - ref.loss) <= 1e-4 * Math.max(1, Math.abs(ref.loss)), `float32 loss ${r32.loss} vs ${ref.loss}`);
    const err32 = Math.max(...flat.map((v, i) => Math.abs(v - r32.grad[i])));
    assert.ok(err32 <= 1e-4, `float32 gradient max error ${err32}`);
  });
}

test('simsiam: no gradient reaches the projector outputs (stop-gradient)', async () => {
  const c = CASES.find((x) => x.key === 'simsiam')!;
  const r = await evaluate(c, 'float64');
  assert.ok(Array.from(r.out.grad1 as Float64Array).every((v) => v === 0));
});

// Other shapes and random inputs: the finite-difference check, for every loss.
const FD: [string, number[][], Build][] = [
  ['mcc', [[3 * 6, 5]], (g, [p]) => L.mcc(g, L.multiCrop(g, p, 3, 6), 0.2)],
  ['mcc-paper', [[3 * 6, 5]], (g, [p]) => L.mccPaper(g, L.multiCrop(g, p, 3, 6), 0.2)],
  ['tcr', [[3 * 7, 4]], (g, [p]) => L.tcr(g, L.multiCrop(g, p, 3, 7), 0.2)],
  ['empssl-inv', [[5 * 3, 6]], (g, [p]) => L.empsslInv(g, L.multiCrop(g, p, 5, 3))],
  ['nt-xent', [[2 * 7, 5]], (g, [p]) => L.ntXent(g, p, 0.5)],
  ['simsiam', [[2 * 5, 6], [2 * 5, 6]], (g, [q, z]) => L.simsiam(g, q, z)],
];
for (const [name, shapes, build] of FD) {
  test(`${name}: gradient passes finite differences on random inputs`, async () => {
    const r = await gradCheck({ dtype: 'float64', inputs: shapes.map((shape, i) => ({ shape, diff: i === 0 })), build, samples: 30, seed: 7 });
    assert.deepEqual(r.failures, [], `max abs err ${r.maxAbsErr}`);
  });
}

test('logdet of SPD matrices by unrolled Cholesky matches an independent computation', async () => {
  // Independent reference: log of the product of eigen-free Gaussian-elimination pivots, in plain JS.
  const m = 6;
  const g = new Graph('float64');
  const a = g.input('a', [2, m, m]);
  g.output(L.logdetSPD(g, a), 'ld');
  const mats: number[][] = [];
  let seed = 3;
  const rnd = () => ((seed = (seed * 16807) % 2147483647) / 2147483647) * 2 - 1;
  for (let k = 0; k < 2; k++) {
    const x = Array.from({ length: m * m }, rnd);
    const s = new Array(m * m).fill(0);
    for (let i = 0; i < m; i++) for (let j = 0; j < m; j++) {
      let acc = i === j ? 0.5 : 0;
      for (let t = 0; t < m; t++) acc += x[i * m + t] * x[j * m + t];
      s[i * m + j] = acc;
    }
    mats.push(s);
  }
  const expect = mats.map((s) => {
    const u = s.slice();
    let ld = 0;
    for (let p = 0; p < m; p++) {
      ld += Math.log(u[p * m + p]);
      for (let r = p + 1; r < m; r++) {
        const f = u[r * m + p] / u[p * m + p];
        for (let c = p; c < m; c++) u[r * m + c] -= f * u[p * m + c];
      }
    }
    return ld;
  });
  const out = await run(await session(g), g, new Map([[a, Float64Array.from(mats.flat())]]));
  Array.from(out.ld as Float64Array).forEach((v, i) => assert.ok(Math.abs(v - expect[i]) < 1e-10, `${v} vs ${expect[i]}`));
});
