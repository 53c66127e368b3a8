// Hostile model files for `ssocl embed`: a model declaring a 60000x60000 input (it used to grow until
// the OOM killer, without an error) is refused at start; a hot reload to a same-shape model whose
// outputs are NaN (it used to turn every record into nulls) is refused, and the old model keeps serving.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Graph, type Shape } from '../../tools/graph/graph.ts';
import { encodeModel } from '../../tools/onnx/encode.ts';
import { initialEncoder } from '../../agent/export/export.ts';
import { encodePng } from '../../agent/frames/decode.ts';
import { HealthSet } from '../../agent/health/set.ts';
import { bindInputs, modelInfo } from '../../core/onnx/model.ts';
import { REPO } from '../helpers/paths.ts';
import { CLI, waitFor, writeFrames } from './helpers.ts';

const ART = path.join(REPO, 'training-artifacts/edge');
const sha16 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex').slice(0, 16);
const readJsonl = (f: string) => readFileSync(f, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));

/**
 * A tiny encoder-shaped model: images -> global average pool -> features [batch, 64] -> embedding
 * [batch, 128]. `poison` puts a NaN in the first weight matrix (every output becomes NaN).
 */
function tinyModel(input: Shape, poison: boolean): Uint8Array {
  const g = new Graph();
  const x = g.input('images', input);
  const w1 = new Float32Array(3 * 64).map((_, i) => Math.sin(i + 1));
  if (poison) w1[5] = NaN;
  const w2 = new Float32Array(64 * 128).map((_, i) => Math.cos(i) / 8);
  const f = g.matmul(g.flatten(g.globalAvgPool(x)), g.constant(w1, [3, 64]));
  g.output(f, 'features');
  g.output(g.matmul(f, g.constant(w2, [64, 128])), 'embedding');
  return encodeModel(g, 'attack');
}

test('embed refuses a model declaring a 60000x60000 input at once, with a one-line error naming the file and the shape (exit 2)', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-attack-huge-'));
  try {
    await writeFrames(path.join(root, 'in'), 2);
    const model = path.join(root, 'huge.onnx');
    writeFileSync(model, tinyModel([1, 3, 60000, 60000], false));
    // Under a 4 GB data limit (RLIMIT_DATA: unlike ulimit -v it leaves WebAssembly's address-space
    // reservations alone) and a timeout: code that allocates at the declared size fails here by crash
    // or timeout instead of taking the machine down.
    const t0 = Date.now();
    const r = spawnSync('bash', ['-c', 'ulimit -d 4000000; exec "$0" "$@"', process.execPath, CLI, 'embed', path.join(root, 'in'), '--model', model, '--threads', '1'], { encoding: 'utf8', timeout: 60_000, killSignal: 'SIGKILL' });
    const seconds = (Date.now() - t0) / 1000;
    assert.equal(r.signal, null, `killed by ${r.signal} after ${seconds.toFixed(1)} s; stderr: ${r.stderr}`);
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stdout, '', 'no records');
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], /huge\.onnx/);
    assert.match(lines[0], /\[1, 3, 60000, 60000\]/);
    assert.match(lines[0], /refused/);
    assert.ok(seconds < 20, `refused in ${seconds.toFixed(1)} s`);

    // The other refusals at start: a model with NaN outputs (probe run), an oversized output width.
    writeFileSync(model, tinyModel(['batch', 3, 32, 32], true));
    let s = spawnSync(process.execPath, [CLI, 'embed', path.join(root, 'in'), '--model', model, '--threads', '1'], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(s.status, 2, s.stderr);
    assert.equal(s.stdout, '');
    assert.match(s.stderr, /huge\.onnx: refused: probe output 'features' has \d+ of \d+ values not finite/);
    const g = new Graph();
    g.output(g.flatten(g.input('images', ['batch', 3, 32, 32])), 'features'); // 3072 wide: fine
    writeFileSync(model, encodeModel(g, 'flat'));
    s = spawnSync(process.execPath, [CLI, 'embed', path.join(root, 'in'), '--model', model, '--threads', '1'], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(s.status, 0, s.stderr);
    assert.equal(s.stdout.trim().split('\n').length, 2);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('embed --watch: a hot reload to a same-shape model with NaN outputs is refused and logged; every record still comes from the old model, finite', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-attack-nan-'));
  try {
    const models = path.join(root, 'models');
    const watch = path.join(root, 'watch');
    mkdirSync(models);
    mkdirSync(watch);
    const latest = path.join(models, 'latest.onnx');
    const good = initialEncoder(ART);
    writeFileSync(latest, good);
    const out = path.join(root, 'w.jsonl');
    const child = spawn(process.execPath, [CLI, 'embed', '--watch', watch, '--model', latest, '--out', out, '--batch', '4', '--stable-ms', '40', '--reload-ms', '5', '--exit-when-idle', '3', '--threads', '1'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (c) => (stderr += c));
    const done = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    await writeFrames(watch, 4);
    const lines = () => readFileSync(out, 'utf8').split('\n').filter(Boolean).length;
    const count = () => {
      try {
        return lines();
      } catch {
        return 0;
      }
    };
    assert.ok(await waitFor(() => count() >= 4, 20_000), `first frames embedded; stderr: ${stderr}`);
    // The attack: same input and output shapes, NaN outputs; put in place by rename as the agent does.
    writeFileSync(path.join(models, '.tmp.onnx'), tinyModel(['batch', 3, 32, 32], true));
    renameSync(path.join(models, '.tmp.onnx'), latest);
    assert.ok(await waitFor(() => /refused/.test(stderr), 10_000), `the reload is refused; stderr: ${stderr}`);
    await writeFrames(watch, 8);
    const code = await done;
    assert.equal(code, 0, stderr);
    assert.match(stderr, /model .*latest\.onnx changed but was refused, keeping [0-9a-f]{16}: .*not finite/);
    assert.doesNotMatch(stderr, /model reloaded/);
    const recs = readJsonl(out);
    assert.equal(recs.length, 12);
    for (const x of recs) {
      assert.equal(x.model.sha256, sha16(good), `${x.key} computed by the old model`);
      assert.equal(x.features.length, 64);
      assert.ok(x.features.every((v: unknown) => typeof v === 'number' && Number.isFinite(v)), `${x.key}: finite features`);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

/**
 * Finite on the probe images (channel means ~0.5) and NaN on dark frames: features = Sqrt(channel
 * mean - 0.3) x W, so any frame with a channel mean under 0.3 gives NaN everywhere (issue 30, B10).
 */
function darkNaNModel(step: number): Uint8Array {
  const g = new Graph();
  const x = g.input('images', ['batch', 3, 32, 32]);
  const m = g.sqrt(g.binary('Sub', g.flatten(g.globalAvgPool(x)), g.scalar(0.3)));
  const f = g.matmul(m, g.constant(new Float32Array(3 * 64).map((_, i) => Math.sin(i + 1)), [3, 64]));
  g.output(f, 'features');
  g.output(g.matmul(f, g.constant(new Float32Array(64 * 128).map((_, i) => Math.cos(i) / 8), [64, 128])), 'embedding');
  return encodeModel(g, 'dark-nan', { metadata: { 'ssocl.step': String(step) } });
}

const dark = () => encodePng(new Uint8Array(3 * 32 * 32), 32);
const bright = (k: number) => encodePng(new Uint8Array(3 * 32 * 32).map((_, i) => 150 + ((i * 7 + k) % 100)), 32);

test('B10: a model finite on the probe images but NaN on real (dark) frames is refused at start; met later, such a frame is reported failed, never a record of nulls', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-attack-dark-'));
  try {
    const model = path.join(root, 'dark.onnx');
    writeFileSync(model, darkNaNModel(1));
    // The first batch holds a dark frame: refused at start.
    const first = path.join(root, 'first');
    mkdirSync(first);
    writeFileSync(path.join(first, 'a.png'), await bright(1));
    writeFileSync(path.join(first, 'b.png'), await dark());
    let s = spawnSync(process.execPath, [CLI, 'embed', first, '--model', model, '--threads', '1'], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(s.status, 2, s.stderr);
    assert.equal(s.stdout, '', 'no records');
    assert.match(s.stderr, /dark\.onnx: refused: output 'features' has \d+ of \d+ values not finite .* on 2 real frames/);
    // Bright frames first (batch 2), a dark one in a later batch: that frame fails, the others are written.
    const later = path.join(root, 'later');
    mkdirSync(later);
    for (const n of ['a', 'b', 'c']) writeFileSync(path.join(later, `${n}.png`), await bright(n.charCodeAt(0)));
    writeFileSync(path.join(later, 'd.png'), await dark());
    for (const cmd of ['embed', 'classify']) {
      const args = cmd === 'embed' ? [cmd, later] : [cmd, later, '--support', path.join(root, 'support')];
      if (cmd === 'classify') for (const c of ['x', 'y']) (mkdirSync(path.join(root, 'support', c), { recursive: true }), writeFileSync(path.join(root, 'support', c, '1.png'), await bright(c.charCodeAt(0))));
      s = spawnSync(process.execPath, [CLI, ...args, '--model', model, '--batch', '2', '--threads', '1'], { encoding: 'utf8', timeout: 60_000 });
      assert.equal(s.status, 0, s.stderr);
      const recs = s.stdout.trim().split('\n').map((l) => JSON.parse(l));
      assert.deepEqual(recs.map((r) => path.basename(r.path)), ['a.png', 'b.png', 'c.png'], `${cmd}: ${s.stdout}`);
      if (cmd === 'embed') for (const r of recs) assert.ok(r.features.every((v: unknown) => typeof v === 'number'), 'no nulls');
      assert.match(s.stderr, /failed .*d\.png: the model [0-9a-f]{16} gave non-finite/);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('B10: embed --watch refuses a hot reload to a model that is NaN on the latest real frames; models rollback refuses such a version on the health set unless --force', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-attack-dark-reload-'));
  try {
    const models = path.join(root, 'models');
    const watch = path.join(root, 'watch');
    mkdirSync(models);
    mkdirSync(watch);
    const latest = path.join(models, 'latest.onnx');
    const good = initialEncoder(ART);
    writeFileSync(latest, good);
    const out = path.join(root, 'w.jsonl');
    const child = spawn(process.execPath, [CLI, 'embed', '--watch', watch, '--model', latest, '--out', out, '--batch', '4', '--stable-ms', '40', '--reload-ms', '5', '--exit-when-idle', '3', '--threads', '1'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (c) => (stderr += c));
    const done = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    writeFileSync(path.join(watch, 'a.png'), await bright(1));
    writeFileSync(path.join(watch, 'b.png'), await dark());
    const count = () => (existsSync(out) ? readJsonl(out).length : 0);
    assert.ok(await waitFor(() => count() >= 2, 20_000), `first frames embedded; stderr: ${stderr}`);
    writeFileSync(path.join(models, '.tmp.onnx'), darkNaNModel(2));
    renameSync(path.join(models, '.tmp.onnx'), latest);
    assert.ok(await waitFor(() => /refused/.test(stderr), 10_000), `the reload is refused; stderr: ${stderr}`);
    writeFileSync(path.join(watch, 'c.png'), await dark());
    assert.equal(await done, 0, stderr);
    assert.match(stderr, /changed but was refused, keeping [0-9a-f]{16}: .*not finite.* on 2 real frames/);
    const recs = readJsonl(out);
    assert.equal(recs.length, 3);
    for (const x of recs) assert.equal(x.model.sha256, sha16(good));

    // models rollback to a version that is NaN on the health set's (dark) frames.
    const state = path.join(root, 'state');
    mkdirSync(state);
    const set = new HealthSet(path.join(state, 'health-set.safetensors'), 32, 8);
    for (let k = 0; k < 4; k++) set.offer(k % 2 ? new Uint8Array(3 * 32 * 32) : new Uint8Array(3 * 32 * 32).fill(200));
    set.renew();
    set.save();
    const bad = darkNaNModel(5);
    const rec = (file: string, step: number, b: Uint8Array, t: number) => JSON.stringify({ file, step, time: new Date(Date.UTC(2026, 0, 1, t)).toISOString(), sha256: createHash('sha256').update(b).digest('hex'), status: 'published' });
    const cur = bindInputs(good, new Map(), { metadata: { ...modelInfo(good).metadata, 'ssocl.step': '9' } });
    writeFileSync(path.join(models, 'encoder-000000005.onnx'), bad);
    writeFileSync(path.join(models, 'encoder-000000005.json'), rec('encoder-000000005.onnx', 5, bad, 1));
    writeFileSync(path.join(models, 'encoder-000000009.onnx'), cur);
    writeFileSync(path.join(models, 'encoder-000000009.json'), rec('encoder-000000009.onnx', 9, cur, 2));
    writeFileSync(latest, cur);
    writeFileSync(path.join(models, 'latest.json'), rec('encoder-000000009.onnx', 9, cur, 2));
    const refused = spawnSync(process.execPath, [CLI, 'models', 'rollback', '--models', models, '--state', state], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(refused.status, 2, refused.stderr);
    assert.match(refused.stderr, /encoder-000000005\.onnx fails the health gate .*non-finite.*--force/);
    assert.ok(readFileSync(latest).equals(cur), 'nothing published');
    const forced = spawnSync(process.execPath, [CLI, 'models', 'rollback', '--models', models, '--state', state, '--force'], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(forced.status, 0, forced.stderr);
    assert.ok(readFileSync(latest).equals(Buffer.from(bad)));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('B4: a FIFO given as --model (or put in place of latest.onnx) is refused at once with one line, never waited on', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-attack-fifo-model-'));
  try {
    await writeFrames(path.join(root, 'in'), 1);
    const model = path.join(root, 'latest.onnx');
    spawnSync('mkfifo', [model]);
    const s = spawnSync(process.execPath, [CLI, 'embed', path.join(root, 'in'), '--model', model, '--threads', '1'], { encoding: 'utf8', timeout: 20_000, killSignal: 'SIGKILL' });
    assert.equal(s.signal, null, 'embed hung on the FIFO');
    assert.equal(s.status, 2, s.stderr);
    assert.match(s.stderr, /latest\.onnx.*a FIFO \(only regular files are read\)/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
