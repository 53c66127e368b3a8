// bench/crops: time to make one step's crops on the host (JS multiCrop: draws + render) against the
// in-graph path (host: draws + packCropParams; graph: tools/nn/augment-graph.ts buildCrops alone).
// The paths alternate rep by rep so they share whatever else loads the machine; each reports the
// median wall time and the median process CPU time (all threads), the fairer figure on a busy box.
// Prints a table, writes JSON.
//
//   node --import tsx bench/crops.ts [--sizes edge,paper] [--eps cpu] [--threads 1,N] [--reps 7]
//        [--json bench/out/crops.json]

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CIFAR_AUGMENT, multiCrop, sampleCrop } from '../agent/frames/augment.ts';
import { openSession, type EP } from '../agent/trainer/backend.ts';
import { CROP_PARAM_COUNT, packCropParams } from '../core/crop-params.ts';
import { Rng } from '../core/rng.ts';
import { Graph } from '../tools/graph/graph.ts';
import { buildCrops } from '../tools/nn/augment-graph.ts';
import { encodeModel } from '../tools/onnx/encode.ts';
import { benchArgs } from './args.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const S = 32;
const PER = 3 * S * S;

/** b images x n crops: the edge preset's step and the paper's. */
const SIZES: Record<string, { b: number; n: number }> = { edge: { b: 32, n: 4 }, paper: { b: 200, n: 20 } };

interface Row {
  size: string;
  crops: number;
  ep: EP | 'js';
  threads: number;
  /** Host CPU: draws + render (js), or draws + pack (graph). */
  hostMs: number;
  /** The crop graph's session.run, feeds and fetch included (0 for js). */
  graphMs: number;
  /** Process CPU time of the whole path (host + graph, all ORT threads, spin-waits included). */
  cpuMs: number;
  totalMs: number;
  usPerCrop: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Wall and process CPU milliseconds of one call. */
async function measure(fn: () => unknown): Promise<{ wall: number; cpu: number }> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await fn();
  const wall = performance.now() - t0;
  const c = process.cpuUsage(c0);
  return { wall, cpu: (c.user + c.system) / 1000 };
}

/** b demo CIFAR-10 images (uint8 CHW), so the colour ops see real pixels. */
function images(b: number): Uint8Array {
  const bin = readFileSync(path.join(HERE, '../agent/demo/cifar10-demo.bin'));
  const out = new Uint8Array(b * PER);
  for (let j = 0; j < b; j++) out.set(bin.subarray(j * 3073 + 1, j * 3073 + 3073), j * PER);
  return out;
}

const values = benchArgs(import.meta.url, {
  sizes: { type: 'string', default: 'edge,paper', describe: `steps to time (${Object.keys(SIZES).join(', ')})` },
  eps: { type: 'string', default: 'cpu', describe: 'execution providers for the graph (cpu, cuda, webgpu, wasm)' },
  threads: { type: 'string', default: `1,${cpus().length}`, describe: 'ORT intra-op thread counts' },
  reps: { type: 'string', default: '7', describe: 'timed repetitions (median)' },
  json: { type: 'string', default: path.join(HERE, 'out/crops.json'), describe: 'results' },
});

const reps = Number(values.reps);
const rows: Row[] = [];
for (const size of values.sizes.split(',')) {
  const cfg = SIZES[size];
  if (!cfg) throw new Error(`--sizes: unknown '${size}' (accepted: ${Object.keys(SIZES).join(', ')})`);
  const { b, n } = cfg;
  const crops = b * n;
  const ims = images(b);
  const rng = new Rng(1);
  const draw = () => packCropParams(Array.from({ length: crops }, () => sampleCrop(rng, S, CIFAR_AUGMENT)));

  const g = new Graph('float32');
  const im = g.input('images', [b, 3, S, S], 'uint8');
  const pr = g.input('params', [crops, CROP_PARAM_COUNT]);
  g.output(buildCrops(g, im, pr, { size: S, out: S }), 'crops');
  const model = encodeModel(g, 'crops');
  for (const ep of values.eps.split(',') as EP[]) {
    for (const threads of values.threads.split(',').map(Number)) {
      const sess = await openSession(model, ep, { threads });
      const run = (params: Float32Array) =>
        sess.run({ images: { type: 'uint8', data: ims, dims: [b, 3, S, S] }, params: { type: 'float32', data: params, dims: [crops, CROP_PARAM_COUNT] } });
      await run(draw()); // warm-up: allocations, kernel selection
      const js: { wall: number; cpu: number }[] = [];
      const host: { wall: number; cpu: number }[] = [];
      const graph: { wall: number; cpu: number }[] = [];
      for (let r = 0; r < reps; r++) {
        js.push(await measure(() => multiCrop(ims, b, S, n, rng)));
        let params: Float32Array = new Float32Array();
        host.push(await measure(() => (params = draw())));
        graph.push(await measure(() => run(params)));
      }
      await sess.release();
      const jsMs = median(js.map((m) => m.wall));
      const hostMs = median(host.map((m) => m.wall));
      const graphMs = median(graph.map((m) => m.wall));
      const cpuMs = median(host.map((m, r) => m.cpu + graph[r].cpu));
      rows.push({ size, crops, ep: 'js', threads: 1, hostMs: jsMs, graphMs: 0, cpuMs: median(js.map((m) => m.cpu)), totalMs: jsMs, usPerCrop: (jsMs / crops) * 1000 });
      rows.push({ size, crops, ep, threads, hostMs, graphMs, cpuMs, totalMs: hostMs + graphMs, usPerCrop: ((hostMs + graphMs) / crops) * 1000 });
      process.stderr.write(`${size} ${ep} x${threads}: js ${jsMs.toFixed(1)} ms, graph ${graphMs.toFixed(1)} ms\n`);
    }
  }
}

const f = (x: number) => x.toFixed(1);
console.log('| step | crops | path | threads | host ms | graph ms | total ms | us/crop | CPU ms |');
console.log('|---|---:|---|---:|---:|---:|---:|---:|---:|');
for (const r of rows) {
  const pathName = r.ep === 'js' ? 'JS multiCrop' : `graph (${r.ep})`;
  console.log(`| ${r.size} | ${r.crops} | ${pathName} | ${r.threads} | ${f(r.hostMs)} | ${r.ep === 'js' ? '-' : f(r.graphMs)} | ${f(r.totalMs)} | ${f(r.usPerCrop)} | ${f(r.cpuMs)} |`);
}
mkdirSync(path.dirname(values.json), { recursive: true });
writeFileSync(values.json, JSON.stringify({ cpu: cpus()[0]?.model, cores: cpus().length, loadavg: loadavg(), image: S, reps, rows }, null, 2) + '\n');
console.log(`wrote ${values.json}`);
