// bench/webgpu-grad-ops: which gradient rules of the imported-model op set run on onnxruntime-node's
// WebGPU EP, and whether they agree with the CPU EP. Per op, a small float32 graph (the op and the
// gradients of a random projection of it) is opened on webgpu with the CPU fallback off, which fails
// if any node lacks a webgpu kernel; then (with the fallback on, where needed) its outputs are compared
// with the CPU EP's. ORT's verbose log (logSeverityLevel 0) names the nodes it placed on the CPU. Without a GPU it runs on SwiftShader (test/helpers/webgpu.ts; slow: every shader compiles).
//
//   node --import tsx bench/webgpu-grad-ops.ts [--only Conv,Erf] [--json bench/out/webgpu-grad-ops.json]

import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { Graph, type Value } from '../tools/graph/graph.ts';
import { gradients, type GradOptions } from '../tools/graph/grad.ts';
import { encodeModel } from '../tools/onnx/encode.ts';
import { Rng } from '../core/rng.ts';
import { useWebgpuEnv } from '../test/helpers/webgpu.ts';
import { benchArgs } from './args.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const values = benchArgs(import.meta.url, {
  only: { type: 'string', describe: 'comma-separated case names (default: all)' },
  json: { type: 'string', default: path.join(HERE, 'out/webgpu-grad-ops.json'), describe: 'results' },
});

type Build = (g: Graph, x: Value) => Value;
const CASES: Record<string, { shape: number[]; build: Build; opts?: GradOptions }> = {
  'Conv depthwise': { shape: [2, 4, 6, 6], build: (g, x) => g.conv(x, g.input('w', [4, 1, 3, 3]), { pads: [1, 1, 1, 1], group: 4 }) },
  'Conv depthwise s2': { shape: [2, 4, 6, 6], build: (g, x) => g.conv(x, g.input('w', [4, 1, 3, 3]), { strides: [2, 2], pads: [1, 1, 1, 1], group: 4 }) },
  'Conv groups 2': { shape: [2, 4, 6, 6], build: (g, x) => g.conv(x, g.input('w', [6, 2, 3, 3]), { pads: [1, 1, 1, 1], group: 2 }) },
  'Conv dilation 2': { shape: [2, 3, 8, 8], build: (g, x) => g.conv(x, g.input('w', [4, 3, 3, 3]), { pads: [2, 2, 2, 2], dilations: [2, 2] }) },
  AveragePool: { shape: [2, 3, 6, 6], build: (g, x) => g.averagePool(x, [3, 3], { strides: [2, 2], pads: [1, 1, 1, 1], ceilMode: true }) },
  'MaxPool ceil (indices)': { shape: [2, 3, 7, 7], build: (g, x) => g.maxPool(x, [3, 3], [2, 2], [0, 0, 0, 0], { ceilMode: true })[0] },
  'MaxPool ceil (mask)': { shape: [2, 3, 7, 7], build: (g, x) => g.maxPool(x, [3, 3], [2, 2], [0, 0, 0, 0], { ceilMode: true })[0], opts: { maxPoolGrad: 'mask' } },
  'MaxPool 3x3 s2 p1 (mask)': { shape: [2, 3, 8, 8], build: (g, x) => g.maxPool(x, [3, 3], [2, 2], [1, 1, 1, 1])[0], opts: { maxPoolGrad: 'mask' } },
  'Clip (ReLU6)': { shape: [3, 8], build: (g, x) => g.clip(g.mul(x, g.scalar(4)), g.scalar(0), g.scalar(6)) },
  'Pow 2': { shape: [3, 8], build: (g, x) => g.pow(x, g.scalar(2)) },
  'Pow 0.5': { shape: [3, 8], build: (g, x) => g.pow(g.add(g.mul(x, x), g.scalar(1)), g.scalar(0.5)) },
  Erf: { shape: [3, 8], build: (g, x) => g.erf(x) },
  HardSigmoid: { shape: [3, 8], build: (g, x) => g.hardSigmoid(g.mul(x, g.scalar(3)), 1 / 6, 0.5) },
  HardSwish: { shape: [3, 8], build: (g, x) => g.hardSwish(g.mul(x, g.scalar(3))) },
  'Gather const index': { shape: [2, 3, 4], build: (g, x) => g.gather(x, g.constant([0], [], 'int64'), 1) },
  'Gather indices': { shape: [4, 3], build: (g, x) => g.gather(x, g.constant([0, 2, 2, 3], [4], 'int64'), 0) },
  'Slice steps': { shape: [5, 7], build: (g, x) => g.sliceGeneral(x, [0, -1], [5, -8], [0, 1], [2, -2]) },
  LayerNormalization: { shape: [2, 3, 8], build: (g, x) => g.layerNorm(x, g.input('s', [8]), g.input('b', [8])) },
  'BatchNormalization (inference)': { shape: [2, 3, 4, 4], build: (g, x) => g.batchNormInference(x, g.input('s', [3]), g.input('b', [3]), g.input('m', [3]), g.constant([1, 2, 0.5], [3])) },
  'BatchNorm (training)': { shape: [2, 3, 4, 4], build: (g, x) => g.batchNormTraining(x, g.input('s', [3]), g.input('b', [3]))[0] },
  'Cast f32->f64->f32': { shape: [3, 4], build: (g, x) => g.cast(g.mul(g.cast(x, 'float64'), g.scalar(2, 'float64')), 'float32') },
};

const only = values.only?.split(',');
for (const o of only ?? []) {
  if (!(o in CASES)) {
    process.stderr.write(`bench/webgpu-grad-ops: --only ${o}: unknown (accepted: ${Object.keys(CASES).join(', ')})\n`);
    process.exit(2);
  }
}
useWebgpuEnv();

async function check(name: string, c: { shape: number[]; build: Build; opts?: GradOptions }) {
  const g = new Graph('float32');
  const x = g.input('x', c.shape);
  const y = c.build(g, x);
  const rng = new Rng(11);
  const r = g.constant(Float32Array.from({ length: y.size() }, () => rng.normal()), y.shape);
  const loss = g.sumAll(g.mul(y, r));
  const wrt = g.inputs.slice();
  gradients(g, loss, wrt, c.opts).forEach((gv, i) => g.output(gv, `grad${i}`));
  g.output(loss, 'loss');
  const model = encodeModel(g, name);
  const feeds: Record<string, ort.Tensor> = {};
  for (const v of wrt) feeds[v.name] = new ort.Tensor('float32', Float32Array.from({ length: v.size() }, () => rng.normal()), v.dims());
  const cpu = await (await ort.InferenceSession.create(model)).run(feeds);
  // First with the CPU fallback off (every node on webgpu), else with it on (ORT moves what webgpu
  // lacks, e.g. int64 shape-like ops, to the CPU): the outputs are compared either way.
  let allOnGpu = true;
  let gpu: ort.InferenceSession.ReturnType;
  try {
    gpu = await (await ort.InferenceSession.create(model, { executionProviders: ['webgpu'], logSeverityLevel: 4, extra: { session: { disable_cpu_ep_fallback: '1' } } })).run(feeds);
  } catch {
    allOnGpu = false;
    try {
      gpu = await (await ort.InferenceSession.create(model, { executionProviders: ['webgpu', 'cpu'], logSeverityLevel: 3 })).run(feeds);
    } catch (e) {
      return { name, runs: false, allOnGpu, error: String((e as Error).message).split('\n')[0] };
    }
  }
  let maxRel = 0;
  for (const k of Object.keys(cpu)) {
    const a = cpu[k].data as Float32Array;
    const b = gpu[k].data as Float32Array;
    const scale = Math.max(...Array.from(a, Math.abs), 1e-6);
    for (let i = 0; i < a.length; i++) maxRel = Math.max(maxRel, Math.abs(a[i] - b[i]) / scale);
  }
  return { name, runs: true, allOnGpu, maxRelDiff: maxRel };
}

const results = [];
for (const [name, c] of Object.entries(CASES)) {
  if (only && !only.includes(name)) continue;
  const t = performance.now();
  const r = await check(name, c);
  results.push(r);
  const where = r.allOnGpu ? 'every node on webgpu' : 'some nodes on the CPU EP';
  console.log(`${name}: ${r.runs ? `${where}; outputs vs the CPU EP's: max diff ${r.maxRelDiff!.toExponential(1)} of the largest value` : `fails: ${r.error}`} (${((performance.now() - t) / 1000).toFixed(1)} s)`);
}
mkdirSync(path.dirname(values.json), { recursive: true });
writeFileSync(values.json, JSON.stringify({ results, date: new Date().toISOString() }, null, 2));
console.log(`wrote ${values.json}`);
