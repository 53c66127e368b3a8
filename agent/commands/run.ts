// `ssocl run`: validate the flags, run the agent, print a summary.

import path from 'node:path';
import { fleetDeviceOptions } from './fleet.ts';
import { runAgent, parseEvery, AgentError, type AgentOptions, type DatasetStream } from '../run.ts';
import { openChosen, type EP } from '../trainer/backend.ts';
import { demoStream } from './demo.ts';
import { folderRoot, folderStream, perClassCut, streamOrder } from './stream.ts';
import { CIFAR_SIZE, readCifar10, readCifar100, type LabelledImages } from '../../core/codecs/cifar.ts';
import { readJsonObject } from '../../core/json.ts';
import { Rng } from '../../core/rng.ts';
import { ortSimilarity, type SimilarityEngine } from '../buffer/similarity.ts';
import { computeFeatures, resizedImages } from '../eval/features.ts';
import { knnWeightedBlocks } from '../eval/knn.ts';
import type { Trainer } from '../trainer/trainer.ts';
import { DEFAULT_METHOD, getMethod, methodRules } from '../methods.ts';
import { agentOutput } from './terminal.ts';

/** The labelled sets of --eval-every: train (memory) and test (queries) images of `size` px; CIFAR-100 adds superclasses. */
interface KnnSets {
  train: LabelledImages;
  test: LabelledImages;
  size: number;
}

function cifarSets(dataset: 'cifar10' | 'cifar100', dataDir: string): KnnSets {
  const read = (split: 'train' | 'test') => (dataset === 'cifar10' ? readCifar10(path.join(dataDir, 'cifar-10-batches-bin'), split) : readCifar100(path.join(dataDir, 'cifar-100-binary'), split));
  return { train: read('train'), test: read('test'), size: CIFAR_SIZE };
}

/**
 * kNN of the trainer's current encoder for --eval-every: weighted cosine kNN (k 20 and 50, T 0.07),
 * memory = `memory` random train images (seeded, the same every time), queries = the whole test split;
 * CIFAR-100 reports fine and superclass labels.
 */
function streamEvaluator(sets: KnnSets, memory: number): (t: Trainer) => Promise<Record<string, number>> {
  const { train, test, size } = sets;
  const rng = new Rng(12345);
  const mem = [...Array(train.count).keys()];
  for (let i = 0; i < Math.min(memory, mem.length); i++) {
    const j = i + rng.int(mem.length - i);
    [mem[i], mem[j]] = [mem[j], mem[i]];
  }
  mem.length = Math.min(memory, mem.length);
  const qs = [...Array(test.count).keys()];
  let engine: SimilarityEngine | null = null;
  // At the training size: CIFAR's 32 px images resized once, at the first evaluation, for artifacts that
  // train at another size (an imported model's --input-size), as the stream's own frames are.
  let sized: { size: number; mem: { images: Uint8Array; idx: number[] }; qs: { images: Uint8Array; idx: number[] } } | null = null;
  return async (t) => {
    // Opened at the first evaluation, on the EP the trainer runs on (after any fallback).
    const similarity = (engine ??= await ortSimilarity((m) => openChosen(m, { ep: t.ep })));
    const at = t.manifest.preset.image.size;
    sized ??= at === size ? { size, mem: { images: train.images, idx: mem }, qs: { images: test.images, idx: qs } } : { size: at, mem: await resizedImages(train.images, mem, size, at), qs: await resizedImages(test.images, qs, size, at) };
    const model = { dim: t.manifest.preset.encoder.widths.at(-1)!, run: async (x: Float32Array, c: number) => (await t.embed(x, c)).features, close: async () => {} };
    const fm = await computeFeatures(model, sized.mem.images, sized.mem.idx, at, 250);
    const fq = await computeFeatures(model, sized.qs.images, sized.qs.idx, at, 250);
    const out: Record<string, number> = {};
    const labelSets: [string, Uint8Array, Uint8Array, number][] = [['', train.labels, test.labels, train.classes.length]];
    if (train.coarse && test.coarse) labelSets.push(['super', train.coarse, test.coarse, 20]);
    for (const [name, trL, teL, classes] of labelSets) {
      const r = await knnWeightedBlocks(similarity, { memory: fm, memoryLabels: mem.map((i) => trL[i]), queries: fq, queryLabels: qs.map((i) => teL[i]), d: model.dim, classes }, [20, 50]);
      for (const x of r) out[`${name}knn${x.k}`] = x.accuracy;
    }
    return out;
  };
}

/**
 * The method and the learner settings of a run: the method's definition (agent/methods.ts; ours
 * without --method), each rule replaced by its flag where one is given.
 */
export function runLearner(a: Record<string, any>): Pick<AgentOptions, 'method' | 'learner'> {
  const def = getMethod(a.method ?? DEFAULT_METHOD);
  const rules = methodRules(def, { policy: a.buffer, replay: a.replay, warmup: a.warmup, updates: a.updates });
  return {
    method: { def, checkArtifacts: a.method !== undefined },
    learner: {
      ...rules,
      bufferSize: a['buffer-size'],
      lr: a.lr,
      schedule: a['lr-schedule'],
      scheduleSteps: a['lr-steps'],
      seed: a.seed,
    },
  };
}

/**
 * The --dataset stream, and the labelled sets its --eval-every measures on. A folder is decoded once,
 * at the artifacts' training size, so its frames need no resizing and its kNN runs at that size too.
 */
async function datasetInput(a: Record<string, any>, log: (line: string) => void): Promise<{ dataset?: DatasetStream; sets?: () => KnnSets }> {
  if (!a.dataset) return {};
  if (a.dataset === 'demo') {
    const d = demoStream();
    return { dataset: { label: 'demo', images: d.images, order: d.order, size: CIFAR_SIZE } };
  }
  const root = folderRoot(a.dataset);
  let d: { images: Uint8Array; labels: ArrayLike<number>; order: number[]; size: number; sets: () => KnnSets };
  if (root !== undefined) {
    const size = Number((readJsonObject(path.join(a.artifacts, 'manifest.json'))?.preset as { image?: { size?: number } } | undefined)?.image?.size);
    if (!Number.isSafeInteger(size) || size < 1) throw new AgentError(`--artifacts ${a.artifacts}: manifest.json names no image size`, 2);
    const f = await folderStream(root, { order: a['stream-order'], trial: a.trial, size, fit: a.fit, maxPixels: a['max-pixels'], log });
    log(`folder ${root}: ${f.folder.train.classes.length} classes, ${f.folder.train.count} stream images, ${f.folder.test.count} kNN queries (${f.folder.split}), at ${size}px`);
    d = { images: f.folder.train.images, labels: f.folder.train.labels, order: f.order, size, sets: () => ({ train: f.folder.train, test: f.folder.test, size }) };
  } else {
    const c = streamOrder({ dataset: a.dataset, dataDir: a['data-dir'], order: a['stream-order'], trial: a.trial });
    d = { images: c.data.images, labels: c.labels, order: c.order, size: CIFAR_SIZE, sets: () => cifarSets(a.dataset, a['data-dir']) };
  }
  const order = a['per-class'] !== undefined ? perClassCut(d.order, d.labels, a['per-class']) : d.order;
  const label = `${a.dataset} ${a['stream-order']} trial ${a.trial}${a['per-class'] ? `, ${order.length} images` : ''}`;
  return { dataset: { label, images: d.images, order, size: d.size }, sets: d.sets };
}

export async function runCommand(a: Record<string, any>): Promise<void> {
  const state = path.resolve(a.state);
  // Numbers and paths were checked by the command line (cli-args.ts) before this runs.
  // Without a terminal there is no progress line: a status line every 30 s unless told otherwise.
  const { tty, log, progress, statusEveryMs } = agentOutput(a['status-every']);
  const { dataset, sets } = await datasetInput(a, log);
  let evaluate: AgentOptions['evaluate'];
  if (a['eval-every'] !== undefined) {
    const pct = Number(a['eval-every']);
    if (!sets) throw new AgentError('--eval-every needs --dataset cifar10|cifar100|folder:ROOT (a stream of known length with a labelled test split)');
    const at: number[] = [];
    for (let p = pct; p < 100 + 1e-9; p += pct) at.push(p / 100);
    if (at.at(-1)! < 1) at.push(1);
    evaluate = { at, run: streamEvaluator(sets(), a['eval-memory']) };
  }
  const opts: AgentOptions = {
    watch: a.watch,
    camera: a.camera ? { input: a.camera, fps: a.fps, captureSize: a.size, ffmpeg: a.ffmpeg, stallMs: a['stall-s'] * 1000 } : undefined,
    dataset,
    recursive: a.recursive,
    allowHardLinks: a['allow-hard-links'],
    rootReplaced: a['root-replaced'],
    order: a.order,
    afterIngest: a['after-ingest'],
    processed: path.resolve(a.processed ?? path.join(state, 'processed')),
    quarantine: path.resolve(a.quarantine ?? path.join(state, 'quarantine')),
    artifacts: path.resolve(a.artifacts),
    stateDir: state,
    models: path.resolve(a.models),
    ep: a.ep as EP,
    epFallback: a['ep-fallback'] as EP | undefined,
    threads: a.threads,
    fit: a.fit,
    maxPixels: a['max-pixels'],
    overflow: a.overflow,
    backlog: a.backlog,
    stableMs: a['stable-ms'],
    checkpointEvery: parseEvery('--checkpoint-every', a['checkpoint-every']),
    exportEvery: parseEvery('--export-every', a['export-every']),
    fresh: a.fresh,
    metrics: a.metrics,
    emitEmbeddings: a['emit-embeddings'],
    maxArrivals: a['max-arrivals'],
    maxSeconds: a['max-seconds'],
    exitWhenIdle: a['exit-when-idle'],
    passes: a.passes,
    maxSkips: a['max-skips'],
    diskRetryMs: a['disk-retry-s'] * 1000,
    evaluate,
    ...runLearner(a),
    log,
    progress,
    statusEveryMs,
    fleet: fleetDeviceOptions(a, state),
    health: {
      gate: a['health-gate'], frames: a['health-frames'], minRank: a['health-min-rank'], maxCos: a['health-max-cos'],
      maxRankDrop: a['health-max-rank-drop'], maxCosRise: a['health-max-cos-rise'], probe: a.probe, maxProbeDrop: a['probe-max-drop'],
    },
  };
  const s = await runAgent(opts, { keepSignalHandlers: true });
  process.stdout.write(
    `${tty ? '\n' : ''}stopped (${s.stoppedBy}): ${s.framesIngested} frames ingested, ${s.quarantined} quarantined, ${s.dropped} dropped, ${s.refused} refused; ` +
      `${s.arrivals} arrivals, ${s.steps} steps (${s.skippedSteps} skipped); loss ${s.lossFirst?.toFixed(4) ?? '-'} -> ${s.lossLast?.toFixed(4) ?? '-'}\n` +
      (s.lastExport ? `encoder: ${path.join(opts.models, 'latest.onnx')} (step ${s.lastExport.step})\n` : ''),
  );
}
