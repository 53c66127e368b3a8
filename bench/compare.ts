// bench/compare: the paper's comparison. Protocols: edge-cifar10 / edge-cifar100 (the edge encoder on a
// reduced stream, minutes on 2 CPU cores; CIFAR-100 streams its 20 superclasses and reports kNN on fine
// labels and on superclasses), gpu-cifar10 (ResNet-18-CIFAR, a 10,000-image stream) and paper-cifar10 /
// paper-cifar100 (the paper's full scale); the last three are meant for --ep cuda. edge-folder and
// paper-folder stream a labelled folder (--dataset folder:ROOT: ROOT/<class>/ or train/ + val|test/,
// agent/eval/folder.ts) by the same rules; paper-folder trains each method's paper preset with
// resnet18-imagenet at 64 px (tools/artifacts/presets.ts IMAGENET_SETS). For each trial
// (paired across methods: same encoder init, same stream order, same seeds of replay and crops) and
// each stream order, every method learns the same reduced class-incremental stream with the same
// budget (updates x crops), and weighted kNN (k 20, 50) is measured at 25/50/75/100% of the stream,
// beside the random-init floor. Rows are appended to the JSON as they finish; a table is printed.
//
//   node --import tsx bench/compare.ts [--protocol edge-cifar10] [--methods ours,empssl,minred,simclr-reservoir]
//        [--orders seq] [--trials 0,1,2,3,4] [--per-class N|all] [--updates K] [--memory N|all]
//        [--queries N|all] [--ep cpu] [--threads N] [--plan | --report] [--json bench/out/compare.jsonl]
//        [--dataset folder:ROOT] [--clips 1,10,30 | --video FILE --fps 1,5,30 --video-window 1 | --idle 90]
// --clips turns each image into a camera-like clip; --video streams a recording of one's own in place of
// the data set's train images (kNN still on the data set), at each rate on as many frames; --idle P is a
// static camera (P % of frames long visits to 3 idle scenes, the rest short events of the other classes).
// --per-class, --updates, --new-per-arrival and --memory default to the protocol's; --plan prints what
// each method would run (presets, stream sizes, updates x crops) and exits; --report prints the tables
// and draws the charts of the rows already in --json without running anything.

import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { getPreset, IMAGENET_SETS } from '../tools/artifacts/presets.ts';
import { ENCODERS } from '../tools/nn/encoders.ts';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { readCifar10, readCifar100, type LabelledImages } from '../core/codecs/cifar.ts';
import { folderStreamSpec, makeStream, streamSpec, type StreamOrder } from '../tools/data/streams.ts';
import { loadFolder, perClassCut } from '../agent/commands/stream.ts';
import { clipFrame, DEFAULT_CLIP, staticCameraStream } from '../tools/data/clips.ts';
import { decodeVideo } from '../agent/sources/video-file.ts';
import { sampleIndices } from '../core/rng.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { openChosen, type EP } from '../agent/trainer/backend.ts';
import { Learner, checksNovel, defaultLearnerConfig } from '../agent/trainer/learner.ts';
import { ortSimilarity } from '../agent/buffer/similarity.ts';
import { OURS_POLICY, SPAN_POLICIES } from '../agent/buffer/buffer.ts';
import { computeFeatures } from '../agent/eval/features.ts';
import { knnWeightedBlocks } from '../agent/eval/knn.ts';
import { getMethod, methodRules, METHODS, type MethodRules } from '../agent/methods.ts';
import { classHistogram, nnCosineByAge, redundancy, sourceOf, storedRows } from '../agent/eval/redundancy.ts';
import { lineChart, svgToPng } from '../agent/report/plot.ts';
import { benchArgs } from './args.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const values = benchArgs(import.meta.url, {
  protocol: { type: 'string', describe: 'edge-cifar10 | edge-cifar100 | gpu-cifar10 | paper-cifar10 | paper-cifar100 | edge-folder | paper-folder (default edge-cifar10, or edge-folder with --dataset folder:ROOT)' },
  methods: { type: 'string', default: 'ours,empssl,minred,simclr-reservoir', describe: 'methods, comma-separated' },
  orders: { type: 'string', default: 'seq', describe: 'stream orders: seq, seq-bl, seq-im' },
  trials: { type: 'string', default: '0', describe: 'paired trial indices' },
  // Issue #15: the same number of frames, from 1/D as many images, each a camera-like clip of D frames.
  clips: { type: 'string', default: '0', describe: 'frames per source image, comma-separated: 0 plain images; D >= 1 camera-like clips (tools/data/clips.ts) from every D-th image of the stream, so each run sees as many frames; rows are labelled ORDER+clipD' },
  // Issue #15: a user's own recording as the stream; kNN stays on the data set (the probe of what was learnt).
  video: { type: 'string', describe: "a video file streamed in place of the data set's images (decoded through ffmpeg at each --fps); kNN is still measured on the data set; rows are labelled video+fpsN" },
  fps: { type: 'string', default: '1', describe: 'with --video: frames per second taken, comma-separated (the redundancy knob); every rate trains on as many frames as the sparsest gives, from the start of the video' },
  // Issue #31: a static camera: long idle visits to a few scenes, short events of the other classes.
  idle: { type: 'string', describe: 'static-camera streams: percent of frames from long visits (300 frames) to 3 idle scenes (one image of each of the first 3 classes of the order, revisited), the rest events of 10 frames from the other classes in the order (class-incremental), comma-separated; kNN on all classes; rows are labelled ORDER+idleP and carry the buffer\'s idle share, the idle classes, kNN@20 per class and the batch slots per class (--report: idle scenes against events)' },
  'video-window': { type: 'string', default: '1', describe: "with --video: frames within the same this-many seconds count as one scene in the buffer's same-clip share" },
  ffmpeg: { type: 'string', default: 'ffmpeg', describe: 'with --video: the ffmpeg binary' },
  'per-class': { type: 'string', describe: "stream images per class, or 'all' (default: the protocol's)" },
  updates: { type: 'string', describe: "minibatch updates per arrival (default: the protocol's)" },
  'new-per-arrival': { type: 'string', describe: "stream images per arrival (default: the protocol's)" },
  memory: { type: 'string', describe: "kNN memory images, or 'all' (default: the protocol's)" },
  // Only to make smoke runs short.
  queries: { type: 'string', describe: "kNN query images, a fixed random subset of the test set, or 'all' (default all)" },
  ep: { type: 'string', default: 'cpu', describe: 'execution provider for training and features' },
  plan: { type: 'boolean', default: false, describe: 'print the plan (presets, stream sizes, budget, done or not) and run nothing' },
  report: { type: 'boolean', default: false, describe: 'tables and charts of the rows in --json, nothing run' },
  // Two runs at --threads 1 side by side (separate --orders and --json) gave 1.5x the crops/s of one
  // run at 2 threads on 2 cores (bench/train-step).
  threads: { type: 'string', default: String(cpus().length), describe: 'ORT threads per training session' },
  // folder:ROOT for the folder protocols; older spelling: --dataset cifar100 = --protocol edge-cifar100.
  dataset: { type: 'string', describe: 'folder:ROOT: a labelled image folder for edge-folder / paper-folder' },
  data: { type: 'string', describe: 'the unpacked data set folder (default: ../shared/data/cifar-10-batches-bin or cifar-100-binary)' },
  json: { type: 'string', default: path.join(HERE, 'out/compare.jsonl'), describe: 'results, one JSON line per run; a run already there is skipped (resume)' },
});

interface Protocol {
  dataset: 'cifar10' | 'cifar100' | 'folder';
  /** Which presets the methods use: the edge encoder or ResNet-18-CIFAR at the paper's settings. */
  scale: 'edge' | 'paper';
  perClass: number;
  newPer: number;
  updates: number;
  /** Train images used as kNN memory (Infinity: the full split). */
  memory: number;
}
const PROTOCOLS: Record<string, Protocol> = {
  // b = 32 new + 32 replay, K = 2: about 5 minutes a cell on 2 CPU cores.
  'edge-cifar10': { dataset: 'cifar10', scale: 'edge', perClass: 450, newPer: 32, updates: 2, memory: 10000 },
  'edge-cifar100': { dataset: 'cifar100', scale: 'edge', perClass: 450, newPer: 32, updates: 2, memory: 10000 },
  // 1,000 per class = a 10,000-image stream; K = 1 is a first guess until GPU step times are measured.
  'gpu-cifar10': { dataset: 'cifar10', scale: 'paper', perClass: 1000, newPer: 100, updates: 1, memory: Infinity },
  // The paper: every image of the stream, b = 100, K = 10, memory = the full train split.
  'paper-cifar10': { dataset: 'cifar10', scale: 'paper', perClass: Infinity, newPer: 100, updates: 10, memory: Infinity },
  'paper-cifar100': { dataset: 'cifar100', scale: 'paper', perClass: Infinity, newPer: 100, updates: 10, memory: Infinity },
  // A folder at the edge protocol's settings (images at the edge presets' 32 px) ...
  'edge-folder': { dataset: 'folder', scale: 'edge', perClass: 450, newPer: 32, updates: 2, memory: 10000 },
  // ... and at the paper's (ImageNet-100: every train image, memory = train split, queries = val).
  'paper-folder': { dataset: 'folder', scale: 'paper', perClass: Infinity, newPer: 100, updates: 10, memory: Infinity },
};
const folderRoot = values.dataset?.startsWith('folder:') ? path.resolve(values.dataset.slice('folder:'.length)) : undefined;
if (values.dataset !== undefined && values.dataset !== 'cifar10' && values.dataset !== 'cifar100' && !folderRoot) throw new Error(`--dataset ${values.dataset}: cifar10, cifar100 or folder:ROOT`);
const protocol = values.protocol ?? `edge-${folderRoot ? 'folder' : values.dataset ?? 'cifar10'}`;
const P = PROTOCOLS[protocol];
if (!P) throw new Error(`--protocol ${protocol}: unknown (accepted: ${Object.keys(PROTOCOLS).join(', ')})`);
if (values.dataset !== undefined && (folderRoot ? 'folder' : values.dataset) !== P.dataset) throw new Error(`--dataset ${values.dataset} contradicts --protocol ${protocol}`);
if (P.dataset === 'folder' && !folderRoot && !values.report) throw new Error(`--protocol ${protocol} needs --dataset folder:ROOT`);
const ds = P.dataset;
/** Each method's preset at this protocol's scale (paper-folder: the paper presets at ImageNet size). */
const methodPreset = (m: (typeof METHODS)[string]): [string, string[]] => {
  if (P.scale === 'edge') return [m.edge.preset, m.edge.sets];
  if (ds !== 'folder') return [m.paper.preset, m.paper.sets];
  // paper-imagenet is paper-cifar with IMAGENET_SETS: named so where it is the whole difference.
  return m.paper.preset === 'paper-cifar' ? ['paper-imagenet', m.paper.sets] : [m.paper.preset, [...m.paper.sets, ...IMAGENET_SETS]];
};
// Every method of a protocol trains at one image size; the data are decoded (or are) at it.
const size = getPreset(...methodPreset(METHODS.ours)).image.size;
const count = (flag: string, v: string | undefined, dflt: number, all = true) => {
  if (v === undefined) return dflt;
  if (v === 'all' && all) return Infinity;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${flag} ${v}: a positive whole number${all ? " or 'all'" : ''}`);
  return n;
};
const perClass = count('per-class', values['per-class'], P.perClass);
const clipsList = values.clips.split(',').map((v) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`--clips ${v}: whole numbers >= 0 (0: plain images)`);
  return n;
});
const fpsList = values.fps.split(',').map((v) => {
  const n = Number(v);
  if (!(n > 0) || !Number.isFinite(n)) throw new Error(`--fps ${v}: rates above 0, comma-separated`);
  return n;
});
const idleList = (values.idle ?? '').split(',').filter((v) => v !== '').map((v) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 99) throw new Error(`--idle ${v}: whole percentages from 0 to 99, comma-separated`);
  return n;
});
if (idleList.length && (values.video || clipsList.some((c) => c > 0))) throw new Error('--idle and --clips / --video: one kind of stream at a time');
const videoWindow = Number(values['video-window']);
if (!(videoWindow > 0)) throw new Error(`--video-window ${values['video-window']}: seconds above 0`);
if (values.video && clipsList.some((c) => c > 0)) throw new Error('--video and --clips: one kind of stream at a time');
const newPer = count('new-per-arrival', values['new-per-arrival'], P.newPer, false);
const updatesK = count('updates', values.updates, P.updates, false);
const memoryN = count('memory', values.memory, P.memory);
const EPS = ['cpu', 'cuda', 'webgpu', 'wasm'];
if (!EPS.includes(values.ep)) throw new Error(`--ep ${values.ep}: accepted ${EPS.join(', ')}`);
const dataDir = values.data ?? path.resolve(HERE, '../../shared/data', ds === 'cifar10' ? 'cifar-10-batches-bin' : 'cifar-100-binary');
const [train, test]: LabelledImages[] = await (async () => {
  try {
    // A folder is decoded once at the protocol's size (its train split streams); --report on a folder
    // protocol without one has only the JSON's rows to show.
    if (!folderRoot && ds === 'folder') return [0, 0].map(() => ({ images: new Uint8Array(), labels: new Uint8Array(), count: 0, classes: [] }));
    if (folderRoot) {
      const { folder } = await loadFolder(folderRoot, { size, log: (l) => process.stderr.write(`${l}\n`) });
      return [folder.train, folder.test];
    }
    return ds === 'cifar10' ? [readCifar10(dataDir, 'train'), readCifar10(dataDir, 'test')] : [readCifar100(dataDir, 'train'), readCifar100(dataDir, 'test')];
  } catch (e) {
    console.error(`compare: ${(e as Error).message}`);
    process.exit(2);
  }
})();
// Streams run over classes (CIFAR-10, a folder) or superclasses (CIFAR-100, as SCALE); kNN on the primary labels.
const streamLabels = ds === 'cifar100' ? train.coarse! : train.labels;
let streamClasses = 0;
for (let i = 0; i < streamLabels.length; i++) streamClasses = Math.max(streamClasses, streamLabels[i] + 1);
const streamOf = (order: StreamOrder, trial: number) =>
  makeStream(ds === 'folder' ? folderStreamSpec(order, streamLabels, train.classes.length, trial) : streamSpec(ds, order, streamLabels, trial));
const per = 3 * size * size;
const engine = await ortSimilarity((m) => openChosen(m, { ep: values.ep as EP, threads: Number(values.threads) }));
const memIdx = sampleIndices(train.count, memoryN, 12345);
const qIdx = sampleIndices(test.count, count('queries', values.queries, Infinity), 54321);

/** kNN@20, kNN@50 (and CIFAR-100's superclass kNN@20), with kNN@20's accuracy per query class. */
async function knn(tr: Trainer): Promise<{ k: [number, number, number?]; byClass20: number[] }> {
  const m = { dim: tr.manifest.preset.encoder.widths.at(-1)!, run: async (x: Float32Array, c: number) => (await tr.embed(x, c)).features, close: async () => {} };
  const fm = await computeFeatures(m, train.images, memIdx, size);
  const fq = await computeFeatures(m, test.images, qIdx, size);
  const r = await knnWeightedBlocks(engine, { memory: fm, memoryLabels: memIdx.map((i) => train.labels[i]), queries: fq, queryLabels: qIdx.map((i) => test.labels[i]), d: m.dim, classes: train.classes.length }, [20, 50]);
  const c = r[0].byClass!;
  const byClass20 = c.correct.map((n, y) => (c.total[y] ? Number(((100 * n) / c.total[y]).toFixed(2)) : NaN));
  if (ds !== 'cifar100') return { k: [r[0].accuracy, r[1].accuracy], byClass20 };
  const sup = await knnWeightedBlocks(engine, { memory: fm, memoryLabels: memIdx.map((i) => train.coarse![i]), queries: fq, queryLabels: qIdx.map((i) => test.coarse![i]), d: m.dim, classes: 20 }, [20]);
  return { k: [r[0].accuracy, r[1].accuracy, sup[0].accuracy], byClass20 };
}

interface Row {
  method: string;
  /** The stream order, with +clipD for a camera-like clip stream. */
  order: string;
  trial: number;
  images: number;
  steps: number;
  seconds: number;
  /** seconds less the kNN and buffer measurements along the stream: the learner's own time; absent in older rows. */
  trainSeconds?: number;
  floor20: number;
  knn20: number[]; // at 25/50/75/100%
  knn50: number[];
  /** kNN@20 per query class (data set label), at random init and at 25/50/75/100%; absent in older rows. */
  floor20ByClass?: number[];
  knn20ByClass?: number[][];
  /** The stream's frames per stream class, and the batch slots of applied steps (new and replayed) per
   * stream class up to 25/50/75/100%: how much training each class's frames got; absent in older rows. */
  framesByClass?: number[];
  usesByClass?: number[][];
  /** edge-cifar100: kNN@20 on the 20 superclasses at 25/50/75/100%. */
  super20?: number[];
  dataset?: string;
  final20: number;
  mean20: number;
  /** kNN memory (train) and query (test) image counts; absent in older rows: 10000 and 10000. */
  memory?: number;
  queries?: number;
  /** Absent: edge-<dataset>. */
  protocol?: string;
  ep?: string;
  /** ORT threads of the run (absent in older rows: all cores). */
  threads?: number;
  /** Cosine between consecutive steps' gradients, one per step (the paper's Fig. 1); absent in older rows. */
  gradCos?: (number | null)[];
  /** Clip streams: frames per source image. */
  clip?: number;
  /** Video streams: the file's name, its rate and the scene window (same-clip share: frames of one window). */
  video?: { file: string; fps: number; window: number };
  /** The buffer at 25/50/75/100% of the stream: share of entries whose nearest neighbour (by stored
   * feature) comes from the same source image, and the mean nearest-neighbour cosine. */
  sameClip?: number[];
  nnSim?: number[];
  /** The buffer's entries per stream class at 25/50/75/100% (does it keep the classes seen so far?). */
  bufferClasses?: number[][];
  /** Issue #31: at 25/50/75/100%, the mean nearest-neighbour cosine of the buffer's entries by age
   * (4 cohorts by stream position, oldest first), with the stored z*, with the current encoder's
   * embedding of the un-augmented images (z*'s space) and with its backbone features; absent in older rows. */
  nnByAge?: { stored: number[][]; embedding: number[][]; backbone: number[][] };
  /** Static-camera streams (--idle): the idle percentage, and the buffer's share of idle-scene frames at 25/50/75/100%. */
  idle?: number;
  idleShare?: number[];
  /** Static-camera streams: the idle scenes' stream classes (the order's first 3); absent in older rows. */
  idleClasses?: number[];
  /** `novel` replay: per stream class, the arrival frames that took a batch's fixed slots (novel), over the run; absent under the other rules. */
  novelByClass?: number[];
  /** The learner's own milliseconds by part over the run's arrivals (ArrivalReport.ms; the buffer's includes its feature refreshes); absent in older rows. */
  arrivalMs?: { augment: number; train: number; buffer: number };
  /** The method's learner rules the run was made under (agent/methods.ts); absent in older rows. */
  rules?: MethodRules & { grid?: boolean };
}

/**
 * A row made under other rules than its method's definition now has: not a result of that method. Rows
 * from before rules were recorded: minred trained from the first full batch and its policy acted as
 * diverse; ours and the variants that share its buffer had the paper's rule (diverse) until issue #31;
 * the other methods' rules have not changed since.
 */
function staleRow(r: Row): boolean {
  const m = METHODS[r.method];
  if (!m) return false;
  const was = r.rules ?? (r.method === 'minred' ? { policy: 'diverse', replay: 'buffer', warmup: 'none' } : m.buffer === OURS_POLICY ? { policy: 'diverse', replay: m.replay, warmup: m.warmup } : undefined);
  if (!was) return false;
  const now = methodRules(m);
  // Spans of the stream on a fixed grid since 2026-12-07 late (issue #31): rows of a span policy without `grid` drifted.
  return was.policy !== now.policy || was.replay !== now.replay || was.warmup !== now.warmup || was.strata !== now.strata || (SPAN_POLICIES.includes(now.policy) && !r.rules?.grid);
}

mkdirSync(path.dirname(values.json), { recursive: true });
// Rows of this protocol only (one JSON file may hold several; older rows name only their data set), and
// of this folder (folder rows name it as folder:ROOT, ROOT absolute).
const rowProtocol = (r: Row) => r.protocol ?? `edge-${r.dataset ?? 'cifar10'}`;
const folderName = folderRoot && `folder:${folderRoot}`;
const allRows: Row[] = (existsSync(values.json) ? readFileSync(values.json, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Row) : []).filter((r) => rowProtocol(r) === protocol && (!folderName || r.dataset === folderName));
const stale = allRows.filter(staleRow);
if (stale.length) console.error(`compare: ${stale.length} row(s) of ${[...new Set(stale.map((r) => r.method))].join(', ')} in ${values.json} were made under rules the method no longer has; left out of the tables and run again`);
const rows = allRows.filter((r) => !staleRow(r));
// Identical budget: updates x crops per arrival equal to ours' at the same scale.
const refCrops = getPreset(...methodPreset(METHODS.ours)).crops;
const planned: string[][] = [];

interface Stream {
  label: string;
  clip: number;
  frames: { i: number; t: number }[];
  item: (f: { i: number; t: number }) => { key: string; image: Uint8Array };
  video?: Row['video'];
  /** Static-camera streams: the idle percentage and which keys are idle frames. */
  idle?: { percent: number; isIdle: (key: string) => boolean; classes: number[] };
}
// A video is decoded once per rate (the same frames every trial).
const videos = new Map<number, Uint8Array>();
function videoFrames(fps: number): Uint8Array {
  if (!videos.has(fps)) {
    let v: ReturnType<typeof decodeVideo>;
    try {
      v = decodeVideo(values.video!, fps, size, values.ffmpeg);
    } catch (e) {
      console.error(`compare: ${(e as Error).message}`);
      process.exit(2);
    }
    process.stderr.write(`--video ${path.basename(values.video!)}: ${v.count} frames at ${fps} fps\n`);
    videos.set(fps, v.frames);
  }
  return videos.get(fps)!;
}

/** The streams of one trial: each order x clip length, or the video at each rate. */
function streams(trial: number): Stream[] {
  if (values.video) {
    // Equal compute: every rate trains on as many frames as the sparsest rate has (the video's start).
    const n = Math.min(...fpsList.map((f) => videoFrames(f).length / per));
    return fpsList.map((fps) => {
      const data = videoFrames(fps);
      // Keys 'scene.frame': frames within one window of videoWindow seconds are one scene (sourceOf).
      const scene = Math.max(1, Math.round(fps * videoWindow));
      return {
        label: `video+fps${fps}`,
        clip: 0,
        frames: Array.from({ length: n }, (_, f) => ({ i: f, t: -2 })),
        item: ({ i }) => ({ key: `${Math.floor(i / scene)}.${i}`, image: data.subarray(i * per, (i + 1) * per) }),
        video: { file: path.basename(values.video!), fps, window: videoWindow },
      };
    });
  }
  if (idleList.length) return (values.orders.split(',') as StreamOrder[]).flatMap((order) => idleList.map((p) => cameraStream(order, trial, p)));
  return (values.orders.split(',') as StreamOrder[]).flatMap((order) =>
    clipsList.map((clip) => {
      // Reduced stream: the same procedure's order, each class cut to its first share: per-class for
      // the largest class, proportionally less for the others (seq-im keeps its imbalance).
      const stream = perClassCut(streamOf(order, trial), streamLabels, perClass);
      // Clips: every clip-th image of the same order, each expanded to `clip` frames (keys 'image.frame').
      const frames = clip ? stream.filter((_, n) => n % clip === 0).flatMap((i) => Array.from({ length: clip }, (_, t) => ({ i, t }))) : stream.map((i) => ({ i, t: -1 }));
      const clipCfg = { ...DEFAULT_CLIP, frames: clip || 1 };
      const item = ({ i, t }: { i: number; t: number }) => {
        const image = train.images.subarray(i * per, (i + 1) * per);
        return t < 0 ? { key: String(i), image } : { key: `${i}.${t}`, image: clipFrame(image, size, clipCfg, trial, i, t) };
      };
      return { label: clip ? `${order}+clip${clip}` : order, clip, frames, item };
    }),
  );
}
/** The static camera's idle scenes: the first image of each of the first 3 classes of a stream. */
function idleScenes(stream: number[]): { idleClasses: number[]; scenes: number[] } {
  const idleClasses: number[] = [];
  const scenes: number[] = [];
  for (const i of stream) {
    if (idleClasses.length === 3) break;
    if (!idleClasses.includes(streamLabels[i])) {
      idleClasses.push(streamLabels[i]);
      scenes.push(i);
    }
  }
  return { idleClasses, scenes };
}
/**
 * A static camera (--idle P) over the reduced stream of an order: as many frames as its images; the
 * first image of each of its first 3 classes are the idle scenes, the other classes' images the events.
 */
function cameraStream(order: StreamOrder, trial: number, percent: number): Stream {
  const stream = perClassCut(streamOf(order, trial), streamLabels, perClass);
  const { idleClasses, scenes } = idleScenes(stream);
  const events = stream.filter((i) => !idleClasses.includes(streamLabels[i]));
  const cam = staticCameraStream(scenes, events, stream.length, percent);
  const idleSet = new Set(scenes.map(String));
  return {
    label: `${order}+idle${percent}`,
    clip: 0,
    frames: cam.map((_, n) => ({ i: n, t: -3 })),
    item: ({ i }) => {
      const f = cam[i];
      const image = train.images.subarray(f.source * per, (f.source + 1) * per);
      // Each visit its own motion (seeded past the image indices), so a revisit is not a replay of the last.
      const seed = f.idle ? train.count - f.clip : f.source;
      return { key: f.idle ? `${f.source}.v${-f.clip}f${f.t}` : `${f.source}.${f.t}`, image: clipFrame(image, size, { ...DEFAULT_CLIP, frames: f.frames }, trial, seed, f.t) };
    },
    idle: { percent, isIdle: (k) => idleSet.has(sourceOf(k)), classes: idleClasses },
  };
}

const work = mkdtempSync(path.join(tmpdir(), 'ssocl-compare-'));
try {
  // --report: the tables and charts of the rows already in --json; nothing is run.
  for (const trial of values.report ? [] : values.trials.split(',').map(Number)) {
    for (const s of streams(trial)) {
      const { label, clip, frames } = s;
      for (const mname of values.methods.split(',')) {
        const method = getMethod(mname, '--methods');
        const [pname, psets] = methodPreset(method);
        // New + as many replayed images per step, or the new ones alone (no replay): the same crop passes
        // per arrival either way (updates x crops x batch as ours').
        const batchOf = method.batch === 'arrival' ? newPer : 2 * newPer;
        const preset = getPreset(pname, [...psets, `seed=${trial}`, `batch=${batchOf}`, `agent.newPerArrival=${newPer}`]);
        // The same rules `ssocl run --method` applies; K, unless the method fixes it, gives every method ours' crop budget.
        const rules = methodRules(method, { updates: method.updates ?? Math.round((updatesK * refCrops * 2 * newPer) / (preset.crops * batchOf)) });
        const updates = rules.updates!;
        const arrivals = Math.floor(frames.length / newPer);
        // Done only with the same stream length and kNN sets (older rows: the edge protocol's 10000 and 10000).
        const done = rows.some((r) => r.method === mname && r.order === label && r.trial === trial && r.images === frames.length && r.video?.file === s.video?.file && (r.memory ?? 10000) === memIdx.length && (r.queries ?? 10000) === qIdx.length);
        if (values.plan) {
          planned.push([mname, label, String(trial), pname, rules.policy, rules.replay, rules.warmup, Object.keys(ENCODERS).find((k) => JSON.stringify(ENCODERS[k]) === JSON.stringify(preset.encoder)) ?? 'custom', String(preset.crops), String(preset.batch), String(updates), String(updates * preset.crops * preset.batch), String(frames.length), String(arrivals), String(arrivals * updates), done ? 'done' : 'to run']);
          continue;
        }
        if (done) continue; // resumable
        const dir = path.join(work, `${mname}-${trial}`);
        writeArtifacts(compileArtifacts(preset), dir);
        const tr = await Trainer.open(dir, { ep: values.ep as EP, ...(values.ep === 'cpu' ? { threads: Number(values.threads) } : {}) });
        const init = await knn(tr);
        const floor = init.k[0];
        const learner = new Learner(
          tr,
          defaultLearnerConfig(tr, { updates, replay: rules.replay, warmup: rules.warmup, buffer: { capacity: 256, policy: rules.policy, alpha: 0.5, ...(rules.strata ? { strata: rules.strata } : {}) }, seed: trial }),
          engine,
        );
        // A stream of fewer than 4 arrivals (a small folder) shares marks: one measurement fills each.
        const marks = [0.25, 0.5, 0.75, 1].map((f) => Math.max(1, Math.round(f * arrivals)));
        const k20: number[] = [];
        const s20: number[] = [];
        const k50: number[] = [];
        const gcos: (number | null)[] = [];
        const sameClip: number[] = [];
        const nnSim: number[] = [];
        const bufferClasses: number[][] = [];
        const nnByAge: NonNullable<Row['nnByAge']> = { stored: [], embedding: [], backbone: [] };
        const idleShare: number[] = [];
        const knn20ByClass: number[][] = [];
        const classOf = (key: string) => streamLabels[Number(sourceOf(key))];
        const framesByClass = new Array<number>(streamClasses).fill(0);
        // Counted as the run streams its frames (each frame is made once); the tail short of an arrival, never streamed, after.
        const countFrames = (items: { key: string }[]) => {
          if (!s.video) for (const it of items) framesByClass[classOf(it.key)]++;
        };
        // Every applied step's batch passes through updateFeatures once (both the stepwise and the fused
        // path): counting there gives each class's training slots without changing the learner.
        const uses = new Array<number>(streamClasses).fill(0);
        const usesByClass: number[][] = [];
        if (!s.video) {
          const update = learner.buffer.updateFeatures.bind(learner.buffer);
          learner.buffer.updateFeatures = (batch, zbar) => {
            for (const e of batch) uses[classOf(e.key)]++;
            return update(batch, zbar);
          };
        }
        countFrames(frames.slice(arrivals * newPer).map(s.item));
        const partMs = { augment: 0, train: 0, buffer: 0 };
        const novelByClass = checksNovel(rules.replay) && !s.video ? new Array<number>(streamClasses).fill(0) : null;
        const t0 = performance.now();
        let evalMs = 0;
        for (let a = 1; a <= arrivals; a++) {
          const items = frames.slice((a - 1) * newPer, a * newPer).map(s.item);
          countFrames(items);
          const rep = await learner.arrive(items);
          partMs.augment += rep.ms.augment;
          partMs.train += rep.ms.train;
          partMs.buffer += rep.ms.buffer;
          if (novelByClass) for (const e of rep.novel ?? []) novelByClass[classOf(e.key)]++;
          for (const st of rep.steps) gcos.push(st.gradCos === null ? null : Number(st.gradCos.toFixed(4)));
          if (marks.includes(a)) {
            const te = performance.now();
            const kr = await knn(tr);
            const [x, y, z] = kr.k;
            for (const _ of marks.filter((m) => m === a)) {
              k20.push(x);
              k50.push(y);
              if (z !== undefined) s20.push(z);
              knn20ByClass.push(kr.byClass20);
              if (!s.video) usesByClass.push([...uses]);
            }
            const red = redundancy(learner.buffer.entries);
            sameClip.push(Number(red.sameSource.toFixed(4)));
            nnSim.push(Number(red.nnSim.toFixed(4)));
            if (!s.video) bufferClasses.push(classHistogram(learner.buffer.entries, (k) => streamLabels[Number(sourceOf(k))], streamClasses));
            const es = learner.buffer.entries;
            if (s.idle) idleShare.push(Number((es.filter((e) => s.idle!.isIdle(e.key)).length / es.length).toFixed(4)));
            const now = await learner.embedEntries(es);
            const age = (rows: Float32Array) => nnCosineByAge(es, rows).map((v) => Number(v.toFixed(4)));
            nnByAge.stored.push(age(storedRows(es, now.embedding.length / es.length)));
            nnByAge.embedding.push(age(now.embedding));
            nnByAge.backbone.push(age(now.features));
            process.stderr.write(`  buffer: ${s.idle ? `idle share ${idleShare.at(-1)}; ` : ''}classes [${bufferClasses.at(-1)?.join(', ') ?? '-'}]; NN cosine by age (oldest first) stored [${nnByAge.stored.at(-1)!.join(', ')}], embedding now [${nnByAge.embedding.at(-1)!.join(', ')}], backbone now [${nnByAge.backbone.at(-1)!.join(', ')}]\n`);
            evalMs += performance.now() - te;
            process.stderr.write(`${mname} ${label} trial ${trial}: ${Math.round((100 * a) / arrivals)}% of ${frames.length} ${clip || s.video ? 'frames' : 'images'}, ${tr.steps} steps, kNN@20 ${x.toFixed(2)} (floor ${floor.toFixed(2)}; by class [${kr.byClass20.join(', ')}]${s.video ? '' : `; batch slots by stream class [${uses.join(', ')}]`})\n`);
          }
        }
        const row: Row = { ...(ds === 'cifar100' ? { dataset: ds, super20: s20 } : ds === 'folder' ? { dataset: folderName! } : {}), ...(protocol === 'edge-cifar10' || protocol === 'edge-cifar100' ? {} : { protocol, ep: values.ep }), method: mname, order: label, trial, images: frames.length, steps: tr.steps, seconds: (performance.now() - t0) / 1000, trainSeconds: (performance.now() - t0 - evalMs) / 1000, floor20: floor, knn20: k20, knn50: k50, floor20ByClass: init.byClass20, knn20ByClass, ...(s.video ? {} : { framesByClass, usesByClass }), ...(novelByClass ? { novelByClass } : {}), final20: k20[3], mean20: k20.reduce((p, q) => p + q, 0) / 4, memory: memIdx.length, queries: qIdx.length, threads: Number(values.threads), gradCos: gcos, ...(clip ? { clip } : {}), ...(s.video ? { video: s.video } : {}), ...(s.idle ? { idle: s.idle.percent, idleShare, idleClasses: s.idle.classes } : {}), arrivalMs: Object.fromEntries(Object.entries(partMs).map(([k, v]) => [k, Math.round(v)])) as Row['arrivalMs'], sameClip, nnSim, bufferClasses, nnByAge, rules: { policy: rules.policy, replay: rules.replay, warmup: rules.warmup, ...(rules.strata ? { strata: rules.strata } : {}), ...(SPAN_POLICIES.includes(rules.policy) ? { grid: true } : {}) } };
        rows.push(row);
        appendFileSync(values.json, JSON.stringify(row) + '\n');
        await tr.close();
        rmSync(dir, { recursive: true, force: true });
      }
    }
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
if (values.plan) {
  const head = ['method', 'order', 'trial', 'preset', 'buffer', 'replay', 'warmup', 'encoder', 'crops', 'batch', 'updates/arrival', 'crop-passes/arrival', 'images', 'arrivals', 'updates (planned)', 'status'];
  console.log(`${protocol}: ${newPer} new images per arrival, kNN memory ${memIdx.length} train images, ${qIdx.length} test queries, ep ${values.ep}`);
  console.log(`| ${head.join(' | ')} |\n|${head.map(() => '---').join('|')}|`);
  for (const r of planned) console.log(`| ${r.join(' | ')} |`);
  process.exit(0);
}

// Table: mean +- std over trials, with the floor and the paired gain.
const stat = (xs: number[], digits = 2) => {
  const m = xs.reduce((a, b) => a + b, 0) / xs.length;
  const sd = xs.length > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / (xs.length - 1)) : 0;
  return `${m.toFixed(digits)} +- ${sd.toFixed(digits)}`;
};
// The kNN set sizes the rows were measured with (older rows: the protocol's 10000 and 10000), not this
// invocation's defaults: --report prints rows another command wrote.
const sizes = (k: 'queries' | 'memory') => [...new Set(rows.map((r) => r[k] ?? 10000))].join(' or ') || String(k === 'queries' ? qIdx.length : memIdx.length);
console.log(`\n${protocol}, ${cpus().length} cores, kNN@20 on ${sizes('queries')} test images with ${sizes('memory')} train images as memory`);
const sup = ds === 'cifar100';
console.log(`| method | order | trials | final kNN@20${sup ? ' (fine) | superclass final kNN@20' : ''} | mean of 25/50/75/100% | random-init floor | paired gain (final) | steps | s/run |`);
console.log(`|---|---|---|---|${sup ? '---|' : ''}---|---|---|---|---|`);
const keys = [...new Set(rows.map((r) => `${r.method}|${r.order}`))];
for (const k of keys) {
  const rs = rows.filter((r) => `${r.method}|${r.order}` === k);
  const [m, o] = k.split('|');
  console.log(`| ${m} | ${o} | ${rs.length} | ${stat(rs.map((r) => r.final20))}${sup ? ` | ${stat(rs.map((r) => r.super20?.[3] ?? NaN))}` : ''} | ${stat(rs.map((r) => r.mean20))} | ${stat(rs.map((r) => r.floor20))} | ${stat(rs.map((r) => r.final20 - r.floor20))} | ${rs[0].steps} | ${stat(rs.map((r) => r.seconds))} |`);
}
// The paper's Table 1 shape: methods x streams, final kNN@20 mean +- std over trials; then each
// method's paired difference to ours (same trials) with a 95% t-interval.
const T95 = [NaN, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228];
const orders = [...new Set(rows.map((r) => r.order))];
const methods = [...new Set(rows.map((r) => r.method))];
console.log(`\nTable 1 shape (final weighted kNN@20 %, mean +- std over trials, n in brackets):`);
console.log(`| method | ${orders.join(' | ')} |`);
console.log(`|---|${orders.map(() => '---').join('|')}|`);
const cell = (rs: Row[], f: (r: Row) => number) => (rs.length ? `${stat(rs.map(f))} (${rs.length})` : '-');
console.log(`| random init (floor) | ${orders.map((o) => cell(rows.filter((r) => r.order === o && r.method === methods[0]), (r) => r.floor20)).join(' | ')} |`);
for (const m of methods) console.log(`| ${m} | ${orders.map((o) => cell(rows.filter((r) => r.order === o && r.method === m), (r) => r.final20)).join(' | ')} |`);
if (methods.includes('ours')) {
  console.log(`\nours minus each method, paired by trial (mean [95% CI], n):`);
  console.log(`| method | ${orders.join(' | ')} |`);
  console.log(`|---|${orders.map(() => '---').join('|')}|`);
  for (const m of methods.filter((x) => x !== 'ours')) {
    const cells = orders.map((o) => {
      const diffs = rows
        .filter((r) => r.order === o && r.method === m)
        .flatMap((r) => rows.filter((q) => q.order === o && q.method === 'ours' && q.trial === r.trial).map((q) => q.final20 - r.final20));
      if (!diffs.length) return '-';
      const n = diffs.length;
      const mean = diffs.reduce((a, b) => a + b, 0) / n;
      if (n < 2) return `${mean.toFixed(2)} (1)`;
      const sd = Math.sqrt(diffs.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1));
      const h = (T95[n - 1] ?? 1.96) * (sd / Math.sqrt(n));
      return `${mean.toFixed(2)} [${(mean - h).toFixed(2)}, ${(mean + h).toFixed(2)}] (${n})`;
    });
    console.log(`| ${m} | ${cells.join(' | ')} |`);
  }
}
// The paper's Fig. 1 claim in numbers: the mean cosine of consecutive gradients over each run (all
// steps, and the second half, past the start-up transient), mean +- std over the runs that logged it.
if (rows.some((r) => r.gradCos?.length)) {
  const meanCos = (r: Row, from: number) => {
    const v = r.gradCos!.slice(Math.max(1, Math.floor(from * r.gradCos!.length))).filter((x): x is number => x !== null);
    return v.reduce((a, b) => a + b, 0) / v.length;
  };
  console.log(`\nCosine of consecutive gradients (mean over steps; mean +- std over runs, n in brackets):`);
  console.log(`| method | ${orders.map((o) => `${o}: whole run | ${o}: second half`).join(' | ')} |`);
  console.log(`|---|${orders.map(() => '---|---').join('|')}|`);
  for (const m of methods) {
    const cells = orders.map((o) => {
      const rs = rows.filter((r) => r.order === o && r.method === m && r.gradCos?.length);
      return rs.length ? `${stat(rs.map((r) => meanCos(r, 0)), 3)} (${rs.length}) | ${stat(rs.map((r) => meanCos(r, 0.5)), 3)}` : '- | -';
    });
    console.log(`| ${m} | ${cells.join(' | ')} |`);
  }
}
// The buffer's redundancy at the end of each run (clip streams: how many entries have a frame of
// their own clip as nearest neighbour), mean +- std over runs.
if (rows.some((r) => r.sameClip?.length)) {
  console.log(`\nBuffer redundancy at the end of the stream: same-clip nearest neighbours (share of entries) | mean nearest-neighbour cosine:`);
  console.log(`| method | ${orders.join(' | ')} |`);
  console.log(`|---|${orders.map(() => '---').join('|')}|`);
  for (const m of methods) {
    const cells = orders.map((o) => {
      const rs = rows.filter((r) => r.order === o && r.method === m && r.sameClip?.length);
      return rs.length ? `${stat(rs.map((r) => r.sameClip!.at(-1)!), 3)} \\| ${stat(rs.map((r) => r.nnSim!.at(-1)!), 3)}` : '-';
    });
    console.log(`| ${m} | ${cells.join(' | ')} |`);
  }
}
// Static-camera streams (--idle): the share of the buffer holding idle-scene frames at the end, beside kNN.
if (rows.some((r) => r.idleShare?.length)) {
  const idleOrders = orders.filter((o) => rows.some((r) => r.order === o && r.idleShare?.length));
  console.log(`\nStatic camera: the buffer's idle share at the end of the stream (mean +- std over runs):`);
  console.log(`| method | ${idleOrders.join(' | ')} |`);
  console.log(`|---|${idleOrders.map(() => '---').join('|')}|`);
  for (const m of methods) {
    const cells = idleOrders.map((o) => {
      const rs = rows.filter((r) => r.order === o && r.method === m && r.idleShare?.length);
      return rs.length ? `${stat(rs.map((r) => r.idleShare!.at(-1)!), 3)} (${rs.length})` : '-';
    });
    console.log(`| ${m} | ${cells.join(' | ')} |`);
  }
}
// Static camera by class (rows with per-class kNN and batch slots): what the events taught against the
// idle scenes, and how much training each kind of frame got (slots of applied steps per stream frame).
// (CIFAR-10 and folders: a stream class is a kNN class; CIFAR-100 streams superclasses, not shown here.)
if (ds !== 'cifar100' && rows.some((r) => r.idleShare?.length && r.knn20ByClass?.length && r.usesByClass?.length)) {
  console.log(`\nStatic camera by class at the end (mean over runs): kNN@20 on the idle scenes' classes | on the event classes (random-init floor in brackets); batch slots per stream frame, idle | event; idle share of the batch slots:`);
  console.log(`| method | order | runs | kNN@20 idle classes | kNN@20 event classes | slots per idle frame | slots per event frame | idle share of slots |`);
  console.log(`|---|---|---|---|---|---|---|---|`);
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  for (const k of [...new Set(rows.filter((r) => r.idleShare?.length && r.knn20ByClass?.length && r.usesByClass?.length).map((r) => `${r.method}|${r.order}`))]) {
    const rs = rows.filter((r) => `${r.method}|${r.order}` === k && r.knn20ByClass?.length && r.usesByClass?.length);
    // Rows made before idleClasses was recorded: the order's first 3 classes, as cameraStream takes them.
    const idleOf = (r: Row) => r.idleClasses ?? idleScenes(streamOf(r.order.split('+')[0] as StreamOrder, r.trial)).idleClasses;
    const part = (r: Row, v: number[], idle: boolean) => v.filter((_, c) => idleOf(r).includes(c) === idle);
    const acc = (r: Row, v: number[], idle: boolean) => mean(part(r, v, idle));
    const per = (r: Row, idle: boolean) => part(r, r.usesByClass!.at(-1)!, idle).reduce((a, b) => a + b, 0) / part(r, r.framesByClass!, idle).reduce((a, b) => a + b, 0);
    const cells = (f: (r: Row) => number) => mean(rs.map(f));
    const [m, o] = k.split('|');
    const share = (r: Row) => { const u = r.usesByClass!.at(-1)!; return part(r, u, true).reduce((a, b) => a + b, 0) / u.reduce((a, b) => a + b, 0); };
    console.log(`| ${m} | ${o} | ${rs.length} | ${cells((r) => acc(r, r.knn20ByClass!.at(-1)!, true)).toFixed(2)} (${cells((r) => acc(r, r.floor20ByClass!, true)).toFixed(2)}) | ${cells((r) => acc(r, r.knn20ByClass!.at(-1)!, false)).toFixed(2)} (${cells((r) => acc(r, r.floor20ByClass!, false)).toFixed(2)}) | ${cells((r) => per(r, true)).toFixed(2)} | ${cells((r) => per(r, false)).toFixed(2)} | ${cells(share).toFixed(3)} |`);
  }
}
// Accuracy over the stream (the paper's Fig. 4), one chart per order: mean over trials per method.
for (const order of [...new Set(rows.map((r) => r.order))]) {
  const series = [...new Set(rows.filter((r) => r.order === order).map((r) => r.method))].map((mname) => {
    const rs = rows.filter((r) => r.order === order && r.method === mname);
    return { name: `${mname} (${rs.length})`, points: [25, 50, 75, 100].map((p, i) => [p, rs.reduce((a, r) => a + r.knn20[i], 0) / rs.length] as [number, number]) };
  });
  const floor = rows.filter((r) => r.order === order).reduce((a, r, _i, all) => a + r.floor20 / all.length, 0);
  series.push({ name: 'random init', points: [[25, floor], [100, floor]] });
  const svg = lineChart(series, { title: `${protocol} ${order}: kNN@20 over the stream`, xLabel: '% of the stream seen', yLabel: 'weighted kNN@20 accuracy %' });
  const base = values.json.replace(/\.jsonl$/, '') + `-${order}`;
  writeFileSync(`${base}.svg`, svg);
  writeFileSync(`${base}.png`, await svgToPng(svg));
  console.log(`wrote ${base}.svg and .png`);
}
// Consecutive-gradient cosine over steps (the paper's Fig. 1): per method, mean over trials of a
// moving average (window 20 steps), x as % of the run so methods with 2x the steps line up.
for (const order of [...new Set(rows.map((r) => r.order))]) {
  const series = [];
  for (const mname of [...new Set(rows.filter((r) => r.order === order).map((r) => r.method))]) {
    const rs = rows.filter((r) => r.order === order && r.method === mname && r.gradCos?.length);
    if (!rs.length) continue;
    const n = rs[0].gradCos!.length;
    const pts: [number, number][] = [];
    for (let s = 0; s + 20 <= n; s += 10) {
      let sum = 0, cnt = 0;
      for (const r of rs) for (let j = s; j < s + 20; j++) { const v = r.gradCos![j]; if (v !== null && v !== undefined && j > 0) { sum += v; cnt++; } }
      if (cnt) pts.push([(100 * (s + 10)) / n, sum / cnt]);
    }
    series.push({ name: `${mname} (${rs.length})`, points: pts });
  }
  if (!series.length) continue;
  const svg = lineChart(series, { title: `${protocol} ${order}: cosine of consecutive gradients`, xLabel: '% of the run (steps)', yLabel: 'cos(g_t, g_t-1), 20-step mean' });
  const base = values.json.replace(/\.jsonl$/, '') + `-${order}-gradcos`;
  writeFileSync(`${base}.svg`, svg);
  writeFileSync(`${base}.png`, await svgToPng(svg));
  console.log(`wrote ${base}.svg and .png`);
}
writeFileSync(values.json.replace(/\.jsonl$/, '') + '.summary.json', JSON.stringify({ machine: { cores: cpus().length, cpu: cpus()[0]?.model, date: new Date().toISOString() }, rows }, null, 1) + '\n');
