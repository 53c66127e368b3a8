// The agent's status record (<state>/status.json, which `ssocl run` keeps: its phase, why it idles or
// stopped, whether it publishes, where it is, refreshed at least every heartbeatSeconds while it lives)
// as the dashboard's header shows it. Read-only and tolerant: a missing, half-written or foreign file
// reads as "no status", and a record whose heartbeat stopped reads as such, whatever its phase says.

import { readJsonObject } from '../../core/json.ts';

export type Phase = 'starting' | 'training' | 'idle' | 'stopping' | 'stopped';
const PHASES: Phase[] = ['starting', 'training', 'idle', 'stopping', 'stopped'];

export interface StatusRecord {
  schema: 1;
  pid: number;
  line: string;
  phase: Phase;
  reason: string | null;
  exitCode: number | null;
  publishing: boolean;
  notPublishing: string | null;
  step: number;
  arrival: number;
  frames: number;
  pass: { index: number; of: number; frames: number; total: number } | null;
  time: string;
  heartbeatSeconds: number;
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

const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const strOrNull = (v: unknown): v is string | null => v === null || typeof v === 'string';

/** The record in `file`, or null when it is absent or not a schema-1 status record. */
export function readStatus(file: string): StatusRecord | null {
  const j = readJsonObject(file);
  if (!j || j.schema !== 1 || !PHASES.includes(j.phase as Phase) || !isNum(j.step) || !isNum(j.heartbeatSeconds) || !Number.isFinite(Date.parse(String(j.time)))) return null;
  if (!strOrNull(j.reason) || !strOrNull(j.notPublishing) || !(j.exitCode === null || isNum(j.exitCode))) return null;
  const p = j.pass as StatusRecord['pass'];
  const pass = p && typeof p === 'object' && isNum(p.index) && isNum(p.of) && isNum(p.frames) && isNum(p.total) ? p : null;
  return {
    schema: 1, pid: isNum(j.pid) ? j.pid : 0, line: typeof j.line === 'string' ? j.line : '', phase: j.phase as Phase, reason: j.reason, exitCode: j.exitCode as number | null,
    publishing: j.publishing !== false, notPublishing: j.notPublishing, step: j.step, arrival: isNum(j.arrival) ? j.arrival : 0, frames: isNum(j.frames) ? j.frames : 0, pass,
    time: String(j.time), heartbeatSeconds: j.heartbeatSeconds,
  };
}

/** '45 s', '2 min', '3 h', '2 days' (rounded down: "no heartbeat for 2 min" is at least 2 minutes). */
export function age(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 172_800) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86_400)} days`;
}

/** A record is stale when the agent has not refreshed it for 3 heartbeats and it did not say it stopped. */
export function isStale(r: StatusRecord, now: number): boolean {
  return r.phase !== 'stopped' && now - Date.parse(r.time) > 3 * r.heartbeatSeconds * 1000;
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
  return { phase: isStale(r, now) ? 'stale' : r.phase, label, notPublishing: r.publishing ? null : (r.notPublishing ?? 'not publishing'), ageMs, record: r };
}
