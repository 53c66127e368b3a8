// Hostile model files for `ssocl embed`: a model declaring a 60000x60000 input (it used to grow until
// the OOM killer, without an error) is refused at start; a hot reload to a same-shape model whose
// outputs are NaN (it used to turn every record into nulls) is refused, and the old model keeps serving.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Graph, type Shape } from '../../tools/graph/graph.ts';
import { encodeModel } from '../../tools/onnx/encode.ts';
import { initialEncoder } from '../../agent/export/export.ts';
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
