// The run's state on disk: resuming from the newest checkpoint that verifies, and writing checkpoints
// (a full disk pauses the run until one can be written again). The learner's state goes in and comes
// out through trainer/checkpoint.ts's toCheckpoint/fromCheckpoint only.

import { mkdirSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fromCheckpoint, latestCheckpoint, listCheckpoints, saveCheckpoint, toCheckpoint, type PendingFrame } from '../trainer/checkpoint.ts';
import { restoreLearner, snapshotLearner, StateError, type Learner } from '../trainer/learner.ts';
import type { Counters, Source } from '../sources/source.ts';
import type { FleetRecord } from '../trainer/checkpoint.ts';
import { AgentError, EXIT_NO_TRUSTED_STATE, isDiskFull } from './errors.ts';

export interface Resumed {
  /** The checkpoint resumed from ('' for a new run). */
  file: string;
  /** Frames it learnt from since the one before it (committed at the next checkpoint). */
  pending: PendingFrame[];
  /** Newer checkpoints did not verify. */
  rejectedNewer: boolean;
  /** A fleet device's state, if the checkpoint has one. */
  fleet?: FleetRecord | null;
}

/**
 * Restores `learner` and `counters` from the newest checkpoint in `ckptDir` that verifies (--fresh:
 * removes the checkpoints and the ledger instead). Checkpoints that do not verify are moved aside;
 * when none verifies the run stops (EXIT_NO_TRUSTED_STATE) rather than start over by itself.
 */
export async function resume(o: { fresh: boolean; stateDir: string; log: (line: string) => void }, ckptDir: string, learner: Learner, artifact: string, counters: Counters): Promise<Resumed> {
  if (o.fresh) {
    rmSync(ckptDir, { recursive: true, force: true });
    rmSync(path.join(o.stateDir, 'ingested.log'), { force: true });
    return { file: '', pending: [], rejectedNewer: false };
  }
  const rejected: string[] = [];
  const last = latestCheckpoint(ckptDir, o.log, rejected);
  if (!last && rejected.length) {
    throw new AgentError(`--state ${o.stateDir}: none of its ${rejected.length} checkpoint(s) verifies (see above); not starting over by itself: --fresh starts from scratch, or restore a good checkpoint into ${ckptDir}`, EXIT_NO_TRUSTED_STATE);
  }
  if (!last) return { file: '', pending: [], rejectedNewer: false };
  if (rejected.length) {
    // Kept for a look, out of the way: left in place they would stay "newest" and outlive rotation.
    const aside = path.join(ckptDir, 'rejected');
    mkdirSync(aside, { recursive: true });
    for (const f of rejected) renameSync(f, path.join(aside, path.basename(f)));
    o.log(`resuming from the older ${last.file}: ${rejected.length} newer checkpoint(s) did not verify (moved to ${aside}); the frames learnt since are taken again`);
  }
  const c = fromCheckpoint(last.data);
  if (c.run.artifact !== artifact) {
    throw new AgentError(`--state ${o.stateDir}: its checkpoint belongs to other artifacts (${c.run.artifact.slice(0, 12)}...); use --fresh to start over, another --state for a new model line, or point --artifacts at the ones it was made with`);
  }
  try {
    await restoreLearner(learner, c.learner);
  } catch (e) {
    if (e instanceof StateError) throw new AgentError(`${last.file}: ${e.message}`);
    throw e;
  }
  Object.assign(counters, c.run.counters);
  o.log(`resumed from ${last.file}: step ${learner.trainer.steps}, ${learner.arrivals} arrivals, buffer ${learner.buffer.size}`);
  return { file: last.file, pending: c.run.pending, rejectedNewer: rejected.length > 0, fleet: c.run.fleet ?? null };
}

/** Writes checkpoints of the learner, the counters and the source's pending frames. */
export class Checkpointer {
  /** The last checkpoint this run wrote, and when (for the status line). */
  lastFile = '';
  lastAt = 0;
  /** A fleet device's state, saved with the learner's (run --fleet). */
  fleet: (() => FleetRecord) | null = null;

  constructor(
    readonly dir: string,
    private learner: Learner,
    private artifact: string,
    private counters: Counters,
    private source: Source,
    private log: (line: string) => void,
    private retryMs: number,
  ) {}

  /** Writes (and verifies) one; the source then commits what it holds. Returns its path. */
  write(): string {
    this.source.save(this.counters);
    const run = { artifact: this.artifact, framesIngested: this.counters.framesIngested, counters: this.counters, pending: this.source.pendingFrames(), fleet: this.fleet?.() ?? null };
    const file = saveCheckpoint(this.dir, toCheckpoint(snapshotLearner(this.learner), run));
    this.source.committed(file);
    this.lastFile = file;
    this.lastAt = Date.now();
    return file;
  }

  get newest(): string {
    return listCheckpoints(this.dir).at(-1) ?? '(none yet)';
  }

  /**
   * A full disk pauses the run (no new frames taken) until a checkpoint can be written again; the
   * previous checkpoint and export stay intact (atomic writes). `stopping()` says why the run is
   * stopping ('' if it is not): then waiting ends with exit code 4.
   */
  async writeWhenSpace(stopping: () => string): Promise<string> {
    let waiting = false;
    for (;;) {
      try {
        const file = this.write();
        if (waiting) this.log(`space is back: checkpoint ${file} written, training resumes`);
        return file;
      } catch (e) {
        if (!isDiskFull(e)) throw e;
        const code = (e as NodeJS.ErrnoException).code;
        if (stopping()) throw new AgentError(`disk full (${code}) writing a checkpoint in ${this.dir}; stopped (${stopping()}); the previous checkpoint ${this.newest} is intact`, 4);
        if (!waiting) this.log(`disk full (${code}): cannot write a checkpoint in ${this.dir}; paused, the previous checkpoint ${this.newest} and export are intact; retrying every ${this.retryMs / 1000}s`);
        waiting = true;
        await new Promise((r) => setTimeout(r, this.retryMs));
      }
    }
  }

  /** The last checkpoint of a run: a full disk ends it (exit 4) instead of pausing. */
  final(): string {
    try {
      return this.write();
    } catch (e) {
      if (!isDiskFull(e)) throw e;
      throw new AgentError(`disk full (${(e as NodeJS.ErrnoException).code}) writing the final checkpoint in ${this.dir}; the previous checkpoint ${this.newest} is intact; free space and run again to continue`, 4);
    }
  }
}
