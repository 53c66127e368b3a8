// End to end: frames written into a watched directory (one corrupt, one written slowly in pieces),
// the agent learns for a bounded number of arrivals, quarantines, checkpoints and exports; then it is
// killed hard mid-run and restarted: it resumes from its checkpoint and ingests nothing twice.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { encodePng } from '../agent/frames/decode.ts';
import { demoStream } from '../agent/commands/demo.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { listCheckpoints, readCheckpoint } from '../agent/trainer/checkpoint.ts';
import { readLiveBuffer } from '../agent/buffer/snapshot.ts';
import { REPO, CIFAR10_DIR } from './helpers/paths.ts';
import { tinyPreset } from './helpers/tiny.ts';

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-e2e-'));
const art = path.join(root, 'art');
const frames = path.join(root, 'frames');
const state = path.join(root, 'state');
const models = path.join(root, 'models');
mkdirSync(frames);
writeArtifacts(
  compileArtifacts(tinyPreset(['image.size=16', 'batch=8', 'agent={"newPerArrival":4,"updatesPerArrival":2,"bufferSize":12,"replay":"mixed"}'])),
  art,
);
const { images, order } = demoStream();
let next = 0;
async function writeFrames(n: number): Promise<void> {
  for (let k = 0; k < n; k++, next++) {
    const i = order[(next * 37) % order.length];
    writeFileSync(path.join(frames, `f${String(next).padStart(4, '0')}.png`), await encodePng(images.subarray(i * 3072, (i + 1) * 3072), 32));
  }
}

const args = (...extra: string[]) => [path.join(REPO, 'bin/ssocl.mjs'), 'run', '--watch', frames, '--artifacts', art, '--state', state, '--models', models, '--threads', '1', '--stable-ms', '200', ...extra];

function ledger(): string[] {
  return readFileSync(path.join(state, 'ingested.log'), 'utf8').trim().split('\n');
}

test.after(() => rmSync(root, { recursive: true, force: true }));

test('the agent learns from a watched directory, quarantines bad files, checkpoints and exports', async () => {
  await writeFrames(12);
  writeFileSync(path.join(frames, 'broken.png'), Buffer.from('\x89PNG\r\n\x1a\n truncated'));
  writeFileSync(path.join(frames, 'empty.jpg'), Buffer.alloc(0));
  writeFileSync(path.join(frames, 'notes.txt'), 'not a frame'); // ignored: not an image extension
  const child = spawn(process.execPath, args('--exit-when-idle', '4', '--checkpoint-every', '2', '--metrics', path.join(root, 'm.jsonl')), { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  // A frame written slowly, in two pieces, while the agent runs: read only once complete.
  await new Promise((r) => setTimeout(r, 2500));
  const slow = await encodePng(images.subarray(0, 3072), 32);
  const fd = openSync(path.join(frames, 'slow.png'), 'w');
  writeSync(fd, slow, 0, 40);
  await new Promise((r) => setTimeout(r, 120));
  writeSync(fd, slow, 40, slow.length - 40);
  closeSync(fd);
  const code = await new Promise<number | null>((r) => child.on('exit', r));
  assert.equal(code, 0, err);
  assert.match(out, /13 frames ingested, 2 quarantined/);
  const q = readdirSync(path.join(state, 'quarantine')).sort();
  assert.deepEqual(q, ['broken.png', 'broken.png.reason', 'empty.jpg', 'empty.jpg.reason']);
  assert.match(readFileSync(path.join(state, 'quarantine/empty.jpg.reason'), 'utf8'), /empty file/);
  assert.ok(listCheckpoints(path.join(state, 'checkpoints')).length >= 1);
  const metrics = readFileSync(path.join(root, 'm.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.ok(metrics.length >= 4 && metrics.every((m) => Number.isFinite(m.loss)));
  // The export loads anywhere, has a dynamic batch and the documented outputs, and has learnt.
  const sess = await ort.InferenceSession.create(path.join(models, 'latest.onnx'));
  assert.deepEqual([...sess.outputNames].sort(), ['embedding', 'features']);
  const probe = new Float32Array(5 * 3 * 16 * 16).map((_, i) => (Math.sin(i) + 1) / 2);
  const res = await sess.run({ images: new ort.Tensor('float32', probe, [5, 3, 16, 16]) });
  assert.deepEqual(res.features.dims, [5, 8]);
  assert.deepEqual(res.embedding.dims, [5, 8]);
  const fresh = await Trainer.open(art, { threads: 1 });
  const init = await fresh.embed(probe, 5);
  const diff = Math.max(...(res.features.data as Float32Array).map((v, i) => Math.abs(v - init.features[i])));
  assert.ok(diff > 1e-4, `exported features equal the initial model's (max diff ${diff})`);
  await fresh.close();
  const latest = JSON.parse(readFileSync(path.join(models, 'latest.json'), 'utf8'));
  assert.equal(latest.framesSeen, 13);
  assert.ok(latest.step >= 2);
  // The buffer snapshot for dashboards (written at the first arrival, then every few seconds).
  const live = readLiveBuffer(state);
  assert.ok(live && live.meta.entries.length > 0 && live.images.length === live.meta.entries.length, 'a live buffer snapshot in the state folder');
});

test('killed hard mid-run, the agent resumes from its last checkpoint and ingests nothing twice', async () => {
  const before = ledger().length;
  await writeFrames(40);
  const child: ChildProcess = spawn(process.execPath, args('--checkpoint-every', '1'), { stdio: ['ignore', 'ignore', 'pipe'] });
  const ckDir = path.join(state, 'checkpoints');
  const start = listCheckpoints(ckDir).at(-1);
  // Wait until it has checkpointed past where the first run ended, then kill -9.
  for (let t = 0; t < 600 && listCheckpoints(ckDir).at(-1) === start; t++) await new Promise((r) => setTimeout(r, 100));
  await new Promise((r) => setTimeout(r, 300));
  child.kill('SIGKILL');
  await new Promise((r) => child.on('exit', r));
  const killedAt = listCheckpoints(ckDir).at(-1)!;
  assert.notEqual(killedAt, start);
  const r = spawnSync(process.execPath, args('--exit-when-idle', '3'), { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`resumed from ${killedAt.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  const lines = ledger();
  const keys = lines.filter((l) => l.startsWith('ingested')).map((l) => l.split('\t').slice(1).join('\t'));
  assert.equal(new Set(keys).size, keys.length, 'a file was ingested twice');
  assert.equal(lines.length - before, 40);
  assert.ok(existsSync(path.join(models, 'latest.onnx')));
});

test('frames learnt after the last checkpoint are taken again after a crash, not lost', async () => {
  const dir2 = path.join(root, 'frames2');
  const st = path.join(root, 'crash-state');
  mkdirSync(dir2);
  for (let k = 0; k < 8; k++) {
    const i = order[k];
    writeFileSync(path.join(dir2, `g${k}.png`), await encodePng(images.subarray(i * 3072, (i + 1) * 3072), 32));
  }
  const a = (...extra: string[]) => [path.join(REPO, 'bin/ssocl.mjs'), 'run', '--watch', dir2, '--artifacts', art, '--state', st, '--models', path.join(root, 'crash-models'), '--threads', '1', '--after-ingest', 'delete', ...extra];
  // No periodic checkpoint: kill it once it has ingested and trained, before any checkpoint exists.
  const child = spawn(process.execPath, a('--checkpoint-every', '1h', '--metrics', path.join(root, 'crash.jsonl')), { stdio: 'ignore' });
  for (let t = 0; t < 300 && !existsSync(path.join(root, 'crash.jsonl')); t++) await new Promise((r) => setTimeout(r, 100));
  child.kill('SIGKILL');
  await new Promise((r) => child.on('exit', r));
  assert.equal(listCheckpoints(path.join(st, 'checkpoints')).length, 0);
  // Nothing was committed, so nothing was deleted: all 8 frames are still on disk (those read wait in
  // <state>/held/) and are learnt on restart.
  const held = existsSync(path.join(st, 'held')) ? readdirSync(path.join(st, 'held')).length : 0;
  assert.equal(readdirSync(dir2).filter((f) => f.endsWith('.png')).length + held, 8);
  const r = spawnSync(process.execPath, a('--exit-when-idle', '3'), { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /8 frames ingested/);
  assert.equal(readdirSync(dir2).filter((f) => f.endsWith('.png')).length, 0);
});

test('the dataset source replays a stream in-process and resumes at its position', () => {
  const st = path.join(root, 'ds-state');
  const run = (n: number) =>
    spawnSync(process.execPath, [path.join(REPO, 'bin/ssocl.mjs'), 'run', '--dataset', 'demo', '--artifacts', art, '--state', st, '--models', path.join(root, 'ds-models'), '--threads', '1', '--max-arrivals', String(n)], { encoding: 'utf8' });
  let r = run(2);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /8 frames ingested/);
  r = run(5);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /resumed from .*ckpt-\d+-000000002/);
  assert.match(r.stdout, /20 frames ingested.*5 arrivals/s);
  r = spawnSync(process.execPath, [path.join(REPO, 'bin/ssocl.mjs'), 'run', '--artifacts', art], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /give one source: --watch DIR, --camera DEVICE\|URL\|FILE or --dataset/);
});

test('persistent divergence stops the agent (exit 3) with the last good state checkpointed', () => {
  const st = path.join(root, 'div-state');
  const r = spawnSync(process.execPath, [path.join(REPO, 'bin/ssocl.mjs'), 'run', '--dataset', 'demo', '--artifacts', art, '--state', st, '--models', path.join(root, 'div-models'), '--threads', '1', '--lr', '1e30', '--max-skips', '3'], { encoding: 'utf8' });
  assert.equal(r.status, 3, r.stderr);
  assert.match(r.stderr, /training diverged: 3 consecutive steps had a non-finite loss or gradient; stopped with the last good state checkpointed/);
  const [ck] = listCheckpoints(path.join(st, 'checkpoints'));
  const data = readCheckpoint(ck);
  for (const [name, v] of data.state) assert.ok(v.every(Number.isFinite), `${name} is not finite`);
});

test('run --dataset with --per-class and --eval-every: kNN at each quarter of a reduced stream (its last, short arrival learnt), in the log and the metrics', { skip: !existsSync(path.join(CIFAR10_DIR, 'test_batch.bin')) && 'no CIFAR-10' }, () => {
  const st = path.join(root, 'eval-state');
  const metrics = path.join(root, 'eval-m.jsonl');
  const r = spawnSync(process.execPath, [path.join(REPO, 'bin/ssocl.mjs'), 'run', '--dataset', 'cifar10', '--data-dir', path.dirname(CIFAR10_DIR), '--per-class', '9', '--eval-every', '50', '--eval-memory', '500', '--state', st, '--models', path.join(root, 'eval-models'), '--threads', '2', '--metrics', metrics], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  // 90 frames: five arrivals of 16 and a last one of 10, learnt at the stream's end.
  assert.match(r.stdout, /90 frames ingested/);
  const evals = readFileSync(metrics, 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((x) => x.eval).map((x) => x.eval);
  assert.deepEqual(evals.map((e) => e.percent), [50, 100]);
  for (const e of evals) assert.ok(e.knn20 > 10 && e.knn20 < 100 && e.knn50 > 10, JSON.stringify(e));
  assert.match(r.stderr, /eval at 50% of the stream .*knn20 \d+\.\d\d/);
  const bad = spawnSync(process.execPath, [path.join(REPO, 'bin/ssocl.mjs'), 'run', '--dataset', 'demo', '--eval-every', '25', '--state', st], { encoding: 'utf8' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /--eval-every needs --dataset cifar10\|cifar100/);
});
