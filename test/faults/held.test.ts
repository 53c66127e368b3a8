// Fault: with --after-ingest delete, frames leave the watched directory as soon as they are read and
// wait in <state>/held/ until a checkpoint holds what was learnt from them. kill -9 before that
// checkpoint: every frame is still on disk (watched directory or held/), the restart returns the held
// ones, and in the end each frame is ingested once and deleted, held/ empty.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { listCheckpoints, readCheckpoint } from '../../agent/trainer/checkpoint.ts';
import { startAgent, tinyArtifacts, waitFor, writeFrames } from './helpers.ts';

const files = (d: string): string[] => (existsSync(d) ? readdirSync(d, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => e.name) : []);

test('--after-ingest delete: read frames wait in state/held until the checkpoint; kill -9 loses none, the restart takes each once', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-fault-held-'));
  try {
    const art = tinyArtifacts(path.join(root, 'art'));
    const frames = path.join(root, 'frames');
    const state = path.join(root, 'state');
    const held = path.join(state, 'held');
    const metrics = path.join(root, 'm.jsonl');
    const written = await writeFrames(frames, 48);
    const common = ['--watch', frames, '--artifacts', art, '--state', state, '--models', path.join(root, 'models'), '--threads', '1', '--stable-ms', '100', '--after-ingest', 'delete', '--metrics', metrics];
    // No checkpoint during the first run (every 1000 steps): what it read can only be in held/.
    const a = startAgent([...common, '--checkpoint-every', '1000', '--exit-when-idle', '60']);
    const steps = () => (existsSync(metrics) ? readFileSync(metrics, 'utf8').trim().split('\n').filter(Boolean).length : 0);
    assert.ok(await waitFor(() => steps() >= 6, 60000), a.stderr());
    a.child.kill('SIGKILL');
    await a.exit;
    const inDir = files(frames);
    const inHeld = files(held);
    assert.ok(inHeld.length >= 12, `held: ${inHeld.length}`); // >= 3 arrivals of 4 were read
    assert.equal(inDir.filter((f) => inHeld.includes(f)).length, 0, 'a frame in both places');
    assert.deepEqual([...inDir, ...inHeld].sort(), [...written].sort(), 'every frame still on disk after the kill');
    assert.ok(!existsSync(path.join(state, 'ingested.log')) || readFileSync(path.join(state, 'ingested.log'), 'utf8').trim() === '', 'nothing committed without a checkpoint');

    const b = startAgent([...common, '--checkpoint-every', '4', '--exit-when-idle', '3']);
    const r = await b.exit;
    assert.equal(r.code, 0, b.stderr());
    assert.match(b.stderr(), new RegExp(`${inHeld.length} frame\\(s\\) read by a run that stopped before its checkpoint are back in`));
    const keys = readFileSync(path.join(state, 'ingested.log'), 'utf8').trim().split('\n').map((l) => l.split('\t')[3]);
    assert.deepEqual([...keys].sort(), [...written].sort(), 'each frame in the ledger exactly once');
    assert.deepEqual(files(frames), [], 'all gone from the watched directory');
    // Deleted once two verified checkpoints hold them: the final checkpoint's own frames wait in held/
    // (so losing that file would lose no frame), and nothing else does.
    const last = readCheckpoint(listCheckpoints(path.join(state, 'checkpoints')).at(-1)!);
    const pending = new Set((last.meta.pending ?? []).map((p) => p.key));
    assert.ok(files(held).length > 0 && files(held).every((f) => pending.has(f)), 'held: only the final checkpoint\'s frames');
    console.log(`held: ${inHeld.length} frames held at the kill (${inDir.length} not yet read), all ${written.length} ingested once after the restart; ${files(held).length} wait in held/ for the next checkpoint, the rest deleted`);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
