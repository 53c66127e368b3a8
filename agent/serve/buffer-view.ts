// The replay buffer as the dashboard shows it: the agent's live snapshot (written every few seconds
// while it trains, agent/buffer/snapshot.ts) or the newest checkpoint that verifies (read through the
// trainer's own reader, so a damaged one is skipped as a resume would skip it), whichever is newer; its
// images, and each entry's nearest-neighbour cosine similarity over the representative features z*
// stored with it, and the buffer's mix by age and by source clip.

import path from 'node:path';
import { latestCheckpoint, listCheckpoints } from '../trainer/checkpoint.ts';
import { readLiveBuffer } from '../buffer/snapshot.ts';
import { sourceOf } from '../buffer/buffer.ts';

export interface BufferEntryView {
  id: number;
  key: string;
  seen: boolean;
  lifespan: number;
  streamIndex: number;
  /** Cosine similarity to the most similar other entry (null: no feature yet, or no other entry has one). */
  nnSim: number | null;
}

export interface BufferView {
  /** The checkpoint's file name, or buffer-live@<time> for a live snapshot: changes whenever a newer one is read. */
  version: string;
  source: 'checkpoint' | 'live';
  step: number;
  arrivals: number;
  framesIngested: number;
  time: string;
  /** Image side: entries are uint8 CHW [3, size, size]. */
  size: number;
  entries: BufferEntryView[];
  /** Mean of the entries' nnSim (what the metrics' nnSim reports, from the stored features). */
  meanNnSim: number | null;
  /** The buffer's mix (issue #31): the agent knows no labels, so by age and by source clip. */
  mix: BufferMix;
  /** All images, entry after entry. */
  images: Uint8Array;
}

export interface BufferMix {
  /** Entries per span of the stream so far (`spans` equal spans of stream positions, oldest first). */
  byAge: number[];
  /** Distinct sources (a clip's frames share one: keys 'source.frame'), and the entries of the largest. */
  sources: number;
  largestSource: { source: string; entries: number } | null;
}

/**
 * What the buffer holds of the stream's past: entries per equal span of the `streamCount` positions
 * seen so far (an even buffer keeps about as many of each span), and how many distinct sources.
 */
export function bufferMix(entries: readonly { key: string; streamIndex: number }[], streamCount: number, spans = 8): BufferMix {
  const byAge = new Array(spans).fill(0);
  const bySource = new Map<string, number>();
  for (const e of entries) {
    byAge[Math.min(spans - 1, Math.max(0, Math.floor(((e.streamIndex - 1) * spans) / Math.max(1, streamCount))))]++;
    const s = sourceOf(e.key);
    bySource.set(s, (bySource.get(s) ?? 0) + 1);
  }
  let largest: BufferMix['largestSource'] = null;
  for (const [source, n] of bySource) if (!largest || n > largest.entries) largest = { source, entries: n };
  return { byAge, sources: bySource.size, largestSource: largest };
}

/** Yields to the event loop: a large buffer's similarities must not stall the server's other clients. */
const breathe = () => new Promise<void>((r) => setImmediate(r));

/**
 * For each vector, the largest dot product with another (the vectors are unit length: a cosine),
 * null for missing vectors. Plain loops, a block of rows at a time with a yield between blocks.
 */
export async function nearestSimilarities(features: (Float32Array | null)[]): Promise<(number | null)[]> {
  const idx = features.flatMap((f, i) => (f ? [i] : []));
  const out: (number | null)[] = features.map(() => null);
  const best = new Float64Array(features.length).fill(-Infinity);
  for (let a = 0; a < idx.length; a++) {
    const fa = features[idx[a]]!;
    for (let b = a + 1; b < idx.length; b++) {
      const fb = features[idx[b]]!;
      let s = 0;
      for (let k = 0; k < fa.length; k++) s += fa[k] * fb[k];
      if (s > best[idx[a]]) best[idx[a]] = s;
      if (s > best[idx[b]]) best[idx[b]] = s;
    }
    if (a % 64 === 63) await breathe();
  }
  for (const i of idx) if (Number.isFinite(best[i])) out[i] = best[i];
  return out;
}

/** The name of the newest checkpoint file (cheap: one directory listing), or null. */
export function newestCheckpointName(dir: string): string | null {
  const all = listCheckpoints(dir);
  return all.length ? path.basename(all.at(-1)!) : null;
}

/** The buffer of the newest checkpoint in `dir` that verifies, or null when there is none. */
export async function readBufferView(dir: string, warn?: (msg: string) => void): Promise<BufferView | null> {
  const found = latestCheckpoint(dir, warn);
  if (!found) return null;
  const { meta, images, features } = found.data;
  return view(path.basename(found.file), 'checkpoint', { step: meta.steps, arrivals: meta.arrivals, framesIngested: meta.framesIngested, time: meta.time, entries: meta.buffer.entries, streamCount: meta.buffer.streamCount }, images, features);
}

/** The agent's live snapshot in `stateDir`, or null when there is none (or it does not read). */
export async function readLiveBufferView(stateDir: string): Promise<BufferView | null> {
  const live = readLiveBuffer(stateDir);
  if (!live) return null;
  return view(`buffer-live@${live.meta.time}`, 'live', live.meta, live.images, live.features);
}

// streamCount: the stream positions seen so far (a checkpoint records it; the live snapshot does not,
// and its newest entry's position stands in: a new frame always enters the buffer).
type Where = { step: number; arrivals: number; framesIngested: number; time: string; entries: Omit<BufferEntryView, 'nnSim'>[]; streamCount?: number };

async function view(version: string, source: BufferView['source'], at: Where, images: Uint8Array[], features: (Float32Array | null)[]): Promise<BufferView> {
  const per = images[0]?.length ?? 0;
  const size = Math.round(Math.sqrt(per / 3));
  const all = new Uint8Array(images.length * per);
  images.forEach((im, i) => all.set(im, i * per));
  const nn = await nearestSimilarities(features);
  const known = nn.filter((v): v is number => v !== null);
  return {
    version,
    source,
    step: at.step,
    arrivals: at.arrivals,
    framesIngested: at.framesIngested,
    time: at.time,
    size,
    entries: at.entries.map((e, i) => ({ id: e.id, key: e.key, seen: e.seen, lifespan: e.lifespan, streamIndex: e.streamIndex, nnSim: nn[i] })),
    meanNnSim: known.length ? known.reduce((a, b) => a + b, 0) / known.length : null,
    mix: bufferMix(at.entries, at.streamCount ?? at.entries.reduce((m, e) => Math.max(m, e.streamIndex), 0)),
    images: all,
  };
}
