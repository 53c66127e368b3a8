// bench/grad-vs-torch: the gradient rules composed, against PyTorch autograd: a MobileNet-style block
// in training mode (bench/reference/grad_block.py: BN with batch statistics, ReLU6 as Clip, depthwise
// and grouped convs, a residual, Hardswish, ReduceMean, GELU through Erf, Gemm) built with the graph
// builder, differentiated by tools/graph/grad.ts and run on ORT's CPU EP (float32), against the same
// block, weights and batch in PyTorch. Prints, per parameter, max |ours - torch| / max |torch| for its
// gradient, and the same for the BN running statistics, for each of the option sets given.
//
//   node --import tsx bench/grad-vs-torch.ts [--python /usr/bin/python3] [--json bench/out/grad-vs-torch.json]

import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Graph, type Value } from '../tools/graph/graph.ts';
import { gradients, type GradOptions } from '../tools/graph/grad.ts';
import { session, run } from '../test/helpers/ort.ts';
import { benchArgs } from './args.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const values = benchArgs(import.meta.url, {
  python: { type: 'string', default: '/usr/bin/python3', describe: 'Python with torch' },
  json: { type: 'string', default: path.join(HERE, 'out/grad-vs-torch.json'), describe: 'results' },
});

const refFile = path.join(mkdtempSync(path.join(tmpdir(), 'ssocl-gradref-')), 'ref.json');
const py = spawnSync(values.python, [path.join(HERE, 'reference/grad_block.py'), refFile], { encoding: 'utf8' });
if (py.status !== 0) {
  process.stderr.write(`bench/grad-vs-torch: ${values.python} failed: ${(py.stderr || py.error?.message || '').trim().split('\n').pop()}\n`);
  process.exit(2);
}
interface Ref {
  x: number[];
  R: number[];
  loss: number;
  params: Record<string, { shape: number[]; data: number[]; grad: number[] }>;
  running: Record<string, number[]>;
}
const ref = JSON.parse(readFileSync(refFile, 'utf8')) as Ref;
const [N, C, E, H] = [4, 8, 24, 8];

/** max |a - b| / max |b| */
function relErr(a: ArrayLike<number>, b: number[]): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

async function compare(opts: GradOptions): Promise<Record<string, number>> {
  const g = new Graph('float32');
  const x = g.input('x', [N, C, H, H]);
  const P: Record<string, Value> = {};
  for (const [k, v] of Object.entries(ref.params)) P[k] = g.input(k.replace(/\./g, '_'), v.shape);
  const stats: Value[] = [];
  const bn = (h: Value, k: string) => {
    const [y, mean, varB] = g.batchNormTraining(h, P[`${k}.weight`], P[`${k}.bias`], 1e-5);
    const c = h.shape[1] as number;
    stats.push(...g.batchNormRunningStats(h, mean, varB, g.constant(new Array(c).fill(0), [c]), g.constant(new Array(c).fill(1), [c]), 0.1));
    return y;
  };
  const relu6 = (h: Value) => g.clip(h, g.scalar(0), g.scalar(6));
  let h = relu6(bn(g.conv(x, P['0.weight']), '1'));
  h = relu6(bn(g.conv(h, P['3.weight'], { pads: [1, 1, 1, 1], group: E }), '4'));
  h = g.add(bn(g.conv(h, P['6.weight']), '7'), x);
  h = g.hardSwish(g.conv(h, P['s2.0.weight'], { strides: [2, 2], pads: [1, 1, 1, 1], group: 2 }, P['s2.0.bias']));
  const f = g.reduceMean(h, [2, 3], false);
  const gelu = g.mul(g.mul(f, g.scalar(0.5)), g.add(g.scalar(1), g.erf(g.mul(f, g.scalar(Math.SQRT1_2)))));
  const out = g.gemm(gelu, P['fc.weight'], P['fc.bias'], { transB: true });
  const loss = g.sumAll(g.mul(out, g.constant(Float32Array.from(ref.R), [N, 5])));
  const names = Object.keys(P);
  const grads = gradients(g, loss, names.map((k) => P[k]), opts);
  g.output(loss, 'loss');
  grads.forEach((gv, i) => g.output(gv, `g${i}`));
  stats.forEach((r, i) => g.output(r, `s${i}`));
  const feeds = new Map<Value, Float32Array>([[x, Float32Array.from(ref.x)]]);
  for (const k of names) feeds.set(P[k], Float32Array.from(ref.params[k].data));
  const o = await run(await session(g), g, feeds);
  const r: Record<string, number> = { loss: Math.abs((o.loss as Float32Array)[0] - ref.loss) / Math.abs(ref.loss) };
  names.forEach((k, i) => (r[`d ${k}`] = relErr(o[`g${i}`] as Float32Array, ref.params[k].grad)));
  Object.keys(ref.running).forEach((k, i) => (r[k] = relErr(o[`s${i}`] as Float32Array, ref.running[k])));
  return r;
}

const SETS: Record<string, GradOptions> = {
  defaults: {},
  'conv input grad, depthwise offsets': { convInputGrad: 'conv', depthwiseWeightGrad: 'offsets', convWeightGrad: 'batched-offsets' },
};
const results: Record<string, Record<string, number>> = {};
for (const [name, opts] of Object.entries(SETS)) results[name] = await compare(opts);
const rows = Object.keys(results.defaults);
console.log(`\nmax |ours - torch| / max |torch| (float32, ORT CPU EP)\n\n| quantity | ${Object.keys(SETS).join(' | ')} |\n|---|${Object.keys(SETS).map(() => '---:').join('|')}|`);
for (const k of rows) console.log(`| ${k} | ${Object.keys(SETS).map((s) => results[s][k].toExponential(1)).join(' | ')} |`);
mkdirSync(path.dirname(values.json), { recursive: true });
writeFileSync(values.json, JSON.stringify({ results, date: new Date().toISOString() }, null, 2));
console.log(`\nwrote ${values.json}`);
