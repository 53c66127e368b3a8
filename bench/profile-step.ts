// bench/profile-step: where one compiled training step's time goes on the CPU EP. Runs the step with
// ORT's profiler on, then sums the kernel times per op type and per node, and reports how busy the
// intra-op threads were (the sum of kernel times against the wall time of the runs). Levers are
// session options tried side by side in one run (--levers), each on a fresh session with the same
// inputs, so their step times compare directly.
//
//   node --import tsx bench/profile-step.ts [--preset edge | --artifacts DIR] [--set key=value ...]
//        [--threads 2] [--steps 6] [--levers default,parallel,nomempattern,noarena] [--json F]

import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { getPreset } from '../tools/artifacts/presets.ts';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { multiCrop } from '../agent/frames/augment.ts';
import { Rng } from '../core/rng.ts';
import { decodeModel } from '../core/onnx/decode.ts';
import { benchArgs } from './args.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..');

// Session options per lever: ORT's own names, over the trainer's defaults (graph optimisation 'all',
// sequential execution, one inter-op thread).
const LEVERS: Record<string, Record<string, unknown>> = {
  default: {},
  // Independent branches (e.g. the per-offset weight-gradient GEMMs) on inter-op threads.
  parallel: { executionMode: 'parallel', interOpNumThreads: 2 },
  // The same with the two threads given to branches instead of to each kernel.
  'parallel-1x2': { executionMode: 'parallel', interOpNumThreads: 2, intraOpNumThreads: 1 },
  nomempattern: { enableMemPattern: false },
  noarena: { enableCpuMemArena: false },
  basicopt: { graphOptimizationLevel: 'basic' },
  extendedopt: { graphOptimizationLevel: 'extended' },
};

const values = benchArgs(import.meta.url, {
  preset: { type: 'string', default: 'edge', describe: 'preset (compiled into a temp folder; training-artifacts/<name> when it exists and no --set is given)' },
  set: { type: 'string', multiple: true, default: [], describe: 'override a preset field, key=value (as `ssocl artifacts --set`)' },
  artifacts: { type: 'string', describe: 'an artifact directory instead of --preset' },
  threads: { type: 'string', default: '2', describe: 'ORT intra-op threads' },
  steps: { type: 'string', default: '6', describe: 'profiled steps after 2 warm-up steps' },
  levers: { type: 'string', default: 'default', describe: `session-option sets to time, comma-separated: ${Object.keys(LEVERS).join(', ')}` },
  top: { type: 'string', default: '15', describe: 'rows in the per-node table' },
  json: { type: 'string', default: path.join(HERE, 'out/profile-step.json'), describe: 'results' },
});

const threads = Number(values.threads);
const steps = Number(values.steps);
const top = Number(values.top);
for (const [k, v] of [['threads', threads], ['steps', steps], ['top', top]] as const) {
  if (!Number.isInteger(v) || v < 1) {
    process.stderr.write(`bench/profile-step: --${k} ${v}: expected a whole number >= 1\n`);
    process.exit(2);
  }
}
const levers = values.levers.split(',');
for (const l of levers) {
  if (!(l in LEVERS)) {
    process.stderr.write(`bench/profile-step: --levers ${l}: unknown (accepted: ${Object.keys(LEVERS).join(', ')})\n`);
    process.exit(2);
  }
}

const work = mkdtempSync(path.join(tmpdir(), 'ssocl-profile-'));
let dir = values.artifacts;
if (!dir) {
  const built = path.join(REPO, 'training-artifacts', values.preset);
  if (!values.set.length && existsSync(path.join(built, 'manifest.json'))) dir = built;
  else {
    dir = path.join(work, 'art');
    writeArtifacts(compileArtifacts(getPreset(values.preset, values.set)), dir);
  }
}

interface Event {
  cat: string;
  name: string;
  dur: number;
  ts: number;
  tid: number;
  args?: { op_name?: string; thread_scheduling_stats?: unknown };
}

/** Crops of the demo images, as the agent makes them. */
function crops(t: Trainer, seed: number): Float32Array {
  const [rows, , size] = [t.cropsShape[0], t.cropsShape[1], t.cropsShape[2]];
  const views = t.manifest.trainStep.crops.views;
  const images = rows / views;
  const per = 3 * size * size;
  const raw = readFileSync(path.join(REPO, 'agent/demo/cifar10-demo.bin'));
  const imgs = new Uint8Array(images * per);
  // CIFAR records: 1 label byte + 3072 image bytes.
  for (let j = 0; j < images; j++) imgs.set(raw.subarray(j * (per + 1) + 1, (j + 1) * (per + 1)), j * per);
  return multiCrop(imgs, images, size, views, new Rng(seed));
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * Each kernel's convolution bucket: a forward Conv by its kind (dense: group 1; grouped: group > 1, which
 * in the torchvision models is depthwise), and every node the gradient walker emitted for a Conv (named
 * grad/<forward conv>/...) by its forward Conv's kind; everything else 'other'. Node names ORT's
 * optimiser made up (fused or NCHWc reorder nodes) land in 'other'.
 */
function convBuckets(dir: string): (node: string) => string {
  const m = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as { trainStep: { file: string } };
  const convs = new Map<string, string>();
  for (const n of decodeModel(readFileSync(path.join(dir, m.trainStep.file))).graph.nodes) {
    if (n.op !== 'Conv') continue;
    const g = n.attrs.group;
    convs.set(n.name, g && 'i' in g && g.i > 1 ? 'grouped' : 'dense');
  }
  return (node) => {
    const grad = /^grad\/([^/]+)\//.exec(node);
    if (grad && convs.has(grad[1])) return `${convs.get(grad[1])} Conv gradients`;
    if (!node.startsWith('grad/') && convs.has(node)) return `${convs.get(node)} Conv forward`;
    return 'other';
  };
}
const bucketOf = convBuckets(dir);

const results: Record<string, unknown>[] = [];
for (const lever of levers) {
  const prefix = path.join(work, `prof-${lever}`);
  const t = await Trainer.open(dir, { threads, noEmbed: true, session: { ...LEVERS[lever], enableProfiling: true, profileFilePrefix: prefix } });
  const c = [crops(t, 1), crops(t, 2)];
  for (let i = 0; i < 2; i++) await t.step(c[i % 2], 0.01);
  const ms: number[] = [];
  const wall0 = performance.now();
  const cpu0 = t.io.runCpuMs;
  for (let i = 0; i < steps; i++) ms.push((await t.step(c[i % 2], 0.01)).ms);
  const wall = performance.now() - wall0;
  // Process CPU time inside run(): the work, every thread, whatever else shares the cores.
  const cpuMsPerStep = (t.io.runCpuMs - cpu0) / steps;
  await t.close(); // the profile file is written when the session ends
  const file = readdirSync(work).filter((f) => f.startsWith(`prof-${lever}`)).map((f) => path.join(work, f))[0];
  const events = JSON.parse(readFileSync(file, 'utf8')) as Event[];
  // Kernel events of the timed steps only: the last `steps` model runs.
  const runs = events.filter((e) => e.cat === 'Session' && e.name === 'model_run').sort((a, b) => a.ts - b.ts).slice(-steps);
  const from = runs[0].ts;
  const kernels = events.filter((e) => e.cat === 'Node' && e.name.endsWith('_kernel_time') && e.ts >= from);
  const runUs = runs.reduce((x, e) => x + e.dur, 0);
  const kernelUs = kernels.reduce((x, e) => x + e.dur, 0);
  const byOp = new Map<string, { us: number; n: number }>();
  const byNode = new Map<string, { op: string; us: number }>();
  const byBucket = new Map<string, number>();
  for (const k of kernels) {
    const op = k.args?.op_name ?? '?';
    const o = byOp.get(op) ?? { us: 0, n: 0 };
    o.us += k.dur;
    o.n++;
    byOp.set(op, o);
    const name = k.name.replace(/_kernel_time$/, '');
    const nd = byNode.get(name) ?? { op, us: 0 };
    nd.us += k.dur;
    byNode.set(name, nd);
    const b = bucketOf(name);
    byBucket.set(b, (byBucket.get(b) ?? 0) + k.dur);
  }
  const buckets = [...byBucket].map(([bucket, us]) => ({ bucket, msPerStep: us / 1000 / steps, share: us / kernelUs })).sort((a, b) => b.msPerStep - a.msPerStep);
  const ops = [...byOp].map(([op, v]) => ({ op, msPerStep: v.us / 1000 / steps, nodes: v.n / steps, share: v.us / kernelUs })).sort((a, b) => b.msPerStep - a.msPerStep);
  const nodes = [...byNode].map(([node, v]) => ({ node, op: v.op, msPerStep: v.us / 1000 / steps, share: v.us / kernelUs })).sort((a, b) => b.msPerStep - a.msPerStep);
  const r = {
    lever,
    options: LEVERS[lever],
    stepMsMedian: median(ms),
    stepMs: ms,
    wallMsPerStep: wall / steps,
    cpuMsPerStep,
    runMsPerStep: runUs / 1000 / steps,
    kernelMsPerStep: kernelUs / 1000 / steps,
    kernelsPerStep: kernels.length / steps,
    // Sequential execution runs one kernel at a time: kernel time / run time is the time spent inside
    // kernels (the rest is the executor between them); parallel mode can exceed 1.
    kernelShareOfRun: kernelUs / runUs,
    ops,
    buckets,
    nodes: nodes.slice(0, top),
  };
  results.push(r);
  console.log(`\n${lever} (${JSON.stringify(LEVERS[lever])}): step ${r.stepMsMedian.toFixed(1)} ms median (profiler on), CPU ${cpuMsPerStep.toFixed(0)} ms per step, ${r.kernelsPerStep.toFixed(0)} kernels per step, kernel time ${r.kernelMsPerStep.toFixed(1)} ms = ${(100 * r.kernelShareOfRun).toFixed(0)}% of run time`);
  if (lever === levers[0]) {
    console.log('| op type | ms per step | nodes per step | share of kernel time |\n|---|---|---|---|');
    for (const o of ops.slice(0, top)) console.log(`| ${o.op} | ${o.msPerStep.toFixed(2)} | ${o.nodes.toFixed(0)} | ${(100 * o.share).toFixed(1)}% |`);
    console.log('\n| convolutions (forward by kind; gradients: every node of the Conv rule) | ms per step | share of kernel time |\n|---|---|---|');
    for (const b of buckets) console.log(`| ${b.bucket} | ${b.msPerStep.toFixed(2)} | ${(100 * b.share).toFixed(1)}% |`);
    console.log(`\n| node | op | ms per step | share |\n|---|---|---|---|`);
    for (const n of nodes.slice(0, top)) console.log(`| ${n.node} | ${n.op} | ${n.msPerStep.toFixed(2)} | ${(100 * n.share).toFixed(1)}% |`);
  }
}
if (levers.length > 1) {
  console.log('\n| lever | step ms (median, profiler on) | CPU ms per step | vs default (wall) |\n|---|---|---|---|');
  const base = results[0].stepMsMedian as number;
  for (const r of results) console.log(`| ${r.lever} | ${(r.stepMsMedian as number).toFixed(1)} | ${(r.cpuMsPerStep as number).toFixed(0)} | ${(base / (r.stepMsMedian as number)).toFixed(2)}x |`);
}
mkdirSync(path.dirname(values.json), { recursive: true });
writeFileSync(values.json, JSON.stringify({ machine: { cores: cpus().length, cpu: cpus()[0]?.model, node: process.version, date: new Date().toISOString(), loadavg: loadavg()[0] }, artifacts: dir, threads, steps, results }, null, 1) + '\n');
console.log(`wrote ${values.json}`);
rmSync(work, { recursive: true, force: true });
