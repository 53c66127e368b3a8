// The agent: frames from a source -> decode (bad files quarantined) -> arrivals of b new images ->
// the learner (buffer + K compiled steps) -> checkpoints, exports, metrics. Resumes from the newest
// checkpoint; SIGINT/SIGTERM finish the current step, checkpoint, export and exit.

import { readdirSync, readFileSync, statSync, appendFileSync, copyFileSync, existsSync, lstatSync, mkdirSync, realpathSync, renameSync, rmSync, unlinkSync, writeFileSync, accessSync, constants } from 'node:fs';
import path from 'node:path';
import { Trainer } from './trainer/trainer.ts';
import { SessionRunError, type EP } from './trainer/backend.ts';
import { ortSimilarity } from './buffer/similarity.ts';
import { Learner, defaultLearnerConfig, type ArrivalReport, type LearnerConfig, type Replay } from './trainer/learner.ts';
import { latestCheckpoint, listCheckpoints, saveCheckpoint, CHECKPOINT_VERSION, type PendingFrame } from './trainer/checkpoint.ts';
import { removeStaleTemps } from '../core/atomic.ts';
import { exportEncoder, reconcileLatest, type ExportInfo } from './export/export.ts';
import { DirSource, type FileFrame, type Overflow } from './sources/dir.ts';
import { DatasetSource } from './sources/dataset.ts';
import { Ledger } from './sources/ledger.ts';
import { JsonlSink } from './infer/io.ts';
import { confinedPath, readRegularFile, UnreadableFile } from './sources/read.ts';
import { CameraError, CameraSource, checkFfmpeg, isLive } from './sources/camera.ts';
import { decodeFrame, resizeChw, FrameError, type Fit } from './frames/decode.ts';
import type { BufferPolicy } from './buffer/buffer.ts';

export interface Every {
  steps?: number;
  ms?: number;
}

/** '500' = every 500 steps; '30s', '5m', '1h' = by time. */
export function parseEvery(flag: string, v: string): Every {
  const m = /^(\d+(?:\.\d+)?)(s|m|h)?$/.exec(v.trim());
  if (!m || Number(m[1]) <= 0) throw new Error(`${flag} ${v}: expected a number of steps (e.g. 500) or a duration (30s, 5m, 1h)`);
  if (!m[2]) return { steps: Math.round(Number(m[1])) };
  return { ms: Number(m[1]) * { s: 1e3, m: 6e4, h: 3.6e6 }[m[2] as 's' | 'm' | 'h'] };
}

/** An in-process stream of 32x32 images (a data set's stream order, or the demo set), resized to the training size. */
export interface DatasetStream {
  label: string;
  images: Uint8Array;
  order: number[];
}

export interface AgentOptions {
  /** Exactly one source: a watched directory, or an in-process data set stream. */
  watch?: string;
  dataset?: DatasetStream;
  /** A camera device, stream URL or video file, through ffmpeg. */
  camera?: { input: string; fps: number; captureSize?: string; ffmpeg: string; stallMs: number };
  recursive: boolean;
  /** Accept frames with more than one hard link (which may alias files outside the watched directory). */
  allowHardLinks?: boolean;
  /** The watched path deleted and recreated, or replaced by a link: watch the new directory, or stop. */
  rootReplaced?: 'follow' | 'stop';
  order: 'name' | 'mtime';
  afterIngest: 'keep' | 'move' | 'delete';
  processed: string;
  quarantine: string;
  artifacts: string;
  stateDir: string;
  models: string;
  ep: EP;
  epFallback?: EP;
  threads?: number;
  fit: Fit;
  maxPixels: number;
  overflow: Overflow;
  backlog: number;
  stableMs: number;
  checkpointEvery: Every;
  exportEvery: Every;
  fresh: boolean;
  metrics?: string;
  /** Append the embedding (backbone features) of every ingested frame to this JSON-lines file. */
  emitEmbeddings?: string;
  /** Dataset streams: evaluate at these fractions of the stream (kNN figures go to the log and metrics). */
  evaluate?: { at: number[]; run: (trainer: Trainer) => Promise<Record<string, number>> };
  /** How often a paused agent (disk full) tries to write its checkpoint again. */
  diskRetryMs: number;
  /** Stop after this many arrivals / seconds / seconds without a new frame (0 = never). */
  maxArrivals: number;
  maxSeconds: number;
  exitWhenIdle: number;
  maxSkips: number;
  learner: Partial<Pick<LearnerConfig, 'updates' | 'replay' | 'lr' | 'schedule' | 'scheduleSteps' | 'seed'>> & {
    bufferSize?: number;
    policy?: BufferPolicy;
    replay?: Replay;
  };
  log: (line: string) => void;
  progress?: (line: string) => void;
}

export interface AgentSummary {
  framesIngested: number;
  quarantined: number;
  dropped: number;
  refused: number;
  arrivals: number;
  steps: number;
  skippedSteps: number;
  resumedFrom: string | null;
  lastExport: ExportInfo | null;
  lossFirst: number | null;
  lossLast: number | null;
  stoppedBy: string;
}

/** Memory in MB for the metrics: RSS beside the JS heap and buffers, so a long run shows which one grows. */
function memMB(): { rss: number; heap: number; heapTotal: number; external: number; arrayBuffers: number } {
  const m = process.memoryUsage();
  const mb = (b: number) => Math.round(b / 104857.6) / 10;
  return { rss: mb(m.rss), heap: mb(m.heapUsed), heapTotal: mb(m.heapTotal), external: mb(m.external), arrayBuffers: mb(m.arrayBuffers) };
}

function isDiskFull(e: unknown): boolean {
  const c = (e as NodeJS.ErrnoException)?.code;
  return c === 'ENOSPC' || c === 'EDQUOT';
}

/** Exit code when checkpoints exist but none verifies: starting over is the user's choice (--fresh). */
export const EXIT_NO_TRUSTED_STATE = 6;

export class AgentError extends Error {
  constructor(
    message: string,
    readonly exitCode = 2,
  ) {
    super(message);
  }
}

function ensureWritable(flag: string, dir: string): void {
  try {
    mkdirSync(dir, { recursive: true });
    accessSync(dir, constants.W_OK);
  } catch (e) {
    throw new AgentError(`${flag} ${dir}: not a writable directory (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}

/** rename, or copy and unlink where the target is on another filesystem (EXDEV). */
function moveFile(from: string | Buffer, to: string): void {
  try {
    renameSync(from, to);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
    copyFileSync(from, to);
    unlinkSync(from);
  }
}

function uniqueTarget(dir: string, rel: string): string {
  let target = path.join(dir, rel);
  for (let k = 1; existsSync(target); k++) {
    const ext = path.extname(rel);
    target = path.join(dir, `${rel.slice(0, rel.length - ext.length)}.${k}${ext}`);
  }
  mkdirSync(path.dirname(target), { recursive: true });
  return target;
}

/** step and artifact of models/latest.json, or null if there is none (or it cannot be read). */
function readPublished(models: string): { step: number; artifact: string } | null {
  try {
    const j = JSON.parse(readFileSync(path.join(models, 'latest.json'), 'utf8'));
    return Number.isInteger(j.step) && typeof j.artifact === 'string' ? { step: j.step, artifact: j.artifact } : null;
  } catch {
    return null;
  }
}

/** A video file's identity as a 31-bit number (checkpoint counters are numbers). */
function fileIdentity(file: string, fps: number): number {
  const st = statSync(file);
  let h = 2166136261;
  // fps too: positions count sampled frames.
  for (const ch of `${path.resolve(file)}|${st.size}|${Math.floor(st.mtimeMs)}|${fps}`) h = Math.imul(h ^ ch.charCodeAt(0), 16777619);
  return (h >>> 1) || 1;
}

interface Signals {
  /** Set once the agent can stop cleanly; a signal before that is remembered in `got`. */
  stop: ((sig: string) => void) | null;
  got: string;
}

/**
 * `keepSignalHandlers`: leave SIGINT/SIGTERM handled after returning (the CLI, which exits right after:
 * a signal in that gap would otherwise kill it with 143 after a clean stop).
 */
export async function runAgent(o: AgentOptions, { keepSignalHandlers = false } = {}): Promise<AgentSummary> {
  // Handled from the first moment to the last: a SIGTERM while the artifacts load, or a second one
  // during the final checkpoint and export, must not kill the process half-way (exit 143).
  const signals: Signals = { stop: null, got: '' };
  const on = (sig: string) => () => {
    if (signals.stop) signals.stop(sig);
    else if (!signals.got) {
      signals.got = sig;
      o.log(`${sig} while starting: stopping as soon as the state is loaded`);
    }
  };
  const sigint = on('SIGINT');
  const sigterm = on('SIGTERM');
  process.on('SIGINT', sigint);
  process.on('SIGTERM', sigterm);
  try {
    return await runAgentWith(o, signals);
  } finally {
    if (!keepSignalHandlers) {
      process.off('SIGINT', sigint);
      process.off('SIGTERM', sigterm);
    }
  }
}

async function runAgentWith(o: AgentOptions, signals: Signals): Promise<AgentSummary> {
  if ([o.watch, o.dataset, o.camera].filter(Boolean).length !== 1) throw new AgentError('give one source: --watch DIR, --camera DEVICE|URL|FILE or --dataset NAME');
  if (o.camera) {
    checkFfmpeg(o.camera.ffmpeg);
    if (!isLive(o.camera.input) && !(existsSync(o.camera.input) && statSync(o.camera.input).isFile())) {
      throw new CameraError(`--camera ${o.camera.input}: no such video file; a live source is a device (/dev/video0) or a URL (rtsp://...)`);
    }
  }
  const watch = o.watch ? path.resolve(o.watch) : '';
  if (o.watch && !existsSync(watch)) throw new AgentError(`--watch ${o.watch}: no such directory`);
  for (const [flag, dir] of [['--state', o.stateDir], ['--models', o.models], ['--quarantine', o.quarantine]] as const) ensureWritable(flag, dir);
  if (o.afterIngest === 'move') ensureWritable('--processed', o.processed);

  const trainer = await Trainer.open(o.artifacts, { ep: o.ep, epFallback: o.epFallback, threads: o.threads });
  const cfg = defaultLearnerConfig(trainer);
  const L = o.learner;
  const learnerCfg: LearnerConfig = {
    ...cfg,
    ...(L.updates !== undefined ? { updates: L.updates } : {}),
    ...(L.replay ? { replay: L.replay } : {}),
    ...(L.lr !== undefined ? { lr: L.lr } : {}),
    ...(L.schedule ? { schedule: L.schedule } : {}),
    ...(L.scheduleSteps ? { scheduleSteps: L.scheduleSteps } : {}),
    ...(L.seed !== undefined ? { seed: L.seed } : {}),
    buffer: { ...cfg.buffer, ...(L.bufferSize ? { capacity: L.bufferSize } : {}), ...(L.policy ? { policy: L.policy } : {}) },
  };
  const learner = new Learner(trainer, learnerCfg, await ortSimilarity(o.threads));
  const m = trainer.manifest;
  const size = m.preset.image.size;
  const newPer = m.preset.agent.newPerArrival;
  const ckptDir = path.join(o.stateDir, 'checkpoints');
  const artifactHash = m.files[m.trainStep.file];

  // Temp files of writes a kill interrupted (the files they were replacing are intact).
  const stale = removeStaleTemps(ckptDir) + removeStaleTemps(o.models);
  if (stale) o.log(`removed ${stale} temporary file(s) left by an interrupted write`);
  const counters = { framesIngested: 0, quarantined: 0, dropped: 0, refused: 0, skippedSteps: 0, datasetPosition: 0, cameraPosition: 0, cameraFile: 0, evaluatedPct: 0 };
  let resumedFrom: string | null = null;
  // Frames the resumed checkpoint learnt from since the one before it (committed at the next checkpoint).
  let resumedPending: PendingFrame[] = [];
  let rejectedNewer = false;
  if (o.fresh) {
    rmSync(ckptDir, { recursive: true, force: true });
    rmSync(path.join(o.stateDir, 'ingested.log'), { force: true });
  } else {
    const rejected: string[] = [];
    const last = latestCheckpoint(ckptDir, o.log, rejected);
    rejectedNewer = rejected.length > 0;
    if (!last && rejected.length) {
      throw new AgentError(`--state ${o.stateDir}: none of its ${rejected.length} checkpoint(s) verifies (see above); not starting over by itself: --fresh starts from scratch, or restore a good checkpoint into ${ckptDir}`, EXIT_NO_TRUSTED_STATE);
    }
    if (last && rejected.length) {
      // Kept for a look, out of the way: left in place they would stay "newest" and outlive rotation.
      const aside = path.join(ckptDir, 'rejected');
      mkdirSync(aside, { recursive: true });
      for (const f of rejected) renameSync(f, path.join(aside, path.basename(f)));
      o.log(`resuming from the older ${last.file}: ${rejected.length} newer checkpoint(s) did not verify (moved to ${aside}); the frames learnt since are taken again`);
    }
    if (last) {
      const c = last.data;
      if (c.meta.artifact !== artifactHash) {
        throw new AgentError(`--state ${o.stateDir}: its checkpoint belongs to other artifacts (${c.meta.artifact.slice(0, 12)}...); use --fresh to start over or point --artifacts at the ones it was made with`);
      }
      for (const s of m.state) {
        const v = c.state.get(s.name);
        if (!v || v.length !== trainer.state.get(s.name)!.length) throw new AgentError(`${last.file}: no state '${s.name}' of the manifest's shape`);
        trainer.state.set(s.name, v);
      }
      trainer.steps = c.meta.steps;
      learner.arrivals = c.meta.arrivals;
      learner.rng.state = c.meta.rng;
      learner.cropRng.state = c.meta.cropRng;
      await learner.buffer.restore({
        nextId: c.meta.buffer.nextId,
        streamCount: c.meta.buffer.streamCount,
        entries: c.meta.buffer.entries.map((e, i) => ({ ...e, image: c.images[i], feature: c.features[i] })),
      });
      Object.assign(counters, c.meta.counters);
      resumedPending = c.meta.pending ?? [];
      resumedFrom = last.file;
      o.log(`resumed from ${last.file}: step ${trainer.steps}, ${learner.arrivals} arrivals, buffer ${learner.buffer.size}`);
    }
  }

  const dataset = o.dataset ? new DatasetSource(o.dataset.images, o.dataset.order, 3 * 32 * 32) : null;
  if (dataset) dataset.position = counters.datasetPosition;
  // A video file resumes at the frame its checkpoint reached (same file: path, size and mtime); live
  // sources just go on.
  let camera: CameraSource | null = null;
  if (o.camera) {
    const fileId = isLive(o.camera.input) ? 0 : fileIdentity(o.camera.input, o.camera.fps);
    const skip = fileId && fileId === counters.cameraFile ? counters.cameraPosition : 0;
    if (fileId && counters.cameraFile && fileId !== counters.cameraFile) o.log(`--camera ${o.camera.input}: not the video the checkpoint was reading; starting at its first frame`);
    counters.cameraFile = fileId;
    counters.cameraPosition = skip;
    camera = new CameraSource({
      input: o.camera.input, fps: o.camera.fps, size, fit: o.fit, captureSize: o.camera.captureSize, ffmpeg: o.camera.ffmpeg,
      overflow: o.overflow, backlog: o.backlog, stallMs: o.camera.stallMs, backoffMs: [1000, 30000], skip, log: o.log,
    });
  }
  const droppedBase = counters.dropped;
  let droppedSince = 0;
  const ledger = new Ledger(path.join(o.stateDir, 'ingested.log'));
  const ignore = [o.processed, o.quarantine, o.stateDir, o.models].map((d) => path.resolve(d));
  const source = new DirSource({
    dir: watch || o.stateDir,
    recursive: o.recursive,
    order: o.order,
    ledger,
    ignore,
    overflow: o.overflow,
    backlog: o.backlog,
    stableMs: o.stableMs,
    onDrop: (f) => {
      counters.dropped++;
      // Reported as a count every 10 s (a camera far ahead of training would flood the log otherwise).
      if (!droppedSince++) setTimeout(() => {
        o.log(`dropped ${droppedSince} frame(s) in 10 s (from ${f.key} on): backlog over ${o.backlog} frames (--overflow drop-oldest)`);
        droppedSince = 0;
      }, 10_000).unref();
      // A dropped frame is done with like an ingested one (deleted or moved), so a camera directory
      // does not fill up with frames nobody will read, nor the watcher's and ledger's memory with them.
      if (afterIngest(f)) ledger.forget(f.key, f.size, f.mtimeMs);
    },
    onRefused: (p, why) => {
      counters.refused++;
      o.log(`refused ${p}: ${why}`);
    },
    onBadName: (dir, raw) => quarantineRawName(dir, raw),
    rootReplaced: o.rootReplaced ?? 'follow',
    onRootLost: (why) => {
      o.log(`${why}: stopping`);
      stop(why);
    },
  });

  // With --after-ingest delete|move, a frame leaves the watched directory as soon as it is read, into
  // <state>/held/, and is deleted or moved from there once a checkpoint holds what was learnt from it.
  // Left in the watched directory until then (minutes), it would keep a watcher and a stat poll each:
  // the one-hour soak saw RSS saw-tooth 40-60 MB between checkpoints with ~2000 frames waiting.
  const heldDir = path.join(o.stateDir, 'held');
  let holding = !!watch && o.afterIngest !== 'keep';
  const pendingIds = new Set(resumedPending.map((p) => Ledger.key(p.key, p.size, p.mtimeMs)));
  // Held by a run that stopped before its checkpoint (or whose checkpoint did not verify): back where
  // they were, to be taken again; those the resumed checkpoint learnt from stay held until the next
  // one; those an earlier checkpoint holds (in the ledger) are finished as --after-ingest says.
  // Called before watching.
  const restoreHeld = () => {
    if (!watch || !existsSync(heldDir)) return;
    let back = 0;
    let finished = 0;
    for (const key of readdirSync(heldDir, { recursive: true, encoding: 'utf8' })) {
      const abs = path.join(heldDir, key);
      try {
        const st = lstatSync(abs);
        if (!st.isFile()) continue;
        const f: FileFrame = { key, path: abs, size: st.size, mtimeMs: st.mtimeMs, arrival: Date.now() };
        if (pendingIds.delete(Ledger.key(key, st.size, st.mtimeMs))) {
          // The resumed checkpoint learnt from it (a kill may have come before its ledger line).
          if (!ledger.has(key, st.size, st.mtimeMs)) ledger.record('ingested', key, st.size, st.mtimeMs);
          prevPending.push(f);
        } else if (ledger.has(key, st.size, st.mtimeMs) && !rejectedNewer) {
          if (afterIngest(f)) ledger.forget(key, st.size, st.mtimeMs);
          finished++;
        } else {
          // Not held by the checkpoint resumed from (one that did not verify did): learnt again.
          if (ledger.has(key, st.size, st.mtimeMs)) ledger.record('returned', key, st.size, st.mtimeMs);
          const target = uniqueTarget(watch, key); // a new name if one of its name came meanwhile
          confinedPath(target, source.root);
          moveFile(abs, target);
          back++;
        }
      } catch (e) {
        o.log(`could not return held frame ${abs}: ${(e as Error).message}`);
      }
    }
    if (back) o.log(`${back} frame(s) read by a run that stopped before its checkpoint${rejectedNewer ? ' (or whose checkpoint did not verify)' : ''} are back in ${watch}`);
    if (finished) o.log(`${finished} frame(s) the last checkpoint holds were finished (--after-ingest ${o.afterIngest})`);
  };
  const hold = (f: FileFrame) => {
    if (!holding) return;
    const to = path.join(heldDir, f.key);
    try {
      const from = confinedPath(f.path, source.root);
      mkdirSync(path.dirname(to), { recursive: true });
      renameSync(from, to);
      f.path = to;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EXDEV') {
        holding = false;
        o.log(`--state ${o.stateDir} is on another filesystem than ${watch}: frames stay in the watched directory until the checkpoint`);
      } else if (code !== 'ENOENT') o.log(`could not hold ${f.key} in ${heldDir} (${(e as Error).message}); it stays in place until the checkpoint`);
    }
  };

  let stopReason = '';
  const stop = (why: string) => {
    if (!stopReason) stopReason = why;
    void source.close();
    void camera?.close();
  };
  signals.stop = (sig: string) => {
    if (stopReason) return o.log(`${sig}: already stopping (${stopReason}); the checkpoint and export are being written`);
    o.log(`${sig}: finishing the current step, then checkpoint and export`);
    stop(sig);
  };
  if (signals.got) stop(signals.got);

  const metricsFile = o.metrics ? path.resolve(o.metrics) : null;
  if (metricsFile) mkdirSync(path.dirname(metricsFile), { recursive: true });
  // Embeddings of ingested frames from the weights being trained (no second model load).
  let emitted: JsonlSink | null = null;
  if (o.emitEmbeddings) {
    mkdirSync(path.dirname(path.resolve(o.emitEmbeddings)), { recursive: true });
    emitted = new JsonlSink(path.resolve(o.emitEmbeddings));
  }
  const artifactSha = trainer.manifest.files[trainer.manifest.trainStep.file]?.slice(0, 16) ?? '';
  const emit = async (items: { key: string; image: Uint8Array }[]) => {
    if (!emitted || !items.length) return;
    const x = new Float32Array(items.length * 3 * size * size);
    items.forEach((p, j) => {
      for (let k = 0; k < p.image.length; k++) x[j * p.image.length + k] = p.image[k] / 255;
    });
    const { features } = await trainer.embed(x, items.length);
    const d = features.length / items.length;
    const now = new Date().toISOString();
    const where = (key: string) => (o.watch ? path.join(o.watch, key) : `${o.camera ? 'camera' : 'dataset'}:${key}`);
    try {
      items.forEach((p, j) => emitted!.add({ key: p.key, path: where(p.key), time: now, model: { sha256: artifactSha, step: trainer.steps } }, features.subarray(j * d, (j + 1) * d)));
    } catch (e) {
      o.log(`embeddings no longer written (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): ${o.emitEmbeddings}`);
      emitted.close();
      emitted = null;
    }
  };
  const started = Date.now();
  let lastCkptStep = trainer.steps;
  let lastCkptTime = Date.now();
  let lastExportStep = trainer.steps;
  let lastExportTime = Date.now();
  let lastExport: ExportInfo | null = null;
  let lossFirst: number | null = null;
  let lossLast: number | null = null;
  let consecutiveSkips = 0;
  let diverged = false;
  let lastFrameAt = Date.now();
  let metricsFailed = false;
  let evalNext = 0;

  // Frames read since the last checkpoint; those of arrivals where every step was skipped taught
  // nothing, so they are never committed by this run (a restart takes them again).
  const uncommitted: FileFrame[] = [];
  let lastCkptFile = resumedFrom ?? '';
  // Learnt and held by the newest verified checkpoint: in the ledger, but deleted or moved only once
  // the next checkpoint verifies too, so losing the newest file loses no frame (they are taken again).
  let prevPending: FileFrame[] = [];
  const finish = (list: FileFrame[]) => {
    for (const f of list.splice(0)) if (afterIngest(f)) ledger.forget(f.key, f.size, f.mtimeMs);
  };
  const checkpoint = () => {
    const snap = learner.buffer.snapshot();
    const file = saveCheckpoint(ckptDir, {
      meta: {
        version: CHECKPOINT_VERSION,
        artifact: artifactHash,
        steps: trainer.steps,
        arrivals: learner.arrivals,
        framesIngested: counters.framesIngested,
        rng: learner.rng.state,
        cropRng: learner.cropRng.state,
        buffer: {
          nextId: snap.nextId,
          streamCount: snap.streamCount,
          entries: snap.entries.map(({ image: _i, feature: _f, ...rest }) => rest),
          hasFeature: snap.entries.map((e) => e.feature !== null),
        },
        counters: { ...counters },
        pending: [...prevPending, ...uncommitted].map(({ key, size, mtimeMs }) => ({ key, size, mtimeMs })),
        time: new Date().toISOString(),
      },
      state: trainer.state,
      images: snap.entries.map((e) => e.image),
      features: snap.entries.map((e) => e.feature),
    });
    lastCkptStep = trainer.steps;
    lastCkptTime = Date.now();
    // The same name is the same state written again (e.g. the final checkpoint right after a periodic
    // one): it replaced that file, so still only one checkpoint holds the previous frames.
    if (file !== lastCkptFile) finish(prevPending);
    lastCkptFile = file;
    // One by one, so a failed append (disk full) leaves the rest for the next checkpoint.
    while (uncommitted.length) {
      const f = uncommitted[0];
      ledger.record('ingested', f.key, f.size, f.mtimeMs);
      uncommitted.shift();
      source.forget(f);
      prevPending.push(f);
    }
    return file;
  };

  // A full disk pauses the agent (no new frames taken) until a checkpoint can be written again; the
  // previous checkpoint and export stay intact (atomic writes). A signal while waiting stops it.
  const checkpointWhenSpace = async () => {
    let waiting = false;
    for (;;) {
      try {
        const file = checkpoint();
        if (waiting) o.log(`space is back: checkpoint ${file} written, training resumes`);
        return;
      } catch (e) {
        if (!isDiskFull(e)) throw e;
        const prev = listCheckpoints(ckptDir).at(-1) ?? 'none yet';
        if (stopReason) throw new AgentError(`disk full (${(e as NodeJS.ErrnoException).code}) writing a checkpoint in ${ckptDir}; stopped (${stopReason}); the previous checkpoint ${prev} is intact`, 4);
        if (!waiting) o.log(`disk full (${(e as NodeJS.ErrnoException).code}): cannot write a checkpoint in ${ckptDir}; paused, the previous checkpoint ${prev} and export are intact; retrying every ${o.diskRetryMs / 1000}s`);
        waiting = true;
        await new Promise((r) => setTimeout(r, o.diskRetryMs));
      }
    }
  };

  // What is published now: never replaced by an encoder less trained (e.g. after resuming from an
  // older checkpoint because the newest did not verify) unless the user started over (--fresh).
  // A kill between the publishing renames leaves latest.json and latest.onnx apart: made to agree first.
  const repaired = reconcileLatest(o.models);
  if (repaired) o.log(repaired);
  const published = readPublished(o.models);
  let heldBackLogged = false;
  const doExport = async () => {
    if (published && !o.fresh && published.artifact === artifactHash && trainer.steps < published.step) {
      if (!heldBackLogged) o.log(`not exporting: ${path.join(o.models, 'latest.onnx')} is at step ${published.step}, this run at step ${trainer.steps}; exports resume once training passes it`);
      heldBackLogged = true;
      return;
    }
    if (published && o.fresh && !heldBackLogged && trainer.steps < published.step) {
      o.log(`--fresh: replacing ${path.join(o.models, 'latest.onnx')} (step ${published.step}) with this run's encoder (step ${trainer.steps})`);
      heldBackLogged = true;
    }
    const entries = learner.buffer.entries.slice(0, 8);
    const per = 3 * size * size;
    const count = Math.max(1, entries.length);
    const probe = new Float32Array(count * per);
    if (entries.length) entries.forEach((e, i) => e.image.forEach((v, k) => (probe[i * per + k] = v / 255)));
    else probe.fill(0.5);
    lastExport = await exportEncoder(trainer, o.models, { framesSeen: counters.framesIngested, loss: lossLast, probe, probeCount: count });
    lastExportStep = trainer.steps;
    lastExportTime = Date.now();
    o.log(`exported ${path.join(o.models, lastExport.file)} (step ${lastExport.step}) and ${path.join(o.models, 'latest.onnx')}`);
  };

  const due = (e: Every, lastStep: number, lastTime: number) =>
    (e.steps !== undefined && trainer.steps - lastStep >= e.steps) || (e.ms !== undefined && Date.now() - lastTime >= e.ms);

  const quarantine = (f: FileFrame, reason: string) => {
    counters.quarantined++;
    try {
      ledger.record('quarantined', f.key, f.size, f.mtimeMs);
    } catch (e) {
      o.log(`could not record ${f.key} as quarantined in the ledger (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    source.forget(f);
    moveToQuarantine(() => confinedPath(f.path, source.root), f.key, f.key, reason);
  };

  /** Moves what `from()` names (checked inside the root) into the quarantine as `rel`, with a `.reason` file. */
  const moveToQuarantine = (from: () => string | Buffer, rel: string, shown: string, reason: string, note = reason) => {
    try {
      const src = from();
      const target = uniqueTarget(o.quarantine, rel);
      moveFile(src, target);
      writeFileSync(`${target}.reason`, `${note}\n`);
      o.log(`quarantined ${shown}: ${reason}`);
    } catch (e) {
      o.log(`could not quarantine ${shown} (${(e as Error).message}); reason was: ${reason}`);
    }
  };

  // A name that is not valid UTF-8 cannot be reached through a string path (nor kept in the ledger
  // as it is): moved aside by its raw bytes under an escaped name, with a reason, and counted.
  const quarantineRawName = (dir: string, raw: Buffer) => {
    const shown = [...raw].map((b) => (b < 0x20 || b >= 0x7f || b === 0x25 ? `%${b.toString(16).padStart(2, '0')}` : String.fromCharCode(b))).join('');
    counters.quarantined++;
    const from = () => {
      confinedPath(path.join(dir, 'x'), source.root);
      return Buffer.concat([Buffer.from(dir + path.sep), raw]);
    };
    const note = 'file name is not valid UTF-8 (shown with its bytes %-escaped); rename it and put it back to have it learnt';
    moveToQuarantine(from, path.join(path.relative(source.root, dir), shown), shown, 'file name is not valid UTF-8', note);
  };

  /** true when the file is gone from the watched directory (so the ledger need not remember it in memory). */
  const afterIngest = (f: FileFrame): boolean => {
    try {
      if (o.afterIngest === 'keep') return false;
      // Only ever inside the watched directory or our own held/ (a parent swapped for a link is refused).
      const held = path.resolve(f.path).startsWith(path.resolve(heldDir) + path.sep);
      const from = confinedPath(f.path, held ? realpathSync(heldDir) : source.root);
      if (o.afterIngest === 'delete') rmSync(from, { force: true });
      else moveFile(from, uniqueTarget(o.processed, f.key));
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return true; // already gone
      o.log(`after-ingest ${o.afterIngest} failed for ${f.key}: ${(e as Error).message}`);
      return false;
    }
  };

  if (camera) camera.start();
  else if (!dataset) {
    restoreHeld();
    // Frames the resumed checkpoint learnt from that stayed in place (keep, or another filesystem): not taken again.
    for (const p of resumedPending) {
      if (!pendingIds.has(Ledger.key(p.key, p.size, p.mtimeMs)) || !watch) continue;
      const f: FileFrame = { key: p.key, path: path.join(watch, p.key), size: p.size, mtimeMs: p.mtimeMs, arrival: Date.now() };
      if (!ledger.has(p.key, p.size, p.mtimeMs)) ledger.record('ingested', p.key, p.size, p.mtimeMs);
      source.claim(f);
      prevPending.push(f);
    }
    await source.start();
  }
  o.log(`${dataset ? `replaying ${o.dataset!.label} (${dataset.remaining} frames left)` : camera ? `reading ${o.camera!.input} through ffmpeg${o.camera!.fps ? ` at ${o.camera!.fps} fps` : ''}${counters.cameraPosition ? ` from frame ${counters.cameraPosition + 1}` : ''}` : `watching ${watch} (${source.pending} frames waiting)`}; training ${m.name} on ${trainer.ep}: ${newPer} new images per arrival, ${learnerCfg.updates} updates, buffer ${learnerCfg.buffer.capacity} (${learnerCfg.buffer.policy}), replay ${learnerCfg.replay}`);

  let pending: { key: string; image: Uint8Array }[] = [];
  let arrivalFrames: FileFrame[] = [];
  const incompleteGraceMs = Math.max(5000, 10 * o.stableMs);
  try {
    while (!stopReason) {
      if (o.maxSeconds && Date.now() - started >= o.maxSeconds * 1000) {
        stop(`--max-seconds ${o.maxSeconds}`);
        break;
      }
      if (dataset) {
        const d = await dataset.next();
        if (!d) {
          stop(`end of the ${o.dataset!.label} stream`);
          break;
        }
        counters.framesIngested++;
        counters.datasetPosition = dataset.position;
        pending.push(size === 32 ? d : { key: d.key, image: await resizeChw(d.image, 32, size) });
      }
      if (camera) {
        const c = await camera.next(o.exitWhenIdle ? 250 : 1000);
        if (!c) {
          if (camera.ended) stop(camera.endReason);
          else if (o.exitWhenIdle && Date.now() - lastFrameAt >= o.exitWhenIdle * 1000) stop(`idle for ${o.exitWhenIdle}s (--exit-when-idle)`);
          continue;
        }
        lastFrameAt = Date.now();
        counters.framesIngested++;
        counters.cameraPosition = camera.position - camera.pending;
        counters.dropped = droppedBase + camera.dropped;
        pending.push(c);
        if (pending.length < newPer) continue;
      }
      const f = dataset || camera ? null : await source.next(o.exitWhenIdle ? 250 : 1000);
      if (dataset || camera) {
        if (pending.length < newPer) continue;
      } else if (!f) {
        // Not idle while a frame that may still be being written waits for its second look.
        if (o.exitWhenIdle && !source.deferred && Date.now() - lastFrameAt >= o.exitWhenIdle * 1000) stop(`idle for ${o.exitWhenIdle}s (--exit-when-idle)`);
        continue;
      }
      if (f) {
        lastFrameAt = Date.now();
        let bytes: Buffer;
        try {
          // The directory is untrusted: a file may have become a link, or its directory one, since it
          // was queued; the read checks the real path of what it opened.
          bytes = readRegularFile(f.path, undefined, undefined, { root: source.root, allowHardLinks: !!o.allowHardLinks });
        } catch (e) {
          counters.refused++;
          const confinement = e instanceof UnreadableFile && (e.code === 'EOUTSIDE' || e.code === 'EHARDLINK');
          const why = e instanceof UnreadableFile ? e.message : `${(e as NodeJS.ErrnoException).code ?? (e as Error).message} (gone before it could be read)`;
          o.log(`${confinement ? 'refused' : 'skipped'} ${f.key}: ${why}`);
          source.forget(f);
          continue;
        }
        if (bytes.length !== f.size) {
          // Still being written when it was queued: its final version comes with the next change event.
          o.log(`deferred ${f.key}: it changed size since it was queued (${f.size} -> ${bytes.length} bytes)`);
          source.forget(f);
          continue;
        }
        let image: Uint8Array;
        try {
          image = await decodeFrame(bytes, path.extname(f.path), { size, fit: o.fit, maxPixels: o.maxPixels });
        } catch (e) {
          const why = e instanceof FrameError ? e.message : `decode failed: ${(e as Error).message}`;
          // Written moments ago: a writer that paused longer than --stable-ms may not be done. Look
          // again once it has been still for the grace period; quarantine only what fails then.
          if (Date.now() - f.mtimeMs < incompleteGraceMs) {
            o.log(`deferred ${f.key}: ${why}; modified ${Math.round(Date.now() - f.mtimeMs)} ms ago, looking again in ${incompleteGraceMs / 1000} s`);
            source.recheckLater(f, incompleteGraceMs);
            continue;
          }
          quarantine(f, why);
          continue;
        }
        // Recorded in the ledger only once a checkpoint holds what was learnt from it, and moved/deleted
        // once a second one does: after a crash, or with the newest checkpoint lost, it is taken again.
        hold(f);
        uncommitted.push(f);
        arrivalFrames.push(f);
        counters.framesIngested++;
        pending.push({ key: f.key, image });
        if (pending.length < newPer) continue;
      }

      let r: ArrivalReport;
      try {
        r = await learner.arrive(pending);
      } catch (e) {
        if (!(e instanceof SessionRunError)) throw e;
        if (!o.epFallback || trainer.ep === o.epFallback) {
          throw new AgentError(`${e.message}; stopped with the last good state checkpointed${!o.epFallback && trainer.ep !== 'cpu' ? ' (--ep-fallback cpu would have moved training to the CPU)' : ''}`, 5);
        }
        o.log(`${e.message}; moving training to --ep ${o.epFallback} as --ep-fallback asks (state kept; the rest of this arrival's updates skipped)`);
        await trainer.reopen(o.epFallback);
        r = { steps: [], trained: false, removed: [], ms: { augment: 0, overlapped: 0, train: 0, buffer: 0 } };
      }
      await emit(pending);
      pending = [];
      if (r.trained && !r.steps.some((s) => s.applied)) {
        for (const f of arrivalFrames) {
          const i = uncommitted.indexOf(f);
          if (i >= 0) uncommitted.splice(i, 1);
        }
      }
      arrivalFrames = [];
      for (const s of r.steps) {
        if (!s.applied) {
          counters.skippedSteps++;
          consecutiveSkips++;
          o.log(`step skipped: non-finite loss or gradient, or a blow-up of the weights (loss ${s.loss}, grad norm ${s.gradNorm}); parameters kept`);
        } else {
          consecutiveSkips = 0;
          lossFirst ??= s.loss;
          lossLast = s.loss;
        }
        if (metricsFile && !metricsFailed) {
          try {
          appendFileSync(
            metricsFile,
            JSON.stringify({
              time: new Date().toISOString(),
              step: s.step,
              arrival: learner.arrivals,
              loss: s.loss,
              terms: s.terms,
              lr: s.lr,
              ms: Math.round(s.ms),
              cropsPerS: Math.round((trainer.cropsShape[0] / s.ms) * 1000),
              gradNorm: s.gradNorm,
              gradCos: s.gradCos,
              applied: s.applied,
              buffer: learner.buffer.size,
              nnSim: learner.buffer.meanNearestSimilarity(),
              frames: counters.framesIngested,
              mem: memMB(),
            }) + '\n',
          );
          } catch (e) {
            metricsFailed = true;
            o.log(`metrics no longer written (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): ${metricsFile}`);
          }
        }
      }
      if (consecutiveSkips >= o.maxSkips) {
        diverged = true;
        stop('diverged');
        break;
      }
      o.progress?.(
        `step ${trainer.steps}  arrival ${learner.arrivals}  frames ${counters.framesIngested}  loss ${lossLast?.toFixed(4) ?? '-'}  buffer ${learner.buffer.size}  waiting ${camera ? camera.pending : source.pending}  quarantined ${counters.quarantined}${r.trained ? '' : '  (filling the buffer)'}`,
      );
      if (dataset && o.evaluate) {
        const total = dataset.position + dataset.remaining;
        while (evalNext < o.evaluate.at.length && dataset.position >= o.evaluate.at[evalNext] * total) {
          const pct = Math.round(o.evaluate.at[evalNext++] * 100);
          if (counters.evaluatedPct >= pct) continue; // done before a resume
          const te = performance.now();
          const res = await o.evaluate.run(trainer);
          counters.evaluatedPct = pct;
          o.log(`eval at ${pct}% of the stream (step ${trainer.steps}, ${counters.framesIngested} frames): ${Object.entries(res).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ')} (${((performance.now() - te) / 1000).toFixed(1)} s)`);
          if (metricsFile && !metricsFailed) {
            try {
              appendFileSync(metricsFile, JSON.stringify({ time: new Date().toISOString(), eval: { percent: pct, step: trainer.steps, frames: counters.framesIngested, ...res } }) + '\n');
            } catch (e) {
              metricsFailed = true;
              o.log(`metrics no longer written (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): ${metricsFile}`);
            }
          }
        }
      }
      if (o.maxArrivals && learner.arrivals >= o.maxArrivals) stop(`--max-arrivals ${o.maxArrivals}`);
      if (due(o.checkpointEvery, lastCkptStep, lastCkptTime)) await checkpointWhenSpace();
      if (due(o.exportEvery, lastExportStep, lastExportTime)) {
        try {
          await doExport();
        } catch (e) {
          lastExportTime = Date.now();
          lastExportStep = trainer.steps;
          o.log(`export failed, training goes on: ${(e as Error).message}`);
        }
      }
    }
  } catch (e) {
    // Keep what was learnt before the failure (the state is the last applied step's).
    try {
      o.log(`stopping on error: ${(e as Error).message}; checkpoint ${checkpoint()}`);
    } catch (e2) {
      o.log(`could not checkpoint either: ${(e2 as Error).message}`);
    }
    await trainer.close().catch(() => {});
    emitted?.close();
    throw e;
  } finally {
    await source.close();
    await camera?.close();
  }
  // Frames of an incomplete arrival were recorded as ingested; they are learnt only if the batch fills,
  // so keep them in the buffer (they count as data seen) without a step.
  if (pending.length) {
    await emit(pending);
    learner.buffer.add(pending);
    await learner.buffer.shrink(learner.rng);
  }
  emitted?.close();
  // Skipped steps never touch the state, so what is saved here is the last good state.
  let ck: string;
  try {
    ck = checkpoint();
  } catch (e) {
    await trainer.close().catch(() => {});
    if (!isDiskFull(e)) throw e;
    throw new AgentError(`disk full (${(e as NodeJS.ErrnoException).code}) writing the final checkpoint in ${ckptDir}; the previous checkpoint ${listCheckpoints(ckptDir).at(-1) ?? '(none)'} is intact; free space and run again to continue`, 4);
  }
  o.log(`checkpoint ${ck}`);
  try {
    await doExport();
  } catch (e) {
    if (!diverged) throw e;
    o.log(`no export: ${(e as Error).message}`);
  }
  if (diverged) {
    await trainer.close();
    throw new AgentError(`training diverged: ${o.maxSkips} consecutive steps had a non-finite loss or gradient; stopped with the last good state checkpointed in ${ck} (lower --lr?)`, 3);
  }
  if (camera?.failed) {
    await trainer.close();
    throw new AgentError(`${camera.endReason}; what was learnt from it is checkpointed (${ck}) and exported`, 1);
  }
  const summary: AgentSummary = {
    ...counters,
    arrivals: learner.arrivals,
    steps: trainer.steps,
    resumedFrom,
    lastExport,
    lossFirst,
    lossLast,
    stoppedBy: stopReason,
  };
  await trainer.close();
  return summary;
}
