// Layers with state: training-mode batch norm's output and running statistics (its gradient rule,
// GRAD_RULES.BatchNorm, is checked in grad-rules.test.ts), L2 normalisation; and the builder's shape checks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Graph } from '../tools/graph/graph.ts';
import { Model, batchNorm, l2normalize } from '../tools/nn/layers.ts';
import { gradCheck, run, session } from './helpers/ort.ts';

test('batch norm: output and running statistics match an independent computation', async () => {
  const g = new Graph('float64');
  const x = g.input('x', [3, 2, 2, 1]);
  const m = new Model(g, true, 'relu', 0.1);
  g.output(batchNorm(m, 'bn', x), 'y');
  g.output(m.updates.get('bn.running_mean')!, 'rm');
  g.output(m.updates.get('bn.running_var')!, 'rv');
  const xs = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13];
  const gamma = [2, 0.5];
  const beta = [0.1, -1];
  const rm0 = [1, -1];
  const rv0 = [2, 3];
  const feeds = new Map([
    [x, Float64Array.from(xs)],
    [m.values.get('bn.weight')!, Float64Array.from(gamma)],
    [m.values.get('bn.bias')!, Float64Array.from(beta)],
    [m.values.get('bn.running_mean')!, Float64Array.from(rm0)],
    [m.values.get('bn.running_var')!, Float64Array.from(rv0)],
  ]);
  const out = await run(await session(g), g, feeds);
  for (let c = 0; c < 2; c++) {
    // Channel c of [3, 2, 2, 1]: elements n*4 + c*2 + {0, 1}.
    const v = [0, 1, 2].flatMap((n) => [xs[n * 4 + c * 2], xs[n * 4 + c * 2 + 1]]);
    const mean = v.reduce((a, b) => a + b, 0) / v.length;
    const varB = v.reduce((a, b) => a + (b - mean) ** 2, 0) / v.length;
    const y0 = ((xs[c * 2] - mean) / Math.sqrt(varB + 1e-5)) * gamma[c] + beta[c];
    assert.ok(Math.abs((out.y as Float64Array)[c * 2] - y0) < 1e-12);
    assert.ok(Math.abs((out.rm as Float64Array)[c] - (0.9 * rm0[c] + 0.1 * mean)) < 1e-12);
    assert.ok(Math.abs((out.rv as Float64Array)[c] - (0.9 * rv0[c] + 0.1 * varB * (v.length / (v.length - 1)))) < 1e-12);
  }
});

test('L2 normalisation: unit rows and a gradient that passes finite differences', async () => {
  const r = await gradCheck({ dtype: 'float64', inputs: [{ shape: [4, 5] }], build: (g, [x]) => l2normalize(g, x) });
  assert.deepEqual(r.failures, []);
});

test('the builder rejects wrong shapes when the graph is built, naming the node', () => {
  const g = new Graph();
  const x = g.input('x', [2, 3, 8, 8]);
  const w = g.input('w', [4, 5, 3, 3]);
  assert.throws(() => g.scope('layer1', () => g.conv(x, w)), /layer1: Conv: input has 3 channels, weight expects 5/);
  assert.throws(() => g.matmul(g.input('a', [2, 3]), g.input('b', [4, 5])), /MatMul: inner dimensions differ/);
  assert.throws(() => g.add(g.input('c', [2, 3]), g.input('d', [4, 3])), /cannot broadcast \[2, 3\] with \[4, 3\]/);
  assert.throws(() => g.reshape(x, [5, -1]), /cannot reshape/);
  assert.throws(() => g.input('x', [1]), /duplicate tensor name 'x'/);
});
