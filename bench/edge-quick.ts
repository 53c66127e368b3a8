// bench/edge-quick: a short learning-quality probe of one configuration on the edge: train through the
// learner on a shuffled CIFAR-10 train stream for --seconds, then weighted kNN (k 20) of backbone
// features, with the same-seed random-init floor beside it. For choosing defaults, not for the paper table.
//   node --import tsx bench/edge-quick.ts [--seconds 90] [--set key=value ...] [--label NAME]

import { mkdtempSync, rmSync, appendFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { getPreset } from '../tools/artifacts/presets.ts';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { readCifar10 } from '../core/codecs/cifar.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { Learner, defaultLearnerConfig } from '../agent/trainer/learner.ts';
import { computeFeatures } from '../agent/eval/features.ts';
import { knnWeighted } from '../agent/eval/knn.ts';
import { Rng } from '../core/rng.ts';
import { benchArgs } from './args.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const values = benchArgs(import.meta.url, {
  seconds: { type: 'string', default: '90', describe: 'training time' },
  set: { type: 'string', multiple: true, default: [], describe: 'learner setting key=value (repeatable)' },
  updates: { type: 'string', describe: 'minibatch updates per arrival' },
  label: { type: 'string', default: 'run', describe: 'name of the row' },
  data: { type: 'string', default: path.resolve(HERE, '../../shared/data/cifar-10-batches-bin'), describe: 'CIFAR-10 binary folder' },
  out: { type: 'string', default: path.join(HERE, 'out/edge-quick.jsonl'), describe: 'results, one JSON line per run' },
});
const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-quick-'));
writeArtifacts(compileArtifacts(getPreset('edge', values.set)), path.join(dir, 'a'));
const tr = await Trainer.open(path.join(dir, 'a'));
const learner = new Learner(tr, defaultLearnerConfig(tr, values.updates ? { updates: Number(values.updates) } : {}));
const train = readCifar10(values.data, 'train');
const test = readCifar10(values.data, 'test');
const rng = new Rng(7);
const perm = [...Array(train.count).keys()];
for (let i = perm.length - 1; i > 0; i--) {
  const j = rng.int(i + 1);
  [perm[i], perm[j]] = [perm[j], perm[i]];
}
// kNN: memory = 5000 training images not in the stream's first 20000, queries = 2000 test images.
const memIdx = perm.slice(45000, 50000);
const qIdx = [...Array(2000).keys()].map((i) => i * 5);
const feats = async () => {
  const m = { dim: tr.manifest.preset.encoder.widths.at(-1)!, run: async (x: Float32Array, c: number) => (await tr.embed(x, c)).features, close: async () => {} };
  const fm = await computeFeatures(m, train.images, memIdx, 32);
  const fq = await computeFeatures(m, test.images, qIdx, 32);
  return (await knnWeighted({ memory: fm, memoryLabels: memIdx.map((i) => train.labels[i]), queries: fq, queryLabels: qIdx.map((i) => test.labels[i]), d: m.dim, classes: 10 }, [20]))[0].accuracy;
};
const floor = await feats();
const b = tr.manifest.preset.agent.newPerArrival;
const t0 = Date.now();
let pos = 0;
let last = 0;
while (Date.now() - t0 < Number(values.seconds) * 1000) {
  const items = perm.slice(pos, pos + b).map((i) => ({ key: String(i), image: train.images.subarray(i * 3072, (i + 1) * 3072) }));
  pos += b;
  const r = await learner.arrive(items);
  if (r.steps.length) last = r.steps[r.steps.length - 1].loss;
}
const acc = await feats();
const row = { label: values.label, set: values.set, updates: learner.cfg.updates, seconds: Number(values.seconds), frames: pos, steps: tr.steps, lastLoss: last, knn20: acc, floor, gain: acc - floor };
console.log(JSON.stringify(row));
mkdirSync(path.dirname(values.out), { recursive: true });
appendFileSync(values.out, JSON.stringify(row) + '\n');
await tr.close();
rmSync(dir, { recursive: true, force: true });
