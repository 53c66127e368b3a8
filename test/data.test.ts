// Data set readers: real CIFAR-10 from the shared folder, CIFAR-100 on small files in the official
// layout, and `ssocl eval` end to end on both label sets of CIFAR-100.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { readCifar10, readCifar100 } from '../core/codecs/cifar.ts';
import { bindInputs } from '../core/onnx/model.ts';
import { decodeSafetensors } from '../core/codecs/safetensors.ts';
import { evaluate } from '../agent/commands/eval.ts';
import { CIFAR10_DIR, REPO } from './helpers/paths.ts';

test('CIFAR-10: 50,000 training images, 5,000 per class, test 10,000; class names from batches.meta.txt', () => {
  const train = readCifar10(CIFAR10_DIR, 'train');
  assert.equal(train.count, 50000);
  const per = new Array(10).fill(0);
  for (const l of train.labels) per[l]++;
  assert.deepEqual(per, new Array(10).fill(5000));
  assert.equal(readCifar10(CIFAR10_DIR, 'test').count, 10000);
  assert.equal(train.classes[0], 'airplane');
  // First record of data_batch_1: label byte then the red plane.
  const raw = readFileSync(path.join(CIFAR10_DIR, 'data_batch_1.bin'));
  assert.equal(train.labels[0], raw[0]);
  assert.deepEqual(Array.from(train.images.subarray(0, 16)), Array.from(raw.subarray(1, 17)));
});

function cifar100Records(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n * 3074);
  for (let i = 0; i < n; i++) {
    const fine = (i * 7 + seed) % 100;
    b[i * 3074] = fine % 20; // coarse
    b[i * 3074 + 1] = fine;
    // Images that depend on the superclass, so kNN has something to find.
    for (let k = 0; k < 3072; k++) b[i * 3074 + 2 + k] = ((fine % 20) * 12 + ((k * 31 + i) % 17)) & 255;
  }
  return b;
}

test('CIFAR-100: fine and coarse labels from the official record layout; bad files are named', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-c100-'));
  try {
    writeFileSync(path.join(dir, 'train.bin'), cifar100Records(7, 1));
    const d = readCifar100(dir, 'train');
    assert.equal(d.count, 7);
    assert.deepEqual(Array.from(d.labels), [1, 8, 15, 22, 29, 36, 43]);
    assert.deepEqual(Array.from(d.coarse!), [1, 8, 15, 2, 9, 16, 3]);
    writeFileSync(path.join(dir, 'test.bin'), Buffer.alloc(3075));
    assert.throws(() => readCifar100(dir, 'test'), /test.bin: 3075 bytes is not a whole number of CIFAR-100 records/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('ssocl eval on CIFAR-100 reports fine-label and superclass accuracy (weighted and SCALE protocols)', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-c100-'));
  try {
    const dir = path.join(root, 'cifar-100-binary');
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'train.bin'), cifar100Records(300, 0));
    writeFileSync(path.join(dir, 'test.bin'), cifar100Records(60, 3));
    // An encoder exported from the committed edge artifacts' initial weights.
    const art = path.join(REPO, 'training-artifacts/edge');
    const manifest = JSON.parse(readFileSync(path.join(art, 'manifest.json'), 'utf8'));
    const init = decodeSafetensors(readFileSync(path.join(art, 'init.safetensors'))).tensors;
    const values = new Map();
    for (const s of manifest.state) if (s.embed) values.set(s.name, { dtype: 'float32', dims: s.shape, data: init.get(s.name)!.data });
    const model = path.join(root, 'enc.onnx');
    writeFileSync(model, bindInputs(readFileSync(path.join(art, 'embed.onnx')), values));
    const w = await evaluate({ model, dataset: 'cifar100', dataDir: root, protocol: 'weighted', k: [5], seed: 0 });
    assert.deepEqual(w.results.map((r) => r.labels), ['fine', 'superclass']);
    assert.equal(w.memory, 300);
    assert.equal(w.queries, 60);
    // Images are built from the superclass, so even random features separate them well above chance (5%).
    assert.ok(w.results[1].accuracy > 20, `superclass accuracy ${w.results[1].accuracy}`);
    const s = await evaluate({ model, dataset: 'cifar100', dataDir: root, protocol: 'scale', k: [50], seed: 0 });
    assert.deepEqual(s.results.map((r) => [r.labels, r.k]), [['fine', 50], ['superclass', 50]]);
    assert.equal(s.memory, 300); // min(5000, what exists)
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
