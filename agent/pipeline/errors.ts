// How the run fails: an AgentError carries the process exit code the CLI uses.

import { accessSync, constants, mkdirSync } from 'node:fs';

/** Exit code when checkpoints exist but none verifies: starting over is the user's choice (--fresh). */
export const EXIT_NO_TRUSTED_STATE = 6;

export class AgentError extends Error {
  constructor(
    message: string,
    readonly exitCode = 2,
  ) {
    super(message);
  }
}

export function isDiskFull(e: unknown): boolean {
  const c = (e as NodeJS.ErrnoException)?.code;
  return c === 'ENOSPC' || c === 'EDQUOT';
}

export function ensureWritable(flag: string, dir: string): void {
  try {
    mkdirSync(dir, { recursive: true });
    accessSync(dir, constants.W_OK);
  } catch (e) {
    throw new AgentError(`${flag} ${dir}: not a writable directory (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}
