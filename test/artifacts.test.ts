// Artifacts: deterministic bytes, the committed edge artifacts equal a fresh build, the manifest
// describes the graphs exactly, and the Trainer and CLI fail clearly on bad input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import * as ort from 'onnxruntime-node';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { PRESETS, getPreset } from '../tools/artifacts/presets.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { exportEncoder } from '../agent/export/export.ts';
import { REPO } from './helpers/paths.ts';
import { tinyPreset } from './helpers/tiny.ts';

const EDGE_DIR = path.join(REPO, 'training-artifacts/edge');

test('compiling twice gives the same bytes', () => {
  const a = compileArtifacts(getPreset('edge'));
  const b = compileArtifacts(getPreset('edge'));
  for (const [name, bytes] of a.files) assert.ok(Buffer.from(bytes).equals(Buffer.from(b.files.get(name)!)), name);
  assert.equal(JSON.stringify(a.manifest), JSON.stringify(b.manifest));
});

test('the committed edge artifacts are what the compiler produces now', () => {
  const built = compileArtifacts(getPreset('edge'));
  for (const [name, bytes] of built.files) assert.ok(Buffer.from(bytes).equals(readFileSync(path.join(EDGE_DIR, name))), `${name} is stale: run 'ssocl artifacts --preset edge'`);
  assert.equal(readFileSync(path.join(EDGE_DIR, 'manifest.json'), 'utf8'), JSON.stringify(built.manifest, null, 1) + '\n');
});

test('every preset compiles, and its manifest lists exactly the graph inputs and outputs', async () => {
  for (const name of Object.keys(PRESETS).filter((n) => n.startsWith('edge'))) {
    const { manifest, files } = compileArtifacts(getPreset(name));
    const sess = await ort.InferenceSession.create(files.get('train_step.onnx')!);
    assert.deepEqual([...sess.inputNames].sort(), manifest.trainStep.inputs.map((i) => i.name).sort(), name);
    assert.deepEqual([...sess.outputNames].sort(), manifest.trainStep.outputs.map((i) => i.name).sort(), name);
    const stateIn = new Set(manifest.state.map((s) => s.name));
    const stateOut = new Set(manifest.state.map((s) => s.next));
    const d = manifest.trainStep.distill;
    const described = ['crops', 'lr', 'step', ...(d ? [d.pastFeatures.name, d.weight] : [])];
    for (const i of sess.inputNames) assert.ok(stateIn.has(i) || described.includes(i), `${name}: input ${i} not described`);
    for (const s of manifest.state) assert.ok(sess.outputNames.includes(s.next), `${name}: no output ${s.next}`);
    assert.ok(stateOut.size === manifest.state.length);
    const emb = await ort.InferenceSession.create(files.get('embed.onnx')!);
    assert.deepEqual([...emb.outputNames].sort(), ['embedding', 'features']);
    for (const i of emb.inputNames) assert.ok(i === 'images' || manifest.state.find((s) => s.name === i)?.embed, `${name}: embed input ${i}`);
    await sess.release();
    await emb.release();
  }
  // The big presets build too (graph only; their weights are not written here).
  for (const name of ['paper-cifar', 'minred', 'simclr']) assert.ok(compileArtifacts(getPreset(name)).manifest.state.length > 0);
});

test('Trainer: steps, embeds with a dynamic batch, and keeps state finite', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-art-'));
  try {
    writeArtifacts(compileArtifacts(tinyPreset()), path.join(dir, 'tiny'));
    const tr = await Trainer.open(path.join(dir, 'tiny'), { threads: 1 });
    const n = tr.cropsShape.reduce((a, b) => a * b, 1);
    const r = await tr.step(new Float32Array(n).fill(0.5).map((v, i) => v + 0.4 * Math.sin(i)), 0.01);
    assert.ok(r.applied && Number.isFinite(r.loss));
    assert.equal(r.zbar.length, 4 * 8);
    assert.equal(tr.steps, 1);
    for (const count of [1, 3]) {
      const e = await tr.embed(new Float32Array(count * 3 * 8 * 8).fill(0.3), count);
      assert.equal(e.features.length, count * 8);
      assert.equal(e.embedding.length, count * 8);
    }
    // A non-finite batch is refused and leaves the state untouched.
    const before = new Map(tr.state);
    const bad = await tr.step(new Float32Array(n).fill(Number.NaN), 0.01);
    assert.equal(bad.applied, false);
    assert.equal(tr.steps, 1);
    for (const [k, v] of before) assert.equal(tr.state.get(k), v);
    await tr.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the ImageNet stem (7x7/2 conv + max-pool) trains: a step runs and moves the stem weights', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-art-'));
  try {
    const p = tinyPreset(['encoder={"arch":"resnet","stem":"imagenet","widths":[4,8],"blocks":[1,1]}', 'image.size=32']);
    writeArtifacts(compileArtifacts(p), path.join(dir, 'in'));
    const tr = await Trainer.open(path.join(dir, 'in'), { threads: 1 });
    const before = tr.state.get('params.encoder.conv1.weight')!;
    assert.deepEqual(tr.manifest.state.find((s) => s.name === 'params.encoder.conv1.weight')!.shape, [4, 3, 7, 7]);
    const n = tr.cropsShape.reduce((a, b) => a * b, 1);
    const r = await tr.step(Float32Array.from({ length: n }, (_, i) => (Math.sin(i * 0.37) + 1) / 2), 0.05);
    assert.ok(r.applied && Number.isFinite(r.loss));
    const after = tr.state.get('params.encoder.conv1.weight')!;
    assert.ok(after.some((v, i) => v !== before[i]));
    await tr.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('paper-imagenet: resnet18-imagenet at 64 px (224 with --set), compiled at a tiny width: manifest shapes, a step and an embed at its size', async () => {
  const full = getPreset('paper-imagenet');
  assert.deepEqual([full.encoder.arch === 'resnet' && full.encoder.stem, full.encoder.widths, full.image.size], ['imagenet', [64, 128, 256, 512], 64]);
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-art-'));
  try {
    // The full-width graph and its ResNet-18 parameter shapes, without writing its weights.
    const big = compileArtifacts(getPreset('paper-imagenet', ['crops=2', 'batch=2'])).manifest;
    assert.deepEqual(big.trainStep.crops.shape, [4, 3, 64, 64]);
    assert.deepEqual(big.state.find((s) => s.name === 'params.encoder.conv1.weight')!.shape, [64, 3, 7, 7]);
    assert.deepEqual(big.state.find((s) => s.name === 'params.encoder.layer4.1.conv2.weight')!.shape, [512, 512, 3, 3]);
    const at224 = compileArtifacts(getPreset('paper-imagenet', ['crops=2', 'batch=2', 'image.size=224', 'encoder.widths=[4,4,4,4]', 'projector=[{"out":8}]'])).manifest;
    assert.deepEqual(at224.trainStep.crops.shape, [4, 3, 224, 224]);
    assert.deepEqual(at224.embed.images.shape.slice(1), [3, 224, 224]);
    // Tiny widths: trains and embeds at 64 px, normalised with the ImageNet statistics it names.
    const p = getPreset('paper-imagenet', ['crops=2', 'batch=2', 'encoder.widths=[4,4,4,4]', 'projector=[{"out":16,"bn":true,"act":true},{"out":8}]']);
    writeArtifacts(compileArtifacts(p), path.join(dir, 'in64'));
    const tr = await Trainer.open(path.join(dir, 'in64'), { threads: 1 });
    assert.equal(tr.manifest.preset.image.size, 64);
    assert.deepEqual(tr.manifest.preset.image.mean, [0.485, 0.456, 0.406]);
    assert.deepEqual(tr.cropsShape, [4, 3, 64, 64]);
    assert.deepEqual(tr.manifest.embed.images.shape.slice(1), [3, 64, 64]);
    const n = tr.cropsShape.reduce((a, b) => a * b, 1);
    const r = await tr.step(Float32Array.from({ length: n }, (_, i) => (Math.sin(i * 0.37) + 1) / 2), 0.05);
    assert.ok(r.applied && Number.isFinite(r.loss));
    const e = await tr.embed(new Float32Array(3 * 64 * 64).fill(0.4), 1);
    assert.equal(e.features.length, 4);
    await tr.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an exported encoder is self-contained and gives the features and embeddings of embed.onnx with the same weights', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-art-'));
  try {
    writeArtifacts(compileArtifacts(tinyPreset()), path.join(dir, 'a'));
    const tr = await Trainer.open(path.join(dir, 'a'), { threads: 1 });
    const n = tr.cropsShape.reduce((a, b) => a * b, 1);
    await tr.step(Float32Array.from({ length: n }, (_, i) => (Math.cos(i * 0.11) + 1) / 2), 0.05);
    const probe = Float32Array.from({ length: 6 * 3 * 8 * 8 }, (_, i) => (Math.sin(i * 0.7) + 1) / 2);
    const info = await exportEncoder(tr, path.join(dir, 'models'), { framesSeen: 3, loss: 1, probe: probe.subarray(0, 3 * 8 * 8), probeCount: 1 });
    assert.equal(info.step, 1);
    const sess = await ort.InferenceSession.create(path.join(dir, 'models/latest.onnx'));
    assert.deepEqual([...sess.inputNames], ['images']);
    const out = await sess.run({ images: new ort.Tensor('float32', probe, [6, 3, 8, 8]) });
    const ref = await tr.embed(probe, 6);
    for (const k of ['features', 'embedding'] as const) {
      const got = out[k].data as Float32Array;
      const want = k === 'features' ? ref.features : ref.embedding;
      assert.equal(got.length, want.length);
      assert.ok(got.every((v, i) => Math.abs(v - want[i]) <= 1e-5), k);
    }
    const meta = JSON.parse(readFileSync(path.join(dir, 'models/latest.json'), 'utf8'));
    assert.equal(meta.step, 1);
    assert.equal(meta.framesSeen, 3);
    assert.equal(meta.artifact, tr.manifest.files['train_step.onnx']);
    await sess.release();
    await tr.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('Trainer: clear errors for missing artifacts, tampered files and unavailable EPs', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-art-'));
  try {
    await assert.rejects(Trainer.open(path.join(dir, 'nope')), /no artifacts at .*manifest.json is missing/);
    const art = path.join(dir, 'tiny');
    writeArtifacts(compileArtifacts(tinyPreset()), art);
    const good = path.join(dir, 'good');
    cpSync(art, good, { recursive: true });
    const f = path.join(art, 'init.safetensors');
    const bytes = readFileSync(f);
    bytes[bytes.length - 1] ^= 0xff;
    writeFileSync(f, bytes);
    await assert.rejects(Trainer.open(art), /init.safetensors: sha256 .* does not match the manifest/);
    // No CUDA provider library in this install: a clear error, or the explicit fallback.
    await assert.rejects(Trainer.open(good, { ep: 'cuda' }), /execution provider 'cuda'/);
    const tr = await Trainer.open(good, { ep: 'cuda', epFallback: 'cpu' });
    assert.equal(tr.ep, 'cpu');
    await tr.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('CLI: bad flags exit with code 2 and name the flag and value', () => {
  const cli = (...args: string[]) => spawnSync(process.execPath, [path.join(REPO, 'bin/ssocl.mjs'), ...args], { encoding: 'utf8' });
  let r = cli('artifacts', '--preset', 'nope', '--check');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--preset nope: unknown preset \(accepted: edge, /);
  r = cli('artifacts', '--set', 'crops', '--check');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--set crops: expected key=value/);
  r = cli('artifacts', '--set', 'bogus=1', '--check');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--set bogus=1: unknown field 'bogus'/);
  r = cli('demo', '--ep', 'tpu');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /ep/);
  r = cli('artifacts', '--check');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /up to date/);
});

test('a batch that cannot hold an arrival is refused by `artifacts` (nothing written) and by `run` (nothing trained)', () => {
  const cli = (...args: string[]) => spawnSync(process.execPath, [path.join(REPO, 'bin/ssocl.mjs'), ...args], { encoding: 'utf8' });
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-batch-'));
  try {
    const out = path.join(dir, 'a');
    let r = cli('artifacts', '--set', 'batch=8', '--out', out);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /--set batch=8: a step of 8 images cannot hold an arrival of 16 new images under mixed replay; add --set agent\.newPerArrival=8/);
    assert.equal(r.stderr.trim().split('\n').length, 1);
    assert.throws(() => readFileSync(path.join(out, 'manifest.json')), /ENOENT/);
    // Artifacts built before the check (or by hand) are refused by run before any step.
    writeArtifacts(compileArtifacts(tinyPreset(['batch=8'])), out);
    const state = path.join(dir, 'state');
    r = cli('run', '--dataset', 'demo', '--artifacts', out, '--state', state, '--models', path.join(dir, 'models'), '--max-seconds', '20');
    assert.equal(r.status, 2, r.stderr);
    // ours (the default method) composes batches by the novel rule: the arrival's novel images take fixed slots, all of them at most.
    assert.match(r.stderr, /a step of 8 images cannot hold an arrival of 16 new images under novel replay; rebuild them with --set agent\.newPerArrival=8/);
    assert.throws(() => readFileSync(path.join(dir, 'models', 'latest.onnx')), /ENOENT/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
