// One arrival through the learner, with the EP fallback around it: a run failure of the execution
// provider moves training to --ep-fallback (state kept) or stops the run (exit 5) with the last good
// state checkpointed by the caller.

import { SessionRunError, type EP } from '../trainer/backend.ts';
import type { ArrivalReport, Learner } from '../trainer/learner.ts';
import type { Frame } from '../sources/source.ts';
import { AgentError } from './errors.ts';

export async function learnArrival(learner: Learner, frames: Frame[], epFallback: EP | undefined, log: (line: string) => void): Promise<ArrivalReport> {
  try {
    return await learner.arrive(frames);
  } catch (e) {
    if (!(e instanceof SessionRunError)) throw e;
    const trainer = learner.trainer;
    if (!epFallback || trainer.ep === epFallback) {
      throw new AgentError(`${e.message}; stopped with the last good state checkpointed${!epFallback && trainer.ep !== 'cpu' ? ' (--ep-fallback cpu would have moved training to the CPU)' : ''}`, 5);
    }
    log(`${e.message}; moving training to --ep ${epFallback} as --ep-fallback asks (state kept; the rest of this arrival's updates skipped)`);
    await trainer.reopen(epFallback);
    return { steps: [], trained: false, removed: [], ms: { augment: 0, overlapped: 0, train: 0, buffer: 0 } };
  }
}

/** true when the arrival taught something: no update yet (buffer filling) or at least one applied. */
export function learnt(r: ArrivalReport): boolean {
  return !(r.trained && !r.steps.some((s) => s.applied));
}
