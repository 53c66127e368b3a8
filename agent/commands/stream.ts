// `ssocl stream`: replay a data set's class-incremental stream as image files (a "camera" for the
// dir source), or print its index order. The data set is CIFAR-10, CIFAR-100, or a labelled folder
// (`folder:ROOT`, see agent/eval/folder.ts), whose train split is streamed by the same rules.

import { copyFileSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { readCifar10, readCifar100, type LabelledImages } from '../../core/codecs/cifar.ts';
import { folderStreamSpec, makeStream, streamSpec, type StreamOrder } from '../../tools/data/streams.ts';
import { clipFrame, DEFAULT_CLIP } from '../../tools/data/clips.ts';
import { readImageFolder, type FolderData } from '../eval/folder.ts';
import type { Fit } from '../frames/decode.ts';

export interface StreamArgs {
  /** cifar10, cifar100 or folder:ROOT */
  dataset: string;
  dataDir: string;
  order: StreamOrder;
  trial: number;
  to?: string;
  fps: number;
  format: 'png' | 'jpg';
  printOrder: boolean;
  limit?: number;
  /** Camera-like: each image becomes a clip of this many frames (tools/data/clips.ts); 0 or 1: the images as they are. */
  clips?: number;
}

/** ROOT of a `folder:ROOT` data set, or undefined for a named one. */
export function folderRoot(dataset: string): string | undefined {
  return dataset.startsWith('folder:') ? dataset.slice('folder:'.length) : undefined;
}

export function streamOrder(a: { dataset: 'cifar10' | 'cifar100'; dataDir: string; order: StreamOrder; trial: number }) {
  const d = a.dataset === 'cifar10' ? readCifar10(path.join(a.dataDir, 'cifar-10-batches-bin'), 'train') : readCifar100(path.join(a.dataDir, 'cifar-100-binary'), 'train');
  const labels = a.dataset === 'cifar10' ? d.labels : d.coarse!;
  return { data: d, labels, order: makeStream(streamSpec(a.dataset, a.order, labels, a.trial)) };
}

export interface FolderStream {
  folder: FolderData;
  /** Indexes `folder.train` (its readable images in name order, classes sorted by name). */
  order: number[];
  /** Unreadable images and links left out, train and query splits together. */
  skipped: number;
}

/**
 * A labelled folder decoded at `size` (the training size), as a stream reads it: strict (every class
 * has images, no links followed). Unreadable images and links are left out as `ssocl eval --folder`
 * leaves them out: each named in the log (the first 10), then one line with the count, so a run says
 * how much of the folder it did not see.
 */
export async function loadFolder(root: string, o: { size: number; fit?: Fit; maxPixels?: number; log: (line: string) => void }): Promise<{ folder: FolderData; skipped: number }> {
  let skipped = 0;
  const onBad = (file: string, why: string) => {
    if (++skipped <= 10) o.log(`left out ${file}: ${why}`);
  };
  const folder = await readImageFolder(root, { size: o.size, fit: o.fit ?? 'cover', maxPixels: o.maxPixels ?? 40_000_000, onBad, strict: true, name: (d) => `--dataset folder:${d}` });
  if (skipped) o.log(`folder ${root}: ${skipped} file${skipped === 1 ? '' : 's'} left out (unreadable or links${skipped > 10 ? '; the first 10 named above' : ''})`);
  return { folder, skipped };
}

/** A labelled folder's stream (loadFolder, then the order by the CIFAR rules: tools/data/streams.ts folderStreamSpec). */
export async function folderStream(root: string, o: { order: StreamOrder; trial: number; size: number; fit?: Fit; maxPixels?: number; log: (line: string) => void }): Promise<FolderStream> {
  const { folder, skipped } = await loadFolder(root, o);
  const t = folder.train;
  return { folder, order: makeStream(folderStreamSpec(o.order, t.labels, t.classes.length, o.trial)), skipped };
}

/** Where a stream's frames come from: CIFAR's packed 32x32 images, or a folder's own files (copied as they are). */
type Frames = { kind: 'packed'; data: LabelledImages; labels: ArrayLike<number> } | { kind: 'files'; files: string[]; labels: ArrayLike<number> };

async function writeFrame(to: string, k: number, i: number, src: Frames, format: 'png' | 'jpg', clip?: { frames: number; trial: number; t: number }): Promise<void> {
  // A folder's frame is its original file, full size: the agent scales it to whatever it trains at.
  const ext = src.kind === 'packed' ? format : path.extname(src.files[i]).slice(1).toLowerCase();
  const name = `${String(k).padStart(6, '0')}-c${src.labels[i]}.${ext}`;
  const tmp = path.join(to, `.${name}.part`);
  if (src.kind === 'files') copyFileSync(src.files[i], tmp);
  else {
    const image = src.data.images.subarray(i * 3072, (i + 1) * 3072);
    // A clip's frame: the camera's view of the image at time t of its clip (seeded by trial and image).
    const chw = clip ? clipFrame(image, 32, { ...DEFAULT_CLIP, frames: clip.frames }, clip.trial, i, clip.t) : image;
    const hwc = Buffer.alloc(3072);
    for (let p = 0; p < 1024; p++) for (let c = 0; c < 3; c++) hwc[p * 3 + c] = chw[c * 1024 + p];
    const img = sharp(hwc, { raw: { width: 32, height: 32, channels: 3 } });
    writeFileSync(tmp, await (format === 'png' ? img.png() : img.jpeg({ quality: 95 })).toBuffer());
  }
  renameSync(tmp, path.join(to, name));
}

export async function streamCommand(a: StreamArgs): Promise<void> {
  const root = folderRoot(a.dataset);
  let src: Frames;
  let order: number[];
  let classes: string[] | undefined;
  if (root !== undefined) {
    // Decoded (small) only to know which files are readable: the order indexes the readable ones, as in `run`.
    const f = await folderStream(root, { order: a.order, trial: a.trial, size: 32, log: (l) => process.stderr.write(`${l}\n`) });
    src = { kind: 'files', files: f.folder.trainFiles, labels: f.folder.train.labels };
    order = f.order;
    classes = f.folder.train.classes;
  } else {
    const d = streamOrder({ dataset: a.dataset as 'cifar10' | 'cifar100', dataDir: a.dataDir, order: a.order, trial: a.trial });
    src = { kind: 'packed', data: d.data, labels: d.labels };
    order = d.order;
  }
  const D = a.clips && a.clips > 1 ? a.clips : 0;
  if (D && src.kind === 'files') throw new Error('--clips: camera-like clips are made from cifar10 and cifar100 images; a folder\'s files are streamed as they are');
  // With clips, each image of the order gives D consecutive frames; --limit counts frames.
  const frames = D ? order.flatMap((i) => Array.from({ length: D }, (_, t) => ({ i, t }))) : order.map((i) => ({ i, t: -1 }));
  const taken = a.limit ? frames.slice(0, a.limit) : frames;
  const items = taken.map((f) => f.i);
  const times = taken.map((f) => f.t);
  if (a.printOrder) {
    // A folder's indices are positions in its readable train images; its files and classes say which.
    const extra = src.kind === 'files' ? { classes, labels: items.map((i) => src.labels[i]), files: items.map((i) => path.relative(root!, src.files[i])) } : {};
    process.stdout.write(JSON.stringify({ dataset: a.dataset, order: a.order, trial: a.trial, count: items.length, indices: items, ...(D ? { clips: D, frameOfClip: times } : {}), ...extra }) + '\n');
    return;
  }
  if (!a.to) throw new Error('--to DIR is needed unless --print-order is given');
  mkdirSync(a.to, { recursive: true });
  const delay = a.fps > 0 ? 1000 / a.fps : 0;
  const t0 = Date.now();
  for (const [k, i] of items.entries()) {
    await writeFrame(a.to, k, i, src, a.format, D ? { frames: D, trial: a.trial, t: times[k] } : undefined);
    if (process.stderr.isTTY && k % 100 === 0) process.stderr.write(`\r${k + 1}/${items.length} frames`);
    if (delay) {
      const wait = t0 + (k + 1) * delay - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
  }
  process.stderr.write(`\nwrote ${items.length} frames (${a.dataset} ${a.order}${D ? `, clips of ${D} frames` : ''}, trial ${a.trial}) to ${a.to}\n`);
}

/** A reduced stream: the same order, each class cut to its share of `per` for the largest class (imbalance kept for seq-im). */
export function perClassCut(order: number[], labels: ArrayLike<number>, per: number): number[] {
  const n = new Map<number, number>();
  for (const i of order) n.set(labels[i], (n.get(labels[i]) ?? 0) + 1);
  const most = Math.max(...n.values());
  const seen = new Map<number, number>();
  return order.filter((i) => {
    const c = labels[i];
    const k = (seen.get(c) ?? 0) + 1;
    seen.set(c, k);
    return k <= Math.round((n.get(c)! * per) / most);
  });
}
