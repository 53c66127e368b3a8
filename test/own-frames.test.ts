// The README's "your own frames" path, in its order, through the CLI: a demo-stream run publishes a
// model, then `run --watch` on a folder with a new --state publishes the folder's model line over it
// (loudly), `embed` answers with the folder's model, and a demo run resumed on the folder's state is
// refused before any work. Also `--fresh` below the published step of its own line replaces it, and
// `--passes` learns a finite folder N times, its incomplete last arrival included.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { encodePng } from '../agent/frames/decode.ts';
import { demoStream } from '../agent/commands/demo.ts';
import { REPO } from './helpers/paths.ts';
import { tinyPreset } from './helpers/tiny.ts';

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-own-'));
test.after(() => rmSync(root, { recursive: true, force: true }));
const art = path.join(root, 'art');
writeArtifacts(compileArtifacts(tinyPreset(['image.size=16', 'batch=8', 'agent={"newPerArrival":4,"updatesPerArrival":2,"bufferSize":12,"replay":"mixed"}'])), art);
const CLI = path.join(REPO, 'bin/ssocl.mjs');
const ssocl = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd: root, timeout: 60_000 });
const common = ['--artifacts', art, '--threads', '1'];

/** `n` PNG frames (32 px demo images) in a new folder. */
async function folder(name: string, n: number): Promise<string> {
  const dir = path.join(root, name);
  mkdirSync(dir);
  const { images, order } = demoStream();
  for (let k = 0; k < n; k++) {
    const i = order[k];
    writeFileSync(path.join(dir, `frame-${String(k).padStart(4, '0')}.png`), await encodePng(images.subarray(i * 3072, (i + 1) * 3072), 32));
  }
  return dir;
}

const json = (f: string) => JSON.parse(readFileSync(f, 'utf8'));
const metricSteps = (f: string) => readFileSync(f, 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((x) => x.arrival !== undefined);

test("the README's sequence: the folder run publishes its own line, embed uses it, the demo on the folder's state is refused", async () => {
  // As the README types them, from the directory holding ./frames (default --models models); only
  // --artifacts and --threads are the test's.
  const frames = await folder('frames', 40);
  const models = path.join(root, 'models');
  // 1. The demo stream (npm start's), more trained than the folder run will be (the case the issue met).
  let r = ssocl('run', '--dataset', 'demo', '--state', 'demo-state', '--max-arrivals', '30', ...common);
  assert.equal(r.status, 0, r.stderr);
  const demo = json(path.join(models, 'latest.json'));
  assert.ok(demo.step >= 40, `demo step ${demo.step}`);
  // 2. Your own frames, with their own state.
  r = ssocl('run', '--watch', './frames', '--state', './frames-state', '--exit-when-idle', '1', ...common);
  assert.equal(r.status, 0, r.stderr);
  const own = json(path.join(models, 'latest.json'));
  assert.ok(own.step < demo.step, `the folder run (step ${own.step}) is less trained than the demo (step ${demo.step})`);
  assert.notEqual(own.line, demo.line);
  assert.equal(own.lineSource, `watch:${frames}`);
  assert.match(r.stderr, new RegExp(`publishing line ${own.line} over line ${demo.line} \\(step ${demo.step}\\) in ${models}/latest\\.onnx: ssocl models list --models ${models} keeps both; ssocl models rollback ${demo.step} --models ${models} puts it back\\n`));
  assert.match(r.stdout, /40 frames ingested/);
  // 3. Embeddings come from the folder's model.
  r = ssocl('embed', './frames', '--out', 'emb.jsonl');
  assert.equal(r.status, 0, r.stderr);
  const recs = readFileSync(path.join(root, 'emb.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(recs.length, 40);
  for (const x of recs) assert.deepEqual(x.model, { sha256: own.sha256.slice(0, 16), step: own.step, line: own.line });
  // 4. The demo pointed at the folder's state: refused before any work, one line, exit 2.
  const before = readdirSync(path.join(root, 'frames-state', 'checkpoints'));
  r = ssocl('run', '--dataset', 'demo', '--state', './frames-state', '--max-arrivals', '2', ...common);
  assert.equal(r.status, 2, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], new RegExp(`^ssocl: --state ${root}/frames-state: its checkpoints are line ${own.line}, trained on source watch:${frames} \\(this run's is dataset:demo\\); .*another --state.* or --fresh`));
  assert.deepEqual(readdirSync(path.join(root, 'frames-state', 'checkpoints')), before, 'nothing trained or checkpointed');
  assert.equal(json(path.join(models, 'latest.json')).sha256, own.sha256, 'latest unchanged');
  // 5. models list keeps both lines apart, and says what the folder's agent did last.
  r = ssocl('models', 'list');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`line ${demo.line} \\(dataset:demo\\)`));
  assert.match(r.stdout, new RegExp(`line ${own.line} \\(watch:${frames}\\), published`));
  assert.match(r.stdout, /\nagent \(.*frames-state\): stopped \(idle for 1s \(--exit-when-idle\), exit 0\) · step \d+ · \d+ s ago\n$/);
});

test('--fresh below the published step of its own line replaces the more trained model', async () => {
  const frames = await folder('fresh-frames', 24);
  const state = path.join(root, 'fresh-state');
  const models = path.join(root, 'fresh-models');
  let r = ssocl('run', '--watch', frames, '--state', state, '--models', models, '--exit-when-idle', '1', ...common);
  assert.equal(r.status, 0, r.stderr);
  const first = json(path.join(models, 'latest.json'));
  // Started over on the same folder (its line kept), stopped well below that step.
  r = ssocl('run', '--watch', frames, '--state', state, '--models', models, '--fresh', '--max-arrivals', '2', ...common);
  assert.equal(r.status, 0, r.stderr);
  const again = json(path.join(models, 'latest.json'));
  assert.equal(again.line, first.line);
  assert.ok(again.step < first.step, `step ${again.step} vs ${first.step}`);
  assert.notEqual(again.sha256, first.sha256);
  assert.match(r.stderr, new RegExp(`--fresh: replacing .*latest\\.onnx \\(step ${first.step}\\) with this run's encoder \\(step ${again.step}\\)`));
});

test('--passes 3 learns a 42-frame folder three times, the incomplete arrival of each pass included', async () => {
  const frames = await folder('pass-frames', 42);
  const metrics = path.join(root, 'pass.jsonl');
  const r = ssocl('run', '--watch', frames, '--state', path.join(root, 'pass-state'), '--models', path.join(root, 'pass-models'), '--passes', '3', '--exit-when-idle', '1', '--metrics', metrics, ...common);
  assert.equal(r.status, 0, r.stderr);
  // 42 frames = 10 arrivals of 4 + one of 2, per pass; 2 updates each but for the first arrival
  // (its batch of 8 cannot be filled from a buffer holding 4).
  assert.match(r.stdout, /126 frames ingested.*33 arrivals, 64 steps/s);
  assert.match(r.stderr, /pass 1\/3 done: 42 frames learnt\npass 2\/3: learning the 42 frames again/);
  assert.match(r.stderr, /idle: all 42 frames learnt \(3 passes\), waiting for new ones/);
  const steps = metricSteps(metrics);
  assert.equal(steps.length, 64);
  assert.equal(steps.at(-1).frames, 126);
  const status = json(path.join(root, 'pass-state', 'status.json'));
  assert.deepEqual(status.pass, { index: 3, of: 3, frames: 42, total: 42 });
  // Delete or move would take the frames away after the first pass: refused, one line.
  const bad = ssocl('run', '--watch', frames, '--state', path.join(root, 'pass-del'), '--models', path.join(root, 'pass-models'), '--passes', '2', '--after-ingest', 'delete', ...common);
  assert.equal(bad.status, 2, bad.stderr);
  assert.equal(bad.stderr.trim().split('\n').length, 1, bad.stderr);
  assert.match(bad.stderr, /--passes 2 with --after-ingest delete: .*--after-ingest keep/);
});

test("a run that trained but leaves another line's model published (its export refused) ends saying so", async () => {
  const frames = await folder('stays-frames', 16);
  const models = path.join(root, 'stays-models');
  let r = ssocl('run', '--dataset', 'demo', '--state', path.join(root, 'stays-demo'), '--models', models, '--max-arrivals', '4', ...common);
  assert.equal(r.status, 0, r.stderr);
  const demo = json(path.join(models, 'latest.json'));
  // A health floor no encoder meets: the folder's export is refused, the demo's model stays.
  r = ssocl('run', '--watch', frames, '--state', path.join(root, 'stays-state'), '--models', models, '--exit-when-idle', '1', '--health-min-rank', '1000', ...common);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(json(path.join(models, 'latest.json')).sha256, demo.sha256);
  const own = JSON.parse(readFileSync(path.join(root, 'stays-state', 'line.json'), 'utf8')).id;
  assert.match(r.stderr, new RegExp(`latest\\.onnx is still line ${demo.line}'s model \\(step ${demo.step}\\), not this run's \\(line ${own}, step \\d+\\): the health gate refused step \\d+: .*; ssocl models list --models .* shows both lines\\n`));
  // The status record says why this run is not publishing.
  assert.match(json(path.join(root, 'stays-state', 'status.json')).notPublishing, /^the health gate refused step \d+: /);
});

test('--passes: stopped in the second pass, a restarted agent finishes that pass and the third', async () => {
  const frames = await folder('resume-frames', 42);
  const a = (...extra: string[]) => ssocl('run', '--watch', frames, '--state', path.join(root, 'resume-state'), '--models', path.join(root, 'resume-models'), '--passes', '3', ...common, ...extra);
  // Pass 1 is 11 arrivals (10 of 4 frames, one of 2); stopping after 15 leaves pass 2 at frame 16 of 42.
  let r = a('--max-arrivals', '15');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /58 frames ingested.*15 arrivals/s);
  r = a('--exit-when-idle', '1');
  assert.equal(r.status, 0, r.stderr);
  // The rest of pass 2 (26 frames: 6 arrivals of 4 and one of 2), then pass 3 whole: 126 frames in all.
  assert.match(r.stdout, /126 frames ingested.*33 arrivals/s);
  assert.match(r.stderr, /resuming pass 2\/3 at frame 16 of 42\n/);
  assert.match(r.stderr, /pass 2\/3 done: 42 frames learnt\npass 3\/3: learning the 42 frames again/);
});

test('two lines at the same step keep both versions; models list shows both; a rollback crosses back to the other line', async () => {
  const frames = await folder('same-step-frames', 20);
  const models = path.join(root, 'same-step-models');
  // 5 arrivals each, the first without a step: both lines reach step 8.
  let r = ssocl('run', '--dataset', 'demo', '--state', path.join(root, 'same-step-demo'), '--models', models, '--max-arrivals', '5', ...common);
  assert.equal(r.status, 0, r.stderr);
  const demo = json(path.join(models, 'latest.json'));
  r = ssocl('run', '--watch', frames, '--state', path.join(root, 'same-step-state'), '--models', models, '--exit-when-idle', '1', ...common);
  assert.equal(r.status, 0, r.stderr);
  const own = json(path.join(models, 'latest.json'));
  assert.equal(own.step, demo.step);
  assert.deepEqual(readdirSync(models).filter((f) => f.endsWith('.onnx')).sort(), [demo.file, `encoder-${String(own.step).padStart(9, '0')}-${own.line}.onnx`, 'latest.onnx'].sort());
  assert.equal(json(path.join(models, demo.file.replace('.onnx', '.json'))).line, demo.line, "the demo's version is intact");
  r = ssocl('models', 'list', '--models', models);
  assert.match(r.stdout, new RegExp(`line ${demo.line} \\(dataset:demo\\)\\n.*${demo.file}\\nline ${own.line} \\(watch:${frames}\\), published\\n\\*.*${own.file}\\n`));
  // The command the publishing line named: STEP is both lines' step, and the other line's is put back.
  r = ssocl('models', 'rollback', String(demo.step), '--models', models);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(json(path.join(models, 'latest.json')).sha256, demo.sha256);
  // And STEP again: the folder's line, now the one not published.
  r = ssocl('models', 'rollback', String(own.step), '--models', models);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(json(path.join(models, 'latest.json')).sha256, own.sha256);
});

test("README's quickstart as typed: run, embed, classify and serve on a folder of frames (only --artifacts and --threads added, --exit-when-idle shortened)", async () => {
  const readme = readFileSync(path.join(REPO, 'README.md'), 'utf8');
  const section = readme.split(/^## /m).find((s) => s.startsWith('Your own frames'));
  assert.ok(section, 'README has the quickstart section');
  const block = /```sh\n([\s\S]*?)```/.exec(section)![1];
  const cmds = block.split('\n').map((l) => l.replace(/\s+#.*$/, '').trim()).filter((l) => l.startsWith('npx ssocl '));
  const words = cmds.map((c) => c.split(/\s+/).slice(2));
  assert.deepEqual(words.map((w) => w[0]), ['run', 'embed', 'classify', 'serve']);
  const cwd = mkdtempSync(path.join(root, 'quick-'));
  const at = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd, timeout: 60_000 });
  // ./frames, and ./labelled/<label>/ with a few images per label (the demo's classes 0 and 1).
  const { images, labels, order } = demoStream();
  mkdirSync(path.join(cwd, 'frames'));
  for (let k = 0; k < 30; k++) writeFileSync(path.join(cwd, 'frames', `f${k}.png`), await encodePng(images.subarray(order[k] * 3072, (order[k] + 1) * 3072), 32));
  for (const c of [0, 1]) {
    mkdirSync(path.join(cwd, 'labelled', `class${c}`), { recursive: true });
    const picks = order.filter((i) => labels[i] === c).slice(0, 3);
    for (const i of picks) writeFileSync(path.join(cwd, 'labelled', `class${c}`, `${i}.png`), await encodePng(images.subarray(i * 3072, (i + 1) * 3072), 32));
  }
  const run = words[0].map((w, i, a) => (a[i - 1] === '--exit-when-idle' ? '1' : w));
  let r = at(...run, ...common);
  assert.equal(r.status, 0, r.stderr);
  const latest = json(path.join(cwd, 'models-frames', 'latest.json'));
  assert.equal(latest.lineSource, `watch:${path.join(cwd, 'frames')}`);
  assert.match(r.stderr, /idle: all 30 frames learnt \(3 passes\)/);
  r = at(...words[1]);
  assert.equal(r.status, 0, r.stderr);
  const out = /--out\s+(\S+)/.exec(cmds[1])![1];
  const recs = readFileSync(path.join(cwd, out), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(recs.length, 30);
  for (const x of recs) assert.equal(x.model.line, latest.line);
  r = at(...words[2]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /class[01]/);
  // serve: the page's state names the run's status and its model; --port 0 only so parallel runs never collide.
  const { spawn } = await import('node:child_process');
  const srv = spawn(process.execPath, [CLI, ...words[3], '--port', '0'], { cwd });
  try {
    const url = await new Promise<string>((resolve, reject) => {
      let seen = '';
      srv.stdout.on('data', (d) => {
        seen += d;
        const m = /http:\/\/127\.0\.0\.1:\d+\//.exec(seen);
        if (m) resolve(m[0]);
      });
      srv.once('exit', (c) => reject(new Error(`serve exited ${c}: ${seen}`)));
    });
    const state = await (await fetch(`${url}api/state`)).json();
    assert.equal(state.status?.phase, 'stopped', JSON.stringify(state.status));
    assert.equal(state.status?.record?.line, latest.line);
    assert.equal(state.status?.notPublishing, null, 'a run that published and stopped shows no "not publishing" badge');
  } finally {
    srv.kill('SIGTERM');
  }
});
