// Attacks on the agent's state (issue #21, items 2-4): checkpoints altered, poisoned with NaN or cut
// short on disk. Each is refused on load (digests, finiteness), never trained on or published, and no
// frame is lost or committed without learning.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { decodeSafetensors, encodeSafetensors, type StTensor } from '../../core/codecs/safetensors.ts';
import { CheckpointError, listCheckpoints, readCheckpoint, saveCheckpoint } from '../../agent/trainer/checkpoint.ts';
import { ledgerStatus, startAgent, tinyArtifacts, writeFrames } from './helpers.ts';

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-fault-state-'));
const art = tinyArtifacts(path.join(root, 'art'));
test.after(() => rmSync(root, { recursive: true, force: true }));

function setup(name: string) {
  const dir = path.join(root, name);
  const frames = path.join(dir, 'frames');
  const state = path.join(dir, 'state');
  const models = path.join(dir, 'models');
  const args = ['--watch', frames, '--artifacts', art, '--state', state, '--models', models, '--threads', '1', '--stable-ms', '50', '--checkpoint-every', '2', '--exit-when-idle', '2'];
  return { dir, frames, state, models, ckDir: path.join(state, 'checkpoints'), args };
}

/** Rewrites a checkpoint's tensors as an attacker with a safetensors library would (metadata kept). */
function tamper(file: string, fn: (t: Map<string, StTensor>) => void): void {
  const { tensors, metadata } = decodeSafetensors(readFileSync(file));
  fn(tensors);
  writeFileSync(file, encodeSafetensors(tensors, metadata));
}

/** Non-finite values in a checkpoint's float tensors, counted here without the agent's code. */
function nonFiniteCount(file: string): number {
  let n = 0;
  for (const [, t] of decodeSafetensors(readFileSync(file)).tensors) if (t.dtype === 'F32') for (const v of t.data as Float32Array) if (!Number.isFinite(v)) n++;
  return n;
}

const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');
const files = (d: string): string[] => (existsSync(d) ? readdirSync(d, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => e.name) : []);

test('item 2: a checkpoint whose weights or buffer images were altered on disk is refused; the agent resumes from the one before', async () => {
  const s = setup('altered');
  await writeFrames(s.frames, 24);
  let a = startAgent(s.args);
  assert.equal((await a.exit).code, 0, a.stderr());
  const cks = listCheckpoints(s.ckDir);
  assert.ok(cks.length >= 2, `${cks.length} checkpoints`);
  const [older, newest] = cks.slice(-2);
  tamper(newest, (t) => {
    const w = [...t.entries()].find(([k, v]) => k.startsWith('state/') && v.data.length > 16)!;
    (w[1].data as Float32Array).fill(3e4, 0, 16);
  });
  a = startAgent(s.args);
  assert.equal((await a.exit).code, 0, a.stderr());
  assert.match(a.stderr(), new RegExp(`skipping checkpoint .*${path.basename(newest)}: tensor state/.* altered`));
  assert.match(a.stderr(), new RegExp(`resumed from .*${path.basename(older)}`));

  // The buffer's images inverted in the newest (the one the restart just wrote).
  const again = listCheckpoints(s.ckDir).at(-1)!;
  tamper(again, (t) => {
    const im = t.get('buffer/images')!.data as Uint8Array;
    for (let i = 0; i < im.length; i++) im[i] = 255 - im[i];
  });
  a = startAgent(s.args);
  assert.equal((await a.exit).code, 0, a.stderr());
  assert.match(a.stderr(), new RegExp(`skipping checkpoint .*${path.basename(again)}: tensor buffer/images altered`));
  console.log(`altered checkpoints: weights set to 3e4 and buffer images inverted were both refused (sha256 mismatch); resumed from the one before`);
});

test('item 3: only finite state is ever checkpointed; a NaN-poisoned newest checkpoint is refused and no checkpoint on disk ends non-finite', async () => {
  // Unit: the writer refuses non-finite state and leaves the directory as it was.
  const dir = path.join(root, 'nan-unit');
  const state = new Map([['w', new Float32Array([1, NaN, 3])]]);
  const meta = { version: 2, artifact: 'x', steps: 1, arrivals: 1, framesIngested: 0, rng: [], cropRng: [], buffer: { nextId: 0, streamCount: 0, entries: [], hasFeature: [] }, counters: {}, time: '' };
  assert.throws(() => saveCheckpoint(dir, { meta, state, images: [], features: [] }), CheckpointError);
  assert.equal(listCheckpoints(dir).length, 0);

  const s = setup('nan');
  await writeFrames(s.frames, 24);
  let a = startAgent(s.args);
  assert.equal((await a.exit).code, 0, a.stderr());
  const newest = listCheckpoints(s.ckDir).at(-1)!;
  tamper(newest, (t) => {
    for (const [k, v] of t) if (k.startsWith('state/')) (v.data as Float32Array).fill(NaN, 0, 4);
  });
  assert.ok(nonFiniteCount(newest) > 0);
  await writeFrames(s.frames, 16);
  a = startAgent([...s.args, '--after-ingest', 'delete']);
  const r = await a.exit;
  assert.equal(r.code, 0, a.stderr());
  assert.match(a.stderr(), /skipping checkpoint .*altered/);
  for (const f of listCheckpoints(s.ckDir)) assert.equal(nonFiniteCount(f), 0, `${path.basename(f)} finite`);
  console.log(`NaN-poisoned newest checkpoint refused; ${listCheckpoints(s.ckDir).length} checkpoints on disk afterwards, all finite`);
});

test('item 3: frames of arrivals where every step was skipped (divergence) are neither committed nor deleted', async () => {
  const s = setup('diverge');
  await writeFrames(s.frames, 16);
  let a = startAgent([...s.args, '--after-ingest', 'delete']);
  assert.equal((await a.exit).code, 0, a.stderr());
  const fresh = await writeFrames(s.frames, 16);
  a = startAgent([...s.args, '--after-ingest', 'delete', '--lr', '1e30', '--max-skips', '3']);
  const r = await a.exit;
  assert.equal(r.code, 3, a.stderr());
  const onDisk = new Set([...files(s.frames), ...files(path.join(s.state, 'held'))]);
  const lost = fresh.filter((f) => !onDisk.has(f));
  assert.deepEqual(lost, [], 'frames no step learnt from were deleted');
  const led = ledgerStatus(s.state);
  assert.deepEqual(fresh.filter((f) => led.get(f) === 'ingested'), [], 'frames no step learnt from were committed to the ledger');
  for (const f of listCheckpoints(s.ckDir)) assert.equal(nonFiniteCount(f), 0);
  console.log(`divergence with --after-ingest delete: exit 3, all ${fresh.length} frames of the skipped arrivals still on disk, none in the ledger`);
});

test('item 4: no checkpoint verifies -> one line, exit 6, latest.onnx untouched; --fresh starts over', async () => {
  const s = setup('none');
  await writeFrames(s.frames, 24);
  let a = startAgent(s.args);
  assert.equal((await a.exit).code, 0, a.stderr());
  const latest = path.join(s.models, 'latest.onnx');
  const before = sha(latest);
  for (const f of listCheckpoints(s.ckDir)) truncateSync(f, 100);
  await writeFrames(s.frames, 8);
  a = startAgent(s.args);
  const r = await a.exit;
  assert.equal(r.code, 6, a.stderr());
  assert.match(a.stderr(), /none of its \d+ checkpoint\(s\) verifies .*--fresh/);
  assert.equal(sha(latest), before, 'latest.onnx replaced');
  a = startAgent([...s.args, '--fresh']);
  assert.equal((await a.exit).code, 0, a.stderr());
  console.log('all checkpoints truncated: exit 6 with a one-line reason, latest.onnx unchanged; --fresh started over');
});

test('item 4: the newest checkpoint cut short after a run: the older one resumes, the frames learnt since are taken again (none lost), and latest.onnx never goes back', async () => {
  const s = setup('trunc');
  const written = await writeFrames(s.frames, 24);
  let a = startAgent([...s.args, '--after-ingest', 'delete']);
  assert.equal((await a.exit).code, 0, a.stderr());
  const step1 = JSON.parse(readFileSync(path.join(s.models, 'latest.json'), 'utf8')).step as number;
  const newest = listCheckpoints(s.ckDir).at(-1)!;
  const heldNow = new Set(files(path.join(s.state, 'held')));
  const pendingInNewest = (readCheckpoint(newest).meta.pending ?? []).filter((p) => heldNow.has(p.key));
  assert.ok(pendingInNewest.length > 0, 'the newest checkpoint\'s frames were deleted at once');
  truncateSync(newest, 1000);
  a = startAgent([...s.args, '--after-ingest', 'delete']);
  assert.equal((await a.exit).code, 0, a.stderr());
  assert.match(a.stderr(), /resuming from the older .*1 newer checkpoint\(s\) did not verify/);
  assert.match(a.stderr(), new RegExp(`${pendingInNewest.length} frame\\(s\\) read by a run that stopped before its checkpoint \\(or whose checkpoint did not verify\\) are back in`));
  const led = ledgerStatus(s.state);
  assert.deepEqual(written.filter((f) => led.get(f) !== 'ingested'), [], 'every frame ingested in the end');
  const step2 = JSON.parse(readFileSync(path.join(s.models, 'latest.json'), 'utf8')).step as number;
  assert.ok(step2 >= step1, `latest.json went back from step ${step1} to ${step2}`);
  console.log(`newest checkpoint truncated: ${pendingInNewest.length} frames it had learnt were returned and learnt again; latest.json step ${step1} -> ${step2}`);
});

test('B9: "version":1 written into a tampered checkpoint does not skip the digests in a state that has held version 2 checkpoints; a state from before digests still reads its version 1 files', () => {
  const meta = (steps: number) => ({ version: 2, artifact: 'x', steps, arrivals: steps, framesIngested: 0, rng: [1], cropRng: [2], buffer: { nextId: 0, streamCount: 0, entries: [], hasFeature: [] }, counters: {}, time: '' });
  const dir = path.join(root, 'v1');
  saveCheckpoint(dir, { meta: meta(1), state: new Map([['w', Float32Array.of(1, 2, 3)]]), images: [], features: [] });
  assert.equal(readFileSync(path.join(dir, 'format'), 'utf8'), '2\n', 'the state records the format it holds');
  // The attacker's newer checkpoint: weights changed, "version": 1, the digests dropped.
  const asV1 = (file: string, to: string, w: Float32Array) => {
    const { tensors, metadata } = decodeSafetensors(readFileSync(file));
    tensors.set('state/w', { dtype: 'F32', shape: [w.length], data: w });
    const m = JSON.parse(metadata.ssocl);
    writeFileSync(to, encodeSafetensors(tensors, { ssocl: JSON.stringify({ ...m, version: 1, steps: 2 }) }));
  };
  const forged = path.join(dir, 'ckpt-000000002-000000002.safetensors');
  asV1(listCheckpoints(dir)[0], forged, Float32Array.of(3e4, 3e4, 3e4));
  assert.throws(() => readCheckpoint(forged), (e: Error) => e instanceof CheckpointError && /version 1 \(no digests\) in a state that has held version 2/.test(e.message));
  // A state from before digests (no format record): its version 1 files are read, with a warning.
  const old = path.join(root, 'v1-old');
  mkdirSync(old);
  const legacy = path.join(old, 'ckpt-000000002-000000002.safetensors');
  asV1(listCheckpoints(dir)[0], legacy, Float32Array.of(4, 5, 6));
  const warnings: string[] = [];
  assert.deepEqual([...readCheckpoint(legacy, (w) => warnings.push(w)).state.get('w')!], [4, 5, 6]);
  assert.match(warnings.join('\n'), /written before checkpoints carried digests/);
});
