// Where the agent's lines go when a command runs it (run, demo): on a terminal, a progress line that
// rewrites itself and log lines that clear it first; without one (a service, `npm start > log 2>&1`,
// CI), plain log lines and a status line every 30 s, so a log shows the agent is alive.

import path from 'node:path';

/** Seconds between status lines when the agent's output (stderr) is not a terminal and no --status-every is given. */
export const STATUS_EVERY_S = 30;

export interface AgentOutput {
  tty: boolean;
  log: (line: string) => void;
  progress?: (line: string) => void;
  statusEveryMs: number;
}

/** The agent's output on stderr; `statusEvery` (seconds, 0 = never) overrides the default of 30 s without a terminal, never on one. */
export function agentOutput(statusEvery: number | undefined, stderr: { isTTY?: boolean; write: (s: string) => unknown } = process.stderr): AgentOutput {
  const tty = stderr.isTTY === true;
  return {
    tty,
    log: (line) => void stderr.write(`${tty ? '\r\x1b[K' : ''}${line}\n`),
    progress: tty ? (line) => void stderr.write(`\r\x1b[K${line}`) : undefined,
    statusEveryMs: (statusEvery ?? (tty ? 0 : STATUS_EVERY_S)) * 1000,
  };
}

/**
 * A path as the user would type it from here: relative to the working directory (climbing at most one
 * level, as ../shared/data from the clone), else absolute. For defaults shown in --help and commands printed to copy.
 */
export function shownPath(p: string, cwd = process.cwd()): string {
  const abs = path.resolve(p);
  const rel = path.relative(cwd, abs);
  if (rel === '') return '.';
  const up = rel.split(path.sep).filter((x) => x === '..').length;
  return path.isAbsolute(rel) || up > 1 ? abs : rel;
}

/** A word of a shell command line, quoted when it holds anything a shell would read. */
export function shellWord(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}
