// Streams from a labelled folder (--dataset folder:ROOT, issue #14) on small generated folders: the
// Seq, Seq-im and Seq-bl orders against an independent implementation of DESIGN section 5's rules
// written here (classes in name order, per-class counts from what the folder holds, Seq-im's
// half/full pattern repeated over the classes, SCALE's boundary blur), what is left out (unreadable
// files, links that lead outside ROOT) and the one-line errors; then `ssocl stream --print-order`,
// `ssocl run` and an edge-scale `ssocl bench` on a folder end to end.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { encodePng } from '../agent/frames/decode.ts';
import { folderStream } from '../agent/commands/stream.ts';
import { Rng } from '../core/rng.ts';
import { REPO } from './helpers/paths.ts';
import { tinyPreset } from './helpers/tiny.ts';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';

const CLI = path.join(REPO, 'bin/ssocl.mjs');
const root = mkdtempSync(path.join(tmpdir(), 'ssocl-folder-stream-'));
test.after(() => rmSync(root, { recursive: true, force: true }));

const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd: root, timeout: 120_000 });

/** A distinct 16x16 PNG per (seed). */
async function png(seed: number): Promise<Buffer> {
  const rng = new Rng(seed);
  return encodePng(new Uint8Array(3 * 16 * 16).map(() => rng.int(256)), 16);
}

// 12 classes (so Seq-im's 10-class pattern wraps), created in an order that is not the sorted one,
// with 6 to 14 images each; ROOT/<class>/ layout, so every 5th image of a class is a kNN query.
const CLASSES = ['kiwi', 'ant', 'lynx', 'bee', 'cat', 'jay', 'dog', 'eel', 'fox', 'gnu', 'hen', 'ibis'];
const COUNT = (ci: number) => 6 + ((ci * 5) % 9);
const flat = path.join(root, 'flat');

/** The stream's train list as DESIGN describes it, computed from the names alone: classes sorted, files sorted, every 5th a query. */
function expectedTrain(): { classes: string[]; files: string[][] } {
  const classes = [...CLASSES].sort();
  return { classes, files: classes.map((c) => Array.from({ length: COUNT(CLASSES.indexOf(c)) }, (_, j) => `${c}/${String(j).padStart(3, '0')}.png`).filter((_, j) => j % 5 !== 4)) };
}

/** Independent: per class Fisher-Yates on the class's train positions with the trial's generator, cut; Seq-bl blurs each boundary in turn. */
function expectedOrder(order: 'seq' | 'seq-im' | 'seq-bl', trial: number): string[] {
  const { files } = expectedTrain();
  const rng = new Rng(trial);
  const HALF = [true, false, true, false, true, true, false, true, true, false]; // CIFAR-10: 2048 4096 2048 4096 2048 2048 4096 2048 2048 4096
  const blocks = files.map((fs, c) => {
    const b = fs.slice();
    for (let i = b.length - 1; i > 0; i--) {
      const j = Math.floor(rng.uniform() * (i + 1));
      [b[i], b[j]] = [b[j], b[i]];
    }
    const keep = order === 'seq-im' && HALF[c % 10] ? Math.max(1, Math.floor(b.length / 2)) : b.length;
    return b.slice(0, keep);
  });
  if (order === 'seq-bl') {
    for (let c = 1; c < blocks.length; c++) {
      const [prev, next] = [blocks[c - 1], blocks[c]];
      const n = Math.floor(Math.min(prev.length, next.length) / 4);
      for (let t = 0; t < n; t++) {
        const p = n === 1 ? 0.5 : 0.5 - (0.45 * t) / (n - 1);
        if (rng.uniform() < p) [prev[prev.length - 1 - t], next[t]] = [next[t], prev[prev.length - 1 - t]];
      }
    }
  }
  return blocks.flat();
}

test.before(async () => {
  for (const [ci, c] of CLASSES.entries()) {
    mkdirSync(path.join(flat, c), { recursive: true });
    for (let j = COUNT(ci) - 1; j >= 0; j--) writeFileSync(path.join(flat, c, `${String(j).padStart(3, '0')}.png`), await png(ci * 100 + j));
  }
  // Left out: an unreadable file (named after the train files, so it takes no query slot) and a link
  // to a good image outside ROOT.
  writeFileSync(path.join(flat, 'cat', 'zz-broken.png'), 'not a png');
  writeFileSync(path.join(root, 'outside.png'), await png(999));
  symlinkSync(path.join(root, 'outside.png'), path.join(flat, 'dog', 'zz-link.png'));
});

test('folder streams: seq, seq-im and seq-bl orders equal the rules computed independently; unreadable files and links left out and counted', async () => {
  const { classes } = expectedTrain();
  for (const [order, trial] of [['seq', 0], ['seq-im', 1], ['seq-bl', 2], ['seq-bl', 5]] as const) {
    const log: string[] = [];
    const s = await folderStream(flat, { order, trial, size: 8, log: (l) => log.push(l) });
    assert.deepEqual(s.folder.train.classes, classes);
    const got = s.order.map((i) => path.relative(flat, s.folder.trainFiles[i]));
    assert.deepEqual(got, expectedOrder(order, trial), `${order} trial ${trial}`);
    // Labels travel with the images: each index's label is its file's class.
    s.order.forEach((i, k) => assert.equal(classes[s.folder.train.labels[i]], got[k].split('/')[0]));
    assert.equal(s.skipped, 2);
    assert.equal(log.length, 3, log.join('\n'));
    assert.match(log[2], /: 2 files left out \(unreadable or links\)$/);
    assert.ok(log.some((l) => l.includes('zz-broken.png') && /unreadable|unsupported/.test(l)) && log.some((l) => l.includes('zz-link.png') && l.includes('link')));
    assert.equal(s.folder.test.count, classes.reduce((a, c) => a + Math.floor(COUNT(CLASSES.indexOf(c)) / 5), 0));
  }
  // Seq-im's counts: half (floored) where CIFAR-10's pattern halves, class by class in name order, wrapping after 10.
  const im = await folderStream(flat, { order: 'seq-im', trial: 3, size: 8, log: () => {} });
  const held = expectedTrain().files.map((f) => f.length);
  const counts = held.map((_, c) => im.order.filter((i) => im.folder.train.labels[i] === c).length);
  assert.deepEqual(counts, held.map((n, c) => ([0, 2, 4, 5, 7, 8].includes(c % 10) ? Math.floor(n / 2) : n)));
});

test('folder streams: one-line errors for a missing ROOT, an empty class and a class with no readable image', async () => {
  const bad = (dir: string, re: RegExp) => {
    const r = cli('stream', '--dataset', `folder:${dir}`, '--print-order');
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr.split('\n').filter(Boolean).filter((l) => l.startsWith('ssocl:')).length, 1, r.stderr);
    assert.match(r.stderr, re);
  };
  bad(path.join(root, 'nope'), /^ssocl: --dataset folder:\S+nope: no such directory\n$/);
  const empty = path.join(root, 'empty');
  for (const c of ['a', 'b']) mkdirSync(path.join(empty, c), { recursive: true });
  for (let j = 0; j < 5; j++) writeFileSync(path.join(empty, 'a', `${j}.png`), await png(j));
  bad(empty, /^ssocl: --dataset folder:\S+empty: class 'b' holds no images/m);
  const unreadable = path.join(root, 'unreadable');
  for (const c of ['a', 'b']) mkdirSync(path.join(unreadable, c), { recursive: true });
  for (let j = 0; j < 5; j++) {
    writeFileSync(path.join(unreadable, 'a', `${j}.png`), await png(j));
    writeFileSync(path.join(unreadable, 'b', `${j}.png`), 'broken');
  }
  bad(unreadable, /^ssocl: --dataset folder:\S+unreadable: no readable images left in class b/m);
  const linkedVal = path.join(root, 'linked-val');
  mkdirSync(path.join(linkedVal, 'train', 'a'), { recursive: true });
  writeFileSync(path.join(linkedVal, 'train', 'a', '0.png'), await png(1));
  symlinkSync(path.join(unreadable), path.join(linkedVal, 'val'));
  bad(linkedVal, /^ssocl: --dataset folder:\S+linked-val: val\/ is a link, not followed/m);
  // More decoded pixels than one array holds (ImageNet-100 at 224 px): said before anything is decoded.
  await assert.rejects(folderStream(flat, { order: 'seq', trial: 0, size: 20000, log: () => {} }), /^Error: --dataset folder:\S+flat: \d+ images at 20000px need \d+\.\d GiB decoded, over the 4 GiB one array holds/);
});

test('ssocl stream --dataset folder:ROOT --order seq-bl --print-order, and --to: the original files in stream order', () => {
  const r = cli('stream', '--dataset', `folder:${flat}`, '--order', 'seq-bl', '--trial', '4', '--print-order');
  assert.equal(r.status, 0, r.stderr);
  const o = JSON.parse(r.stdout);
  assert.deepEqual(o.classes, expectedTrain().classes);
  assert.deepEqual(o.files, expectedOrder('seq-bl', 4));
  assert.equal(o.count, o.indices.length);
  assert.deepEqual(o.labels, o.files.map((f: string) => o.classes.indexOf(f.split('/')[0])));
  assert.match(r.stderr, /2 files left out/);
  const to = path.join(root, 'frames');
  const w = cli('stream', '--dataset', `folder:${flat}`, '--order', 'seq-bl', '--trial', '4', '--to', to, '--limit', '5');
  assert.equal(w.status, 0, w.stderr);
  const written = readdirSync(to).sort();
  assert.deepEqual(written, o.files.slice(0, 5).map((f: string, k: number) => `${String(k).padStart(6, '0')}-c${o.labels[k]}.png`));
  written.forEach((name, k) => assert.ok(readFileSync(path.join(to, name)).equals(readFileSync(path.join(flat, o.files[k])))));
});

test('ssocl run --dataset folder:ROOT (seq-im, --eval-every) and an edge-scale ssocl bench on a train/ + val/ folder', async () => {
  // ImageNet-100's layout: train/<class>/ streams and is the kNN memory, val/<class>/ the queries.
  const split = path.join(root, 'split');
  for (const [ci, c] of ['b-cls', 'a-cls', 'c-cls'].entries()) {
    for (const [sp, n] of [['train', 24 + 4 * ci], ['val', 4]] as const) {
      mkdirSync(path.join(split, sp, c), { recursive: true });
      for (let j = 0; j < n; j++) writeFileSync(path.join(split, sp, c, `${j}.png`), await png(5000 + ci * 100 + j + (sp === 'val' ? 50 : 0)));
    }
  }
  // Artifacts at 8 px: the folder is decoded at the size their manifest names (not CIFAR's 32).
  const art = path.join(root, 'tiny-artifacts');
  writeArtifacts(compileArtifacts(tinyPreset(['batch=32', 'agent.newPerArrival=16'])), art);
  const run = cli('run', '--dataset', `folder:${split}`, '--artifacts', art, '--stream-order', 'seq-im', '--eval-every', '50', '--threads', '1', '--state', path.join(root, 'st'), '--models', path.join(root, 'models'), '--health-frames', '8');
  assert.equal(run.status, 0, run.stderr);
  // Sorted: a-cls (28, half -> 14), b-cls (24, full), c-cls (32, half -> 16): 54 frames.
  assert.match(run.stderr, /folder \S+: 3 classes, 84 stream images, 12 kNN queries \(train\/ and val\/\), at 8px/);
  assert.match(run.stderr, /replaying folder:\S+ seq-im trial 0 \(54 frames left\)/);
  assert.match(run.stderr, /eval at 50% of the stream \(step \d+, 32 frames\): knn20 \d/);
  assert.match(run.stdout, /stopped \(end of the folder:\S+ seq-im trial 0 stream\): 54 frames ingested/);

  const json = path.join(root, 'bench.jsonl');
  const bench = cli('bench', '--dataset', `folder:${split}`, '--methods', 'ours', '--orders', 'seq', '--trials', '0', '--per-class', 'all', '--threads', '1', '--json', json);
  assert.equal(bench.status, 0, bench.stderr);
  const rows = readFileSync(json, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(rows.length, 1);
  const [row] = rows;
  assert.deepEqual([row.protocol, row.dataset, row.method, row.images, row.memory, row.queries], ['edge-folder', `folder:${split}`, 'ours', 84, 84, 12]);
  assert.ok(row.steps > 0, String(row.steps));
  assert.equal(row.knn20.length, 4);
  for (const v of [...row.knn20, row.floor20]) assert.ok(v >= 0 && v <= 100, String(v));
  assert.match(bench.stdout, /edge-folder, \d+ cores, kNN@20 on 12 test images with 84 train images as memory/);
});
