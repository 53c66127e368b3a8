// The agent's status record, <state>/status.json, as a viewer polling it sees it: starting, training,
// idle (why), stopping, stopped (why, exit code), for a folder that is learnt and then idles, a
// SIGINT, and a run refused before it owns the state (which leaves the record alone); an error after
// that; and describeStatus's lines, a stale record included.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { encodePng } from '../agent/frames/decode.ts';
import { demoStream } from '../agent/commands/demo.ts';
import { describeStatus, readStatus, StatusRecorder, type AgentStatus } from '../agent/pipeline/status.ts';
import { REPO } from './helpers/paths.ts';
import { tinyPreset } from './helpers/tiny.ts';

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-status-'));
test.after(() => rmSync(root, { recursive: true, force: true }));
const art = path.join(root, 'art');
writeArtifacts(compileArtifacts(tinyPreset(['image.size=16', 'batch=8', 'agent={"newPerArrival":4,"updatesPerArrival":2,"bufferSize":12,"replay":"mixed"}'])), art);
const frames = path.join(root, 'frames');
const state = path.join(root, 'state');
mkdirSync(frames);
const { images, order } = demoStream();
for (let k = 0; k < 40; k++) writeFileSync(path.join(frames, `f${k}.png`), await encodePng(images.subarray(order[k] * 3072, (order[k] + 1) * 3072), 32));

/**
 * Runs the agent, polling status.json every 10 ms; each change of phase or reason is kept. `onPhase`
 * may act on the process when a phase is first seen.
 */
async function watch(args: string[], onPhase?: (phase: string, kill: (sig: NodeJS.Signals) => void) => void) {
  const child = spawn(process.execPath, [path.join(REPO, 'bin/ssocl.mjs'), 'run', '--state', state, '--models', path.join(root, 'models'), '--artifacts', art, '--threads', '1', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const seen: AgentStatus[] = [];
  let done = false;
  const exit = new Promise<number | null>((r) => child.on('exit', (c) => ((done = true), r(c))));
  while (!done) {
    const s = readStatus(state);
    const last = seen.at(-1);
    if (s && s.pid === child.pid && (!last || last.phase !== s.phase || last.reason !== s.reason)) {
      seen.push(s);
      onPhase?.(s.phase, (sig) => child.kill(sig));
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  const code = await exit;
  const s = readStatus(state)!;
  if (seen.at(-1)?.phase !== s.phase || seen.at(-1)?.reason !== s.reason) seen.push(s);
  return { code, err, seen, phases: seen.map((x) => x.phase) };
}

test('a folder learnt, then idle, then stopped by --exit-when-idle: training -> idle (why) -> stopping -> stopped (why, exit 0)', async () => {
  const r = await watch(['--watch', frames, '--exit-when-idle', '2']);
  assert.equal(r.code, 0, r.err);
  assert.deepEqual(r.phases.filter((p, i) => p !== r.phases[i - 1]), ['starting', 'training', 'idle', 'stopping', 'stopped'], JSON.stringify(r.seen));
  const idle = r.seen.find((s) => s.phase === 'idle')!;
  assert.equal(idle.reason, 'all 40 frames learnt, waiting for new ones');
  assert.equal(idle.frames, 40);
  const end = r.seen.at(-1)!;
  assert.equal(end.reason, 'idle for 2s (--exit-when-idle)');
  assert.equal(end.exitCode, 0);
  assert.equal(end.heartbeatSeconds, 10);
  assert.ok(end.step > 0 && end.line.length > 0 && end.publishing === false && end.notPublishing === null);
  assert.match(describeStatus(end, Date.parse(end.time) + 3 * 60_000), /^stopped \(idle for 2s \(--exit-when-idle\), exit 0\) · step \d+ · 3 min ago$/);
});

test('SIGINT while idle: stopped (SIGINT, exit 0); a refused resume leaves that record alone', async () => {
  // Everything in the folder is learnt already (by the test before, or now): the agent idles.
  let r = await watch(['--watch', frames], (phase, kill) => phase === 'idle' && kill('SIGINT'));
  assert.equal(r.code, 0, r.err);
  assert.deepEqual(r.phases.slice(-3), ['idle', 'stopping', 'stopped']);
  assert.deepEqual([r.seen.at(-1)!.reason, r.seen.at(-1)!.exitCode], ['SIGINT', 0]);
  // The demo stream on the folder's state: refused (another model line) before it owns the state, so
  // the record still says what the state's last agent did.
  const last = readStatus(state);
  r = await watch(['--dataset', 'demo']);
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /its checkpoints are line/);
  assert.deepEqual(readStatus(state), last);
  // Once it owns the state, an error is recorded with its exit code: every checkpoint cut short.
  const ck = path.join(state, 'checkpoints');
  for (const f of readdirSync(ck).filter((x) => x.endsWith('.safetensors'))) truncateSync(path.join(ck, f), 100);
  r = await watch(['--watch', frames]);
  assert.equal(r.code, 6, r.err);
  const end = r.seen.at(-1)!;
  assert.deepEqual([end.phase, end.exitCode], ['stopped', 6]);
  assert.match(end.reason!, /none of its \d+ checkpoint\(s\) verifies/);
  assert.equal(end.reason, r.err.trim().split('\n').at(-1)!.replace(/^ssocl: /, ''));
});

test('describeStatus: the phase, its reason and age; a record older than 3 heartbeats of a live phase reads as no heartbeat', () => {
  const t = Date.parse('2026-01-01T12:00:00Z');
  const s: AgentStatus = {
    schema: 1, pid: 1, line: 'abc', phase: 'training', reason: null, exitCode: null, publishing: true, notPublishing: null,
    step: 51, arrival: 18, frames: 288, pass: null, time: new Date(t).toISOString(), heartbeatSeconds: 10,
  };
  assert.equal(describeStatus(s, t + 2000), 'training · step 51 · 2 s ago');
  assert.equal(describeStatus(s, t + 31_000), 'no heartbeat for 31 s (was training, step 51)');
  assert.equal(describeStatus(s, t + 120_000), 'no heartbeat for 2 min (was training, step 51)');
  const idle = { ...s, phase: 'idle' as const, reason: 'all 300 frames learnt, waiting for new ones', pass: { index: 3, of: 3, frames: 300, total: 300 }, notPublishing: 'the health gate refused step 90: rank 1.1 < 1.5' };
  assert.equal(describeStatus(idle, t + 4000), 'idle (all 300 frames learnt, waiting for new ones) · step 51 · pass 3/3, 300/300 frames · not publishing: the health gate refused step 90: rank 1.1 < 1.5 · 4 s ago');
  assert.equal(describeStatus({ ...s, phase: 'stopped', reason: '--max-seconds 85', exitCode: 0 }, t + 10 * 3600_000), 'stopped (--max-seconds 85, exit 0) · step 51 · 10 h ago');
});

test('the heartbeat rewrites the record while the agent lives, and stops with the stopped record', async () => {
  const dir = mkdtempSync(path.join(root, 'beat-'));
  const rec = new StatusRecorder(dir, 'l1', () => {}, 0.05);
  rec.update({ phase: 'idle', reason: 'all 3 frames learnt, waiting for new ones' });
  const t0 = readStatus(dir)!.time;
  await new Promise((r) => setTimeout(r, 200));
  const t1 = readStatus(dir)!.time;
  assert.ok(Date.parse(t1) > Date.parse(t0), `time ${t0} -> ${t1}`);
  assert.equal(readStatus(dir)!.phase, 'idle');
  rec.stopped('SIGTERM', 0);
  const t2 = readStatus(dir)!.time;
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(readStatus(dir)!.time, t2, 'no heartbeat after stopped');
  assert.deepEqual([readStatus(dir)!.phase, readStatus(dir)!.reason, readStatus(dir)!.exitCode], ['stopped', 'SIGTERM', 0]);
});
