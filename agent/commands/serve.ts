// `ssocl serve`: the live dashboard of a running or finished agent, read from its --state, --metrics and
// --models (never written). Prints the address, and a loud warning when --host opens it beyond this
// machine; runs until SIGINT/SIGTERM.

import { statSync } from 'node:fs';
import path from 'node:path';
import { UsageError } from '../cli-args.ts';
import { isLoopback, serve } from '../serve/server.ts';

export interface ServeArgs {
  state: string;
  models: string;
  metrics?: string;
  quarantine?: string;
  /** Training artifacts for training in the tab (the agent's --artifacts). */
  artifacts?: string;
  host: string;
  port: number;
  pollMs: number;
}

/**
 * The paths may not exist yet (the agent has not started, or not exported): the page says what it is
 * waiting for. What exists must be what it should be.
 */
export function checkServePaths(a: Pick<ServeArgs, 'state' | 'models' | 'metrics' | 'quarantine' | 'artifacts'>): void {
  const kind = (p: string) => {
    try {
      return statSync(p).isDirectory() ? 'dir' : 'file';
    } catch {
      return null;
    }
  };
  for (const [flag, p] of [['--state', a.state], ['--models', a.models], ['--quarantine', a.quarantine], ['--artifacts', a.artifacts]] as const) {
    if (p !== undefined && kind(p) === 'file') throw new UsageError(`${flag} ${p}: not a directory`);
  }
  if (a.metrics !== undefined && kind(a.metrics) === 'dir') throw new UsageError(`--metrics ${a.metrics}: a directory, not a file`);
}

/** The warning printed when the dashboard listens beyond loopback (it shows frames and serves the model). */
export function hostWarning(host: string): string | null {
  if (isLoopback(host)) return null;
  const bar = '!'.repeat(78);
  return [
    bar,
    `!! WARNING: ssocl serve is listening on ${host}, not only on this machine.`,
    '!! Anyone who can reach this address sees the buffer\'s images (frames from your camera or folder),',
    '!! the metrics and the paths of the agent\'s directories, and can download the model. There is no',
    '!! login and no TLS. Use it only on a network you trust, or leave --host at 127.0.0.1 and reach it',
    '!! through an SSH tunnel (ssh -L 8777:127.0.0.1:8777 HOST).',
    bar,
  ].join('\n');
}

export async function serveCommand(a: ServeArgs): Promise<void> {
  checkServePaths(a);
  const dirs = {
    state: path.resolve(a.state),
    models: path.resolve(a.models),
    metrics: a.metrics ? path.resolve(a.metrics) : undefined,
    quarantine: path.resolve(a.quarantine ?? path.join(a.state, 'quarantine')),
  };
  const warning = hostWarning(a.host);
  if (warning) process.stderr.write(`${warning}\n`);
  let served;
  try {
    served = await serve({ dirs, artifacts: a.artifacts ? path.resolve(a.artifacts) : undefined, host: a.host, port: a.port, timing: { pollMs: a.pollMs, bufferMs: Math.max(2000, a.pollMs), quarantineMs: Math.max(2000, a.pollMs) } });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE') throw new UsageError(`--port ${a.port}: already in use on ${a.host} (--port 0 picks a free one)`);
    if (code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND') throw new UsageError(`--host ${a.host}: not an address of this machine (${code})`);
    if (code === 'EACCES') throw new UsageError(`--port ${a.port}: not allowed (ports below 1024 need privileges)`);
    throw e;
  }
  process.stdout.write(`ssocl serve: ${served.url}  (reading ${dirs.state}, ${dirs.models}${dirs.metrics ? `, ${dirs.metrics}` : ''}; never writing there; Ctrl-C stops)\n`);
  await new Promise<void>((resolve) => {
    const stop = () => void served.close().then(resolve);
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}
