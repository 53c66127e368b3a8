// Artifact presets: architecture, crops, losses and optimizer of each method at each scale.
// `--set key=value` overrides any field by its dotted path.

import { ENCODERS, type EncoderConfig } from '../nn/encoders.ts';
import { HEADS, type LayerSpec } from '../nn/heads.ts';
import type { LossName } from '../losses/index.ts';
import type { OptimizerConfig } from '../optim/index.ts';
import type { ConvInputGrad, ConvWeightGrad, DepthwiseWeightGrad } from '../graph/grad.ts';
import type { Activation } from '../nn/layers.ts';

export interface Preset {
  name: string;
  /** Seed of the initial weights. */
  seed: number;
  encoder: EncoderConfig;
  projector: LayerSpec[];
  /** SimSiam's predictor; its presence makes the step two-view with the simsiam loss. */
  predictor?: LayerSpec[];
  image: { size: number; mean: number[]; std: number[] };
  /** Crops (views) per image, N. */
  crops: number;
  /** Images per training step, b (new + replayed). */
  batch: number;
  losses: { name: LossName; weight: number }[];
  tau: number;
  tcrEps: number;
  ntXentTau: number;
  optimizer: OptimizerConfig;
  /** Default learning rate; the graph takes lr as a runtime input. */
  lr: number;
  activation: Activation;
  bnMomentum: number;
  /** Keep the previous gradient as state and report the cosine with it. */
  gradCos: boolean;
  convWeightGrad: ConvWeightGrad;
  convInputGrad: ConvInputGrad;
  /** A depthwise Conv's weight gradient (tools/graph/grad.ts); absent: the compiler's default (grouped-conv). */
  depthwiseWeightGrad?: DepthwiseWeightGrad;
  /**
   * ORT's NCHWc block size (16 with AVX-512, 8 with AVX2) to run the step's Convs in ORT's blocked-layout
   * x86-64 CPU kernels (Graph.nchwcConvs); absent or 0: plain Conv, portable to every EP and the browser.
   */
  nchwc?: number;
  /** K updates in one graph run (state crosses the host once per K); absent: one update per run. */
  fuse?: number;
  /** With fuse: the graph makes the crops from uint8 images and the host's crop draws. */
  cropsInGraph?: boolean;
  /** SCALE's loss settings (scale-contrast and ird losses; DESIGN.md section 4, Orienfish/SCALE's run-scale.sh). */
  scale?: ScaleOptions;
  /** Defaults for the agent's loop (DESIGN.md section 3). */
  agent: { newPerArrival: number; updatesPerArrival: number; bufferSize: number; replay: 'mixed' | 'buffer' };
}

/** The stream images (the mask's and the loss's rows) are the batch's first agent.newPerArrival, this arrival's under mixed replay. */
export interface ScaleOptions {
  tempCont: number;
  /** SupConLoss's base_temperature (the code's default 0.07): the loss is scaled by tempCont / baseTemp. */
  baseTemp: number;
  tempTsne: number;
  thresRatio: number;
  currentTemp: number;
  pastTemp: number;
  distillPower: number;
}

const CIFAR_IMAGE = { size: 32, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] };
const SGD_LARS: OptimizerConfig = { type: 'sgd', momentum: 0.9, weightDecay: 1e-4, lars: true, eta: 0.005, clip: true };

const edge: Preset = {
  name: 'edge',
  seed: 0,
  encoder: ENCODERS['resnet-edge'],
  projector: [{ out: 512, bn: true, act: true }, { out: 128 }], // 64 -> 512 (BN, ReLU) -> 128
  image: CIFAR_IMAGE,
  crops: 4,
  // 128 crops a step: per crop, measured faster on 2 cores than 256 (activations stay in cache).
  batch: 32,
  // Measured on 2 cores (bench/edge-quick, 90 s on a shuffled CIFAR-10 stream, weighted kNN k 20):
  // the paper's mcc 50 + tcr 1, tau 0.07, SGD+LARS lr 0.03 gained -0.1 points over the random-init floor
  // (30.9%); mcc 1 + tcr 0.02 (the same 50:1 ratio), tau 0.2, SGD momentum 0.9, wd 5e-4, lr 0.05 gained +9.4.
  losses: [
    { name: 'mcc', weight: 1 },
    { name: 'tcr', weight: 0.02 },
  ],
  tau: 0.2,
  tcrEps: 0.2,
  ntXentTau: 0.1,
  optimizer: { type: 'sgd', momentum: 0.9, weightDecay: 5e-4, lars: false },
  lr: 0.05,
  activation: 'relu',
  bnMomentum: 0.1,
  gradCos: true,
  // Measured on 2 cores, quiet box (bench/peer, 2026-12-07, RESULTS issue #33): im2col as one grouped
  // Conv with one-hot kernels and one batched GEMM per layer made the step 8-14% faster than
  // batched-offsets at 128/256/512 crops, 1 and 2 threads (peak RSS +100 to +400 MB).
  convWeightGrad: 'unfold-conv',
  convInputGrad: 'conv',
  agent: { newPerArrival: 16, updatesPerArrival: 3, bufferSize: 256, replay: 'mixed' },
};

const paperCifar: Preset = {
  ...edge,
  name: 'paper-cifar',
  encoder: ENCODERS['resnet18-cifar'],
  projector: HEADS.empssl(4096, 1024),
  crops: 20,
  batch: 200,
  losses: [
    { name: 'mcc', weight: 50 },
    { name: 'tcr', weight: 1 },
  ],
  tau: 0.07,
  optimizer: SGD_LARS,
  lr: 0.01,
  gradCos: false,
  // The H100 prototype measured batch-as-channels + ConvTranspose fastest on CUDA.
  convWeightGrad: 'batch-as-channels',
  convInputGrad: 'conv-transpose',
  agent: { newPerArrival: 100, updatesPerArrival: 10, bufferSize: 256, replay: 'mixed' },
};

function baseline(base: Preset, name: string, over: Partial<Preset>): Preset {
  return { ...base, name, ...over };
}

const minredOver = (hidden: number, out: number, pred: number): Partial<Preset> => ({
  projector: HEADS.simsiamProjector(hidden, out),
  predictor: HEADS.simsiamPredictor(pred, out),
  crops: 2,
  losses: [{ name: 'simsiam', weight: 1 }],
  optimizer: { type: 'sgd', momentum: 0.9, weightDecay: 5e-4, lars: false },
  lr: 0.05,
});
const simclrOver = (hidden: number, out: number): Partial<Preset> => ({
  projector: HEADS.simclr(hidden, out),
  crops: 2,
  losses: [{ name: 'nt-xent', weight: 1 }],
  optimizer: { type: 'sgd', momentum: 0.9, weightDecay: 5e-4, lars: false },
  lr: 0.05,
});
// EMP-SSL's 200:1 weighting, at the paper's scale and scaled down like ours on the edge.
const empsslOver: Partial<Preset> = {
  losses: [
    { name: 'empssl-inv', weight: 200 },
    { name: 'tcr', weight: 1 },
  ],
};
const edgeEmpsslOver: Partial<Preset> = {
  losses: [
    { name: 'empssl-inv', weight: 1 },
    { name: 'tcr', weight: 0.005 },
  ],
};

// SCALE (run-scale.sh, non-iid streams): temp_cont 0.1, temp_tSNE 0.1, thres_ratio 0.1, current/past
// temperatures 0.1/0.01, distill_power 0.15, SGD lr 0.03 (momentum 0.9, wd 1e-4, no LARS); projector
// Linear(w, w) + ReLU + Linear(w, 128) with w the backbone width; two views; each step the stream batch
// plus as many memory samples (128 + 128 at paper scale), 20 steps per stream batch.
const scaleOver = (width: number, stream: number, updates: number): Partial<Preset> => ({
  projector: [{ out: width, act: true }, { out: 128 }],
  crops: 2,
  batch: 2 * stream,
  losses: [
    { name: 'scale-contrast', weight: 1 },
    { name: 'ird', weight: 1 },
  ],
  scale: { tempCont: 0.1, baseTemp: 0.07, tempTsne: 0.1, thresRatio: 0.1, currentTemp: 0.1, pastTemp: 0.01, distillPower: 0.15 },
  optimizer: { type: 'sgd', momentum: 0.9, weightDecay: 1e-4, lars: false },
  lr: 0.03,
  agent: { newPerArrival: stream, updatesPerArrival: updates, bufferSize: 256, replay: 'mixed' },
});

/**
 * Larger images (ImageNet-100, the paper's third data set): DESIGN section 3's resnet18-imagenet
 * encoder (7x7/2 stem + 3x3/2 max-pool, so a 64 px image reaches the first stage at 16 px as a 32 px
 * CIFAR image does at 32) and the usual ImageNet statistics. The paper trains at 224 px:
 * `--set image.size=224` compiles that (about 12x the pixels, and the memory, of 64 px per crop).
 * bench's paper-folder protocol applies the same overrides to every method's paper-scale preset.
 */
export const IMAGENET_SETS = ['encoder="resnet18-imagenet"', 'image={"size":64,"mean":[0.485,0.456,0.406],"std":[0.229,0.224,0.225]}'];

export const PRESETS: Record<string, Preset> = {
  edge,
  'edge-empssl': baseline(edge, 'edge-empssl', edgeEmpsslOver),
  'edge-minred': baseline(edge, 'edge-minred', { ...minredOver(512, 128, 64), agent: { ...edge.agent, replay: 'buffer' } }),
  'edge-simclr': baseline(edge, 'edge-simclr', simclrOver(512, 128)),
  'edge-scale': baseline(edge, 'edge-scale', scaleOver(ENCODERS['resnet-edge'].widths.at(-1)!, 16, 3)),
  'paper-cifar': paperCifar,
  empssl: baseline(paperCifar, 'empssl', empsslOver),
  minred: baseline(paperCifar, 'minred', { ...minredOver(2048, 2048, 512), agent: { ...paperCifar.agent, replay: 'buffer' } }),
  simclr: baseline(paperCifar, 'simclr', simclrOver(512, 128)),
  scale: baseline(paperCifar, 'scale', scaleOver(512, 128, 20)),

  'paper-imagenet': { ...applyOverrides(paperCifar, IMAGENET_SETS), name: 'paper-imagenet' },
};

function parseValue(raw: string): unknown {
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

/** A preset's `nchwc`: ORT's NCHWc block (16, 8) or 0; checked on --set and again when a preset made in code compiles. */
export function assertNchwc(v: unknown): void {
  if (![0, 8, 16].includes(v as number)) throw new Error(`--set nchwc=${v}: ORT's NCHWc block is 16 (AVX-512) or 8 (AVX2), 0 for plain Convs; 'ssocl artifacts --nchwc auto' asks this machine's`);
}

/** Applies `key=value` overrides; `encoder=NAME` picks a named encoder. */
export function applyOverrides(p: Preset, sets: string[]): Preset {
  const out = structuredClone(p) as unknown as Record<string, unknown>;
  for (const s of sets) {
    const eq = s.indexOf('=');
    if (eq <= 0) throw new Error(`--set ${s}: expected key=value`);
    const key = s.slice(0, eq);
    let value = parseValue(s.slice(eq + 1));
    if (key === 'encoder' && typeof value === 'string') {
      if (!ENCODERS[value]) throw new Error(`--set encoder=${value}: unknown encoder (accepted: ${Object.keys(ENCODERS).join(', ')})`);
      value = structuredClone(ENCODERS[value]);
    }
    const path = key.split('.');
    let obj = out;
    for (const k of path.slice(0, -1)) {
      if (typeof obj[k] !== 'object' || obj[k] === null) throw new Error(`--set ${s}: '${k}' is not a field of the preset`);
      obj = obj[k] as Record<string, unknown>;
    }
    const last = path[path.length - 1];
    if (key === 'nchwc') assertNchwc(value);
    if (!(last in obj) && key !== 'nchwc' && !['predictor', 'name', 'fuse', 'cropsInGraph', 'scale', 'depthwiseWeightGrad'].includes(last)) throw new Error(`--set ${s}: unknown field '${last}'`);
    obj[last] = value;
  }
  return out as unknown as Preset;
}

export function getPreset(name: string, sets: string[] = []): Preset {
  const p = PRESETS[name];
  if (!p) throw new Error(`--preset ${name}: unknown preset (accepted: ${Object.keys(PRESETS).join(', ')})`);
  return applyOverrides(p, sets);
}
