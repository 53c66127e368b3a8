// A labelled image folder, for evaluating on a user's own data (ImageNet-100, CORe50, ...) and for
// streaming it (`--dataset folder:ROOT`): ROOT/<class>/*.png|jpg, or ROOT/train/<class>/... with
// ROOT/test/ (or ROOT/val/) for the queries. Without a split, every 5th image of each class (in name
// order) is a query, the rest memory, so each class needs at least 5 images (with fewer a class has no
// query, and a folder of them none at all: the accuracy of no queries is 0/0).

import { existsSync, lstatSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { constants } from 'node:buffer';
import path from 'node:path';
import { decodeFrame, type Fit } from '../frames/decode.ts';
import { listFrames, listSupport, type SupportSet } from '../frames/list.ts';
import type { LabelledImages } from '../../core/codecs/cifar.ts';

/** Images per class needed without a train/test split: the 5th is the class's first query. */
export const MIN_PER_CLASS = 5;

export interface FolderOptions {
  size: number;
  fit: Fit;
  maxPixels: number;
  onBad?: (file: string, reason: string) => void;
  /** How errors name a directory (default `--folder DIR`; streams say `--dataset folder:DIR`). */
  name?: (dir: string) => string;
  /**
   * For a stream: the train split must hold every class it names (an empty class directory, or one
   * whose images are all unreadable, is an error instead of being left out), and no link is followed
   * (a link could lead outside ROOT); each link is reported to onBad.
   */
  strict?: boolean;
}

export interface FolderData {
  train: LabelledImages;
  test: LabelledImages;
  split: string;
  /** The train images' files, in the order of `train` (unreadable ones left out). */
  trainFiles: string[];
}

// Decodes run a few at a time: sharp works on libuv's thread pool, so one at a time leaves cores idle.
const DECODES_IN_FLIGHT = 8;

async function load(files: { path: string; label: number }[], classes: string[], o: FolderOptions, label: string): Promise<{ set: LabelledImages; files: string[] }> {
  if (classes.length > 255) throw new Error(`${classes.length} classes: at most 255 are supported`);
  const per = 3 * o.size * o.size;
  // Every image is held decoded in one array (ImageNet-100's 127k train images: 1.6 GB at 64 px, 19 GB at 224).
  if (files.length * per > constants.MAX_LENGTH) {
    throw new Error(`${label}: ${files.length} images at ${o.size}px need ${(files.length * per / 2 ** 30).toFixed(1)} GiB decoded, over the ${constants.MAX_LENGTH / 2 ** 30} GiB one array holds (train at a smaller size, or on fewer images)`);
  }
  const images = new Uint8Array(files.length * per);
  const ok = new Array<boolean>(files.length).fill(false);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < files.length; i = next++) {
      try {
        images.set(await decodeFrame(readFileSync(files[i].path), path.extname(files[i].path), o), i * per);
        ok[i] = true;
      } catch (e) {
        o.onBad?.(files[i].path, (e as Error).message);
      }
    }
  };
  await Promise.all(Array.from({ length: DECODES_IN_FLIGHT }, worker));
  // Compacted in listing order, so the result does not depend on which decode finished first.
  let n = 0;
  for (let i = 0; i < files.length; i++) if (ok[i]) images.copyWithin(n++ * per, i * per, (i + 1) * per);
  const kept = files.filter((_, i) => ok[i]);
  return { set: { images: images.slice(0, n * per), labels: Uint8Array.from(kept.map((f) => f.label)), count: n, classes }, files: kept.map((f) => f.path) };
}

/** listSupport names its own flag in its errors; here the directory came from --folder (or --dataset). */
function labelled(dir: string, o: FolderOptions): SupportSet {
  try {
    return listSupport(dir);
  } catch (e) {
    const m = (e as Error).message;
    const own = `--support ${dir}`;
    throw new Error(m.startsWith(own) ? nameOf(o)(dir) + m.slice(own.length) : m);
  }
}

const nameOf = (o: FolderOptions) => o.name ?? ((dir: string) => `--folder ${dir}`);

/** A stream's classes: real directories only, each with at least one image (files beside them are ignored). */
function streamClasses(dir: string, o: FolderOptions, label: string): SupportSet {
  const s: SupportSet = { labels: [], frames: [], labelOf: [] };
  const link = (p: string) => o.onBad?.(p, 'a link, not followed (it could lead outside ROOT)');
  for (const name of readdirSync(dir).filter((n) => !n.startsWith('.')).sort()) {
    const abs = path.join(dir, name);
    const l = lstatSync(abs);
    if (l.isSymbolicLink()) link(abs);
    if (!l.isDirectory()) continue;
    const frames = listFrames(abs, link);
    if (!frames.length) throw new Error(`${label}: class '${name}' holds no images (put .png/.jpg files in ${abs}, or remove it)`);
    const li = s.labels.push(name) - 1;
    for (const f of frames) {
      s.frames.push({ ...f, key: path.join(name, f.key) });
      s.labelOf.push(li);
    }
  }
  if (!s.labels.length) throw new Error(`${label}: no class directories with images (expected ${dir}/<class>/*.png|jpg)`);
  return s;
}

/** Memory and queries both non-empty once unreadable images are left out, else there is nothing to measure. */
function measurable(label: string, r: FolderData, o: FolderOptions): FolderData {
  if (!r.train.count || !r.test.count) throw new Error(`${label}: no readable ${r.train.count ? 'query' : 'memory'} images left (${r.split})`);
  if (o.strict) {
    const held = new Array(r.train.classes.length).fill(0);
    for (const l of r.train.labels) held[l]++;
    const gone = r.train.classes.filter((_, c) => !held[c]);
    if (gone.length) throw new Error(`${label}: no readable images left in class ${gone.slice(0, 5).join(', ')}${gone.length > 5 ? `, and ${gone.length - 5} more` : ''}`);
  }
  return r;
}

/** A real directory (a link is not one when strict: it could lead outside ROOT). */
function isDir(p: string, strict: boolean | undefined): boolean {
  if (!existsSync(p)) return false;
  return (strict ? lstatSync(p) : statSync(p)).isDirectory();
}

export async function readImageFolder(root: string, o: FolderOptions): Promise<FolderData> {
  const label = nameOf(o)(root);
  if (!existsSync(root) || !statSync(root).isDirectory()) throw new Error(`${label}: no such directory`);
  // A split directory that is a link is refused, not read as a class (the layout would silently change).
  const linked = o.strict && ['train', 'test', 'val'].find((d) => existsSync(path.join(root, d)) && lstatSync(path.join(root, d)).isSymbolicLink());
  if (linked) throw new Error(`${label}: ${linked}/ is a link, not followed (it could lead outside ROOT)`);
  const testDir = ['test', 'val'].map((d) => path.join(root, d)).find((d) => isDir(d, o.strict));
  if (isDir(path.join(root, 'train'), o.strict) && testDir) {
    const tr = o.strict ? streamClasses(path.join(root, 'train'), o, label) : labelled(path.join(root, 'train'), o);
    const te = labelled(testDir, o);
    const classes = tr.labels;
    const missing = te.labels.filter((l) => !classes.includes(l));
    if (missing.length) throw new Error(`${label}: ${path.basename(testDir)}/ has classes that train/ lacks: ${missing.slice(0, 5).join(', ')}`);
    const train = await load(tr.frames.map((f, i) => ({ path: f.path, label: tr.labelOf[i] })), classes, o, label);
    const test = await load(te.frames.map((f, i) => ({ path: f.path, label: classes.indexOf(te.labels[te.labelOf[i]]) })), classes, o, label);
    return measurable(label, { train: train.set, test: test.set, split: `train/ and ${path.basename(testDir)}/`, trainFiles: train.files }, o);
  }
  const all = o.strict ? streamClasses(root, o, label) : labelled(root, o);
  const perClass = all.labels.map((_, li) => all.frames.filter((_, i) => all.labelOf[i] === li));
  // Checked on the listing, before anything is decoded.
  const few = all.labels.map((l, li) => [l, perClass[li].length] as const).filter(([, n]) => n < MIN_PER_CLASS);
  if (few.length) {
    const named = few.slice(0, 5).map(([l, n]) => `${l} (${n})`).join(', ') + (few.length > 5 ? `, and ${few.length - 5} more` : '');
    throw new Error(`${label}: each class needs at least ${MIN_PER_CLASS} images (every 5th is a query, the rest the kNN memory); fewer in: ${named} (or give ROOT/train/<class>/ and ROOT/test/<class>/)`);
  }
  const tr: { path: string; label: number }[] = [];
  const te: { path: string; label: number }[] = [];
  perClass.forEach((files, li) => files.forEach((f, j) => (j % 5 === 4 ? te : tr).push({ path: f.path, label: li })));
  const train = await load(tr, all.labels, o, label);
  const test = await load(te, all.labels, o, label);
  return measurable(label, { train: train.set, test: test.set, split: 'every 5th image of each class as a query', trainFiles: train.files }, o);
}
