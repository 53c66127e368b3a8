// Faults: divergence (a NaN in the input, a huge learning rate) and execution-provider failures (at
// start, and mid-run through an injected session error).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Trainer } from '../../agent/trainer/trainer.ts';
import { latestCheckpoint } from '../../agent/trainer/checkpoint.ts';
import { startAgent, tinyArtifacts, writeFrames } from './helpers.ts';

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-fault-div-'));
const art = tinyArtifacts(path.join(root, 'art'));
const frames = path.join(root, 'frames');
await writeFrames(frames, 48);
test.after(() => rmSync(root, { recursive: true, force: true }));
const base = (state: string) => ['--watch', frames, '--artifacts', art, '--state', path.join(root, state), '--models', path.join(root, state, 'models'), '--threads', '1', '--stable-ms', '50'];

test('a NaN in the input: the step is skipped, the parameters stay as they were (finite); the next step applies', async () => {
  const tr = await Trainer.open(art, { threads: 1 });
  const n = tr.cropsShape.reduce((a, b) => a * b, 1);
  const crops = new Float32Array(n).map((_, i) => ((i * 7919) % 1000) / 1000);
  const before = new Map([...tr.state].map(([k, v]) => [k, v.slice()]));
  const bad = crops.slice();
  bad[123] = NaN;
  const r = await tr.step(bad, 0.05);
  assert.equal(r.applied, false);
  assert.ok(!Number.isFinite(r.loss) || !Number.isFinite(r.gradNorm));
  assert.equal(tr.steps, 0);
  for (const [k, v] of tr.state) assert.deepEqual(v, before.get(k), `${k} unchanged`);
  const ok = await tr.step(crops, 0.05);
  assert.equal(ok.applied, true);
  assert.equal(tr.steps, 1);
  for (const v of tr.state.values()) assert.ok(v.every(Number.isFinite));
  await tr.close();
});

test('persistent divergence (lr 1e30): every step skipped and logged, exit 3, the last good checkpoint intact', async () => {
  let a = startAgent([...base('div'), '--max-arrivals', '4']);
  assert.equal((await a.exit).code, 0, a.stderr());
  const good = latestCheckpoint(path.join(root, 'div/checkpoints'))!;
  a = startAgent([...base('div'), '--lr', '1e30', '--max-skips', '3']);
  const r = await a.exit;
  assert.equal(r.code, 3, a.stderr());
  assert.match(a.stderr(), /step skipped: non-finite loss or gradient/);
  assert.match(a.stderr(), /training diverged: 3 consecutive steps .* last good state checkpointed/);
  const after = latestCheckpoint(path.join(root, 'div/checkpoints'))!;
  assert.equal(after.data.meta.steps, good.data.meta.steps, 'no step applied');
  for (const [k, v] of after.data.state) {
    assert.ok(v.every(Number.isFinite), `${k} finite`);
    assert.deepEqual(v, good.data.state.get(k), `${k} as it was`);
  }
  console.log(`divergence: lr 1e30 -> ${(a.stderr().match(/step skipped/g) ?? []).length} steps skipped, exit 3, checkpoint at step ${after.data.meta.steps} identical to the last good one`);
});

test('EP failure at start: a clear error, and the fallback only when asked for', async () => {
  let a = startAgent([...base('ep-start'), '--ep', 'cuda', '--max-arrivals', '2']);
  let r = await a.exit;
  assert.equal(r.code, 2, a.stderr());
  assert.match(a.stderr(), /execution provider 'cuda'/);
  a = startAgent([...base('ep-start'), '--ep', 'cuda', '--ep-fallback', 'cpu', '--max-arrivals', '2']);
  r = await a.exit;
  assert.equal(r.code, 0, a.stderr());
  assert.match(a.stderr(), /falling back to --ep cpu/);
});

test('EP failure mid-run: without a fallback the agent stops (exit 5) with its checkpoint; with one it moves there and goes on', async () => {
  let a = startAgent([...base('ep-mid'), '--checkpoint-every', '2'], { SSOCL_INJECT_FAULT: 'session-error-after:5' });
  let r = await a.exit;
  assert.equal(r.code, 5, a.stderr());
  assert.match(a.stderr(), /execution provider 'cpu' failed during a run: injected fault \(SSOCL_INJECT_FAULT\); stopped with the last good state checkpointed\n/);
  const ck = latestCheckpoint(path.join(root, 'ep-mid/checkpoints'))!;
  assert.equal(ck.data.meta.steps, 5, 'the checkpoint holds the last good state');
  a = startAgent([...base('ep-mid2'), '--ep', 'wasm', '--ep-fallback', 'cpu', '--max-arrivals', '8'], { SSOCL_INJECT_FAULT: 'session-error-after:3' });
  r = await a.exit;
  assert.equal(r.code, 0, a.stderr());
  assert.match(a.stderr(), /execution provider 'wasm' failed during a run: .*moving training to --ep cpu/);
  const steps = Number(/(\d+) steps/.exec(a.stdout())![1]);
  assert.ok(steps > 3, `training went on after the move (${steps} steps)`);
  console.log(`EP failure: mid-run without fallback -> exit 5 with the checkpoint at step ${ck.data.meta.steps}; wasm -> cpu fallback -> ${steps} steps in all`);
});
