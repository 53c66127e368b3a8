// Readers for CIFAR-10 and CIFAR-100 in their official binary layouts. CIFAR-10: 1 label byte then
// 3072 pixel bytes (1024 R, 1024 G, 1024 B, row-major 32x32). CIFAR-100: coarse byte, fine byte, 3072.

import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';

export const CIFAR_PIXELS = 3072;

/** Side of the square images in the CIFAR binary layout. */
export const CIFAR_SIZE = 32;

export interface LabelledImages {
  /** uint8 CHW 3x32x32 per image, concatenated. */
  images: Uint8Array;
  /** The primary label (CIFAR-10 class; CIFAR-100 fine label). */
  labels: Uint8Array;
  /** CIFAR-100 only: the 20 superclasses. */
  coarse?: Uint8Array;
  count: number;
  classes: string[];
}

export function parseCifar10(buf: Uint8Array, file = 'buffer'): { images: Uint8Array; labels: Uint8Array; count: number } {
  const rec = CIFAR_PIXELS + 1;
  if (buf.length % rec !== 0) throw new Error(`${file}: ${buf.length} bytes is not a whole number of CIFAR-10 records (${rec} bytes)`);
  const count = buf.length / rec;
  const images = new Uint8Array(count * CIFAR_PIXELS);
  const labels = new Uint8Array(count);
  for (let i = 0; i < count; i++) {
    labels[i] = buf[i * rec];
    if (labels[i] > 9) throw new Error(`${file}: record ${i} has label ${labels[i]}, not 0-9`);
    images.set(buf.subarray(i * rec + 1, (i + 1) * rec), i * CIFAR_PIXELS);
  }
  return { images, labels, count };
}

function concat(parts: { images: Uint8Array; labels: Uint8Array; coarse?: Uint8Array; count: number }[]) {
  const count = parts.reduce((a, p) => a + p.count, 0);
  const images = new Uint8Array(count * CIFAR_PIXELS);
  const labels = new Uint8Array(count);
  const coarse = parts[0]?.coarse ? new Uint8Array(count) : undefined;
  let k = 0;
  for (const p of parts) {
    images.set(p.images, k * CIFAR_PIXELS);
    labels.set(p.labels, k);
    if (coarse) coarse.set(p.coarse!, k);
    k += p.count;
  }
  return { images, labels, coarse, count };
}

function need(file: string, what: string): Buffer {
  if (!existsSync(file)) throw new Error(`${what}: ${file} not found (get the official binary version with 'ssocl data fetch')`);
  return readFileSync(file);
}

/** dir = the `cifar-10-batches-bin` directory. */
export function readCifar10(dir: string, split: 'train' | 'test'): LabelledImages {
  const files = split === 'train' ? [1, 2, 3, 4, 5].map((i) => `data_batch_${i}.bin`) : ['test_batch.bin'];
  const parts = files.map((f) => parseCifar10(need(path.join(dir, f), 'CIFAR-10'), f));
  const meta = path.join(dir, 'batches.meta.txt');
  const classes = existsSync(meta) ? readFileSync(meta, 'utf8').split('\n').map((s) => s.trim()).filter(Boolean) : [...Array(10).keys()].map(String);
  return { ...concat(parts), classes };
}

export function parseCifar100(buf: Uint8Array, file = 'buffer') {
  const rec = CIFAR_PIXELS + 2;
  if (buf.length % rec !== 0) throw new Error(`${file}: ${buf.length} bytes is not a whole number of CIFAR-100 records (${rec} bytes)`);
  const count = buf.length / rec;
  const images = new Uint8Array(count * CIFAR_PIXELS);
  const labels = new Uint8Array(count);
  const coarse = new Uint8Array(count);
  for (let i = 0; i < count; i++) {
    coarse[i] = buf[i * rec];
    labels[i] = buf[i * rec + 1];
    if (coarse[i] > 19 || labels[i] > 99) throw new Error(`${file}: record ${i} has labels ${coarse[i]}/${labels[i]} out of range`);
    images.set(buf.subarray(i * rec + 2, (i + 1) * rec), i * CIFAR_PIXELS);
  }
  return { images, labels, coarse, count };
}

/** dir = the `cifar-100-binary` directory (train.bin, test.bin, fine_label_names.txt). */
export function readCifar100(dir: string, split: 'train' | 'test'): LabelledImages {
  const f = split === 'train' ? 'train.bin' : 'test.bin';
  const p = parseCifar100(need(path.join(dir, f), 'CIFAR-100'), f);
  const names = path.join(dir, 'fine_label_names.txt');
  const classes = existsSync(names) ? readFileSync(names, 'utf8').split('\n').map((s) => s.trim()).filter(Boolean) : [...Array(100).keys()].map(String);
  return { ...p, classes };
}

/** Official CIFAR-10 records for the given images (used to write small sets, e.g. the demo stream). */
export function encodeCifar10(images: Uint8Array, labels: Uint8Array): Uint8Array {
  const n = labels.length;
  const out = new Uint8Array(n * (CIFAR_PIXELS + 1));
  for (let i = 0; i < n; i++) {
    out[i * (CIFAR_PIXELS + 1)] = labels[i];
    out.set(images.subarray(i * CIFAR_PIXELS, (i + 1) * CIFAR_PIXELS), i * (CIFAR_PIXELS + 1) + 1);
  }
  return out;
}
