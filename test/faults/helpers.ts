// Shared set-up of the fault suite: tiny artifacts (steps take milliseconds), demo frames as PNG files,
// and the agent as a child process.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { compileArtifacts, writeArtifacts } from '../../tools/artifacts/write.ts';
import { encodePng } from '../../agent/frames/decode.ts';
import { demoStream } from '../../agent/commands/demo.ts';
import { REPO } from '../helpers/paths.ts';
import { tinyPreset } from '../helpers/tiny.ts';

export const CLI = path.join(REPO, 'bin/ssocl.mjs');

/** Tiny artifacts: 16 px, 4 new frames per arrival, K 2, buffer 12. */
export function tinyArtifacts(dir: string): string {
  writeArtifacts(compileArtifacts(tinyPreset(['image.size=16', 'batch=8', 'agent={"newPerArrival":4,"updatesPerArrival":2,"bufferSize":12,"replay":"mixed"}'])), dir);
  return dir;
}

const demo = demoStream();
let counter = 0;

/** Writes n demo frames as PNG files named f<global index>.png; returns their names. */
export async function writeFrames(dir: string, n: number): Promise<string[]> {
  mkdirSync(dir, { recursive: true });
  const names: string[] = [];
  for (let k = 0; k < n; k++, counter++) {
    const i = demo.order[(counter * 37) % demo.order.length];
    const name = `f${String(counter).padStart(5, '0')}.png`;
    writeFileSync(path.join(dir, name), await encodePng(demo.images.subarray(i * 3072, (i + 1) * 3072), 32));
    names.push(name);
  }
  return names;
}

export function demoImage(k: number): Uint8Array {
  const i = demo.order[k];
  return demo.images.subarray(i * 3072, (i + 1) * 3072);
}

export interface Agent {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function startAgent(args: string[], env: Record<string, string> = {}): Agent {
  const child = spawn(process.execPath, [CLI, 'run', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })));
  return { child, stdout: () => out, stderr: () => err, exit };
}

export async function waitFor(cond: () => boolean, ms: number, step = 50): Promise<boolean> {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, step));
  }
  return cond();
}

/** Final status of each name in `<state>/ingested.log` (plain lines: demo frame names need no escaping). */
export function ledgerStatus(state: string): Map<string, string> {
  const m = new Map<string, string>();
  const f = path.join(state, 'ingested.log');
  if (!existsSync(f)) return m;
  for (const l of readFileSync(f, 'utf8').split('\n').filter(Boolean)) {
    const [st, , , name] = l.split('\t');
    m.set(name, st);
  }
  return m;
}
