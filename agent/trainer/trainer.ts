// The Trainer: loads an artifact directory through its manifest, opens the training-step and embed
// sessions on the chosen EP, owns the state (parameters, BN statistics, optimizer state) and runs steps.

import { createHash } from 'node:crypto';
import { readFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { decodeSafetensors } from '../../core/codecs/safetensors.ts';
import { MANIFEST_FORMAT, type Manifest } from '../../core/manifest.ts';
import { fault } from '../../core/faults.ts';
import { openSession, EpError, SessionRunError, type EP, type EpOptions, type Session, type FeedTensor } from './backend.ts';

export interface TrainerOptions extends EpOptions {
  ep?: EP;
  /** Use this EP instead when the requested one cannot start (explicit, never silent). */
  epFallback?: EP;
  /** Skip opening embed.onnx (benchmarks of the step alone). */
  noEmbed?: boolean;
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

export class ManifestError extends Error {}

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
  private runs = 0;
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
    const ep = o.ep ?? 'cpu';
    let train: Session | undefined;
    let embed: Session | null = null;
    try {
      train = await openSession(trainBytes, ep, o);
      if (embedBytes) embed = await openSession(embedBytes, ep, o);
    } catch (e) {
      if (!(e instanceof EpError) || !o.epFallback || o.epFallback === ep) throw e;
      process.emitWarning(`${e.message}; falling back to --ep ${o.epFallback} as --ep-fallback asks`);
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

  get cropsShape(): number[] {
    return this.manifest.trainStep.crops.shape as number[];
  }

  private stateFeeds(filter: (s: Manifest['state'][number]) => boolean): Record<string, FeedTensor> {
    const f: Record<string, FeedTensor> = {};
    for (const s of this.manifest.state) if (filter(s)) f[s.name] = { type: 'float32', data: this.state.get(s.name)!, dims: s.shape };
    return f;
  }

  /** One update on a batch of crops laid out as the manifest says. */
  async step(crops: Float32Array, lr: number): Promise<StepResult> {
    const ts = this.manifest.trainStep;
    const shape = this.cropsShape;
    const n = shape.reduce((a, b) => a * b, 1);
    if (crops.length !== n) throw new Error(`step: crops has ${crops.length} values, the artifact expects [${shape}] = ${n}`);
    const stepNo = this.steps + 1;
    const failAfter = fault('session-error-after');
    if (failAfter !== undefined && ++this.runs > Number(failAfter) && this.train.ep === this.ep0) {
      throw new SessionRunError(this.train.ep, `execution provider '${this.train.ep}' failed during a run: injected fault (SSOCL_INJECT_FAULT)`);
    }
    const t0 = performance.now();
    const out = await this.train.run({
      ...this.stateFeeds(() => true),
      [ts.crops.name]: { type: 'float32', data: crops, dims: shape },
      [ts.lr]: { type: 'float32', data: Float32Array.of(lr), dims: [] },
      [ts.step]: { type: 'float32', data: Float32Array.of(stepNo), dims: [] },
    });
    const ms = performance.now() - t0;
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

  /** Features and embeddings of images (NCHW in [0, 1]) with the current weights. */
  async embed(images: Float32Array, count: number): Promise<{ features: Float32Array; embedding: Float32Array }> {
    if (!this.embedSession) throw new Error('embed: this Trainer was opened without embed.onnx');
    const e = this.manifest.embed;
    const [, c, h, w] = e.images.shape as number[];
    if (images.length !== count * c * h * w) throw new Error(`embed: ${images.length} values for ${count} images of [${c}, ${h}, ${w}]`);
    const out = await this.embedSession.run({
      ...this.stateFeeds((s) => s.embed),
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
