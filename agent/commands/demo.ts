// `ssocl demo` (npm start): the built-in default. A "camera" replays the demo stream (2,000 CIFAR-10
// images shipped in agent/demo, shuffled) as PNG files into a temporary directory, with one
// corrupt file among them; the agent watches that directory, learns for a while and exports the
// encoder. Everything runs offline on a fresh clone.

import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseCifar10 } from '../../core/codecs/cifar.ts';
import { encodePng } from '../frames/decode.ts';
import { runAgent } from '../run.ts';
import type { EP, EpChoice } from '../trainer/backend.ts';
import { REPO_ROOT } from '../paths.ts';
import { Trainer } from '../trainer/trainer.ts';
import { openEncoder, computeFeatures, type FeatureModel } from '../eval/features.ts';
import { knnWeighted } from '../eval/knn.ts';
import { Rng } from '../../core/rng.ts';
import { agentOutput, shellWord, shownPath } from './terminal.ts';

export interface DemoArgs {
  ep: EP;
  epFallback?: EP;
  threads?: number;
  seconds: number;
  fps: number;
  models: string;
  artifacts: string;
  /** The agent's state (checkpoints, quarantine), kept after the demo so `ssocl serve` can show it; started over each time. */
  state: string;
  /** Seconds between status lines; default 30 without a terminal (as `ssocl run`), never on one. */
  statusEvery?: number;
}

export const DEMO_STREAM = path.join(REPO_ROOT, 'agent/demo/cifar10-demo.bin');

/**
 * Demo images in a seeded random order: two minutes of CPU training sees about 800 frames, and a
 * class-by-class order would show it only four classes. (`ssocl stream` writes the class-incremental
 * streams.)
 */
export function demoStream(): { images: Uint8Array; labels: Uint8Array; order: number[] } {
  const d = parseCifar10(readFileSync(DEMO_STREAM), DEMO_STREAM);
  const order = [...Array(d.count).keys()];
  const rng = new Rng(2024);
  for (let i = order.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  return { images: d.images, labels: d.labels, order };
}

/** Weighted kNN within the demo set (even indices memory, odd queries): exported vs initial encoder. */
async function demoKnn(artifacts: string, exported: string, images: Uint8Array, labels: Uint8Array, choice: EpChoice) {
  const n = labels.length;
  const mem = [...Array(n).keys()].filter((i) => i % 2 === 0);
  const qs = [...Array(n).keys()].filter((i) => i % 2 === 1);
  const acc = async (model: FeatureModel) => {
    const fm = await computeFeatures(model, images, mem, 32);
    const fq = await computeFeatures(model, images, qs, 32);
    const [r] = await knnWeighted({ memory: fm, memoryLabels: mem.map((i) => labels[i]), queries: fq, queryLabels: qs.map((i) => labels[i]), d: model.dim, classes: 10 }, [20]);
    await model.close();
    return r.accuracy;
  };
  const trained = await acc(await openEncoder(exported, 32, choice));
  const tr = await Trainer.open(artifacts, choice);
  const initial = await acc({ dim: tr.manifest.preset.encoder.widths.at(-1)!, run: async (x, c) => (await tr.embed(x, c)).features, close: () => tr.close() });
  return { trained, initial };
}

/** The command that shows what a demo did on the dashboard, with the paths it used. */
export function serveCommandLine(o: { state: string; models: string; metrics: string }): string {
  return ['npx ssocl serve', '--state', shownPath(o.state), '--models', shownPath(o.models), '--metrics', shownPath(o.metrics)].map((w, i) => (i ? shellWord(w) : w)).join(' ');
}

export async function demoCommand(a: DemoArgs): Promise<void> {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-demo-'));
  const frames = path.join(root, 'frames');
  const metrics = path.join(a.models, 'demo-metrics.jsonl');
  const { images, labels, order } = demoStream();
  const { log, progress, statusEveryMs } = agentOutput(a.statusEvery);
  // A demo starts over (the run is --fresh): the last demo's quarantined frame and metric rows would
  // show on the dashboard beside this one's.
  rmSync(path.join(a.state, 'quarantine'), { recursive: true, force: true });
  rmSync(metrics, { force: true });
  // The writer shares the event loop with training, so it reaches --fps only when training leaves room:
  // the summary counts what was written.
  process.stdout.write(`demo: writing CIFAR-10 frames (shuffled, ${order.length} available) at up to ${a.fps} fps into ${frames} while training for ${a.seconds} s\n`);
  const { mkdirSync } = await import('node:fs');
  mkdirSync(frames, { recursive: true });
  let written = 0;
  let stopWriting = false;
  const writer = (async () => {
    for (const [k, i] of order.entries()) {
      if (stopWriting) break;
      const name = `frame-${String(k).padStart(5, '0')}.png`;
      const tmp = path.join(frames, `.${name}.part`);
      writeFileSync(tmp, await encodePng(images.subarray(i * 3072, (i + 1) * 3072), 32));
      renameSync(tmp, path.join(frames, name)); // appears whole, as a careful camera writes
      written++;
      if (k === 40) writeFileSync(path.join(frames, 'frame-corrupt.png'), Buffer.from('\x89PNG\r\n\x1a\n not really a png')); // shows quarantine
      await new Promise((r) => setTimeout(r, 1000 / a.fps));
    }
  })();
  try {
    const s = await runAgent({
      watch: frames,
      recursive: false,
      order: 'name',
      // The frames live in a temporary directory removed at the end: kept there (not held in the state,
      // which outlives the demo) and gone with it.
      afterIngest: 'keep',
      processed: path.join(root, 'processed'),
      quarantine: path.join(a.state, 'quarantine'),
      artifacts: a.artifacts,
      stateDir: a.state,
      // The model line names the demo, not the run's temporary folder.
      lineSource: 'demo',
      models: a.models,
      ep: a.ep,
      epFallback: a.epFallback,
      threads: a.threads,
      fit: 'cover',
      maxPixels: 40_000_000,
      overflow: 'block',
      backlog: 10000,
      stableMs: 100,
      checkpointEvery: { ms: 60_000 },
      exportEvery: { ms: 10 * 60_000 },
      fresh: true,
      metrics,
      maxArrivals: 0,
      maxSeconds: a.seconds,
      exitWhenIdle: 15,
      maxSkips: 10,
      diskRetryMs: 30000,
      learner: {},
      log,
      progress,
      statusEveryMs,
    });
    stopWriting = true;
    await writer;
    const knn = await demoKnn(a.artifacts, path.join(a.models, 'latest.onnx'), images, labels, { ep: a.ep, epFallback: a.epFallback, threads: a.threads, log });
    process.stdout.write(
      `\ndemo done (${s.stoppedBy}): ${written} frames written, ${s.framesIngested} ingested, ${s.quarantined} quarantined; ` +
        `${s.steps} training steps, loss ${s.lossFirst?.toFixed(3)} -> ${s.lossLast?.toFixed(3)}\n` +
        `kNN accuracy on the demo images (even images as memory, odd as queries, k 20): exported ${knn.trained.toFixed(1)}%, initial weights ${knn.initial.toFixed(1)}%, chance 10%\n` +
        `exported encoder: ${path.join(a.models, 'latest.onnx')} (+ latest.json); per-step metrics: ${metrics}; state: ${a.state}\n` +
        `see it on the dashboard: ${serveCommandLine({ state: a.state, models: a.models, metrics })}\n`,
    );
  } finally {
    stopWriting = true;
    await writer;
    rmSync(root, { recursive: true, force: true });
  }
}
