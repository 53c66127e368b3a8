// `ssocl bench` (bench/compare.ts): each protocol's plan (stream sizes computed here from the DESIGN's
// class counts, the same updates x crops for every method, resume status) and a small real run whose
// rows are paired (same random-init floor) and skipped when run again.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { REPO, CIFAR10_DIR } from './helpers/paths.ts';
import { METHODS } from '../agent/methods.ts';

const skip = !existsSync(path.join(CIFAR10_DIR, 'test_batch.bin')) && 'no CIFAR-10';
const root = mkdtempSync(path.join(tmpdir(), 'ssocl-compare-'));
process.on('exit', () => rmSync(root, { recursive: true, force: true }));

function bench(args: string[]) {
  return spawnSync(process.execPath, [path.join(REPO, 'bin/ssocl.mjs'), 'bench', '--data-dir', path.dirname(CIFAR10_DIR), ...args], { encoding: 'utf8' });
}

function planRows(out: string): Record<string, string>[] {
  const lines = out.split('\n').filter((l) => l.startsWith('| '));
  const head = lines[0].slice(2, -2).split(' | ');
  return lines.slice(1).map((l) => Object.fromEntries(l.slice(2, -2).split(' | ').map((v, i) => [head[i], v])));
}

// DESIGN.md section 5: CIFAR-10 Seq asks 4096 a class (5000 exist); Seq-im asks these.
const SEQ_IM = [2048, 4096, 2048, 4096, 2048, 2048, 4096, 2048, 2048, 4096];

test('bench --plan: stream sizes, presets and one budget (updates x crops) per protocol; done rows marked', { skip }, () => {
  const json = path.join(root, 'plan.jsonl');
  // An older edge row (no protocol field) for ours/seq/trial 1, under ours' rules: done for edge-cifar10 only.
  writeFileSync(json, JSON.stringify({ method: 'ours', order: 'seq', trial: 1, images: 4500, steps: 1, seconds: 1, floor20: 1, knn20: [1, 1, 1, 1], knn50: [1, 1, 1, 1], final20: 1, mean20: 1, rules: { policy: METHODS.ours.buffer, replay: METHODS.ours.replay, warmup: 'none', ...(METHODS.ours.strata ? { strata: METHODS.ours.strata } : {}), grid: true } }) + '\n');
  const expect: Record<string, { perClass: number; b: number; k: number; scale: string }> = {
    'edge-cifar10': { perClass: 450, b: 32, k: 2, scale: 'edge' },
    'gpu-cifar10': { perClass: 1000, b: 100, k: 1, scale: 'paper' },
    'paper-cifar10': { perClass: 4096, b: 100, k: 10, scale: 'paper' },
  };
  for (const [protocol, e] of Object.entries(expect)) {
    const r = bench(['--protocol', protocol, '--plan', '--methods', 'ours,ours-paper-eq,empssl,minred,simclr-reservoir', '--orders', 'seq,seq-im', '--trials', '1', '--json', json]);
    assert.equal(r.status, 0, r.stderr);
    const rows = planRows(r.stdout);
    assert.equal(rows.length, 10, r.stdout);
    // Reduced streams keep the imbalance: each class gets its share of perClass for the largest class.
    const seqIm = SEQ_IM.reduce((a, n) => a + Math.round((n * Math.min(e.perClass, 4096)) / 4096), 0);
    for (const row of rows) {
      const images = row.order === 'seq' ? 10 * e.perClass : seqIm;
      assert.equal(Number(row.images), images, `${protocol} ${row.order}`);
      assert.equal(Number(row.arrivals), Math.floor(images / e.b));
      assert.equal(Number(row.batch), 2 * e.b);
      const twoView = row.method === 'minred' || row.method === 'simclr-reservoir';
      const oursCrops = e.scale === 'edge' ? 4 : 20;
      assert.equal(Number(row.crops), twoView ? 2 : oursCrops);
      assert.equal(Number(row['updates/arrival']), twoView ? (e.k * oursCrops) / 2 : e.k);
      assert.equal(Number(row['crop-passes/arrival']), e.k * oursCrops * 2 * e.b, `${protocol} ${row.method}: same budget as ours`);
      assert.equal(row.encoder, e.scale === 'edge' ? 'resnet-edge' : 'resnet18-cifar');
      const done = protocol === 'edge-cifar10' && row.method === 'ours' && row.order === 'seq';
      assert.equal(row.status, done ? 'done' : 'to run', `${protocol} ${row.method} ${row.order}`);
    }
    assert.match(r.stdout, new RegExp(`${protocol}: ${e.b} new images per arrival, kNN memory ${e.scale === 'edge' ? 10000 : 50000} train images, 10000 test queries`));
  }
  const bad = bench(['--protocol', 'edge-cifar10', '--plan', '--per-class', '0', '--json', json]);
  // A bad flag is the command line's one-line exit 2 (agent/cli-args.ts), before anything is read.
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /^ssocl: --per-class 0: expected a whole number >= 1 or 'all'\n$/);
});

test('bench runs paired methods on a small edge stream, appends a row each, and skips them when run again', { skip }, () => {
  const json = path.join(root, 'run.jsonl');
  const mk = (queries: string) => ['--methods', 'ours,simclr-reservoir', '--orders', 'seq', '--trials', '0', '--per-class', '20', '--memory', '300', '--queries', queries, '--threads', '1', '--json', json];
  const args = mk('500');
  const r = bench(args);
  assert.equal(r.status, 0, r.stderr);
  const rows = readFileSync(json, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(rows.length, 2);
  const [ours, simclr] = rows;
  assert.deepEqual([ours.method, simclr.method], ['ours', 'simclr-reservoir']);
  // Paired: the same encoder init, so the same random-init floor.
  assert.equal(ours.floor20, simclr.floor20);
  for (const row of rows) {
    assert.deepEqual([row.images, row.memory, row.queries], [200, 300, 500]);
    assert.equal(row.knn20.length, 4);
    for (const v of [...row.knn20, ...row.knn50, row.floor20]) assert.ok(v >= 0 && v <= 100 && v > 5, String(v)); // 10 classes
    assert.equal(row.final20, row.knn20[3]);
    assert.ok(Math.abs(row.mean20 - row.knn20.reduce((a: number, b: number) => a + b, 0) / 4) < 1e-9);
    assert.equal(row.gradCos.length, row.steps);
  }
  // 6 arrivals of 32: ours up to 2 updates each, SimCLR (2 crops) up to 4, from its buffer.
  assert.ok(ours.steps > 0 && ours.steps <= 12, String(ours.steps));
  assert.ok(simclr.steps > ours.steps && simclr.steps <= 24, String(simclr.steps));
  assert.match(r.stdout, /\| ours \| seq \| 1 \|/);
  const again = bench(args);
  assert.equal(again.status, 0, again.stderr);
  assert.equal(readFileSync(json, 'utf8').trim().split('\n').length, 2, 'nothing run twice');
  // --report: the tables and charts from the rows there, nothing run.
  const rep = bench(['--report', '--json', json]);
  assert.equal(rep.status, 0, rep.stderr);
  assert.match(rep.stdout, /\| ours \| seq \| 1 \| /);
  assert.match(rep.stdout, /\| simclr-reservoir \| -?\d+\.\d\d \(1\) \|/); // ours minus SimCLR, one pair
  assert.ok(existsSync(json.replace(/\.jsonl$/, '-seq.png')) && existsSync(json.replace(/\.jsonl$/, '-seq-gradcos.svg')));
  assert.equal(readFileSync(json, 'utf8').trim().split('\n').length, 2);
  // The gradient-cosine table: each method's mean over steps 1.. (and over the second half), from its row.
  for (const r of readFileSync(json, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { method: string; gradCos: (number | null)[] })) {
    const mean = (from: number) => {
      const v = r.gradCos.filter((x, j) => j >= from && x !== null) as number[];
      return (v.reduce((a, b) => a + b, 0) / v.length).toFixed(3);
    };
    assert.ok(r.gradCos.length > 4, r.method);
    const line = `| ${r.method} | ${mean(1)} +- 0.000 (1) | ${mean(Math.floor(r.gradCos.length / 2))} +- 0.000 |`;
    assert.ok(rep.stdout.includes(line), `${line}\n${rep.stdout}`);
  }
  // Other kNN sets are other runs, not these: the plan shows them as still to run.
  const plan = bench([...mk('600'), '--plan']);
  assert.equal(plan.status, 0, plan.stderr);
  assert.deepEqual(planRows(plan.stdout).map((x) => x.status), ['to run', 'to run']);
});

test('bench --clips: the same number of frames from every D-th image, rows labelled ORDER+clipD with the buffer redundancy', { skip }, () => {
  const json = path.join(root, 'clips.jsonl');
  const r = bench(['--methods', 'ours', '--orders', 'seq', '--trials', '0', '--clips', '4', '--per-class', '16', '--memory', '100', '--queries', '100', '--threads', '1', '--json', json]);
  assert.equal(r.status, 0, r.stderr);
  const [row] = readFileSync(json, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  // 160 stream images -> 40 sources x 4 frames.
  assert.deepEqual([row.order, row.clip, row.images], ['seq+clip4', 4, 160]);
  assert.equal(row.sameClip.length, 4);
  assert.equal(row.nnSim.length, 4);
  for (const v of row.sameClip) assert.ok(v >= 0 && v <= 1, String(v));
  // Frames of one clip are near-duplicates: once the buffer holds features, some entry has its own clip as nearest neighbour.
  assert.ok(row.sameClip.at(-1) > 0, String(row.sameClip));
  assert.match(r.stdout, /Buffer redundancy at the end of the stream/);
  assert.match(r.stdout, /\| ours \| seq\+clip4 \| 1 \|/);
});

test('bench --idle: rows carry kNN@20 per class, the stream frames and the batch slots per class, and the idle classes; --report splits them', { skip }, () => {
  const json = path.join(root, 'idle.jsonl');
  const r = bench(['--methods', 'ours', '--orders', 'seq', '--trials', '0', '--idle', '90', '--per-class', '20', '--memory', '100', '--queries', '100', '--threads', '1', '--json', json]);
  assert.equal(r.status, 0, r.stderr);
  const [row] = readFileSync(json, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual([row.order, row.images, row.idleClasses.length], ['seq+idle90', 200, 3]);
  // 180 idle frames over the 3 scenes' classes, 20 event frames over the others.
  const sum = (v: number[]) => v.reduce((a, b) => a + b, 0);
  assert.equal(sum(row.framesByClass), 200);
  assert.equal(sum(row.framesByClass.filter((_: number, c: number) => row.idleClasses.includes(c))), 180);
  // Per-class kNN: the 10 classes at random init and at each mark.
  assert.equal(row.knn20ByClass.length, 4);
  assert.equal(row.floor20ByClass.length, 10);
  for (const v of row.knn20ByClass) assert.equal(v.length, 10);
  // Slots: every applied step trains on the whole batch of 64 (32 new + 32 replayed), counted by class, cumulative.
  assert.equal(row.usesByClass.length, 4);
  assert.equal(sum(row.usesByClass[3]), 64 * row.steps);
  for (let m = 1; m < 4; m++) assert.ok(row.usesByClass[m].every((u: number, c: number) => u >= row.usesByClass[m - 1][c]));
  const rep = bench(['--report', '--json', json]);
  assert.equal(rep.status, 0, rep.stderr);
  assert.match(rep.stdout, /Static camera by class at the end/);
  assert.match(rep.stdout, /\| ours \| seq\+idle90 \| 1 \| \d+\.\d\d \(\d+\.\d\d\) \| \d+\.\d\d \(\d+\.\d\d\) \| \d+\.\d\d \| \d+\.\d\d \| 0\.\d{3} \|/);
});

const FFMPEG = process.env.SSOCL_FFMPEG ?? 'ffmpeg';
const noFfmpeg = spawnSync(FFMPEG, ['-version']).status !== 0 && `ffmpeg not found ('${FFMPEG}'); .ci/run installs it`;

/** A lossless video (PNG frames in Matroska) of solid colours, 1 s each at `rate` fps, `size` WxH. */
function colourVideo(file: string, colours: string[], rate: number, size = '64x48'): void {
  const inputs = colours.flatMap((c) => ['-f', 'lavfi', '-i', `color=c=${c}:s=${size}:r=${rate}:d=1`]);
  const r = spawnSync(FFMPEG, ['-hide_banner', '-loglevel', 'error', '-y', ...inputs, '-filter_complex', `${colours.map((_, i) => `[${i}]`).join('')}concat=n=${colours.length}:v=1:a=0,format=rgb24`, '-c:v', 'png', file]);
  assert.equal(r.status, 0, r.stderr?.toString());
}

test('decodeVideo: a video through ffmpeg at a rate, cut to the training size, as CHW planes in time order', { skip: noFfmpeg }, async () => {
  const { decodeVideo } = await import('../agent/sources/video-file.ts');
  const file = path.join(root, 'rgb.mkv');
  colourVideo(file, ['red', 'lime', 'blue'], 10);
  const v = decodeVideo(file, 2, 8, FFMPEG);
  assert.equal(v.count, 6);
  assert.equal(v.frames.length, 6 * 3 * 64);
  // Frame f's colour: which of its three planes is lit, checked at every pixel (CHW: plane c is 64 bytes).
  const lit = (f: number) => [0, 1, 2].filter((c) => v.frames.subarray(f * 192 + c * 64, f * 192 + (c + 1) * 64).every((x) => x >= 250));
  const dark = (f: number) => [0, 1, 2].filter((c) => v.frames.subarray(f * 192 + c * 64, f * 192 + (c + 1) * 64).every((x) => x <= 5));
  assert.deepEqual([0, 1, 2, 3, 4, 5].map(lit), [[0], [0], [1], [1], [2], [2]]);
  for (let f = 0; f < 6; f++) assert.equal(dark(f).length, 2, `frame ${f}`);
  assert.equal(decodeVideo(file, 10, 8, FFMPEG).count, 30);
  assert.throws(() => decodeVideo(path.join(root, 'none.mp4'), 2, 8, FFMPEG), /--video .*none\.mp4: no such video file \(ENOENT\)/);
  const junk = path.join(root, 'junk.mp4');
  writeFileSync(junk, 'not a video');
  assert.throws(() => decodeVideo(junk, 2, 8, FFMPEG), /--video .*junk\.mp4: ffmpeg exit \d+: .+/);
  assert.throws(() => decodeVideo(file, 0, 8, FFMPEG), /--fps 0: a rate above 0/);
});

test('bench --video: a recording streamed at each --fps on as many frames, scenes by --video-window, kNN on CIFAR', { skip: skip || noFfmpeg }, () => {
  const json = path.join(root, 'video.jsonl');
  // 40 one-second scenes of alternating colours at 30 fps: 4 fps gives 160 frames, 20 fps 800 (cut to 160).
  const file = path.join(root, 'scenes.mkv');
  colourVideo(file, Array.from({ length: 40 }, (_, i) => ['red', 'lime', 'blue', 'white', 'yellow'][i % 5]), 30, '32x32');
  // ours-mixed: every frame of an arrival trained on, so every entry has a stored feature for the same-scene share
  // (under ours' novel rule a single-colour scene's repeats wait for replay draws).
  const args = ['--methods', 'ours-mixed', '--trials', '0', '--video', file, '--fps', '4,20', '--video-window', '2', '--memory', '100', '--queries', '100', '--threads', '1', '--json', json];
  const r = bench(args);
  assert.equal(r.status, 0, r.stderr);
  const rows = readFileSync(json, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(rows.map((x) => [x.order, x.images, x.video]), [
    ['video+fps4', 160, { file: 'scenes.mkv', fps: 4, window: 2 }],
    ['video+fps20', 160, { file: 'scenes.mkv', fps: 20, window: 2 }],
  ]);
  // Paired: one init, one floor on CIFAR; 5 arrivals of 32 frames, 2 updates each from the second on
  // (a step is 32 new + 32 replayed).
  assert.equal(rows[0].floor20, rows[1].floor20);
  for (const x of rows) {
    assert.equal(x.steps, 8);
    assert.equal(x.sameClip.length, 4);
    assert.deepEqual(x.bufferClasses, []);
  }
  // At 20 fps the 160 frames are 8 s of video: 4 scenes of 40 frames, each a single colour, so (the
  // buffer holds every frame) nearly every entry's nearest neighbour is a frame of its own scene.
  assert.ok(rows[1].sameClip.at(-1) > 0.9, String(rows[1].sameClip));
  assert.match(r.stdout, /\| ours-mixed \| video\+fps20 \| 1 \|/);
  assert.equal(bench(args).status, 0);
  assert.equal(readFileSync(json, 'utf8').trim().split('\n').length, 2, 'nothing run twice');
  const bad = bench(['--video', path.join(root, 'none.mkv'), '--json', json]);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /^ssocl: --video .*none\.mkv: .+\n$/);
  const both = bench(['--video', file, '--clips', '10', '--json', json]);
  assert.equal(both.status, 2);
  assert.match(both.stderr, /^ssocl: --video and --clips: one kind of stream at a time\n$/);
});
