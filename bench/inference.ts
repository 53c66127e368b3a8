// bench/inference: the exported encoder as the edge box uses it. For the edge encoder and ResNet-18
// (CIFAR stem) at 32x32: batched throughput (frames/s), single-frame latency (p50/p99 over 1000 runs),
// and `ssocl embed`'s own pipeline over PNG files (read + decode + encoder), per EP that starts here.
// Weights are the initial ones (speed does not depend on them).
//
//   node --import tsx bench/inference.ts [--threads 2] [--eps cpu,cuda,webgpu] [--json bench/out/inference.json]

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { getPreset } from '../tools/artifacts/presets.ts';
import { buildEmbed, initState } from '../tools/artifacts/build.ts';
import { bindInputs } from '../core/onnx/model.ts';
import { encodeModel } from '../tools/onnx/encode.ts';
import { Encoder } from '../agent/infer/encoder.ts';
import { decodeFrames, stackImages } from '../agent/infer/io.ts';
import { listFrames } from '../agent/frames/list.ts';
import { encodePng } from '../agent/frames/decode.ts';
import type { EP } from '../agent/trainer/backend.ts';
import { benchArgs } from './args.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const values = benchArgs(import.meta.url, {
  threads: { type: 'string', default: '2', describe: 'ORT intra-op threads' },
  eps: { type: 'string', default: 'cpu,cuda,webgpu', describe: 'execution providers to try (one that does not start is listed with why)' },
  batch: { type: 'string', default: '256', describe: 'batch size of the throughput rows' },
  seconds: { type: 'string', default: '4', describe: 'seconds per throughput measurement' },
  json: { type: 'string', default: path.join(HERE, 'out/inference.json'), describe: 'results' },
});
const threads = Number(values.threads);
const batch = Number(values.batch);

function encoderBytes(preset: string): Uint8Array {
  const p = getPreset(preset);
  const { g, specs } = buildEmbed(p);
  const init = initState(specs, p.seed);
  const vals = new Map([...init].map(([k, v]) => [k, { dtype: 'float32' as const, dims: specs.find((s) => `${s.role === 'param' ? 'params.' : 'buffers.'}${s.name}` === k)!.shape, data: v }]));
  return bindInputs(encodeModel(g, `${p.name}.embed`), vals);
}

const pct = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))];

interface Row {
  model: string;
  ep: string;
  batch: number;
  framesPerS: number;
  p50ms: number;
  p99ms: number;
  pipelineFramesPerS: number;
  note?: string;
}
const rows: Row[] = [];
const work = mkdtempSync(path.join(tmpdir(), 'ssocl-inference-'));
try {
  // PNG frames for the end-to-end pipeline (what `ssocl embed DIR` does per batch).
  const dir = path.join(work, 'frames');
  mkdirSync(dir);
  for (let i = 0; i < 1024; i++) {
    const x = new Uint8Array(3072);
    for (let k = 0; k < x.length; k++) x[k] = (k * 7 + i * 13 + ((k * i) % 31)) & 255;
    writeFileSync(path.join(dir, `f${String(i).padStart(4, '0')}.png`), await encodePng(x, 32));
  }
  const refs = listFrames(dir);
  for (const [name, preset] of [['edge (resnet-edge 16/32/64)', 'edge'], ['ResNet-18-CIFAR', 'paper-cifar']] as const) {
    const bytes = encoderBytes(preset);
    for (const ep of values.eps.split(',') as EP[]) {
      let enc: Encoder;
      try {
        enc = await Encoder.fromBytes(name, bytes, { ep, threads });
      } catch (e) {
        rows.push({ model: name, ep, batch, framesPerS: NaN, p50ms: NaN, p99ms: NaN, pipelineFramesPerS: NaN, note: (e as Error).message.split('\n')[0].slice(0, 120) });
        continue;
      }
      const x = new Float32Array(batch * 3072).map((_, i) => ((i * 2654435761) % 1000) / 1000);
      for (let i = 0; i < 3; i++) await enc.run(x, batch);
      let n = 0;
      const t0 = performance.now();
      while (performance.now() - t0 < Number(values.seconds) * 1000) {
        await enc.run(x, batch);
        n += batch;
      }
      const fps = (n / (performance.now() - t0)) * 1000;
      const one = x.subarray(0, 3072);
      for (let i = 0; i < 20; i++) await enc.run(one, 1);
      const lat: number[] = [];
      for (let i = 0; i < 1000; i++) {
        const t = performance.now();
        await enc.run(one, 1);
        lat.push(performance.now() - t);
      }
      // Pipeline: read + decode (sharp) + encoder, batch by batch, as `ssocl embed DIR` runs.
      const tp = performance.now();
      for (let i = 0; i < refs.length; i += batch) {
        const fr = await decodeFrames(refs.slice(i, i + batch), enc.size, 'cover', 40e6, () => {});
        await enc.runU8(stackImages(fr), fr.length);
      }
      const pipe = (refs.length / (performance.now() - tp)) * 1000;
      rows.push({ model: name, ep: enc.ep, batch, framesPerS: Math.round(fps), p50ms: +pct(lat, 0.5).toFixed(3), p99ms: +pct(lat, 0.99).toFixed(3), pipelineFramesPerS: Math.round(pipe) });
      await enc.release();
      process.stderr.write(`${name} ${ep}: done\n`);
    }
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
const machine = { cores: cpus().length, cpu: cpus()[0]?.model, threads, date: new Date().toISOString() };
console.log(`\ninference at 32x32, ${machine.cores} cores (${machine.cpu}), ${threads} intra-op threads`);
console.log('| encoder | EP | batched frames/s (batch ' + batch + ') | single-frame p50 ms | p99 ms | embed pipeline (PNG decode + encoder) frames/s |');
console.log('|---|---|---|---|---|---|');
for (const r of rows) console.log(r.note ? `| ${r.model} | ${r.ep} | not available: ${r.note} | | | |` : `| ${r.model} | ${r.ep} | ${r.framesPerS} | ${r.p50ms} | ${r.p99ms} | ${r.pipelineFramesPerS} |`);
mkdirSync(path.dirname(values.json), { recursive: true });
writeFileSync(values.json, JSON.stringify({ machine, rows }, null, 1) + '\n');
console.log(`wrote ${values.json}`);
