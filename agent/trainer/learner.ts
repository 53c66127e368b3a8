// The learning loop of one arrival (DESIGN.md section 3): add the new images to the buffer, run K
// updates on batches composed by the replay rule, refresh the representative features from each
// step's zbar, then shrink the buffer. Shared by the agent and the benchmarks: a method is a
// configuration (agent/methods.ts: artifacts, buffer policy, replay rule, warm-up), not a copy of this loop.

import { Rng } from '../../core/rng.ts';
import { OURS_POLICY, OURS_STRATA, ReplayBuffer, drawDistinct, refreshEveryFor, unitRow, type Entry, type BufferConfig, type BufferSnapshot } from '../buffer/buffer.ts';
import { dot } from '../buffer/removal.ts';
import type { SimilarityEngine } from '../buffer/similarity.ts';
import { multiCrop, sampleCropPacked, CIFAR_AUGMENT, type AugmentConfig } from '../frames/augment.ts';
import { CROP_PARAM_COUNT } from '../../core/crop-params.ts';
import type { FusedBatch, StepResult, Trainer } from './trainer.ts';

/**
 * `mixed`: each step's batch is this arrival's images plus replayed ones. `buffer`: each minibatch drawn
 * from the whole buffer. `novel` (issue #31, the static camera): as mixed, but only the arrival's images
 * that are not near-duplicates (NOVEL_COSINE) of an entry the buffer already holds or of an earlier image
 * of the same arrival take the batch's fixed slots; the slots of the rest go to replay draws (which may
 * still draw them: they are in the buffer). A camera's 32 frames of one idle view then train as one, not
 * as 32 correlated copies; where every image is new (a data set stream) its batches are mixed's, draw
 * for draw. `novel-recent` (issue #31, measured as a variant): novel, with half of each batch's replay
 * draws from the newest quarter of the buffer (by stream position) and the rest from the whole of it.
 */
export type Replay = 'mixed' | 'buffer' | 'novel' | 'novel-recent';

/** The replay rules that give the arrival's near-duplicates' fixed slots to replay draws. */
export const checksNovel = (r: Replay): boolean => r === 'novel' || r === 'novel-recent';

/** `novel-recent`: the share of a batch's replay draws taken from the buffer's newest RECENT_SPAN. */
export const RECENT_SHARE = 0.5;
export const RECENT_SPAN = 0.25;

/**
 * `novel` replay: an arrival's image is a near-duplicate when the cosine of its embedding to the nearest
 * held row (or earlier image of the arrival) reaches this. Measured (bench/RESULTS.md, issue #31): the
 * nearest-neighbour cosine between distinct CIFAR images in the buffer is 0.52-0.84 over a run, between
 * frames of one clip or idle view 0.89-0.999.
 */
export const NOVEL_COSINE = 0.9;
/**
 * `fill`: no training step while the buffer, with the arrival added, holds fewer than its capacity
 * (MinRed: nothing is trained until the buffer first fills). Decided from the buffer alone, so a run
 * resumed from a checkpoint waits or trains exactly as the uninterrupted one would. `none`: train as
 * soon as the replay rule can compose a batch.
 */
export type Warmup = 'fill' | 'none';

export interface LearnerConfig {
  /** Updates per arrival, K. */
  updates: number;
  replay: Replay;
  warmup: Warmup;
  buffer: BufferConfig;
  lr: number;
  schedule: 'constant' | 'cosine';
  /** Steps over which the cosine schedule decays (ignored for constant). */
  scheduleSteps: number;
  augment: AugmentConfig;
  seed: number;
}

export interface ArrivalReport {
  steps: StepResult[];
  /** false while the buffer holds too few images for a full batch, or is still filling (warm-up). */
  trained: boolean;
  removed: Entry[];
  /** Wall time by part; `overlapped` is augmentation done while a step ran (inside `train`). */
  ms: { augment: number; overlapped: number; train: number; buffer: number };
  /** `novel` replay: the arrival's images that took the batch's fixed slots (absent under the other rules, or with no step to compose). */
  novel?: Entry[];
}

export class Learner {
  readonly buffer: ReplayBuffer;
  /** Replay draws and buffer decisions. */
  rng: Rng;
  /** Crop parameters. */
  cropRng: Rng;
  arrivals = 0;
  /** `novel-recent`: this arrival's entries, near-duplicates included, kept out of the recent draws. */
  private arrivalIds = new Set<number>();
  /**
   * Crop draws for the next fused run, made while the current run is in flight (the draws depend only
   * on cropRng's sequence, never on the batch), with cropRng's state before them: a snapshot records
   * that state and a restore drops the draws, so they are drawn again, the same.
   */
  drawn: { params: Float32Array; before: number[] } | null = null;

  constructor(
    readonly trainer: Trainer,
    readonly cfg: LearnerConfig,
    engine: SimilarityEngine | null = null,
  ) {
    // The rolling refresh's cadence follows the updates per arrival unless the config names one.
    this.buffer = new ReplayBuffer({ refreshEvery: refreshEveryFor(cfg.updates), ...cfg.buffer }, engine);
    this.rng = new Rng(cfg.seed);
    this.cropRng = new Rng(cfg.seed + 0x9e37);
  }

  get batchSize(): number {
    return this.trainer.manifest.trainStep.crops.images;
  }

  lrAt(step: number): number {
    if (this.cfg.schedule === 'constant') return this.cfg.lr;
    const t = Math.min(step / Math.max(1, this.cfg.scheduleSteps), 1);
    return 0.5 * this.cfg.lr * (1 + Math.cos(Math.PI * t));
  }

  private compose(fresh: Entry[]): Entry[] | null {
    const b = this.batchSize;
    if (this.cfg.replay === 'buffer') return this.buffer.size >= b ? this.buffer.sample(this.rng, b) : null;
    // mixed (and novel, with `fresh` its novel images): this arrival's images plus replayed ones drawn from the rest of the buffer.
    const replay = b - fresh.length;
    if (replay < 0) throw new Error(`arrival of ${fresh.length} images exceeds the step's batch of ${b}`);
    if (this.buffer.size - fresh.length < replay) return null;
    const exclude = new Set(fresh.map((e) => e.id));
    if (this.cfg.replay === 'novel-recent') {
      // The arrival's near-duplicates are the newest entries (the shrink comes after the steps): not "recent" draws.
      const newest = this.buffer.entries.filter((e) => !exclude.has(e.id) && !this.arrivalIds.has(e.id)).sort((a, b) => b.streamIndex - a.streamIndex);
      const pool = newest.slice(0, Math.max(1, Math.floor(this.buffer.size * RECENT_SPAN)));
      const recent = drawDistinct(this.rng, pool, Math.min(Math.round(replay * RECENT_SHARE), pool.length));
      const k = recent.length;
      for (const e of recent) exclude.add(e.id);
      return [...fresh, ...recent, ...this.buffer.sample(this.rng, replay - k, exclude)];
    }
    return [...fresh, ...this.buffer.sample(this.rng, replay, exclude)];
  }

  /** Shrinks the buffer to capacity by its policy (psa and the fresh policies read the entries through the current encoder). */
  shrink(): Promise<Entry[]> {
    return this.buffer.shrink(this.rng, async (es, space = 'features') => (await this.embedEntries(es))[space === 'embedding' ? 'embedding' : 'features']);
  }

  /**
   * `novel` replay: the arrival's images, in stream order, that are not near-duplicates (cosine of the
   * embeddings >= NOVEL_COSINE) of a held entry's row (the rolling policies' rows: their embeddings as of
   * their last refresh; under policies without rows only the arrival itself is compared) or of an earlier
   * image of the arrival, novel or not (a slow pan stays one view). One embed of the arrival's images
   * under the current weights, which the rolling policies keep as the images' first rows (so the check
   * costs no embedding they would not make anyway); it reads no random draw.
   */
  async novelOf(fresh: Entry[]): Promise<Entry[]> {
    if (!fresh.length) return fresh;
    const { embedding } = await this.embedEntries(fresh);
    const d = embedding.length / fresh.length;
    const rows = fresh.map((_, i) => unitRow(embedding, i, d));
    const own = new Set(fresh.map((e) => e.id));
    const keeps = this.buffer.keepsRows;
    const held = keeps ? this.buffer.entries.flatMap((e) => (!own.has(e.id) && e.fresh && e.fresh.length === d ? [e.fresh] : [])) : [];
    // The rolling policies take these as the entries' first rows: the shrink after the steps does not embed them again.
    if (keeps) fresh.forEach((e, i) => (e.fresh = rows[i]));
    return fresh.filter((_, i) => !held.some((h) => dot(rows[i], h) >= NOVEL_COSINE) && !rows.some((r, j) => j < i && dot(rows[i], r) >= NOVEL_COSINE));
  }

  /** Buffer entries' un-augmented images through embed.onnx under the current weights (batch-norm statistics as stored), in one batch: backbone features and embedding. */
  async embedEntries(es: Entry[]): Promise<{ features: Float32Array; embedding: Float32Array }> {
    const size = this.trainer.manifest.preset.image.size;
    const per = 3 * size * size;
    const x = new Float32Array(es.length * per);
    es.forEach((e, j) => {
      for (let k = 0; k < per; k++) x[j * per + k] = e.image[k] / 255;
    });
    return this.trainer.embed(x, es.length);
  }

  async arrive(items: { key: string; image: Uint8Array }[]): Promise<ArrivalReport> {
    const t0 = performance.now();
    const fresh = this.buffer.add(items);
    this.arrivals++;
    // MinRed cuts the buffer back before the steps: by the redundancy rule over seen entries, or oldest
    // first, so this arrival's unseen images stay for its steps.
    const early = this.buffer.shrinksOnAdd ? await this.buffer.shrink(this.rng) : [];
    // Distilling artifacts (SCALE): the past model is the model as this stream batch found it.
    if (this.trainer.manifest.trainStep.distill) this.trainer.snapshotPast();
    const ms = { augment: 0, overlapped: 0, train: 0, buffer: performance.now() - t0 };
    if (this.cfg.warmup === 'fill' && this.buffer.size < this.buffer.cfg.capacity) return { steps: [], trained: false, removed: early, ms };
    this.arrivalIds = new Set(fresh.map((e) => e.id));
    let fixed = fresh;
    if (checksNovel(this.cfg.replay) && this.buffer.size >= this.batchSize) {
      const tn = performance.now();
      fixed = await this.novelOf(fresh);
      ms.buffer += performance.now() - tn;
    }
    const r = this.trainer.manifest.trainStep.fused ? await this.arriveFused(fixed, ms) : await this.arriveSteps(fixed, ms);
    const out = fixed !== fresh ? { ...r, novel: fixed } : r;
    return early.length ? { ...out, removed: [...early, ...out.removed] } : out;
  }

  /** The K steps, one graph run each, then the shrink. */
  private async arriveSteps(fresh: Entry[], ms: ArrivalReport['ms']): Promise<ArrivalReport> {
    const steps: StepResult[] = [];
    const p = this.trainer.manifest.preset;
    const views = this.trainer.manifest.trainStep.crops.views;
    const size = p.image.size;
    const per = 3 * size * size;
    let trained = false;
    const prepare = () => {
      const batch = this.compose(fresh);
      if (!batch) return null;
      const images = new Uint8Array(batch.length * per);
      batch.forEach((e, j) => images.set(e.image, j * per));
      return { batch, crops: multiCrop(images, batch.length, size, views, this.cropRng, this.cfg.augment) };
    };
    const ta = performance.now();
    let next = prepare();
    ms.augment += performance.now() - ta;
    for (let k = 0; k < this.cfg.updates && next; k++) {
      const cur = next;
      trained = true;
      const tb = performance.now();
      const pending = this.trainer.step(cur.crops, this.lrAt(this.trainer.steps));
      // The next batch's crops are made while ORT runs this step (same draws, same order as sequential).
      const tp = performance.now();
      next = k + 1 < this.cfg.updates ? prepare() : null;
      ms.overlapped += performance.now() - tp;
      const r = await pending;
      const tc = performance.now();
      if (r.applied) await this.buffer.updateFeatures(cur.batch, r.zbar);
      const td = performance.now();
      ms.train += tc - tb;
      ms.buffer += td - tc;
      steps.push(r);
    }
    const te = performance.now();
    const removed = await this.shrink();
    ms.buffer += performance.now() - te;
    return { steps, trained, removed, ms };
  }

  /**
   * The same arrival through a fused artifact: each run's K batches and their crops are composed up
   * front, drawing replay then crops per step as the loop above does (batches never depend on the
   * steps' results), the run makes the K updates, then each applied step's zbar refreshes the
   * features of its batch in step order.
   */
  private async arriveFused(fresh: Entry[], ms: ArrivalReport['ms']): Promise<ArrivalReport> {
    const f = this.trainer.manifest.trainStep.fused!;
    const K = f.updates;
    if (this.cfg.updates % K !== 0) {
      throw new Error(`--updates ${this.cfg.updates}: artifact ${this.trainer.manifest.name} makes ${K} updates per run; use a multiple of ${K}`);
    }
    const views = this.trainer.manifest.trainStep.crops.views;
    const size = this.trainer.manifest.preset.image.size;
    const per = 3 * size * size;
    const steps: StepResult[] = [];
    let trained = false;
    for (let run = 0; run < this.cfg.updates / K; run++) {
      const ta = performance.now();
      const batches: Entry[][] = [];
      for (let k = 0; k < K; k++) {
        const batch = this.compose(fresh);
        if (!batch) break;
        batches.push(batch);
      }
      // The buffer holds the same images all arrival: every step has a batch or none does.
      if (!batches.length) break;
      if (batches.length !== K) throw new Error(`fused arrival: ${batches.length} of ${K} batches composed`);
      // Replay draws (rng) and crop draws (cropRng) use separate generators, each in step order, so
      // drawing all batches first gives the draws of the loop above.
      const input: FusedBatch = { lrs: [] };
      if (f.crops) {
        const n = views * this.batchSize * per;
        input.crops = new Float32Array(K * n);
        batches.forEach((batch, k) => {
          const images = new Uint8Array(batch.length * per);
          batch.forEach((e, j) => images.set(e.image, j * per));
          input.crops!.set(multiCrop(images, batch.length, size, views, this.cropRng, this.cfg.augment), k * n);
        });
      } else {
        // Each distinct image crosses once; the index says which rows make each step's batch.
        const rows = new Map<number, number>();
        const distinct: Entry[] = [];
        const index: number[] = [];
        for (const batch of batches) {
          for (const e of batch) {
            if (!rows.has(e.id)) rows.set(e.id, distinct.push(e) - 1);
            index.push(rows.get(e.id)!);
          }
        }
        const params = this.takeDraws(K * views * this.batchSize);
        input.images = new Uint8Array(distinct.length * per);
        distinct.forEach((e, u) => input.images!.set(e.image, u * per));
        input.index = BigInt64Array.from(index, BigInt);
        input.params = params;
      }
      ms.augment += performance.now() - ta;
      trained = true;
      const tb = performance.now();
      input.lrs = Array.from({ length: K }, (_, i) => this.lrAt(this.trainer.steps + i));
      const pending = this.trainer.arrive(input);
      if (input.params) {
        // The next run's draws (this arrival's next run or the next arrival's first) while ORT works.
        const tp = performance.now();
        const before = this.cropRng.state;
        this.drawn = { params: this.drawParams(input.params.length / CROP_PARAM_COUNT), before };
        ms.overlapped += performance.now() - tp;
      }
      const rs = await pending;
      const tc = performance.now();
      for (let k = 0; k < K; k++) if (rs[k].applied) await this.buffer.updateFeatures(batches[k], rs[k].zbar);
      ms.train += tc - tb;
      ms.buffer += performance.now() - tc;
      steps.push(...rs);
    }
    const te = performance.now();
    const removed = await this.shrink();
    ms.buffer += performance.now() - te;
    return { steps, trained, removed, ms };
  }

  /** `rows` crops' draws: those made early under the last run, else drawn now. */
  private takeDraws(rows: number): Float32Array {
    const d = this.drawn;
    this.drawn = null;
    if (d && d.params.length === rows * CROP_PARAM_COUNT) return d.params;
    if (d) this.cropRng.state = d.before; // a different count (never within one artifact): draw afresh
    return this.drawParams(rows);
  }

  /** Row i*b + j (crop i of image j) takes the draws in multiCrop's order. */
  private drawParams(rows: number): Float32Array {
    const params = new Float32Array(rows * CROP_PARAM_COUNT);
    for (let r = 0; r < rows; r++) sampleCropPacked(this.cropRng, this.trainer.manifest.preset.image.size, this.cfg.augment, params, r);
    return params;
  }
}

/**
 * Everything an arrival changes: the trainer's tensors and step count, the arrival count, both RNGs
 * and the buffer (images, features, seen flags, lifespans, ids). Checkpoints are written from it and
 * restored through it, so a restored learner continues bit for bit as if it had never stopped.
 */
export interface LearnerState {
  steps: number;
  arrivals: number;
  rng: number[];
  cropRng: number[];
  tensors: Map<string, Float32Array>;
  buffer: BufferSnapshot;
  /** Distilling artifacts: the weight set at the first step (0: not yet, or not distilling). */
  distillWeight: number;
}

export class StateError extends Error {}

export function snapshotLearner(l: Learner): LearnerState {
  return {
    steps: l.trainer.steps,
    arrivals: l.arrivals,
    rng: [...l.rng.state],
    cropRng: l.drawn ? [...l.drawn.before] : [...l.cropRng.state],
    tensors: new Map(l.trainer.state),
    buffer: l.buffer.snapshot(),
    distillWeight: l.trainer.distillWeight,
  };
}

/** Restores a snapshot; every tensor the manifest names must be there with its shape. */
export async function restoreLearner(l: Learner, s: LearnerState): Promise<void> {
  const t = l.trainer;
  for (const st of t.manifest.state) {
    const v = s.tensors.get(st.name);
    if (!v || v.length !== t.state.get(st.name)!.length) throw new StateError(`no state '${st.name}' of the manifest's shape`);
  }
  for (const st of t.manifest.state) t.state.set(st.name, s.tensors.get(st.name)!);
  t.steps = s.steps;
  l.arrivals = s.arrivals;
  l.rng.state = [...s.rng];
  l.cropRng.state = [...s.cropRng];
  l.drawn = null;
  // The past model needs no saving: it is the model as the next arrival finds it.
  t.distillWeight = s.distillWeight;
  await l.buffer.restore(s.buffer);
}

export function defaultLearnerConfig(trainer: Trainer, over: Partial<LearnerConfig> = {}): LearnerConfig {
  const p = trainer.manifest.preset;
  return {
    updates: p.agent.updatesPerArrival,
    replay: p.agent.replay,
    warmup: 'none',
    // Ours' buffer whatever the artifacts train: a method's policy comes from its definition (agent/methods.ts).
    buffer: { capacity: p.agent.bufferSize, policy: OURS_POLICY, strata: OURS_STRATA, alpha: 0.5 },
    lr: p.lr,
    schedule: 'constant',
    scheduleSteps: 10000,
    augment: CIFAR_AUGMENT,
    seed: 0,
    ...over,
  };
}
