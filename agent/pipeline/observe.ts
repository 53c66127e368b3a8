// What the run reports beside training: the metrics file (a JSON line per step and per evaluation),
// the embeddings of ingested frames, and the loss and skip tallies the summary and the divergence stop
// read. A write that fails (disk full, file removed) stops that output with one line, never training.

import { appendFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { JsonlSink } from '../infer/io.ts';
import type { Source, Frame, Counters } from '../sources/source.ts';
import type { ArrivalReport, Learner } from '../trainer/learner.ts';
import type { AgentStatus } from './status.ts';

/** Memory in MB for the metrics: RSS beside the JS heap and buffers, so a long run shows which one grows. */
export function memMB(): { rss: number; heap: number; heapTotal: number; external: number; arrayBuffers: number } {
  const m = process.memoryUsage();
  const mb = (b: number) => Math.round(b / 104857.6) / 10;
  return { rss: mb(m.rss), heap: mb(m.heapUsed), heapTotal: mb(m.heapTotal), external: mb(m.external), arrayBuffers: mb(m.arrayBuffers) };
}

const why = (e: unknown) => (e as NodeJS.ErrnoException).code ?? (e as Error).message;

/** --metrics FILE: one JSON object per line, appended. */
export class MetricsLog {
  private file: string | null;

  constructor(
    file: string | undefined,
    private log: (line: string) => void,
  ) {
    this.file = file ? path.resolve(file) : null;
    if (this.file) mkdirSync(path.dirname(this.file), { recursive: true });
  }

  write(record: Record<string, unknown>): void {
    if (!this.file) return;
    try {
      appendFileSync(this.file, JSON.stringify({ time: new Date().toISOString(), ...record }) + '\n');
    } catch (e) {
      this.log(`metrics no longer written (${why(e)}): ${this.file}`);
      this.file = null;
    }
  }
}

/** --emit-embeddings FILE: each ingested frame's backbone features from the weights being trained. */
export class EmbeddingLog {
  private sink: JsonlSink | null = null;
  private readonly sha: string;

  constructor(
    private file: string | undefined,
    private learner: Learner,
    private source: Source,
    private log: (line: string) => void,
  ) {
    const m = learner.trainer.manifest;
    this.sha = m.files[m.trainStep.file]?.slice(0, 16) ?? '';
    if (file) {
      mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
      this.sink = new JsonlSink(path.resolve(file));
    }
  }

  async emit(frames: Frame[]): Promise<void> {
    if (!this.sink || !frames.length) return;
    const trainer = this.learner.trainer;
    const per = frames[0].image.length;
    const x = new Float32Array(frames.length * per);
    frames.forEach((p, j) => {
      for (let k = 0; k < per; k++) x[j * per + k] = p.image[k] / 255;
    });
    const { features } = await trainer.embed(x, frames.length);
    const d = features.length / frames.length;
    const now = new Date().toISOString();
    try {
      frames.forEach((p, j) => this.sink!.add({ key: p.key, path: this.source.where(p.key), time: now, model: { sha256: this.sha, step: trainer.steps } }, features.subarray(j * d, (j + 1) * d)));
    } catch (e) {
      this.log(`embeddings no longer written (${why(e)}): ${this.file}`);
      this.close();
    }
  }

  close(): void {
    this.sink?.close();
    this.sink = null;
  }
}

/** Per-step bookkeeping: skipped steps logged and counted, the loss tallied, a metrics line each. */
export class StepTally {
  lossFirst: number | null = null;
  lossLast: number | null = null;
  consecutiveSkips = 0;

  constructor(
    private learner: Learner,
    private counters: Counters,
    private metrics: MetricsLog,
    private log: (line: string) => void,
  ) {}

  observe(r: ArrivalReport): void {
    const { learner, counters } = this;
    for (const s of r.steps) {
      if (!s.applied) {
        counters.skippedSteps++;
        this.consecutiveSkips++;
        this.log(`step skipped: non-finite loss or gradient, or a blow-up of the weights (loss ${s.loss}, grad norm ${s.gradNorm}); parameters kept`);
      } else {
        this.consecutiveSkips = 0;
        this.lossFirst ??= s.loss;
        this.lossLast = s.loss;
      }
      this.metrics.write({
        step: s.step,
        arrival: learner.arrivals,
        loss: s.loss,
        terms: s.terms,
        lr: s.lr,
        ms: Math.round(s.ms),
        cropsPerS: Math.round((learner.trainer.cropsShape[0] / s.ms) * 1000),
        gradNorm: s.gradNorm,
        gradCos: s.gradCos,
        applied: s.applied,
        buffer: learner.buffer.size,
        nnSim: learner.buffer.meanNearestSimilarity(),
        frames: counters.framesIngested,
        mem: memMB(),
      });
    }
  }
}

/**
 * A periodic one-line status for logs without a terminal (a service, a file): without it a long run
 * prints nothing between its start line and its summary.
 */
export class StatusLine {
  private at = Date.now();
  private steps: number;
  private frames: number;

  constructor(
    private everyMs: number,
    private learner: Learner,
    private counters: Counters,
    private source: Source,
    private tally: StepTally,
    private last: () => { checkpoint: string; checkpointAt: number; export: string },
    private log: (line: string) => void,
    /** The status record: its phase (and why) and the pass lead the line. */
    private now: () => Readonly<AgentStatus>,
  ) {
    this.steps = learner.trainer.steps;
    this.frames = counters.framesIngested;
  }

  maybe(): void {
    const now = Date.now();
    if (!(this.everyMs > 0) || now - this.at < this.everyMs) return;
    const steps = this.learner.trainer.steps;
    const rate = (steps - this.steps) / ((now - this.at) / 1000);
    const c = this.counters;
    const l = this.last();
    const ago = (t: number) => `${Math.round((now - t) / 1000)} s ago`;
    const st = this.now();
    const p = st.pass;
    this.log(
      `status: ${st.phase}${st.reason ? ` (${st.reason})` : ''}${p && p.of > 1 ? `, pass ${p.index}/${p.of}, ${p.frames}/${p.total} frames` : ''}` +
        `${st.notPublishing ? `, not publishing: ${st.notPublishing}` : ''}; frames ${c.framesIngested} (+${c.framesIngested - this.frames}), step ${steps} (${rate.toFixed(2)}/s), loss ${this.tally.lossLast?.toFixed(4) ?? '-'}, ` +
        `buffer ${this.learner.buffer.size}, waiting ${this.source.waiting}, quarantined ${c.quarantined}, ` +
        `checkpoint ${l.checkpoint ? `${path.basename(l.checkpoint)} (${l.checkpointAt ? ago(l.checkpointAt) : 'resumed from'})` : 'none yet'}, export ${l.export || 'none yet'}`,
    );
    this.at = now;
    this.steps = steps;
    this.frames = c.framesIngested;
  }
}
