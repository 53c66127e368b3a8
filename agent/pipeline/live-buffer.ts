// The buffer's live snapshot (agent/buffer/snapshot.ts) every few seconds while the run trains, so a
// dashboard shows the buffer as it is now rather than as the last checkpoint (minutes ago) had it. A
// viewer's file: a failed write stops it with one line, never training.

import type { Counters } from '../sources/source.ts';
import type { Learner } from '../trainer/learner.ts';
import { removeLiveBuffer, removeStaleLiveBufferTemps, writeLiveBuffer } from '../buffer/snapshot.ts';

export class LiveBuffer {
  private last = 0;
  private off = false;

  constructor(
    private stateDir: string,
    private learner: Learner,
    private counters: Counters,
    fresh: boolean,
    private log: (line: string) => void,
    private everyMs = 5000,
  ) {
    removeStaleLiveBufferTemps(stateDir);
    if (fresh) removeLiveBuffer(stateDir);
  }

  /** After an arrival: a snapshot when the last one is `everyMs` old. */
  maybe(): void {
    if (this.off || Date.now() - this.last < this.everyMs) return;
    this.last = Date.now();
    const l = this.learner;
    try {
      writeLiveBuffer(this.stateDir, l.buffer.entries, { step: l.trainer.steps, arrivals: l.arrivals, framesIngested: this.counters.framesIngested });
    } catch (e) {
      this.off = true;
      this.log(`the live buffer snapshot for dashboards is no longer written (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); training goes on`);
    }
  }
}
