// The agent's status record (<state>/status.json, which `ssocl run` keeps: its phase, why it idles or
// stopped, whether it publishes, where it is, refreshed at least every heartbeatSeconds while it lives)
// as the dashboard's header shows it. Read-only and tolerant: a missing, half-written or foreign file
// reads as "no status", and a record whose heartbeat stopped reads as such, whatever its phase says.

import { age, isStale, readStatus as readStateStatus, type AgentStatus, type Phase } from '../pipeline/status.ts';
import path from 'node:path';

/** The record as the agent writes it (agent/pipeline/status.ts). */
export type StatusRecord = AgentStatus;

/** The record in `file` (a state's status.json), or null when it is absent or not a schema-1 record. */
export function readStatus(file: string): StatusRecord | null {
  return readStateStatus(path.dirname(file));
}

/** What the header shows. */
export interface AgentStatusView {
  /** The record's phase, or 'stale' when its heartbeat stopped, 'unknown' with no record. */
  phase: Phase | 'stale' | 'unknown';
  /** One line: 'training · step 42 · pass 2/3, 120/300 frames', 'stopped: --max-seconds 85 (exit 0)', ... */
  label: string;
  /** Why it does not publish, or null. */
  notPublishing: string | null;
  /** How old the record was when this was made (ms; the page counts on from there), null with no record. */
  ageMs: number | null;
  record: StatusRecord | null;
}

export function describeStatus(r: StatusRecord | null, now = Date.now()): AgentStatusView {
  if (!r) return { phase: 'unknown', label: 'agent: no status record yet', notPublishing: null, ageMs: null, record: null };
  const ageMs = now - Date.parse(r.time);
  const why = r.reason ? `: ${r.reason}` : '';
  const pass = r.pass ? ` · pass ${r.pass.index}/${r.pass.of}, ${r.pass.frames}/${r.pass.total} frames` : '';
  const label = isStale(r, now)
    ? `no heartbeat for ${age(ageMs)} (was ${r.phase})`
    : r.phase === 'training'
      ? `training · step ${r.step}${pass}`
      : r.phase === 'stopped'
        ? `stopped${why}${r.exitCode === null ? '' : ` (exit ${r.exitCode})`}`
        : `${r.phase}${why}`;
  return { phase: isStale(r, now) ? 'stale' : r.phase, label, notPublishing: held(r), ageMs, record: r };
}

/** Why exports are held, or null. A stopped agent publishes nothing more: only a reason it recorded counts. */
function held(r: StatusRecord): string | null {
  if (r.publishing) return null;
  return r.notPublishing ?? (r.phase === 'stopped' ? null : 'not publishing');
}
