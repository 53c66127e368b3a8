// Checkpoints: the trainer state, the buffer (images, features, flags), counters and RNG states in
// one safetensors file, written to a temporary file, fsynced and renamed, so a kill at any moment
// leaves the previous checkpoint complete. Each carries a sha256 of every tensor and of its metadata,
// checked on load: a checkpoint altered or cut short on disk is refused, not trained on. Only finite
// state is written, every write is read back and verified, and rotation keeps the newest 3 while never
// dropping the newest one that verifies.

import { existsSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { sha256, writeFileAtomic } from '../../core/atomic.ts';
import { decodeSafetensors, encodeSafetensors, type StTensor } from '../../core/codecs/safetensors.ts';
import { readFileInside, readInside } from '../../core/safe-read.ts';
import type { Entry } from '../buffer/buffer.ts';
import { bufferRows } from '../buffer/snapshot.ts';
import type { LearnerState } from './learner.ts';

/** What a checkpoint keeps of a device's fleet state (so a restarted device merges the next global right). */
export interface FleetRecord {
  fleet: string;
  device: string;
  version: number;
  seq: number;
  framesSinceBase: number;
  published: { seq: number; base: number; frames: number } | null;
  /** The global model of `version`, and the state the pending update was made from. */
  base: Map<string, Float32Array>;
  snapshot: Map<string, Float32Array> | null;
}

/**
 * 2: with digests. Version 1 files (no digests) are still read, with a warning, but only in a state
 * that never held a version 2 one: the first version 2 checkpoint records the format in FORMAT_FILE,
 * and from then on a version 1 file there is refused (else setting "version":1 would skip the digests).
 */
export const CHECKPOINT_VERSION = 2;

/** In the checkpoint folder: the checkpoint format this state has held ("2"). */
export const FORMAT_FILE = 'format';

/** The checkpoint format recorded in `dir` (0: none recorded, a state from before digests or a new one). */
export function recordedFormat(dir: string): number {
  try {
    const b = readInside(dir, FORMAT_FILE, { maxBytes: 64 });
    if (!b) return 0;
    const v = Number(b.toString('utf8').trim());
    return Number.isSafeInteger(v) && v > 0 ? v : CHECKPOINT_VERSION;
  } catch {
    return CHECKPOINT_VERSION; // something there that is not a plain record: assume the strictest
  }
}

/** Largest checkpoint read (the edge preset's are a few MB; a buffer of 10,000 frames at 96 px is 280 MB). */
export const MAX_CHECKPOINT_BYTES = 2 ** 31;

/** A checkpoint that exists but cannot be trusted (unreadable, altered, non-finite). */
export class CheckpointError extends Error {}

export interface CheckpointMeta {
  version: number;
  /** sha256 of the training-step graph the state belongs to. */
  artifact: string;
  steps: number;
  arrivals: number;
  framesIngested: number;
  rng: number[];
  cropRng: number[];
  buffer: { nextId: number; streamCount: number; entries: Omit<Entry, 'image' | 'feature' | 'fresh'>[]; hasFeature: boolean[]; hasFresh?: boolean[] };
  counters: Record<string, number>;
  /**
   * Frames learnt from since the previous checkpoint. They are committed (ledger, after-ingest) only
   * when the next checkpoint verifies, so if this one is lost the one before it plus these frames,
   * still on disk, redo what it held.
   */
  pending?: PendingFrame[];
  /** Distilling artifacts (SCALE): the distillation weight once set; absent otherwise. */
  distillWeight?: number;
  /** A fleet device (run --fleet): its place in the fleet; the tensors are extra/fleet.base/... and extra/fleet.snapshot/... */
  fleet?: Omit<FleetRecord, 'base' | 'snapshot'>;
  time: string;
}

export interface PendingFrame {
  key: string;
  size: number;
  mtimeMs: number;
}

export interface CheckpointData {
  meta: CheckpointMeta;
  state: Map<string, Float32Array>;
  images: Uint8Array[];
  features: (Float32Array | null)[];
  /** diverse-strata-rolling: each entry's kept embedding (Entry.fresh), tensor buffer/fresh; absent when no entry has one. */
  fresh?: (Float32Array | null)[];
  /** Other float tensors the run keeps (a fleet device's global model), by name. */
  extra?: Map<string, Float32Array>;
}

/** What a run adds to the learner's state in a checkpoint. */
export interface RunRecord {
  artifact: string;
  framesIngested: number;
  counters: Record<string, number>;
  pending: PendingFrame[];
  fleet?: FleetRecord | null;
}

/** A learner's state plus the run's record as checkpoint data; `fromCheckpoint` is its exact inverse. */
export function toCheckpoint(s: LearnerState, run: RunRecord, time = new Date()): CheckpointData {
  const entries = s.buffer.entries;
  const withFresh = entries.some((e) => e.fresh);
  return {
    meta: {
      version: CHECKPOINT_VERSION,
      artifact: run.artifact,
      steps: s.steps,
      arrivals: s.arrivals,
      framesIngested: run.framesIngested,
      rng: s.rng,
      cropRng: s.cropRng,
      buffer: {
        nextId: s.buffer.nextId,
        streamCount: s.buffer.streamCount,
        entries: entries.map(({ image: _i, feature: _f, fresh: _r, ...rest }) => rest),
        hasFeature: entries.map((e) => e.feature !== null),
        ...(withFresh ? { hasFresh: entries.map((e) => !!e.fresh) } : {}),
      },
      counters: { ...run.counters },
      pending: run.pending,
      ...(s.distillWeight ? { distillWeight: s.distillWeight } : {}),
      ...(run.fleet ? { fleet: fleetMeta(run.fleet) } : {}),
      time: time.toISOString(),
    },
    state: s.tensors,
    images: entries.map((e) => e.image),
    features: entries.map((e) => e.feature),
    ...(withFresh ? { fresh: entries.map((e) => e.fresh ?? null) } : {}),
    ...(run.fleet ? { extra: fleetTensors(run.fleet) } : {}),
  };
}

function fleetMeta(f: FleetRecord): Omit<FleetRecord, 'base' | 'snapshot'> {
  const { base: _b, snapshot: _s, ...rest } = f;
  return rest;
}

function fleetTensors(f: FleetRecord): Map<string, Float32Array> {
  const m = new Map<string, Float32Array>();
  for (const [k, v] of f.base) m.set(`fleet.base/${k}`, v);
  for (const [k, v] of f.snapshot ?? []) m.set(`fleet.snapshot/${k}`, v);
  return m;
}

function fleetFrom(meta: CheckpointMeta['fleet'], extra: Map<string, Float32Array> | undefined): FleetRecord | null {
  if (!meta) return null;
  const pick = (prefix: string) => new Map([...(extra ?? [])].filter(([k]) => k.startsWith(prefix)).map(([k, v]) => [k.slice(prefix.length), v]));
  const snapshot = pick('fleet.snapshot/');
  return { ...meta, base: pick('fleet.base/'), snapshot: meta.published ? snapshot : null };
}

/** The learner's state and the run's record back out of checkpoint data (what `toCheckpoint` put in). */
export function fromCheckpoint(c: CheckpointData): { learner: LearnerState; run: RunRecord } {
  const m = c.meta;
  return {
    learner: {
      steps: m.steps,
      arrivals: m.arrivals,
      rng: m.rng,
      cropRng: m.cropRng,
      tensors: c.state,
      buffer: { nextId: m.buffer.nextId, streamCount: m.buffer.streamCount, entries: m.buffer.entries.map((e, i) => ({ ...e, image: c.images[i], feature: c.features[i], ...(c.fresh?.[i] ? { fresh: c.fresh[i] } : {}) })) },
      distillWeight: m.distillWeight ?? 0,
    },
    run: { artifact: m.artifact, framesIngested: m.framesIngested, counters: m.counters, pending: m.pending ?? [], fleet: fleetFrom(m.fleet, c.extra) },
  };
}

function tensorBytes(t: StTensor['data']): Uint8Array {
  return new Uint8Array(t.buffer, t.byteOffset, t.byteLength);
}

/**
 * The float tensors holding a NaN or an infinity (learning from them would spread it), named in a
 * short list ('state/w, buffer/features[3], +2 more'), or null when all are finite.
 */
export function nonFinite(c: Pick<CheckpointData, 'state' | 'features' | 'extra' | 'fresh'>): string | null {
  const bad: string[] = [];
  const check = (name: string, v: Float32Array) => {
    for (let i = 0; i < v.length; i++) if (!Number.isFinite(v[i])) return void bad.push(name);
  };
  for (const [k, v] of c.state) check(`state/${k}`, v);
  for (const [k, v] of c.extra ?? []) check(`extra/${k}`, v);
  c.features.forEach((f, i) => f && check(`buffer/features[${i}]`, f));
  c.fresh?.forEach((f, i) => f && check(`buffer/fresh[${i}]`, f));
  return bad.length ? `${bad.slice(0, 3).join(', ')}${bad.length > 3 ? `, +${bad.length - 3} more` : ''}` : null;
}

export function saveCheckpoint(dir: string, c: CheckpointData, keep = 3): string {
  const bad = nonFinite(c);
  if (bad) throw new CheckpointError(`refusing to checkpoint non-finite state (${bad})`);
  const tensors = new Map<string, StTensor['data'] | StTensor>();
  for (const [k, v] of c.state) tensors.set(`state/${k}`, v);
  for (const [k, v] of c.extra ?? []) tensors.set(`extra/${k}`, v);
  const n = c.images.length;
  const per = n ? c.images[0].length : 0;
  const imgs = new Uint8Array(n * per);
  c.images.forEach((im, i) => imgs.set(im, i * per));
  tensors.set('buffer/images', { dtype: 'U8', shape: [n, per], data: imgs });
  const d = c.features.find((f) => f)?.length ?? 0;
  const feats = new Float32Array(n * d);
  c.features.forEach((f, i) => f && feats.set(f, i * d));
  tensors.set('buffer/features', { dtype: 'F32', shape: [n, d], data: feats });
  if (c.fresh) tensors.set('buffer/fresh', stackRows(c.fresh));
  const meta = JSON.stringify(c.meta);
  const digests: Record<string, string> = { __meta__: sha256(meta) };
  for (const [k, t] of tensors) digests[k] = sha256(tensorBytes('shape' in t ? t.data : t));
  const bytes = encodeSafetensors(tensors, { ssocl: meta, 'ssocl.sha256': JSON.stringify(digests) });
  const file = path.join(dir, `ckpt-${String(c.meta.steps).padStart(9, '0')}-${String(c.meta.arrivals).padStart(9, '0')}.safetensors`);
  if (recordedFormat(dir) < CHECKPOINT_VERSION) writeFileAtomic(path.join(dir, FORMAT_FILE), `${CHECKPOINT_VERSION}\n`);
  writeFileAtomic(file, bytes);
  // Read back what the disk holds: only a checkpoint that verifies may commit frames or displace older ones.
  try {
    readCheckpoint(file);
  } catch (e) {
    rmSync(file, { force: true });
    throw new CheckpointError(`checkpoint ${file} did not verify after writing (${(e as Error).message}); removed, older checkpoints kept`);
  }
  for (const old of listCheckpoints(dir).slice(0, -keep)) if (old !== file) rmSync(old, { force: true });
  return file;
}

/** Rows of one length (null: a zero row) as an [n, d] float tensor. */
function stackRows(rows: (Float32Array | null)[]): StTensor {
  const d = rows.find((f) => f)?.length ?? 0;
  const data = new Float32Array(rows.length * d);
  rows.forEach((f, i) => f && data.set(f, i * d));
  return { dtype: 'F32', shape: [rows.length, d], data };
}

export function listCheckpoints(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => /^ckpt-\d+-\d+\.safetensors$/.test(f))
    .sort()
    .map((f) => path.join(dir, f));
}

/** Reads and verifies a checkpoint (digests, shapes, finite values); CheckpointError says why not. */
export function readCheckpoint(file: string, warn: (msg: string) => void = () => {}): CheckpointData {
  let tensors: Map<string, StTensor>;
  let metadata: Record<string, string>;
  let meta: CheckpointMeta;
  try {
    // Only a regular file of its own in the checkpoint folder: a FIFO there must not hang a resume, a
    // link must not make another file the state.
    const bytes = readFileInside(file, { maxBytes: MAX_CHECKPOINT_BYTES });
    if (!bytes) throw new Error('gone');
    ({ tensors, metadata } = decodeSafetensors(bytes));
    meta = JSON.parse(metadata.ssocl) as CheckpointMeta;
  } catch (e) {
    throw new CheckpointError(`unreadable (${(e as Error).message})`);
  }
  if (meta.version === 1) {
    const held = recordedFormat(path.dirname(file));
    if (held >= 2) throw new CheckpointError(`version 1 (no digests) in a state that has held version ${held} checkpoints (${path.join(path.dirname(file), FORMAT_FILE)}): refused, its digests were removed`);
    warn(`${file}: written before checkpoints carried digests; not verified`);
  }
  else if (meta.version !== CHECKPOINT_VERSION) throw new CheckpointError(`checkpoint version ${meta.version}, expected ${CHECKPOINT_VERSION}`);
  else {
    let digests: Record<string, string>;
    try {
      digests = JSON.parse(metadata['ssocl.sha256']);
    } catch {
      throw new CheckpointError('no digests');
    }
    if (digests.__meta__ !== sha256(metadata.ssocl)) throw new CheckpointError('metadata altered (sha256 mismatch)');
    const names = [...tensors.keys()];
    if (names.length !== Object.keys(digests).length - 1) throw new CheckpointError('tensors added or removed');
    for (const k of names) if (digests[k] !== sha256(tensorBytes(tensors.get(k)!.data))) throw new CheckpointError(`tensor ${k} altered (sha256 mismatch)`);
  }
  if (!tensors.has('buffer/images') || !tensors.has('buffer/features')) throw new CheckpointError('no buffer tensors');
  const state = new Map<string, Float32Array>();
  const extra = new Map<string, Float32Array>();
  for (const [k, t] of tensors) {
    if (k.startsWith('state/')) state.set(k.slice(6), t.data as Float32Array);
    else if (k.startsWith('extra/')) extra.set(k.slice(6), t.data as Float32Array);
  }
  const imgs = tensors.get('buffer/images')!;
  const feats = tensors.get('buffer/features')!;
  const n = imgs.shape[0];
  const { images, features } = bufferRows(imgs, feats, (i) => meta.buffer.hasFeature[i]);
  if (meta.buffer.entries.length !== n) throw new CheckpointError(`buffer of ${n} images but ${meta.buffer.entries.length} entries`);
  const freshT = tensors.get('buffer/fresh');
  if (freshT && freshT.shape[0] !== n) throw new CheckpointError(`buffer of ${n} images but ${freshT.shape[0]} fresh rows`);
  const fresh = freshT ? bufferRows(imgs, freshT, (i) => !!meta.buffer.hasFresh?.[i]).features : undefined;
  const data = { meta, state, images, features, ...(fresh ? { fresh } : {}), ...(extra.size ? { extra } : {}) };
  const bad = nonFinite(data);
  if (bad) throw new CheckpointError(`non-finite values in ${bad}`);
  return data;
}

/**
 * The newest checkpoint that verifies (older ones are tried if the newest is damaged); those that did
 * not are pushed to `rejected`, newest first, so a caller can tell "none yet" from "none trustworthy".
 */
export function latestCheckpoint(dir: string, warn: (msg: string) => void = () => {}, rejected: string[] = []): { file: string; data: CheckpointData } | null {
  for (const f of listCheckpoints(dir).reverse()) {
    try {
      return { file: f, data: readCheckpoint(f, warn) };
    } catch (e) {
      warn(`skipping checkpoint ${f}: ${(e as Error).message}`);
      rejected.push(f);
    }
  }
  return null;
}
