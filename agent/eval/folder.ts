// A labelled image folder, for evaluating on a user's own data (ImageNet-100, CORe50, ...):
// ROOT/<class>/*.png|jpg, or ROOT/train/<class>/... with ROOT/test/ (or ROOT/val/) for the queries.
// Without a split, every 5th image of each class (in name order) is a query, the rest memory.

import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { decodeFrame, type Fit } from '../frames/decode.ts';
import { listSupport } from '../frames/list.ts';
import type { LabelledImages } from '../../core/codecs/cifar.ts';

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

export async function readImageFolder(root: string, o: FolderOptions): Promise<{ train: LabelledImages; test: LabelledImages; split: string }> {
  if (!existsSync(root) || !statSync(root).isDirectory()) throw new Error(`--folder ${root}: no such directory`);
  const testDir = ['test', 'val'].map((d) => path.join(root, d)).find((d) => existsSync(d));
  if (existsSync(path.join(root, 'train')) && testDir) {
    const tr = listSupport(path.join(root, 'train'));
    const te = listSupport(testDir);
    const classes = tr.labels;
    const missing = te.labels.filter((l) => !classes.includes(l));
    if (missing.length) throw new Error(`--folder ${root}: ${path.basename(testDir)}/ has classes that train/ lacks: ${missing.slice(0, 5).join(', ')}`);
    return {
      train: await load(tr.frames.map((f, i) => ({ path: f.path, label: tr.labelOf[i] })), classes, o),
      test: await load(te.frames.map((f, i) => ({ path: f.path, label: classes.indexOf(te.labels[te.labelOf[i]]) })), classes, o),
      split: `train/ and ${path.basename(testDir)}/`,
    };
  }
  const all = listSupport(root);
  const tr: { path: string; label: number }[] = [];
  const te: { path: string; label: number }[] = [];
  all.labels.forEach((_, li) => {
    const files = all.frames.filter((_, i) => all.labelOf[i] === li);
    files.forEach((f, j) => (j % 5 === 4 ? te : tr).push({ path: f.path, label: li }));
  });
  return { train: await load(tr, all.labels, o), test: await load(te, all.labels, o), split: 'every 5th image of each class as a query' };
}

