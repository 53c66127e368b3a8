// bench/byom-pretrained: does a pretrained start help, once brought in through `ssocl artifacts
// --from-onnx` (issue #32)? Per trial: the edge preset's encoder is pretrained by the agent's Learner on a
// shuffled stream of CIFAR-10 classes 0-4 and exported by the agent's export (an ONNX encoder file); the
// same preset's untrained encoder is exported the same way (its random init, agent/export initialEncoder).
// Both files are imported by compileFromOnnx (the function behind --from-onnx; same options, same seed,
// so the same fresh projector), then each learns the same class-incremental stream of classes 5-9 (the
// same images, order, crops and replay seeds, the same number of steps: equal compute). Weighted kNN
// (k 20) of the imported model's features is measured on the new classes (5-9) and on the old ones
// (0-4: forgetting) at 0/25/50/75/100% of the stream; each class group is its own 5-way kNN (memory:
// train images outside every stream, queries: test images). Prints the table of means, the paired
// differences (pretrained - random) and writes every row to --json. The agent's export writes BN as
// arithmetic on the running statistics (inference form), so the imports have no BN layer and train those
// statistics as weights unless --train leaves them out (e.g. --train '^(?!buffers\.)').
//
//   node --import tsx bench/byom-pretrained.ts [--trials 0,1,2] [--pretrain-per-class 200]
//        [--per-class 160] [--updates 2] [--memory-per-class 150] [--queries-per-class 150]

import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { getPreset } from '../tools/artifacts/presets.ts';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { compileFromOnnx } from '../tools/import/artifacts.ts';
import { readCifar10, type LabelledImages } from '../core/codecs/cifar.ts';
import { Rng } from '../core/rng.ts';
import { writeFileAtomic } from '../core/atomic.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { Learner, defaultLearnerConfig } from '../agent/trainer/learner.ts';
import { exportEncoder, initialEncoder } from '../agent/export/export.ts';
import { computeFeatures } from '../agent/eval/features.ts';
import { knnWeighted } from '../agent/eval/knn.ts';
import { benchArgs } from './args.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const values = benchArgs(import.meta.url, {
  trials: { type: 'string', default: '0,1,2', describe: 'paired trials (each its own seed: pretraining, init, stream order, crops, replay)' },
  'pretrain-per-class': { type: 'string', default: '200', describe: 'pretraining stream: train images per class of 0-4' },
  'per-class': { type: 'string', default: '160', describe: 'the stream both arms learn: train images per class of 5-9' },
  updates: { type: 'string', default: '2', describe: 'minibatch updates per arrival (pretraining and stream)' },
  'memory-per-class': { type: 'string', default: '150', describe: 'kNN memory: train images per class, none of them in a stream' },
  'queries-per-class': { type: 'string', default: '150', describe: 'kNN queries: test images per class' },
  // The agent's exported encoder computes BN from its running statistics (no BatchNormalization node), so
  // the import sees them as weights: 'all' trains them by gradient too; '^(?!buffers\.)' keeps them fixed.
  train: { type: 'string', default: 'all', describe: "what the imports train (--from-onnx --train): all, last:N or a regular expression over weight names" },
  threads: { type: 'string', default: '2', describe: 'ORT threads per training session' },
  data: { type: 'string', default: path.resolve(HERE, '../../shared/data/cifar-10-batches-bin'), describe: 'the CIFAR-10 binary folder' },
  json: { type: 'string', default: path.join(HERE, 'results/byom-pretrained.json'), describe: 'where the rows are written (JSON, replaced at the end of each trial)' },
});

const whole = (flag: string, v: string, min = 1): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) {
    console.error(`bench/byom-pretrained: --${flag} ${v}: a whole number >= ${min}`);
    process.exit(2);
  }
  return n;
};
const trials = values.trials.split(',').map((t) => whole('trials', t, 0));
const preN = whole('pretrain-per-class', values['pretrain-per-class']);
const streamN = whole('per-class', values['per-class']);
const updates = whole('updates', values.updates);
const memN = whole('memory-per-class', values['memory-per-class']);
const qN = whole('queries-per-class', values['queries-per-class']);
const threads = whole('threads', values.threads);

let train: LabelledImages, test: LabelledImages;
try {
  train = readCifar10(values.data, 'train');
  test = readCifar10(values.data, 'test');
} catch (e) {
  console.error(`bench/byom-pretrained: ${(e as Error).message}`);
  process.exit(2);
}
const SIZE = 32;
const PER = 3 * SIZE * SIZE;
const OLD = [0, 1, 2, 3, 4];
const NEW = [5, 6, 7, 8, 9];
if (preN + memN > 5000 || streamN + memN > 5000) {
  console.error('bench/byom-pretrained: --pretrain-per-class or --per-class plus --memory-per-class is over the 5000 train images of a class');
  process.exit(2);
}

const shuffled = <T>(xs: T[], rng: Rng): T[] => {
  const a = [...xs];
  for (let i = a.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
};
const byClass = (d: LabelledImages, c: number) => [...Array(d.count).keys()].filter((i) => d.labels[i] === c);
// kNN sets, fixed for every trial: memory = the last memN train images of each class (the streams take
// from the front of a per-trial shuffle of the rest), queries = the first qN test images of each class.
const trainOf = Array.from({ length: 10 }, (_, c) => byClass(train, c));
const memory = trainOf.map((ix) => ix.slice(ix.length - memN));
const pool = trainOf.map((ix) => ix.slice(0, ix.length - memN));
const queries = Array.from({ length: 10 }, (_, c) => byClass(test, c).slice(0, qN));

interface Knn { old: number; new: number }
async function knn(tr: Trainer): Promise<Knn> {
  const m = { dim: tr.manifest.preset.encoder.widths.at(-1)!, run: async (x: Float32Array, c: number) => (await tr.embed(x, c)).features, close: async () => {} };
  const group = async (classes: number[]) => {
    const mi = classes.flatMap((c) => memory[c]);
    const qi = classes.flatMap((c) => queries[c]);
    const fm = await computeFeatures(m, train.images, mi, SIZE);
    const fq = await computeFeatures(m, test.images, qi, SIZE);
    return (await knnWeighted({ memory: fm, memoryLabels: mi.map((i) => train.labels[i]), queries: fq, queryLabels: qi.map((i) => test.labels[i]), d: m.dim, classes: 10 }, [20]))[0].accuracy;
  };
  return { old: await group(OLD), new: await group(NEW) };
}

const item = (i: number) => ({ key: String(i), image: train.images.subarray(i * PER, (i + 1) * PER) });

/** Learns `stream` through the Learner, measuring kNN at each mark (arrival counts); returns the run's figures. */
async function learn(tr: Trainer, stream: number[], seed: number, marks: number[] = []) {
  const learner = new Learner(tr, defaultLearnerConfig(tr, { updates, seed }));
  const newPer = tr.manifest.preset.agent.newPerArrival;
  const arrivals = Math.floor(stream.length / newPer);
  const at: Knn[] = [];
  let evalMs = 0;
  const t0 = performance.now();
  for (let a = 1; a <= arrivals; a++) {
    await learner.arrive(stream.slice((a - 1) * newPer, a * newPer).map(item));
    if (marks.includes(a)) {
      const te = performance.now();
      at.push(await knn(tr));
      evalMs += performance.now() - te;
    }
  }
  return { at, arrivals, steps: tr.steps, trainSeconds: (performance.now() - t0 - evalMs) / 1000 };
}

interface Arm { start: 'pretrained' | 'random'; before: Knn; old: number[]; new: number[]; steps: number; trainSeconds: number }
interface Row { trial: number; pretrain: { images: number; steps: number; seconds: number; knn: Knn }; stream: { images: number; arrivals: number }; arms: Arm[] }
const rows: Row[] = [];
const work = mkdtempSync(path.join(tmpdir(), 'byom-pretrained-'));
const log = (s: string) => process.stderr.write(`${s}\n`);
try {
  for (const trial of trials) {
    const rng = new Rng(1000 + trial);
    // 1. Pretraining: the edge preset on classes 0-4, shuffled; then the agent's export of it and of its init.
    const edgeDir = path.join(work, `edge-${trial}`);
    writeArtifacts(compileArtifacts(getPreset('edge', [`seed=${trial}`, 'gradCos=false'])), edgeDir);
    const pre = await Trainer.open(edgeDir, { threads });
    const preStream = shuffled(OLD.flatMap((c) => shuffled(pool[c], rng).slice(0, preN)), rng);
    const p = await learn(pre, preStream, trial);
    const preKnn = await knn(pre);
    log(`trial ${trial}: pretrained on ${preStream.length} images of classes 0-4, ${p.steps} steps, ${p.trainSeconds.toFixed(0)} s; kNN@20 old ${preKnn.old.toFixed(1)} new ${preKnn.new.toFixed(1)}`);
    const models = path.join(work, `models-${trial}`);
    mkdirSync(models);
    const probe = new Float32Array(8 * PER).map((_, k) => train.images[k] / 255);
    const exp = await exportEncoder(pre, models, { framesSeen: preStream.length, loss: null, probe, probeCount: 8 });
    await pre.close();
    const files = { pretrained: readFileSync(path.join(models, exp.file)), random: initialEncoder(edgeDir) };
    // 2.-3. Import each file the same way; both learn the same stream of classes 5-9 (seq: class by class).
    const stream = NEW.flatMap((c) => shuffled(pool[c], rng).slice(0, streamN));
    const newPer = getPreset('edge').agent.newPerArrival;
    const arrivals = Math.floor(stream.length / newPer);
    const marks = [0.25, 0.5, 0.75, 1].map((f) => Math.max(1, Math.round(f * arrivals)));
    const arms: Arm[] = [];
    for (const start of ['pretrained', 'random'] as const) {
      // The encoder's bound model takes [0, 1] images and normalises inside: mean 0, std 1 here. The
      // convolution gradients of the edge preset it came from (the import's default is for wide models).
      const { built } = compileFromOnnx(files[start], { train: values.train, feature: 'features', name: `edge-${start}`, set: [`seed=${trial}`, 'image.mean=[0,0,0]', 'image.std=[1,1,1]', 'convWeightGrad=batched-offsets', 'convInputGrad=conv', 'gradCos=false'] });
      const dir = path.join(work, `${start}-${trial}`);
      writeArtifacts(built, dir);
      const tr = await Trainer.open(dir, { threads });
      const before = await knn(tr);
      const r = await learn(tr, stream, 100 + trial, marks);
      await tr.close();
      arms.push({ start, before, old: r.at.map((k) => k.old), new: r.at.map((k) => k.new), steps: r.steps, trainSeconds: r.trainSeconds });
      log(`trial ${trial} ${start}: ${r.steps} steps, ${r.trainSeconds.toFixed(0)} s; kNN@20 new ${[before, ...r.at].map((k) => k.new.toFixed(1)).join(' ')}, old ${[before, ...r.at].map((k) => k.old.toFixed(1)).join(' ')}`);
    }
    rows.push({ trial, pretrain: { images: preStream.length, steps: p.steps, seconds: p.trainSeconds, knn: preKnn }, stream: { images: stream.length, arrivals }, arms });
    mkdirSync(path.dirname(values.json), { recursive: true });
    writeFileAtomic(values.json, JSON.stringify({ date: new Date().toISOString(), options: values, rows }, null, 1) + '\n');
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}

// The table: per mark, each arm's mean kNN and the paired difference (mean +- std over trials).
const stat = (xs: number[]) => {
  const m = xs.reduce((a, b) => a + b, 0) / xs.length;
  const sd = xs.length > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / (xs.length - 1)) : 0;
  return `${m.toFixed(1)} +- ${sd.toFixed(1)}`;
};
const arm = (r: Row, s: Arm['start']) => r.arms.find((a) => a.start === s)!;
const series = (r: Row, s: Arm['start'], g: 'old' | 'new') => [arm(r, s).before[g], ...arm(r, s)[g]];
console.log(`\n${rows.length} paired trial(s); kNN@20 (%), 5-way within each class group; marks: share of the classes 5-9 stream\n`);
console.log('| classes | mark | pretrained start | random init | pretrained - random (paired) |\n|---|---|---|---|---|');
for (const g of ['new', 'old'] as const) {
  ['0%', '25%', '50%', '75%', '100%'].forEach((mark, k) => {
    const pr = rows.map((r) => series(r, 'pretrained', g)[k]);
    const ra = rows.map((r) => series(r, 'random', g)[k]);
    console.log(`| ${g === 'new' ? 'new (5-9)' : 'old (0-4)'} | ${mark} | ${stat(pr)} | ${stat(ra)} | ${stat(pr.map((v, i) => v - ra[i]))} |`);
  });
}
console.log(`\nsteps per arm: ${rows.map((r) => r.arms.map((a) => a.steps).join('/')).join(', ')}; training seconds (pretrained/random): ${rows.map((r) => r.arms.map((a) => a.trainSeconds.toFixed(0)).join('/')).join(', ')}; pretraining seconds: ${rows.map((r) => r.pretrain.seconds.toFixed(0)).join(', ')}`);
console.log(`rows: ${values.json}`);
