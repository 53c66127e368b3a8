// The WebGPU execution provider against the CPU: a tiny preset's training step, and its fused variants
// (K updates per run, with host crops and with crops made in the graph), give the same losses and
// updated state run after run; `ssocl run --ep webgpu` and `ssocl embed --ep webgpu` work end to end.
// On a machine without a GPU WebGPU runs on SwiftShader (test/helpers/webgpu.ts), which is slow (the
// first step compiles every shader: ~25 s here), hence tiny shapes and few steps. Needs WebGPU: fails
// under CI, skips elsewhere, saying why.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { Trainer, type StepResult } from '../agent/trainer/trainer.ts';
import { CIFAR_AUGMENT, sampleCrop } from '../agent/frames/augment.ts';
import { packCropParams } from '../core/crop-params.ts';
import { initialEncoder } from '../agent/export/export.ts';
import { encodePng } from '../agent/frames/decode.ts';
import { demoStream } from '../agent/commands/demo.ts';
import { Rng } from '../core/rng.ts';
import { REPO } from './helpers/paths.ts';
import { tinyPreset } from './helpers/tiny.ts';
import { needWebGpu, useWebgpuEnv, webgpuEnv } from './helpers/webgpu.ts';

/**
 * webgpu vs cpu, element by element. Measured on SwiftShader over 4 steps: losses within 5e-7, state
 * within 4e-6 (float32 sums in another order); 1e-5 and 1e-4 leave room for other drivers while a
 * wrong kernel (differences of the order of the update itself, > 1e-3 here) still fails.
 */
const LOSS_TOL = 1e-5;
const STATE_TOL = 1e-4;
const STEPS = 4;
/** Fused artifacts: K updates per graph run, RUNS runs (each from the state the last left). */
const K = 2;
const RUNS = 2;

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-webgpu-'));
test.after(() => rmSync(root, { recursive: true, force: true }));

const CLI = path.join(REPO, 'bin/ssocl.mjs');
/** The CLI with the Vulkan environment WebGPU needs here; resolves with exit code and output. */
function cli(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...webgpuEnv() }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', (code) => resolve({ code, out, err }));
  });
}

function tinyArtifacts(name: string, sets: string[] = []): string {
  const dir = path.join(root, name);
  writeArtifacts(compileArtifacts(tinyPreset(sets)), dir);
  return dir;
}

/** Largest |a - b| over two state maps, and where. */
function stateDiff(a: Map<string, Float32Array>, b: Map<string, Float32Array>): { max: number; name: string } {
  let max = 0;
  let name = '';
  for (const [k, x] of a) {
    const y = b.get(k)!;
    assert.equal(x.length, y.length, k);
    for (let i = 0; i < x.length; i++) {
      const d = Math.abs(x[i] - y[i]);
      if (!(d <= max)) [max, name] = [d, k]; // NaN counts as the worst
    }
  }
  return { max, name };
}

/** Runs the same updates on both trainers; returns both sides' results of each run. */
type Updates = (tr: Trainer, run: number) => Promise<StepResult[]>;

/** cpu and webgpu trainers on `dir`, `runs` runs of `updates` each, compared after every run. */
async function parity(t: TestContext, dir: string, runs: number, updates: Updates): Promise<void> {
  const cpu = await Trainer.open(dir, { ep: 'cpu', threads: 1, noEmbed: true });
  const gpu = await Trainer.open(dir, { ep: 'webgpu', threads: 1, noEmbed: true });
  try {
    assert.equal(gpu.ep, 'webgpu');
    const initial = new Map([...cpu.state].map(([k, v]) => [k, v.slice()]));
    for (let r = 1; r <= runs; r++) {
      const a = await updates(cpu, r);
      const t0 = performance.now();
      const b = await updates(gpu, r);
      t.diagnostic(`run ${r}: webgpu ${(performance.now() - t0).toFixed(0)} ms; losses cpu ${a.map((x) => x.loss.toFixed(6))} webgpu ${b.map((x) => x.loss.toFixed(6))}`);
      assert.deepEqual(b.map((x) => x.applied), a.map((x) => x.applied));
      assert.ok(a.every((x) => x.applied), `run ${r}: every update applied`);
      a.forEach((x, k) => {
        assert.ok(Math.abs(x.loss - b[k].loss) <= LOSS_TOL, `run ${r} update ${k}: loss cpu ${x.loss}, webgpu ${b[k].loss}`);
        for (const [n, v] of Object.entries(x.terms)) assert.ok(Math.abs(v - b[k].terms[n]) <= LOSS_TOL, `run ${r} update ${k}: ${n} cpu ${v}, webgpu ${b[k].terms[n]}`);
        assert.ok(Math.abs(x.gradNorm - b[k].gradNorm) <= 1e-3 * Math.max(1, x.gradNorm), `run ${r} update ${k}: gradient norm cpu ${x.gradNorm}, webgpu ${b[k].gradNorm}`);
      });
      const d = stateDiff(cpu.state, gpu.state);
      t.diagnostic(`run ${r}: state max |webgpu - cpu| ${d.max.toExponential(2)} (${d.name})`);
      assert.ok(d.max <= STATE_TOL, `run ${r}: ${d.name} differs by ${d.max}`);
    }
    // The comparison has teeth: training moved the state by far more than the tolerance.
    const moved = stateDiff(initial, cpu.state);
    assert.ok(moved.max > 100 * STATE_TOL, `the state moved only ${moved.max}`);
  } finally {
    await cpu.close();
    await gpu.close();
  }
}

const S = 8; // tiny preset: 8 px images, 4 a step, 3 crops each
const PER = 3 * S * S;
const CROPS = 3 * 4 * PER;
/** Seeded inputs, the same for both EPs: host crops in [0, 1], or images, batch rows and crop draws for in-graph crops. */
const crops = (seed: number, k: number) => {
  const rng = new Rng(seed);
  return new Float32Array(k * CROPS).map(() => rng.range(0, 1));
};
function arrival(seed: number, k: number): { images: Uint8Array; index: BigInt64Array; params: Float32Array } {
  const rng = new Rng(seed);
  const u = 6;
  const draws = Array.from({ length: k * 3 * 4 }, () => sampleCrop(rng, S, CIFAR_AUGMENT));
  return { images: Uint8Array.from({ length: u * PER }, () => rng.int(256)), index: BigInt64Array.from({ length: k * 4 }, () => BigInt(rng.int(u))), params: packCropParams(draws) };
}

test(`a training step on webgpu equals cpu over ${STEPS} steps: losses within ${LOSS_TOL}, every updated state tensor within ${STATE_TOL}`, async (t) => {
  if (!needWebGpu(t)) return;
  useWebgpuEnv();
  await parity(t, tinyArtifacts('single'), STEPS, async (tr, r) => [await tr.step(crops(r, 1), 0.05)]);
});

test(`fused artifacts on webgpu equal cpu (K=${K} updates per run, crops from the host and made in the graph), ${RUNS} runs`, async (t) => {
  if (!needWebGpu(t)) return;
  useWebgpuEnv();
  const lrs = [0.05, 0.04];
  t.diagnostic('host crops');
  await parity(t, tinyArtifacts('fused', [`fuse=${K}`, `agent.updatesPerArrival=${K}`]), RUNS, (tr, r) => tr.arrive({ lrs, crops: crops(r, K) }));
  t.diagnostic('crops made in the graph');
  await parity(t, tinyArtifacts('in-graph', [`fuse=${K}`, `agent.updatesPerArrival=${K}`, 'cropsInGraph=true']), RUNS, (tr, r) => tr.arrive({ lrs, ...arrival(r, K) }));
});

/** ORT's own log lines (e.g. "[W:onnxruntime:..."), which ssocl keeps quiet unless asked. */
const ORT_LOG = /\[[VIWEF]:onnxruntime/;

test('ssocl run --ep webgpu: learns from a few demo frames, checkpoints and exports', async (t) => {
  if (!needWebGpu(t)) return;
  const art = tinyArtifacts('run', ['agent={"newPerArrival":4,"updatesPerArrival":1,"bufferSize":8,"replay":"mixed"}']);
  const state = path.join(root, 'run-state');
  const models = path.join(root, 'run-models');
  const t0 = performance.now();
  const r = await cli(['run', '--dataset', 'demo', '--max-arrivals', '2', '--ep', 'webgpu', '--artifacts', art, '--state', state, '--models', models, '--threads', '1']);
  t.diagnostic(`ssocl run --ep webgpu: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  assert.equal(r.code, 0, r.err);
  assert.match(r.err, /training \S+ on webgpu/);
  assert.doesNotMatch(r.err, /falling back|moving to --ep/);
  assert.doesNotMatch(r.err, ORT_LOG);
  assert.match(r.out, /8 frames ingested/);
  assert.match(r.out, /2 steps \(0 skipped\)/);
  assert.ok(readdirSync(path.join(state, 'checkpoints')).some((f) => f.endsWith('.safetensors')));
  assert.ok(existsSync(path.join(models, 'latest.onnx')));
  // The export check ran on webgpu (against the webgpu trainer) and passed.
  assert.ok(JSON.parse(readFileSync(path.join(models, 'latest.json'), 'utf8')).maxAbsDiff <= 1e-4);
});

test('ssocl embed --ep webgpu: the features ssocl embed --ep cpu gives', async (t) => {
  if (!needWebGpu(t)) return;
  const art = tinyArtifacts('embed');
  const model = path.join(root, 'embed.onnx');
  writeFileSync(model, initialEncoder(art));
  const frames = path.join(root, 'frames');
  mkdirSync(frames);
  const { images, order } = demoStream();
  for (let k = 0; k < 5; k++) {
    const i = order[k];
    writeFileSync(path.join(frames, `f${k}.png`), await encodePng(images.subarray(i * 3072, (i + 1) * 3072), 32));
  }
  const run = async (ep: string) => {
    const out = path.join(root, `${ep}.jsonl`);
    const r = await cli(['embed', frames, '--model', model, '--out', out, '--ep', ep, '--threads', '1']);
    assert.equal(r.code, 0, r.err);
    assert.doesNotMatch(r.err, ORT_LOG);
    return readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { key: string; features: number[] });
  };
  const t0 = performance.now();
  const gpu = await run('webgpu');
  t.diagnostic(`ssocl embed --ep webgpu: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const cpu = await run('cpu');
  assert.deepEqual(gpu.map((x) => x.key), cpu.map((x) => x.key));
  assert.equal(gpu.length, 5);
  let m = 0;
  gpu.forEach((x, i) => x.features.forEach((v, j) => (m = Math.max(m, Math.abs(v - cpu[i].features[j])))));
  assert.ok(m <= STATE_TOL, `features differ by ${m}`);
});
