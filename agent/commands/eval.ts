// `ssocl eval MODEL.onnx --dataset cifar10|cifar100`: kNN accuracy of an exported encoder (CIFAR's
// 32x32 images resized to the model's input size where it takes another, e.g. an imported model).

import path from 'node:path';
import { readCifar10, readCifar100, type LabelledImages } from '../../core/codecs/cifar.ts';
import { openEncoder, computeFeatures, resizedImages } from '../eval/features.ts';
import { knnWeightedBlocks, knnUniformEuclidean, type KnnResult } from '../eval/knn.ts';
import { ortSimilarity } from '../buffer/similarity.ts';
import { openChosen, type EP, type EpChoice } from '../trainer/backend.ts';
import { Rng } from '../../core/rng.ts';
import { asEncoder, modelInfo } from '../../core/onnx/model.ts';
import { readImageFolder } from '../eval/folder.ts';
import { readFileSync } from 'node:fs';

/** Input side of an exported encoder (images [B, 3, S, S]). */
function modelSize(file: string): number {
  const d = modelInfo(asEncoder(readFileSync(file))).inputs.find((i) => i.name === 'images')?.dims[2];
  if (typeof d !== 'number') throw new Error(`${file}: not an ssocl encoder (needs an input 'images' of shape [batch, 3, S, S])`);
  return d;
}

export interface EvalArgs {
  model: string;
  dataset: 'cifar10' | 'cifar100';
  /** Instead of the dataset: a labelled image folder (see eval/folder.ts). */
  folder?: string;
  dataDir: string;
  protocol: 'weighted' | 'scale';
  k: number[];
  threads?: number;
  /** Execution provider of the features and the kNN similarities (default cpu), and its explicit fallback. */
  ep?: EP;
  epFallback?: EP;
  seed: number;
  limitTrain?: number;
  limitTest?: number;
}

function bar(label: string) {
  const tty = process.stderr.isTTY;
  let last = -1;
  return (done: number, total: number) => {
    const pct = Math.floor((100 * done) / total);
    if (pct === last) return;
    last = pct;
    if (tty) process.stderr.write(`\r${label}: ${'#'.repeat(pct / 4).padEnd(25)} ${pct}% (${done}/${total})`);
    else if (pct % 25 === 0) process.stderr.write(`${label}: ${pct}%\n`);
    if (tty && done === total) process.stderr.write('\n');
  };
}

function pick(n: number, count: number | undefined, rng: Rng): number[] {
  const idx = [...Array(n).keys()];
  if (!count || count >= n) return idx;
  for (let i = 0; i < count; i++) {
    const j = i + rng.int(n - i);
    [idx[i], idx[j]] = [idx[j], idx[i]];
  }
  return idx.slice(0, count);
}

export interface EvalReport {
  dataset: string;
  protocol: string;
  memory: number;
  queries: number;
  results: { labels: string; k: number; accuracy: number }[];
}

export async function evaluate(a: EvalArgs): Promise<EvalReport> {
  const read = (split: 'train' | 'test'): LabelledImages =>
    a.dataset === 'cifar10' ? readCifar10(path.join(a.dataDir, 'cifar-10-batches-bin'), split) : readCifar100(path.join(a.dataDir, 'cifar-100-binary'), split);
  const size = modelSize(a.model);
  let train: LabelledImages;
  let test: LabelledImages;
  let name: string = a.dataset;
  if (a.folder) {
    const f = await readImageFolder(a.folder, { size, fit: 'cover', maxPixels: 40_000_000, onBad: (file, why) => process.stderr.write(`left out ${file}: ${why}\n`) });
    ({ train, test } = f);
    name = `${a.folder} (${train.classes.length} classes; ${f.split})`;
  } else {
    train = read('train');
    test = read('test');
  }
  const rng = new Rng(a.seed);
  // SCALE's protocol: 1000 (CIFAR-10) / 5000 (CIFAR-100) random train images as memory, 5000 test queries.
  const memIdx = pick(train.count, a.protocol === 'scale' ? (a.dataset === 'cifar10' && !a.folder ? 1000 : 5000) : a.limitTrain, rng);
  const qIdx = pick(test.count, a.protocol === 'scale' ? 5000 : a.limitTest, rng);
  const choice: EpChoice = { ep: a.ep, epFallback: a.epFallback, threads: a.threads };
  const model = await openEncoder(a.model, size, choice);
  // CIFAR at the model's size (an imported model trains at its own --input-size; `run --dataset` resizes the same way).
  const [trainAt, testAt] = a.folder || size === 32 ? [{ images: train.images, idx: memIdx }, { images: test.images, idx: qIdx }] : [await resizedImages(train.images, memIdx, 32, size), await resizedImages(test.images, qIdx, 32, size)];
  const mem = await computeFeatures(model, trainAt.images, trainAt.idx, size, 500, bar('train features'));
  const qs = await computeFeatures(model, testAt.images, testAt.idx, size, 500, bar('test features'));
  await model.close();
  const labelSets: [string, LabelledImages['labels'], LabelledImages['labels'], number][] = [[a.folder || a.dataset === 'cifar10' ? 'class' : 'fine', train.labels, test.labels, train.classes.length]];
  if (!a.folder && a.dataset === 'cifar100') labelSets.push(['superclass', train.coarse!, test.coarse!, 20]);
  const results: EvalReport['results'] = [];
  for (const [name, trL, teL, classes] of labelSets) {
    const input = {
      memory: mem,
      memoryLabels: memIdx.map((i) => trL[i]),
      queries: qs,
      queryLabels: qIdx.map((i) => teL[i]),
      d: model.dim,
      classes,
    };
    const rs: KnnResult[] = a.protocol === 'weighted' ? await knnWeightedBlocks(await ortSimilarity((m) => openChosen(m, choice)), input, a.k) : [knnUniformEuclidean(input, 50)];
    for (const r of rs) results.push({ labels: name, k: r.k, accuracy: r.accuracy });
  }
  return { dataset: name, protocol: a.protocol, memory: memIdx.length, queries: qIdx.length, results };
}

export async function evalCommand(a: EvalArgs): Promise<void> {
  const r = await evaluate(a);
  process.stdout.write(`kNN (${r.protocol}) of ${a.model} on ${r.dataset}: memory ${r.memory} train images, ${r.queries} test queries\n`);
  process.stdout.write('| labels | k | accuracy % |\n|---|---|---|\n');
  for (const x of r.results) process.stdout.write(`| ${x.labels} | ${x.k} | ${x.accuracy.toFixed(2)} |\n`);
}
