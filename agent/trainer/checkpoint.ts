// Checkpoints: the trainer state, the buffer (images, features, flags), counters and RNG states in
// one safetensors file, written to a temporary file, fsynced and renamed, so a kill at any moment
// leaves the previous checkpoint complete. The newest 3 are kept; resume takes the newest readable one.

import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';
import { decodeSafetensors, encodeSafetensors, type StTensor } from '../../tools/io/safetensors.ts';
import type { Entry } from '../buffer/buffer.ts';
import { fault } from '../faults.ts';

export const CHECKPOINT_VERSION = 1;

export interface CheckpointMeta {
  version: number;
  /** sha256 of the training-step graph the state belongs to. */
  artifact: string;
  steps: number;
  arrivals: number;
  framesIngested: number;
  rng: number[];
  cropRng: number[];
  buffer: { nextId: number; streamCount: number; entries: Omit<Entry, 'image' | 'feature'>[]; hasFeature: boolean[] };
  counters: Record<string, number>;
  time: string;
}

export interface CheckpointData {
  meta: CheckpointMeta;
  state: Map<string, Float32Array>;
  images: Uint8Array[];
  features: (Float32Array | null)[];
}

/** Writes bytes to `file` atomically: temp file, fsync, rename, fsync of the directory. */
export function writeFileAtomic(file: string, bytes: Uint8Array): void {
  const dir = path.dirname(file);
  mkdirSync(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(file)}.tmp-${process.pid}`);
  const fd = openSync(tmp, 'w');
  try {
    let off = 0;
    while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  const k = fault('kill-before-rename');
  if (k !== undefined && path.basename(file).includes(k)) process.kill(process.pid, 'SIGKILL');
  renameSync(tmp, file);
  const dfd = openSync(dir, 'r');
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
}

export function saveCheckpoint(dir: string, c: CheckpointData, keep = 3): string {
  const tensors = new Map<string, StTensor['data'] | StTensor>();
  for (const [k, v] of c.state) tensors.set(`state/${k}`, v);
  const n = c.images.length;
  const per = n ? c.images[0].length : 0;
  const imgs = new Uint8Array(n * per);
  c.images.forEach((im, i) => imgs.set(im, i * per));
  tensors.set('buffer/images', { dtype: 'U8', shape: [n, per], data: imgs });
  const d = c.features.find((f) => f)?.length ?? 0;
  const feats = new Float32Array(n * d);
  c.features.forEach((f, i) => f && feats.set(f, i * d));
  tensors.set('buffer/features', { dtype: 'F32', shape: [n, d], data: feats });
  const bytes = encodeSafetensors(tensors, { ssocl: JSON.stringify(c.meta) });
  const file = path.join(dir, `ckpt-${String(c.meta.steps).padStart(9, '0')}-${String(c.meta.arrivals).padStart(9, '0')}.safetensors`);
  writeFileAtomic(file, bytes);
  for (const old of listCheckpoints(dir).slice(0, -keep)) rmSync(old, { force: true });
  return file;
}

export function listCheckpoints(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => /^ckpt-\d+-\d+\.safetensors$/.test(f))
    .sort()
    .map((f) => path.join(dir, f));
}

export function readCheckpoint(file: string): CheckpointData {
  const { tensors, metadata } = decodeSafetensors(readFileSync(file));
  const meta = JSON.parse(metadata.ssocl) as CheckpointMeta;
  if (meta.version !== CHECKPOINT_VERSION) throw new Error(`${file}: checkpoint version ${meta.version}, expected ${CHECKPOINT_VERSION}`);
  const state = new Map<string, Float32Array>();
  for (const [k, t] of tensors) if (k.startsWith('state/')) state.set(k.slice(6), t.data as Float32Array);
  const imgs = tensors.get('buffer/images')!;
  const feats = tensors.get('buffer/features')!;
  const [n, per] = imgs.shape;
  const d = feats.shape[1];
  const images: Uint8Array[] = [];
  const features: (Float32Array | null)[] = [];
  for (let i = 0; i < n; i++) {
    images.push((imgs.data as Uint8Array).slice(i * per, (i + 1) * per));
    features.push(meta.buffer.hasFeature[i] ? (feats.data as Float32Array).slice(i * d, (i + 1) * d) : null);
  }
  return { meta, state, images, features };
}

/** The newest checkpoint that reads back whole (older ones are tried if the newest is damaged). */
export function latestCheckpoint(dir: string, warn: (msg: string) => void = () => {}): { file: string; data: CheckpointData } | null {
  const files = listCheckpoints(dir).reverse();
  for (const f of files) {
    try {
      return { file: f, data: readCheckpoint(f) };
    } catch (e) {
      warn(`skipping unreadable checkpoint ${f}: ${(e as Error).message}`);
    }
  }
  return null;
}

/**
 * Removes temp files that a killed writer left in `dir` (writeFileAtomic's). Called at start, before
 * this process writes anything there; one agent per state directory, so any pid's are stale (in a
 * container the restarted agent often has the same pid as the killed one).
 */
export function removeStaleTemps(dir: string): number {
  if (!existsSync(dir)) return 0;
  let n = 0;
  for (const f of readdirSync(dir)) {
    if (/^\..+\.tmp-\d+$/.test(f)) {
      rmSync(path.join(dir, f), { force: true });
      n++;
    }
  }
  return n;
}
