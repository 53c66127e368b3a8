// The dashboard and the in-tab training on an imported model (test/helpers/byom.ts: a tiny
// torchvision-style classifier through `ssocl artifacts --from-onnx` and `ssocl run --watch`), in
// Debian's chromium: the page loads the published export (its own interface, input 'input', output
// 'logits') as an ssocl encoder and embeds as Node does; the tab's Trainer opens the imported artifacts
// and one step gives Node's loss and state; the tab's download is the source model with the page's
// weights. Without chromium: fails under CI, skips elsewhere, saying why.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { sha256 } from '../core/atomic.ts';
import { decodeModel } from '../core/onnx/decode.ts';
import { Rng } from '../core/rng.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { Encoder } from '../agent/infer/encoder.ts';
import { serve } from '../agent/serve/server.ts';
import { chromiumOrSkip, launchChromium } from './helpers/browser.ts';
import { BYOM_SIZE, BYOM_WIDTH, importedRun } from './helpers/byom.ts';

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-browser-byom-'));
after(() => rmSync(root, { recursive: true, force: true }));

test("imported model in the tab: the page embeds the published export as Node does (1e-5), one in-tab step on the imported artifacts gives Node's loss and state (1e-4), the download keeps the source's interface", async (t) => {
  const exe = chromiumOrSkip(t);
  if (!exe) return;
  const t0 = Date.now();
  const lap = (what: string) => process.stdout.write(`# ${what}: ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  const run = await importedRun(root);
  lap('imported and trained by the CLI');
  const served = await serve({ dirs: { state: run.state, models: run.models, metrics: path.join(root, 'none.jsonl'), quarantine: path.join(run.state, 'quarantine') }, artifacts: run.art, host: '127.0.0.1', port: 0, timing: { pollMs: 100, bufferMs: 300, quarantineMs: 1000 } });
  const browser = await launchChromium(exe).catch(async (e) => {
    await served.close();
    throw e;
  });
  try {
    const page = await browser.newPage();
    await page.goto(served.url, { waitUntil: 'load' });
    const latest = JSON.parse(readFileSync(path.join(run.models, 'latest.json'), 'utf8'));
    await page.waitForFunction((sha: string) => (window as any).ssocl?.model.session && (window as any).ssocl.model.sha === sha, { timeout: 60_000, polling: 200 }, latest.sha256);
    lap('page loaded the published export');
    const shown = await page.evaluate(() => document.querySelector('#model-body')?.textContent ?? '');
    assert.match(shown, new RegExp(`${BYOM_SIZE}x${BYOM_SIZE}, ${BYOM_WIDTH} features`), 'the model panel reads the export as an encoder');

    // The page's features of the published model against Node's Encoder on the same tensor.
    const rng = new Rng(5);
    const x = Float32Array.from({ length: 3 * 3 * BYOM_SIZE * BYOM_SIZE }, () => rng.uniform());
    const got: number[] = await page.evaluate(async (arr: number[]) => Array.from((await (window as any).ssocl.embed(new Float32Array(arr), 3)).features as Float32Array), Array.from(x));
    const enc = await Encoder.open(path.join(run.models, 'latest.onnx'));
    const want = await enc.run(x, 3);
    await enc.release();
    assert.equal(got.length, 3 * BYOM_WIDTH);
    const dEmbed = Math.max(...want.map((v, i) => Math.abs(v - got[i])));
    lap(`page vs Node features ${dEmbed.toExponential(2)}`);
    assert.ok(dEmbed <= 1e-5, `page features differ from Node's by ${dEmbed}`);

    // One step of the tab's Trainer on the imported artifacts against Node's on the same crops.
    await page.waitForFunction(() => (window as any).ssoclTrain, { timeout: 30_000 });
    const opened = await page.evaluate(() => (window as any).ssoclTrain.open('wasm'));
    assert.deepEqual([opened.ep, opened.size], ['wasm', BYOM_SIZE]);
    const node = await Trainer.open(run.art, { ep: 'cpu' });
    try {
      const crops = Float32Array.from({ length: node.cropsShape.reduce((a, b) => a * b, 1) }, () => rng.uniform());
      const stepped = await node.step(crops, 0.05);
      const tab = await page.evaluate((c: number[]) => (window as any).ssoclTrain.step(c, 0.05), Array.from(crops));
      let dState = 0;
      for (const [k, v] of node.state) {
        assert.equal(tab.state[k]?.length, v.length, k);
        for (let i = 0; i < v.length; i++) dState = Math.max(dState, Math.abs(v[i] - tab.state[k][i]));
      }
      const dLoss = Math.abs(tab.loss - stepped.loss);
      lap(`one step: loss ${stepped.loss.toFixed(6)} (tab - Node ${dLoss.toExponential(2)}), state ${dState.toExponential(2)} over ${node.state.size} tensors`);
      assert.ok(stepped.applied && tab.applied && Number.isFinite(tab.loss));
      assert.ok(dLoss <= 1e-4 && dState <= 1e-4, `loss differs by ${dLoss}, state by ${dState}`);

      // The tab's download: the source model (its interface and metadata) with the tab's weights.
      const bytes = Uint8Array.from(await page.evaluate(() => (window as any).ssoclTrain.encoder()));
      const src = decodeModel(readFileSync(run.source));
      const out = decodeModel(bytes);
      assert.deepEqual([out.graph.inputs, out.graph.outputs, out.opsets], [src.graph.inputs, src.graph.outputs, src.opsets], 'the source\'s interface');
      assert.equal(out.metadata['app.name'], 'tiny-byom');
      assert.deepEqual([out.metadata['ssocl.step'], out.metadata['ssocl.trained_in']], ['1', 'browser']);
      const fromTab = await Encoder.fromBytes('browser.onnx', bytes);
      const y = Float32Array.from({ length: 2 * 3 * BYOM_SIZE * BYOM_SIZE }, () => rng.uniform());
      const fTab = await fromTab.run(y, 2);
      await fromTab.release();
      const fNode = (await node.embed(y, 2)).features;
      assert.ok(Math.max(...fTab.map((v, i) => Math.abs(v - fNode[i]))) <= 1e-4, 'the download computes what the Node trainer does after the same step');
      assert.notEqual(sha256(bytes), latest.sha256);
    } finally {
      await node.close();
    }
    assert.deepEqual(browser.errors, [], 'no errors in the page');
  } finally {
    await browser.close();
    await served.close();
  }
});
