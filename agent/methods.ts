// The methods of the comparison, each defined once: which artifacts it trains (a preset and overrides,
// at the edge and at the paper's scale), its buffer policy, replay rule and warm-up, and the crops and
// updates per arrival where the method fixes them. No method has its own loop: `ssocl run --method`
// and bench/compare read these definitions and configure the same learner (trainer/learner.ts).

import { OURS_POLICY, OURS_STRATA, type BufferPolicy } from './buffer/buffer.ts';
import type { Replay, Warmup } from './trainer/learner.ts';

/** A preset of tools/artifacts/presets.ts and `--set` overrides on it. */
export interface ArtifactSpec {
  preset: string;
  sets: string[];
}

export interface Method {
  name: string;
  /** One line for --help. */
  describe: string;
  /** The edge encoder (CPU), and ResNet-18-CIFAR at the paper's settings (bench gpu-/paper- protocols). */
  edge: ArtifactSpec;
  paper: ArtifactSpec;
  buffer: BufferPolicy;
  /** The strata policies' spans of the stream, where the method sets them (unset: DEFAULT_STRATA). */
  strata?: number;
  replay: Replay;
  warmup: Warmup;
  /** Views per image its loss is defined for (SimSiam, NT-Xent: 2); unset: the preset's multi-crop N. */
  crops?: number;
  /** Updates per arrival K when the method fixes it; unset: the artifacts' K (bench: the equal-budget K). */
  updates?: number;
  /** 'arrival': each step's batch is the arrival's new images alone (no replay; artifacts built with
   * batch = new images per arrival; bench gives it twice the updates for the same crop passes). */
  batch?: 'arrival';
}

// The paper's eq. 1 in place of the code's MCC, with each scale's own weights (edge: 1 and 0.02, as the
// edge preset's mcc; paper: 50 and 1, as paper-cifar's).
const MCC_PAPER_EDGE = 'losses=[{"name":"mcc-paper","weight":1},{"name":"tcr","weight":0.02}]';
const MCC_PAPER_PAPER = 'losses=[{"name":"mcc-paper","weight":50},{"name":"tcr","weight":1}]';

const OURS: Pick<Method, 'edge' | 'paper' | 'buffer' | 'replay' | 'warmup'> = { edge: { preset: 'edge', sets: [] }, paper: { preset: 'paper-cifar', sets: [] }, buffer: OURS_POLICY, replay: 'mixed', warmup: 'none' };

const list: Method[] = [
  // Issue #31: ours' buffer is the redundancy rule within the densest of 16-32 spans of the stream (a fixed grid), on embeddings refreshed under the encoder (each entry on entry and every 4 arrivals; 8 at K = 1);
  // its batches hold the arrival's novel images (no near-duplicate of a held entry or of each other) and replayed ones (the static camera, bench/RESULTS.md).
  { name: 'ours', describe: "Imai et al.: MCC + TCR on N crops, diverse buffer (the most redundant by embeddings refreshed every 4 arrivals (8 at K = 1), within the densest of 16-32 spans of the stream), the arrival's novel images + replayed ones each step", ...OURS, strata: OURS_STRATA, replay: 'novel' },
  // Issue #31: the 20-class stream's kNN is higher under the paper's rule, whose buffer holds mostly the newest classes; a balanced buffer whose replay leans to its newest entries.
  { name: 'ours-recent', describe: "ours with half of each batch's replay draws from the newest quarter of the buffer (by stream position)", ...OURS, strata: OURS_STRATA, replay: 'novel-recent' },
  // Ours before the novel rule, and the variants below it, as measured: every image of the arrival in each batch (mixed replay).
  { name: 'ours-mixed', describe: 'ours with every image of the arrival in each batch, near-duplicates too (mixed replay: ours before the novel rule)', ...OURS, strata: OURS_STRATA },
  {
    name: 'ours-paper-eq', describe: "ours with the paper's eq. 1 in place of the code's MCC",
    ...OURS, edge: { preset: 'edge', sets: [MCC_PAPER_EDGE] }, paper: { preset: 'paper-cifar', sets: [MCC_PAPER_PAPER] },
  },
  { name: 'ours-buffer-replay', describe: 'ours with every minibatch drawn from the whole buffer (the paper\'s text)', ...OURS, strata: OURS_STRATA, replay: 'buffer' },
  { name: 'ours-refresh', describe: "ours with the paper's rule (no spans of the stream) on every entry's embedding recomputed in one batch before each removal round", ...OURS, buffer: 'diverse-refresh' },
  { name: 'ours-refresh-all', describe: "ours embedding every entry in one batch before each removal round (ours' buffer before the rolling refresh)", ...OURS, buffer: 'diverse-strata-refresh' },
  { name: 'ours-spans8', describe: 'ours with 8 spans of the stream instead of 16', ...OURS },
  { name: 'ours-spans32', describe: 'ours with 32 spans of the stream instead of 16', ...OURS, strata: 32 },
  // Issue #31, static camera: crowding (k nearest) in place of the nearest neighbour, ours' spans and rolling rows.
  { name: 'ours-crowd', describe: "ours ranking within the crowded span by the mean cosine to the 4 nearest entries (crowding) instead of the nearest alone", ...OURS, buffer: 'diverse-strata-crowd', strata: OURS_STRATA },
  { name: 'ours-span-refresh', describe: "ours with only the crowded spans' entries embedded at each removal round, each ranked within its own span (a cheaper refresh)", ...OURS, buffer: 'diverse-span-refresh' },
  // Issue #31: the paper's rule as ours had it before (z* ranked as stored, no regard to the stream's history), for the comparison.
  { name: 'ours-old-rule', describe: "ours with the paper's redundancy rule on the stored features z* (ours' default before issue #31)", ...OURS, buffer: 'diverse' },
  // Ablation of the buffer alone: the paper's uncorrelated-gradient claim is about the buffer's contents.
  { name: 'ours-reservoir', describe: 'ours with a reservoir buffer instead of the diverse removal rule', ...OURS, buffer: 'reservoir' },
  // Its control under ours' replay rule: a reservoir keeps no rows, so near-duplicates are judged within the arrival alone.
  { name: 'ours-reservoir-novel', describe: "ours-reservoir with ours' novel replay (near-duplicates judged within the arrival: the reservoir keeps no rows)", ...OURS, buffer: 'reservoir', replay: 'novel' },
  // Issue #15's buffer settings at equal compute: the rule against a FIFO, MinRed's timing of the same
  // rule, and no buffer at all.
  { name: 'ours-fifo', describe: 'ours with a FIFO buffer (the newest M images)', ...OURS, buffer: 'fifo' },
  { name: 'ours-minred-buffer', describe: "ours with MinRed's buffer timing: the redundancy rule applied before the steps", ...OURS, buffer: 'minred' },
  // Issue #15's variants of the rule (ours keeps the paper's).
  { name: 'ours-fresh', describe: "ours with redundancy ranked on every entry's backbone features under the current model, recomputed at each shrink", ...OURS, buffer: 'diverse-fresh' },
  { name: 'ours-strata', describe: 'ours with the redundancy rule taken within the densest of 8-16 equal spans of the stream so far (reservoir-like coverage of the past)', ...OURS, buffer: 'diverse-strata' },
  { name: 'ours-strata-fresh', describe: "ours-strata ranking redundancy on every entry's backbone features under the current model, recomputed at each shrink", ...OURS, buffer: 'diverse-strata-fresh' },
  { name: 'ours-strata-random', describe: 'control for ours-strata: the same 8 spans of the stream, a uniform draw within the most crowded (no redundancy rule)', ...OURS, buffer: 'strata-random' },
  {
    name: 'ours-resdiv', describe: 'ours with reservoir admission (each new image kept with probability M / t) and the evictions it needs by the redundancy rule',
    ...OURS, buffer: 'diverse-reservoir',
  },
  {
    name: 'ours-resdiv-fresh', describe: "ours-resdiv with the evictions ranked on every entry's backbone features under the current model, recomputed at each shrink",
    ...OURS, buffer: 'diverse-reservoir-fresh',
  },
  // Not a rule for real streams: the ceiling a perfect redundancy detector would reach on clip streams.
  { name: 'ours-oracle', describe: "benchmark yardstick: ours with a buffer that knows each frame's clip from its key (bench --clips, --video) and drops from the clip with the most frames", ...OURS, buffer: 'oracle-clip' },
  {
    name: 'ours-nobuffer', describe: "ours trained on each arrival's images alone (no replay)",
    ...OURS, edge: { preset: 'edge', sets: ['batch=16'] }, paper: { preset: 'paper-cifar', sets: ['batch=100'] }, buffer: 'fifo', batch: 'arrival',
  },
  // The buffer ours had when it was set up as EMP-SSL's (the paper's rule on z*): a baseline keeps its rules.
  { name: 'empssl', describe: "EMP-SSL: invariance + TCR on the same crops and replay as ours, the paper's redundancy rule on z*", ...OURS, edge: { preset: 'edge-empssl', sets: [] }, paper: { preset: 'empssl', sets: [] }, buffer: 'diverse' },
  {
    name: 'minred', describe: 'MinRed: SimSiam on 2 views, buffer-only minibatches, redundancy removal before the steps, no training until the buffer fills',
    edge: { preset: 'edge-minred', sets: [] }, paper: { preset: 'minred', sets: [] }, buffer: 'minred', replay: 'buffer', warmup: 'fill', crops: 2,
  },
  {
    name: 'simclr-reservoir', describe: 'SimCLR (NT-Xent, 2 views) on a reservoir buffer: the floor any method must clear',
    edge: { preset: 'edge-simclr', sets: [] }, paper: { preset: 'simclr', sets: [] }, buffer: 'reservoir', replay: 'buffer', warmup: 'none', crops: 2,
  },
  {
    // Each step: this arrival's images and as many from memory (the code's 128 + 128).
    name: 'scale', describe: 'SCALE: pseudo-supervised contrast + IRD distillation toward the model as each arrival found it, PSA memory on backbone features',
    edge: { preset: 'edge-scale', sets: [] }, paper: { preset: 'scale', sets: [] }, buffer: 'psa', replay: 'mixed', warmup: 'none', crops: 2,
  },
];

/**
 * The buffer policies `ssocl run --buffer` takes, with what each does (oracle-clip, which needs each
 * frame's clip, is the bench's alone).
 */
export const BUFFER_POLICY_TEXT: Readonly<Record<Exclude<BufferPolicy, 'oracle-clip'>, string>> = {
  diverse: 'drop the most redundant seen images after the arrival\'s steps',
  minred: "the same rule applied before the steps, as MinRed's code",
  reservoir: 'a uniform reservoir of the stream',
  fifo: 'the newest images',
  psa: "SCALE's PSA selection on backbone features",
  'diverse-fresh': 'the rule on backbone features recomputed at each shrink',
  'diverse-strata': 'the rule within the densest of 8-16 spans of the stream',
  'diverse-reservoir': 'reservoir admission, evictions by the rule',
  'diverse-strata-fresh': 'diverse-strata on backbone features recomputed at each shrink',
  'strata-random': "diverse-strata's spans, a uniform draw within",
  'diverse-reservoir-fresh': 'diverse-reservoir on backbone features recomputed at each shrink',
  'diverse-strata-refresh': 'diverse-strata on the embeddings of every entry recomputed in one batch before each removal round',
  'diverse-refresh': 'diverse on those recomputed embeddings (no spans)',
  'diverse-span-refresh': 'diverse-strata-refresh embedding only the spans that give up entries, each entry ranked within its span',
  'diverse-strata-crowd': 'diverse-strata-rolling ranking by the mean cosine to the 4 nearest entries, not the nearest alone (a try for a static camera)',
  'diverse-strata-rolling': "ours (issue #31, with 16 spans under --method ours): diverse-strata-refresh with each entry embedded on entry and every 4 arrivals after (8 at K = 1), its row kept in the buffer and checkpoints",
};

export const METHODS: Readonly<Record<string, Method>> = Object.fromEntries(list.map((m) => [m.name, m]));
export const METHOD_NAMES = list.map((m) => m.name);
/** What `ssocl run` learns by without --method. */
export const DEFAULT_METHOD = 'ours';

export function getMethod(name: string, flag = '--method'): Method {
  const m = METHODS[name];
  if (!m) throw new Error(`${flag} ${name}: unknown method (accepted: ${METHOD_NAMES.join(', ')})`);
  return m;
}

/**
 * The artifact name `ssocl artifacts` gives the method's preset at a scale (the preset's own name;
 * with overrides, the method's, built with --name), so `ssocl run --method` knows where to look.
 */
export function artifactName(m: Method, scale: 'edge' | 'paper'): string {
  const spec = m[scale];
  return spec.sets.length ? (scale === 'edge' ? m.name : `${m.name}-paper`) : spec.preset;
}

/** The command that builds the method's artifacts at a scale. */
export function buildCommand(m: Method, scale: 'edge' | 'paper'): string {
  const spec = m[scale];
  return `ssocl artifacts --preset ${spec.preset}${spec.sets.map((s) => ` --set '${s}'`).join('')}${spec.sets.length ? ` --name ${artifactName(m, scale)}` : ''}`;
}

/**
 * Why artifacts (their manifest's preset name and crops per image) cannot train the method, or '' if
 * they can: the method's loss, heads and crops are compiled into them.
 */
export function artifactsMismatch(m: Method, artifacts: { name: string; views: number }): string {
  const names = [artifactName(m, 'edge'), artifactName(m, 'paper')];
  if (!names.includes(artifacts.name)) return `built from preset '${artifacts.name}'; --method ${m.name} trains '${names[0]}' (or '${names[1]}') artifacts: ${buildCommand(m, 'edge')}`;
  if (m.crops !== undefined && artifacts.views !== m.crops) return `${artifacts.views} crops per image; --method ${m.name} takes ${m.crops}`;
  return '';
}

/** The learner settings a method decides. */
export interface MethodRules {
  policy: BufferPolicy;
  replay: Replay;
  warmup: Warmup;
  /** Unset: the artifacts' K. */
  updates?: number;
  /** The strata policies' spans (unset: the buffer's default). */
  strata?: number;
}

/** The method's rules, each replaced by an explicit choice where one is given (a flag of `ssocl run`, the bench's budget). */
export function methodRules(m: Method, chosen: Partial<MethodRules> = {}): MethodRules {
  return {
    policy: chosen.policy ?? m.buffer,
    replay: chosen.replay ?? m.replay,
    warmup: chosen.warmup ?? m.warmup,
    ...((chosen.updates ?? m.updates) !== undefined ? { updates: chosen.updates ?? m.updates } : {}),
    // The method's spans go with its own policy only: another policy chosen by flag keeps its default.
    ...((chosen.strata ?? m.strata) !== undefined && (chosen.policy ?? m.buffer) === m.buffer ? { strata: chosen.strata ?? m.strata } : {}),
  };
}
