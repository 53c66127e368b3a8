// What the dashboard says about the agent, in a real browser (Debian's chromium, as test/browser.test.ts)
// against `ssocl serve` on folders this test writes: the header follows the agent's status record
// (training -> idle -> stopped, each with its reason; a record whose heartbeat stopped reads "no
// heartbeat"), the connection badge no longer says the agent is live, the "waiting" banner stays away
// from a training agent; the throughput over a time window (the page's own rates.js, no browser
// needed); in-tab training plots each step at its own number, says which step runs, and says so when
// WebGPU was asked for and WASM trains instead.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Page } from 'puppeteer-core';
import { sha256 } from '../core/atomic.ts';
import { serve, type Served } from '../agent/serve/server.ts';
import { chromiumOrSkip, launchChromium, type Launched } from './helpers/browser.ts';
import { demoImage, tinyArtifacts } from './faults/helpers.ts';
import { resizeChw } from '../agent/frames/decode.ts';
import { REPO } from './helpers/paths.ts';

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-dashboard-'));
let browser: Launched | null = null;
let served: Served | null = null;
test.after(async () => {
  await browser?.close();
  await served?.close();
  rmSync(root, { recursive: true, force: true });
});

test("throughput is over a time window: rows 1 ms apart at a run's start do not read as thousands of steps/s", async () => {
  const { rates } = await import(pathToFileURL(path.join(REPO, 'agent/serve/page/rates.js')).href);
  // An agent at 2 steps/s whose steps are logged an arrival (3 steps) at a time, 1 ms apart, 1.5 s between arrivals.
  const rows: { t: number; step: number; frames: number }[] = [];
  for (let a = 0; a < 40; a++) for (let k = 0; k < 3; k++) rows.push({ t: 1_000_000 + a * 1500 + k, step: 3 * a + k + 1, frames: 4 * (a + 1) });
  const r = rates(rows);
  const known = r.sps.filter((v: number | null): v is number => v !== null);
  assert.equal(r.sps[1], null, 'two rows 1 ms apart give no rate');
  assert.ok(known.length > rows.length / 2, `a rate once the rows span the minimum (${known.length} of ${rows.length})`);
  assert.ok(Math.max(...known) < 2.5 && Math.min(...known) > 1.5, `steps/s within 1.5..2.5: ${Math.min(...known)}..${Math.max(...known)}`);
  const fps = r.fps.filter((v: number | null): v is number => v !== null);
  assert.ok(Math.max(...fps) < 3.5 && Math.min(...fps) > 2, `frames/s near 2.67: ${Math.min(...fps)}..${Math.max(...fps)}`);
  // Thinned history (a point a minute): the previous point still gives a rate.
  assert.deepEqual(rates([{ t: 0, step: 0, frames: 0 }, { t: 60_000, step: 120, frames: 240 }]).sps, [null, 2]);
});

/** A status record as `ssocl run` writes it (<state>/status.json), `ageS` seconds old. */
function writeStatus(state: string, o: Record<string, unknown>, ageS = 0): void {
  const rec = {
    schema: 1, pid: 4242, line: 'line-1', phase: 'training', reason: null, exitCode: null, publishing: true, notPublishing: null, step: 42, arrival: 14, frames: 56, pass: null,
    time: new Date(Date.now() - ageS * 1000).toISOString(), heartbeatSeconds: 10, ...o,
  };
  writeFileSync(path.join(state, 'status.json'), JSON.stringify(rec));
}

const stepLine = (step: number) => JSON.stringify({ time: new Date().toISOString(), step, arrival: step, loss: 1 / step, terms: {}, lr: 0.05, ms: 10, cropsPerS: 100, gradNorm: 1, gradCos: 0.1, applied: true, buffer: 12, nnSim: 0.5, frames: 4 * step, mem: { rss: 100, heap: 10 } }) + '\n';

async function open(t: import('node:test').TestContext): Promise<{ page: Page; state: string } | null> {
  const exe = chromiumOrSkip(t);
  if (!exe) return null;
  const state = path.join(root, 'state');
  mkdirSync(state, { recursive: true });
  const metrics = path.join(root, 'metrics.jsonl');
  writeFileSync(metrics, '');
  served ??= await serve({ dirs: { state, models: path.join(root, 'models'), metrics, quarantine: path.join(state, 'quarantine') }, artifacts: tinyArtifacts(path.join(root, 'art')), host: '127.0.0.1', port: 0, timing: { pollMs: 50, bufferMs: 50, quarantineMs: 1000 } });
  browser ??= await launchChromium(exe);
  const page = await browser.newPage();
  await page.goto(served.url, { waitUntil: 'load' });
  return { page, state };
}

const header = (page: Page) => page.evaluate(() => ({ agent: document.getElementById('agent')!.textContent, age: document.getElementById('agent-age')!.textContent, pub: (document.getElementById('agent-pub') as HTMLElement).hidden ? null : document.getElementById('agent-pub')!.textContent, conn: document.getElementById('conn')!.textContent, waiting: (document.getElementById('waiting') as HTMLElement).hidden ? null : document.getElementById('waiting')!.textContent }));

async function headerWith(page: Page, text: string) {
  await page.waitForFunction((s: string) => document.getElementById('agent')!.textContent!.includes(s), { timeout: 10_000 }, text).catch(async () => assert.fail(`header never showed '${text}': ${JSON.stringify(await header(page))}`));
  return header(page);
}

test("the header shows the agent's status record: training, idle (why), stopped (why, exit code), not publishing (why), a stopped heartbeat; 'connected' is the page's link only", async (t) => {
  const o = await open(t);
  if (!o) return;
  const { page, state } = o;
  try {
    let h = await headerWith(page, 'no status record');
    assert.equal(h.conn, 'connected', 'the connection badge names the page-server link');
    assert.match(h.waiting ?? '', /Waiting for the agent/, 'nothing written yet: waiting');

    writeStatus(state, { phase: 'training', step: 42, pass: { index: 2, of: 3, frames: 120, total: 300 } });
    h = await headerWith(page, 'training');
    assert.equal(h.agent, 'training · step 42 · pass 2/3, 120/300 frames');
    assert.match(h.age!, /^status \d+ s old$/);
    assert.equal(h.pub, null);
    assert.equal(h.waiting, null, 'no "waiting for the agent" above a training agent without checkpoints');

    writeStatus(state, { phase: 'idle', reason: 'all 300 frames learnt, waiting for new ones', publishing: false, notPublishing: 'models/latest.onnx belongs to another line (demo)' });
    h = await headerWith(page, 'idle');
    assert.equal(h.agent, 'idle: all 300 frames learnt, waiting for new ones');
    assert.equal(h.pub, 'not publishing: models/latest.onnx belongs to another line (demo)');
    // The same view for scripts: /api/state.
    const api = await (await fetch(`${served!.url}api/state`)).json();
    assert.deepEqual([api.status.phase, api.status.label, api.status.notPublishing, api.status.record.step], ['idle', h.agent, 'models/latest.onnx belongs to another line (demo)', 42]);

    writeStatus(state, { phase: 'stopped', reason: '--max-seconds 85', exitCode: 0 }, 120);
    h = await headerWith(page, 'stopped');
    assert.equal(h.agent, 'stopped: --max-seconds 85 (exit 0)', 'a stopped record is never stale');
    assert.equal(h.age, '2 min ago');
    // Its age is counted to the moment it is asked for, not to when the server read it.
    const ageNow = async () => (await (await fetch(`${served!.url}api/state`)).json()).status.ageMs as number;
    const a0 = await ageNow();
    await new Promise((r) => setTimeout(r, 600));
    assert.ok((await ageNow()) - a0 >= 500, 'the age grows between two requests');
    assert.match(h.waiting ?? '', /Waiting for the agent/, 'a stopped agent with nothing written: the banner is back');

    // Killed without a word: the record says training, but its heartbeat (10 s) stopped 2 minutes ago.
    writeStatus(state, { phase: 'training' }, 125);
    h = await headerWith(page, 'heartbeat');
    assert.equal(h.agent, 'no heartbeat for 2 min (was training)');
    // A fresh record, then time passes without another: it turns stale by itself (heartbeat 0.2 s).
    writeStatus(state, { phase: 'training', step: 50, heartbeatSeconds: 0.2 });
    await headerWith(page, 'training · step 50');
    assert.match((await headerWith(page, 'no heartbeat for')).agent!, /^no heartbeat for \d+ s \(was training\)$/);
    // A damaged file reads as no record, not as an error.
    writeFileSync(path.join(state, 'status.json'), '{"schema":1,"phase":"trai');
    await headerWith(page, 'no status record');

    // Steps in the metrics alone (an agent older than the status record) also mean it is not awaited.
    writeFileSync(path.join(root, 'metrics.jsonl'), stepLine(1) + stepLine(2));
    await page.waitForFunction(() => (window as any).ssocl.state.steps.length === 2, { timeout: 10_000 });
    await page.waitForFunction(() => (document.getElementById('waiting') as HTMLElement).hidden, { timeout: 10_000 });
    assert.deepEqual(browser!.errors, [], 'no errors in the page');
  } finally {
    await page.close();
  }
});

test('in-tab training: the loss chart has each step at its own number, "training step n" shows while a step runs, WebGPU asked for where there is none says it trains on WASM', async (t) => {
  const o = await open(t);
  if (!o) return;
  const { page } = o;
  try {
    await page.waitForFunction(() => (window as any).ssoclTrain, { timeout: 30_000 });
    const opened = await page.evaluate(() => (window as any).ssoclTrain.open('wasm'));
    // What the indicator said, in order.
    await page.evaluate(() => {
      const el = document.getElementById('train-running')!;
      (window as any).said = [];
      // From the records (each text set is one): a callback reading textContent would miss coalesced changes.
      new MutationObserver((recs) => recs.forEach((r) => r.addedNodes.forEach((n) => (window as any).said.push(n.textContent)))).observe(el, { childList: true });
    });
    const size = opened.size as number;
    const steps: number[] = [];
    for (let a = 0; a < 4; a++) {
      const images = await Promise.all(Array.from({ length: opened.perArrival }, (_, k) => resizeChw(demoImage(a * 8 + k), 32, size)));
      const r = await page.evaluate((ims: number[][]) => (window as any).ssoclTrain.arrive(ims), images.map((im) => Array.from(im)));
      steps.push(...r.steps.filter((s: { applied: boolean }) => s.applied).map((s: { step: number }) => s.step));
    }
    assert.ok(steps.length >= 4, `steps were taken (${steps.length})`);
    assert.deepEqual(steps, Array.from({ length: steps.length }, (_, i) => i + 1), 'the steps are 1, 2, 3, ...');
    const xs: number[] = await page.evaluate(() => (window as any).ssoclTrain.losses().map((l: number[]) => l[0]));
    assert.deepEqual(xs, steps, 'each loss at its own step number');
    const said: string[] = await page.evaluate(() => (window as any).said);
    for (const n of steps) assert.ok(said.includes(`training step ${n}…`), `'training step ${n}…' shown (said: ${said.join(' | ')})`);
    assert.equal(await page.evaluate(() => (document.getElementById('train-running') as HTMLElement).hidden), true, 'hidden once the arrival is done');

    // WebGPU asked for in a browser without it: WASM, and a line says so.
    const fell = await page.evaluate(async () => {
      Object.defineProperty(Navigator.prototype, 'gpu', { value: undefined, configurable: true });
      const r = await (window as any).ssoclTrain.open('webgpu');
      const el = document.getElementById('train-note') as HTMLElement;
      return { ep: r.ep, note: el.hidden ? null : el.textContent };
    });
    assert.deepEqual(fell, { ep: 'wasm', note: 'WebGPU is not available in this browser (no navigator.gpu): training on WASM instead' });
    assert.deepEqual(browser!.errors, [], 'no errors in the page');
  } finally {
    await page.close();
  }
});

test("the model panel lists the same step's versions of two model lines (encoder-<step>.onnx and encoder-<step>-<line>.onnx), each with its line", async (t) => {
  const o = await open(t);
  if (!o) return;
  const { page } = o;
  try {
    const models = path.join(root, 'models');
    mkdirSync(models, { recursive: true });
    const bytes = readFileSync(path.join(REPO, 'test/fixtures/edge-demo-step141.onnx'));
    const record = (file: string, line: string, status: string) => ({ file, step: 5, framesSeen: 40, loss: 1, time: '2026-01-01T00:00:00.000Z', sha256: sha256(bytes), status, line });
    // Two lines (two states or sources) both reached step 5: the second's export took its line's name.
    for (const [file, line, status] of [['encoder-000000005.onnx', 'aaa111', 'published'], ['encoder-000000005-bbb222.onnx', 'bbb222', 'rejected']]) {
      writeFileSync(path.join(models, file), bytes);
      writeFileSync(path.join(models, file.replace(/\.onnx$/, '.json')), JSON.stringify(record(file, line, status)));
    }
    writeFileSync(path.join(models, 'latest.onnx'), bytes);
    writeFileSync(path.join(models, 'latest.json'), JSON.stringify(record('encoder-000000005.onnx', 'aaa111', 'published')));
    await page.waitForFunction(() => document.querySelectorAll('#versions tr').length === 2, { timeout: 10_000 });
    const rows = await page.evaluate(() => [...document.querySelectorAll('#versions tr')].map((r) => [...r.querySelectorAll('td')].slice(0, 3).map((c) => c.textContent)));
    assert.deepEqual(rows.sort(), [['encoder-000000005-bbb222.onnx', 'line bbb222', 'rejected'], ['encoder-000000005.onnx', 'line aaa111', 'published']]);
    const api = await (await fetch(`${served!.url}api/state`)).json();
    assert.deepEqual(api.model.versions.map((v: { file: string; line: string }) => `${v.file} ${v.line}`).sort(), ['encoder-000000005-bbb222.onnx bbb222', 'encoder-000000005.onnx aaa111']);
    assert.deepEqual(browser!.errors, [], 'no errors in the page');
  } finally {
    await page.close();
  }
});
