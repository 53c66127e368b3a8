// Model lines: a state and the encoders it publishes form one line, named by a random id made when the
// state starts (with the artifacts' train-step sha256 and the source it learns from). Step numbers
// compare within a line only: a model of another line (another state, source or artifacts) is not
// "more trained" than this run's, it is another model. The line is kept in <state>/line.json, written
// in every export's sidecar and in latest.json; a state resumed with another source or other
// artifacts would mix two lines in one model, so it is refused before any work.

import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { writeFileAtomic } from '../../core/atomic.ts';
import { readJsonObject } from '../../core/json.ts';
import { AgentError } from './errors.ts';

export interface Line {
  /** The random id, e.g. "7c1f0a9e42d3". */
  id: string;
  /** The train step's sha256 (manifest files[trainStep.file]). */
  artifact: string;
  /** What the state learns from: watch:/abs/dir, camera:INPUT, dataset:LABEL. */
  source: string;
  created: string;
}

export { LEGACY_LINE, lineOf } from '../export/export.ts';

export const lineFile = (stateDir: string) => path.join(stateDir, 'line.json');

export function readLine(stateDir: string): Line | null {
  const j = readJsonObject(lineFile(stateDir));
  if (!j || typeof j.id !== 'string' || typeof j.artifact !== 'string' || typeof j.source !== 'string') return null;
  return { id: j.id, artifact: j.artifact, source: j.source, created: typeof j.created === 'string' ? j.created : '' };
}

/**
 * This run's line. A state without checkpoints (new, or --fresh) keeps the line it has when the source
 * and artifacts are the same (--fresh starts the same line over) and otherwise gets a new one; a state
 * with checkpoints must have been made with this source and these artifacts (one line, exit 2,
 * otherwise). A state made before lines existed is given one.
 */
export function openLine(o: { stateDir: string; fresh: boolean; log: (line: string) => void }, source: string, artifact: string, hasCheckpoints: boolean): Line {
  const had = readLine(o.stateDir);
  const same = had && had.source === source && had.artifact === artifact;
  if (hasCheckpoints && !o.fresh && had && !same) {
    const what = had.artifact !== artifact ? `artifacts ${had.artifact.slice(0, 12)} (these are ${artifact.slice(0, 12)})` : `source ${had.source} (this run's is ${source})`;
    throw new AgentError(
      `--state ${o.stateDir}: its checkpoints are line ${had.id}, trained on ${what}; resuming would mix two models: give another --state for a new line, or --fresh to start this state over (its checkpoints and ledger are discarded)`,
      2,
    );
  }
  if (same) return had;
  const line: Line = { id: randomBytes(6).toString('hex'), artifact, source, created: new Date().toISOString() };
  writeFileAtomic(lineFile(o.stateDir), JSON.stringify(line, null, 1) + '\n');
  if (hasCheckpoints && !o.fresh) o.log(`--state ${o.stateDir}: made before model lines; its line is now ${line.id} (${source})`);
  return line;
}
