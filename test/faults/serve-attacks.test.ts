// Attacks on `ssocl serve` through the folders it reads (issue 30, B1-B4): whoever can write in --models,
// --state, the quarantine or --artifacts can leave links, hard links and FIFOs there, and whoever can
// write the metrics file can put anything in it. The server must serve nothing from outside its
// folders, never block, and keep answering whatever the files hold.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { appendFileSync, copyFileSync, linkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { get, request } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { sha256 } from '../../core/atomic.ts';
import { serve, type Served } from '../../agent/serve/server.ts';
import { REPO } from '../helpers/paths.ts';

const MODEL = path.join(REPO, 'test/fixtures/edge-demo-step141.onnx');
const FAST = { pollMs: 30, bufferMs: 30, quarantineMs: 30 };
const SECRET = 'root:x:0:0:the secret outside the folders';

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-serve-attacks-'));
test.after(() => rmSync(root, { recursive: true, force: true }));

function get200(url: string, host?: string): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = request({ host: u.hostname, port: u.port, path: u.pathname, headers: host ? { host } : {} }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(parts) }));
    });
    req.on('error', reject);
    req.end();
  });
}

const state = async (s: Served) => {
  const r = await get200(`${s.url}api/state`);
  assert.equal(r.status, 200, `/api/state answered ${r.status}: ${r.body.toString().slice(0, 200)}`);
  return JSON.parse(r.body.toString());
};

async function until<T>(f: () => Promise<T>, ok: (v: T) => boolean, ms = 10_000): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await f();
    if (ok(v) || Date.now() - t0 > ms) return v;
    await new Promise((r) => setTimeout(r, 30));
  }
}

function dirs(name: string) {
  const base = path.join(root, name);
  const d = { base, state: path.join(base, 'state'), models: path.join(base, 'models'), metrics: path.join(base, 'metrics.jsonl'), quarantine: path.join(base, 'state/quarantine') };
  mkdirSync(path.join(d.state, 'checkpoints'), { recursive: true });
  mkdirSync(d.quarantine, { recursive: true });
  mkdirSync(d.models, { recursive: true });
  return d;
}

const open = (d: ReturnType<typeof dirs>, warnings: string[] = [], artifacts?: string) =>
  serve({ dirs: { state: d.state, models: d.models, metrics: d.metrics, quarantine: d.quarantine }, artifacts, host: '127.0.0.1', port: 0, timing: FAST, warn: (m) => warnings.push(m) });

test('B1: a symlinked latest.onnx, latest.json or artifact file and a hard-linked quarantine reason are not served (said once each); regular files still are', async () => {
  const d = dirs('links');
  const outside = path.join(root, 'outside');
  mkdirSync(outside, { recursive: true });
  writeFileSync(path.join(outside, 'passwd'), SECRET + '\n');
  writeFileSync(path.join(outside, 'latest.json'), JSON.stringify({ step: 7, secret: SECRET }));
  symlinkSync(path.join(outside, 'passwd'), path.join(d.models, 'latest.onnx'));
  symlinkSync(path.join(outside, 'latest.json'), path.join(d.models, 'latest.json'));
  linkSync(path.join(outside, 'passwd'), path.join(d.quarantine, 'x.png.reason'));
  writeFileSync(path.join(d.quarantine, 'y.png.reason'), 'truncated: a real reason\n');
  const art = path.join(d.base, 'art');
  mkdirSync(art);
  writeFileSync(path.join(art, 'manifest.json'), JSON.stringify({ files: { 'embed.onnx': 'x', 'init.safetensors': 'y' } }));
  symlinkSync(path.join(outside, 'passwd'), path.join(art, 'embed.onnx'));
  writeFileSync(path.join(art, 'init.safetensors'), 'regular');
  // A link in a folder on the way: the quarantine's sub/ is a link to a folder outside.
  mkdirSync(path.join(outside, 'q'));
  writeFileSync(path.join(outside, 'q', 'z.png.reason'), SECRET);
  symlinkSync(path.join(outside, 'q'), path.join(d.quarantine, 'sub'));
  const warnings: string[] = [];
  const s = await open(d, warnings, art);
  try {
    for (const p of ['models/latest.onnx', 'models/latest.json', 'artifacts/embed.onnx']) {
      const r = await get200(s.url + p);
      assert.equal(r.status, 404, `${p} served through a link: ${r.body.toString().slice(0, 80)}`);
    }
    assert.equal((await get200(`${s.url}artifacts/init.safetensors`)).body.toString(), 'regular');
    const st = await until(() => state(s), (v) => v.quarantine !== null);
    const text = JSON.stringify(st);
    assert.ok(!text.includes('secret outside'), `/api/state shows a file outside the folders: ${text.slice(0, 400)}`);
    assert.equal(st.model.latest, null);
    assert.equal(st.model.sha256, null);
    assert.equal(st.quarantine.count, 2, 'the hard link is still counted as set aside');
    assert.match(st.quarantine.recent.find((r: { file: string }) => r.file === 'x.png').reason, /not shown: a hard link/);
    for (const want of [/latest\.onnx: not read: a symbolic link/, /latest\.json: not read: a symbolic link/, /x\.png\.reason: not read: a hard link/, /embed\.onnx: not read: a symbolic link/]) {
      assert.equal(warnings.filter((w) => want.test(w)).length, 1, `${want} said once: ${warnings.join(' | ')}`);
    }
    // The model replaced by a regular file (as an export writes it): served.
    rmSync(path.join(d.models, 'latest.onnx'));
    copyFileSync(MODEL, path.join(d.models, 'latest.onnx'));
    const bytes = readFileSync(MODEL);
    const after = await until(() => state(s), (v) => v.model?.sha256 === sha256(bytes));
    assert.equal(after.model.sha256, sha256(bytes));
    assert.ok((await get200(`${s.url}models/latest.onnx`)).body.equals(bytes));
  } finally {
    await s.close();
  }
});

test('B4: a FIFO named latest.json, latest.onnx, a checkpoint or a reason never blocks the server', async () => {
  const d = dirs('fifo');
  for (const f of [path.join(d.models, 'latest.json'), path.join(d.models, 'latest.onnx'), path.join(d.state, 'checkpoints', 'ckpt-000000010-000000005.safetensors'), path.join(d.quarantine, 'f.png.reason')]) execFileSync('mkfifo', [f]);
  writeFileSync(d.metrics, JSON.stringify({ step: 1, loss: 0.5 }) + '\n');
  const warnings: string[] = [];
  const s = await Promise.race([open(d, warnings), new Promise<never>((_, rej) => setTimeout(() => rej(new Error('serve did not start within 10 s: blocked on a FIFO')), 10_000))]);
  try {
    const st = await until(() => state(s), (v) => v.quarantine !== null && v.steps === 1);
    assert.equal(st.steps, 1);
    assert.equal(st.model.latest, null);
    assert.equal(st.buffer, null);
    assert.equal((await get200(`${s.url}models/latest.json`)).status, 404);
    assert.equal((await get200(`${s.url}models/latest.onnx`)).status, 404);
    assert.ok(warnings.some((w) => /latest\.json: not read: a FIFO/.test(w)), warnings.join(' | '));
    assert.ok(warnings.some((w) => /ckpt-000000010-000000005\.safetensors/.test(w)), `the checkpoint FIFO is said: ${warnings.join(' | ')}`);
  } finally {
    await s.close();
  }
});

/** The first `metrics` event of a fresh /events connection. */
function firstMetrics(url: string): Promise<{ steps: unknown[]; total: number; evals: unknown[] }> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const req = get(`${url}events`, (res) => {
      res.setEncoding('utf8');
      res.on('data', (x: string) => {
        buf += x;
        const m = /event: metrics\ndata: (.*)\n\n/.exec(buf);
        if (m) {
          req.destroy();
          resolve(JSON.parse(m[1]));
        }
      });
    });
    req.on('error', reject);
  });
}

const line = (step: number, pad = '') => `{"time":"2026-01-01T00:00:00Z","step":${step},"loss":0.5,"terms":{"mcc":1}${pad ? `,"pad":"${pad}"` : ''}}\n`;

test('B2: 150,000 step lines at start and 20 MB appended in one go: the server starts, keeps answering, thins the history', async () => {
  const d = dirs('long');
  let text = '';
  for (let i = 1; i <= 150_000; i++) text += line(i);
  writeFileSync(d.metrics, text);
  const s = await open(d);
  try {
    // Read at most 8 MB a poll: the whole file within a few polls.
    assert.equal((await until(() => state(s), (v) => v.steps === 150_000)).steps, 150_000);
    const hello = await firstMetrics(s.url);
    assert.equal(hello.total, 150_000);
    assert.ok(hello.steps.length <= 4001, `history thinned for the page: ${hello.steps.length}`);
    // 20 MB in one write: 200,000 lines of ~100 bytes.
    const pad = 'p'.repeat(40);
    const parts: string[] = [];
    for (let i = 150_001; i <= 350_000; i++) parts.push(line(i, pad));
    appendFileSync(d.metrics, parts.join(''));
    const last = async () => ({ st: await state(s), last: s.watch.tail.steps.at(-1)?.step });
    const after = await until(last, (v) => v.last === 350_000, 30_000);
    assert.equal(after.last, 350_000, 'every appended line read');
    assert.ok(after.st.steps >= 100_000 && after.st.steps <= 200_000, `steps kept within the bound (200,000, older half thinned): ${after.st.steps}`);
    assert.equal(s.watch.tail.steps[0].step, 1, 'the history still starts at the first step');
    assert.equal((await get200(s.url)).status, 200);
  } finally {
    await s.close();
  }
});

test('B3: a 5000-deep metrics line (at start and appended while running) and an overlong line are skipped; /api/state and the event stream keep answering', async () => {
  const d = dirs('deep');
  const deep = (n: number) => `{"time":"2026-01-01T00:00:00Z","eval":{"x":${'['.repeat(n)}${']'.repeat(n)}}}\n`;
  writeFileSync(d.metrics, line(1) + deep(5000) + `{"eval":{"knn":1,"nested":{"a":[[1]]}}}\n` + line(2));
  const s = await open(d);
  try {
    const st = await state(s);
    assert.equal(st.steps, 2);
    assert.deepEqual(st.evals.map((e: { knn: number }) => e.knn), [1], 'a record of ordinary depth is kept whole');
    const hello = await firstMetrics(s.url);
    assert.equal(hello.total, 2);
    // While running: a deep line, a 2 MB line with no newline yet, its end, and then ordinary lines.
    appendFileSync(d.metrics, deep(5000) + line(3) + `{"step":4,"loss":1,"pad":"${'q'.repeat(2 << 20)}`);
    await until(() => state(s), (v) => v.steps === 3);
    appendFileSync(d.metrics, '"}\n' + line(5));
    const after = await until(() => state(s), (v) => v.steps === 4);
    assert.equal(after.steps, 4, 'the deep line and the overlong one skipped, the others kept');
    const again = await firstMetrics(s.url);
    assert.equal(again.total, 4);
    assert.equal((await get200(s.url)).status, 200);
  } finally {
    await s.close();
  }
});

test('serve: a Host that only starts like a loopback address (127.evil.example) is refused', async () => {
  const d = dirs('host');
  const s = await open(d);
  try {
    for (const h of ['127.evil.example', '127.0.0.1.evil.example', '127.0.0.1evil', 'evil.example']) assert.equal((await get200(s.url, h)).status, 403, h);
    for (const h of ['127.0.0.1', '127.1.2.3', 'localhost']) assert.equal((await get200(s.url, h)).status, 200, h);
  } finally {
    await s.close();
  }
});

test("B2, the page: its history appends a 150,000-point batch without spreading it and thins the older half to its bound; app.js spreads no batch", async () => {
  const { append, thinOlderHalf } = await import(pathToFileURL(path.join(REPO, 'agent/serve/page/history.js')).href);
  const steps: { step: number }[] = [];
  append(steps, Array.from({ length: 150_000 }, (_, i) => ({ step: i + 1 })));
  assert.equal(steps.length, 150_000);
  const kept: { step: number }[] = thinOlderHalf(steps, 20_000);
  assert.ok(kept.length <= 20_000 && kept.length > 10_000, `${kept.length}`);
  assert.equal(kept[0].step, 1);
  assert.equal(kept.at(-1)!.step, 150_000, 'the newest point kept');
  assert.ok(kept.every((p, i) => i === 0 || p.step > kept[i - 1].step), 'in order');
  // The page's own code: no push(...x) of a batch anywhere (the spread that overflowed).
  for (const f of ['app.js', 'history.js']) assert.doesNotMatch(readFileSync(path.join(REPO, 'agent/serve/page', f), 'utf8'), /\.push\(\s*\.\.\./, f);
});
