// `ssocl run`: validate the flags, run the agent, print a summary.

import path from 'node:path';
import { runAgent, parseEvery, AgentError, type AgentOptions } from '../run.ts';
import type { EP } from '../trainer/backend.ts';
import { demoStream } from './demo.ts';
import { streamOrder } from './stream.ts';

export async function runCommand(a: Record<string, any>): Promise<void> {
  const state = path.resolve(a.state);
  const positive = (flag: string, v: number | undefined) => {
    if (v !== undefined && !(Number.isFinite(v) && v > 0)) throw new AgentError(`--${flag} ${v}: must be a positive number`);
  };
  positive('updates', a.updates);
  positive('buffer-size', a['buffer-size']);
  positive('lr', a.lr);
  positive('max-pixels', a['max-pixels']);
  positive('backlog', a.backlog);
  const tty = process.stderr.isTTY;
  let dataset: AgentOptions['dataset'];
  if (a.dataset === 'demo') {
    const d = demoStream();
    dataset = { label: 'demo', images: d.images, order: d.order };
  } else if (a.dataset) {
    const d = streamOrder({ dataset: a.dataset, dataDir: a['data-dir'], order: a['stream-order'], trial: a.trial });
    dataset = { label: `${a.dataset} ${a['stream-order']} trial ${a.trial}`, images: d.data.images, order: d.order };
  }
  const opts: AgentOptions = {
    watch: a.watch,
    camera: a.camera ? { input: a.camera, fps: a.fps, captureSize: a.size, ffmpeg: a.ffmpeg, stallMs: a['stall-s'] * 1000 } : undefined,
    dataset,
    recursive: a.recursive,
    order: a.order,
    afterIngest: a['after-ingest'],
    processed: path.resolve(a.processed ?? path.join(state, 'processed')),
    quarantine: path.resolve(a.quarantine ?? path.join(state, 'quarantine')),
    artifacts: path.resolve(a.artifacts),
    stateDir: state,
    models: path.resolve(a.models),
    ep: a.ep as EP,
    epFallback: a['ep-fallback'] as EP | undefined,
    threads: a.threads,
    fit: a.fit,
    maxPixels: a['max-pixels'],
    overflow: a.overflow,
    backlog: a.backlog,
    stableMs: a['stable-ms'],
    checkpointEvery: parseEvery('--checkpoint-every', a['checkpoint-every']),
    exportEvery: parseEvery('--export-every', a['export-every']),
    fresh: a.fresh,
    metrics: a.metrics,
    emitEmbeddings: a['emit-embeddings'],
    maxArrivals: a['max-arrivals'],
    maxSeconds: a['max-seconds'],
    exitWhenIdle: a['exit-when-idle'],
    maxSkips: a['max-skips'],
    diskRetryMs: a['disk-retry-s'] * 1000,
    learner: {
      updates: a.updates,
      replay: a.replay,
      bufferSize: a['buffer-size'],
      policy: a.buffer,
      lr: a.lr,
      schedule: a['lr-schedule'],
      scheduleSteps: a['lr-steps'],
      seed: a.seed,
    },
    log: (line) => process.stderr.write(`${tty ? '\r\x1b[K' : ''}${line}\n`),
    progress: tty ? (line) => process.stderr.write(`\r\x1b[K${line}`) : undefined,
  };
  const s = await runAgent(opts);
  process.stdout.write(
    `${tty ? '\n' : ''}stopped (${s.stoppedBy}): ${s.framesIngested} frames ingested, ${s.quarantined} quarantined, ${s.dropped} dropped, ${s.refused} refused; ` +
      `${s.arrivals} arrivals, ${s.steps} steps (${s.skippedSteps} skipped); loss ${s.lossFirst?.toFixed(4) ?? '-'} -> ${s.lossLast?.toFixed(4) ?? '-'}\n` +
      (s.lastExport ? `encoder: ${path.join(opts.models, 'latest.onnx')} (step ${s.lastExport.step})\n` : ''),
  );
}
