// bench/conv-matmul: a dense 3x3 Conv (pad 1, stride 1, C -> C channels) and its two gradients on the CPU
// EP, as ORT's Conv with the import's gradient rules (batch-as-channels dW, ConvTranspose dX) against the
// same layer lowered as im2col over the whole batch and one MatMul ([N*H*W, C*9] x [C*9, C]), its
// gradients from the walker (MatMul, Transpose, Concat, Slice, Pad rules). The question it answers: at
// the 4x4 to 1x1 feature maps a 32 px torchvision model reaches, is ORT's per-image Conv the cost, and
// would a batched GEMM lowering of small-map convolutions pay. Per shape both graphs (forward + dX + dW
// from a fixed upstream gradient) run round-robin; their outputs are checked equal first. Measurement
// only: the import does not lower Conv this way.
//
//   node --import tsx bench/conv-matmul.ts [--shapes 128x256x2x2,128x512x1x1] [--threads 1] [--runs 10]

import * as ort from 'onnxruntime-node';
import { Graph, type Value } from '../tools/graph/graph.ts';
import { gradients } from '../tools/graph/grad.ts';
import { encodeModel } from '../tools/onnx/encode.ts';
import { Rng } from '../core/rng.ts';
import { benchArgs } from './args.ts';

const values = benchArgs(import.meta.url, {
  shapes: { type: 'string', default: '128x64x8x8,128x128x4x4,128x256x2x2,128x512x1x1', describe: 'NxCxHxW of each layer, comma-separated' },
  threads: { type: 'string', default: '1', describe: 'ORT intra-op threads' },
  runs: { type: 'string', default: '10', describe: 'timed runs per graph after 2 warm-up runs (median reported)' },
});
function fail(msg: string): never {
  process.stderr.write(`bench/conv-matmul: ${msg}\n`);
  process.exit(2);
}
const threads = Number(values.threads);
const runs = Number(values.runs);
for (const [k, v] of [['threads', threads], ['runs', runs]] as const) if (!Number.isInteger(v) || v < 1) fail(`--${k} ${v}: expected a whole number >= 1`);
const shapes = values.shapes.split(',').map((s) => {
  const m = /^(\d+)x(\d+)x(\d+)x(\d+)$/.exec(s.trim());
  if (!m) fail(`--shapes ${s}: expected NxCxHxW, e.g. 128x256x2x2`);
  return m.slice(1).map(Number) as [number, number, number, number];
});

/** y = conv3x3(x, w) with loss sum(y * gy): outputs y, dx, dw. */
function build([n, c, h, w]: number[], lowered: boolean): Uint8Array {
  const g = new Graph('float32');
  const x = g.input('x', [n, c, h, w]);
  const wt = g.input('w', [c, c, 3, 3]);
  const gy = g.input('gy', [n, c, h, w]);
  let y: Value;
  if (!lowered) y = g.conv(x, wt, { pads: [1, 1, 1, 1] });
  else {
    const xp = g.pad(x, [0, 0, 1, 1, 0, 0, 1, 1]);
    const taps: Value[] = [];
    for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) taps.push(g.unsqueeze(g.slice(xp, [i, j], [i + h, j + w], [2, 3]), [2])); // [N, C, 1, H, W]
    const cols = g.reshape(g.transpose(g.concat(taps, 2), [0, 3, 4, 1, 2]), [n * h * w, c * 9]); // rows (n, h, w), columns (c, i, j)
    const out = g.matmul(cols, g.transpose(g.reshape(wt, [c, c * 9]), [1, 0])); // [N*H*W, O]
    y = g.transpose(g.reshape(out, [n, h, w, c]), [0, 3, 1, 2]);
  }
  const loss = g.reduceSum(g.mul(y, gy), [0, 1, 2, 3], false);
  const [dx, dw] = gradients(g, loss, [x, wt], { convWeightGrad: 'batch-as-channels', convInputGrad: 'conv-transpose' });
  g.output(y, 'y');
  g.output(dx, 'dx');
  g.output(dw, 'dw');
  return encodeModel(g, lowered ? 'matmul' : 'conv');
}

console.log(`\nms per run (forward + dX + dW; median of ${runs}), ${threads} thread(s), 3x3 pad 1, dense C -> C\n`);
console.log('| shape | ORT Conv + gradient rules | im2col + MatMul lowering | speed-up | outputs, max rel. diff |\n|---|---:|---:|---:|---:|');
for (const s of shapes) {
  const rng = new Rng(3);
  const feeds: Record<string, ort.Tensor> = {};
  for (const [name, dims] of [['x', s], ['w', [s[1], s[1], 3, 3]], ['gy', s]] as const) feeds[name] = new ort.Tensor('float32', Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, () => rng.normal()), [...dims]);
  const opts = { graphOptimizationLevel: 'all', intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: 'sequential' } as const;
  const sess = [await ort.InferenceSession.create(build(s, false), opts), await ort.InferenceSession.create(build(s, true), opts)];
  const outs = [await sess[0].run(feeds), await sess[1].run(feeds)];
  let diff = 0;
  for (const k of ['y', 'dx', 'dw']) {
    const a = outs[0][k].data as Float32Array;
    const b = outs[1][k].data as Float32Array;
    const scale = a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    for (let i = 0; i < a.length; i++) diff = Math.max(diff, Math.abs(a[i] - b[i]) / scale);
  }
  if (diff > 1e-4) fail(`${s.join('x')}: the two graphs disagree (${diff.toExponential(1)} relative): a lowering bug`);
  const ms: number[][] = [[], []];
  for (let r = 0; r < runs + 2; r++) {
    for (const k of [0, 1]) {
      const t = performance.now();
      await sess[k].run(feeds);
      if (r >= 2) ms[k].push(performance.now() - t);
    }
  }
  const [a, b] = ms.map((m) => m.sort((p, q) => p - q)[Math.floor(m.length / 2)]);
  console.log(`| ${s.join('x')} | ${a.toFixed(2)} | ${b.toFixed(2)} | ${(a / b).toFixed(2)}x | ${diff.toExponential(1)} |`);
  for (const x of sess) await x.release();
}
