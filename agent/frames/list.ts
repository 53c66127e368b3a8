// Listing image files: the frames under a path (one image or a directory tree, in name order) and a
// labelled support set DIR/<label>/*. Shared by inference (embed, classify) and evaluation on a folder,
// so it lives below both.

import { lstatSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { FRAME_EXTENSIONS } from './decode.ts';

export interface FrameRef {
  /** Path relative to the input root (the file name for a single image). */
  key: string;
  path: string;
  mtimeMs: number;
  /** Size when listed or queued: a file that changed since is refused (it is taken again when settled). */
  size?: number;
}

/** The image files of INPUT (a file, or a directory searched recursively; links are not followed, each reported to onLink). */
export function listFrames(input: string, onLink?: (file: string) => void): FrameRef[] {
  let st;
  try {
    st = statSync(input);
  } catch (e) {
    throw new Error(`${input}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file or directory' : (e as Error).message}`);
  }
  if (st.isFile()) return [{ key: path.basename(input), path: input, mtimeMs: st.mtimeMs, size: st.size }];
  const out: FrameRef[] = [];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir).sort()) {
      if (name.startsWith('.')) continue;
      const abs = path.join(dir, name);
      const l = lstatSync(abs);
      if (l.isDirectory()) walk(abs);
      else if (l.isFile() && FRAME_EXTENSIONS.includes(path.extname(name).toLowerCase())) out.push({ key: path.relative(input, abs), path: abs, mtimeMs: l.mtimeMs, size: l.size });
      else if (l.isSymbolicLink()) onLink?.(abs);
    }
  };
  walk(input);
  return out;
}

export interface SupportSet {
  labels: string[];
  frames: FrameRef[];
  /** Index into `labels` per frame. */
  labelOf: number[];
}

export function listSupport(dir: string): SupportSet {
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => !n.startsWith('.') && statSync(path.join(dir, n)).isDirectory()).sort();
  } catch (e) {
    throw new Error(`--support ${dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const s: SupportSet = { labels: [], frames: [], labelOf: [] };
  for (const name of names) {
    const frames = listFrames(path.join(dir, name));
    if (!frames.length) continue;
    const li = s.labels.push(name) - 1;
    for (const f of frames) {
      s.frames.push({ ...f, key: path.join(name, f.key) });
      s.labelOf.push(li);
    }
  }
  if (!s.labels.length) throw new Error(`--support ${dir}: no labelled images found (expected ${dir}/<label>/*.png|jpg)`);
  return s;
}
