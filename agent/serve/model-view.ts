// The exported encoders as the dashboard shows them: latest.json (the commit record export.ts writes
// before latest.onnx), the model's input size and feature width read from latest.onnx itself (an
// imported model's export through its ssocl.encoder view: its own input and outputs are the source's),
// and the versions' sidecars (encoder-<step>.json, or encoder-<step>-<line>.json where another model
// line had that step's name: published or refused by the health gate, and why; each with its line).

import { readdirSync } from 'node:fs';
import path from 'node:path';
import { sha256 } from '../../core/atomic.ts';
import { asEncoder, modelInfo } from '../../core/onnx/model.ts';
import { lineOf } from '../export/export.ts';
import { readJsonObject } from '../../core/json.ts';
import { tryReadInside } from '../../core/safe-read.ts';

/** The largest model served or shown (the agent's encoders are a few MB; a larger file is not read). */
export const MAX_MODEL_BYTES = 256 << 20;

export interface ModelView {
  /** latest.json as written (step, time, health, sha256, ...), or null before the first export. */
  latest: Record<string, unknown> | null;
  /** Input side S of latest.onnx (images [B, 3, S, S]) and its feature width, when it reads as an encoder. */
  size: number | null;
  featureDim: number | null;
  /** sha256 of latest.onnx as read now; differs from latest.latest.sha256 for a moment while an export publishes. */
  sha256: string | null;
  versions: { file: string; step: number | null; time: string | null; status: string; reason?: string; line: string }[];
}

/**
 * latest.onnx's bytes, or null (missing, or not a regular file of its own in `dir`: said through `warn`).
 * Read whole at once: export.ts replaces it by rename, never in place.
 */
export function readLatestModel(dir: string, warn?: (msg: string) => void): Buffer | null {
  return tryReadInside(dir, 'latest.onnx', warn, { maxBytes: MAX_MODEL_BYTES });
}

export function readModelView(dir: string, warn?: (msg: string) => void): ModelView {
  const latest = readJsonObject(path.join(dir, 'latest.json'), warn);
  const bytes = readLatestModel(dir, warn);
  let size: number | null = null;
  let featureDim: number | null = null;
  if (bytes) {
    try {
      const info = modelInfo(asEncoder(bytes));
      const s = info.inputs.find((i) => i.name === 'images')?.dims[2];
      const d = info.outputs.find((o) => o.name === 'features')?.dims[1];
      size = typeof s === 'number' ? s : null;
      featureDim = typeof d === 'number' ? d : null;
    } catch {
      // not a readable model: the page says so rather than load it
    }
  }
  let names: string[] = [];
  try {
    names = readdirSync(dir).filter((f) => /^encoder-\d+(-[0-9a-f]+)?\.json$/.test(f));
  } catch {
    // no models directory yet
  }
  const versions = names
    .map((f) => {
      const j = readJsonObject(path.join(dir, f), warn) ?? {};
      return {
        file: f.replace(/\.json$/, '.onnx'),
        step: typeof j.step === 'number' ? j.step : null,
        time: typeof j.time === 'string' ? j.time : null,
        status: typeof j.status === 'string' ? j.status : 'unknown',
        ...(typeof j.reason === 'string' ? { reason: j.reason } : {}),
        line: lineOf(j),
      };
    })
    .sort((a, b) => (a.time ?? '').localeCompare(b.time ?? '') || a.file.localeCompare(b.file));
  return { latest, size, featureDim, sha256: bytes ? sha256(bytes) : null, versions };
}
