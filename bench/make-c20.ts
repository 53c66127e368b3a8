// bench/make-c20: the 20-class folder data set of issue #31's 20-class stream, built from CIFAR-10
// (only CIFAR-10 is on this machine). Each class's images are split in two disjoint halves by their
// order in the file: one kept in colour (`<class>`), one turned grey (`<class>-grey`: the same objects as
// a night-time / IR camera sees them). train/ takes --train per class from data_batch_1, test/ --test per
// class from test_batch, as PNGs, in the ROOT/train/<class>/ + ROOT/test/<class>/ layout bench/compare's
// --dataset folder:ROOT reads. Deterministic: the same files give the same folder.
//
//   node --import tsx bench/make-c20.ts [--data ../shared/data/cifar-10-batches-bin] --out DIR [--train 250] [--test 100]

import { readFileSync, mkdirSync, existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { benchArgs } from './args.ts';

const values = benchArgs(import.meta.url, {
  data: { type: 'string', default: '../shared/data/cifar-10-batches-bin', describe: 'CIFAR-10 in its official binary layout' },
  out: { type: 'string', describe: 'the folder to write (must not exist or be empty)' },
  train: { type: 'string', default: '250', describe: 'train images per class (of each half)' },
  test: { type: 'string', default: '100', describe: 'test images per class (of each half)' },
});
if (!values.out) { console.error('bench/make-c20: --out DIR is required'); process.exit(2); }
const OUT = String(values.out);
if (existsSync(OUT) && readdirSync(OUT).length > 0) { console.error(`bench/make-c20: ${OUT} is not empty; give a new folder`); process.exit(2); }
const D = String(values.data);
const names = readFileSync(path.join(D, 'batches.meta.txt'), 'utf8').split('\n').map((s) => s.trim()).filter(Boolean);

async function emit(file: string, split: string, perClass: number): Promise<number> {
  const b = readFileSync(path.join(D, file));
  const seen = new Map<number, number>(); // images of each CIFAR class so far: even ones colour, odd ones grey
  const kept = new Map<string, number>();
  let written = 0;
  for (let i = 0; i < b.length / 3073; i++) {
    const lab = b[i * 3073];
    const k = seen.get(lab) ?? 0;
    seen.set(lab, k + 1);
    const grey = k % 2 === 1;
    const cls = grey ? `${names[lab]}-grey` : names[lab];
    const n = kept.get(cls) ?? 0;
    if (n >= perClass) continue;
    kept.set(cls, n + 1);
    const px = Buffer.alloc(3072);
    for (let p = 0; p < 1024; p++) {
      const r = b[i * 3073 + 1 + p], g = b[i * 3073 + 1025 + p], bl = b[i * 3073 + 2049 + p];
      const y = Math.round(0.299 * r + 0.587 * g + 0.114 * bl);
      px[p * 3] = grey ? y : r; px[p * 3 + 1] = grey ? y : g; px[p * 3 + 2] = grey ? y : bl;
    }
    const dir = path.join(OUT, split, cls);
    mkdirSync(dir, { recursive: true });
    await sharp(px, { raw: { width: 32, height: 32, channels: 3 } }).png().toFile(path.join(dir, `${String(n).padStart(4, '0')}.png`));
    written++;
  }
  return written;
}

const tr = await emit('data_batch_1.bin', 'train', Number(values.train));
const te = await emit('test_batch.bin', 'test', Number(values.test));
console.log(`bench/make-c20: ${OUT}: ${names.length * 2} classes, ${tr} train and ${te} test images`);
