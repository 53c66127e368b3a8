// Exports of the encoder into --models, never replacing what is published by an encoder less trained
// (e.g. after resuming from an older checkpoint because the newest did not verify) unless the user
// started over (--fresh).

import { readFileSync } from 'node:fs';
import path from 'node:path';
import { exportEncoder, reconcileLatest, type ExportInfo } from '../export/export.ts';
import type { Learner } from '../trainer/learner.ts';

/** step and artifact of models/latest.json, or null if there is none (or it cannot be read). */
export function readPublished(models: string): { step: number; artifact: string } | null {
  try {
    const j = JSON.parse(readFileSync(path.join(models, 'latest.json'), 'utf8'));
    return Number.isInteger(j.step) && typeof j.artifact === 'string' ? { step: j.step, artifact: j.artifact } : null;
  } catch {
    return null;
  }
}

export class Publisher {
  last: ExportInfo | null = null;
  private published: { step: number; artifact: string } | null;
  private heldBackLogged = false;
  private untrainedLogged = false;
  private readonly startSteps: number;

  constructor(
    private models: string,
    private fresh: boolean,
    private artifact: string,
    private learner: Learner,
    private log: (line: string) => void,
  ) {
    // A kill between the publishing renames leaves latest.json and latest.onnx apart: made to agree first.
    const repaired = reconcileLatest(models);
    if (repaired) log(repaired);
    this.published = readPublished(models);
    this.startSteps = learner.trainer.steps;
  }

  /** Exports the encoder as it is now; false when held back (it would replace a more trained one). */
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
      return false;
    }
    if (p && !this.fresh && p.artifact === this.artifact && trainer.steps < p.step) {
      if (!this.heldBackLogged) this.log(`not exporting: ${latest} is at step ${p.step}, this run at step ${trainer.steps}; exports resume once training passes it`);
      this.heldBackLogged = true;
      return false;
    }
    if (p && this.fresh && !this.heldBackLogged && trainer.steps < p.step) {
      this.log(`--fresh: replacing ${latest} (step ${p.step}) with this run's encoder (step ${trainer.steps})`);
      this.heldBackLogged = true;
    }
    // The export is checked against the trainer's own embedding of up to 8 buffer images.
    const size = trainer.manifest.preset.image.size;
    const entries = this.learner.buffer.entries.slice(0, 8);
    const per = 3 * size * size;
    const count = Math.max(1, entries.length);
    const probe = new Float32Array(count * per);
    if (entries.length) entries.forEach((e, i) => e.image.forEach((v, k) => (probe[i * per + k] = v / 255)));
    else probe.fill(0.5);
    this.last = await exportEncoder(trainer, this.models, { framesSeen, loss, probe, probeCount: count });
    this.log(`exported ${path.join(this.models, this.last.file)} (step ${this.last.step}) and ${latest}`);
    return true;
  }
}
