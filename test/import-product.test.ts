// Bring your own model through the product, as a user runs it: a torchvision-style classifier
// (test/helpers/byom.ts: the tiny checked-in fixture, BN kept, ImageNet-normalised input 'input',
// output 'logits', a Linear head) imported with `ssocl artifacts --from-onnx`, trained by `ssocl run
// --watch`, then every tool on what it published: models/latest.onnx keeps the source's interface;
// `ssocl embed` gives the tensor the classifier reads (normalised as the source expects); `classify`,
// `eval` (an image folder, and CIFAR resized to the model's 16 px), the health gate (at each export
// and on `models rollback`), and the dashboard's model view and encoder download. (The in-tab
// training on imported artifacts: test/browser-import.test.ts.)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { sha256 } from '../core/atomic.ts';
import { encodeCifar10 } from '../core/codecs/cifar.ts';
import { decodeModel } from '../core/onnx/decode.ts';
import { Rng } from '../core/rng.ts';
import { decodeFrame, encodePng, resizeChw } from '../agent/frames/decode.ts';
import { Encoder } from '../agent/infer/encoder.ts';
import { readModelView } from '../agent/serve/model-view.ts';
import { serve } from '../agent/serve/server.ts';
import { IMAGENET_MEAN, IMAGENET_STD } from '../tools/import/artifacts.ts';
import { demoImage } from './faults/helpers.ts';
import { BYOM_SIZE, BYOM_WIDTH, importedRun, ssocl, type ImportedRun } from './helpers/byom.ts';
import { REPO } from './helpers/paths.ts';

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-byom-product-'));
let run: ImportedRun;
/** Demo images at the model's own size as PNG files (decoding them is then exact). */
const queries = path.join(root, 'q16');
const QUERIES = 10;

before(async () => {
  run = await importedRun(root);
  fakeCifar(path.join(root, 'data'));
  mkdirSync(queries);
  for (let k = 0; k < QUERIES; k++) writeFileSync(path.join(queries, `q${k}.png`), await encodePng(await resizeChw(demoImage(100 + k), 32, BYOM_SIZE), BYOM_SIZE));
});
after(() => rmSync(root, { recursive: true, force: true }));

const latest = () => readFileSync(path.join(run.models, 'latest.onnx'));
const jsonLines = (s: string) => s.split('\n').filter(Boolean).map((l) => JSON.parse(l));

test('ssocl run on imported artifacts publishes models/latest.onnx with the source model\'s interface (names, dtypes, dynamic batch, opset, IR version, its metadata) and the learnt weights', () => {
  const src = decodeModel(readFileSync(run.source));
  const out = decodeModel(latest());
  const record = JSON.parse(readFileSync(path.join(run.models, 'latest.json'), 'utf8'));
  assert.ok(record.step > 0, `a trained export: ${JSON.stringify(record)}`);
  assert.deepEqual(out.graph.inputs, src.graph.inputs);
  assert.deepEqual(out.graph.outputs, src.graph.outputs);
  assert.deepEqual(out.graph.inputs[0].shape, ['batch', 3, BYOM_SIZE, BYOM_SIZE], 'the dynamic batch is the source\'s');
  assert.deepEqual([out.opsets, out.irVersion], [src.opsets, src.irVersion]);
  assert.equal(out.metadata['app.name'], 'tiny-byom', 'the source\'s own metadata is kept');
  assert.equal(out.metadata['ssocl.step'], String(record.step));
  // torch stored each fresh BN's running statistics as an Identity of an equal initializer (variance 1 =
  // the weight, mean 0 = the bias); trained, they differ, and the export holds them as initializers.
  const copies = src.graph.nodes.filter((n) => n.op === 'Identity' && src.graph.initializers.some((t) => t.name === n.inputs[0])).map((n) => n.outputs[0]);
  assert.deepEqual(copies.sort(), ['features.1.running_mean', 'features.1.running_var', 'features.4.running_mean', 'features.4.running_var']);
  assert.deepEqual(out.graph.initializers.map((t) => t.name).sort(), [...src.graph.initializers.map((t) => t.name), ...copies].sort(), 'the same weights, by name');
  const runVar = out.graph.initializers.find((t) => t.name === 'features.1.running_var')!.data as Float32Array;
  assert.ok(runVar.some((v) => Math.abs(v - 1) > 1e-3), 'the BN running variance was updated by training and exported');
  const weight = (m: typeof src, name: string) => Array.from(m.graph.initializers.find((t) => t.name === name)!.data as Float32Array);
  assert.notDeepEqual(weight(out, 'features.0.weight'), weight(src, 'features.0.weight'), 'the encoder\'s weights were trained');
  // The classifier after the feature has no part in the loss: exported as the source had it.
  assert.deepEqual(weight(out, 'fc.weight'), weight(src, 'fc.weight'));
});

test('ssocl embed on the imported export gives the feature the classifier reads: width 12, and fc(features) equals the model\'s own logits on the normalised image (1e-4)', async () => {
  const r = ssocl(['embed', queries, '--model', path.join(run.models, 'latest.onnx')]);
  assert.equal(r.status, 0, r.stderr);
  const recs = jsonLines(r.stdout);
  assert.equal(recs.length, QUERIES);
  assert.ok(recs.every((x) => x.features.length === BYOM_WIDTH), `feature widths: ${recs.map((x) => x.features.length)}`);
  // What an application that loaded the source runs: the file itself, its own input, ImageNet normalisation.
  const bytes = latest();
  const m = decodeModel(bytes);
  const W = m.graph.initializers.find((t) => t.name === 'fc.weight')!.data as Float32Array;
  const b = m.graph.initializers.find((t) => t.name === 'fc.bias')!.data as Float32Array;
  const sess = await ort.InferenceSession.create(bytes);
  const plane = BYOM_SIZE * BYOM_SIZE;
  let worst = 0;
  try {
    for (const rec of recs) {
      const u8 = await decodeFrame(readFileSync(path.join(queries, rec.key)), '.png', { size: BYOM_SIZE, fit: 'cover', maxPixels: 1e6 });
      const x = Float32Array.from(u8, (v, i) => (v / 255 - IMAGENET_MEAN[Math.floor(i / plane)]) / IMAGENET_STD[Math.floor(i / plane)]);
      const logits = (await sess.run({ input: new ort.Tensor('float32', x, [1, 3, BYOM_SIZE, BYOM_SIZE]) })).logits.data as Float32Array;
      for (let o = 0; o < 10; o++) {
        let z = b[o];
        for (let k = 0; k < BYOM_WIDTH; k++) z += W[o * BYOM_WIDTH + k] * rec.features[k];
        worst = Math.max(worst, Math.abs(z - logits[o]) / Math.max(1, Math.abs(logits[o])));
      }
    }
  } finally {
    await sess.release();
  }
  assert.ok(worst <= 1e-4, `fc(embed features) vs the model's logits: ${worst}`);
  // The view has features only (the projector is not exported): asking for the embedding says so.
  const e = ssocl(['embed', queries, '--model', path.join(run.models, 'latest.onnx'), '--output', 'embedding']);
  assert.notEqual(e.status, 0);
  assert.match(e.stderr, /no output 'embedding'/);
});

test('ssocl classify on the imported export: a support image as the query is its own nearest (k 1, similarity 1), labelled by its folder', () => {
  const support = path.join(root, 'support');
  for (const [label, ks] of [['left', [0, 1, 2, 3, 4]], ['right', [5, 6, 7, 8, 9]]] as const) {
    mkdirSync(path.join(support, label), { recursive: true });
    for (const k of ks) cpSync(path.join(queries, `q${k}.png`), path.join(support, label, `q${k}.png`));
  }
  const r = ssocl(['classify', queries, '--support', support, '--model', path.join(run.models, 'latest.onnx'), '-k', '1', '--novelty']);
  assert.equal(r.status, 0, r.stderr);
  const recs = new Map(jsonLines(r.stdout).map((x) => [x.key, x]));
  assert.equal(recs.size, QUERIES);
  for (const [key, label] of [['q1.png', 'left'], ['q6.png', 'right']]) {
    const x = recs.get(key);
    assert.equal(x.label, label, JSON.stringify(x));
    assert.ok(Math.abs(x.similarity - 1) < 1e-5 && x.novelty < 1e-5, JSON.stringify(x));
  }
});

/** A CIFAR-10 folder of two colour classes (reddish, bluish; 16 per train batch: 5 whole arrivals; 10 test each). */
function fakeCifar(dir: string): void {
  const d = path.join(dir, 'cifar-10-batches-bin');
  mkdirSync(d, { recursive: true });
  const rng = new Rng(7);
  const batch = (n: number) => {
    const images = new Uint8Array(n * 3072);
    const labels = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      labels[i] = i % 2;
      for (let c = 0; c < 3; c++) for (let p = 0; p < 1024; p++) images[i * 3072 + c * 1024 + p] = (c === (labels[i] ? 2 : 0) ? 150 : 40) + rng.int(80);
    }
    return encodeCifar10(images, labels);
  };
  for (let k = 1; k <= 5; k++) writeFileSync(path.join(d, `data_batch_${k}.bin`), batch(16));
  writeFileSync(path.join(d, 'test_batch.bin'), batch(20));
  writeFileSync(path.join(d, 'batches.meta.txt'), 'airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n');
}

test('ssocl eval on the imported export: CIFAR resized to its 16 px (it was refused as not 32x32), and an image folder', () => {
  const data = path.join(root, 'data');
  const r = ssocl(['eval', path.join(run.models, 'latest.onnx'), '--data-dir', data, '-k', '5']);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /memory 80 train images, 20 test queries/);
  const acc = Number(/\| class \| 5 \| ([\d.]+) \|/.exec(r.stdout)?.[1]);
  assert.ok(acc >= 90, `two colour classes, kNN accuracy ${acc}%:\n${r.stdout}`);
  const f = ssocl(['eval', path.join(run.models, 'latest.onnx'), '--folder', path.join(root, 'support'), '-k', '1']);
  assert.equal(f.status, 0, f.stderr);
  assert.match(f.stdout, /\| class \| 1 \| [\d.]+ \|/);
});

test('ssocl run --dataset cifar10 --eval-every on imported 16 px artifacts: the kNN evaluation reads CIFAR at the training size (it stopped the run: "CIFAR needs 32px artifacts")', () => {
  const data = path.join(root, 'data');
  const metrics = path.join(root, 'eval-metrics.jsonl');
  const r = ssocl(['run', '--dataset', 'cifar10', '--data-dir', data, '--artifacts', run.art, '--state', path.join(root, 'state-eval'), '--models', path.join(root, 'models-eval'), '--eval-every', '100', '--eval-memory', '80', '--metrics', metrics, '--health-frames', '16']);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /eval at 100% of the stream \(step \d+, 80 frames\): knn20 [\d.]+, knn50 [\d.]+/);
  const evals = jsonLines(readFileSync(metrics, 'utf8')).filter((x) => x.eval);
  assert.equal(evals.length, 1);
  assert.ok(evals[0].eval.knn20 >= 90, `two colour classes: ${JSON.stringify(evals[0])}`);
});

test('the health gate measures the imported encoder at each export, and `models rollback` measures a version on the health set before publishing it', () => {
  assert.match(run.runLog, /health at step \d+: rank [\d.]+, mean cos [\d.]+/);
  const record = JSON.parse(readFileSync(path.join(run.models, 'latest.json'), 'utf8'));
  assert.ok(record.health && Number.isFinite(record.health.rank) && record.health.rank >= 1 && record.health.frames > 0, JSON.stringify(record.health));
  const list = ssocl(['models', 'list', '--models', run.models, '--json']);
  assert.equal(list.status, 0, list.stderr);
  const versions = jsonLines(list.stdout);
  assert.ok(versions.length >= 2, `versions: ${list.stdout}`);
  const older = versions.find((v) => !v.current && v.status === 'published');
  const rb = ssocl(['models', 'rollback', String(older.step), '--models', run.models, '--state', run.state]);
  assert.equal(rb.status, 0, rb.stderr);
  assert.match(rb.stderr + rb.stdout, new RegExp(`health of ${older.file}: rank [\\d.]+`));
  const now = decodeModel(latest());
  assert.equal(now.metadata['ssocl.step'], String(older.step));
  assert.deepEqual(now.graph.inputs, decodeModel(readFileSync(run.source)).graph.inputs, 'a rollback publishes the source interface too');
});

test('the dashboard on an imported run: the model view reads the export as an encoder (16 px, 12 features), latest.onnx downloads as it is, ?view=encoder is what the page runs', async () => {
  const v = readModelView(run.models);
  assert.equal(v.size, BYOM_SIZE);
  assert.equal(v.featureDim, BYOM_WIDTH);
  const s = await serve({ dirs: { state: run.state, models: run.models, metrics: path.join(root, 'none.jsonl'), quarantine: path.join(run.state, 'quarantine') }, artifacts: run.art, host: '127.0.0.1', port: 0, timing: { pollMs: 100, bufferMs: 300, quarantineMs: 1000 } });
  try {
    const file = latest();
    const dl = await fetch(`${s.url}models/latest.onnx`);
    const body = Buffer.from(await dl.arrayBuffer());
    assert.ok(body.equals(file), 'the download is the file, the source\'s interface');
    assert.equal(dl.headers.get('x-sha256'), sha256(file));
    const vw = await fetch(`${s.url}models/latest.onnx?view=encoder`);
    const view = Buffer.from(await vw.arrayBuffer());
    assert.equal(vw.headers.get('x-sha256'), sha256(file), 'named by the file it was read from (latest.json\'s sha256)');
    assert.equal(vw.headers.get('x-body-sha256'), sha256(view));
    // As the page runs it: a plain session, input 'images', output 'features' (model.js applies no view of its own).
    const sess = await ort.InferenceSession.create(view);
    const ref = await Encoder.fromBytes('latest.onnx', file);
    try {
      const rng = new Rng(2);
      const x = Float32Array.from({ length: 2 * 3 * BYOM_SIZE * BYOM_SIZE }, () => rng.uniform());
      const got = (await sess.run({ images: new ort.Tensor('float32', x, [2, 3, BYOM_SIZE, BYOM_SIZE]) }, ['features'])).features;
      assert.deepEqual(got.dims, [2, BYOM_WIDTH]);
      assert.deepEqual(Array.from(got.data as Float32Array), Array.from(await ref.run(x, 2)), 'the page runs what `ssocl embed` runs');
    } finally {
      await sess.release();
      await ref.release();
    }
    // The training artifacts the page trains with include the source model (the in-tab download is the source's interface).
    const manifest = await (await fetch(`${s.url}artifacts/manifest.json`)).json();
    assert.ok('source.onnx' in manifest.files);
    const srcBytes = Buffer.from(await (await fetch(`${s.url}artifacts/source.onnx`)).arrayBuffer());
    assert.equal(sha256(srcBytes), manifest.files['source.onnx']);
  } finally {
    await s.close();
  }
});

test('a model exported with its batch fixed (torch.onnx.export without dynamic_axes) is refused at import, one line naming the input and the dynamic_axes to give, exit 2, nothing written (it trained, then failed at the first export check)', () => {
  const out = path.join(root, 'art-b1');
  const r = ssocl(['artifacts', '--from-onnx', path.join(REPO, 'test/fixtures/tiny-byom-b1.onnx'), '--out', out]);
  assert.equal(r.status, 2, r.stderr);
  assert.equal(r.stderr, `ssocl: --from-onnx ${path.join(REPO, 'test/fixtures/tiny-byom-b1.onnx')}: input 'input' is [1, 3, 16, 16], its batch fixed at 1; ssocl runs the model on batches of frames: export it with a dynamic batch (torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}}))\n`);
  assert.ok(!existsSync(out), 'nothing written');
});
