// A labelled image folder, for evaluating on a user's own data (ImageNet-100, CORe50, ...):
// ROOT/<class>/*.png|jpg, or ROOT/train/<class>/... with ROOT/test/ (or ROOT/val/) for the queries.
// Without a split, every 5th image of each class (in name order) is a query, the rest memory, so each
// class needs at least 5 images (with fewer a class has no query, and a folder of them none at all:
// the accuracy of no queries is 0/0).

import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { decodeFrame, type Fit } from '../frames/decode.ts';
import { listSupport } from '../frames/list.ts';
import type { LabelledImages } from '../../core/codecs/cifar.ts';

/** Images per class needed without a train/test split: the 5th is the class's first query. */
export const MIN_PER_CLASS = 5;

export interface FolderOptions {
  size: number;
  fit: Fit;
  maxPixels: number;
  onBad?: (file: string, reason: string) => void;
}

async function load(files: { path: string; label: number }[], classes: string[], o: FolderOptions): Promise<LabelledImages> {
  const per = 3 * o.size * o.size;
  const images = new Uint8Array(files.length * per);
  const labels: number[] = [];
  let n = 0;
  for (const f of files) {
    try {
      images.set(await decodeFrame(readFileSync(f.path), path.extname(f.path), o), n * per);
      labels.push(f.label);
      n++;
    } catch (e) {
      o.onBad?.(f.path, (e as Error).message);
    }
  }
  if (classes.length > 255) throw new Error(`${classes.length} classes: at most 255 are supported`);
  return { images: images.slice(0, n * per), labels: Uint8Array.from(labels), count: n, classes };
}

/** listSupport names its own flag in its errors; here the directory came from --folder. */
function labelled(dir: string): ReturnType<typeof listSupport> {
  try {
    return listSupport(dir);
  } catch (e) {
    throw new Error((e as Error).message.replace(/^--support /, '--folder '));
  }
}

/** Memory and queries both non-empty once unreadable images are left out, else there is nothing to measure. */
function measurable(root: string, r: { train: LabelledImages; test: LabelledImages; split: string }) {
  if (!r.train.count || !r.test.count) throw new Error(`--folder ${root}: no readable ${r.train.count ? 'query' : 'memory'} images left (${r.split})`);
  return r;
}

export async function readImageFolder(root: string, o: FolderOptions): Promise<{ train: LabelledImages; test: LabelledImages; split: string }> {
  if (!existsSync(root) || !statSync(root).isDirectory()) throw new Error(`--folder ${root}: no such directory`);
  const testDir = ['test', 'val'].map((d) => path.join(root, d)).find((d) => existsSync(d));
  if (existsSync(path.join(root, 'train')) && testDir) {
    const tr = labelled(path.join(root, 'train'));
    const te = labelled(testDir);
    const classes = tr.labels;
    const missing = te.labels.filter((l) => !classes.includes(l));
    if (missing.length) throw new Error(`--folder ${root}: ${path.basename(testDir)}/ has classes that train/ lacks: ${missing.slice(0, 5).join(', ')}`);
    return measurable(root, {
      train: await load(tr.frames.map((f, i) => ({ path: f.path, label: tr.labelOf[i] })), classes, o),
      test: await load(te.frames.map((f, i) => ({ path: f.path, label: classes.indexOf(te.labels[te.labelOf[i]]) })), classes, o),
      split: `train/ and ${path.basename(testDir)}/`,
    });
  }
  const all = labelled(root);
  const perClass = all.labels.map((_, li) => all.frames.filter((_, i) => all.labelOf[i] === li));
  // Checked on the listing, before anything is decoded.
  const few = all.labels.map((l, li) => [l, perClass[li].length] as const).filter(([, n]) => n < MIN_PER_CLASS);
  if (few.length) {
    const named = few.slice(0, 5).map(([l, n]) => `${l} (${n})`).join(', ') + (few.length > 5 ? `, and ${few.length - 5} more` : '');
    throw new Error(`--folder ${root}: each class needs at least ${MIN_PER_CLASS} images (every 5th is a query, the rest the kNN memory); fewer in: ${named} (or give ROOT/train/<class>/ and ROOT/test/<class>/)`);
  }
  const tr: { path: string; label: number }[] = [];
  const te: { path: string; label: number }[] = [];
  perClass.forEach((files, li) => files.forEach((f, j) => (j % 5 === 4 ? te : tr).push({ path: f.path, label: li })));
  return measurable(root, { train: await load(tr, all.labels, o), test: await load(te, all.labels, o), split: 'every 5th image of each class as a query' });
}

