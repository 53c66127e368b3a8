// An encoder's health on the health set, measured with whatever embeds images (the trainer's own
// embed session in the agent): effective rank and mean pairwise cosine of the backbone features of the
// frames as they are, alignment of two augmented views of each frame (crops drawn from a fixed seed, so
// every model sees the same crops), the projection's effective rank beside them, and optionally the
// weighted kNN accuracy on a labelled probe folder.

import { Rng } from '../../core/rng.ts';
import { sha256 } from '../../core/atomic.ts';
import { renderCrop, sampleCrop, type AugmentConfig } from '../frames/augment.ts';
import { readImageFolder } from '../eval/folder.ts';
import type { Fit } from '../frames/decode.ts';
import { knnWeighted } from '../eval/knn.ts';
import { alignment, effectiveRank, meanPairwiseCosine, singularValues } from './metrics.ts';

export type EmbedFn = (images: Float32Array, count: number) => Promise<{ features: Float32Array; embedding: Float32Array }>;

export interface ProbeFigures {
  /** Weighted cosine kNN accuracy (k 20, T 0.07, as `ssocl eval`), 0-1. */
  knn: number;
  k: number;
  queries: number;
  /** Digest of the probe images: accuracies are compared only on the same probe. */
  set: string;
}

export interface HealthFigures {
  /** Frames of the health set measured, and its digest (figures compare only on the same set). */
  frames: number;
  set: string;
  /** RankMe of the backbone features (1 when every frame embeds alike). */
  rank: number;
  /** Mean cosine similarity of the features over all pairs of distinct frames (1 when alike). */
  meanCos: number;
  /** Mean cosine between the features of two augmented views of the same frame. */
  alignment: number;
  /** RankMe of the projection head's output (what the loss trains directly). */
  embeddingRank: number;
  probe?: ProbeFigures;
  ms: number;
}

/** Features and embeddings of n uint8 CHW frames, `batch` at a time, each frame made by `render`. */
async function embedAll(embed: EmbedFn, n: number, per: number, batch: number, render: (i: number, out: Float32Array, off: number) => void) {
  const features: Float32Array[] = [];
  const embedding: Float32Array[] = [];
  const buf = new Float32Array(batch * per);
  for (let s = 0; s < n; s += batch) {
    const m = Math.min(batch, n - s);
    for (let j = 0; j < m; j++) render(s + j, buf, j * per);
    const out = await embed(m === batch ? buf : buf.subarray(0, m * per), m);
    features.push(out.features.slice());
    embedding.push(out.embedding.slice());
  }
  const cat = (xs: Float32Array[]) => {
    const out = new Float32Array(xs.reduce((a, x) => a + x.length, 0));
    let o = 0;
    for (const x of xs) (out.set(x, o), (o += x.length));
    return out;
  };
  return { features: cat(features), embedding: cat(embedding) };
}

function finite(...xs: Float32Array[]): boolean {
  for (const x of xs) for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i])) return false;
  return true;
}

/** The label-free figures of `embed` on n frames (uint8 CHW, size x size, concatenated). */
export async function measureHealth(
  embed: EmbedFn,
  set: { images: Uint8Array; count: number; digest: string },
  size: number,
  augment: AugmentConfig,
  seed = 0,
  batch = 64,
): Promise<HealthFigures> {
  const t0 = performance.now();
  const n = set.count;
  const per = 3 * size * size;
  const clean = await embedAll(embed, n, per, batch, (i, out, off) => {
    for (let k = 0; k < per; k++) out[off + k] = set.images[i * per + k] / 255;
  });
  // Both views of frame i from one generator, in frame order: the same crops for every model measured.
  const rng = new Rng(seed);
  const crops = Array.from({ length: n }, () => [sampleCrop(rng, size, augment), sampleCrop(rng, size, augment)]);
  const view = (v: number) => embedAll(embed, n, per, batch, (i, out, off) => renderCrop(set.images, i * per, size, crops[i][v], out, off));
  const a = await view(0);
  const b = await view(1);
  const dF = clean.features.length / Math.max(n, 1);
  const dE = clean.embedding.length / Math.max(n, 1);
  const ok = finite(clean.features, clean.embedding, a.features, b.features);
  return {
    frames: n,
    set: set.digest,
    rank: ok ? effectiveRank(singularValues(clean.features, n, dF)) : NaN,
    meanCos: ok ? meanPairwiseCosine(clean.features, n, dF) : NaN,
    alignment: ok ? alignment(a.features, b.features, n, dF) : NaN,
    embeddingRank: ok ? effectiveRank(singularValues(clean.embedding, n, dE)) : NaN,
    ms: Math.round(performance.now() - t0),
  };
}

/** A labelled folder (--probe ROOT), decoded once at the training size. */
export interface Probe {
  root: string;
  train: { images: Uint8Array; labels: Uint8Array; count: number };
  test: { images: Uint8Array; labels: Uint8Array; count: number };
  classes: number;
  set: string;
}

export async function loadProbe(root: string, o: { size: number; fit: Fit; maxPixels: number }): Promise<Probe> {
  const r = await readImageFolder(root, o);
  return {
    root,
    train: r.train,
    test: r.test,
    classes: r.train.classes.length,
    set: sha256(Buffer.concat([r.train.images, r.train.labels, r.test.images, r.test.labels])).slice(0, 16),
  };
}

/** kNN accuracy of `embed`'s features on the probe: its train part as the memory, its test part as queries. */
export async function probeAccuracy(embed: EmbedFn, p: Probe, size: number, batch = 64): Promise<ProbeFigures> {
  const per = 3 * size * size;
  const feats = (s: Probe['train']) =>
    embedAll(embed, s.count, per, batch, (i, out, off) => {
      for (let k = 0; k < per; k++) out[off + k] = s.images[i * per + k] / 255;
    });
  const mem = (await feats(p.train)).features;
  const q = (await feats(p.test)).features;
  const k = Math.min(20, p.train.count);
  const [r] = await knnWeighted({ memory: mem, memoryLabels: p.train.labels, queries: q, queryLabels: p.test.labels, d: mem.length / p.train.count, classes: p.classes }, [k]);
  // knnWeighted gives percent; the gate, --probe-max-drop (0-1) and every display read a fraction.
  return { knn: r.accuracy / 100, k, queries: r.total, set: p.set };
}
