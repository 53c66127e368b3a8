// `ssocl serve` without a browser: what the server sends (the page, its vendored libraries and nothing
// outside their lists; the metrics history and then each appended line as server-sent events; the
// buffer's images and each entry's nearest-neighbour similarity from the newest checkpoint; the
// quarantine's reasons; the published model), that a whole session leaves the agent's directories
// exactly as they were, the command line, and the page's preprocessing against the agent's.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { appendFileSync, copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { get, request } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import sharp from 'sharp';
import { sha256 } from '../core/atomic.ts';
import { Rng } from '../core/rng.ts';
import { decodeFrame } from '../agent/frames/decode.ts';
import { saveCheckpoint, type CheckpointData } from '../agent/trainer/checkpoint.ts';
import { serve, type Served } from '../agent/serve/server.ts';
import { LIVE_BUFFER_FILE, writeLiveBuffer } from '../agent/buffer/snapshot.ts';
import { LiveBuffer } from '../agent/pipeline/live-buffer.ts';
import type { Entry } from '../agent/buffer/buffer.ts';
import type { Learner } from '../agent/trainer/learner.ts';
import { newCounters } from '../agent/sources/source.ts';
import { hostWarning } from '../agent/commands/serve.ts';
import { reasonKind } from '../agent/serve/quarantine-view.ts';
import { REPO } from './helpers/paths.ts';
import { tinyArtifacts } from './faults/helpers.ts';

const CLI = path.join(REPO, 'bin/ssocl.mjs');
const MODEL = path.join(REPO, 'test/fixtures/edge-demo-step141.onnx');
const root = mkdtempSync(path.join(tmpdir(), 'ssocl-serve-'));
test.after(() => rmSync(root, { recursive: true, force: true }));

const FAST = { pollMs: 50, bufferMs: 50, quarantineMs: 50 };
const SIZE = 8;

function unit(rng: Rng, d: number): Float32Array {
  const v = Float32Array.from({ length: d }, () => rng.uniform() * 2 - 1);
  const n = Math.hypot(...v);
  return v.map((x) => x / n);
}

/** A checkpoint of n buffer entries (entry 1 has no feature yet), as the agent writes them. */
function checkpoint(dir: string, steps: number, n: number, seed: number): CheckpointData {
  const rng = new Rng(seed);
  const images = Array.from({ length: n }, () => Uint8Array.from({ length: 3 * SIZE * SIZE }, () => rng.int(256)));
  const features = images.map((_, i) => (i === 1 ? null : unit(rng, 6)));
  const data: CheckpointData = {
    meta: {
      version: 2, artifact: 'test', steps, arrivals: steps / 2, framesIngested: 4 * steps, rng: [1, 2, 3, 4], cropRng: [5, 6, 7, 8],
      buffer: { nextId: n + 1, streamCount: n, entries: images.map((_, i) => ({ id: i + 1, key: `frame-${i}.png`, seen: i !== 1, lifespan: n - i, streamIndex: i + 1 })), hasFeature: features.map((f) => f !== null) },
      counters: {}, pending: [], time: new Date().toISOString(),
    },
    state: new Map([['w', Float32Array.of(0.5, -0.25)]]),
    images,
    features,
  };
  saveCheckpoint(dir, data);
  return data;
}

const stepLine = (step: number) => JSON.stringify({ time: new Date(Date.UTC(2026, 0, 1, 0, 0, step)).toISOString(), step, arrival: step, loss: 1 / step, terms: { mcc: 1, tcr: -2 }, lr: 0.05, ms: 10, cropsPerS: 100, gradNorm: 1, gradCos: 0.1, applied: true, buffer: 12, nnSim: 0.5, frames: 4 * step, mem: { rss: 100, heap: 10 } }) + '\n';

/** An agent's directories after a short run: checkpoints, an export, metrics, quarantined files. */
function agentDirs(name: string) {
  const base = path.join(root, name);
  const state = path.join(base, 'state');
  const models = path.join(base, 'models');
  const metrics = path.join(base, 'metrics.jsonl');
  const quarantine = path.join(state, 'quarantine');
  mkdirSync(path.join(state, 'checkpoints'), { recursive: true });
  mkdirSync(models, { recursive: true });
  mkdirSync(path.join(quarantine, 'sub'), { recursive: true });
  checkpoint(path.join(state, 'checkpoints'), 10, 5, 1);
  const ckpt = checkpoint(path.join(state, 'checkpoints'), 20, 6, 2);
  const bytes = readFileSync(MODEL);
  const record = { file: 'encoder-000000141.onnx', step: 141, framesSeen: 500, loss: 0.9, time: '2026-01-01T00:00:00.000Z', sha256: sha256(bytes), status: 'published', health: { frames: 16, rank: 3.5, meanCos: 0.8, alignment: 0.9, embeddingRank: 5 } };
  copyFileSync(MODEL, path.join(models, 'encoder-000000141.onnx'));
  writeFileSync(path.join(models, 'encoder-000000141.json'), JSON.stringify(record));
  writeFileSync(path.join(models, 'encoder-000000150.json'), JSON.stringify({ ...record, file: 'encoder-000000150.onnx', step: 150, status: 'rejected', reason: 'rank 1.2 below 1.5' }));
  copyFileSync(MODEL, path.join(models, 'latest.onnx'));
  writeFileSync(path.join(models, 'latest.json'), JSON.stringify(record));
  let lines = '';
  for (let s = 1; s <= 30; s++) lines += stepLine(s);
  lines += JSON.stringify({ time: new Date().toISOString(), eval: { percent: 50, step: 30, frames: 120, knn20: 31.5 } }) + '\n';
  lines += JSON.stringify({ time: new Date().toISOString(), step: 30, frames: 120, loss: 0.5, mem: {}, health: { rank: 3.1, meanCos: 0.7, alignment: 0.8, verdict: 'published' } }) + '\n';
  writeFileSync(metrics, lines);
  writeFileSync(path.join(quarantine, 'a.png'), 'x');
  writeFileSync(path.join(quarantine, 'a.png.reason'), 'truncated: PNG ends after 100 bytes without its IEND chunk, header says 32x32\n');
  writeFileSync(path.join(quarantine, 'b.png.reason'), 'truncated: PNG stops at byte 77, inside chunk IDAT\n');
  writeFileSync(path.join(quarantine, 'sub', 'c.jpg.reason'), 'empty file\n');
  return { base, state, models, metrics, quarantine, ckpt, bytes };
}

interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

function fetchRaw(url: string, o: { method?: string; host?: string } = {}): Promise<Res> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = request({ host: u.hostname, port: u.port, path: u.pathname + u.search, method: o.method ?? 'GET', headers: o.host ? { host: o.host } : {} }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts) }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A server-sent-event reader: `next(type)` resolves with the data of the next event of that type. */
function events(url: string) {
  const queue: { type: string; data: any }[] = [];
  const waiters: (() => void)[] = [];
  let buf = '';
  const req = get(`${url}events`, (res) => {
    res.setEncoding('utf8');
    res.on('data', (d: string) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const type = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (type && data) queue.push({ type, data: JSON.parse(data) });
        waiters.splice(0).forEach((w) => w());
      }
    });
  });
  req.on('error', () => {});
  return {
    async next(type: string, pred: (d: any) => boolean = () => true, ms = 10_000): Promise<any> {
      const t0 = Date.now();
      for (;;) {
        const k = queue.findIndex((e) => e.type === type && pred(e.data));
        if (k >= 0) return queue.splice(k, 1)[0].data;
        if (Date.now() - t0 > ms) throw new Error(`no '${type}' event within ${ms} ms (got: ${queue.map((e) => e.type).join(', ') || 'nothing'})`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 100);
        });
      }
    },
    close: () => req.destroy(),
  };
}

async function serveDirs(d: ReturnType<typeof agentDirs>): Promise<Served> {
  return serve({ dirs: { state: d.state, models: d.models, metrics: d.metrics, quarantine: d.quarantine }, host: '127.0.0.1', port: 0, timing: FAST });
}

test('serves the page and its vendored libraries (uPlot, onnxruntime-web), nothing outside their lists; read-only; loopback names only', async () => {
  const d = agentDirs('static');
  const s = await serveDirs(d);
  try {
    for (const [p, type] of [['/', 'text/html'], ['/page/app.js', 'text/javascript'], ['/page/style.css', 'text/css'], ['/vendor/uplot/uPlot.iife.min.js', 'text/javascript'], ['/vendor/uplot/uPlot.min.css', 'text/css'], ['/vendor/ort/ort.wasm.min.mjs', 'text/javascript'], ['/vendor/ort/ort-wasm-simd-threaded.wasm', 'application/wasm']]) {
      const r = await fetchRaw(s.url + p.slice(1));
      assert.equal(r.status, 200, p);
      assert.match(String(r.headers['content-type']), new RegExp(type), p);
    }
    for (const p of ['vendor/ort/..%2F..%2Fpackage.json', 'vendor/ort/../../package.json', 'page/..%2Fserver.ts', 'page/server.ts', 'vendor/uplot/uPlot.cjs.js', 'vendor/ort/ort.node.min.js.map', 'models/latest.json/../../../state', '%2e%2e/package.json', 'state/checkpoints']) {
      assert.equal((await fetchRaw(s.url + p)).status, 404, p);
    }
    assert.equal((await fetchRaw(s.url, { method: 'POST' })).status, 405);
    assert.equal((await fetchRaw(s.url, { method: 'DELETE' })).status, 405);
    // DNS rebinding: a page on evil.example resolving its name to 127.0.0.1 must not read the dashboard.
    assert.equal((await fetchRaw(s.url, { host: 'evil.example' })).status, 403);
    assert.equal((await fetchRaw(s.url, { host: '127.evil.example' })).status, 403, 'a name that only starts like a loopback address');
    assert.equal((await fetchRaw(s.url + 'api/state', { host: `localhost:${new URL(s.url).port}` })).status, 200);
  } finally {
    await s.close();
  }
});

test('server-sent events: the history on connect, then every appended line live (whole lines only), and a replaced file starts over', async () => {
  const d = agentDirs('sse');
  const s = await serveDirs(d);
  const ev = events(s.url);
  try {
    const hist = await ev.next('metrics');
    assert.equal(hist.reset, true);
    assert.deepEqual(hist.steps.map((p: { step: number }) => p.step), Array.from({ length: 30 }, (_, i) => i + 1));
    assert.equal(hist.steps[9].loss, 1 / 10);
    assert.deepEqual(hist.steps[0].terms, { mcc: 1, tcr: -2 });
    assert.equal(hist.evals[0].knn20, 31.5);
    assert.equal(hist.health[0].rank, 3.1);
    // The agent appends two steps and half of a third.
    const third = stepLine(33);
    appendFileSync(d.metrics, stepLine(31) + stepLine(32) + third.slice(0, 20));
    const live = await ev.next('metrics', (m) => m.steps.length > 0);
    assert.equal(live.reset, false);
    assert.deepEqual(live.steps.map((p: { step: number }) => p.step), [31, 32], 'the half-written line waits');
    appendFileSync(d.metrics, third.slice(20));
    assert.deepEqual((await ev.next('metrics', (m) => m.steps.length > 0)).steps.map((p: { step: number }) => p.step), [33]);
    // A new run writing a new file in its place.
    rmSync(d.metrics);
    writeFileSync(d.metrics, stepLine(1));
    const again = await ev.next('metrics', (m) => m.reset);
    assert.deepEqual(again.steps.map((p: { step: number }) => p.step), [1]);
  } finally {
    ev.close();
    await s.close();
  }
});

test("buffer: the newest checkpoint's images and each entry's nearest-neighbour cosine over its stored features; a newer checkpoint is announced", async () => {
  const d = agentDirs('buffer');
  const s = await serveDirs(d);
  const ev = events(s.url);
  try {
    const b = await ev.next('buffer');
    assert.equal(b.version, 'ckpt-000000020-000000010.safetensors');
    assert.equal(b.size, SIZE);
    assert.equal(b.entries.length, 6);
    const f = d.ckpt.features;
    const expect = f.map((fi, i) => (fi ? Math.max(...f.map((fj, j) => (fj && j !== i ? fi.reduce((a, v, k) => a + v * fj[k], 0) : -Infinity))) : null));
    b.entries.forEach((e: { nnSim: number | null; key: string }, i: number) => {
      assert.equal(e.key, `frame-${i}.png`);
      if (expect[i] === null) assert.equal(e.nnSim, null, `entry ${i} has no feature`);
      else assert.ok(Math.abs(e.nnSim! - expect[i]!) < 1e-6, `entry ${i}: ${e.nnSim} vs ${expect[i]}`);
    });
    const img = await fetchRaw(`${s.url}api/buffer/images`);
    assert.equal(img.headers['x-buffer-version'], b.version);
    assert.deepEqual(new Uint8Array(img.body), Uint8Array.from(d.ckpt.images.flatMap((x) => [...x])));
    // The agent checkpoints again.
    checkpoint(path.join(d.state, 'checkpoints'), 30, 4, 3);
    const next = await ev.next('buffer', (x) => x.version !== b.version);
    assert.equal(next.version, 'ckpt-000000030-000000015.safetensors');
    assert.equal(next.entries.length, 4);
  } finally {
    ev.close();
    await s.close();
  }
});

/** Buffer entries as the learner holds them (entry 0 without a feature yet). */
function entries(n: number, seed: number): Entry[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, (_, i) => ({ id: 100 + i, key: `live-${i}.png`, image: Uint8Array.from({ length: 3 * SIZE * SIZE }, () => rng.int(256)), feature: i === 0 ? null : unit(rng, 6), seen: i > 1, lifespan: i, streamIndex: 50 + i }));
}

test("buffer: the agent's live snapshot (every few seconds) is shown when newer than the newest checkpoint, a newer checkpoint replaces it, an older snapshot is not shown", async () => {
  const d = agentDirs('live');
  const s = await serveDirs(d);
  const ev = events(s.url);
  try {
    assert.equal((await ev.next('buffer')).source, 'checkpoint');
    const es = entries(7, 9);
    writeLiveBuffer(d.state, es, { step: 25, arrivals: 12, framesIngested: 48 });
    const live = await ev.next('buffer', (b) => b.source === 'live');
    assert.deepEqual([live.step, live.arrivals, live.framesIngested, live.entries.length, live.size], [25, 12, 48, 7, SIZE]);
    assert.deepEqual(live.entries.map((e: { key: string; seen: boolean }) => [e.key, e.seen]), es.map((e) => [e.key, e.seen]));
    assert.equal(live.entries[0].nnSim, null, 'no feature, no similarity');
    const f = es.map((e) => e.feature);
    const want = Math.max(...f.slice(2).map((fj) => f[1]!.reduce((a, v, k) => a + v * fj![k], 0)));
    assert.ok(Math.abs(live.entries[1].nnSim - want) < 1e-6);
    const img = await fetchRaw(`${s.url}api/buffer/images`);
    assert.equal(img.headers['x-buffer-version'], live.version);
    assert.deepEqual(new Uint8Array(img.body), Uint8Array.from(es.flatMap((e) => [...e.image])));
    // The agent checkpoints (newer than the snapshot), then a snapshot from before it shows up late.
    checkpoint(path.join(d.state, 'checkpoints'), 30, 4, 3);
    assert.equal((await ev.next('buffer', (b) => b.source === 'checkpoint')).step, 30);
    writeLiveBuffer(d.state, entries(3, 1), { step: 28, arrivals: 14, framesIngested: 56 }, new Date(Date.now() - 60_000));
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(s.watch.buffer?.step, 30, 'an older snapshot does not replace the checkpoint');
  } finally {
    ev.close();
    await s.close();
  }
});

test('the live buffer writer: a snapshot after an arrival at most every few seconds, none left from a previous run by --fresh nor a killed write\'s temp file, a failed write is one line and training goes on', () => {
  const dir = path.join(root, 'live-writer');
  mkdirSync(dir, { recursive: true });
  const es = entries(5, 2);
  const learner = { buffer: { entries: es }, trainer: { steps: 6 }, arrivals: 3 } as unknown as Learner;
  const counters = { ...newCounters(), framesIngested: 12 };
  const lines: string[] = [];
  const w = new LiveBuffer(dir, learner, counters, false, (l) => lines.push(l), 60_000);
  w.maybe();
  const file = path.join(dir, LIVE_BUFFER_FILE);
  const first = readFileSync(file);
  (learner as { arrivals: number }).arrivals = 4;
  w.maybe();
  assert.ok(readFileSync(file).equals(first), 'not again within the interval');
  // A write killed before its rename left its temp file; the next run removes it.
  const temp = path.join(dir, `.${LIVE_BUFFER_FILE}.tmp-99999`);
  writeFileSync(temp, 'half');
  new LiveBuffer(dir, learner, counters, true, (l) => lines.push(l));
  assert.equal(existsSync(file), false, '--fresh: the previous run\'s snapshot is gone');
  assert.equal(existsSync(temp), false, 'a killed write\'s temp file is gone');
  // A state folder that cannot be written (here a file where the folder should be).
  const blocked = path.join(root, 'live-blocked');
  writeFileSync(blocked, 'x');
  const bad = new LiveBuffer(blocked, learner, counters, false, (l) => lines.push(l), 0);
  bad.maybe();
  bad.maybe();
  assert.equal(lines.length, 1, lines.join('\n'));
  assert.match(lines[0], /live buffer snapshot for dashboards is no longer written \(\w+\); training goes on/);
});

test('quarantine (count, reasons by kind, newest first) and the published model (record, versions, download with its sha256)', async () => {
  const d = agentDirs('panels');
  const s = await serveDirs(d);
  const ev = events(s.url);
  try {
    const q = await ev.next('quarantine');
    assert.equal(q.count, 3);
    assert.deepEqual(q.kinds, [{ kind: 'truncated', count: 2 }, { kind: 'empty file', count: 1 }]);
    assert.deepEqual(q.recent.map((r: { file: string }) => r.file).sort(), ['a.png', 'b.png', 'sub/c.jpg']);
    assert.match(q.recent.find((r: { file: string }) => r.file === 'a.png').reason, /^truncated: PNG ends after 100 bytes/);
    writeFileSync(path.join(d.quarantine, 'd.bmp.reason'), 'image of 9000x9000 pixels exceeds the limit of 40000000 pixels\n');
    const q2 = await ev.next('quarantine', (x) => x.count === 4);
    assert.equal(q2.recent[0].file, 'd.bmp', 'newest first');
    assert.equal(reasonKind('image of 9000x9000 pixels exceeds the limit of 40000000 pixels'), 'image of NxN pixels exceeds the limit of N pixels');

    const m = await ev.next('model');
    assert.equal(m.latest.step, 141);
    assert.equal(m.latest.health.rank, 3.5);
    assert.equal(m.size, 32);
    assert.equal(m.sha256, sha256(d.bytes));
    assert.deepEqual(m.versions.map((v: { status: string }) => v.status), ['published', 'rejected']);
    const dl = await fetchRaw(`${s.url}models/latest.onnx`);
    assert.equal(dl.status, 200);
    assert.equal(dl.headers['x-sha256'], sha256(d.bytes));
    assert.match(String(dl.headers['content-disposition']), /attachment; filename="encoder-141.onnx"/);
    assert.ok(dl.body.equals(d.bytes));
  } finally {
    ev.close();
    await s.close();
  }
});

/** Every file and directory under `dirs`, with what a write would change (size, mtime, ctime, inode). */
function snapshot(dirs: string[]): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (p: string) => {
    if (!existsSync(p)) return void out.set(p, 'absent');
    const st = lstatSync(p);
    out.set(p, `${st.isDirectory() ? 'd' : 'f'} ${st.size} ${st.mtimeMs} ${st.ctimeMs} ${st.ino} ${st.mode}`);
    if (st.isDirectory()) for (const n of readdirSync(p).sort()) walk(path.join(p, n));
  };
  dirs.forEach(walk);
  return out;
}

test("a whole session (page, events, buffer images, model download, the state API, the training bundle and artifacts) leaves the agent's directories as they were; missing ones are not created", async () => {
  const d = agentDirs('readonly');
  const art = tinyArtifacts(path.join(d.base, 'art'));
  writeFileSync(path.join(art, 'notes.txt'), 'not named by the manifest\n');
  const before = snapshot([d.base]);
  await new Promise((r) => setTimeout(r, 20)); // a write after this would show in mtime/ctime
  const s = await serve({ dirs: { state: d.state, models: d.models, metrics: d.metrics, quarantine: d.quarantine }, artifacts: art, host: '127.0.0.1', port: 0, timing: FAST });
  const ev = events(s.url);
  try {
    await ev.next('buffer');
    await ev.next('model');
    await ev.next('quarantine');
    for (const p of ['', 'page/app.js', 'api/state', 'api/buffer/images', 'models/latest.onnx', 'models/latest.json', 'artifacts/manifest.json', 'artifacts/train_step.onnx', 'artifacts/init.safetensors']) assert.equal((await fetchRaw(s.url + p)).status, 200, p);
    // The agent's own modules bundled for the page (built in memory).
    const bundle = await fetchRaw(`${s.url}page/train.bundle.js`);
    assert.equal(bundle.status, 200);
    assert.match(bundle.body.toString(), /openTrainer/);
    for (const p of ['artifacts/notes.txt', 'artifacts/..%2Fmodels%2Flatest.json', 'artifacts/', 'artifacts/embed.onnx%00']) assert.equal((await fetchRaw(s.url + p)).status, 404, p);
    await new Promise((r) => setTimeout(r, 300)); // several polls
  } finally {
    ev.close();
    await s.close();
  }
  assert.deepEqual(snapshot([d.base]), before);

  const none = path.join(root, 'nothing-yet');
  const s2 = await serve({ dirs: { state: path.join(none, 'state'), models: path.join(none, 'models'), metrics: path.join(none, 'm.jsonl'), quarantine: path.join(none, 'state/quarantine') }, host: '127.0.0.1', port: 0, timing: FAST });
  const ev2 = events(s2.url);
  try {
    const p = await ev2.next('presence');
    assert.deepEqual(p, { state: false, checkpoints: false, models: false, metrics: false });
    assert.equal((await fetchRaw(`${s2.url}models/latest.onnx`)).status, 404);
    assert.equal((await fetchRaw(`${s2.url}api/buffer/images`)).status, 404);
  } finally {
    ev2.close();
    await s2.close();
  }
  assert.equal(existsSync(none), false);
});

test('ssocl serve: prints its address and serves until SIGTERM; bad flags are one line, exit 2; --host beyond loopback warns', async () => {
  const d = agentDirs('cli');
  const child = spawn(process.execPath, [CLI, 'serve', '--state', d.state, '--models', d.models, '--metrics', d.metrics, '--port', '0', '--poll-ms', '100'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (x) => (out += x));
  child.stderr.on('data', (x) => (err += x));
  const exit = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  try {
    const t0 = Date.now();
    while (!/http:\/\/\S+/.test(out) && Date.now() - t0 < 30_000) await new Promise((r) => setTimeout(r, 50));
    const url = /(http:\/\/\S+)/.exec(out)?.[1];
    assert.ok(url?.startsWith('http://127.0.0.1:'), `address printed: ${out}${err}`);
    assert.equal(err, '', 'no warning on loopback');
    assert.match((await fetchRaw(`${url}`)).body.toString(), /<title>ssocl<\/title>/);
  } finally {
    child.kill('SIGTERM');
  }
  assert.equal(await exit, 0);

  const run = (args: string[]) =>
    new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
      const c = spawn(process.execPath, [CLI, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
      let o = '';
      let e = '';
      c.stdout.on('data', (x) => (o += x));
      c.stderr.on('data', (x) => (e += x));
      c.on('exit', (code) => resolve({ code, out: o, err: e }));
    });
  const [port, metricsDir] = await Promise.all([run(['--port', '70000']), run(['--metrics', d.state])]);
  assert.deepEqual([port.code, port.err], [2, 'ssocl: --port 70000: expected a whole number >= 0 and <= 65535\n']);
  assert.deepEqual([metricsDir.code, metricsDir.err], [2, `ssocl: --metrics ${d.state}: a directory, not a file\n`]);

  assert.equal(hostWarning('127.0.0.1'), null);
  assert.equal(hostWarning('::1'), null);
  assert.match(hostWarning('0.0.0.0')!, /WARNING: ssocl serve is listening on 0\.0\.0\.0[\s\S]*download the model/);
});

test("the page's preprocessing (preprocess.js, the very file the page loads) is within one or two levels of the agent's decodeFrame", async () => {
  const { coverResize } = await import(pathToFileURL(path.join(REPO, 'agent/serve/page/preprocess.js')).href);
  const rng = new Rng(7);
  const worst: string[] = [];
  for (const [w, h, size] of [[200, 150, 32], [97, 131, 16], [640, 480, 32], [1000, 700, 64], [32, 32, 16]]) {
    // Photo-like: shapes a few output pixels wide, plus sensor noise. (Detail far above the output's
    // Nyquist limit, e.g. stripes 2 px apart, is where Lanczos implementations part most: up to ~6 levels
    // mean on such patterns.)
    const k = Math.min(w, h) / size;
    const rgb = Buffer.alloc(w * h * 3);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) rgb[(y * w + x) * 3 + c] = Math.max(0, Math.min(255, Math.round(128 + 90 * Math.sin(x / (k * (2 + c)) + y / (k * 3)) + rng.int(41) - 20)));
    const png = await sharp(rgb, { raw: { width: w, height: h, channels: 3 } }).png().toBuffer();
    const ref = await decodeFrame(png, '.png', { size, fit: 'cover', maxPixels: 1e8 });
    const got: Uint8Array = coverResize(rgb, w, h, size, 3);
    let sum = 0;
    let max = 0;
    for (let i = 0; i < ref.length; i++) {
      const e = Math.abs(ref[i] - got[i]);
      sum += e;
      max = Math.max(max, e);
    }
    const mean = sum / ref.length;
    worst.push(`${w}x${h}->${size}: mean ${mean.toFixed(2)}, max ${max}`);
    assert.ok(mean < 2 && max <= 12, `${w}x${h} -> ${size}: mean |diff| ${mean.toFixed(3)} levels, max ${max}`);
  }
  process.stdout.write(`# page preprocessing vs decodeFrame: ${worst.join('; ')}\n`);
});
