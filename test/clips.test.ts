// Camera-like clips (tools/data/clips.ts): frames of one clip are near-duplicates that drift, frames of
// different images are not, and every frame is a pure function of (trial, source, t).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { clipFrame, clipMotion, clipStream, DEFAULT_CLIP, staticCameraStream } from '../tools/data/clips.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
// Real images (the demo's CIFAR-10 records: 1 label byte + 3072 image bytes), so "different" means
// different scenes, not noise.
const raw = readFileSync(path.join(HERE, '../agent/demo/cifar10-demo.bin'));
const image = (j: number) => new Uint8Array(raw.subarray(j * 3073 + 1, (j + 1) * 3073));
const mad = (a: Uint8Array, b: Uint8Array) => a.reduce((s, v, i) => s + Math.abs(v - b[i]), 0) / a.length;
const mean = (a: Uint8Array) => a.reduce((s, v) => s + v, 0) / a.length;

test('clips: consecutive frames are near-duplicates; the clip drifts; other images are far', () => {
  const c = { ...DEFAULT_CLIP, frames: 10 };
  const frames = Array.from({ length: 10 }, (_, t) => clipFrame(image(0), 32, c, 0, 0, t));
  const step = Math.max(...frames.slice(1).map((f, t) => mad(f, frames[t])));
  const ends = mad(frames[0], frames[9]);
  const other = Math.min(...[1, 2, 3, 4, 5].map((j) => mad(frames[0], clipFrame(image(j), 32, c, 0, j, 0))));
  assert.ok(step < ends, `consecutive ${step.toFixed(1)} vs first-last ${ends.toFixed(1)}`);
  assert.ok(3 * step < other, `consecutive ${step.toFixed(1)} vs another image ${other.toFixed(1)}`);
  // The camera itself moves, smoothly: without noise or drift, the clip's ends are far apart and
  // each step covers a small part of the way.
  const still = { ...c, drift: 0, noise: 0 };
  const moved = Array.from({ length: 10 }, (_, t) => clipFrame(image(0), 32, still, 0, 0, t));
  const mstep = Math.max(...moved.slice(1).map((f, t) => mad(f, moved[t])));
  assert.ok(mad(moved[0], moved[9]) > 2 * mstep && mstep > 0, `motion: first-last ${mad(moved[0], moved[9]).toFixed(1)}, largest step ${mstep.toFixed(1)}`);
});

test('clips: a frame depends only on (trial, source, t), and trials differ', () => {
  const c = { ...DEFAULT_CLIP, frames: 5 };
  const a = clipFrame(image(3), 32, c, 2, 3, 4);
  clipFrame(image(1), 32, c, 2, 1, 0); // other frames made in between change nothing
  assert.deepEqual(clipFrame(image(3), 32, c, 2, 3, 4), a);
  assert.notDeepEqual(clipFrame(image(3), 32, c, 3, 3, 4), a);
  assert.notDeepEqual(clipMotion(c, 2, 3), clipMotion(c, 2, 4));
});

test('clips: without motion, drift or noise a frame is the image; the drift scales brightness as drawn', () => {
  const still = { frames: 3, zoom: [1, 1] as [number, number], drift: 0, noise: 0 };
  for (let t = 0; t < 3; t++) assert.deepEqual(clipFrame(image(2), 32, still, 0, 2, t), image(2));
  const drift = { ...still, drift: 0.3 };
  const m = clipMotion(drift, 0, 2);
  const last = clipFrame(image(2), 32, drift, 0, 2, 2);
  // Gain 1 + g at the last frame, before clamping and rounding: the mean follows within clipping.
  const want = Math.min(255, mean(image(2)) * (1 + m.gain));
  assert.ok(Math.abs(mean(last) - want) < 3, `mean ${mean(last).toFixed(1)} vs ${want.toFixed(1)} (gain ${m.gain.toFixed(3)})`);
  assert.deepEqual(clipFrame(image(2), 32, drift, 0, 2, 0), image(2), 'the first frame has no drift yet');
});

test('clips: the stream repeats each source D times in order; bad frame numbers are refused', () => {
  assert.deepEqual(clipStream([7, 3], 2), [{ source: 7, t: 0 }, { source: 7, t: 1 }, { source: 3, t: 0 }, { source: 3, t: 1 }]);
  assert.throws(() => clipFrame(image(0), 32, { ...DEFAULT_CLIP, frames: 2 }, 0, 0, 2), /clip frame 2: expected 0..1/);
  assert.throws(() => clipFrame(image(0), 32, { ...DEFAULT_CLIP, frames: 0 }, 0, 0, 0), /clip frames 0/);
});

test('ssocl stream --clips D writes each image of the order as D camera frames, each the clip frame of (trial, image, t)', async () => {
  const { spawnSync } = await import('node:child_process');
  const { mkdtempSync, readdirSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const sharp = (await import('sharp')).default;
  const { readCifar10 } = await import('../core/codecs/cifar.ts');
  const { CIFAR10_DIR, REPO } = await import('./helpers/paths.ts');
  const cli = (...a: string[]) => spawnSync(process.execPath, [path.join(REPO, 'bin/ssocl.mjs'), 'stream', '--dataset', 'cifar10', '--data-dir', path.dirname(CIFAR10_DIR), ...a], { encoding: 'utf8' });
  const o = JSON.parse(cli('--order', 'seq-bl', '--trial', '2', '--clips', '4', '--limit', '8', '--print-order').stdout);
  assert.deepEqual(o.frameOfClip, [0, 1, 2, 3, 0, 1, 2, 3]);
  assert.equal(new Set(o.indices.slice(0, 4)).size, 1);
  assert.notEqual(o.indices[3], o.indices[4]);
  const to = mkdtempSync(path.join(tmpdir(), 'ssocl-clipstream-'));
  try {
    const w = cli('--order', 'seq-bl', '--trial', '2', '--clips', '4', '--limit', '8', '--to', to);
    assert.equal(w.status, 0, w.stderr);
    const files = readdirSync(to).sort();
    assert.equal(files.length, 8);
    const train = readCifar10(CIFAR10_DIR, 'train');
    for (const [k, f] of files.entries()) {
      const i = o.indices[k];
      const want = clipFrame(train.images.subarray(i * 3072, (i + 1) * 3072), 32, { ...DEFAULT_CLIP, frames: 4 }, 2, i, o.frameOfClip[k]);
      const hwc = await sharp(path.join(to, f)).raw().toBuffer();
      const got = new Uint8Array(3072);
      for (let p = 0; p < 1024; p++) for (let c = 0; c < 3; c++) got[c * 1024 + p] = hwc[p * 3 + c];
      assert.deepEqual(got, want, `${f}: the clip frame (PNG is lossless)`);
    }
  } finally {
    rmSync(to, { recursive: true, force: true });
  }
});

test('static camera: P % idle frames in visits of 300 to scenes in turn, events of 10 spread evenly in their order', () => {
  const events = Array.from({ length: 40 }, (_, i) => 100 + i);
  const s = staticCameraStream([1, 2, 3], events, 2000, 90);
  assert.equal(s.length, 2000);
  const idle = s.filter((f) => f.idle);
  assert.equal(idle.length, 1800);
  // Visits of 300 frames in turn: 1, 2, 3, 1, 2, 3 (each scene revisited), t running 0..299 through the events.
  assert.deepEqual([0, 299, 300, 900, 1799].map((j) => [idle[j].source, idle[j].t, idle[j].clip]), [[1, 0, -1], [1, 299, -1], [2, 0, -2], [1, 0, -4], [3, 299, -6]]);
  // 20 events of 10 frames, every other event image (even spread, order kept), each whole.
  const ev = s.filter((f) => !f.idle);
  assert.deepEqual([...new Set(ev.map((f) => f.source))], events.filter((_, i) => i % 2 === 0));
  for (let k = 0; k < 20; k++) assert.deepEqual(ev.slice(10 * k, 10 * k + 10).map((f) => [f.clip, f.t]), Array.from({ length: 10 }, (_, t) => [k, t]));
  // Evenly cut into the idle view: ~86 idle frames before each event.
  const firstEvent = s.findIndex((f) => !f.idle);
  assert.equal(firstEvent, Math.round(1800 / 21));
  assert.equal(s.at(-1)!.idle, true);
  // Fewer event images than asked for: all of them, the rest idle.
  assert.equal(staticCameraStream([1], [5, 6], 100, 50).filter((f) => !f.idle).length, 20);
  assert.throws(() => staticCameraStream([1], events, 100, 100), /--idle 100: a percentage from 0 to 99/);
});

test('ssocl bench --idle: a percentage of 100 or a second kind of stream is one line, exit 2, before any work', async () => {
  const { spawnSync } = await import('node:child_process');
  const bench = (args: string[]) => spawnSync(process.execPath, [path.join(HERE, '../bin/ssocl.mjs'), 'bench', '--plan', ...args], { encoding: 'utf8' });
  const over = bench(['--idle', '90,100']);
  assert.equal(over.status, 2, over.stderr);
  assert.equal(over.stderr, 'ssocl: --idle 100: whole percentages from 0 to 99\n');
  const both = bench(['--idle', '90', '--clips', '10']);
  assert.equal(both.status, 2, both.stderr);
  assert.equal(both.stderr, 'ssocl: --idle and --clips / --video: one kind of stream at a time\n');
});
