// `ssocl demo` (npm start): the built-in default. A "camera" replays the demo stream (2,000 CIFAR-10
// images shipped in agent/demo, class by class) as PNG files into a temporary directory, with one
// corrupt file among them; the agent watches that directory, learns for a while and exports the
// encoder. Everything runs offline on a fresh clone.

import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseCifar10 } from '../../tools/data/cifar.ts';
import { encodePng } from '../frames/decode.ts';
import { runAgent } from '../run.ts';
import type { EP } from '../trainer/backend.ts';
import { REPO_ROOT } from '../paths.ts';

export interface DemoArgs {
  ep: EP;
  epFallback?: EP;
  threads?: number;
  seconds: number;
  fps: number;
  models: string;
  artifacts: string;
}

export const DEMO_STREAM = path.join(REPO_ROOT, 'agent/demo/cifar10-demo.bin');

/** Demo images in class order (a class-incremental stream), stable within a class. */
export function demoStream(): { images: Uint8Array; labels: Uint8Array; order: number[] } {
  const d = parseCifar10(readFileSync(DEMO_STREAM), DEMO_STREAM);
  const order = [...Array(d.count).keys()].sort((a, b) => d.labels[a] - d.labels[b] || a - b);
  return { images: d.images, labels: d.labels, order };
}

export async function demoCommand(a: DemoArgs): Promise<void> {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-demo-'));
  const frames = path.join(root, 'frames');
  const { images, order } = demoStream();
  const log = (s: string) => process.stderr.write(`${s}\n`);
  process.stdout.write(`demo: writing ${order.length} CIFAR-10 frames (class by class) at ${a.fps} fps into ${frames}; training for ${a.seconds} s\n`);
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
      afterIngest: 'delete',
      processed: path.join(root, 'processed'),
      quarantine: path.join(root, 'quarantine'),
      artifacts: a.artifacts,
      stateDir: path.join(root, 'state'),
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
      metrics: path.join(root, 'metrics.jsonl'),
      maxArrivals: 0,
      maxSeconds: a.seconds,
      exitWhenIdle: 15,
      maxSkips: 10,
      learner: {},
      log,
      progress: process.stderr.isTTY ? (l) => process.stderr.write(`\r\x1b[K${l}`) : undefined,
    });
    stopWriting = true;
    await writer;
    process.stdout.write(
      `\ndemo done (${s.stoppedBy}): ${written} frames written, ${s.framesIngested} ingested, ${s.quarantined} quarantined; ` +
        `${s.steps} training steps, loss ${s.lossFirst?.toFixed(3)} -> ${s.lossLast?.toFixed(3)}\n` +
        `exported encoder: ${path.join(a.models, 'latest.onnx')} (+ latest.json); per-step metrics were in ${path.join(root, 'metrics.jsonl')}\n`,
    );
  } finally {
    stopWriting = true;
    await writer;
    rmSync(root, { recursive: true, force: true });
  }
}
