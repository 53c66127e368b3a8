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

/** The record in `stateDir`, or null when there is none or it is not one (never throws). */
export function readStatus(stateDir: string): AgentStatus | null {
  const j = readJsonObject(statusFile(stateDir));
  if (!j || j.schema !== 1 || !PHASES.includes(j.phase as Phase) || typeof j.time !== 'string' || !Number.isFinite(Date.parse(j.time))) return null;
  return j as unknown as AgentStatus;
}

function age(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 90) return `${s} s`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min`;
  if (s < 36 * 3600) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

/**
 * One line for a viewer: "training · step 51 · 2 s ago", "idle (all 300 frames learnt, waiting for new
 * ones) · step 90 · 4 s ago", "stopped (--max-seconds 85, exit 0) · 3 min ago"; a live phase whose
 * record is older than 3 heartbeats reads "no heartbeat for 2 min (was training)" (the agent was killed
 * or hangs). Pass progress and held exports are added where there are any.
 */
export function describeStatus(s: AgentStatus, now: number = Date.now()): string {
  const ago = now - Date.parse(s.time);
  if (s.phase !== 'stopped' && ago > 3 * s.heartbeatSeconds * 1000) return `no heartbeat for ${age(ago)} (was ${s.phase}, step ${s.step})`;
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
