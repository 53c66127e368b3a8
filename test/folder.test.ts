// The image-folder reader (users' own labelled sets) and `ssocl eval --folder`, against features and a
// brute-force weighted kNN computed independently here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { readCifar10 } from '../core/codecs/cifar.ts';
import { encodePng } from '../agent/frames/decode.ts';
import { readImageFolder } from '../agent/eval/folder.ts';
import { evaluate } from '../agent/commands/eval.ts';
import { Encoder } from '../agent/infer/encoder.ts';
import { CIFAR10_DIR, REPO } from './helpers/paths.ts';

const FIXTURE = path.join(REPO, 'test/fixtures/edge-demo-step141.onnx');

test('image folder: ROOT/<class>/ split every 5th per class, or train/ + val/; eval --folder matches an independent kNN', { skip: !existsSync(path.join(CIFAR10_DIR, 'test_batch.bin')) && 'no CIFAR-10' }, async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-folder-'));
  try {
    const data = readCifar10(CIFAR10_DIR, 'test');
    const classes = ['airplane', 'cat', 'ship'];
    const ids = classes.map((c) => data.classes.indexOf(c));
    const per = 25;
    const chosen: number[][] = ids.map((c) => [...Array(data.count).keys()].filter((i) => data.labels[i] === c).slice(0, per));
    for (const [ci, name] of classes.entries()) {
      mkdirSync(path.join(root, 'flat', name), { recursive: true });
      for (const [j, i] of chosen[ci].entries()) writeFileSync(path.join(root, 'flat', name, `${String(j).padStart(3, '0')}.png`), await encodePng(data.images.subarray(i * 3072, (i + 1) * 3072), 32));
    }
    writeFileSync(path.join(root, 'flat', 'cat', 'zzz-broken.png'), 'nope');
    const bad: string[] = [];
    const f = await readImageFolder(path.join(root, 'flat'), { size: 32, fit: 'cover', maxPixels: 1e7, onBad: (file) => bad.push(path.basename(file)) });
    assert.deepEqual(f.train.classes, classes);
    assert.equal(f.train.count, 3 * 20);
    // 26 files in cat/: the broken one is the 26th (j = 25, a memory slot) and is left out, reported.
    assert.equal(f.test.count, 3 * 5);
    assert.deepEqual(bad, ['zzz-broken.png']);
    // Memory = images j % 5 != 4 in name order; pixels as the source (PNG is lossless, no resize at 32).
    const expectTrain = chosen.flatMap((c, ci) => c.filter((_, j) => j % 5 !== 4).map((i) => ({ i, ci })));
    assert.deepEqual([...f.train.labels], expectTrain.map((x) => x.ci));
    let maxDiff = 0;
    expectTrain.forEach(({ i }, n) => {
      for (let k = 0; k < 3072; k++) maxDiff = Math.max(maxDiff, Math.abs(f.train.images[n * 3072 + k] - data.images[i * 3072 + k]));
    });
    assert.ok(maxDiff <= 1, `decoded pixels equal the source (max diff ${maxDiff})`);

    // train/ + val/ layout.
    for (const [ci, name] of classes.entries()) {
      for (const split of ['train', 'val']) mkdirSync(path.join(root, 'split', split, name), { recursive: true });
      for (const [j, i] of chosen[ci].entries()) writeFileSync(path.join(root, 'split', j < 20 ? 'train' : 'val', name, `${j}.png`), await encodePng(data.images.subarray(i * 3072, (i + 1) * 3072), 32));
    }
    const s = await readImageFolder(path.join(root, 'split'), { size: 32, fit: 'cover', maxPixels: 1e7 });
    assert.equal(s.train.count, 60);
    assert.equal(s.test.count, 15);
    assert.match(s.split, /train\/ and val\//);

    // eval --folder vs features from the encoder and a brute-force weighted kNN (T 0.07, k 20) here.
    const r = await evaluate({ model: FIXTURE, dataset: 'cifar10', folder: path.join(root, 'flat'), dataDir: '', protocol: 'weighted', k: [20], seed: 0, threads: 1 });
    const enc = await Encoder.open(FIXTURE, { threads: 1 });
    const fm = await enc.runU8(f.train.images, f.train.count);
    const fq = await enc.runU8(f.test.images, f.test.count);
    await enc.release();
    const d = fm.length / f.train.count;
    const unit = (v: Float32Array, i: number) => {
      const x = Array.from(v.subarray(i * d, (i + 1) * d));
      const n = Math.hypot(...x);
      return x.map((y) => y / n);
    };
    let correct = 0;
    for (let q = 0; q < f.test.count; q++) {
      const qv = unit(fq, q);
      const sims = [...Array(f.train.count).keys()].map((m) => ({ s: unit(fm, m).reduce((a, y, k) => a + y * qv[k], 0), l: f.train.labels[m] })).sort((a, b) => b.s - a.s).slice(0, 20);
      const votes = [0, 0, 0];
      for (const x of sims) votes[x.l] += Math.exp(x.s / 0.07);
      if (votes.indexOf(Math.max(...votes)) === f.test.labels[q]) correct++;
    }
    assert.equal(r.memory, 60);
    assert.equal(r.queries, 15);
    assert.ok(Math.abs(r.results[0].accuracy - (100 * correct) / 15) < 1e-9, `eval ${r.results[0].accuracy}% vs independent ${(100 * correct) / 15}%`);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
