// Fault: kill -9 at random moments, 20 runs, 4 of them inside the atomic writes of a checkpoint and of
// an export (killed after the temp file is complete, before the rename). After every kill: the newest
// checkpoint reads back whole, models/latest.onnx loads, no frame is in the ledger twice, and the next
// run resumes having lost at most one checkpoint interval plus the arrival in flight.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { latestCheckpoint, listCheckpoints, readCheckpoint } from '../../agent/trainer/checkpoint.ts';
import { Rng } from '../../core/rng.ts';
import { startAgent, tinyArtifacts, waitFor, writeFrames } from './helpers.ts';

const CKPT_EVERY = 4; // steps
const K = 2; // updates per arrival of the tiny artifacts

test('kill -9 at random moments (20 runs, 4 inside checkpoint/export writes): nothing lost beyond one checkpoint interval, nothing taken twice', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-fault-kill-'));
  try {
    const art = tinyArtifacts(path.join(root, 'art'));
    const frames = path.join(root, 'frames');
    const state = path.join(root, 'state');
    const models = path.join(root, 'models');
    const metrics = path.join(root, 'm.jsonl');
    const ckDir = path.join(state, 'checkpoints');
    const written: string[] = [];
    const rng = new Rng(99);
    const injected = ['kill-before-rename:ckpt-', 'kill-before-rename:latest.onnx', 'kill-before-rename:encoder-', 'kill-before-rename:latest.json'];
    const stats = { killed: 0, killedInWrite: 0, maxLost: 0, resumed: 0 };
    const maxStep = () => (existsSync(metrics) ? Math.max(0, ...readFileSync(metrics, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l).step as number)) : 0);
    for (let run = 0; run < 20; run++) {
      written.push(...(await writeFrames(frames, 24)));
      const fault = run % 5 === 1 ? injected[(run - 1) / 5] : undefined;
      const a = startAgent(
        ['--watch', frames, '--artifacts', art, '--state', state, '--models', models, '--threads', '1', '--stable-ms', '100', '--checkpoint-every', String(CKPT_EVERY), '--export-every', '6', '--metrics', metrics, '--exit-when-idle', '30'],
        fault ? { SSOCL_INJECT_FAULT: fault } : {},
      );
      const before = maxStep();
      if (run > 0 && existsSync(ckDir)) {
        // The restart resumes from the newest complete checkpoint: at most one interval + one arrival behind.
        assert.ok(await waitFor(() => /resumed from|watching/.test(a.stderr()), 30000), a.stderr());
        const m = /resumed from .*: step (\d+)/.exec(a.stderr());
        if (m) {
          stats.resumed++;
          const lost = before - Number(m[1]);
          stats.maxLost = Math.max(stats.maxLost, lost);
          assert.ok(lost <= CKPT_EVERY + K, `run ${run}: resumed at step ${m[1]}, ${lost} steps after the last one logged (${before})`);
        }
      }
      if (fault) {
        const r = await a.exit;
        assert.equal(r.signal, 'SIGKILL', `run ${run} (${fault}) died inside the write: ${a.stderr()}`);
        stats.killedInWrite++;
      } else {
        await new Promise((r) => setTimeout(r, 300 + rng.int(3000)));
        a.child.kill('SIGKILL');
        await a.exit;
      }
      stats.killed++;
      // After the kill: every checkpoint there reads back whole; the export loads; the ledger has no duplicate.
      for (const f of listCheckpoints(ckDir)) readCheckpoint(f);
      if (existsSync(path.join(models, 'latest.onnx'))) {
        const s = await ort.InferenceSession.create(path.join(models, 'latest.onnx'));
        await s.release();
        JSON.parse(readFileSync(path.join(models, 'latest.json'), 'utf8'));
      }
      const ledgerFile = path.join(state, 'ingested.log');
      if (existsSync(ledgerFile)) {
        const keys = readFileSync(ledgerFile, 'utf8').trim().split('\n').filter(Boolean).map((l) => l.split('\t').slice(3).join('\t'));
        assert.equal(new Set(keys).size, keys.length, `run ${run}: a frame is in the ledger twice`);
      }
    }
    // Finally run to the end: every frame written is taken exactly once over all the runs.
    const a = startAgent(['--watch', frames, '--artifacts', art, '--state', state, '--models', models, '--threads', '1', '--stable-ms', '100', '--checkpoint-every', String(CKPT_EVERY), '--exit-when-idle', '2']);
    const r = await a.exit;
    assert.equal(r.code, 0, a.stderr());
    const keys = readFileSync(path.join(state, 'ingested.log'), 'utf8').trim().split('\n').map((l) => l.split('\t')[3]);
    assert.deepEqual([...keys].sort(), [...written].sort(), 'each frame in the ledger exactly once');
    const last = latestCheckpoint(ckDir)!;
    assert.equal(last.data.meta.framesIngested, written.length, 'the final checkpoint counts every frame once');
    assert.equal(readdirSync(ckDir).filter((f) => f.includes('.tmp-')).length, 0, 'no temp files left behind');
    console.log(`kill -9: ${stats.killed} kills (${stats.killedInWrite} inside checkpoint/export writes), ${stats.resumed} resumes, at most ${stats.maxLost} steps of learning lost (checkpoint every ${CKPT_EVERY} steps, ${K} per arrival); ${written.length} frames, each ingested once; latest.onnx loaded after every kill`);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
