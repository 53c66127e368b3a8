// bench/nchwc-conv: ORT's blocked-layout convolution (com.microsoft.nchwc Conv, what ORT's NCHWc
// transformer swaps in for a Conv whose weight is a constant initializer) fed a weight computed inside
// the graph, as a training step must (its weights are inputs), against the plain Conv with the weight as
// an input. Per layer shape: y = conv3x3(x, w), pad 1, C -> C; the NCHWc graph reorders x
// (ReorderInput), w (Reshape + Transpose to [O/B, C/B, 3, 3, B, B] in the graph) and y back
// (ReorderOutput), so its time includes every reorder. B is MLAS's block size: 16 with AVX-512, 8 with
// AVX2 (set by --block; a wrong one gives wrong outputs, which the bench checks first). Measurement
// only: issue #33's question whether the NCHWc kernels would pay for a step's forward and input
// gradient convolutions.
//
//   node --import tsx bench/nchwc-conv.ts [--shapes 128x32x32,128x64x16] [--threads 1,2] [--runs 7] [--block 16] [--depthwise]

import * as ort from 'onnxruntime-node';
import protobuf from 'protobufjs';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { protobufJsonSchema } from '../core/onnx/schema.ts';
import { benchArgs } from './args.ts';

const values = benchArgs(import.meta.url, {
  shapes: { type: 'string', default: '128x16x32,128x32x32,128x32x16,128x64x16,128x64x8,128x128x8,32x64x32,32x128x16,32x256x8,32x512x4', describe: 'NxCxH of each layer (square maps), comma-separated' },
  threads: { type: 'string', default: '1,2', describe: 'ORT intra-op threads, comma-separated' },
  runs: { type: 'string', default: '7', describe: 'timed runs per graph, alternating (median reported), after one warm-up' },
  depthwise: { type: 'boolean', default: false, describe: 'depthwise layers (group = C, weight [C, 1, 3, 3]) instead of dense C -> C' },
  block: { type: 'string', default: '', describe: 'NCHWc block size (default: 16 where /proc/cpuinfo lists avx512f, else 8)' },
  json: { type: 'string', default: 'bench/out/nchwc-conv.json', describe: 'results' },
});
const fail = (m: string): never => { process.stderr.write(`bench/nchwc-conv: ${m}\n`); process.exit(2); };
let cpuinfo = '';
try { cpuinfo = readFileSync('/proc/cpuinfo', 'utf8'); } catch { /* not Linux */ }
const B = values.block ? Number(values.block) : / avx512f/.test(cpuinfo) ? 16 : 8;
if (![8, 16].includes(B)) fail(`--block ${values.block}: 8 or 16`);
const runs = Number(values.runs);
const threadList = String(values.threads).split(',').map(Number);
const shapes = String(values.shapes).split(',').map((s) => {
  const m = /^(\d+)x(\d+)x(\d+)$/.exec(s.trim());
  if (!m) fail(`--shapes ${s}: expected NxCxH`);
  const [n, c, h] = m!.slice(1).map(Number);
  if (c % B) fail(`--shapes ${s}: channels must be a multiple of the block (${B})`);
  return { n, c, h };
});

const Model = protobuf.Root.fromJSON(protobufJsonSchema()).lookupType('onnx.ModelProto');
const vi = (name: string, dims: number[]) => ({ name, type: { tensor_type: { elem_type: 1, shape: { dim: dims.map((d) => ({ dim_value: d })) } } } });
const ints = (name: string, v: number[]) => ({ name, ints: v, type: 7 });
const i64 = (name: string, v: number[]) => ({ name, dims: [v.length], data_type: 7, int64_data: v });
const DW = Boolean(values.depthwise);
function model(nodes: object[], inits: object[], n: number, c: number, h: number): Uint8Array {
  const m = {
    ir_version: 8, producer_name: 'bench/nchwc-conv', opset_import: [{ domain: '', version: 17 }, { domain: 'com.microsoft.nchwc', version: 1 }],
    graph: { name: 'g', node: nodes, initializer: inits, input: [vi('x', [n, c, h, h]), vi('w', [c, DW ? 1 : c, 3, 3])], output: [vi('y', [n, c, h, h])] },
  };
  const err = Model.verify(m);
  if (err) throw new Error(err);
  return Model.encode(Model.fromObject(m)).finish();
}
const median = (a: number[]) => [...a].sort((p, q) => p - q)[a.length >> 1];
const rows: Record<string, unknown>[] = [];
console.log(`NCHWc block ${B}; onnxruntime-node ${ort.env.versions?.common ?? '?'}`);
console.log('| N x C x H | threads | Conv, weight as input (ms) | NCHWc Conv with reorders (ms) | speed-up | max abs diff |\n|---|---|---|---|---|---|');
for (const { n, c, h } of shapes) {
  const group = DW ? [{ name: 'group', i: c, type: 2 }] : [];
  const plain = model([{ op_type: 'Conv', input: ['x', 'w'], output: ['y'], attribute: [ints('pads', [1, 1, 1, 1]), ...group] }], [], n, c, h);
  // A depthwise weight is blocked on its output channels only, [C/B, 1, 3, 3, B] (ORT's NCHWc transformer
  // reorders a constant one the same way, MlasReorderFilterOIHWBo).
  const nchwc = DW ? model([
    { op_type: 'ReorderInput', domain: 'com.microsoft.nchwc', input: ['x'], output: ['xb'] },
    { op_type: 'Reshape', input: ['w', 's5'], output: ['w5'] },
    { op_type: 'Transpose', input: ['w5'], output: ['wt'], attribute: [ints('perm', [0, 2, 3, 4, 1])] },
    { op_type: 'Reshape', input: ['wt', 's4'], output: ['wb'] },
    { op_type: 'Conv', domain: 'com.microsoft.nchwc', input: ['xb', 'wb'], output: ['yb'], attribute: [ints('pads', [1, 1, 1, 1]), ints('kernel_shape', [3, 3]), ...group] },
    { op_type: 'ReorderOutput', domain: 'com.microsoft.nchwc', input: ['yb'], output: ['y'], attribute: [{ name: 'channels', i: c, type: 2 }] },
  ], [i64('s5', [c / B, B, 1, 3, 3]), i64('s4', [c, 1, 3, 3])], n, c, h) : model([
    { op_type: 'ReorderInput', domain: 'com.microsoft.nchwc', input: ['x'], output: ['xb'] },
    { op_type: 'Reshape', input: ['w', 's6'], output: ['w6'] },
    { op_type: 'Transpose', input: ['w6'], output: ['wt'], attribute: [ints('perm', [0, 2, 4, 5, 3, 1])] },
    { op_type: 'Reshape', input: ['wt', 's4'], output: ['wb'] },
    { op_type: 'Conv', domain: 'com.microsoft.nchwc', input: ['xb', 'wb'], output: ['yb'], attribute: [ints('pads', [1, 1, 1, 1]), ints('kernel_shape', [3, 3])] },
    { op_type: 'ReorderOutput', domain: 'com.microsoft.nchwc', input: ['yb'], output: ['y'], attribute: [{ name: 'channels', i: c, type: 2 }] },
  ], [i64('s6', [c / B, B, c / B, B, 3, 3]), i64('s4', [c, c, 3, 3])], n, c, h);
  for (const threads of threadList) {
    const opt = { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all', extra: { session: { force_spinning_stop: '1' } } } as ort.InferenceSession.SessionOptions;
    const sa = await ort.InferenceSession.create(plain, opt);
    const sb = await ort.InferenceSession.create(nchwc, opt);
    let seed = 1;
    const rnd = () => ((seed = (seed * 1664525 + 1013904223) >>> 0) / 2 ** 32) - 0.5;
    const feeds = { x: new ort.Tensor('float32', Float32Array.from({ length: n * c * h * h }, rnd), [n, c, h, h]), w: new ort.Tensor('float32', Float32Array.from({ length: c * (DW ? 1 : c) * 9 }, rnd), [c, DW ? 1 : c, 3, 3]) };
    const ya = (await sa.run(feeds)).y.data as Float32Array;
    const yb = (await sb.run(feeds)).y.data as Float32Array;
    let diff = 0;
    for (let i = 0; i < ya.length; i++) diff = Math.max(diff, Math.abs(ya[i] - yb[i]));
    if (!(diff < 1e-3)) fail(`${n}x${c}x${h}: the NCHWc output differs from Conv's by ${diff} (wrong --block?)`);
    const ta: number[] = [];
    const tb: number[] = [];
    for (let r = 0; r < runs; r++) {
      let t = performance.now();
      await sa.run(feeds);
      ta.push(performance.now() - t);
      t = performance.now();
      await sb.run(feeds);
      tb.push(performance.now() - t);
    }
    const a = median(ta);
    const b = median(tb);
    rows.push({ n, c, h, threads, convMs: a, nchwcMs: b, speedup: a / b, maxDiff: diff });
    console.log(`| ${n} x ${c} x ${h} | ${threads} | ${a.toFixed(1)} | ${b.toFixed(1)} | ${(a / b).toFixed(2)} | ${diff.toExponential(1)} |`);
    await sa.release();
    await sb.release();
  }
}
mkdirSync(path.dirname(String(values.json)), { recursive: true });
writeFileSync(String(values.json), JSON.stringify({ block: B, runs, rows }, null, 2));
console.log(`wrote ${values.json}`);
