// The replay buffer's live snapshot for viewers (`ssocl serve`'s buffer panel): the entries, their
// images and stored features, and where the run is, in <state>/buffer-live.safetensors, replaced
// atomically every few seconds while the agent trains. Checkpoints come every few minutes; this lets a
// dashboard follow the buffer as it is now. Never read back by the agent: a resume uses checkpoints.

import { readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../../core/atomic.ts';
import { decodeSafetensors, encodeSafetensors, type StTensor } from '../../core/codecs/safetensors.ts';
import { readInside } from '../../core/safe-read.ts';
import type { Entry } from './buffer.ts';

export const LIVE_BUFFER_FILE = 'buffer-live.safetensors';

export interface LiveBufferMeta {
  step: number;
  arrivals: number;
  framesIngested: number;
  /** ISO-8601, when it was written. */
  time: string;
  entries: Omit<Entry, 'image' | 'feature' | 'fresh'>[];
}

export interface LiveBuffer {
  meta: LiveBufferMeta;
  images: Uint8Array[];
  features: (Float32Array | null)[];
}

/** Writes the snapshot of `entries` into `stateDir` (temp file and rename: a reader sees the old or the new one whole). */
export function writeLiveBuffer(stateDir: string, entries: readonly Entry[], at: { step: number; arrivals: number; framesIngested: number }, time = new Date()): void {
  const n = entries.length;
  const per = n ? entries[0].image.length : 0;
  const images = new Uint8Array(n * per);
  entries.forEach((e, i) => images.set(e.image, i * per));
  const d = entries.find((e) => e.feature)?.feature?.length ?? 0;
  const features = new Float32Array(n * d);
  entries.forEach((e, i) => e.feature && features.set(e.feature, i * d));
  const meta: LiveBufferMeta & { hasFeature: boolean[] } = {
    ...at,
    time: time.toISOString(),
    entries: entries.map(({ image: _i, feature: _f, fresh: _r, ...rest }) => rest),
    hasFeature: entries.map((e) => e.feature !== null),
  };
  const bytes = encodeSafetensors(
    new Map([
      ['images', { dtype: 'U8' as const, shape: [n, per], data: images }],
      ['features', { dtype: 'F32' as const, shape: [n, d], data: features }],
    ]),
    { 'ssocl.buffer': JSON.stringify(meta) },
  );
  writeFileAtomic(path.join(stateDir, LIVE_BUFFER_FILE), bytes);
}

/** A fresh run's state folder must not show the previous run's buffer. */
export function removeLiveBuffer(stateDir: string): void {
  rmSync(path.join(stateDir, LIVE_BUFFER_FILE), { force: true });
}

/** The temp files of snapshot writes a kill interrupted (writeFileAtomic's; one agent per state folder). */
export function removeStaleLiveBufferTemps(stateDir: string): void {
  let names: string[];
  try {
    names = readdirSync(stateDir);
  } catch {
    return;
  }
  for (const f of names) if (f.startsWith(`.${LIVE_BUFFER_FILE}.tmp-`)) rmSync(path.join(stateDir, f), { force: true });
}

/** The snapshot in `stateDir`, or null when there is none or it does not read as one. */
export function readLiveBuffer(stateDir: string): LiveBuffer | null {
  try {
    // Read as every file serve reads in the agent's folders: a regular file of its own, never a link or a FIFO.
    const bytes = readInside(stateDir, LIVE_BUFFER_FILE);
    if (!bytes) return null;
    const { tensors, metadata } = decodeSafetensors(bytes);
    const meta = JSON.parse(metadata['ssocl.buffer']) as LiveBufferMeta & { hasFeature: boolean[] };
    const imgs = tensors.get('images');
    const feats = tensors.get('features');
    if (!imgs || !feats || !Array.isArray(meta.entries) || meta.entries.length !== imgs.shape[0] || typeof meta.step !== 'number') return null;
    const { images, features } = bufferRows(imgs, feats, (i) => !!meta.hasFeature?.[i]);
    const { hasFeature: _h, ...rest } = meta;
    return { meta: rest, images, features };
  } catch {
    return null;
  }
}

/**
 * A stored buffer's rows: images [N, per] and features [N, d] as one array per entry, an entry's
 * feature null where `has(i)` says it had none (or d is 0). Shared by this snapshot and the checkpoints.
 */
export function bufferRows(imgs: StTensor, feats: StTensor, has: (i: number) => boolean): { images: Uint8Array[]; features: (Float32Array | null)[] } {
  const [n, per] = imgs.shape;
  const d = feats.shape[1];
  const images: Uint8Array[] = [];
  const features: (Float32Array | null)[] = [];
  for (let i = 0; i < n; i++) {
    images.push((imgs.data as Uint8Array).slice(i * per, (i + 1) * per));
    features.push(has(i) && d ? (feats.data as Float32Array).slice(i * d, (i + 1) * d) : null);
  }
  return { images, features };
}
