// bench/agent: where an arrival's time goes in the agent's loop (decode, augment, train, buffer,
// checkpoint, export) on the demo stream, and the cost of the buffer's removal rule as M grows.
// Prints tables, writes JSON.  node --import tsx bench/agent.ts [--arrivals 30] [--artifacts DIR]

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Trainer } from '../agent/trainer/trainer.ts';
import { Learner, defaultLearnerConfig } from '../agent/trainer/learner.ts';
import { decodeFrame, encodePng } from '../agent/frames/decode.ts';
import { demoStream } from '../agent/commands/demo.ts';
import { saveCheckpoint, CHECKPOINT_VERSION } from '../agent/trainer/checkpoint.ts';
import { exportEncoder } from '../agent/export/export.ts';
import { ReplayBuffer } from '../agent/buffer/buffer.ts';
import { ortSimilarity } from '../agent/buffer/similarity.ts';
import { openChosen } from '../agent/trainer/backend.ts';
import { Rng } from '../core/rng.ts';
import { benchArgs } from './args.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const values = benchArgs(import.meta.url, {
  arrivals: { type: 'string', default: '30', describe: 'arrivals timed through the agent loop' },
  artifacts: { type: 'string', default: path.join(HERE, '../training-artifacts/edge'), describe: 'training artifacts to run' },
  json: { type: 'string', default: path.join(HERE, 'out/agent.json'), describe: 'results' },
  sizes: { type: 'string', default: '256,2048,16384', describe: 'buffer sizes M for the removal-rule timing' },
});

const tr = await Trainer.open(values.artifacts);
const engine = await ortSimilarity((m) => openChosen(m));
const learner = new Learner(tr, defaultLearnerConfig(tr), engine);
const { images, order } = demoStream();
const size = tr.manifest.preset.image.size;
const newPer = tr.manifest.preset.agent.newPerArrival;
const work = mkdtempSync(path.join(tmpdir(), 'ssocl-bench-agent-'));
// Frames as PNG files, as the dir source would read them.
const pngs: Buffer[] = [];
for (let k = 0; k < Number(values.arrivals) * newPer; k++) {
  const i = order[k % order.length];
  pngs.push(await encodePng(images.subarray(i * 3072, (i + 1) * 3072), 32));
}
const tot = { decode: 0, augment: 0, overlapped: 0, train: 0, buffer: 0, checkpoint: 0, export: 0 };
let trainedArrivals = 0;
let frame = 0;
for (let a = 0; a < Number(values.arrivals); a++) {
  const t0 = performance.now();
  const batch = [];
  for (let j = 0; j < newPer; j++, frame++) {
    batch.push({ key: String(frame), image: await decodeFrame(pngs[frame], '.png', { size, fit: 'cover', maxPixels: 4e7 }) });
  }
  const dec = performance.now() - t0;
  const r = await learner.arrive(batch);
  if (!r.trained) continue; // the first arrivals only fill the buffer
  trainedArrivals++;
  tot.decode += dec;
  tot.augment += r.ms.augment;
  tot.train += r.ms.train;
  tot.buffer += r.ms.buffer;
  tot.overlapped += r.ms.overlapped;
}
// Checkpoint and export once each, amortised over the default intervals is the real cost; report per call.
let t0 = performance.now();
const snap = learner.buffer.snapshot();
saveCheckpoint(path.join(work, 'ck'), {
  meta: { version: CHECKPOINT_VERSION, artifact: 'bench', steps: tr.steps, arrivals: learner.arrivals, framesIngested: frame, rng: learner.rng.state, cropRng: learner.cropRng.state, buffer: { nextId: snap.nextId, streamCount: snap.streamCount, entries: snap.entries.map(({ image: _i, feature: _f, ...r }) => r), hasFeature: snap.entries.map((e) => !!e.feature) }, counters: {}, time: '' },
  state: tr.state,
  images: snap.entries.map((e) => e.image),
  features: snap.entries.map((e) => e.feature),
});
const ckMs = performance.now() - t0;
t0 = performance.now();
const per = 3 * size * size;
await exportEncoder(tr, path.join(work, 'models'), { framesSeen: frame, loss: null, probe: new Float32Array(per).fill(0.5), probeCount: 1 });
const exMs = performance.now() - t0;
const arrival = tot.decode + tot.augment + tot.train + tot.buffer;
const rows = Object.entries({ decode: tot.decode, augment: tot.augment, train: tot.train, buffer: tot.buffer }).map(([k, v]) => ({ part: k, msPerArrival: v / trainedArrivals, share: v / arrival }));
console.log(`agent loop, ${tr.manifest.name} on ${tr.ep}, ${trainedArrivals} trained arrivals of ${newPer} frames, K=${learner.cfg.updates}`);
console.log('| part | ms per arrival | share |\n|---|---|---|');
for (const r of rows) console.log(`| ${r.part} | ${r.msPerArrival.toFixed(1)} | ${(100 * r.share).toFixed(1)}% |`);
console.log(`| non-train total | ${((arrival - tot.train) / trainedArrivals).toFixed(1)} | ${(100 * (1 - tot.train / arrival)).toFixed(1)}% |`);
console.log(`(augmentation done while a step ran, inside train: ${(tot.overlapped / trainedArrivals).toFixed(1)} ms per arrival)`);
console.log(`checkpoint (buffer ${learner.buffer.size}): ${ckMs.toFixed(0)} ms per write; export incl. check: ${exMs.toFixed(0)} ms per export`);

// The removal rule as M grows: one arrival's worth of feature updates (K steps x batch) plus the removals.
const d = tr.manifest.trainStep.outputs.find((o) => o.name === 'zbar')!.shape[1] as number;
const b = tr.manifest.trainStep.crops.images;
const scale: { M: number; buildMs: number; msPerArrival: number }[] = [];
for (const M of values.sizes.split(',').map(Number)) {
  const rng = new Rng(1);
  const buf = new ReplayBuffer({ capacity: M, policy: 'diverse', alpha: 0.5 }, engine);
  const fill = buf.add(Array.from({ length: M }, (_, i) => ({ key: String(i), image: new Uint8Array(1) })));
  const tb = performance.now();
  // Building the index from scratch (what a resume from a checkpoint does) is O(M^2 d).
  await buf.updateFeatures(fill, Float32Array.from({ length: M * d }, () => rng.normal()));
  const buildMs = performance.now() - tb;
  const reps = 5;
  const t = performance.now();
  for (let r = 0; r < reps; r++) {
    const fresh = buf.add(Array.from({ length: newPer }, (_, i) => ({ key: `n${r}-${i}`, image: new Uint8Array(1) })));
    for (let k = 0; k < learner.cfg.updates; k++) {
      const batch = [...fresh, ...buf.sample(rng, b - newPer, new Set(fresh.map((e) => e.id)))];
      await buf.updateFeatures(batch, Float32Array.from({ length: b * d }, () => rng.normal()));
    }
    await buf.shrink(rng);
  }
  scale.push({ M, buildMs, msPerArrival: (performance.now() - t) / reps });
}
console.log(`\nbuffer update + removal per arrival (d = ${d}, ${learner.cfg.updates} x ${b} feature updates, ${newPer} removals)\n| M | ms per arrival | index build (resume) ms |\n|---|---|---|`);
for (const s of scale) console.log(`| ${s.M} | ${s.msPerArrival.toFixed(1)} | ${s.buildMs.toFixed(0)} |`);
mkdirSync(path.dirname(values.json), { recursive: true });
writeFileSync(values.json, JSON.stringify({ machine: { cores: cpus().length, cpu: cpus()[0]?.model, node: process.version, date: new Date().toISOString() }, preset: tr.manifest.name, ep: tr.ep, trainedArrivals, rows, checkpointMs: ckMs, exportMs: exMs, removal: scale }, null, 1) + '\n');
console.log(`wrote ${values.json}`);
await tr.close();
rmSync(work, { recursive: true, force: true });
