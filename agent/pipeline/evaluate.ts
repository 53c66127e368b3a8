// Inline evaluation of a finite stream at fractions of it (e.g. 25%, 50%, 100%): the figures go to the
// log and the metrics; a resumed run does not repeat an evaluation done before it stopped.

import type { Trainer } from '../trainer/trainer.ts';
import type { Counters, Source } from '../sources/source.ts';
import type { MetricsLog } from './observe.ts';

export interface EvaluateOptions {
  at: number[];
  run: (trainer: Trainer) => Promise<Record<string, number>>;
}

export class InlineEval {
  private next = 0;

  constructor(
    private o: EvaluateOptions | undefined,
    private trainer: Trainer,
    private source: Source,
    private counters: Counters,
    private metrics: MetricsLog,
    private log: (line: string) => void,
  ) {}

  async maybe(): Promise<void> {
    const p = this.source.progress;
    if (!this.o || !p) return;
    const { at } = this.o;
    while (this.next < at.length && p.done >= at[this.next] * p.total) {
      const pct = Math.round(at[this.next++] * 100);
      if (this.counters.evaluatedPct >= pct) continue; // done before a resume
      const t0 = performance.now();
      const res = await this.o.run(this.trainer);
      this.counters.evaluatedPct = pct;
      const step = this.trainer.steps;
      const frames = this.counters.framesIngested;
      this.log(`eval at ${pct}% of the stream (step ${step}, ${frames} frames): ${Object.entries(res).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ')} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
      this.metrics.write({ eval: { percent: pct, step, frames, ...res } });
    }
  }
}
