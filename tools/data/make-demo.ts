// Builds the built-in demo stream agent/demo/cifar10-demo.bin from the shared CIFAR-10: the first
// PER_CLASS pixel-exact training images of each class in official order (lossy ones skipped),
// written in the official CIFAR-10 record layout. Usage: node --import tsx tools/data/make-demo.ts [cifar dir]
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readCifar10, encodeCifar10, CIFAR_PIXELS } from '../../core/codecs/cifar.ts';

const PER_CLASS = 200;
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const dir = process.argv[2] ?? path.resolve(repo, '../shared/data/cifar-10-batches-bin');
const train = readCifar10(dir, 'train');
const lossyFile = readFileSync(path.join(dir, 'lossy-indices.txt'), 'utf8');
// Lines 'train: i j ...' and 'test: ...': only the training indices apply here.
const trainLine = lossyFile.split('\n').find((l) => l.startsWith('train:')) ?? '';
const lossy = new Set(trainLine.slice(6).split(/\s+/).filter((s) => /^\d+$/.test(s)).map(Number));
const picked: number[] = [];
const per = new Array(10).fill(0);
for (let i = 0; i < train.count && picked.length < 10 * PER_CLASS; i++) {
  const c = train.labels[i];
  if (per[c] < PER_CLASS && !lossy.has(i)) {
    per[c]++;
    picked.push(i);
  }
}
const images = new Uint8Array(picked.length * CIFAR_PIXELS);
const labels = new Uint8Array(picked.length);
picked.forEach((src, k) => {
  images.set(train.images.subarray(src * CIFAR_PIXELS, (src + 1) * CIFAR_PIXELS), k * CIFAR_PIXELS);
  labels[k] = train.labels[src];
});
const out = path.join(repo, 'agent/demo/cifar10-demo.bin');
writeFileSync(out, encodeCifar10(images, labels));
writeFileSync(path.join(repo, 'agent/demo/indices.json'), JSON.stringify(picked) + '\n');
console.log(`wrote ${out}: ${picked.length} images (${PER_CLASS} per class)`);
