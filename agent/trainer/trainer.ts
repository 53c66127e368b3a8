// The Trainer: loads an artifact directory through its manifest, opens the training-step and embed
// sessions on the chosen EP, owns the state (parameters, BN statistics, optimizer state) and runs steps.

import { createHash } from 'node:crypto';
import { readFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { decodeSafetensors } from '../../core/codecs/safetensors.ts';
import { MANIFEST_FORMAT, type Manifest } from '../../core/manifest.ts';
import { fault } from '../../core/faults.ts';
import { openSession, nchwcBlock, EpError, SessionRunError, type EP, type EpOptions, type Session, type FeedTensor } from './backend.ts';

export interface TrainerOptions extends EpOptions {
  ep?: EP;
  /** Use this EP instead when the requested one cannot start (explicit, never silent). */
  epFallback?: EP;
  /** Skip opening embed.onnx (benchmarks of the step alone). */
  noEmbed?: boolean;
  /** Where the --ep-fallback notice goes, one line; default: stderr. */
  log?: (line: string) => void;
}

export interface StepResult {
  /** 1-based number of this update (as fed to the graph) and the learning rate it used. */
  step: number;
  lr: number;
  loss: number;
  terms: Record<string, number>;
  zbar: Float32Array;
  gradNorm: number;
  gradCos: number | null;
  /** false: non-finite loss, gradient or updated parameters, or an update over MAX_UPDATE_RATIO x the
   * weights' norm; the state was left as it was. */
  applied: boolean;
  ms: number;
}

export const MAX_UPDATE_RATIO = 10;

/** One fused run's inputs (manifest trainStep.fused): either host crops, or images + index + crop draws. */
export interface FusedBatch {
  /** K entries: lrs[i] is the learning rate of the run's i-th applied update. */
  lrs: ArrayLike<number>;
  /** Host crops, float32 [K, ...cropsShape]. */
  crops?: Float32Array;
  /** In-graph crops: the distinct images, uint8 [U, 3, S, S]. */
  images?: Uint8Array;
  /** In-graph crops: int64 [K, b], inner step k's batch as rows of `images`. */
  index?: BigInt64Array;
  /** In-graph crops: float32 [K, N*b, P], packed by core/crop-params.ts. */
  params?: Float32Array;
}

export class ManifestError extends Error {}

/**
 * A step compiled into ORT's NCHWc kernels (ssocl artifacts --nchwc) runs only on the CPU EP of a machine
 * with the same block size: elsewhere its session would not open, or would compute in the wrong layout.
 */
async function checkNchwc(dir: string, m: Manifest, ep: EP): Promise<void> {
  const want = m.trainStep.nchwc?.block;
  if (!want) return;
  const rebuild = 'rebuild the artifacts with ssocl artifacts ... --nchwc off (portable), or --nchwc auto on the machine that trains';
  if (ep === 'wasm') throw new ManifestError(`${dir}: train_step.onnx runs its convolutions in ORT's x86-64 CPU kernels (NCHWc, block ${want}), which the browser's WASM runtime does not have: for in-tab training, rebuild the artifacts with ssocl artifacts ... --nchwc off`);
  if (ep !== 'cpu') throw new ManifestError(`${dir}: train_step.onnx runs its convolutions in ORT's x86-64 CPU kernels (NCHWc, block ${want}), which --ep ${ep} does not have: use --ep cpu, or ${rebuild}`);
  const have = await nchwcBlock();
  const cpu = (b: number) => (b === 16 ? 'x86-64 with AVX-512' : b === 8 ? 'x86-64 with AVX2' : `block ${b}`);
  if (have !== want) {
    throw new ManifestError(`${dir}: train_step.onnx was built for ORT's NCHWc block ${want} (${cpu(want)}); this machine's CPU EP ${have ? `uses block ${have}` : 'has no NCHWc kernels'}: ${rebuild}`);
  }
}

export function readManifest(dir: string): Manifest {
  const file = path.join(dir, 'manifest.json');
  if (!existsSync(file)) throw new ManifestError(`no artifacts at ${dir}: manifest.json is missing (build them with 'ssocl artifacts --preset NAME')`);
  const m = JSON.parse(readFileSync(file, 'utf8')) as Manifest;
  if (m.format !== MANIFEST_FORMAT) throw new ManifestError(`${file}: format '${m.format}', expected '${MANIFEST_FORMAT}'`);
  return m;
}

function readChecked(dir: string, m: Manifest, name: string): Uint8Array {
  const file = path.join(dir, name);
  if (!existsSync(file)) throw new ManifestError(`${file} is missing`);
  const bytes = readFileSync(file);
  const want = m.files[name];
  const got = createHash('sha256').update(bytes).digest('hex');
  if (want && want !== got) throw new ManifestError(`${file}: sha256 ${got.slice(0, 12)}... does not match the manifest (${want.slice(0, 12)}...); rebuild the artifacts`);
  return bytes;
}

function sameNames(a: readonly string[], b: string[]): boolean {
  const s = new Set(a);
  return a.length === b.length && b.every((x) => s.has(x));
}

export class Trainer {
  /** Current state: every state tensor by its graph input name. */
  state = new Map<string, Float32Array>();
  /** Completed (applied) updates. */
  steps = 0;
  /** Distilling artifacts (manifest trainStep.distill): the past model's weights, and the distillation weight once set. */
  past: Map<string, Float32Array> | null = null;
  distillWeight = 0;
  private runs = 0;
  /** What crossed into and out of the training session, and the wall and process CPU time spent in its run() (benchmarks). */
  readonly io = { runs: 0, bytesIn: 0, bytesOut: 0, runMs: 0, runCpuMs: 0 };
  private readonly ep0: EP;

  private constructor(
    readonly dir: string,
    readonly manifest: Manifest,
    private train: Session,
    private embedSession: Session | null,
    private bytes: { train: Uint8Array; embed: Uint8Array | null; options: TrainerOptions },
  ) {
    this.ep0 = train.ep;
  }

  get ep(): EP {
    return this.train.ep;
  }

  /** Moves both sessions to another EP (after a run failure); the state is kept as it is. */
  async reopen(ep: EP): Promise<void> {
    await checkNchwc(this.dir, this.manifest, ep);
    const train = await openSession(this.bytes.train, ep, this.bytes.options);
    const embed = this.bytes.embed ? await openSession(this.bytes.embed, ep, this.bytes.options) : null;
    await this.train.release().catch(() => {});
    await this.embedSession?.release().catch(() => {});
    this.train = train;
    this.embedSession = embed;
  }

  static async open(dir: string, o: TrainerOptions = {}): Promise<Trainer> {
    const m = readManifest(dir);
    const trainBytes = readChecked(dir, m, m.trainStep.file);
    const embedBytes = o.noEmbed ? null : readChecked(dir, m, m.embed.file);
    const init = decodeSafetensors(readChecked(dir, m, m.init)).tensors;
    const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
    let ep = o.ep ?? 'cpu';
    // A CPU-only step asked for another EP goes straight to the CPU where --ep-fallback cpu allows it.
    if (m.trainStep.nchwc && ep !== 'cpu' && o.epFallback === 'cpu') {
      log(`${dir}: train_step.onnx runs in ORT's NCHWc CPU kernels; training on --ep cpu as --ep-fallback asks`);
      ep = 'cpu';
    }
    await checkNchwc(dir, m, ep);
    let train: Session | undefined;
    let embed: Session | null = null;
    try {
      train = await openSession(trainBytes, ep, o);
      if (embedBytes) embed = await openSession(embedBytes, ep, o);
    } catch (e) {
      if (!(e instanceof EpError) || !o.epFallback || o.epFallback === ep) throw e;
      log(`${e.brief}; falling back to --ep ${o.epFallback} as --ep-fallback asks`);
      // The training session may have started before the embed session failed.
      if (train) await train.release().catch(() => {});
      train = await openSession(trainBytes, o.epFallback, o);
      if (embedBytes) embed = await openSession(embedBytes, o.epFallback, o);
    }
    const wantIn = m.trainStep.inputs.map((i) => i.name);
    if (!sameNames(train.inputNames, wantIn)) throw new ManifestError(`${dir}: train_step.onnx inputs differ from the manifest`);
    const t = new Trainer(dir, m, train!, embed, { train: trainBytes, embed: embedBytes, options: o });
    for (const s of m.state) {
      const n = s.shape.reduce((a, b) => a * b, 1);
      if (s.init === 'zeros') {
        t.state.set(s.name, new Float32Array(n));
        continue;
      }
      const v = init.get(s.name);
      if (!v || v.dtype !== 'F32' || v.data.length !== n) throw new ManifestError(`${dir}: init.safetensors has no float32 '${s.name}' of shape [${s.shape}]`);
      t.state.set(s.name, v.data as Float32Array);
    }
    return t;
  }

  /** The initial state (a fleet's version 0), read again from init.safetensors (checked against the manifest). */
  initial(): Map<string, Float32Array> {
    const m = this.manifest;
    const init = decodeSafetensors(readChecked(this.dir, m, m.init)).tensors;
    return new Map(m.state.map((s) => [s.name, s.init === 'zeros' ? new Float32Array(s.shape.reduce((a, b) => a * b, 1)) : (init.get(s.name)!.data as Float32Array)]));
  }

  get cropsShape(): number[] {
    return this.manifest.trainStep.crops.shape as number[];
  }

  private stateFeeds(filter: (s: Manifest['state'][number]) => boolean): Record<string, FeedTensor> {
    const f: Record<string, FeedTensor> = {};
    for (const s of this.manifest.state) if (filter(s)) f[s.name] = { type: 'float32', data: this.state.get(s.name)!, dims: s.shape };
    return f;
  }

  /** Runs the training session, counting the bytes and time for `io`. */
  private async runTrain(feeds: Record<string, FeedTensor>): Promise<{ out: Record<string, FeedTensor>; ms: number }> {
    const failAfter = fault('session-error-after');
    if (failAfter !== undefined && ++this.runs > Number(failAfter) && this.train.ep === this.ep0) {
      throw new SessionRunError(this.train.ep, `execution provider '${this.train.ep}' failed during a run: injected fault (SSOCL_INJECT_FAULT)`);
    }
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    const out = await this.train.run(feeds);
    const ms = performance.now() - t0;
    const c = process.cpuUsage(c0);
    this.io.runs++;
    this.io.runMs += ms;
    this.io.runCpuMs += (c.user + c.system) / 1000;
    for (const f of Object.values(feeds)) this.io.bytesIn += f.data.byteLength;
    for (const f of Object.values(out)) this.io.bytesOut += f.data.byteLength;
    return { out, ms };
  }

  /** One update on a batch of crops laid out as the manifest says. */
  async step(crops: Float32Array, lr: number): Promise<StepResult> {
    const ts = this.manifest.trainStep;
    if (ts.fused) throw new Error(`step: artifact ${this.manifest.name} runs ${ts.fused.updates} updates per run; use arrive()`);
    const shape = this.cropsShape;
    const n = shape.reduce((a, b) => a * b, 1);
    if (crops.length !== n) throw new Error(`step: crops has ${crops.length} values, the artifact expects [${shape}] = ${n}`);
    const stepNo = this.steps + 1;
    const { out, ms } = await this.runTrain({
      ...this.stateFeeds(() => true),
      ...(ts.distill ? await this.distillFeeds(crops) : {}),
      [ts.crops.name]: { type: 'float32', data: crops, dims: shape },
      [ts.lr]: { type: 'float32', data: Float32Array.of(lr), dims: [] },
      [ts.step]: { type: 'float32', data: Float32Array.of(stepNo), dims: [] },
    });
    const scalar = (k: string) => (out[k].data as Float32Array)[0];
    const loss = scalar(ts.loss);
    const gradNorm = scalar(ts.gradNorm);
    // A step whose own loss is finite can still overflow the parameters it produces (a huge lr).
    const applied =
      Number.isFinite(loss) &&
      Number.isFinite(gradNorm) &&
      this.manifest.state.every((s) => s.role !== 'param' || allFinite(out[s.next].data as Float32Array)) &&
      this.sane(out);
    if (applied) {
      for (const s of this.manifest.state) this.state.set(s.name, out[s.next].data as Float32Array);
      this.steps++;
      if (ts.distill && this.distillWeight <= 0) this.distillWeight = scalar(ts.distill.weightUsed);
    }
    return {
      step: stepNo,
      lr,
      loss,
      terms: Object.fromEntries(Object.entries(ts.terms).map(([k, v]) => [k, scalar(v)])),
      zbar: out[ts.zbar].data as Float32Array,
      gradNorm,
      gradCos: ts.gradCos ? scalar(ts.gradCos) : null,
      applied,
      ms,
    };
  }

  /**
   * The K updates of a fused artifact in one run: the state crosses into ORT and back once. The graph
   * applies step()'s guard to each inner step (a skipped one leaves the state to the next, and does
   * not count: the next takes its update number and learning rate). Returns K results in order;
   * `ms` is the run's time split evenly.
   */
  async arrive(a: FusedBatch): Promise<StepResult[]> {
    const ts = this.manifest.trainStep;
    const f = ts.fused;
    if (!f) throw new Error(`arrive: artifact ${this.manifest.name} runs one update per run; use step()`);
    const K = f.updates;
    if (a.lrs.length !== K) throw new Error(`arrive: ${a.lrs.length} learning rates for ${K} updates`);
    const n = this.cropsShape.reduce((x, y) => x * y, 1);
    const feeds: Record<string, FeedTensor> = {
      ...this.stateFeeds(() => true),
      [f.lrs]: { type: 'float32', data: Float32Array.from(a.lrs), dims: [K] },
      [ts.step]: { type: 'float32', data: Float32Array.of(this.steps + 1), dims: [] },
    };
    if (f.crops) {
      if (a.crops?.length !== K * n) throw new Error(`arrive: crops has ${a.crops?.length ?? 0} values, the artifact expects [${f.crops.shape}] = ${K * n}`);
      feeds[f.crops.name] = { type: 'float32', data: a.crops, dims: f.crops.shape as number[] };
    } else {
      const [, c, h, w] = f.images!.shape as number[];
      const [, b] = f.index!.shape as number[];
      const np = (f.cropParams!.shape as number[]).reduce((x, y) => x * y, 1);
      const u = (a.images?.length ?? 0) / (c * h * w);
      if (!a.images || !Number.isInteger(u) || u < 1) throw new Error(`arrive: images has ${a.images?.length ?? 0} bytes, not a whole number of [${c}, ${h}, ${w}] images`);
      if (a.index?.length !== K * b) throw new Error(`arrive: index has ${a.index?.length ?? 0} entries, the artifact expects [${K}, ${b}]`);
      for (const i of a.index) if (i < 0n || i >= BigInt(u)) throw new Error(`arrive: index ${i} outside the ${u} images given`);
      if (a.params?.length !== np) throw new Error(`arrive: params has ${a.params?.length ?? 0} values, the artifact expects [${f.cropParams!.shape}]`);
      feeds[f.images!.name] = { type: 'uint8', data: a.images, dims: [u, c, h, w] };
      feeds[f.index!.name] = { type: 'int64', data: a.index, dims: [K, b] };
      feeds[f.cropParams!.name] = { type: 'float32', data: a.params, dims: f.cropParams!.shape as number[] };
    }
    const first = this.steps + 1;
    const { out, ms } = await this.runTrain(feeds);
    const col = (k: string) => out[k].data as Float32Array;
    const zbar = col(ts.zbar);
    const d = zbar.length / K;
    const results: StepResult[] = [];
    let applied = 0;
    for (let k = 0; k < K; k++) {
      const ok = col(f.applied)[k] === 1;
      results.push({
        step: first + applied,
        lr: a.lrs[applied],
        loss: col(ts.loss)[k],
        terms: Object.fromEntries(Object.entries(ts.terms).map(([t, v]) => [t, col(v)[k]])),
        zbar: zbar.subarray(k * d, (k + 1) * d),
        gradNorm: col(ts.gradNorm)[k],
        gradCos: ts.gradCos ? col(ts.gradCos)[k] : null,
        applied: ok,
        ms: ms / K,
      });
      if (ok) applied++;
    }
    // The graph already kept the state of skipped steps, so its final state is the state.
    for (const s of this.manifest.state) this.state.set(s.name, out[s.next].data as Float32Array);
    this.steps += applied;
    return results;
  }

  /**
   * A finite update can still be a blow-up (a huge lr moves the weights to 1e27): an update larger than
   * MAX_UPDATE_RATIO times the weights' own norm is treated like a non-finite one. Healthy steps move
   * the weights by well under 1x their norm.
   */
  private sane(out: Record<string, FeedTensor>): boolean {
    let d2 = 0;
    let w2 = 0;
    for (const s of this.manifest.state) {
      if (s.role !== 'param') continue;
      const a = this.state.get(s.name)!;
      const b = out[s.next].data as Float32Array;
      for (let i = 0; i < a.length; i++) {
        const d = b[i] - a[i];
        d2 += d * d;
        w2 += a[i] * a[i];
      }
    }
    return Math.sqrt(d2) <= MAX_UPDATE_RATIO * Math.max(Math.sqrt(w2), 1e-3);
  }

  /**
   * Takes the current weights as the past model (SCALE: a copy before each stream batch's updates).
   * A shallow copy: steps replace the state's arrays and never write into them.
   */
  snapshotPast(): void {
    if (!this.manifest.trainStep.distill) return;
    this.past = new Map([...this.state].filter(([k]) => this.manifest.state.find((s) => s.name === k)?.embed));
  }

  /** The distilling step's extra inputs: the past model's features of view 0 (the first b crops) and the weight. */
  private async distillFeeds(crops: Float32Array): Promise<Record<string, FeedTensor>> {
    const d = this.manifest.trainStep.distill!;
    const [b] = d.pastFeatures.shape as number[];
    const [, c, h, w] = this.cropsShape;
    if (!this.past) this.snapshotPast();
    const { features } = await this.embed(crops.subarray(0, b * c * h * w), b, this.past!);
    return {
      [d.pastFeatures.name]: { type: 'float32', data: features, dims: d.pastFeatures.shape as number[] },
      [d.weight]: { type: 'float32', data: Float32Array.of(this.distillWeight), dims: [] },
    };
  }

  /** Features and embeddings of images (NCHW in [0, 1]) with the current weights (or `weights`, e.g. the past model's). */
  async embed(images: Float32Array, count: number, weights?: Map<string, Float32Array>): Promise<{ features: Float32Array; embedding: Float32Array }> {
    if (!this.embedSession) throw new Error('embed: this Trainer was opened without embed.onnx');
    const e = this.manifest.embed;
    const [, c, h, w] = e.images.shape as number[];
    if (images.length !== count * c * h * w) throw new Error(`embed: ${images.length} values for ${count} images of [${c}, ${h}, ${w}]`);
    const state = weights ? Object.fromEntries([...weights].map(([k, v]) => [k, { type: 'float32' as const, data: v, dims: this.manifest.state.find((s) => s.name === k)!.shape }])) : this.stateFeeds((s) => s.embed);
    const out = await this.embedSession.run({
      ...state,
      [e.images.name]: { type: 'float32', data: images, dims: [count, c, h, w] },
    });
    return { features: out[e.features].data as Float32Array, embedding: out[e.embedding].data as Float32Array };
  }

  async close(): Promise<void> {
    await this.train.release();
    await this.embedSession?.release();
  }
}

function allFinite(a: Float32Array): boolean {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) return false;
  return true;
}
