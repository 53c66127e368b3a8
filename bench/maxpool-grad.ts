// bench/maxpool-grad: what MaxPool's two gradient routes cost on the CPU EP: 'indices' (the forward's
// flat argmax, scatter-added; the forward pool then computes indices too) and 'mask' (per window
// offset, the first element equal to the max; what ORT's WebGPU EP can run). Each graph is the pool
// and its input gradient for a given upstream gradient, timed with --threads intra-op threads.
//
//   node --import tsx bench/maxpool-grad.ts [--shapes 32x64x32x32] [--threads 2] [--runs 10]

import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { Graph } from '../tools/graph/graph.ts';
import { gradients, type MaxPoolGrad } from '../tools/graph/grad.ts';
import { encodeModel } from '../tools/onnx/encode.ts';
import { Rng } from '../core/rng.ts';
import { benchArgs } from './args.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const values = benchArgs(import.meta.url, {
  shapes: { type: 'string', default: '32x64x32x32,128x64x16x16', describe: 'NxCxHxW inputs of a 3x3 stride-2 pad-1 pool (ResNet\'s), comma-separated' },
  threads: { type: 'string', default: '2', describe: 'ORT intra-op threads' },
  runs: { type: 'string', default: '10', describe: 'timed runs per graph after 2 warm-up runs (median reported)' },
  json: { type: 'string', default: path.join(HERE, 'out/maxpool-grad.json'), describe: 'results' },
});
const threads = Number(values.threads);
const runs = Number(values.runs);
for (const [k, v] of [['threads', threads], ['runs', runs]] as const) {
  if (!Number.isInteger(v) || v < 1) {
    process.stderr.write(`bench/maxpool-grad: --${k} ${v}: expected a whole number >= 1\n`);
    process.exit(2);
  }
}
const shapes = values.shapes.split(',').map((s) => {
  const m = /^(\d+)x(\d+)x(\d+)x(\d+)$/.exec(s.trim());
  if (!m) {
    process.stderr.write(`bench/maxpool-grad: --shapes ${s}: expected NxCxHxW, e.g. 32x64x32x32\n`);
    process.exit(2);
  }
  return m.slice(1).map(Number);
});

async function time(shape: number[], how: MaxPoolGrad | 'forward'): Promise<number> {
  const g = new Graph('float32');
  const x = g.input('x', shape);
  const [y] = g.maxPool(x, [3, 3], [2, 2], [1, 1, 1, 1]);
  const gy = g.input('gy', y.dims());
  if (how === 'forward') g.output(y, 'out');
  else g.output(gradients(g, g.sumAll(g.mul(y, gy)), [x], { maxPoolGrad: how })[0], 'out');
  const sess = await ort.InferenceSession.create(encodeModel(g, 'bench'), { graphOptimizationLevel: 'all', intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: 'sequential' });
  const rng = new Rng(3);
  const feed = (v: typeof x) => new ort.Tensor('float32', Float32Array.from({ length: v.size() }, () => rng.normal()), v.dims());
  const f: Record<string, ort.Tensor> = { x: feed(x), gy: feed(gy) };
  for (let i = 0; i < 2; i++) await sess.run(f);
  const ms: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t = performance.now();
    await sess.run(f);
    ms.push(performance.now() - t);
  }
  await sess.release();
  return ms.sort((a, b) => a - b)[Math.floor(ms.length / 2)];
}

const results: Record<string, Record<string, number>> = {};
console.log(`\nms per run (median of ${runs}), ${threads} threads, MaxPool 3x3 s2 p1; forward + input gradient\n`);
console.log('| input | forward only | indices | mask |\n|---|---:|---:|---:|');
for (const s of shapes) {
  const r = { forward: await time(s, 'forward'), indices: await time(s, 'indices'), mask: await time(s, 'mask') };
  results[s.join('x')] = r;
  console.log(`| ${s.join('x')} | ${r.forward.toFixed(2)} | ${r.indices.toFixed(2)} | ${r.mask.toFixed(2)} |`);
}
mkdirSync(path.dirname(values.json), { recursive: true });
writeFileSync(values.json, JSON.stringify({ threads, runs, results, date: new Date().toISOString() }, null, 2));
console.log(`\nwrote ${values.json}`);
