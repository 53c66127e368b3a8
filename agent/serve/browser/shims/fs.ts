// node:fs for the page's training bundle: the artifact files the page fetched, by path, read-only.
// Everything else the agent's modules import from node:fs fails loudly if it is ever called.

export const files = new Map<string, Uint8Array>();

function enoent(p: unknown): Error {
  return Object.assign(new Error(`ENOENT: no such file in the page's artifact set: ${String(p)}`), { code: 'ENOENT' });
}

export function readFileSync(p: unknown, enc?: unknown): Uint8Array | string {
  const b = files.get(String(p));
  if (!b) throw enoent(p);
  return enc ? new TextDecoder().decode(b) : b;
}

export function existsSync(p: unknown): boolean {
  return files.has(String(p));
}

const none = (name: string) => (): never => {
  throw new Error(`fs.${name}: there is no file system in the browser`);
};

export const statSync = none('statSync');
export const lstatSync = none('lstatSync');
export const readdirSync = none('readdirSync');
export const writeFileSync = none('writeFileSync');
export const appendFileSync = none('appendFileSync');
export const mkdirSync = none('mkdirSync');
export const renameSync = none('renameSync');
export const rmSync = none('rmSync');
export const unlinkSync = none('unlinkSync');
export const openSync = none('openSync');
export const closeSync = none('closeSync');
export const fsyncSync = none('fsyncSync');
export const writeSync = none('writeSync');
export const readSync = none('readSync');
export const fstatSync = none('fstatSync');
export const accessSync = none('accessSync');
export const realpathSync = none('realpathSync');
export const readlinkSync = none('readlinkSync');
// Linux's values (core/safe-read's open flags; never used here: openSync fails).
export const constants = { R_OK: 4, W_OK: 2, X_OK: 1, O_RDONLY: 0, O_NONBLOCK: 0o4000, O_NOFOLLOW: 0o400000 };
export const fchmodSync = none('fchmodSync');
