// bench/step-cpu: CPU and wall time per run of one artifact's train_step.onnx, fed seeded random state
// with the trainer's session options (graph optimisation 'all', sequential, one inter-op thread). The
// CPU time (user + system around each run) is the figure that survives a shared box: on a loaded
// machine the wall time measures the neighbours. One artifact and one onnxruntime-node per process:
// interleave calls from the shell to compare formulations or versions (two installs both ship
// libonnxruntime.so.1, and a second one loaded into the same process would silently reuse the first).
// Prints one JSON line per thread count.
//
//   node --import tsx bench/step-cpu.ts --artifacts DIR [--threads 1,2] [--steps 6]
//        [--ort /tmp/ort130/package.json]

import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { loadavg } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Rng } from '../core/rng.ts';
import { benchArgs } from './args.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const values = benchArgs(import.meta.url, {
  artifacts: { type: 'string', default: path.join(HERE, '../training-artifacts/edge'), describe: 'artifact directory (its manifest.json names the step file and its inputs)' },
  threads: { type: 'string', default: '1,2', describe: 'ORT intra-op thread counts, comma-separated (a fresh session each)' },
  steps: { type: 'string', default: '6', describe: 'timed runs after 2 warm-up runs (medians reported)' },
  ort: { type: 'string', default: path.join(HERE, '../package.json'), describe: "a package.json whose onnxruntime-node to load (another version installed elsewhere, e.g. /tmp/ort130/package.json)" },
});

type Ort = typeof import('onnxruntime-node');
let ort: Ort;
try {
  ort = createRequire(path.resolve(values.ort))('onnxruntime-node') as Ort;
} catch (e) {
  process.stderr.write(`bench/step-cpu: --ort ${values.ort}: no onnxruntime-node resolvable from there (${(e as Error).message.split('\n')[0]})\n`);
  process.exit(2);
}
// The binding's own version (what --ort loaded), not onnxruntime-common's: the two could differ.
const versions = ort.env.versions as Record<string, string | undefined>;
const version = versions.node ?? versions.common ?? '?';
const mf = path.join(values.artifacts, 'manifest.json');
if (!existsSync(mf)) {
  process.stderr.write(`bench/step-cpu: --artifacts ${values.artifacts}: no manifest.json there (an artifact directory, as 'ssocl artifacts' writes)\n`);
  process.exit(2);
}
const manifest = JSON.parse(readFileSync(mf, 'utf8'));
const model = readFileSync(path.join(values.artifacts, manifest.trainStep.file));
const steps = Number(values.steps);
const threadsList = values.threads.split(',').map(Number);
const bad = !(Number.isInteger(steps) && steps >= 1) ? `--steps ${values.steps}: must be a positive integer` : threadsList.some((t) => !(Number.isInteger(t) && t >= 1)) ? `--threads ${values.threads}: must be positive integers, comma-separated` : '';
if (bad) {
  process.stderr.write(`bench/step-cpu: ${bad}\n`);
  process.exit(2);
}

/** Crops uniform in [0, 1), weights small, running variances 1, lr 0.01, step 1: a finite step. */
function feeds(): Record<string, InstanceType<Ort['Tensor']>> {
  const rng = new Rng(1);
  const out: Record<string, InstanceType<Ort['Tensor']>> = {};
  for (const i of manifest.trainStep.inputs as { name: string; shape: number[]; dtype: string }[]) {
    const n = i.shape.reduce((a, b) => a * b, 1);
    const data =
      i.name === 'lr' ? Float32Array.of(0.01)
      : i.name === 'step' ? Float32Array.of(1)
      : i.name.includes('running_var') ? new Float32Array(n).fill(1)
      : Float32Array.from({ length: n }, () => (i.name === 'crops' ? rng.uniform() : (rng.uniform() - 0.5) * 0.2));
    out[i.name] = new ort.Tensor(i.dtype as 'float32', data, i.shape);
  }
  return out;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
for (const threads of threadsList) {
  const sess = await ort.InferenceSession.create(model, { graphOptimizationLevel: 'all', executionMode: 'sequential', intraOpNumThreads: threads, interOpNumThreads: 1, logSeverityLevel: 4 });
  const f = feeds();
  const wall: number[] = [];
  const cpu: number[] = [];
  let loss = NaN;
  for (let k = 0; k < 2 + steps; k++) {
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    const o = await sess.run(f);
    const c = process.cpuUsage(c0);
    if (k >= 2) {
      wall.push(performance.now() - t0);
      cpu.push((c.user + c.system) / 1000);
    }
    loss = (o.loss?.data as Float32Array | undefined)?.[0] ?? NaN;
  }
  await sess.release();
  console.log(JSON.stringify({ artifacts: path.basename(path.resolve(values.artifacts)), onnxruntime: version, threads, steps, cpuMs: +median(cpu).toFixed(1), wallMs: +median(wall).toFixed(1), minWallMs: +Math.min(...wall).toFixed(1), peakRssMB: Math.round(process.resourceUsage().maxRSS / 1024), loss, load: +loadavg()[0].toFixed(1), date: new Date().toISOString() }));
}
