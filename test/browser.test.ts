// The dashboard in a real browser (Debian's chromium through puppeteer-core, headless): opened before
// the agent starts, its charts fill from server-sent events while `ssocl run --dataset demo` trains
// tiny artifacts; the page's onnxruntime-web encoder gives Node's features (agent/infer/encoder.ts) for
// the same input tensor; an image given to the page finds its nearest buffer images; a screenshot is
// saved and is not blank; the webcam path runs on chromium's fake camera; the page's WebGPU path
// (SwiftShader) agrees with Node too. Without chromium: fails under CI, skips elsewhere, saying why.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { sha256 } from '../core/atomic.ts';
import { Rng } from '../core/rng.ts';
import { encodePng, resizeChw } from '../agent/frames/decode.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { Learner, defaultLearnerConfig } from '../agent/trainer/learner.ts';
import { Encoder } from '../agent/infer/encoder.ts';
import { serve, type Served } from '../agent/serve/server.ts';
import { chromiumOrSkip, launchChromium, type Launched } from './helpers/browser.ts';
import type { Page } from 'puppeteer-core';
import { demoImage, startAgent, tinyArtifacts } from './faults/helpers.ts';

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-browser-'));

// One browser, server and dashboard page for the file (each chromium start and onnxruntime-web load
// costs seconds on 2 cores): the first test opens them, the later ones use them when it got that far.
let ctx: { browser: Launched; served: Served; page: Page; art: string; models: string } | null = null;
test.after(async () => {
  await ctx?.browser.close();
  await ctx?.served.close();
  rmSync(root, { recursive: true, force: true });
});

/** Pixel variance of a PNG (all channels): near 0 for a blank or single-colour page. */
async function variance(png: Uint8Array): Promise<number> {
  const { data } = await sharp(png).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  let s = 0;
  let s2 = 0;
  for (const v of data) {
    s += v;
    s2 += v * v;
  }
  const m = s / data.length;
  return s2 / data.length - m * m;
}

test('dashboard in chromium: live charts from a running agent, the page embeds as Node does (1e-5), nearest buffer images, a non-blank screenshot', async (t) => {
  const exe = chromiumOrSkip(t);
  if (!exe) return;
  const t0 = Date.now();
  const lap = (what: string) => process.stdout.write(`# ${what}: ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  const art = tinyArtifacts(path.join(root, 'art'));
  const state = path.join(root, 'state');
  const models = path.join(root, 'models');
  const metrics = path.join(root, 'metrics.jsonl');
  const served = await serve({ dirs: { state, models, metrics, quarantine: path.join(state, 'quarantine') }, artifacts: art, host: '127.0.0.1', port: 0, timing: { pollMs: 100, bufferMs: 300, quarantineMs: 1000 } });
  // A fake camera that needs no permission prompt, for the webcam path.
  const browser = await launchChromium(exe, ['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream']).catch(async (e) => {
    await served.close();
    throw e;
  });
  const page = await browser.newPage();
  ctx = { browser, served, page, art, models };
  let agent: ReturnType<typeof startAgent> | null = null;
  try {
    await page.setViewport({ width: 1400, height: 1700 });
    await page.goto(served.url, { waitUntil: 'load' });
    await page.waitForFunction(() => (window as any).ssocl?.state.presence, { timeout: 30_000 });
    assert.equal(await page.evaluate(() => (window as any).ssocl.state.steps.length), 0, 'nothing before the agent starts');
    lap('page loaded');

    // Everything the charts show from here on came over the event stream.
    agent = startAgent(['--dataset', 'demo', '--artifacts', art, '--state', state, '--models', models, '--metrics', metrics, '--checkpoint-every', '20', '--export-every', '40', '--health-frames', '16']);
    await page.waitForFunction(
      () => {
        const s = (window as any).ssocl;
        return s.state.steps.length >= 60 && s.charts.loss.plot?.data[0].length >= 60 && s.charts.rate.plot && s.state.buffer?.images && s.state.health.length > 0 && s.model.session;
      },
      { timeout: 60_000, polling: 200 },
    );
    const live = await page.evaluate(() => {
      const s = (window as any).ssocl;
      return { steps: s.state.steps.length, loss: s.charts.loss.plot.data[1].filter((v: unknown) => typeof v === 'number').length, terms: s.charts.terms.plot.series.length - 1, thumbs: document.querySelectorAll('#b-grid canvas').length, events: s.state.events };
    });
    lap(`charts live (${JSON.stringify(live)})`);
    assert.ok(live.loss >= 60 && live.terms >= 2 && live.thumbs >= 4, JSON.stringify(live));
    // A few more steps arrive while the page is open.
    const before = live.steps;
    await page.waitForFunction((n: number) => (window as any).ssocl.state.steps.length > n, { timeout: 30_000 }, before);

    // Stop the agent (it checkpoints and exports on the way out); the page picks up the final model.
    agent.child.kill('SIGTERM');
    const ended = await agent.exit;
    assert.equal(ended.code, 0, agent.stderr());
    const latest = JSON.parse(readFileSync(path.join(models, 'latest.json'), 'utf8'));
    // The final buffer too (the final checkpoint's, at the export's step): a buffer read from an earlier
    // checkpoint could be replaced under the query below, taking the queried image out of it.
    await page.waitForFunction(
      (sha: string, step: number) => (window as any).ssocl.model.sha === sha && (window as any).ssocl.state.buffer?.step === step && !!(window as any).ssocl.state.buffer?.images,
      { timeout: 30_000 },
      latest.sha256,
      latest.step,
    );
    lap('agent stopped, final model in the page');

    // The same float tensor through the page's onnxruntime-web and through Node's Encoder.
    const size: number = await page.evaluate(() => (window as any).ssocl.model.size);
    const count = 5;
    const rng = new Rng(3);
    const x = Float32Array.from({ length: count * 3 * size * size }, () => rng.uniform());
    const got = await page.evaluate(async (arr: number[], n: number) => {
      const r = await (window as any).ssocl.embed(new Float32Array(arr), n);
      return { features: Array.from(r.features as Float32Array), sha: r.sha };
    }, Array.from(x), count);
    const bytes = readFileSync(path.join(models, 'latest.onnx'));
    assert.equal(got.sha, sha256(bytes), 'the page ran the model Node runs');
    const enc = await Encoder.fromBytes('latest.onnx', bytes);
    const want = await enc.run(x, count);
    await enc.release();
    assert.equal(got.features.length, want.length);
    let maxDiff = 0;
    for (let i = 0; i < want.length; i++) maxDiff = Math.max(maxDiff, Math.abs(got.features[i] - want[i]));
    lap(`page vs Node features: max |diff| ${maxDiff.toExponential(2)} over ${want.length} values`);
    assert.ok(maxDiff <= 1e-5, `page features differ from Node's by ${maxDiff}`);

    // A buffer image given to the page as a file (at its own size: preprocessing is then the identity)
    // finds itself first, at cosine 1.
    const buf = await page.evaluate(() => {
      const b = (window as any).ssocl.state.buffer;
      return { size: b.size, count: b.entries.length, first: Array.from((b.images as Uint8Array).subarray(3 * b.size * b.size * 2, 3 * b.size * b.size * 3)) };
    });
    const file = path.join(root, 'query.png');
    writeFileSync(file, await encodePng(Uint8Array.from(buf.first), buf.size));
    const input = await page.$('input#file');
    await input!.uploadFile(file);
    await page.waitForFunction(() => document.querySelectorAll('#nearest .hit').length > 0, { timeout: 30_000 });
    const hits = await page.evaluate(() => [...document.querySelectorAll('#nearest .hit span')].map((s) => Number(s.textContent)));
    assert.equal(hits.length, Math.min(8, buf.count));
    assert.ok(Math.abs(hits[0] - 1) < 1e-3, `the image itself first, at cosine 1: ${hits.join(', ')}`);
    assert.deepEqual(hits, [...hits].sort((a, b) => b - a), 'nearest first');
    lap('nearest buffer images shown');

    // The webcam (chromium's fake camera: a moving test pattern) is embedded frame after frame.
    await page.evaluate(() => (document.querySelector('#nearest') as HTMLElement).replaceChildren());
    await page.click('#webcam');
    await page.waitForFunction(() => document.querySelectorAll('#nearest .hit').length > 0 && !(document.querySelector('#video') as HTMLVideoElement).hidden, { timeout: 30_000 });
    await page.click('#webcam');
    lap('webcam frames embedded');

    // Back to the top: the clicks above scrolled, and the sticky header would be drawn where the view was.
    await page.evaluate(() => window.scrollTo(0, 0));
    const shot = await page.screenshot({ fullPage: true });
    // Not README's picture (16 px fixture images): bench/dashboard-shot.ts takes that one from a real run.
    writeFileSync(path.join(root, 'dashboard.png'), shot);
    const v = await variance(shot);
    lap(`screenshot ${path.join(root, 'dashboard.png')} (pixel variance ${v.toFixed(0)})`);
    assert.ok(v > 100, `screenshot looks blank (pixel variance ${v})`);
    assert.deepEqual(browser.errors, [], 'no errors in the page');
  } finally {
    if (agent && agent.child.exitCode === null) {
      agent.child.kill('SIGKILL');
      await agent.exit;
    }
  }
});

test("training in the tab: the agent's Trainer and Learner bundled for the page give Node's loss and updated tensors (1e-4), one step and whole arrivals", async (t) => {
  if (!chromiumOrSkip(t)) return;
  if (!ctx) return void t.skip('needs the browser of the first test');
  const { browser, page, art } = ctx;
  const t0 = Date.now();
  {
    // The dashboard page of the first test: its onnxruntime-web is already loaded.
    await page.waitForFunction(() => (window as any).ssoclTrain, { timeout: 30_000 });
    const opened = await page.evaluate(() => (window as any).ssoclTrain.open('wasm'));
    assert.equal(opened.ep, 'wasm');

    // One step on fixed crops.
    const node = await Trainer.open(art, { ep: 'cpu' });
    const rng = new Rng(11);
    const crops = Float32Array.from({ length: node.cropsShape.reduce((a, b) => a * b, 1) }, () => rng.uniform());
    const want = await node.step(crops, 0.05);
    const got = await page.evaluate((c: number[]) => (window as any).ssoclTrain.step(c, 0.05), Array.from(crops));
    const worst = (a: Map<string, Float32Array>, b: Record<string, number[]>) => {
      let m = 0;
      for (const [k, v] of a) {
        assert.equal(b[k]?.length, v.length, k);
        for (let i = 0; i < v.length; i++) m = Math.max(m, Math.abs(v[i] - b[k][i]));
      }
      return m;
    };
    const dLoss = Math.abs(got.loss - want.loss);
    const dState = worst(node.state, got.state);
    process.stdout.write(`# one step: loss ${want.loss.toFixed(6)} (page - Node ${dLoss.toExponential(2)}), state max |diff| ${dState.toExponential(2)} over ${node.state.size} tensors\n`);
    assert.ok(got.applied && want.applied);
    assert.ok(dLoss <= 1e-4 && dState <= 1e-4, `loss differs by ${dLoss}, state by ${dState}`);
    for (const [k, v] of Object.entries(want.terms)) assert.ok(Math.abs(got.terms[k] - v) <= 1e-4, `term ${k}`);

    // Three arrivals through the Learner on both sides: the same replay draws, crops and buffer (shared
    // code). Against Node on the same runtime (onnxruntime-web's wasm EP, as the agent's --ep wasm runs
    // it): this tiny network amplifies the last-bit differences between the CPU and WASM kernels (1e-6
    // after the first arrival's steps, 3e-3 in the momentum after the next two, whichever side runs WASM).
    await page.evaluate(() => (window as any).ssoclTrain.open('wasm'));
    const nodeT = await Trainer.open(art, { ep: 'wasm' });
    const learner = new Learner(nodeT, defaultLearnerConfig(nodeT));
    const per = nodeT.manifest.preset.agent.newPerArrival;
    const size = nodeT.manifest.preset.image.size;
    const frames = await Promise.all(Array.from({ length: 3 * per }, (_, k) => resizeChw(demoImage(k), 32, size)));
    const nodeLosses: number[] = [];
    const pageLosses: number[] = [];
    for (let a = 0; a < 3; a++) {
      const batch = frames.slice(a * per, (a + 1) * per);
      const r = await learner.arrive(batch.map((image, i) => ({ key: `test-${i}`, image })));
      nodeLosses.push(...r.steps.map((s) => s.loss));
      const pr = await page.evaluate((ims: number[][]) => (window as any).ssoclTrain.arrive(ims), batch.map((b) => Array.from(b)));
      pageLosses.push(...pr.steps.map((s: { loss: number }) => s.loss));
      assert.equal(pr.buffer, learner.buffer.size, `buffer after arrival ${a + 1}`);
    }
    const arrState = worst(nodeT.state, await page.evaluate(() => (window as any).ssoclTrain.state()));
    const arrLoss = Math.max(...nodeLosses.map((l, i) => Math.abs(l - pageLosses[i])));
    process.stdout.write(`# 3 arrivals, ${nodeLosses.length} steps: losses max |diff| ${arrLoss.toExponential(2)}, state ${arrState.toExponential(2)}; ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
    assert.ok(nodeLosses.length >= 2, `steps were taken (${nodeLosses.length})`);
    assert.equal(pageLosses.length, nodeLosses.length);
    assert.ok(arrLoss <= 1e-4 && arrState <= 1e-4, `arrivals: losses differ by ${arrLoss}, state by ${arrState}`);

    // The panel's own path: image files given to it make an arrival (preprocessed as the agent's frames).
    const pngs = await Promise.all(frames.slice(0, per).map(async (im, i) => {
      const f = path.join(root, `train-${i}.png`);
      writeFileSync(f, await encodePng(im, size));
      return f;
    }));
    const stepsBefore = nodeT.steps;
    await (await page.$('input#train-files'))!.uploadFile(...pngs);
    await page.waitForFunction((n: number) => (document.querySelector('#train-download') as HTMLAnchorElement).download === `encoder-browser-${n}.onnx`, { timeout: 30_000 }, stepsBefore + nodeT.manifest.preset.agent.updatesPerArrival);
    await learner.arrive(frames.slice(0, per).map((image, i) => ({ key: `train-${i}.png`, image })));

    // The downloadable encoder is an ssocl encoder Node loads, with the page's weights.
    const bytes = Uint8Array.from(await page.evaluate(() => (window as any).ssoclTrain.encoder()));
    const enc = await Encoder.fromBytes('browser.onnx', bytes);
    assert.equal(enc.version.step, nodeT.steps);
    const x = Float32Array.from({ length: 2 * 3 * size * size }, () => rng.uniform());
    const fPage = await enc.run(x, 2);
    const fNode = (await nodeT.embed(x, 2)).features;
    await enc.release();
    assert.ok(Math.max(...fPage.map((v, i) => Math.abs(v - fNode[i]))) <= 1e-4, 'exported encoder agrees with the Node trainer');
    assert.deepEqual(browser.errors, [], 'no errors in the page');
  }
});

test("the page's WebGPU path (?ep=webgpu; SwiftShader here): the same features as Node within 1e-4, or WASM when WebGPU does not start", async (t) => {
  if (!chromiumOrSkip(t)) return;
  if (!ctx || !existsSync(path.join(ctx.models, 'latest.onnx'))) return void t.skip('needs the browser and the model of the first test');
  const { browser, served, models } = ctx;
  const t0 = Date.now();
  const page = await browser.newPage();
  try {
    await page.goto(`${served.url}?ep=webgpu`, { waitUntil: 'load' });
    // Loading the WebGPU build and compiling its shaders on a CPU Vulkan takes a while.
    await page.waitForFunction(() => (window as any).ssocl?.model.session, { timeout: 120_000, polling: 500 });
    const ep: string = await page.evaluate(() => (window as any).ssocl.model.ep);
    const size: number = await page.evaluate(() => (window as any).ssocl.model.size);
    const rng = new Rng(4);
    const x = Float32Array.from({ length: 3 * 3 * size * size }, () => rng.uniform());
    const got: number[] = await page.evaluate(async (arr: number[]) => Array.from((await (window as any).ssocl.embed(new Float32Array(arr), 3)).features as Float32Array), Array.from(x));
    const enc = await Encoder.open(path.join(models, 'latest.onnx'));
    const want = await enc.run(x, 3);
    await enc.release();
    let maxDiff = 0;
    for (let i = 0; i < want.length; i++) maxDiff = Math.max(maxDiff, Math.abs(got[i] - want[i]));
    process.stdout.write(`# page on ${ep}${ep === 'webgpu' ? '' : ' (WebGPU did not start: the page fell back)'}: max |diff| vs Node ${maxDiff.toExponential(2)}, ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
    assert.ok(maxDiff <= (ep === 'webgpu' ? 1e-4 : 1e-5), `page (${ep}) features differ from Node's by ${maxDiff}`);
    assert.deepEqual(browser.errors, [], 'no errors in the page');
  } finally {
    await page.close();
  }
});
