// The agent: frames from a source -> arrivals of b new images -> the learner (buffer + K compiled
// steps) -> checkpoints, exports, metrics. Resumes from the newest checkpoint that verifies;
// SIGINT/SIGTERM finish the current step, checkpoint, export and exit.
//
// The loop only turns frames into arrivals and hands them to the learner. The parts around it:
//   sources/source.ts    the Source interface (dir-input, camera-input, dataset implement it)
//   pipeline/state.ts    resume, checkpoints (and the disk-full pause)
//   pipeline/publish.ts  exports, never replacing a more trained encoder
//   pipeline/learn.ts    the arrival with the EP fallback around it
//   pipeline/observe.ts  metrics, embeddings, loss and skip tallies
//   pipeline/evaluate.ts inline evaluation of a finite stream
//   pipeline/line.ts     the model line of the state (steps compare within a line only)
//   pipeline/status.ts   <state>/status.json: what the agent is doing, for any viewer

import { accessSync, constants, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { removeStaleTemps } from '../core/atomic.ts';
import { ortSimilarity } from './buffer/similarity.ts';
import type { BufferPolicy } from './buffer/buffer.ts';
import type { ExportInfo } from './export/export.ts';
import type { Fit } from './frames/decode.ts';
import { AgentError, ensureWritable } from './pipeline/errors.ts';
import type { EvaluateOptions } from './pipeline/evaluate.ts';
import { InlineEval } from './pipeline/evaluate.ts';
import { Due, type Every } from './pipeline/every.ts';
import { learnArrival, learnt } from './pipeline/learn.ts';
import { LiveBuffer } from './pipeline/live-buffer.ts';
import { EmbeddingLog, MetricsLog, StatusLine, StepTally } from './pipeline/observe.ts';
import { Publisher } from './pipeline/publish.ts';
import { HealthGate, type HealthOptions } from './health/gate.ts';
import { Checkpointer, resume, type Resumed } from './pipeline/state.ts';
import { openLine } from './pipeline/line.ts';
import { StatusRecorder } from './pipeline/status.ts';
import { listCheckpoints } from './trainer/checkpoint.ts';
import { CameraInput, checkCamera } from './sources/camera-input.ts';
import { DatasetSource, type DatasetStream } from './sources/dataset.ts';
import { DirInput } from './sources/dir-input.ts';
import type { Overflow } from './sources/dir.ts';
import { newCounters, type Counters, type Frame, type Source } from './sources/source.ts';
import { openChosen, type EP } from './trainer/backend.ts';
import { Learner, defaultLearnerConfig, type LearnerConfig, type Replay, type Warmup } from './trainer/learner.ts';
import { Trainer } from './trainer/trainer.ts';
import { artifactsMismatch, type Method } from './methods.ts';
import { FleetDevice, type FleetDeviceOptions } from './fleet/device.ts';

export { AgentError, EXIT_NO_TRUSTED_STATE } from './pipeline/errors.ts';
export { parseEvery, type Every } from './pipeline/every.ts';
export type { DatasetStream } from './sources/dataset.ts';

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
  evaluate?: EvaluateOptions;
  /** How often a paused agent (disk full) tries to write its checkpoint again. */
  diskRetryMs: number;
  /** Stop after this many arrivals / seconds / seconds without a new frame (0 = never). */
  maxArrivals: number;
  maxSeconds: number;
  exitWhenIdle: number;
  /** What the model line says the state learns from, instead of the source's own description (the demo's temporary folder). */
  lineSource?: string;
  /** --watch: passes over the folder's frames (1: each once); more needs afterIngest 'keep'. */
  passes?: number;
  maxSkips: number;
  /**
   * The method trained (agent/methods.ts), named in the log; with `checkArtifacts` the artifacts must
   * have been built for it (--method given). Its rules reach the learner through `learner` below.
   */
  method?: { def: Method; checkArtifacts: boolean };
  learner: Partial<Pick<LearnerConfig, 'updates' | 'replay' | 'lr' | 'schedule' | 'scheduleSteps' | 'seed'>> & {
    bufferSize?: number;
    policy?: BufferPolicy;
    /** The strata policies' spans of the stream (a method's; unset: the buffer's default). */
    strata?: number;
    replay?: Replay;
    warmup?: Warmup;
  };
  log: (line: string) => void;
  progress?: (line: string) => void;
  /** A one-line status through `log` this often (ms; 0 or unset: none), for logs without a terminal. */
  statusEveryMs?: number;
  /** The health gate before each export (agent/health/gate.ts); unset fields take its defaults. */
  health?: Partial<HealthOptions>;
  /** Learn with a fleet through an MQTT broker (agent/fleet/device.ts). */
  fleet?: FleetDeviceOptions;
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
  const status: { recorder: StatusRecorder | null } = { recorder: null };
  try {
    const s = await runAgentWith(o, signals, status);
    status.recorder?.stopped(s.stoppedBy || 'stopped', 0);
    return s;
  } catch (e) {
    status.recorder?.stopped((e as Error).message, e instanceof AgentError ? e.exitCode : 1);
    throw e;
  } finally {
    status.recorder?.close();
    if (!keepSignalHandlers) {
      process.off('SIGINT', sigint);
      process.off('SIGTERM', sigterm);
    }
  }
}


/** The watched path must be a directory this process can list and read (else nothing would ever come). */
function checkWatch(dir: string): void {
  const abs = path.resolve(dir);
  let st;
  try {
    st = statSync(abs);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new AgentError(`--watch ${dir}: ${code === 'ENOENT' ? 'no such directory' : `cannot be read (${code})`}`);
  }
  if (!st.isDirectory()) throw new AgentError(`--watch ${dir}: not a directory`);
  try {
    accessSync(abs, constants.R_OK | constants.X_OK);
    readdirSync(abs);
  } catch (e) {
    throw new AgentError(`--watch ${dir}: cannot list it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); the agent needs read and search permission`);
  }
}

/** What can be checked before anything is loaded. */
function checkOptions(o: AgentOptions): void {
  if ([o.watch, o.dataset, o.camera].filter(Boolean).length !== 1) throw new AgentError('give one source: --watch DIR, --camera DEVICE|URL|FILE or --dataset NAME');
  if (o.camera) checkCamera(o.camera.input, o.camera.ffmpeg);
  if (o.watch) checkWatch(o.watch);
  for (const [flag, dir] of [['--state', o.stateDir], ['--models', o.models], ['--quarantine', o.quarantine]] as const) ensureWritable(flag, dir);
  if (o.afterIngest === 'move') ensureWritable('--processed', o.processed);
  if ((o.passes ?? 1) > 1 && !o.watch) throw new AgentError(`--passes ${o.passes}: passes are over a watched folder's frames (--watch DIR)`);
  if ((o.passes ?? 1) > 1 && o.afterIngest !== 'keep') {
    throw new AgentError(`--passes ${o.passes} with --after-ingest ${o.afterIngest}: each pass reads the frames again, so they must stay in the folder (--after-ingest keep)`);
  }
}

/** What the state learns from, for its model line: watch:/abs/dir, camera:INPUT or dataset:LABEL. */
function sourceId(o: AgentOptions): string {
  if (o.lineSource) return o.lineSource;
  if (o.watch) return `watch:${path.resolve(o.watch)}`;
  if (o.camera) return `camera:${o.camera.input}`;
  return `dataset:${o.dataset?.label ?? ''}`;
}

/** The trainer on its EP and the learner with the preset's configuration overridden by the flags. */
async function openLearner(o: AgentOptions): Promise<Learner> {
  const trainer = await Trainer.open(o.artifacts, { ep: o.ep, epFallback: o.epFallback, threads: o.threads, log: o.log });
  const m = trainer.manifest;
  const why = o.method?.checkArtifacts ? artifactsMismatch(o.method.def, { name: m.preset.name, views: m.trainStep.crops.views }) : '';
  if (why) {
    await trainer.close();
    throw new AgentError(`--artifacts ${o.artifacts}: ${why}`, 2);
  }
  const cfg = defaultLearnerConfig(trainer);
  const L = o.learner;
  const learnerCfg: LearnerConfig = {
    ...cfg,
    ...(L.updates !== undefined ? { updates: L.updates } : {}),
    ...(L.replay ? { replay: L.replay } : {}),
    ...(L.warmup ? { warmup: L.warmup } : {}),
    ...(L.lr !== undefined ? { lr: L.lr } : {}),
    ...(L.schedule ? { schedule: L.schedule } : {}),
    ...(L.scheduleSteps ? { scheduleSteps: L.scheduleSteps } : {}),
    ...(L.seed !== undefined ? { seed: L.seed } : {}),
    buffer: { ...cfg.buffer, ...(L.bufferSize ? { capacity: L.bufferSize } : {}), ...(L.policy ? { policy: L.policy } : {}), ...(L.strata ? { strata: L.strata } : {}) },
  };
  return new Learner(trainer, learnerCfg, await ortSimilarity((m) => openChosen(m, { ep: trainer.ep, epFallback: o.epFallback, threads: o.threads, log: o.log })));
}

/** The one place that knows the kinds of source. */
function makeSource(o: AgentOptions, size: number, counters: Counters, resumed: Resumed): Source {
  if (o.dataset) return new DatasetSource(o.dataset, size, counters);
  const common = { size, fit: o.fit, overflow: o.overflow, backlog: o.backlog, log: o.log };
  if (o.camera) return new CameraInput({ ...o.camera, ...common }, counters);
  return new DirInput(
    {
      ...common, watch: o.watch!, recursive: o.recursive, order: o.order, allowHardLinks: !!o.allowHardLinks, rootReplaced: o.rootReplaced ?? 'follow',
      afterIngest: o.afterIngest, processed: o.processed, quarantine: o.quarantine, stateDir: o.stateDir, models: o.models, maxPixels: o.maxPixels, stableMs: o.stableMs,
      passes: o.passes,
    },
    counters,
    resumed,
  );
}

/** Why the run stops ('' while it runs); stopping closes the source so a waiting read returns. */
class Stop {
  reason = '';
  diverged = false;

  constructor(
    private source: Source,
    signals: Signals,
    log: (line: string) => void,
  ) {
    signals.stop = (sig: string) => {
      if (this.reason) return log(`${sig}: already stopping (${this.reason}); the checkpoint and export are being written`);
      log(`${sig}: finishing the current step, then checkpoint and export`);
      this.stop(sig);
    };
    if (signals.got) this.stop(signals.got);
  }

  stop(why: string): void {
    if (!this.reason) this.reason = why;
    void this.source.close();
  }
}

/** The run's parts, built once the state is resumed. */
interface Run {
  o: AgentOptions;
  learner: Learner;
  trainer: Trainer;
  source: Source;
  counters: Counters;
  stop: Stop;
  checkpoints: Checkpointer;
  publisher: Publisher;
  metrics: MetricsLog;
  embeddings: EmbeddingLog;
  tally: StepTally;
  evaluation: InlineEval;
  status: StatusLine;
  liveBuffer: LiveBuffer;
  checkpointDue: Due;
  exportDue: Due;
  resumedFrom: string | null;
  fleet: FleetDevice | null;
  record: StatusRecorder;
}

/** Under mixed (and novel) replay a step's batch is the arrival's new images plus replayed ones: artifacts whose batch cannot hold an arrival would stop at the first one. */
function holdsAnArrival(learner: Learner, artifacts: string): void {
  const { batch, agent } = learner.trainer.manifest.preset;
  if (learner.cfg.replay !== 'buffer' && agent.newPerArrival > batch) {
    throw new AgentError(`--artifacts ${artifacts}: a step of ${batch} images cannot hold an arrival of ${agent.newPerArrival} new images under ${learner.cfg.replay} replay; rebuild them with --set agent.newPerArrival=${batch} (or fewer), or run with --replay buffer`, 2);
  }
}

async function runAgentWith(o: AgentOptions, signals: Signals, status: { recorder: StatusRecorder | null }): Promise<AgentSummary> {
  checkOptions(o);
  const ckptDir = path.join(o.stateDir, 'checkpoints');
  // Temp files of writes a kill interrupted (the files they were replacing are intact).
  const stale = removeStaleTemps(ckptDir) + removeStaleTemps(o.models) + removeStaleTemps(o.stateDir);
  if (stale) o.log(`removed ${stale} temporary file(s) left by an interrupted write`);
  const learner = await openLearner(o);
  const trainer = learner.trainer;
  const m = trainer.manifest;
  const artifact = m.files[m.trainStep.file];
  let line;
  try {
    holdsAnArrival(learner, o.artifacts);
    line = openLine(o, sourceId(o), artifact, listCheckpoints(ckptDir).length > 0);
  } catch (e) {
    await trainer.close();
    throw e;
  }
  // From here on this process owns the state (a run refused above leaves the record of the last one as it is).
  const record = (status.recorder = new StatusRecorder(o.stateDir, line.id, o.log));
  const counters = newCounters();
  const resumed = await resume(o, ckptDir, learner, artifact, counters);
  const source = makeSource(o, m.preset.image.size, counters, resumed);
  const metrics = new MetricsLog(o.metrics, o.log);
  const tally = new StepTally(learner, counters, metrics, o.log);
  const checkpoints = new Checkpointer(ckptDir, learner, artifact, counters, source, o.log, o.diskRetryMs);
  const health = await HealthGate.open({ stateDir: o.stateDir, fresh: o.fresh, fit: o.fit, maxPixels: o.maxPixels, options: o.health }, learner, source, o.log);
  const publisher = new Publisher(o.models, o.fresh, artifact, learner, o.log, health, metrics, { id: line.id, source: line.source, state: path.resolve(o.stateDir) });
  const last = () => ({ checkpoint: checkpoints.lastFile || resumed.file, checkpointAt: checkpoints.lastAt, export: publisher.last ? `step ${publisher.last.step}` : '' });
  const r: Run = {
    o, learner, trainer, source, counters, metrics, tally, checkpoints, publisher,
    stop: new Stop(source, signals, o.log),
    embeddings: new EmbeddingLog(o.emitEmbeddings, learner, source, o.log),
    evaluation: new InlineEval(o.evaluate, trainer, source, counters, metrics, o.log),
    status: new StatusLine(o.statusEveryMs ?? 0, learner, counters, source, tally, last, o.log, () => record.current),
    liveBuffer: new LiveBuffer(o.stateDir, learner, counters, o.fresh, o.log),
    checkpointDue: new Due(o.checkpointEvery, trainer.steps),
    exportDue: new Due(o.exportEvery, trainer.steps),
    resumedFrom: resumed.file || null,
    fleet: o.fleet ? new FleetDevice(o.fleet, trainer, o.log, resumed.fleet) : null,
    record,
  };
  if (r.fleet) {
    const f = r.fleet;
    checkpoints.fleet = () => f.record();
    if (!r.stop.reason) f.start();
  }
  if (!r.stop.reason) await source.start();
  const c = learner.cfg;
  const method = o.method ? `method ${o.method.def.name}, ` : '';
  o.log(
    `${source.describe()}; training ${m.name} on ${trainer.ep}: ${method}${m.preset.agent.newPerArrival} new images per arrival, ${c.updates} updates, ` +
      `buffer ${c.buffer.capacity} (${c.buffer.policy}), replay ${c.replay}${c.warmup === 'fill' ? ', no training until the buffer fills' : ''}`,
  );
  let leftover: Frame[];
  try {
    leftover = await loop(r);
  } catch (e) {
    // Keep what was learnt before the failure (the state is the last applied step's).
    try {
      o.log(`stopping on error: ${(e as Error).message}; checkpoint ${r.checkpoints.write()}`);
    } catch (e2) {
      o.log(`could not checkpoint either: ${(e2 as Error).message}`);
    }
    await trainer.close().catch(() => {});
    await r.fleet?.close(false).catch(() => {});
    r.embeddings.close();
    throw e;
  } finally {
    await source.close();
  }
  return finish(r, leftover);
}

/** After this long without a frame the stream is idle: the last, incomplete arrival is learnt then. */
const IDLE_MS = 5000;

/** Frames -> arrivals until something stops the run; returns the frames of an incomplete arrival. */
async function loop(r: Run): Promise<Frame[]> {
  const { o, source, stop } = r;
  const newPer = r.trainer.manifest.preset.agent.newPerArrival;
  const started = Date.now();
  const waitMs = o.exitWhenIdle ? 250 : 1000;
  // --exit-when-idle shorter than IDLE_MS still learns the incomplete arrival, and says it is idle (status
  // record, log), halfway to the stop: idle and the stop in one instant left no idle record to see.
  const idleMs = o.exitWhenIdle ? Math.min(IDLE_MS, (o.exitWhenIdle * 1000) / 2) : IDLE_MS;
  let lastFrameAt = Date.now();
  const batch: Frame[] = [];
  while (!stop.reason) {
    if (o.maxSeconds && Date.now() - started >= o.maxSeconds * 1000) {
      stop.stop(`--max-seconds ${o.maxSeconds}`);
      break;
    }
    const f = await source.next(waitMs);
    r.status.maybe();
    if (!f) {
      const quietMs = Date.now() - Math.max(lastFrameAt, source.lastActivity ?? 0);
      if (source.ended) {
        // A finite stream (--dataset) whose length is not a multiple of the arrival: its last, short
        // arrival is learnt as the folder's is when it idles (it was only added to the buffer, and an
        // --eval-every at 100 % never ran).
        if (batch.length) await arrival(r, batch.splice(0));
        if (!stop.reason) stop.stop(source.ended);
      } else if (!source.busy && !source.waiting) await drained(r, batch, quietMs >= idleMs, quietMs);
      if (!stop.reason && o.exitWhenIdle && !source.busy && !batch.length && !source.waiting && quietMs >= o.exitWhenIdle * 1000) stop.stop(`idle for ${o.exitWhenIdle}s (--exit-when-idle)`);
      continue;
    }
    lastFrameAt = Date.now();
    r.counters.framesIngested++;
    batch.push(f);
    if (batch.length >= newPer) await arrival(r, batch.splice(0));
  }
  return batch;
}

/**
 * Nothing waiting: a folder pass that is read whole is finished (its incomplete arrival learnt, then
 * checkpointed, so the ledger holds it) and the next begins; after the last pass, or for other sources,
 * the stream is idle once `quiet`: the incomplete arrival is learnt and the agent says it waits.
 */
async function drained(r: Run, batch: Frame[], quiet: boolean, quietMs: number): Promise<void> {
  const { o, source } = r;
  const pass = source.pass;
  const passEnds = !!pass && pass.index < pass.of;
  if (!passEnds && !quiet) return;
  if (batch.length) await arrival(r, batch.splice(0));
  if (r.stop.reason) return;
  if (passEnds) {
    await r.checkpoints.writeWhenSpace(() => r.stop.reason);
    r.checkpointDue.done(r.trainer.steps);
    o.log(`pass ${pass.index}/${pass.of} done: ${pass.frames} frames learnt`);
    source.nextPass?.();
    return;
  }
  const now = source.pass;
  const why = now ? `all ${now.total} frames learnt${now.of > 1 ? ` (${now.of} passes)` : ''}, waiting for new ones` : 'no new frame, waiting';
  if (r.record.current.phase !== 'idle') o.log(`idle: ${why}`);
  r.record.update({ phase: 'idle', reason: why, ...figures(r) });
  o.progress?.(`idle: ${why} (${Math.round(quietMs / 1000)}s)`);
}

/** The counts the status record carries. */
function figures(r: Run) {
  return {
    step: r.trainer.steps, arrival: r.learner.arrivals, frames: r.counters.framesIngested, pass: r.source.pass ?? null,
    publishing: r.publisher.last !== null && !r.publisher.notPublishing, notPublishing: r.publisher.notPublishing || null,
  };
}

/** One arrival: learn, report, then whatever is due (evaluation, checkpoint, export). */
async function arrival(r: Run, frames: Frame[]): Promise<void> {
  const { o, learner, trainer, counters, tally } = r;
  const rep = await learnArrival(learner, frames, o.epFallback, o.log);
  await r.embeddings.emit(frames);
  r.source.arrivalDone(frames, learnt(rep));
  tally.observe(rep);
  r.liveBuffer.maybe();
  if (r.fleet) {
    if (rep.trained) r.fleet.learnt(frames.length);
    await r.fleet.between();
  }
  if (tally.consecutiveSkips >= o.maxSkips) {
    r.stop.diverged = true;
    r.stop.stop('diverged');
    return;
  }
  r.record.update({ phase: 'training', reason: null, ...figures(r) });
  const pass = r.source.pass;
  o.progress?.(
    `training  step ${trainer.steps}  arrival ${learner.arrivals}  frames ${counters.framesIngested}${pass && pass.of > 1 ? `  pass ${pass.index}/${pass.of}, ${pass.frames}/${pass.total} frames` : ''}  loss ${tally.lossLast?.toFixed(4) ?? '-'}  buffer ${learner.buffer.size}  waiting ${r.source.waiting}  quarantined ${counters.quarantined}${rep.trained ? '' : '  (filling the buffer)'}`,
  );
  await r.evaluation.maybe();
  if (o.maxArrivals && learner.arrivals >= o.maxArrivals) r.stop.stop(`--max-arrivals ${o.maxArrivals}`);
  if (r.checkpointDue.due(trainer.steps)) {
    await r.checkpoints.writeWhenSpace(() => r.stop.reason);
    r.checkpointDue.done(trainer.steps);
  }
  if (r.exportDue.due(trainer.steps)) {
    try {
      // Held back (a more trained encoder is published): due again at the next arrival.
      if (await r.publisher.publish(counters.framesIngested, tally.lossLast)) r.exportDue.done(trainer.steps);
    } catch (e) {
      r.exportDue.done(trainer.steps);
      o.log(`export failed, training goes on: ${(e as Error).message}`);
    }
    r.record.update(figures(r));
  }
}

/** The last checkpoint and export, and the summary (or the error the run ends with). */
async function finish(r: Run, leftover: Frame[]): Promise<AgentSummary> {
  const { o, learner, trainer } = r;
  r.record.update({ phase: 'stopping', reason: r.stop.reason || null, ...figures(r) });
  // Frames of an incomplete arrival are committed with the final checkpoint; they are learnt only if
  // the batch fills, so keep them in the buffer (they count as data seen) without a step.
  if (leftover.length) {
    await r.embeddings.emit(leftover);
    learner.buffer.add(leftover);
    await learner.shrink();
  }
  r.embeddings.close();
  // The fleet's last merge and update change or record the state: before the final checkpoint.
  if (r.fleet) await r.fleet.close(!r.stop.diverged);
  // Skipped steps never touch the state, so what is saved here is the last good state.
  let ck: string;
  try {
    ck = r.checkpoints.final();
  } catch (e) {
    await trainer.close().catch(() => {});
    throw e;
  }
  o.log(`checkpoint ${ck}`);
  try {
    await r.publisher.publish(r.counters.framesIngested, r.tally.lossLast);
  } catch (e) {
    if (!r.stop.diverged) throw e;
    o.log(`no export: ${(e as Error).message}`);
  }
  const stays = r.publisher.otherLineStays();
  if (stays) o.log(stays);
  r.record.update(figures(r));
  await trainer.close();
  if (r.stop.diverged) {
    throw new AgentError(`training diverged: ${o.maxSkips} consecutive steps had a non-finite loss or gradient; stopped with the last good state checkpointed in ${ck} (lower --lr?)`, 3);
  }
  if (r.source.failed) throw new AgentError(`${r.source.ended}; what was learnt from it is checkpointed (${ck}) and exported`, 1);
  return {
    ...r.counters,
    arrivals: learner.arrivals,
    steps: trainer.steps,
    resumedFrom: r.resumedFrom,
    lastExport: r.publisher.last,
    lossFirst: r.tally.lossFirst,
    lossLast: r.tally.lossLast,
    stoppedBy: r.stop.reason,
  };
}
