// bench/agent: where an arrival's time goes in the agent's loop (decode, augment, train, buffer,
// checkpoint, export) on the demo stream, the cost of the buffer's removal rule as M grows, and the
// paper-cifar arrival (200 images, 20 crops, K = 10) as K single steps with JS crops against one fused
// run with in-graph crops: host ms outside run() and bytes crossing into and out of ORT per arrival.
// Prints tables, writes JSON.  node --import tsx bench/agent.ts [--arrivals 30] [--artifacts DIR]

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
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
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { buildTrainStep } from '../tools/artifacts/build.ts';
import { getPreset } from '../tools/artifacts/presets.ts';

/** Bytes of a tensor of this shape, a symbolic dimension taken as `symbolic`. */
function bytesOf(shape: (number | string)[], dtype: string, symbolic: number): number {
  const size: Record<string, number> = { float32: 4, float64: 8, int64: 8, uint8: 1 };
  return shape.reduce<number>((x, d) => x * (typeof d === 'number' ? d : symbolic), 1) * size[dtype];
}

const HERE = path.dirname(fileURLToPath(import.meta.url));
const values = benchArgs(import.meta.url, {
  arrivals: { type: 'string', default: '30', describe: 'arrivals timed through the agent loop' },
  artifacts: { type: 'string', default: path.join(HERE, '../training-artifacts/edge'), describe: 'training artifacts to run' },
  json: { type: 'string', default: path.join(HERE, 'out/agent.json'), describe: 'results' },
  sizes: { type: 'string', default: '256,2048,16384', describe: 'buffer sizes M for the removal-rule timing' },
  'fused-arrivals': { type: 'string', default: '1', describe: 'trained paper-cifar-shape arrivals per variant (single steps, fused); 0 skips' },
  'fused-encoder': {
    type: 'string',
    // ResNet-18 (and even the edge encoder: ~100 s a step) at 4,000 crops a step is too slow on 2 cores;
    // what is measured (host work, bytes) does not depend on the encoder, but the state bytes do, so
    // ResNet-18's are computed from its graphs.
    // The projector keeps paper-cifar's 1024-d output: zbar's size sets the buffer's work.
    default: 'encoder.widths=[4] encoder.blocks=[1] projector=[{"out":1024}]',
    describe: '--set overrides (space-separated) that shrink the paper-cifar preset for the timed arrivals',
  },
  'stub-arrivals': { type: 'string', default: '0', describe: "paper-cifar-shape arrivals through the fused in-graph-crops Learner with the graph run replaced by an idle wait (--stub-wait-ms) and random zbar: the host code outside run() alone, in steady state, as on a machine whose accelerator does the run (the first 5 arrivals warm V8 up and are left out); 0 skips" },
  'stub-wait-ms': { type: 'string', default: '500', describe: 'the idle wait standing in for the run, per stub arrival' },
  'fused-variants': { type: 'string', default: 'single,graph', describe: 'timed variants: single (K steps, JS crops), fused (one run, JS crops), graph (one run, in-graph crops)' },
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
  meta: { version: CHECKPOINT_VERSION, artifact: 'bench', steps: tr.steps, arrivals: learner.arrivals, framesIngested: frame, rng: learner.rng.state, cropRng: learner.cropRng.state, buffer: { nextId: snap.nextId, streamCount: snap.streamCount, entries: snap.entries.map(({ image: _i, feature: _f, fresh: _r, ...r }) => r), hasFeature: snap.entries.map((e) => !!e.feature), hasFresh: snap.entries.map((e) => !!e.fresh) }, counters: {}, time: '' },
  state: tr.state,
  images: snap.entries.map((e) => e.image),
  features: snap.entries.map((e) => e.feature),
  // Ours' kept embeddings (diverse-strata-rolling), as a run's checkpoint holds them.
  fresh: snap.entries.map((e) => e.fresh ?? null),
});
const ckMs = performance.now() - t0;
t0 = performance.now();
const per = 3 * size * size;
await exportEncoder(tr, path.join(work, 'models'), { framesSeen: frame, loss: null, probe: new Float32Array(per).fill(0.5), probeCount: 1 });
const exMs = performance.now() - t0;
const arrival = tot.decode + tot.augment + tot.train + tot.buffer;
const rows = Object.entries({ decode: tot.decode, augment: tot.augment, train: tot.train, buffer: tot.buffer }).map(([k, v]) => ({ part: k, msPerArrival: v / trainedArrivals, share: v / arrival }));
// --arrivals 0 skips the loop (to time only the arrival shapes below).
if (trainedArrivals > 0) {
  console.log(`agent loop, ${tr.manifest.name} on ${tr.ep}, ${trainedArrivals} trained arrivals of ${newPer} frames, K=${learner.cfg.updates}`);
  console.log('| part | ms per arrival | share |\n|---|---|---|');
  for (const r of rows) console.log(`| ${r.part} | ${r.msPerArrival.toFixed(1)} | ${(100 * r.share).toFixed(1)}% |`);
  console.log(`| non-train total | ${((arrival - tot.train) / trainedArrivals).toFixed(1)} | ${(100 * (1 - tot.train / arrival)).toFixed(1)}% |`);
  console.log(`(augmentation done while a step ran, inside train: ${(tot.overlapped / trainedArrivals).toFixed(1)} ms per arrival)`);
}
console.log(`checkpoint (buffer ${learner.buffer.size}): ${ckMs.toFixed(0)} ms per write; export incl. check: ${exMs.toFixed(0)} ms per export`);

// The removal rule as M grows: one arrival's worth of feature updates (K steps x batch) plus the removals.
const d = tr.manifest.trainStep.outputs.find((o) => o.name === 'zbar')!.shape[1] as number;
const b = tr.manifest.trainStep.crops.images;
const scale: { M: number; buildMs: number; msPerArrival: number; buildRows: number; rowsPerArrival: number }[] = [];
for (const M of values.sizes.split(',').map(Number)) {
  const rng = new Rng(1);
  const buf = new ReplayBuffer({ capacity: M, policy: 'diverse', alpha: 0.5 }, engine);
  const fill = buf.add(Array.from({ length: M }, (_, i) => ({ key: String(i), image: new Uint8Array(1) })));
  // Building the index from scratch (what a resume from a checkpoint does) is O(M^2 d): the features,
  // then the flush that indexes them (updateFeatures alone only marks them; timing it without the
  // flush left the build inside the first timed arrival, a fifth of the per-arrival figure).
  const tb = performance.now();
  await buf.updateFeatures(fill, Float32Array.from({ length: M * d }, () => rng.normal()));
  await buf.flush();
  const buildMs = performance.now() - tb;
  const buildDots = buf.similarityWork;
  const arrive = async (r: number) => {
    const fresh = buf.add(Array.from({ length: newPer }, (_, i) => ({ key: `n${r}-${i}`, image: new Uint8Array(1) })));
    for (let k = 0; k < learner.cfg.updates; k++) {
      const batch = [...fresh, ...buf.sample(rng, b - newPer, new Set(fresh.map((e) => e.id)))];
      await buf.updateFeatures(batch, Float32Array.from({ length: b * d }, () => rng.normal()));
    }
    await buf.shrink(rng);
  };
  await arrive(-1); // warm-up (V8, ORT's first run at this shape)
  const reps = 10;
  const dots0 = buf.similarityWork;
  const t = performance.now();
  for (let r = 0; r < reps; r++) await arrive(r);
  // Work as similarity rows of width M: a rebuild is M of them; an arrival should be a constant count.
  scale.push({ M, buildMs, msPerArrival: (performance.now() - t) / reps, buildRows: buildDots / M, rowsPerArrival: (buf.similarityWork - dots0) / reps / M });
}
console.log(`\nbuffer update + removal per arrival (d = ${d}, ${learner.cfg.updates} x ${b} feature updates, ${newPer} removals; load ${loadavg()[0].toFixed(1)})\n| M | ms per arrival | similarity rows per arrival | index build (resume) ms | build rows |\n|---|---|---|---|---|`);
for (const s of scale) console.log(`| ${s.M} | ${s.msPerArrival.toFixed(1)} | ${s.rowsPerArrival.toFixed(0)} | ${s.buildMs.toFixed(0)} | ${s.buildRows.toFixed(0)} |`);

// The paper-cifar arrival: K single steps with JS crops (state and crops cross K times) against one
// fused run with in-graph crops (state once; uint8 images, the batch index and the crop draws).
const fusedArrivals = Number(values['fused-arrivals']);
const stubN = Number(values['stub-arrivals']);
const arrivalShape: Record<string, unknown>[] = [];
let stub: Record<string, unknown> & { arrivals: number; waitMs: number; hostMs: number; crops: number; buffer: number; p50: number; max: number; firstFive: number[] } | null = null;
if (fusedArrivals > 0 || stubN > 0) {
  const shrink = values['fused-encoder'].split(' ').filter(Boolean);
  const K = getPreset('paper-cifar').agent.updatesPerArrival;
  const known = {
    single: { name: 'K single steps, JS crops', sets: shrink },
    fused: { name: 'fused, JS crops', sets: [...shrink, `fuse=${K}`] },
    graph: { name: 'fused, in-graph crops', sets: [...shrink, `fuse=${K}`, 'cropsInGraph=true'] },
  };
  const variants = (fusedArrivals > 0 ? values['fused-variants'].split(',').filter(Boolean) : []).map((v) => {
    if (!(v in known)) throw new Error(`--fused-variants ${v}: unknown (accepted: ${Object.keys(known).join(', ')})`);
    return known[v as keyof typeof known];
  });
  for (const v of variants) {
    const dir = path.join(work, `arrival-${arrivalShape.length}`);
    writeArtifacts(compileArtifacts(getPreset('paper-cifar', v.sets)), dir);
    const t = await Trainer.open(dir, { noEmbed: true });
    const l = new Learner(t, defaultLearnerConfig(t), engine);
    const p = t.manifest.preset;
    const per = 3 * p.image.size * p.image.size;
    const runs: { wall: number; cpu: number; run: number; runCpu: number; hidden: number; augment: number; buffer: number; bytesIn: number; bytesOut: number; runs: number; steps: number }[] = [];
    for (let a = 0, k = 0; runs.length < fusedArrivals; a++) {
      const items = Array.from({ length: p.agent.newPerArrival }, () => {
        const i = order[k++ % order.length];
        return { key: String(k), image: images.slice(i * per, (i + 1) * per) };
      });
      const io0 = { ...t.io };
      const t0 = performance.now();
      const c0 = process.cpuUsage();
      const r = await l.arrive(items);
      const wall = performance.now() - t0;
      const c = process.cpuUsage(c0);
      if (!r.trained) continue; // the first arrival only fills the buffer
      runs.push({ wall, cpu: (c.user + c.system) / 1000, run: t.io.runMs - io0.runMs, runCpu: t.io.runCpuMs - io0.runCpuMs, hidden: r.ms.overlapped, augment: r.ms.augment, buffer: r.ms.buffer, bytesIn: t.io.bytesIn - io0.bytesIn, bytesOut: t.io.bytesOut - io0.bytesOut, runs: t.io.runs - io0.runs, steps: r.steps.length });
    }
    // The first trained arrival runs the host code cold (V8 has not compiled it yet): it is reported
    // apart, and the means are over the later arrivals when there are any (an agent's steady state).
    const first = runs[0];
    const warm = runs.length > 1 ? runs.slice(1) : runs;
    const mean = (f: (r: (typeof runs)[number]) => number) => warm.reduce((x, r) => x + f(r), 0) / warm.length;
    const fused = t.manifest.trainStep.fused;
    // The distinct images that crossed: what the run's bytes hold beyond the inputs of fixed size.
    const fixedIn = t.manifest.trainStep.inputs.filter((i) => i.name !== fused?.images?.name).reduce((x, i) => x + bytesOf(i.shape, i.dtype, 0), 0);
    const distinct = fused?.images ? (mean((r) => r.bytesIn) - fixedIn) / per : null;
    arrivalShape.push({
      variant: v.name,
      encoder: v.sets.filter((x) => !x.startsWith('fuse') && !x.startsWith('crops')).join(' '),
      arrivals: runs.length,
      meanOver: runs.length > 1 ? 'trained arrivals after the first' : 'the one trained arrival (cold)',
      firstArrival: { hostMsOutsideRun: first.wall - first.run, hostMsParts: { crops: first.augment, buffer: first.buffer, trainer: first.wall - first.run - first.augment - first.buffer } },
      perArrivalHostMs: runs.map((r) => +(r.wall - r.run).toFixed(1)),
      updates: mean((r) => r.steps),
      ortRuns: mean((r) => r.runs),
      hostMsOutsideRun: mean((r) => r.wall - r.run),
      // Process CPU (every thread) outside run(): the wall figure inflates when other work shares the cores.
      hostCpuMsOutsideRun: mean((r) => r.cpu - r.runCpu),
      hostMsHiddenUnderRun: mean((r) => r.hidden),
      // Outside run(): crops or draws before the first run, buffer (add, features, removal), and the rest
      // (feeds, reading outputs, the host guard of single steps).
      hostMsParts: { crops: mean((r) => r.augment), buffer: mean((r) => r.buffer), trainer: mean((r) => r.wall - r.run - r.augment - r.buffer) },
      runMs: mean((r) => r.run),
      bytesIn: mean((r) => r.bytesIn),
      bytesOut: mean((r) => r.bytesOut),
      distinctImages: distinct,
    });
    await t.close();
  }
  // The host code alone: the same Learner and buffer, the run replaced by an idle wait and a random
  // zbar of the run's shape (made inside the stub, so outside the timed host work).
  if (stubN > 0) {
    const dir = path.join(work, 'stub');
    writeArtifacts(compileArtifacts(getPreset('paper-cifar', [...shrink, `fuse=${K}`, 'cropsInGraph=true'])), dir);
    const t = await Trainer.open(dir, { noEmbed: true });
    const l = new Learner(t, defaultLearnerConfig(t), engine);
    const p = t.manifest.preset;
    const per = 3 * p.image.size * p.image.size;
    const zr = new Rng(9);
    const d = t.manifest.trainStep.outputs.find((o) => o.name === 'zbar')?.shape.at(-1) as number;
    t.arrive = async (a) => {
      await new Promise((r) => setTimeout(r, Number(values['stub-wait-ms'])));
      return Array.from(a.lrs, (lr, i) => {
        const zbar = new Float32Array(p.batch * d);
        for (let j = 0; j < zbar.length; j++) zbar[j] = zr.uniform() - 0.5;
        return { step: t.steps + i + 1, lr, loss: 1, terms: {}, zbar, gradNorm: 1, gradCos: null, applied: true, ms: 0 };
      });
    };
    const host: { ms: number; crops: number; buffer: number }[] = [];
    for (let a = 0, k = 0; host.length < stubN + 5; a++) {
      const items = Array.from({ length: p.agent.newPerArrival }, () => {
        const i = order[k++ % order.length];
        return { key: String(k), image: images.slice(i * per, (i + 1) * per) };
      });
      const r = await l.arrive(items);
      if (!r.trained) continue;
      // Everything but the stub's wait and its zbar making: crops or draws, buffer, the rest of the trainer's side.
      host.push({ ms: r.ms.augment + r.ms.buffer, crops: r.ms.augment, buffer: r.ms.buffer });
    }
    await t.close();
    const warmHost = host.slice(5);
    const m = (f: (h: (typeof host)[number]) => number) => warmHost.reduce((x, h) => x + f(h), 0) / warmHost.length;
    const sorted = warmHost.map((h) => h.ms).sort((a, b) => a - b);
    stub = { arrivals: warmHost.length, waitMs: Number(values['stub-wait-ms']), hostMs: m((h) => h.ms), crops: m((h) => h.crops), buffer: m((h) => h.buffer), p50: sorted[Math.floor(sorted.length / 2)], max: sorted.at(-1)!, firstFive: host.slice(0, 5).map((h) => +h.ms.toFixed(1)) };
    console.log(`\nhost code alone (run replaced by a ${stub.waitMs} ms idle wait; ${stub.arrivals} arrivals after 5 warm-up ones): ${stub.hostMs.toFixed(1)} ms per arrival (draws ${stub.crops.toFixed(1)}, buffer ${stub.buffer.toFixed(1)}; median ${stub.p50.toFixed(1)}, max ${stub.max.toFixed(1)}); the 5 warm-up arrivals: ${stub.firstFive.join(', ')}`);
  }
  // ResNet-18 (the paper-cifar preset itself) moves far more state: its bytes per arrival from its
  // graphs' inputs and outputs, with the distinct images a fused run above sent (else the most mixed
  // replay can send at M = 256: 100 new + 256 others).
  const u = (arrivalShape.find((r) => r.distinctImages !== null)?.distinctImages as number | undefined) ?? 356;
  const crossing = (sets: string[], runsPerArrival: number) => {
    const g = buildTrainStep(getPreset('paper-cifar', sets)).g;
    const sum = (vs: typeof g.inputs) => vs.reduce((x, i) => x + bytesOf(i.shape, i.dtype, u), 0);
    return { bytesIn: runsPerArrival * sum(g.inputs), bytesOut: runsPerArrival * sum(g.outputs) };
  };
  // The same count for the shrunk encoder must give what the Trainer measured.
  variants.forEach((v, i) => {
    const c = crossing(v.sets, v.sets.some((x) => x.startsWith('fuse')) ? 1 : K);
    const m = arrivalShape[i];
    if (c.bytesIn !== m.bytesIn || c.bytesOut !== m.bytesOut) console.log(`warning: ${v.name}: graph shapes give ${c.bytesIn} + ${c.bytesOut} bytes, the Trainer counted ${m.bytesIn} + ${m.bytesOut}`);
  });
  const r18 = [
    { variant: 'K single steps, JS crops', ...crossing([], K) },
    { variant: 'fused, JS crops', ...crossing([`fuse=${K}`], 1) },
    { variant: 'fused, in-graph crops', ...crossing([`fuse=${K}`, 'cropsInGraph=true'], 1) },
  ];
  const mb = (b: number) => (b / 1e6).toFixed(1);
  console.log(`\npaper-cifar arrival (${getPreset('paper-cifar').batch} images x ${getPreset('paper-cifar').crops} crops, K = ${K}), timed with the encoder shrunk (${values['fused-encoder']}); load average ${loadavg()[0].toFixed(1)}`);
  console.log(`host work is the mean over the trained arrivals after the first (${fusedArrivals > 1 ? 'warm' : 'only one: cold'}); the first, cold, in its own column`);
  console.log('| variant | ORT runs | host ms outside run() (wall / CPU) | first arrival (cold) | of which crops or draws / buffer / trainer (wall) | JS crops hidden under run() ms | run() ms | MB into ORT | MB out of ORT | in + out vs the first |\n|---|---|---|---|---|---|---|---|---|---|');
  const before = arrivalShape.length ? (arrivalShape[0].bytesIn as number) + (arrivalShape[0].bytesOut as number) : 0;
  for (const r of arrivalShape) {
    const n = (k: string) => r[k] as number;
    const parts = r.hostMsParts as Record<string, number>;
    console.log(`| ${r.variant} | ${n('ortRuns')} | ${n('hostMsOutsideRun').toFixed(0)} / ${n('hostCpuMsOutsideRun').toFixed(0)} | ${(r.firstArrival as { hostMsOutsideRun: number }).hostMsOutsideRun.toFixed(0)} | ${parts.crops.toFixed(0)} / ${parts.buffer.toFixed(0)} / ${parts.trainer.toFixed(0)} | ${n('hostMsHiddenUnderRun').toFixed(0)} | ${n('runMs').toFixed(0)} | ${mb(n('bytesIn'))} | ${mb(n('bytesOut'))} | ${(before / (n('bytesIn') + n('bytesOut'))).toFixed(1)}x less |`);
  }
  console.log(`\nResNet-18 (paper-cifar as built, not run): bytes per arrival from the graphs' inputs and outputs (${u.toFixed(0)} distinct images)\n| variant | MB into ORT | MB out of ORT | in + out vs before |\n|---|---|---|---|`);
  for (const r of r18) console.log(`| ${r.variant} | ${mb(r.bytesIn)} | ${mb(r.bytesOut)} | ${((r18[0].bytesIn + r18[0].bytesOut) / (r.bytesIn + r.bytesOut)).toFixed(1)}x less |`);
  arrivalShape.push(...r18.map((r) => ({ ...r, encoder: 'resnet18-cifar (computed)' })));
}

mkdirSync(path.dirname(values.json), { recursive: true });
writeFileSync(values.json, JSON.stringify({ machine: { cores: cpus().length, cpu: cpus()[0]?.model, node: process.version, date: new Date().toISOString() }, preset: tr.manifest.name, ep: tr.ep, trainedArrivals, rows, checkpointMs: ckMs, exportMs: exMs, removal: scale, arrivalShape, hostCodeAlone: stub }, null, 1) + '\n');
console.log(`wrote ${values.json}`);
await tr.close();
rmSync(work, { recursive: true, force: true });
