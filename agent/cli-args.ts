// Flag checks every command shares: numbers (type, range, whole or not) and paths (what each must be:
// a readable encoder, a readable directory, a directory that can be written). Each failure is one line
// naming the flag (or positional) and the value, and exits with code 2, before any work starts.

import { accessSync, constants, statSync } from 'node:fs';
import { readRegular, UnsafeFile } from '../core/safe-read.ts';
import path from 'node:path';
import { asEncoder, modelInfo } from '../core/onnx/model.ts';

/** A bad flag, argument or path: printed as one line, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
  readonly exitCode = 2;
}

export interface NumberRule {
  /** Whole numbers only. */
  int?: boolean;
  /** value >= min */
  min?: number;
  /** value > above */
  above?: number;
  /** value <= max */
  max?: number;
}

/**
 * number: one number; list: comma-separated numbers (e.g. --k 20,50); or-all: a number or the word
 * 'all'; every: steps (a whole number) or a duration (30s, 5m, 1h), passed on as the string given.
 */
type Kind = 'number' | 'list' | 'or-all' | 'every';

export interface NumberSpec extends NumberRule {
  describe: string;
  default?: number | string;
  kind?: Kind;
}

type Parsed<S> = S extends { kind: 'list' } ? number[] : S extends { kind: 'or-all' } ? number | 'all' : S extends { kind: 'every' } ? string : number;

/** What a rule accepts, for the error line: "a whole number >= 1", "a number > 0 and <= 100". */
export function accepted(r: NumberRule, kind: Kind = 'number'): string {
  const bounds = [r.min !== undefined && `>= ${r.min}`, r.above !== undefined && `> ${r.above}`, r.max !== undefined && `<= ${r.max}`].filter(Boolean).join(' and ');
  if (kind === 'every') return 'a number of steps (e.g. 500) or a duration (30s, 5m, 1h)';
  if (kind === 'list') return `${r.int ? 'whole numbers' : 'numbers'}${bounds ? ` ${bounds}` : ''}, comma-separated`;
  const one = `${r.int ? 'a whole number' : 'a number'}${bounds ? ` ${bounds}` : ''}`;
  return kind === 'or-all' ? `${one} or 'all'` : one;
}

/** The value as the user typed it; an empty or spaced one quoted so the line still reads. */
function shown(v: unknown): string {
  const s = String(v);
  return s === '' || /\s/.test(s) ? JSON.stringify(s) : s;
}

/** A number written in full ('', ' ', '5abc' and friends are not numbers; yargs may already have parsed one). */
function toNumber(v: unknown): number {
  if (typeof v === 'number') return v;
  if (typeof v !== 'string' || v.trim() === '') return NaN;
  return Number(v.trim());
}

function fits(n: number, r: NumberRule): boolean {
  return (
    Number.isFinite(n) &&
    (!r.int || Number.isSafeInteger(n)) &&
    (r.min === undefined || n >= r.min) &&
    (r.above === undefined || n > r.above) &&
    (r.max === undefined || n <= r.max)
  );
}

/** Checks one numeric flag's raw value against its rule; returns the parsed value or throws a UsageError. */
export function checkNumber(flag: string, raw: unknown, s: NumberRule & { kind?: Kind }): number | number[] | 'all' | string {
  const kind = s.kind ?? 'number';
  // yargs collects a repeated flag into an array: which one was meant is a guess, so neither is taken.
  if (Array.isArray(raw)) throw new UsageError(`--${flag} ${raw.map(shown).join(' ')}: given ${raw.length} times; give it once`);
  const bad = () => new UsageError(`--${flag} ${shown(raw)}: expected ${accepted(s, kind)}`);
  if (kind === 'every') {
    const m = /^(\d+(?:\.\d+)?)(s|m|h)?$/.exec(String(raw).trim());
    // Steps are counted whole; a duration may be fractional (1.5h).
    if (!m || !(Number(m[1]) > 0) || (!m[2] && !Number.isSafeInteger(Number(m[1])))) throw bad();
    return String(raw).trim();
  }
  if (kind === 'or-all' && String(raw).trim() === 'all') return 'all';
  if (kind === 'list') {
    const xs = String(raw).split(',').map(toNumber);
    if (typeof raw === 'boolean' || !xs.every((x) => fits(x, s))) throw bad();
    return xs;
  }
  const n = toNumber(raw);
  if (!fits(n, s)) throw bad();
  return n;
}

/**
 * yargs options for numeric flags, each checked by `checkNumber` as yargs parses (defaults too), so a
 * bad value stops the command before its handler runs. Declared without a yargs type: `type: 'number'`
 * turns 'abc' into NaN and an empty value into 0, losing what was typed; requiresArg makes a flag
 * given without a value an error instead of its default.
 */
export function nums<S extends Record<string, NumberSpec>>(spec: S): { [K in keyof S]: { describe: string; requiresArg: true; coerce: (v: unknown) => Parsed<S[K]> } & Pick<S[K], Extract<keyof S[K], 'default'>> } {
  const out: Record<string, object> = {};
  for (const [flag, { describe, default: def, ...rule }] of Object.entries(spec)) {
    out[flag] = { describe, requiresArg: true, ...(def !== undefined ? { default: def } : {}), coerce: (v: unknown) => checkNumber(flag, v, rule) };
  }
  return out as never;
}

// Paths. `label` is the flag (--model) or the positional's name (MODEL) as the usage line writes it.

function fail(label: string, p: string, why: string): never {
  throw new UsageError(`${label} ${shown(p)}: ${why}`);
}

const errno = (e: unknown) => (e as NodeJS.ErrnoException).code ?? (e as Error).message;

function statOf(p: string) {
  try {
    return statSync(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return null;
    throw e;
  }
}

function canAccess(p: string, mode: number): string | null {
  try {
    accessSync(p, mode);
    return null;
  } catch (e) {
    return errno(e);
  }
}

/** An existing directory this process can list and read from. */
export function readableDir(label: string, p: string): string {
  const st = statOf(p);
  if (!st) fail(label, p, 'no such directory');
  if (!st.isDirectory()) fail(label, p, 'not a directory');
  const why = canAccess(p, constants.R_OK | constants.X_OK);
  if (why) fail(label, p, `cannot list it (${why}); needs read and search permission`);
  return p;
}

/** A directory that exists and can be written, or can be created (its nearest existing ancestor is a writable directory). Nothing is created here. */
export function writableDir(label: string, p: string): string {
  const st = statOf(p);
  if (st) {
    if (!st.isDirectory()) fail(label, p, 'not a directory');
    const why = canAccess(p, constants.W_OK | constants.X_OK);
    if (why) fail(label, p, `not writable (${why})`);
    return p;
  }
  let up = path.dirname(path.resolve(p));
  let ust = statOf(up);
  while (!ust && up !== path.dirname(up)) {
    up = path.dirname(up);
    ust = statOf(up);
  }
  if (!ust?.isDirectory()) fail(label, p, `cannot be created: ${up} is not a directory`);
  const why = canAccess(up, constants.W_OK | constants.X_OK);
  if (why) fail(label, p, `cannot be created in ${up} (${why})`);
  return p;
}

/** An existing file (not a directory) this process can read. */
export function readableFile(label: string, p: string): string {
  const st = statOf(p);
  if (!st) fail(label, p, 'no such file');
  if (st.isDirectory()) fail(label, p, 'a directory, not a file');
  const why = canAccess(p, constants.R_OK);
  if (why) fail(label, p, `not readable (${why})`);
  return p;
}

/** An image file or a directory of them (searched recursively), readable. */
export function readableInput(label: string, p: string): string {
  const st = statOf(p);
  if (!st) fail(label, p, 'no such file or directory');
  return st.isDirectory() ? readableDir(label, p) : readableFile(label, p);
}

/** A file that can be written: an existing writable file, or a new one in a directory that can be written. */
export function writableFile(label: string, p: string): string {
  const st = statOf(p);
  if (st) {
    if (st.isDirectory()) fail(label, p, 'a directory, not a file');
    const why = canAccess(p, constants.W_OK);
    if (why) fail(label, p, `not writable (${why})`);
    return p;
  }
  const dir = path.dirname(path.resolve(p));
  const dst = statOf(dir);
  if (dst && !dst.isDirectory()) fail(label, p, `cannot be created: ${dir} is not a directory`);
  if (dst) {
    const why = canAccess(dir, constants.W_OK | constants.X_OK);
    if (why) fail(label, p, `cannot be created in ${dir} (${why})`);
    return p;
  }
  writableDir(label, dir); // the directory is made on the way, as the writers do
  return p;
}

/**
 * An exported encoder: a readable ONNX model with an input 'images' [batch, 3, S, S]. Returns S. Only
 * the declared interface is read here; embed and classify also probe-run the model when they load it.
 */
export function encoderFile(label: string, p: string): number {
  readableFile(label, p);
  let info;
  try {
    info = modelInfo(asEncoder(readRegular(p)));
  } catch (e) {
    if (e instanceof UnsafeFile) fail(label, p, e.reason);
    fail(label, p, `not a readable ONNX model (${(e as Error).message})`);
  }
  const dims = info.inputs.find((i) => i.name === 'images')?.dims ?? [];
  const [, c, h, w] = dims;
  if (dims.length !== 4 || c !== 3 || typeof h !== 'number' || h !== w) {
    fail(label, p, `not an ssocl encoder (needs an input 'images' of shape [batch, 3, S, S]; has ${info.inputs.map((i) => `${i.name} [${i.dims}]`).join(', ') || 'no inputs'})`);
  }
  return h;
}

/** A CIFAR data set unpacked under --data-dir (as `ssocl data fetch` leaves it). */
export function cifarDir(dataDir: string, dataset: 'cifar10' | 'cifar100'): string {
  readableDir('--data-dir', dataDir);
  const sub = dataset === 'cifar10' ? 'cifar-10-batches-bin' : 'cifar-100-binary';
  const st = statOf(path.join(dataDir, sub));
  if (!st?.isDirectory()) fail('--data-dir', dataDir, `no ${sub}/ in it (get it with: ssocl data fetch ${dataset} --dir ${shown(dataDir)})`);
  return readableDir('--data-dir', path.join(dataDir, sub));
}

/** Training artifacts: a readable directory with a manifest.json (Trainer.open checks the rest). */
export function artifactsDir(label: string, p: string): string {
  readableDir(label, p);
  if (!statOf(path.join(p, 'manifest.json'))?.isFile()) fail(label, p, "no manifest.json in it (build artifacts with 'ssocl artifacts --preset NAME')");
  return p;
}

/**
 * --dataset: one of `names`, or folder:ROOT (a labelled image folder, agent/eval/folder.ts) whose ROOT
 * is a directory this process can list. Errors name the value as typed.
 */
export function datasetArg(value: string, names: readonly string[]): string {
  if (names.includes(value)) return value;
  if (!value.startsWith('folder:')) fail('--dataset', value, `expected ${names.length ? `one of ${names.join(', ')}, or ` : ''}folder:ROOT (a labelled image folder)`);
  const root = value.slice('folder:'.length);
  if (!root) fail('--dataset', value, 'expected folder:ROOT, a directory after the colon');
  const st = statOf(root);
  if (!st) fail('--dataset', value, 'no such directory');
  if (!st.isDirectory()) fail('--dataset', value, 'not a directory');
  const why = canAccess(root, constants.R_OK | constants.X_OK);
  if (why) fail('--dataset', value, `cannot list it (${why}); needs read and search permission`);
  return value;
}
