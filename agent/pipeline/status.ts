// The agent's status record, <state>/status.json: what the agent is doing now (starting, training, idle
// and why, stopping, stopped with why and the exit code, whether exports are held and why), rewritten
// atomically on each change and at least every heartbeatSeconds while the process lives, so any viewer
// (the dashboard, `ssocl models list`, a script) can tell a live agent from a dead one by its age.
// readStatus and describeStatus are the readers' side; StatusRecorder the agent's.

import path from 'node:path';
import { writeFileAtomic } from '../../core/atomic.ts';
import { readJsonObject } from '../../core/json.ts';

export type Phase = 'starting' | 'training' | 'idle' | 'stopping' | 'stopped';
const PHASES: Phase[] = ['starting', 'training', 'idle', 'stopping', 'stopped'];

export interface PassProgress {
  /** 1-based pass over the folder's frames, of `of`. */
  index: number;
  of: number;
  /** Frames learnt in this pass so far, of `total` known now. */
  frames: number;
  total: number;
}

export interface AgentStatus {
  schema: 1;
  pid: number;
  line: string;
  phase: Phase;
  /** idle: why (e.g. "all 300 frames learnt, waiting for new ones"); stopped: why it stopped. */
  reason: string | null;
  exitCode: number | null;
  publishing: boolean;
  /** Why exports are held (health gate, untrained, ...), or null. */
  notPublishing: string | null;
  step: number;
  arrival: number;
  frames: number;
  pass: PassProgress | null;
  /** ISO-8601; refreshed at least every heartbeatSeconds while the agent lives. */
  time: string;
  heartbeatSeconds: number;
}

export const HEARTBEAT_SECONDS = 10;
export const statusFile = (stateDir: string) => path.join(stateDir, 'status.json');

const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const strOrNull = (v: unknown): v is string | null => v === null || typeof v === 'string';

/** A status record from parsed JSON, or null when it is not a schema-1 record (a half-written or foreign file). */
export function parseStatus(j: Record<string, unknown> | null): AgentStatus | null {
  if (!j || j.schema !== 1 || !PHASES.includes(j.phase as Phase) || !isNum(j.step) || !isNum(j.heartbeatSeconds) || !Number.isFinite(Date.parse(String(j.time)))) return null;
  if (!strOrNull(j.reason) || !strOrNull(j.notPublishing) || !(j.exitCode === null || isNum(j.exitCode))) return null;
  const p = j.pass as AgentStatus['pass'];
  const pass = p && typeof p === 'object' && isNum(p.index) && isNum(p.of) && isNum(p.frames) && isNum(p.total) ? p : null;
  return {
    schema: 1, pid: isNum(j.pid) ? j.pid : 0, line: typeof j.line === 'string' ? j.line : '', phase: j.phase as Phase, reason: j.reason, exitCode: j.exitCode as number | null,
    publishing: j.publishing !== false, notPublishing: j.notPublishing, step: j.step, arrival: isNum(j.arrival) ? j.arrival : 0, frames: isNum(j.frames) ? j.frames : 0, pass,
    time: String(j.time), heartbeatSeconds: j.heartbeatSeconds,
  };
}

/** The record in `stateDir`, or null when there is none or it is not one (never throws). */
export function readStatus(stateDir: string): AgentStatus | null {
  return parseStatus(readJsonObject(statusFile(stateDir)));
}

/** A record is stale when the agent has not refreshed it for 3 heartbeats and it did not say it stopped. */
export function isStale(r: AgentStatus, now: number): boolean {
  return r.phase !== 'stopped' && now - Date.parse(r.time) > 3 * r.heartbeatSeconds * 1000;
}

/** '45 s', '2 min', '3 h', '2 days' (rounded down: "no heartbeat for 2 min" is at least 2 minutes). */
export function age(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 172_800) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86_400)} days`;
}

/**
 * One line for a viewer: "training · step 51 · 2 s ago", "idle (all 300 frames learnt, waiting for new
 * ones) · step 90 · 4 s ago", "stopped (--max-seconds 85, exit 0) · 3 min ago"; a live phase whose
 * record is older than 3 heartbeats reads "no heartbeat for 2 min (was training)" (the agent was killed
 * or hangs). Pass progress and held exports are added where there are any.
 */
export function describeStatus(s: AgentStatus, now: number = Date.now()): string {
  const ago = now - Date.parse(s.time);
  if (isStale(s, now)) return `no heartbeat for ${age(ago)} (was ${s.phase}, step ${s.step})`;
  if (s.phase === 'stopped') return `stopped (${s.reason ?? 'no reason recorded'}, exit ${s.exitCode ?? '?'}) · step ${s.step} · ${age(ago)} ago`;
  const parts = [s.reason ? `${s.phase} (${s.reason})` : s.phase, `step ${s.step}`];
  if (s.pass && s.pass.of > 1) parts.push(`pass ${s.pass.index}/${s.pass.of}, ${s.pass.frames}/${s.pass.total} frames`);
  if (s.notPublishing) parts.push(`not publishing: ${s.notPublishing}`);
  parts.push(`${age(ago)} ago`);
  return parts.join(' · ');
}

/** The agent's side: keeps status.json current; a write that fails never stops training. */
export class StatusRecorder {
  private s: AgentStatus;
  private lastWrite = 0;
  private timer: NodeJS.Timeout | null = null;
  private failedLogged = false;

  constructor(
    private stateDir: string,
    line: string,
    private log: (line: string) => void,
    heartbeatSeconds = HEARTBEAT_SECONDS,
  ) {
    this.s = {
      schema: 1, pid: process.pid, line, phase: 'starting', reason: null, exitCode: null, publishing: false, notPublishing: null,
      step: 0, arrival: 0, frames: 0, pass: null, time: new Date().toISOString(), heartbeatSeconds,
    };
    this.write();
    this.timer = setInterval(() => this.write(), heartbeatSeconds * 1000);
    this.timer.unref();
  }

  get current(): Readonly<AgentStatus> {
    return this.s;
  }

  /**
   * Merges `fields`; written at once when the phase, its reason or the export hold changes, else at
   * most once a second (the heartbeat covers the rest).
   */
  update(fields: Partial<Omit<AgentStatus, 'schema' | 'pid' | 'time' | 'heartbeatSeconds'>>): void {
    if (this.s.phase === 'stopped') return;
    const changed = (['phase', 'reason', 'notPublishing', 'publishing', 'line'] as const).some((k) => k in fields && fields[k] !== this.s[k]);
    Object.assign(this.s, fields);
    if (changed || Date.now() - this.lastWrite >= 1000) this.write();
  }

  /** The last record: why the agent stopped and with which exit code; the heartbeat ends. */
  stopped(reason: string, exitCode: number): void {
    if (this.s.phase === 'stopped') return;
    Object.assign(this.s, { phase: 'stopped', reason, exitCode, publishing: false });
    this.write();
    this.close();
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private write(): void {
    this.s.time = new Date().toISOString();
    try {
      writeFileAtomic(statusFile(this.stateDir), JSON.stringify(this.s) + '\n');
      this.lastWrite = Date.now();
    } catch (e) {
      // Tried again at the next change or heartbeat (e.g. the disk is full for a while).
      if (!this.failedLogged) this.log(`status record could not be written (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): ${statusFile(this.stateDir)}; trying again at each change`);
      this.failedLogged = true;
    }
  }
}
