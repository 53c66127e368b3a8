// Fault: the disk holding the state and the models fills up (a small tmpfs, filled by the test). The
// agent pauses with a clear message, the previous checkpoint and export stay intact and loadable, and
// it continues by itself when space returns; every frame is still taken exactly once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, unlinkSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { latestCheckpoint, listCheckpoints, readCheckpoint } from '../../agent/trainer/checkpoint.ts';
import { startAgent, tinyArtifacts, waitFor, writeFrames } from './helpers.ts';

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-fault-disk-'));
const disk = path.join(root, 'disk');
mkdirSync(disk);
const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', disk]).status === 0;
test.after(() => {
  if (mounted) spawnSync('umount', [disk]);
  rmSync(root, { recursive: true, force: true });
});

test('disk full: the agent pauses with a clear message, keeps its checkpoint and export, and continues when space returns', { skip: !mounted && 'cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN)' }, async () => {
  const art = tinyArtifacts(path.join(root, 'art'));
  const frames = path.join(root, 'frames');
  const state = path.join(disk, 'state');
  const models = path.join(disk, 'models');
  const written = await writeFrames(frames, 24);
  const a = startAgent(['--watch', frames, '--artifacts', art, '--state', state, '--models', models, '--threads', '1', '--stable-ms', '100', '--checkpoint-every', '2', '--export-every', '4', '--disk-retry-s', '0.5', '--exit-when-idle', '6']);
  const ck = path.join(state, 'checkpoints');
  assert.ok(await waitFor(() => listCheckpoints(ck).length >= 1 && /exported/.test(a.stderr()), 60000), a.stderr());
  // Fill the disk.
  const filler = path.join(disk, 'filler');
  const fd = openSync(filler, 'w');
  const chunk = Buffer.alloc(64 * 1024, 1);
  let filled = 0;
  try {
    for (;;) filled += writeSync(fd, chunk);
  } catch (e) {
    assert.equal((e as NodeJS.ErrnoException).code, 'ENOSPC');
  }
  closeSync(fd);
  written.push(...(await writeFrames(frames, 24)));
  assert.ok(await waitFor(() => /disk full \(ENOSPC\): cannot write a checkpoint/.test(a.stderr()), 60000), a.stderr());
  assert.equal(a.child.exitCode, null, 'still running');
  // While it waits: the previous checkpoint and the export are whole.
  const before = latestCheckpoint(ck)!;
  for (const f of listCheckpoints(ck)) readCheckpoint(f);
  const s = await ort.InferenceSession.create(path.join(models, 'latest.onnx'));
  await s.release();
  const pausedLine = a.stderr().split('\n').find((l) => /disk full/.test(l))!;
  // Space returns: it checkpoints and goes on learning from new frames.
  unlinkSync(filler);
  assert.ok(await waitFor(() => /space is back: checkpoint .* written, training resumes/.test(a.stderr()), 30000), a.stderr());
  written.push(...(await writeFrames(frames, 12)));
  const r = await a.exit;
  assert.equal(r.code, 0, a.stderr());
  const after = latestCheckpoint(ck)!;
  assert.ok(after.data.meta.steps > before.data.meta.steps);
  assert.equal(after.data.meta.framesIngested, written.length);
  const keys = readFileSync(path.join(state, 'ingested.log'), 'utf8').trim().split('\n').map((l) => l.split('\t')[3]);
  assert.deepEqual([...keys].sort(), [...written].sort());
  console.log(`disk full: ${(filled / 1024).toFixed(0)} KiB filler filled the 4 MiB tmpfs; agent said "${pausedLine.trim()}"; checkpoint step ${before.data.meta.steps} and latest.onnx intact while paused; resumed by itself, finished at step ${after.data.meta.steps} with all ${written.length} frames once`);
});
