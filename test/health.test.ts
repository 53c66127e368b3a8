// The health gate before every export (issue #16): the label-free figures against values computed here
// independently, the gate's decisions, a collapsed encoder refused with latest.onnx untouched, a healthy
// run publishing every export, and `ssocl models list|rollback` (a rollback under a running
// `embed --watch` swaps the model whole).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { Rng } from '../core/rng.ts';
import { alignment, effectiveRank, meanPairwiseCosine, singularValues, symmetricEigenvalues } from '../agent/health/metrics.ts';
import { DEFAULT_HEALTH, HealthGate, judge } from '../agent/health/gate.ts';
import { HealthSet } from '../agent/health/set.ts';
import type { HealthFigures } from '../agent/health/measure.ts';
import { reconcileLatest } from '../agent/export/export.ts';
import { Publisher } from '../agent/pipeline/publish.ts';
import { MetricsLog } from '../agent/pipeline/observe.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { Learner, defaultLearnerConfig } from '../agent/trainer/learner.ts';
import { encodePng } from '../agent/frames/decode.ts';
import type { Frame, Source } from '../agent/sources/source.ts';
import { CLI, demoImage, tinyArtifacts, waitFor } from './faults/helpers.ts';

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });

/** A random orthogonal k x k matrix (Gram-Schmidt on Gaussian columns), row-major. */
function orthogonal(k: number, rng: Rng): Float64Array {
  const q = new Float64Array(k * k);
  for (let c = 0; c < k; c++) {
    const v = Array.from({ length: k }, () => rng.normal());
    for (let p = 0; p < c; p++) {
      let dot = 0;
      for (let r = 0; r < k; r++) dot += v[r] * q[r * k + p];
      for (let r = 0; r < k; r++) v[r] -= dot * q[r * k + p];
    }
    const norm = Math.hypot(...v);
    for (let r = 0; r < k; r++) q[r * k + c] = v[r] / norm;
  }
  return q;
}

/** U[:, :m] diag(s) V^T for random orthogonal U (n x n) and V (d x d), m = s.length <= min(n, d). */
function withSingularValues(n: number, d: number, s: number[], rng: Rng): Float64Array {
  const u = orthogonal(n, rng);
  const v = orthogonal(d, rng);
  const x = new Float64Array(n * d);
  for (let r = 0; r < n; r++) for (let c = 0; c < d; c++) for (let k = 0; k < s.length; k++) x[r * d + c] += u[r * n + k] * s[k] * v[c * d + k];
  return x;
}

const rankMeOf = (s: number[]) => {
  const t = s.reduce((a, b) => a + b, 0);
  return Math.exp(-s.filter((x) => x > 0).reduce((h, x) => h + (x / t) * Math.log(x / t), 0));
};

test('metrics: Jacobi eigenvalues, singular values and RankMe of matrices built with known singular values; mean cosine and alignment against pairwise loops', () => {
  const rng = new Rng(5);
  // A symmetric matrix Q diag(l) Q^T with known eigenvalues (some negative, some repeated).
  const l = [7, 3, 3, 0.5, 0, -2];
  const q = orthogonal(6, rng);
  const a = new Float64Array(36);
  for (let i = 0; i < 6; i++) for (let j = 0; j < 6; j++) for (let k = 0; k < 6; k++) a[i * 6 + j] += q[i * 6 + k] * l[k] * q[j * 6 + k];
  const ev = [...symmetricEigenvalues(a, 6)];
  [...l].sort((x, y) => y - x).forEach((v, i) => assert.ok(Math.abs(ev[i] - v) < 1e-9, `eigenvalue ${i}: ${ev[i]} vs ${v}`));

  // Tall (the d x d Gram matrix) and wide (n x n) matrices give the same singular values back.
  for (const [n, d, s] of [
    [40, 6, [5, 3, 2, 1, 0.5]],
    [5, 12, [4, 4, 1, 0.25]],
    [64, 32, [1]],
  ] as [number, number, number[]][]) {
    const x = withSingularValues(n, d, s, rng);
    const sv = [...singularValues(x, n, d)];
    assert.equal(sv.length, Math.min(n, d));
    const want = [...s, ...Array(Math.min(n, d) - s.length).fill(0)];
    want.forEach((v, i) => assert.ok(Math.abs(sv[i] - v) < 1e-7, `${n}x${d}: singular value ${i} is ${sv[i]}, built with ${v}`));
    assert.ok(Math.abs(effectiveRank(sv) - rankMeOf(s)) < 1e-6, `${n}x${d}: RankMe ${effectiveRank(sv)} vs ${rankMeOf(s)}`);
  }
  assert.ok(Math.abs(effectiveRank([2, 2, 2, 2]) - 4) < 1e-12, 'k equal singular values: rank k');
  assert.equal(effectiveRank([3, 0, 0]), 1, 'rank one: RankMe 1');

  // Mean pairwise cosine and alignment against plain loops over pairs.
  const n = 23;
  const d = 9;
  const x = Float64Array.from({ length: n * d }, () => rng.normal() + 0.3);
  const y = Float64Array.from({ length: n * d }, (_, i) => x[i] + 0.5 * rng.normal());
  const cos = (p: Float64Array, i: number, r: Float64Array, j: number) => {
    let ab = 0;
    let aa = 0;
    let bb = 0;
    for (let k = 0; k < d; k++) {
      ab += p[i * d + k] * r[j * d + k];
      aa += p[i * d + k] ** 2;
      bb += r[j * d + k] ** 2;
    }
    return ab / Math.sqrt(aa * bb);
  };
  let pairs = 0;
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) if (i !== j) pairs += cos(x, i, x, j);
  assert.ok(Math.abs(meanPairwiseCosine(x, n, d) - pairs / (n * (n - 1))) < 1e-12);
  let al = 0;
  for (let i = 0; i < n; i++) al += cos(x, i, y, i);
  assert.ok(Math.abs(alignment(x, y, n, d) - al / n) < 1e-12);
  // Every row alike: cosine 1, rank 1 (the collapse the gate looks for).
  const same = Float64Array.from({ length: n * d }, (_, i) => 1 + (i % d));
  assert.ok(Math.abs(meanPairwiseCosine(same, n, d) - 1) < 1e-12);
  assert.ok(Math.abs(effectiveRank(singularValues(same, n, d)) - 1) < 1e-6);
});

const fig = (over: Partial<HealthFigures>): HealthFigures => ({ frames: 256, set: 'a', rank: 20, meanCos: 0.85, alignment: 0.9, embeddingRank: 60, ms: 0, ...over });

test('judge: collapse floors always, drops against the published model only on the same frames, probe only on the same probe', () => {
  const o = DEFAULT_HEALTH;
  assert.deepEqual(judge(fig({}), null, o), []);
  assert.match(judge(fig({ rank: 1 }), null, o).join(), /effective rank 1\.00 below the floor/);
  assert.match(judge(fig({ meanCos: 0.999 }), null, o).join(), /mean cosine similarity 0\.999 above the ceiling/);
  assert.match(judge(fig({ rank: NaN }), null, o).join(), /non-finite/);
  const ref = fig({ rank: 30, meanCos: 0.7, probe: { knn: 0.5, k: 20, queries: 10, set: 'p' } });
  assert.match(judge(fig({ rank: 12 }), ref, o).join(), /effective rank fell from 30\.00 to 12\.00/);
  assert.deepEqual(judge(fig({ rank: 16, meanCos: 0.79 }), ref, o), [], 'within the margins');
  assert.deepEqual(judge(fig({ meanCos: 0.85 }), ref, o), [], 'mean cosine rise: not checked by default');
  assert.match(judge(fig({ meanCos: 0.85 }), ref, { ...o, maxCosRise: 0.1 }).join(), /mean cosine similarity rose from 0\.700 to 0\.850/);
  assert.deepEqual(judge(fig({ rank: 12, set: 'b' }), ref, o), [], 'another health set: no relative check');
  assert.deepEqual(judge(fig({ rank: 2, frames: 8 }), ref, o), [], 'too few frames for a relative check');
  assert.match(judge(fig({ probe: { knn: 0.3, k: 20, queries: 10, set: 'p' } }), ref, o).join(), /probe kNN accuracy fell from 50\.0% to 30\.0%/);
  assert.deepEqual(judge(fig({ set: 'b', probe: { knn: 0.3, k: 20, queries: 10, set: 'q' } }), ref, o), [], 'another probe');
  // --health-max-rank-drop other than the default 0.5 (where a drop of d and a floor of d x the rank agree):
  // 0.2 refuses a fall from 30 to 21 (below 24), 0.8 lets a fall from 30 to 9 pass (above 6).
  assert.match(judge(fig({ rank: 21 }), ref, { ...o, maxRankDrop: 0.2 }).join(), /effective rank fell from 30\.00 to 21\.00, more than 20\.0%/);
  assert.deepEqual(judge(fig({ rank: 25 }), ref, { ...o, maxRankDrop: 0.2 }), [], 'a 17% drop within a 20% margin');
  assert.deepEqual(judge(fig({ rank: 9 }), ref, { ...o, maxRankDrop: 0.8 }), [], 'a 70% drop within an 80% margin');
  assert.match(judge(fig({ rank: 5 }), ref, { ...o, maxRankDrop: 0.8 }).join(), /fell from 30\.00 to 5\.00, more than 80\.0%/);
});

test('health set: a reservoir of the stream (uniform over positions), saved atomically and loaded back with its reference; --fresh starts over', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-health-set-'));
  try {
    const file = path.join(dir, 'health-set.safetensors');
    const s = new HealthSet(file, 1, 200);
    // Frames of one pixel whose bytes say their position in the stream (mod 256 in each byte).
    const frame = (i: number) => Uint8Array.of(i & 255, (i >> 8) & 255, 0);
    for (let i = 0; i < 20000; i++) s.offer(frame(i));
    s.renew();
    const { images, count, digest } = s.frames;
    assert.equal(count, 200);
    let mean = 0;
    for (let k = 0; k < count; k++) mean += images[3 * k] + 256 * images[3 * k + 1];
    mean /= count;
    // Uniform over 0..19999: mean 10000, standard error 5774 / sqrt(200) = 408.
    assert.ok(Math.abs(mean - 10000) < 1500, `reservoir mean position ${mean}`);
    s.reference = { model: 'ab', step: 3, figures: fig({ set: digest }) };
    s.save();
    const back = HealthSet.load(file, 1, 200, false, () => {});
    assert.equal(back.frames.digest, digest);
    assert.equal(back.offered, 20000);
    assert.deepEqual(back.reference, s.reference);
    assert.equal(back.stale, false);
    assert.equal(HealthSet.load(file, 1, 200, true, () => {}).frames.count, 0, '--fresh');
    writeFileSync(file, 'not safetensors');
    const said: string[] = [];
    assert.equal(HealthSet.load(file, 1, 200, false, (l) => said.push(l)).frames.count, 0);
    assert.match(said.join(), /could not be used/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A demo frame at `size` px (2x2 means of the 32 px image per halving). */
function frameAt(k: number, size: number): Uint8Array {
  let img = demoImage(k);
  for (let s = 32; s > size; s /= 2) {
    const h = s / 2;
    const out = new Uint8Array(3 * h * h);
    for (let c = 0; c < 3; c++)
      for (let y = 0; y < h; y++)
        for (let x = 0; x < h; x++) {
          const at = (yy: number, xx: number) => img[c * s * s + yy * s + xx];
          out[c * h * h + y * h + x] = Math.round((at(2 * y, 2 * x) + at(2 * y + 1, 2 * x) + at(2 * y, 2 * x + 1) + at(2 * y + 1, 2 * x + 1)) / 4);
        }
    img = out;
  }
  return img;
}

/** The agent's parts around the Publisher, in process: a learner on tiny artifacts, its gate and a source stand-in. */
async function tinyAgent(root: string, options: Partial<typeof DEFAULT_HEALTH> = {}) {
  const art = tinyArtifacts(path.join(root, 'art'));
  const trainer = await Trainer.open(art, { threads: 1 });
  const learner = new Learner(trainer, defaultLearnerConfig(trainer));
  const source = { arrivalDone: () => {} } as unknown as Source;
  const log: string[] = [];
  const say = (l: string) => log.push(l);
  const gate = await HealthGate.open({ stateDir: path.join(root, 'state'), fresh: false, fit: 'cover', maxPixels: 1e7, options }, learner, source, say);
  const metricsFile = path.join(root, 'm.jsonl');
  const m = trainer.manifest;
  const models = path.join(root, 'models');
  mkdirSync(models, { recursive: true });
  const publisher = new Publisher(models, false, m.files[m.trainStep.file], learner, say, gate, new MetricsLog(metricsFile, say));
  const size = m.preset.image.size;
  let k = 0;
  const arrive = async (arrivals: number) => {
    for (let a = 0; a < arrivals; a++) {
      const frames: Frame[] = Array.from({ length: m.preset.agent.newPerArrival }, () => ({ key: `f${k}`, image: frameAt(k++, size) }));
      await learner.arrive(frames);
      source.arrivalDone(frames, true);
    }
  };
  const records = () => (existsSync(metricsFile) ? readFileSync(metricsFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)) : []).filter((r) => r.health);
  return { trainer, learner, publisher, gate, models, log, arrive, records };
}

test('a collapsed encoder (stem zeroed: every frame embeds alike) is refused: kept as a rejected version, latest.onnx unchanged and loadable, the reason logged and in the metrics; training goes on', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-health-collapse-'));
  try {
    const t = await tinyAgent(root);
    await t.arrive(10);
    assert.equal(await t.publisher.publish(40, 1), true);
    const latest = path.join(t.models, 'latest.onnx');
    const before = readFileSync(latest);
    const jsonBefore = readFileSync(path.join(t.models, 'latest.json'), 'utf8');
    const good = t.trainer.steps;
    // The collapse: the first convolution's weights zeroed, so the rest of the network sees the same input for every image.
    const stem = t.trainer.manifest.state.find((s) => s.role === 'param' && s.shape.length === 4)!;
    t.trainer.state.get(stem.name)!.fill(0);
    await t.arrive(2);
    t.trainer.state.get(stem.name)!.fill(0);
    const step = t.trainer.steps;
    assert.ok(step > good);
    assert.equal(await t.publisher.publish(48, 1), true, 'a refused export counts as done (not retried at every arrival)');
    assert.ok(readFileSync(latest).equals(before), 'latest.onnx replaced by the collapsed encoder');
    assert.equal(readFileSync(path.join(t.models, 'latest.json'), 'utf8'), jsonBefore);
    const s = await ort.InferenceSession.create(latest);
    const out = await s.run({ images: new ort.Tensor('float32', new Float32Array(3 * 16 * 16).fill(0.5), [1, 3, 16, 16]) });
    assert.ok([...(out.features.data as Float32Array)].every(Number.isFinite));
    await s.release();
    const name = `encoder-${String(step).padStart(9, '0')}`;
    const side = JSON.parse(readFileSync(path.join(t.models, `${name}.json`), 'utf8'));
    assert.equal(side.status, 'rejected');
    assert.match(side.reason, /effective rank|mean cosine/);
    assert.ok(existsSync(path.join(t.models, `${name}.onnx`)));
    assert.ok(t.log.some((l) => /not published: the encoder at step \d+ failed the health gate: .*(effective rank|mean cosine)/.test(l) && /latest\.onnx \(step \d+\) stays/.test(l)), t.log.join('\n'));
    const recs = t.records();
    assert.deepEqual(recs.map((r) => r.health.verdict), ['published', 'rejected']);
    assert.ok(recs[1].health.reasons.length && recs[1].health.rank < 1.5, JSON.stringify(recs[1]));
    assert.equal(t.publisher.last!.step, good, 'the summary still names the published encoder');

    // models list shows both, the current one marked; rollback refuses the rejected one without --force.
    const list = cli('models', 'list', '--models', t.models);
    assert.equal(list.status, 0, list.stderr);
    assert.match(list.stdout, new RegExp(`^\\*\\s+${good}\\s.*published`, 'm'));
    assert.match(list.stdout, new RegExp(`^\\s+${step}\\s.*rejected.*${name}\\.onnx`, 'm'));
    const refused = cli('models', 'rollback', String(step), '--models', t.models);
    assert.equal(refused.status, 2, refused.stderr);
    assert.match(refused.stderr, /refused by the health gate.*--force/);
    assert.ok(readFileSync(latest).equals(before));
    await t.trainer.close();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('--probe ROOT: kNN accuracy of a labelled folder measured beside the label-free figures, through the trainer\'s embed session', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-health-probe-'));
  try {
    const probe = path.join(root, 'probe');
    for (const [c, from] of [['a', 0], ['b', 100]] as const) {
      mkdirSync(path.join(probe, c), { recursive: true });
      for (let i = 0; i < 6; i++) writeFileSync(path.join(probe, c, `${i}.png`), await encodePng(demoImage(from + i), 32));
    }
    const t = await tinyAgent(root, { probe });
    await t.arrive(6);
    await t.publisher.publish(24, 1);
    const [r] = t.records();
    // Two queries: a fraction of them right (0, 0.5 or 1), as --probe-max-drop and the displays read it.
    assert.ok(r.health.probe && r.health.probe.queries === 2 && [0, 0.5, 1].includes(r.health.probe.knn), JSON.stringify(r.health));
    const latest = JSON.parse(readFileSync(path.join(t.models, 'latest.json'), 'utf8'));
    assert.equal(latest.health.probe.knn, r.health.probe.knn);
    await t.trainer.close();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a healthy run publishes every export (health in latest.json, each version and the metrics); models list; rollback under a running embed --watch swaps the model whole', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-health-run-'));
  try {
    const art = tinyArtifacts(path.join(root, 'art'));
    const models = path.join(root, 'models');
    const metrics = path.join(root, 'm.jsonl');
    const run = cli('run', '--dataset', 'demo', '--artifacts', art, '--state', path.join(root, 'state'), '--models', models, '--threads', '1', '--max-arrivals', '30', '--export-every', '10', '--metrics', metrics, '--status-every', '0');
    assert.equal(run.status, 0, run.stderr);
    const recs = readFileSync(metrics, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)).filter((r) => r.health);
    assert.ok(recs.length >= 6, `${recs.length} exports`);
    for (const r of recs) {
      assert.equal(r.health.verdict, 'published', `step ${r.step}: ${r.health.reasons}\n${run.stderr}`);
      for (const k of ['rank', 'meanCos', 'alignment', 'embeddingRank']) assert.ok(Number.isFinite(r.health[k]), `${k} at step ${r.step}`);
    }
    assert.doesNotMatch(run.stderr, /not published/);
    const latest = JSON.parse(readFileSync(path.join(models, 'latest.json'), 'utf8'));
    assert.equal(latest.step, recs.at(-1).step);
    assert.equal(latest.status, 'published');
    assert.ok(latest.health && latest.health.rank > 1.5);
    const versions = readdirSync(models).filter((f) => /^encoder-\d+\.onnx$/.test(f)).sort();
    assert.equal(versions.length, 5, 'the newest 5 published versions kept');
    for (const v of versions) assert.equal(JSON.parse(readFileSync(path.join(models, v.replace('.onnx', '.json')), 'utf8')).status, 'published');

    const list = cli('models', 'list', '--models', models);
    assert.equal(list.status, 0, list.stderr);
    // The versions, then what the agent that published them is doing (its <state>/status.json).
    const rows = list.stdout.trim().split('\n').slice(1, -1);
    assert.match(list.stdout.trim().split('\n').at(-1)!, /^agent \(.*\): stopped \(.*, exit 0\) · step \d+ · \d+ s ago$/);
    assert.equal(rows.length, 5, list.stdout);
    assert.deepEqual(rows.map((r) => r.startsWith('*')), [false, false, false, false, true], list.stdout);

    // embed --watch on latest.onnx; a rollback between two batches of frames.
    const watch = path.join(root, 'watch');
    mkdirSync(watch);
    const out = path.join(root, 'emb.jsonl');
    const child = spawn(process.execPath, [CLI, 'embed', '--watch', watch, '--model', path.join(models, 'latest.onnx'), '--out', out, '--batch', '4', '--stable-ms', '40', '--reload-ms', '5', '--exit-when-idle', '4', '--threads', '1'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    const exited = new Promise((r) => child.on('exit', r));
    const records = () => (existsSync(out) ? readFileSync(out, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)) : []);
    const write = async (from: number) => {
      for (let j = from; j < from + 4; j++) writeFileSync(path.join(watch, `f${String(j).padStart(3, '0')}.png`), await encodePng(demoImage(j), 32));
    };
    await write(0);
    assert.ok(await waitFor(() => records().length >= 4, 30000), `embed did not start: ${err}`);
    const current = sha256(readFileSync(path.join(models, 'latest.onnx')));
    const back = cli('models', 'rollback', '--models', models);
    assert.equal(back.status, 0, back.stderr);
    const previous = versions.at(-2)!;
    const want = sha256(readFileSync(path.join(models, previous)));
    assert.notEqual(want, current);
    assert.equal(sha256(readFileSync(path.join(models, 'latest.onnx'))), want, back.stdout);
    assert.equal(reconcileLatest(models), null, 'latest.json and latest.onnx agree after the rollback');
    const rolled = JSON.parse(readFileSync(path.join(models, 'latest.json'), 'utf8'));
    assert.equal(rolled.file, previous);
    assert.equal(rolled.rollback.from.step, latest.step);
    await new Promise((r) => setTimeout(r, 300)); // several reload polls
    await write(4);
    assert.ok(await waitFor(() => records().length >= 8, 30000), `no records after the rollback: ${err}`);
    await exited;
    const shas = records().map((r) => r.model.sha256);
    assert.deepEqual(shas.slice(0, 4), Array(4).fill(current.slice(0, 16)));
    assert.deepEqual(shas.slice(4), Array(shas.length - 4).fill(want.slice(0, 16)), 'frames after the rollback embedded by the rolled-back model');
    assert.doesNotMatch(err, /could not be loaded|was refused/);
    // An explicit step, and one that is not there.
    const first = Number(/\d+/.exec(versions[0])![0]);
    assert.equal(cli('models', 'rollback', String(first), '--models', models).status, 0);
    assert.equal(JSON.parse(readFileSync(path.join(models, 'latest.json'), 'utf8')).step, first);
    const none = cli('models', 'rollback', '999999', '--models', models);
    assert.equal(none.status, 2);
    assert.match(none.stderr, /no version at that step/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
