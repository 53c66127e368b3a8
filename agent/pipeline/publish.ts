// Exports of the encoder into --models, never replacing what is published by an encoder less trained
// (e.g. after resuming from an older checkpoint because the newest did not verify) unless the user
// started over (--fresh), nor by one the health gate refuses (collapsed, or clearly worse than the
// published model on the health set): that one is kept as a rejected version and training goes on.
// Steps compare within a model line only (pipeline/line.ts): a run whose line is not the published
// model's publishes its own line over it, saying so loudly; `ssocl models list` keeps both apart.

import path from 'node:path';
import { exportEncoder, reconcileLatest, type ExportInfo } from '../export/export.ts';
import { describeHealth, type HealthGate, type Verdict } from '../health/gate.ts';
import type { HealthFigures } from '../health/measure.ts';
import type { Learner } from '../trainer/learner.ts';
import { memMB, type MetricsLog } from './observe.ts';
import { readJsonObject } from '../../core/json.ts';
import { LEGACY_LINE, lineOf } from './line.ts';

export interface Published {
  step: number;
  artifact: string;
  sha256: string;
  /** Its model line (LEGACY_LINE when latest.json names none). */
  line: string;
  health?: HealthFigures;
}

/** step, artifact, sha256, line and health figures of models/latest.json, or null if there is none (or it cannot be read). */
export function readPublished(models: string): Published | null {
  const j = readJsonObject(path.join(models, 'latest.json'));
  if (!j || !Number.isInteger(j.step) || typeof j.artifact !== 'string') return null;
  return {
    step: j.step as number, artifact: j.artifact, sha256: typeof j.sha256 === 'string' ? j.sha256 : '', line: lineOf(j),
    ...(j.health && typeof j.health === 'object' ? { health: j.health as HealthFigures } : {}),
  };
}

/** What an export records of the line it belongs to (also in latest.json). */
export interface LineRecord {
  id: string;
  source: string;
  /** The state directory (absolute), where its status.json says what the agent is doing. */
  state: string;
}

export class Publisher {
  last: ExportInfo | null = null;
  private published: Published | null;
  private heldBackLogged = false;
  private otherLineLogged = false;
  /** Why exports are held back now ('' when they are not), for the status record. */
  notPublishing = '';
  private untrainedLogged = false;
  private readonly startSteps: number;

  constructor(
    private models: string,
    private fresh: boolean,
    private artifact: string,
    private learner: Learner,
    private log: (line: string) => void,
    /** The health gate; null: exports are not measured (benchmarks, tests of other parts). */
    private health: HealthGate | null = null,
    private metrics: MetricsLog | null = null,
    /** This run's model line; null: the legacy line (exports without one, as before lines existed). */
    private line: LineRecord | null = null,
  ) {
    // A kill between the publishing renames leaves latest.json and latest.onnx apart: made to agree first.
    const repaired = reconcileLatest(models, log);
    if (repaired) log(repaired);
    this.published = readPublished(models);
    this.startSteps = learner.trainer.steps;
  }

  /**
   * Exports the encoder as it is now; false when held back (it would replace a more trained one). A
   * candidate the health gate refuses counts as exported (kept as a rejected version, not retried).
   */
  async publish(framesSeen: number, loss: number | null): Promise<boolean> {
    const trainer = this.learner.trainer;
    const p = this.published;
    const latest = path.join(this.models, 'latest.onnx');
    // An encoder nobody trained is never published, and a run that trained nothing does not replace
    // what is there (e.g. a run whose source had no frames, pointed at the models of a trained one).
    const untrained = trainer.steps === 0 ? 'the encoder has not been trained yet (step 0)' : p && trainer.steps === this.startSteps ? 'this run has not trained it' : '';
    if (untrained) {
      if (!this.untrainedLogged) this.log(`not exporting: ${untrained}${p ? `; ${latest} (step ${p.step}) stays` : ''}`);
      this.untrainedLogged = true;
      this.notPublishing = untrained;
      return false;
    }
    const line = this.line?.id ?? LEGACY_LINE;
    // Another line's model: its step says nothing about this one. Published over it, loudly.
    const otherLine = p !== null && p.line !== line;
    if (p && !otherLine && !this.fresh && p.artifact === this.artifact && trainer.steps < p.step) {
      if (!this.heldBackLogged) this.log(`not exporting: ${latest} is at step ${p.step}, this run at step ${trainer.steps}; exports resume once training passes it`);
      this.heldBackLogged = true;
      this.notPublishing = `${latest} is at step ${p.step} of this line; exports resume past it`;
      return false;
    }
    this.notPublishing = '';
    if (p && !otherLine && this.fresh && !this.heldBackLogged && trainer.steps < p.step) {
      this.log(`--fresh: replacing ${latest} (step ${p.step}) with this run's encoder (step ${trainer.steps})`);
      this.heldBackLogged = true;
    }
    if (p && otherLine && !this.otherLineLogged) {
      this.log(
        `publishing line ${line} over line ${p.line} (step ${p.step}) in ${latest}: ssocl models list --models ${this.models} keeps both; ` +
          `ssocl models rollback ${p.step} --models ${this.models} puts it back`,
      );
      this.otherLineLogged = true;
    }
    // The export is checked against the trainer's own embedding of up to 8 buffer images.
    const size = trainer.manifest.preset.image.size;
    const entries = this.learner.buffer.entries.slice(0, 8);
    const per = 3 * size * size;
    const count = Math.max(1, entries.length);
    const probe = new Float32Array(count * per);
    if (entries.length) entries.forEach((e, i) => e.image.forEach((v, k) => (probe[i * per + k] = v / 255)));
    else probe.fill(0.5);
    // Measured before anything is written; latest.json is re-read so a rollback since is the reference.
    // Another line's model is no reference for this one: only the health gate's floors apply to it.
    const now = readPublished(this.models);
    const verdict = this.health ? await this.health.check(now && now.line === line ? now : null) : null;
    const rejected = verdict?.reasons.join('; ') ?? '';
    const info = await exportEncoder(trainer, this.models, {
      framesSeen, loss, probe, probeCount: count, health: verdict?.figures, rejected: rejected || undefined, ...(this.line ? { line: this.line } : {}),
    });
    if (verdict) this.report(verdict, info);
    if (rejected) {
      const kept = info.file ? `kept as ${path.join(this.models, info.file)} (rejected)` : 'not kept (its file name is the published model\'s)';
      const stays = readPublished(this.models);
      this.log(`not published: the encoder at step ${info.step} failed the health gate: ${rejected}; ${kept}; ${stays ? `${latest} (step ${stays.step}) stays` : 'nothing is published yet'}; training goes on`);
      this.notPublishing = `the health gate refused step ${info.step}: ${rejected}`;
      await this.health!.settle(verdict!, null);
      return true;
    }
    this.last = info;
    this.published = readPublished(this.models);
    this.log(`exported ${path.join(this.models, info.file)} (step ${info.step}) and ${latest}`);
    if (verdict) await this.health!.settle(verdict, { step: info.step, sha256: info.sha256 });
    return true;
  }

  /**
   * At the end of a run that trained: the line to print when latest.onnx is still another line's model
   * (its export refused, or none due), so such a run never ends quietly; null otherwise.
   */
  otherLineStays(): string | null {
    const steps = this.learner.trainer.steps;
    const p = readPublished(this.models);
    const line = this.line?.id ?? LEGACY_LINE;
    if (steps === this.startSteps || !p || p.line === line) return null;
    return (
      `${path.join(this.models, 'latest.onnx')} is still line ${p.line}'s model (step ${p.step}), not this run's (line ${line}, step ${steps})` +
      `${this.notPublishing ? `: ${this.notPublishing}` : ''}; ssocl models list --models ${this.models} shows both lines`
    );
  }

  /** The figures in the log and as a `health` record in the metrics. */
  private report(v: Verdict, info: ExportInfo): void {
    const ref = v.reference;
    this.log(`health at step ${info.step}: ${describeHealth(v.figures)}${ref && ref.set === v.figures.set ? ` (published step ${ref.step}: rank ${ref.rank.toFixed(2)}, mean cos ${ref.meanCos.toFixed(3)})` : ''}`);
    if (v.ignored.length) this.log(`health gate off (--no-health-gate): would have refused it: ${v.ignored.join('; ')}`);
    // step, frames, loss and mem as in the step records, so readers of the last line of the file keep working.
    this.metrics?.write({
      step: info.step,
      frames: info.framesSeen,
      loss: info.loss,
      mem: memMB(),
      health: { ...v.figures, verdict: info.status, reasons: v.reasons, ...(v.ignored.length ? { ignored: v.ignored } : {}), file: info.file, reference: ref },
    });
  }
}
