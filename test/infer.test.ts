// Edge inference: `ssocl embed` gives the trainer's own embeddings; hot reload under concurrent exports
// never mixes versions and records the version that computed each result; few-shot classification on
// hand-made embeddings with a known answer and on CIFAR-10 (10 labelled images per class).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { REPO, CIFAR10_DIR } from './helpers/paths.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { exportEncoder, initialEncoder } from '../agent/export/export.ts';
import { encodePng } from '../agent/frames/decode.ts';
import { Encoder } from '../agent/infer/encoder.ts';
import { FewShot, noveltyScores } from '../agent/infer/fewshot.ts';
import { decodeNpy } from '../core/codecs/npy.ts';
import { readSafetensors } from '../core/codecs/safetensors.ts';
import { readCifar10 } from '../core/codecs/cifar.ts';
import { Rng } from '../core/rng.ts';

const CLI = path.join(REPO, 'bin/ssocl.mjs');
const ART = path.join(REPO, 'training-artifacts/edge');
const FIXTURE = path.join(REPO, 'test/fixtures/edge-demo-step141.onnx');
const sha16 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex').slice(0, 16);
const readJsonl = (f: string) => readFileSync(f, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });

function randomFrames(n: number, seed: number): Uint8Array[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => {
    const x = new Uint8Array(3 * 32 * 32);
    // Smooth-ish content (not pure noise) so features differ meaningfully between frames.
    const a = rng.range(0, 255), b = rng.range(-6, 6), c = rng.range(-6, 6);
    for (let i = 0; i < x.length; i++) x[i] = Math.max(0, Math.min(255, Math.round(a + b * ((i >> 5) & 31) + c * (i & 31) + rng.range(-20, 20))));
    return x;
  });
}

const toFloat = (imgs: Uint8Array[]) => {
  const x = new Float32Array(imgs.length * 3072);
  imgs.forEach((im, j) => im.forEach((v, k) => (x[j * 3072 + k] = v / 255)));
  return x;
};

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

test('ssocl embed: the same features as the trainer\'s embed.onnx with the same weights, in every output format and batch size', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-embed-'));
  try {
    const tr = await Trainer.open(ART, { threads: 1 });
    // Weights that are not the initial ones (a scaled first conv), to be sure the export carries them.
    const w = [...tr.state.keys()].find((k) => k.startsWith('params.') && tr.state.get(k)!.length > 100)!;
    tr.state.set(w, tr.state.get(w)!.map((v) => v * 1.7));
    const frames = randomFrames(12, 1);
    mkdirSync(path.join(root, 'in/sub'), { recursive: true });
    for (let i = 0; i < frames.length; i++) writeFileSync(path.join(root, 'in', i < 6 ? '' : 'sub', `f${String(i).padStart(2, '0')}.png`), await encodePng(frames[i], 32));
    const models = path.join(root, 'models');
    mkdirSync(models);
    const probe = toFloat(frames.slice(0, 2));
    await exportEncoder(tr, models, { framesSeen: 0, loss: null, probe, probeCount: 2 });
    const ref = (await tr.embed(toFloat(frames), frames.length)).features;
    const d = ref.length / frames.length;
    await tr.close();
    const model = path.join(models, 'latest.onnx');
    const version = sha16(readFileSync(model));

    let r = cli('embed', path.join(root, 'in'), '--model', model, '--out', path.join(root, 'e.jsonl'), '--threads', '1');
    assert.equal(r.status, 0, r.stderr);
    const recs = readJsonl(path.join(root, 'e.jsonl'));
    // Name order, recursively: f00..f05 then sub/f06..f11.
    assert.deepEqual(recs.map((x) => x.key), frames.map((_, i) => (i < 6 ? '' : 'sub/') + `f${String(i).padStart(2, '0')}.png`));
    assert.deepEqual(recs.map((x) => x.id), [...frames.keys()]);
    for (const x of recs) assert.deepEqual(x.model, { sha256: version, step: 0 });
    const got = recs.flatMap((x) => x.features as number[]);
    assert.equal(got.length, ref.length);
    const diff = maxAbsDiff(got, ref);
    assert.ok(diff < 1e-5, `embed vs trainer: max |diff| ${diff}`);
    // Printed values read back as the very float32 ORT produced (no precision lost in the text).
    r = cli('embed', path.join(root, 'in'), '--model', model, '--out', path.join(root, 'b1.jsonl'), '--batch', '1', '--threads', '1');
    assert.equal(r.status, 0, r.stderr);
    const b1 = readJsonl(path.join(root, 'b1.jsonl')).flatMap((x) => x.features as number[]);
    assert.ok(maxAbsDiff(b1, got) < 1e-5, 'single-frame mode gives the batched features');

    r = cli('embed', path.join(root, 'in'), '--model', model, '--out', path.join(root, 'e.npy'), '--threads', '1');
    assert.equal(r.status, 0, r.stderr);
    const npy = decodeNpy(readFileSync(path.join(root, 'e.npy')));
    assert.deepEqual(npy.shape, [frames.length, d]);
    assert.ok(maxAbsDiff(npy.data, Float32Array.from(got)) === 0, 'npy rows equal the JSON-lines vectors exactly (as float32)');
    assert.deepEqual(readJsonl(path.join(root, 'e.records.jsonl')).map((x) => x.key), recs.map((x) => x.key));

    r = cli('embed', path.join(root, 'in'), '--model', model, '--out', path.join(root, 'e.safetensors'), '--output', 'embedding', '--threads', '1');
    assert.equal(r.status, 0, r.stderr);
    const st = readSafetensors(path.join(root, 'e.safetensors'));
    const emb = st.tensors.get('embedding')!;
    assert.equal(emb.shape[0], frames.length);
    // The projection output is L2-normalised.
    for (let i = 0; i < frames.length; i++) {
      let s = 0;
      for (let j = 0; j < emb.shape[1]; j++) s += (emb.data[i * emb.shape[1] + j] as number) ** 2;
      assert.ok(Math.abs(s - 1) < 1e-4);
    }
    assert.equal(JSON.parse(st.metadata.records).length, frames.length);

    // The WASM backend (onnxruntime-web) gives the same features.
    r = cli('embed', path.join(root, 'in'), '--model', model, '--out', path.join(root, 'wasm.jsonl'), '--ep', 'wasm', '--threads', '1');
    assert.equal(r.status, 0, r.stderr);
    assert.ok(maxAbsDiff(readJsonl(path.join(root, 'wasm.jsonl')).flatMap((x) => x.features as number[]), got) < 1e-5, 'wasm vs cpu');

    // Bad inputs: clear errors, non-zero exits; a corrupt frame among good ones is skipped and named.
    writeFileSync(path.join(root, 'in/zz-corrupt.png'), 'not a png');
    r = cli('embed', path.join(root, 'in'), '--model', model, '--threads', '1');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim().split('\n').length, frames.length);
    assert.match(r.stderr, /skipped .*zz-corrupt\.png/);
    r = cli('embed', path.join(root, 'in'), '--model', path.join(root, 'nope.onnx'));
    assert.equal(r.status, 2);
    assert.equal(r.stderr, `ssocl: --model ${path.join(root, 'nope.onnx')}: no such file; run ssocl run --watch DIR (or npm start) first to train one, or give --model FILE.onnx\n`);
    r = cli('embed', path.join(root, 'in'), '--model', path.join(root, 'e.npy'));
    assert.equal(r.status, 2);
    assert.match(r.stderr, /not a readable ONNX model|not an ssocl encoder/);
    r = cli('embed', '--watch', path.join(root, 'in'), '--model', model, '--out', path.join(root, 'w.npy'));
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--watch streams one record per frame/);
    // An EP that cannot start: a clear error, and the fallback only when asked for.
    r = cli('embed', path.join(root, 'in/f00.png'), '--model', model, '--ep', 'cuda');
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /execution provider 'cuda'/);
    r = cli('embed', path.join(root, 'in/f00.png'), '--model', model, '--ep', 'cuda', '--ep-fallback', 'cpu');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /falling back to --ep cpu/);
    assert.equal(r.stdout.trim().split('\n').length, 1);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('embed --watch: hot reload under repeated exports is atomic; every record carries the version that computed it', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-reload-'));
  try {
    const tr = await Trainer.open(ART, { threads: 1 });
    const models = path.join(root, 'models');
    const watch = path.join(root, 'watch');
    mkdirSync(models);
    mkdirSync(watch);
    const frames = randomFrames(90, 2);
    const probe = toFloat(frames.slice(0, 2));
    const versions = new Map<string, Uint8Array>();
    const w = [...tr.state.keys()].find((k) => k.startsWith('params.') && tr.state.get(k)!.length > 100)!;
    const w0 = tr.state.get(w)!;
    const exportVersion = async (i: number) => {
      tr.state.set(w, w0.map((v) => v * (1 + 0.15 * i)));
      tr.steps = i;
      await exportEncoder(tr, models, { framesSeen: i, loss: null, probe, probeCount: 2 });
      const b = readFileSync(path.join(models, 'latest.onnx'));
      versions.set(sha16(b), b);
    };
    await exportVersion(0);
    const out = path.join(root, 'w.jsonl');
    const child = spawn(process.execPath, [CLI, 'embed', '--watch', watch, '--model', path.join(models, 'latest.onnx'), '--out', out, '--batch', '4', '--stable-ms', '40', '--reload-ms', '5', '--exit-when-idle', '3', '--threads', '1'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (c) => (stderr += c));
    const done = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    await new Promise((r) => setTimeout(r, 1500));
    let garbage = '';
    for (let i = 0; i < frames.length; i += 5) {
      for (let j = i; j < Math.min(i + 5, frames.length); j++) writeFileSync(path.join(watch, `f${String(j).padStart(3, '0')}.png`), await encodePng(frames[j], 32));
      if (i === 45) {
        // A writer that does not rename into place: a truncated model appears for a while.
        const bytes = readFileSync(path.join(models, 'latest.onnx'));
        writeFileSync(path.join(models, 'latest.onnx'), bytes.subarray(0, bytes.length >> 1));
        garbage = sha16(bytes.subarray(0, bytes.length >> 1));
        await new Promise((r) => setTimeout(r, 150));
      }
      await exportVersion(i / 5 + 1);
      await new Promise((r) => setTimeout(r, 60));
    }
    const code = await done;
    assert.equal(code, 0, stderr);
    await tr.close();
    const recs = readJsonl(out);
    // Each frame exactly once.
    assert.deepEqual(recs.map((x) => x.key).sort(), frames.map((_, j) => `f${String(j).padStart(3, '0')}.png`));
    const used = new Set(recs.map((x) => x.model.sha256 as string));
    assert.ok(used.size >= 3, `the model was reloaded while frames came in (${used.size} versions used)`);
    assert.ok(!used.has(garbage), 'no record from the half-written model');
    assert.match(stderr, /could not be loaded, keeping/);
    // Recompute each record with the model version it names: identical.
    const encs = new Map<string, Encoder>();
    let worst = 0;
    for (const x of recs) {
      const bytes = versions.get(x.model.sha256);
      assert.ok(bytes, `record ${x.key} names version ${x.model.sha256}, which was never exported`);
      if (!encs.has(x.model.sha256)) encs.set(x.model.sha256, await Encoder.fromBytes('v', bytes, { threads: 1 }));
      const j = Number(/f(\d+)\.png/.exec(x.key)![1]);
      const v = await encs.get(x.model.sha256)!.runU8(frames[j], 1);
      worst = Math.max(worst, maxAbsDiff(x.features, v));
    }
    for (const e of encs.values()) await e.release();
    assert.ok(worst < 1e-5, `every record equals its version's features (max |diff| ${worst})`);
    // A restart takes nothing twice: the ledger beside the output knows every frame.
    const again = cli('embed', '--watch', watch, '--model', path.join(models, 'latest.onnx'), '--out', out, '--exit-when-idle', '1', '--threads', '1');
    assert.equal(again.status, 0, again.stderr);
    assert.equal(readJsonl(out).length, frames.length);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('few-shot: weighted cosine votes, scores and novelty on hand-made embeddings with a known answer', async () => {
  // Support: label a near +x, b near +y, c near +z (d = 4); each with 2 examples.
  const sup = Float32Array.from([1, 0.1, 0, 0, 1, -0.1, 0, 0, 0, 1, 0.1, 0, 0.1, 1, 0, 0, 0, 0, 1, 0, 0, 0.1, 1, 0]);
  const fs = new FewShot(sup, [0, 0, 1, 1, 2, 2], ['a', 'b', 'c'], 4, 3, 0.5);
  const q = Float32Array.from([2, 0, 0, 0, 0.1, 3, 0, 0, 0, 0, 5, 0.2, 1, 1, 0, 0]);
  const p = await fs.classify(q);
  assert.deepEqual(p.slice(0, 3).map((x) => x.label), ['a', 'b', 'c']);
  // Score computed independently: the 3 nearest by cosine, weights exp(cos / T), share of the winner.
  const n = (v: number[]) => v.map((x) => x / Math.hypot(...v));
  const rows = [0, 1, 2, 3, 4, 5].map((i) => n([...sup.subarray(i * 4, i * 4 + 4)]));
  const lab = [0, 0, 1, 1, 2, 2];
  for (let qi = 0; qi < 4; qi++) {
    const qv = n([...q.subarray(qi * 4, qi * 4 + 4)]);
    const sims = rows.map((r, i) => ({ s: r.reduce((a, x, k) => a + x * qv[k], 0), l: lab[i] })).sort((x, y) => y.s - x.s).slice(0, 3);
    const votes = [0, 0, 0];
    for (const x of sims) votes[x.l] += Math.exp(x.s / 0.5);
    const best = votes.indexOf(Math.max(...votes));
    assert.equal(p[qi].label, ['a', 'b', 'c'][best]);
    assert.ok(Math.abs(p[qi].score - votes[best] / votes.reduce((a, b) => a + b, 0)) < 1e-6);
    assert.ok(Math.abs(p[qi].similarity - sims[0].s) < 1e-6);
  }
  // The query between a and b is the least certain.
  assert.ok(p[3].score < Math.min(p[0].score, p[1].score, p[2].score));
  const nq = [[1, 0.1, 0, 0], [0, 0, 0, 1], [-1, -1, -1, 0]];
  const nov = await noveltyScores(Float32Array.from(nq.flat()), sup, 4);
  assert.ok(Math.abs(nov[0]) < 1e-6, 'a support embedding itself is not novel');
  assert.ok(Math.abs(nov[1] - 1) < 1e-6, 'orthogonal to everything: novelty 1');
  assert.ok(nov[2] > 1.5, 'opposite to everything: novelty above 1');
  nq.forEach((v, i) => assert.ok(Math.abs(nov[i] - (1 - Math.max(...rows.map((r) => r.reduce((a, x, k) => a + x * n(v)[k], 0))))) < 1e-6));
});

test('few-shot on CIFAR-10 with 10 labelled images per class: a trained encoder beats its random init', { skip: !existsSync(path.join(CIFAR10_DIR, 'test_batch.bin')) && `no CIFAR-10 at ${CIFAR10_DIR}` }, async () => {
  const train = readCifar10(CIFAR10_DIR, 'train');
  const test = readCifar10(CIFAR10_DIR, 'test');
  const rng = new Rng(7);
  const byClass: number[][] = Array.from({ length: 10 }, () => []);
  for (let i = 0; i < train.count; i++) byClass[train.labels[i]].push(i);
  const idx = byClass.flatMap((c) => Array.from({ length: 10 }, () => c[rng.int(c.length)]));
  const sup = new Uint8Array(idx.length * 3072);
  idx.forEach((i, j) => sup.set(train.images.subarray(i * 3072, (i + 1) * 3072), j * 3072));
  const acc = async (enc: Encoder) => {
    const fs = new FewShot(await enc.runU8(sup, idx.length), idx.map((i) => train.labels[i]), train.classes, enc.dim('features'));
    const p = await fs.classify(await enc.runU8(test.images, test.count));
    let ok = 0;
    p.forEach((x, i) => (ok += fs.labels.indexOf(x.label) === test.labels[i] ? 1 : 0));
    await enc.release();
    return (100 * ok) / test.count;
  };
  const trained = await acc(await Encoder.open(FIXTURE, { threads: 2 }));
  const init = await acc(await Encoder.fromBytes('init', initialEncoder(ART), { threads: 2 }));
  console.log(`10-shot CIFAR-10 (10,000 test images, k 20, T 0.07): trained (demo, step 141) ${trained.toFixed(2)}%, random init ${init.toFixed(2)}%, chance 10%`);
  assert.ok(trained > 10 && trained > init, `trained ${trained}% vs init ${init}%`);

  // The command on a few of those frames agrees with the library, and --reject-below / --novelty work.
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-classify-'));
  try {
    const names = train.classes;
    for (let j = 0; j < idx.length; j++) {
      const dir = path.join(root, 'support', names[train.labels[idx[j]]]);
      mkdirSync(dir, { recursive: true });
      writeFileSync(path.join(dir, `${j}.png`), await encodePng(sup.subarray(j * 3072, (j + 1) * 3072), 32));
    }
    mkdirSync(path.join(root, 'q'));
    for (let i = 0; i < 40; i++) writeFileSync(path.join(root, 'q', `${String(i).padStart(2, '0')}.png`), await encodePng(test.images.subarray(i * 3072, (i + 1) * 3072), 32));
    let r = cli('classify', path.join(root, 'q'), '--support', path.join(root, 'support'), '--model', FIXTURE, '--novelty', '--threads', '1');
    assert.equal(r.status, 0, r.stderr);
    const recs = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(recs.length, 40);
    const enc = await Encoder.open(FIXTURE, { threads: 1 });
    const fs = new FewShot(await enc.runU8(sup, idx.length), idx.map((i) => train.labels[i]), names, enc.dim('features'));
    const lib = await fs.classify(await enc.runU8(test.images.subarray(0, 40 * 3072), 40));
    await enc.release();
    recs.forEach((x, i) => {
      assert.equal(x.label, lib[i].label);
      assert.ok(Math.abs(x.score - lib[i].score) < 1e-5 && x.novelty >= 0 && Math.abs(x.novelty - (1 - lib[i].similarity)) < 1e-5);
    });
    r = cli('classify', path.join(root, 'q'), '--support', path.join(root, 'support'), '--model', FIXTURE, '--reject-below', '0.99', '--threads', '1');
    const rej = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.ok(rej.every((x, i) => (recs[i].score < 0.99 ? x.label === 'unknown' && x.nearestLabel === recs[i].label : x.label === recs[i].label)));
    r = cli('classify', path.join(root, 'q'), '--support', path.join(root, 'q'), '--model', FIXTURE);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /no labelled images found/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('run --emit-embeddings: every ingested frame once, from the weights being trained (equal to the exported model at the end)', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-emit-'));
  try {
    const out = path.join(root, 'emb.jsonl');
    const r = cli('run', '--dataset', 'demo', '--artifacts', ART, '--state', path.join(root, 'st'), '--models', path.join(root, 'models'), '--threads', '1', '--max-arrivals', '4', '--emit-embeddings', out);
    assert.equal(r.status, 0, r.stderr);
    const recs = readJsonl(out);
    assert.equal(recs.length, 4 * 16);
    assert.equal(new Set(recs.map((x) => x.key)).size, recs.length);
    // The last arrival's frames were embedded after its updates: the weights that were then exported.
    const steps = Number(JSON.parse(readFileSync(path.join(root, 'models/latest.json'), 'utf8')).step);
    const last = recs.filter((x) => x.model.step === steps);
    assert.equal(last.length, 16);
    const { demoStream } = await import('../agent/commands/demo.ts');
    const d = demoStream();
    const enc = await Encoder.open(path.join(root, 'models/latest.onnx'), { threads: 1 });
    const imgs = last.map((x) => {
      const i = Number(/\d+/.exec(x.key)![0]);
      return d.images.subarray(i * 3072, (i + 1) * 3072);
    });
    const v = await enc.runU8(Uint8Array.from(imgs.flatMap((a) => [...a])), imgs.length);
    await enc.release();
    const diff = maxAbsDiff(last.flatMap((x) => x.features as number[]), v);
    assert.ok(diff < 1e-5, `emitted vs exported: max |diff| ${diff}`);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('classify --novelty-buffer: a frame that is in the agent\'s buffer is not novel; an unseen one is more novel', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-novel-'));
  try {
    const st = path.join(root, 'st');
    const models = path.join(root, 'models');
    let r = cli('run', '--dataset', 'demo', '--artifacts', ART, '--state', st, '--models', models, '--threads', '1', '--max-arrivals', '2');
    assert.equal(r.status, 0, r.stderr);
    const { latestCheckpoint } = await import('../agent/trainer/checkpoint.ts');
    const ck = latestCheckpoint(path.join(st, 'checkpoints'))!;
    const { demoStream } = await import('../agent/commands/demo.ts');
    const d = demoStream();
    mkdirSync(path.join(root, 'q'));
    // One image from the buffer, one the agent never saw (far down the demo order).
    writeFileSync(path.join(root, 'q', 'a-seen.png'), await encodePng(ck.data.images[0], 32));
    const j = d.order[1999];
    writeFileSync(path.join(root, 'q', 'b-unseen.png'), await encodePng(d.images.subarray(j * 3072, (j + 1) * 3072), 32));
    // Support: two labels of unrelated synthetic frames.
    const frames = randomFrames(4, 9);
    for (const [k, lab] of ['x', 'x', 'y', 'y'].entries()) {
      mkdirSync(path.join(root, 'support', lab), { recursive: true });
      writeFileSync(path.join(root, 'support', lab, `${k}.png`), await encodePng(frames[k], 32));
    }
    r = cli('classify', path.join(root, 'q'), '--support', path.join(root, 'support'), '--model', path.join(models, 'latest.onnx'), '--novelty-buffer', st, '--threads', '1');
    assert.equal(r.status, 0, r.stderr);
    const recs = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.match(r.stderr, new RegExp(`novelty also against ${ck.data.images.length} buffer images`));
    assert.ok(Math.abs(recs[0].novelty) < 1e-5, `buffer image: novelty ${recs[0].novelty}`);
    assert.ok(recs[1].novelty > recs[0].novelty + 1e-3, `unseen image: novelty ${recs[1].novelty}`);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
