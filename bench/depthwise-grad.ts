// bench/depthwise-grad: what a depthwise (and grouped) Conv's gradients cost on the CPU EP, per
// formulation, at MobileNet-like shapes: the weight gradient as per-offset slices and GEMMs ('offsets'),
// one grouped Conv with the batch as channels ('grouped-conv'), one depthwise Conv over the (image,
// channel) pairs with gy as the kernel ('per-image') or per-offset Mul + ReduceSum ('mul-reduce'; see
// tools/graph/grad.ts DepthwiseWeightGrad), the input gradient as ConvTranspose
// or (stride 1) a Conv with the flipped kernel. Each is its own graph (the gradient alone, fed the
// layer's input and upstream gradient); per shape the graphs run round-robin, one run each in turn,
// so a change in the machine's load hits all of them alike (on a shared machine, timing them one after
// another gave the opposite order for the input gradient). The forward Conv is timed beside them, and
// PyTorch's autograd for the same gradients when --torch is given (Debian's python3-torch, the same
// thread count; run after ORT, not interleaved). With --groups 1 (dense) the dense weight-gradient
// formulations (ConvWeightGrad: batch-as-channels, im2col-offsets, batched-offsets, unfold-conv, auto)
// are timed instead of the depthwise ones; a shape may name its kernel size and output channels
// (NxCxHxWsS[kK][oO], pad K // 2; default 3x3 and O = C), e.g. an imported model's layers.
//
//   node --import tsx bench/depthwise-grad.ts [--shapes 128x96x16x16s1,128x96x32x32s2] [--groups 0]
//        [--threads 2] [--runs 10] [--torch] [--json bench/out/depthwise-grad.json]

import { mkdirSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { Graph, type Value } from '../tools/graph/graph.ts';
import { GRAD_RULES, type GradOptions } from '../tools/graph/grad.ts';
import { encodeModel } from '../tools/onnx/encode.ts';
import { Rng } from '../core/rng.ts';
import { benchArgs } from './args.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));

const values = benchArgs(import.meta.url, {
  shapes: { type: 'string', default: '128x96x16x16s1,128x96x32x32s2,128x384x4x4s1', describe: 'NxCxHxW and stride of each layer, comma-separated; kK for a K x K kernel (pad K // 2; default 3) and oO for O output channels (default C), e.g. 128x64x24x24s2k1o128' },
  groups: { type: 'string', default: '0', describe: 'groups per layer: 0 = depthwise (groups = C), else C / groups input channels per group' },
  threads: { type: 'string', default: '2', describe: 'ORT intra-op threads (and torch.set_num_threads)' },
  runs: { type: 'string', default: '10', describe: 'timed runs per graph after 2 warm-up runs (median reported)' },
  torch: { type: 'boolean', default: false, describe: 'also time PyTorch autograd for the same gradients (/usr/bin/python3)' },
  json: { type: 'string', default: path.join(HERE, 'out/depthwise-grad.json'), describe: 'results' },
});

function fail(msg: string): never {
  process.stderr.write(`bench/depthwise-grad: ${msg}\n`);
  process.exit(2);
}
const threads = Number(values.threads);
const runs = Number(values.runs);
const groupsArg = Number(values.groups);
for (const [k, v] of [['threads', threads], ['runs', runs]] as const) if (!Number.isInteger(v) || v < 1) fail(`--${k} ${v}: expected a whole number >= 1`);
if (!Number.isInteger(groupsArg) || groupsArg < 0) fail(`--groups ${values.groups}: expected 0 (depthwise) or a whole number of groups`);
const shapes = values.shapes.split(',').map((s) => {
  const m = /^(\d+)x(\d+)x(\d+)x(\d+)s(\d+)(?:k(\d+))?(?:o(\d+))?$/.exec(s.trim());
  if (!m) fail(`--shapes ${s}: expected NxCxHxWsS[kK][oO], e.g. 128x96x16x16s1 or 128x64x24x24s2k1o128`);
  const [n, c, h, w, st] = m.slice(1, 6).map(Number);
  const k = m[6] ? Number(m[6]) : 3;
  const o = m[7] ? Number(m[7]) : c;
  const group = groupsArg === 0 ? c : groupsArg;
  if (c % group || o % group) fail(`--groups ${group}: does not divide the ${c} input and ${o} output channels of ${s}`);
  return { n, c, h, w, stride: st, k, o, group, label: s.trim() };
});

type Shape = (typeof shapes)[number];
interface Variant {
  name: string;
  wants: 'forward' | 'dx' | 'dw';
  opts?: GradOptions;
}
const VARIANTS: Variant[] = [
  { name: 'forward Conv', wants: 'forward' },
  { name: 'dW offsets', wants: 'dw', opts: { depthwiseWeightGrad: 'offsets' } },
  { name: 'dW grouped-conv', wants: 'dw', opts: { depthwiseWeightGrad: 'grouped-conv' } },
  { name: 'dW per-image', wants: 'dw', opts: { depthwiseWeightGrad: 'per-image' } },
  { name: 'dW mul-reduce', wants: 'dw', opts: { depthwiseWeightGrad: 'mul-reduce' } },
  { name: 'dW batch-as-channels', wants: 'dw', opts: { convWeightGrad: 'batch-as-channels' } },
  { name: 'dW im2col-offsets', wants: 'dw', opts: { convWeightGrad: 'im2col-offsets' } },
  { name: 'dW batched-offsets', wants: 'dw', opts: { convWeightGrad: 'batched-offsets' } },
  { name: 'dW unfold-conv', wants: 'dw', opts: { convWeightGrad: 'unfold-conv' } },
  { name: 'dW auto', wants: 'dw', opts: { convWeightGrad: 'auto' } },
  { name: 'dX conv-transpose', wants: 'dx', opts: { convInputGrad: 'conv-transpose' } },
  { name: 'dX conv (stride 1)', wants: 'dx', opts: { convInputGrad: 'conv' } },
];

/** The Conv and, for a gradient variant, that gradient alone: inputs x, w and the upstream gradient gy. */
function build(s: Shape, v: Variant): { g: Graph; feeds: Value[] } {
  const g = new Graph('float32');
  const x = g.input('x', [s.n, s.c, s.h, s.w]);
  const w = g.input('w', [s.o, s.c / s.group, s.k, s.k]);
  const p = Math.floor(s.k / 2);
  const attrs = { strides: [s.stride, s.stride], pads: [p, p, p, p], group: s.group };
  const y = g.conv(x, w, attrs);
  if (v.wants === 'forward') {
    g.output(y, 'out');
    return { g, feeds: [x, w] };
  }
  const gy = g.input('gy', y.dims());
  const opts = { convWeightGrad: 'batch-as-channels', convInputGrad: 'conv-transpose', depthwiseWeightGrad: 'grouped-conv', maxPoolGrad: 'indices', ...v.opts } as const;
  const [dx, dw] = GRAD_RULES.Conv(g, y.producer!, [gy], opts);
  // The rule takes the flipped Conv for depthwise at stride 1 whatever the option: ConvTranspose built here.
  const ct = () => g.convTranspose(gy, w, { ...attrs, outputPadding: [(s.h + 2 * p - s.k) % s.stride, (s.w + 2 * p - s.k) % s.stride] });
  const out = v.wants === 'dw' ? dw! : v.opts?.convInputGrad === 'conv-transpose' && s.group === s.c ? ct() : dx!;
  g.pruneSince({ nodes: 0, initializers: 0 }, [out]); // the forward Conv and the other gradient
  g.output(out, 'out');
  const read = new Set(g.nodes.flatMap((n) => n.inputs));
  const used = g.inputs.filter((i) => read.has(i));
  g.inputs.splice(0, g.inputs.length, ...used); // ORT wants every declared input fed
  return { g, feeds: used };
}

/** Median ms per variant (null where it does not apply), the variants' runs interleaved. */
async function timeShape(s: Shape): Promise<Record<string, number | null>> {
  const rng = new Rng(7);
  const live: { name: string; sess: ort.InferenceSession; feeds: Record<string, ort.Tensor>; ms: number[] }[] = [];
  const out: Record<string, number | null> = {};
  for (const v of VARIANTS) {
    out[v.name] = null;
    if (v.name.includes('stride 1') && s.stride !== 1) continue;
    if (['dW offsets', 'dW grouped-conv', 'dW per-image', 'dW mul-reduce'].includes(v.name) && s.group !== s.c) continue; // depthwise-only formulations
    if (v.opts?.convWeightGrad && s.group !== 1) continue; // dense-only formulations (a grouped Conv takes groupedWeightGrad whatever they say)
    const { g, feeds } = build(s, v);
    const sess = await ort.InferenceSession.create(encodeModel(g, 'bench'), { graphOptimizationLevel: 'all', intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: 'sequential' });
    const f: Record<string, ort.Tensor> = {};
    for (const x of feeds) {
      const a = new Float32Array(x.size());
      for (let i = 0; i < a.length; i++) a[i] = rng.normal();
      f[x.name] = new ort.Tensor('float32', a, x.dims());
    }
    live.push({ name: v.name, sess, feeds: f, ms: [] });
  }
  for (let r = 0; r < runs + 2; r++) {
    for (const l of live) {
      const t = performance.now();
      await l.sess.run(l.feeds);
      if (r >= 2) l.ms.push(performance.now() - t);
    }
  }
  for (const l of live) {
    await l.sess.release();
    out[l.name] = l.ms.sort((a, b) => a - b)[Math.floor(l.ms.length / 2)];
  }
  return out;
}

const TORCH = `
import sys, json, time, torch
torch.set_num_threads(int(sys.argv[1])); runs = int(sys.argv[2]); out = {}
for spec in json.loads(sys.argv[3]):
    n, c, h, w, s, grp, k, o = spec
    x = torch.randn(n, c, h, w, requires_grad=True); wt = torch.randn(o, c // grp, k, k, requires_grad=True)
    def med(f):
        for _ in range(2): f()
        ts = []
        for _ in range(runs):
            t = time.perf_counter(); f(); ts.append((time.perf_counter() - t) * 1000)
        return sorted(ts)[len(ts) // 2]
    fwd = lambda: torch.nn.functional.conv2d(x, wt, stride=s, padding=k // 2, groups=grp)
    y = fwd(); gy = torch.randn_like(y)
    r = {'forward': med(fwd)}
    r['dw'] = med(lambda: torch.autograd.grad(y, [wt], gy, retain_graph=True))
    r['dx'] = med(lambda: torch.autograd.grad(y, [x], gy, retain_graph=True))
    r['both'] = med(lambda: torch.autograd.grad(y, [x, wt], gy, retain_graph=True))
    out['x'.join(map(str, spec))] = r
print(json.dumps(out))
`;

function torchTimes(): Record<string, Record<string, number>> | null {
  const specs = shapes.map((s) => [s.n, s.c, s.h, s.w, s.stride, s.group, s.k, s.o]);
  const r = spawnSync('/usr/bin/python3', ['-c', TORCH, String(threads), String(runs), JSON.stringify(specs)], { encoding: 'utf8' });
  if (r.status !== 0) {
    process.stderr.write(`bench/depthwise-grad: PyTorch timing failed: ${(r.stderr || r.error?.message || '').trim().split('\n').pop()}\n`);
    return null;
  }
  const raw = JSON.parse(r.stdout) as Record<string, Record<string, number>>;
  return Object.fromEntries(shapes.map((s, i) => [s.label, raw[specs[i].join('x')]]));
}

const results: Record<string, Record<string, number | null>> = {};
for (const s of shapes) results[s.label] = await timeShape(s);
const torch = values.torch ? torchTimes() : null;

const fmtMs = (v: number | null | undefined) => (v == null ? '-' : v.toFixed(2));
console.log(`\nms per run (median of ${runs}), ${threads} threads, K x K kernel, pad K // 2 (3x3 unless the shape says kK), ${groupsArg === 0 ? 'depthwise' : `${groupsArg} groups`}\n`);
const shown = VARIANTS.filter((v) => shapes.some((s) => results[s.label][v.name] != null));
const cols = [...shown.map((v) => v.name), ...(torch ? ['torch forward', 'torch dW', 'torch dX', 'torch dX+dW'] : [])];
console.log(`| shape | ${cols.join(' | ')} |`);
console.log(`|---|${cols.map(() => '---:').join('|')}|`);
for (const s of shapes) {
  const t = torch?.[s.label];
  const row = [...shown.map((v) => fmtMs(results[s.label][v.name])), ...(t ? [t.forward, t.dw, t.dx, t.both].map(fmtMs) : [])];
  console.log(`| ${s.label} g${s.group} | ${row.join(' | ')} |`);
}
mkdirSync(path.dirname(values.json), { recursive: true });
writeFileSync(values.json, JSON.stringify({ threads, runs, groups: groupsArg, ort: results, torch, date: new Date().toISOString() }, null, 2));
console.log(`\nwrote ${values.json}`);
