// bench/relu-grad: what the ReLU gradient costs on the CPU EP by formulation: gy * Sign(y) (the rule's
// first form; ORT runs Sign on one thread), Where(y > 0, gy, 0), and gy * Cast(y > 0). The profile of
// issue #33 put the Sign at 6 % of the 2-thread edge step with no gain from the second thread.
//
//   node --import tsx bench/relu-grad.ts [--shapes 128x32x32x32,256x64x16x16] [--threads 1,2] [--runs 20]

import * as ort from 'onnxruntime-node';
import { Graph } from '../tools/graph/graph.ts';
import { encodeModel } from '../tools/onnx/encode.ts';
import { Rng } from '../core/rng.ts';
import { benchArgs } from './args.ts';

const values = benchArgs(import.meta.url, {
  shapes: { type: 'string', default: '128x32x32x32,256x64x16x16', describe: 'NxCxHxW activations, comma-separated' },
  threads: { type: 'string', default: '1,2', describe: 'ORT intra-op threads, comma-separated' },
  runs: { type: 'string', default: '20', describe: 'timed runs per graph after 3 warm-up runs (median reported)' },
});
const FORMS = ['sign', 'where', 'cast'] as const;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function time(shape: number[], form: (typeof FORMS)[number], threads: number): Promise<{ ms: number; out: Float32Array }> {
  const g = new Graph('float32');
  const y = g.input('y', shape);
  const gy = g.input('gy', shape);
  const pos = () => g.compare('Greater', y, g.scalar(0));
  const dx = form === 'sign' ? g.mul(gy, g.unary('Sign', y)) : form === 'where' ? g.whereOp(pos(), gy, g.scalar(0)) : g.mul(gy, g.cast(pos(), 'float32'));
  g.output(dx, 'dx');
  const sess = await ort.InferenceSession.create(encodeModel(g, 'bench'), { graphOptimizationLevel: 'all', intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: 'sequential' });
  const rng = new Rng(5);
  const n = shape.reduce((a, b) => a * b, 1);
  const feeds = { y: new ort.Tensor('float32', Float32Array.from({ length: n }, () => Math.max(0, rng.normal())), shape), gy: new ort.Tensor('float32', Float32Array.from({ length: n }, () => rng.normal()), shape) };
  for (let i = 0; i < 3; i++) await sess.run(feeds);
  const ms: number[] = [];
  let out: Float32Array = new Float32Array(0);
  for (let i = 0; i < Number(values.runs); i++) {
    const t = performance.now();
    out = (await sess.run(feeds)).dx.data as Float32Array;
    ms.push(performance.now() - t);
  }
  await sess.release();
  return { ms: median(ms), out };
}

const rows: string[] = [];
for (const s of values.shapes.split(',')) {
  const shape = s.split('x').map(Number);
  for (const th of values.threads.split(',').map(Number)) {
    const r: { ms: number; out: Float32Array }[] = [];
    for (const f of FORMS) r.push(await time(shape, f, th));
    const same = r.every((x) => x.out.every((v, i) => v === r[0].out[i]));
    rows.push(`| ${s} | ${th} | ${r.map((x) => x.ms.toFixed(2)).join(' | ')} | ${same ? 'yes' : 'NO'} |`);
    process.stdout.write(`${rows.at(-1)}\n`);
  }
}
process.stdout.write(['', `| activation | threads | ${FORMS.map((f) => `${f} ms`).join(' | ')} | equal outputs |`, '|---|---|---|---|---|---|', ...rows, ''].join('\n'));
