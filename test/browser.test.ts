// The dashboard in a real browser (Debian's chromium through puppeteer-core, headless): opened before
// the agent starts, its charts fill from server-sent events while `ssocl run --dataset demo` trains
// tiny artifacts; the page's onnxruntime-web encoder gives Node's features (agent/infer/encoder.ts) for
// the same input tensor; an image given to the page finds its nearest buffer images; a screenshot is
// saved and is not blank; the webcam path runs on chromium's fake camera; the page's WebGPU path
// (SwiftShader) agrees with Node too. Without chromium: fails under CI, skips elsewhere, saying why.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { sha256 } from '../core/atomic.ts';
import { Rng } from '../core/rng.ts';
import { encodePng } from '../agent/frames/decode.ts';
import { Encoder } from '../agent/infer/encoder.ts';
import { serve } from '../agent/serve/server.ts';
import { chromiumOrSkip, launchChromium } from './helpers/browser.ts';
import { startAgent, tinyArtifacts } from './faults/helpers.ts';
import { REPO } from './helpers/paths.ts';

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-browser-'));
test.after(() => rmSync(root, { recursive: true, force: true }));

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
  const served = await serve({ dirs: { state, models, metrics, quarantine: path.join(state, 'quarantine') }, host: '127.0.0.1', port: 0, timing: { pollMs: 100, bufferMs: 300, quarantineMs: 1000 } });
  // A fake camera that needs no permission prompt, for the webcam path.
  const browser = await launchChromium(exe, ['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream']);
  let agent: ReturnType<typeof startAgent> | null = null;
  try {
    const page = await browser.newPage();
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
    await page.waitForFunction((sha: string) => (window as any).ssocl.model.sha === sha && (window as any).ssocl.state.buffer?.step >= 0, { timeout: 30_000 }, latest.sha256);
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

    const shot = await page.screenshot({ fullPage: true });
    writeFileSync(path.join(root, 'dashboard.png'), shot);
    if (process.env.SSOCL_UPDATE_SCREENSHOT) {
      mkdirSync(path.join(REPO, 'docs'), { recursive: true });
      copyFileSync(path.join(root, 'dashboard.png'), path.join(REPO, 'docs/dashboard.png'));
    }
    const v = await variance(shot);
    lap(`screenshot ${path.join(root, 'dashboard.png')} (pixel variance ${v.toFixed(0)})`);
    assert.ok(v > 100, `screenshot looks blank (pixel variance ${v})`);
    assert.deepEqual(browser.errors, [], 'no errors in the page');
  } finally {
    if (agent && agent.child.exitCode === null) {
      agent.child.kill('SIGKILL');
      await agent.exit;
    }
    await browser.close();
    await served.close();
  }
});

test("the page's WebGPU path (?ep=webgpu; SwiftShader here): the same features as Node within 1e-4, or WASM when WebGPU does not start", async (t) => {
  const exe = chromiumOrSkip(t);
  if (!exe) return;
  const models = path.join(root, 'models');
  if (!existsSync(path.join(models, 'latest.onnx'))) return void t.skip('needs the model the first test exported');
  const t0 = Date.now();
  const served = await serve({ dirs: { state: path.join(root, 'state'), models, quarantine: path.join(root, 'state/quarantine') }, host: '127.0.0.1', port: 0, timing: { pollMs: 200, bufferMs: 1000, quarantineMs: 1000 } });
  const browser = await launchChromium(exe);
  try {
    const page = await browser.newPage();
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
    await browser.close();
    await served.close();
  }
});
