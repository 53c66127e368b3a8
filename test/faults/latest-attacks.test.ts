// Fault: an export publishes models/latest.onnx and models/latest.json by separate renames. kill -9
// between them must not leave latest.json naming another model than latest.onnx once reconcileLatest
// (run at agent start) has looked: sha256 of latest.onnx is latest.json's, and latest.json's step is the
// ssocl.step in the model's own metadata. reconcileLatest also rebuilds a lost or wrong latest.json.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import * as exportModule from '../../agent/export/export.ts';
import { bindInputs, modelInfo } from '../../core/onnx/model.ts';
import { CLI, startAgent, tinyArtifacts, writeFrames } from './helpers.ts';

// Looked up rather than imported by name: on code without it the test fails on the mismatch itself.
const reconcile = (dir: string): string | null => (exportModule as { reconcileLatest?: (d: string) => string | null }).reconcileLatest?.(dir) ?? null;

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** latest.json and latest.onnx describe the same model; latest.json's file, where versioned, holds it too. */
async function assertAgree(models: string, what: string): Promise<{ step: number; json: Record<string, unknown> }> {
  const onnx = readFileSync(path.join(models, 'latest.onnx'));
  const json = JSON.parse(readFileSync(path.join(models, 'latest.json'), 'utf8'));
  const md = modelInfo(onnx).metadata;
  assert.equal(json.sha256, sha256(onnx), `${what}: latest.json's sha256 is not latest.onnx's (json step ${json.step}, onnx step ${md['ssocl.step']})`);
  assert.equal(json.step, Number(md['ssocl.step']), `${what}: latest.json's step is not the model's`);
  if (json.file !== 'latest.onnx') assert.equal(sha256(readFileSync(path.join(models, json.file))), json.sha256, `${what}: ${json.file} is not the model latest.json describes`);
  const s = await ort.InferenceSession.create(path.join(models, 'latest.onnx'));
  await s.release();
  return { step: json.step, json };
}

test('kill -9 between the renames of latest.json and latest.onnx (either order): after reconcileLatest they name the same model; a lost latest.json is rebuilt from latest.onnx', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-fault-latest-'));
  try {
    const art = tinyArtifacts(path.join(root, 'art'));
    // Killed just before latest.onnx is renamed into place, and (another run) just before latest.json is:
    // whichever of the two the export writes second, one of these falls between the renames.
    for (const point of ['latest.json', 'latest.onnx']) {
      const dir = path.join(root, point);
      const frames = path.join(dir, 'frames');
      const models = path.join(dir, 'models');
      const args = ['--watch', frames, '--artifacts', art, '--state', path.join(dir, 'state'), '--models', models, '--threads', '1', '--stable-ms', '100', '--exit-when-idle', '2'];
      await writeFrames(frames, 8);
      const a = startAgent(args); // exports on exit
      assert.equal((await a.exit).code, 0, a.stderr());
      const first = await assertAgree(models, `${point}: after a clean run`);

      await writeFrames(frames, 8);
      const b = startAgent(args, { SSOCL_INJECT_FAULT: `kill-before-rename:${point}` });
      const r = await b.exit;
      assert.equal(r.signal, 'SIGKILL', `${point}: not killed in the export: ${b.stderr()}`);
      const versions = readdirSync(models).filter((f) => /^encoder-\d+\.onnx$/.test(f));
      assert.equal(versions.length, 2, `${point}: the killed export's versioned file is written first`);
      const said = reconcile(models);
      const after = await assertAgree(models, `${point}: after the kill and reconcileLatest`);
      // The killed export had been checked and its versioned file written whole: where latest.json
      // already named it, the publish is finished rather than undone.
      const killedStep = Math.max(...versions.map((f) => Number(/\d+/.exec(f)![0])));
      assert.ok(killedStep > first.step);
      if (point === 'latest.onnx') assert.equal(after.step, killedStep, `${point}: ${said}`);
      assert.equal(reconcile(models), null, `${point}: a second reconcileLatest found more to do`);
      console.log(`latest: killed before ${point} was renamed; reconcileLatest: ${said ?? 'nothing to repair'}; latest.json and latest.onnx at step ${after.step}`);

      // A lost latest.json is rebuilt from latest.onnx alone, saying what the export had said.
      rmSync(path.join(models, 'latest.json'));
      assert.ok(reconcile(models), `${point}: a missing latest.json not reported`);
      const rebuilt = await assertAgree(models, `${point}: rebuilt`);
      for (const k of ['file', 'step', 'framesSeen', 'loss', 'artifact', 'preset', 'sha256']) assert.deepEqual(rebuilt.json[k], after.json[k], `${point}: rebuilt ${k}`);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('reconcileLatest: a latest.json that is missing, unreadable, or names another model is rewritten from latest.onnx; a missing latest.onnx is restored from the file latest.json names', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-latest-'));
  try {
    const art = tinyArtifacts(path.join(root, 'art'));
    const models = path.join(root, 'models');
    mkdirSync(models);
    const bytes = exportModule.initialEncoder(art); // ssocl.step 0
    const onnxFile = path.join(models, 'latest.onnx');
    const jsonFile = path.join(models, 'latest.json');
    writeFileSync(onnxFile, bytes);
    for (const [what, json] of [
      ['missing', null],
      ['cut short', '{"file": "encoder-000000007.onnx", "st'],
      ['not an object', '7\n'],
      ['naming a model that is gone', JSON.stringify({ file: 'encoder-000000007.onnx', step: 7, sha256: 'ab'.repeat(32) })],
      ['naming a versioned file that does not match it', JSON.stringify({ file: 'encoder-000000003.onnx', step: 3, sha256: 'cd'.repeat(32) })],
    ] as const) {
      rmSync(jsonFile, { force: true });
      if (json !== null) writeFileSync(jsonFile, json);
      writeFileSync(path.join(models, 'encoder-000000003.onnx'), 'not this model');
      assert.ok(reconcile(models), `${what}: nothing reported`);
      const { step, json: j } = await assertAgree(models, what);
      assert.equal(step, 0);
      assert.equal(j.file, 'latest.onnx', `${what}: no versioned file holds this model`);
      assert.equal(readFileSync(onnxFile).equals(Buffer.from(bytes)), true, `${what}: latest.onnx changed`);
      assert.equal(reconcile(models), null, `${what}: not settled`);
    }
    // latest.onnx gone, latest.json names a whole versioned file: restored from it.
    const v = path.join(models, 'encoder-000000000.onnx');
    writeFileSync(v, bytes);
    writeFileSync(jsonFile, JSON.stringify({ file: 'encoder-000000000.onnx', step: 0, sha256: sha256(bytes) }));
    rmSync(onnxFile);
    assert.ok(reconcile(models));
    await assertAgree(models, 'latest.onnx missing');
    // Neither the model nor anything it names: latest.json (describing nothing) goes.
    rmSync(onnxFile);
    rmSync(v);
    reconcile(models);
    assert.equal(existsSync(jsonFile), false, 'a latest.json describing no model left behind');
    assert.ok(statSync(models).isDirectory());
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

/** A copy of `bytes` (a model) whose own metadata says step `step`. */
const atStep = (bytes: Uint8Array, step: number) => bindInputs(bytes, new Map(), { metadata: { ...modelInfo(bytes).metadata, 'ssocl.step': String(step) } });

function cliRun(args: string[], ms = 60_000): Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (err += d));
    const t = setTimeout(() => c.kill('SIGKILL'), ms);
    c.on('exit', (code, signal) => (clearTimeout(t), resolve({ code, signal, out, err })));
  });
}

test('B8: a step edited into latest.json is repaired from the model\'s own metadata; a sidecar claiming another step than its model is not published by a rollback', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-latest-step-'));
  try {
    const art = tinyArtifacts(path.join(root, 'art'));
    const models = path.join(root, 'models');
    mkdirSync(models);
    const base = exportModule.initialEncoder(art);
    const v5 = atStep(base, 5);
    const v9 = atStep(base, 9);
    const record = (file: string, step: number, b: Uint8Array) => ({ file, step, framesSeen: 4 * step, loss: 1, artifact: 'a', time: new Date(Date.UTC(2026, 0, 1, 0, step)).toISOString(), sha256: sha256(b), status: 'published', preset: 'edge' });
    writeFileSync(path.join(models, 'encoder-000000005.onnx'), v5);
    writeFileSync(path.join(models, 'encoder-000000005.json'), JSON.stringify(record('encoder-000000005.onnx', 5, v5)));
    writeFileSync(path.join(models, 'encoder-000000009.onnx'), v9);
    writeFileSync(path.join(models, 'encoder-000000009.json'), JSON.stringify(record('encoder-000000009.onnx', 9, v9)));
    writeFileSync(path.join(models, 'latest.onnx'), v9);
    // latest.json names the right model (sha256) but a step it is not: exports would be held back for ever.
    writeFileSync(path.join(models, 'latest.json'), JSON.stringify({ ...record('encoder-000000009.onnx', 9, v9), step: 999999999 }));
    const said = reconcile(models);
    assert.match(String(said), /step 999999999.*step 9/, 'the mismatch is repaired and said');
    assert.equal((await assertAgree(models, 'after the repair')).step, 9);
    assert.equal(reconcile(models), null);

    // A rollback to a version whose sidecar was edited to claim step 999999999.
    writeFileSync(path.join(models, 'encoder-000000005.json'), JSON.stringify({ ...record('encoder-000000005.onnx', 5, v5), step: 999999999 }));
    const r = await cliRun(['models', 'rollback', '--models', models, '--state', path.join(root, 'no-state')]);
    assert.equal(r.code, 2, r.err);
    assert.equal(JSON.parse(readFileSync(path.join(models, 'latest.json'), 'utf8')).step, 9, 'nothing published');
    const list = await cliRun(['models', 'list', '--models', models, '--json']);
    const rows = list.out.trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(rows.map((x) => [x.step, x.intact]), [[5, false], [9, true]], 'listed at the model\'s own step, marked damaged');
    // The sidecar put right: published at the model's step, and latest.json agrees with latest.onnx.
    writeFileSync(path.join(models, 'encoder-000000005.json'), JSON.stringify(record('encoder-000000005.onnx', 5, v5)));
    const ok = await cliRun(['models', 'rollback', '--models', models, '--state', path.join(root, 'no-state')]);
    assert.equal(ok.code, 0, ok.err);
    assert.equal((await assertAgree(models, 'after the rollback')).step, 5);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('B4: a FIFO named latest.json (or a checkpoint) never hangs `models list` or `run`, and run answers SIGTERM while it waits for frames', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-latest-fifo-'));
  try {
    const art = tinyArtifacts(path.join(root, 'art'));
    const models = path.join(root, 'models');
    const state = path.join(root, 'state');
    mkdirSync(models);
    mkdirSync(path.join(state, 'checkpoints'), { recursive: true });
    execFileSync('mkfifo', [path.join(models, 'latest.json')]);
    const list = await cliRun(['models', 'list', '--models', models], 20_000);
    assert.equal(list.signal, null, `models list hung on the FIFO: ${list.err}`);
    assert.equal(list.code, 0, list.err);
    assert.match(list.err, /latest\.json: not read: a FIFO/);

    // (models list's reconcileLatest removed the FIFO, a latest.json describing no model: put back.)
    if (!existsSync(path.join(models, 'latest.json'))) execFileSync('mkfifo', [path.join(models, 'latest.json')]);
    const frames = path.join(root, 'frames');
    await writeFrames(frames, 4);
    const args = ['--watch', frames, '--artifacts', art, '--state', state, '--models', models, '--threads', '1', '--stable-ms', '50', '--status-every', '0'];
    const stopped = async (a: ReturnType<typeof startAgent>) => {
      const timer = setTimeout(() => a.child.kill('SIGKILL'), 30_000);
      const r = await a.exit;
      clearTimeout(timer);
      return r;
    };
    // A FIFO named as a checkpoint: said and refused (no checkpoint verifies: exit 6), not waited on.
    const fifo = path.join(state, 'checkpoints', 'ckpt-000000001-000000001.safetensors');
    execFileSync('mkfifo', [fifo]);
    let a = startAgent(args);
    let r = await stopped(a);
    assert.equal(r.signal, null, `run hung on the FIFO checkpoint: ${a.stderr()}`);
    assert.equal(r.code, 6, a.stderr());
    assert.match(a.stderr(), /ckpt-000000001-000000001\.safetensors.*a FIFO/);
    // The FIFO latest.json alone: run --watch starts, trains, and stops on SIGTERM.
    rmSync(fifo);
    a = startAgent(args);
    const t0 = Date.now();
    while (!/latest\.json: not read: a FIFO/.test(a.stderr()) && Date.now() - t0 < 30_000 && a.child.exitCode === null) await new Promise((res) => setTimeout(res, 50));
    await new Promise((res) => setTimeout(res, 1000)); // on to training the 4 frames, then waiting for more
    assert.equal(a.child.exitCode, null, `run stopped by itself: ${a.stderr()}`);
    a.child.kill('SIGTERM');
    r = await stopped(a);
    assert.equal(r.signal, null, `run did not answer SIGTERM: ${a.stderr()}`);
    assert.equal(r.code, 0, a.stderr());
    assert.match(a.stderr(), /latest\.json: not read: a FIFO/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
