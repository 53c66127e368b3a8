// `ssocl embed` and `ssocl classify`: frames from an image, a directory or a watched directory,
// decoded at the encoder's size, run in batches through an exported encoder that is hot-reloaded when
// its file is replaced (the version that computed each result is recorded with it).

import { existsSync } from 'node:fs';
import path from 'node:path';
import { DirSource, type FileFrame } from '../sources/dir.ts';
import { Ledger } from '../sources/ledger.ts';
import type { Fit } from '../frames/decode.ts';
import { openChosen, type EP } from '../trainer/backend.ts';
import { latestCheckpoint } from '../trainer/checkpoint.ts';
import { ortSimilarity } from '../buffer/similarity.ts';
import { LiveEncoder } from '../infer/live.ts';
import type { Encoder, EncoderOutput } from '../infer/encoder.ts';
import { checkAppend, decodeFrames, formatOf, JsonlSink, openSink, stackImages, type DecodedFrame, type OutFormat, type RecordSink } from '../infer/io.ts';
import { listFrames, listSupport, type FrameRef } from '../frames/list.ts';
import { FewShot, noveltyScores } from '../infer/fewshot.ts';

export interface FrameLoopOptions {
  input?: string;
  watch?: string;
  recursive: boolean;
  model: string;
  ep: EP;
  epFallback?: EP;
  threads?: number;
  batch: number;
  fit: Fit;
  maxPixels: number;
  stableMs: number;
  reloadMs: number;
  exitWhenIdle: number;
  /** The output file; with --watch the ledger of frames done lives beside it (FILE.ledger), to resume. */
  out?: string;
}

const tty = process.stderr.isTTY;
const log = (line: string) => process.stderr.write(`${tty ? '\r\x1b[K' : ''}${line}\n`);

/**
 * Runs `onBatch` over every frame, batch by batch, each batch pinned to one encoder version. Returns
 * counts. With `watch`, keeps going until SIGINT/SIGTERM or `exitWhenIdle` seconds without frames.
 */
async function frameLoop(
  o: FrameLoopOptions,
  live: LiveEncoder,
  sink: RecordSink,
  onBatch: BatchFn,
): Promise<{ frames: number; bad: number; seconds: number }> {
  try {
    const r = await frameBatches(o, live, sink, onBatch);
    sink.close();
    return r;
  } catch (e) {
    sink.abort();
    throw e;
  } finally {
    await live.close();
  }
}

/** Runs a batch of decoded frames; returns the frames it could not give a result for (the model's outputs were not finite), each said. */
type BatchFn = (enc: Encoder, frames: DecodedFrame[]) => Promise<number>;

async function frameBatches(
  o: FrameLoopOptions,
  live: LiveEncoder,
  sink: RecordSink,
  onBatch: BatchFn,
): Promise<{ frames: number; bad: number; seconds: number }> {
  let frames = 0;
  let bad = 0;
  const t0 = performance.now();
  const onBad = (f: FrameRef, reason: string) => {
    bad++;
    log(`skipped ${f.path}: ${reason}`);
  };
  const progress = (total?: number) => {
    if (!tty) return;
    const s = (performance.now() - t0) / 1000;
    process.stderr.write(`\r\x1b[K${frames}${total ? `/${total}` : ''} frames  ${(frames / Math.max(s, 1e-3)).toFixed(0)} frames/s  model ${live.current.version.sha256.slice(0, 8)}${live.current.version.step !== null ? ` (step ${live.current.version.step})` : ''}${bad ? `  skipped ${bad}` : ''}`);
  };
  const runBatch = async (refs: FrameRef[]) => {
    // Only a --watch run follows the model file; a one-shot run uses the model it started with.
    if (o.watch && o.reloadMs > 0) await live.check();
    await live.use(async (enc) => {
      const ok = await decodeFrames(refs, enc.size, o.fit, o.maxPixels, onBad);
      // The model checked on the first real frames (the probe images are synthetic): refused here if
      // its outputs are not finite on them; a reloaded model is checked on the latest batch.
      if (ok.length) await (live.checked ? live.remember(stackImages(ok), ok.length) : live.checkOn(stackImages(ok), ok.length));
      const failed = ok.length ? await onBatch(enc, ok) : 0;
      frames += ok.length - failed;
      bad += failed;
      sink.sync();
    });
  };
  if (!o.watch) {
    const refs = listFrames(o.input!);
    if (!refs.length) throw new Error(`${o.input}: no image files (${'jpg, jpeg, png, webp, bmp, ppm, pgm'})`);
    for (let i = 0; i < refs.length; i += o.batch) {
      await runBatch(refs.slice(i, i + o.batch));
      progress(refs.length);
    }
  } else {
    const ledger = new Ledger(`${path.resolve(o.out!)}.ledger`);
    const source = new DirSource({
      dir: o.watch, recursive: o.recursive, order: 'name', ledger, ignore: [], overflow: 'block', backlog: Infinity, stableMs: o.stableMs,
      onRefused: (p, reason) => {
        bad++;
        log(`refused ${p}: ${reason}`);
      },
    });
    let stopping = false;
    const stop = () => {
      stopping = true;
      void source.close();
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    await source.start();
    let last = Date.now();
    try {
      while (!stopping) {
        const first = await source.next(250);
        if (!first) {
          if (o.exitWhenIdle && Date.now() - last >= o.exitWhenIdle * 1000) break;
          continue;
        }
        last = Date.now();
        // Whatever is already waiting joins the batch; nothing waits for a batch to fill (latency).
        const got: FileFrame[] = [first];
        while (got.length < o.batch) {
          const f = source.pending ? await source.next(0) : null;
          if (!f) break;
          got.push(f);
        }
        await runBatch(got.map((f) => ({ key: f.key, path: f.path, mtimeMs: f.mtimeMs, size: f.size })));
        // Done only once the results are durable: a crash repeats a frame rather than losing it.
        for (const f of got) {
          ledger.record('ingested', f.key, f.size, f.mtimeMs);
          source.forget(f);
        }
        progress();
      }
    } finally {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      await source.close();
    }
  }
  if (tty) process.stderr.write('\n');
  return { frames, bad, seconds: (performance.now() - t0) / 1000 };
}

async function openLive(o: FrameLoopOptions): Promise<LiveEncoder> {
  const live = await LiveEncoder.open(o.model, { ep: o.ep, epFallback: o.epFallback, threads: o.threads, log, warn: log }, o.watch ? o.reloadMs : 0);
  live.onSwap = (e) => log(`model reloaded: ${e.version.sha256}${e.version.step !== null ? ` (step ${e.version.step})` : ''}`);
  return live;
}

export interface EmbedOptions extends FrameLoopOptions {
  format?: OutFormat;
  output: EncoderOutput;
}

export async function embedCommand(o: EmbedOptions): Promise<void> {
  const format = formatOf(o.out, o.format);
  if (o.watch && format !== 'jsonl') throw new Error(`--watch streams one record per frame: use a JSON-lines --out (not ${format})`);
  if (o.watch && (!o.out || o.out === '-')) throw new Error('--watch needs --out FILE (it records which frames are done beside it, to resume)');
  if (format === 'jsonl' && o.out && o.out !== '-') checkAppend(o.out, o.output);
  const live = await openLive(o);
  live.current.dim(o.output);
  const sink = openSink(o.out, format, o.output);
  const r = await frameLoop(o, live, sink, async (enc, frames) => {
    const d = enc.dim(o.output);
    const v = await enc.runU8(stackImages(frames), frames.length, o.output);
    let failed = 0;
    frames.forEach((f, i) => {
      const row = v.subarray(i * d, (i + 1) * d);
      // Never a record of nulls: the frame is reported as failed instead.
      if (!allFinite(row)) return void (failed++, log(`failed ${f.path}: the model ${enc.version.sha256} gave non-finite ${o.output} for it; no record written`));
      sink.add({ key: f.key, path: f.path, time: new Date(f.mtimeMs).toISOString(), model: enc.version }, row);
    });
    return failed;
  });
  log(`embedded ${r.frames} frames (${r.bad} skipped) in ${r.seconds.toFixed(1)} s, ${(r.frames / Math.max(r.seconds, 1e-3)).toFixed(0)} frames/s; ${live.swaps} model reloads${o.out && o.out !== '-' ? `; wrote ${o.out}` : ''}`);
}

export interface ClassifyOptions extends FrameLoopOptions {
  support: string;
  k: number;
  temperature: number;
  rejectBelow?: number;
  novelty: boolean;
  noveltyState?: string;
}

export async function classifyCommand(o: ClassifyOptions): Promise<void> {
  formatOf(o.out, undefined, ['jsonl']);
  if (o.watch && (!o.out || o.out === '-')) throw new Error('--watch needs --out FILE (it records which frames are done beside it, to resume)');
  const support = listSupport(o.support);
  // Reference images for novelty from the agent's buffer (its newest checkpoint), embedded like the support.
  let bufferImages: { images: Uint8Array; count: number; size: number } | null = null;
  if (o.noveltyState) {
    // The agent's --state directory (its checkpoints/ inside), or that checkpoints directory itself.
    const dir = existsSync(path.join(o.noveltyState, 'checkpoints')) ? path.join(o.noveltyState, 'checkpoints') : o.noveltyState;
    const c = latestCheckpoint(dir, log);
    if (!c) throw new Error(`--novelty-buffer ${o.noveltyState}: no checkpoint there`);
    const imgs = c.data.images;
    bufferImages = { images: stackImages(imgs.map((image) => ({ image }))), count: imgs.length, size: Math.round(Math.sqrt((imgs[0]?.length ?? 0) / 3)) };
  }
  const live = await openLive(o);
  // On the EP the encoder got (after any fallback), so a failed --ep is not tried twice.
  const engine = await ortSimilarity((m) => openChosen(m, { ep: live.current.ep, epFallback: o.epFallback, threads: o.threads, log }));
  const sink = new JsonlSink(o.out ?? '-');
  // Support (and buffer) embeddings belong to one model version: recomputed when it changes.
  let cache: { sha: string; fs: FewShot; refs: Float32Array } | null = null;
  const prepare = async (enc: Encoder) => {
    if (cache?.sha === enc.version.sha256) return cache;
    const frames = await decodeFrames(support.frames, enc.size, o.fit, o.maxPixels, (f, reason) => log(`support image ${f.path} left out: ${reason}`));
    const labelOf = frames.map((f) => support.labelOf[support.frames.findIndex((s) => s.path === f.path)]);
    const d = enc.dim('features');
    const sv = await enc.runU8(stackImages(frames), frames.length);
    let refs = sv;
    if (bufferImages && bufferImages.count) {
      if (bufferImages.size !== enc.size) throw new Error(`--novelty-buffer: buffer images are ${bufferImages.size}px, the model takes ${enc.size}px`);
      const bv = await enc.runU8(bufferImages.images, bufferImages.count);
      refs = new Float32Array(sv.length + bv.length);
      refs.set(sv);
      refs.set(bv, sv.length);
    }
    cache = { sha: enc.version.sha256, fs: new FewShot(sv, labelOf, support.labels, d, o.k, o.temperature, engine), refs };
    return cache;
  };
  await live.use(prepare);
  log(`support: ${support.frames.length} images, ${support.labels.length} labels (${support.labels.slice(0, 8).join(', ')}${support.labels.length > 8 ? ', ...' : ''})${bufferImages ? `; novelty also against ${bufferImages.count} buffer images` : ''}`);
  const counts = new Map<string, number>();
  const r = await frameLoop(o, live, sink, async (enc, input) => {
    const c = await prepare(enc);
    const raw = await enc.runU8(stackImages(input), input.length);
    // Frames whose features are not finite get no label: reported as failed, never classified from NaN.
    const d = c.fs.d;
    const keep = input.map((_, i) => allFinite(raw.subarray(i * d, (i + 1) * d)));
    input.forEach((f, i) => keep[i] || log(`failed ${f.path}: the model ${enc.version.sha256} gave non-finite features for it; no record written`));
    const frames = input.filter((_, i) => keep[i]);
    if (!frames.length) return input.length;
    const v = frames.length === input.length ? raw : Float32Array.from(input.flatMap((_, i) => (keep[i] ? Array.from(raw.subarray(i * d, (i + 1) * d)) : [])));
    const preds = await c.fs.classify(v);
    const nov = o.novelty ? await noveltyScores(v, c.refs, c.fs.d, engine) : null;
    frames.forEach((f, i) => {
      const p = preds[i];
      const label = o.rejectBelow !== undefined && p.score < o.rejectBelow ? 'unknown' : p.label;
      counts.set(label, (counts.get(label) ?? 0) + 1);
      sink.add(
        { key: f.key, path: f.path, time: new Date(f.mtimeMs).toISOString(), model: enc.version, label, score: round(p.score), similarity: round(p.similarity), ...(label !== p.label ? { nearestLabel: p.label } : {}), ...(nov ? { novelty: round(nov[i]) } : {}) },
        null,
      );
    });
    return input.length - frames.length;
  });
  log(`classified ${r.frames} frames (${r.bad} skipped) in ${r.seconds.toFixed(1)} s: ${[...counts].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ')}`);
}

const round = (x: number) => Math.round(x * 1e6) / 1e6;

function allFinite(v: Float32Array): boolean {
  for (let i = 0; i < v.length; i++) if (!Number.isFinite(v[i])) return false;
  return true;
}
