// Export: embed.onnx with the current weights bound in as initializers, a self-contained encoder
// (input float32 NCHW in [0, 1], dynamic batch; outputs `features` and `embedding`). It is loaded in a
// fresh session and checked against the trainer's own embedding before being renamed into place.

import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { bindInputs } from '../../tools/onnx/model.ts';
import { readManifest, type Trainer } from '../trainer/trainer.ts';
import type { Manifest } from '../../tools/artifacts/manifest.ts';
import { decodeSafetensors } from '../../tools/io/safetensors.ts';
import { writeFileAtomic } from '../trainer/checkpoint.ts';

export interface ExportInfo {
  file: string;
  step: number;
  framesSeen: number;
  loss: number | null;
  artifact: string;
  time: string;
  maxAbsDiff: number;
}

/** embed.onnx of an artifact directory with `state` (parameters and BN statistics) bound in. */
export function bindEncoder(dir: string, m: Manifest, state: Map<string, Float32Array>, metadata: Record<string, string>): Uint8Array {
  const embedBytes = readFileSync(path.join(dir, m.embed.file));
  const values = new Map<string, { dtype: 'float32'; dims: number[]; data: Float32Array }>();
  for (const s of m.state) if (s.embed) values.set(s.name, { dtype: 'float32', dims: s.shape, data: state.get(s.name)! });
  return bindInputs(embedBytes, values, { metadata });
}

/** The encoder of an artifact directory at its initial weights (the random-init floor). */
export function initialEncoder(dir: string): Uint8Array {
  const m = readManifest(dir);
  const init = decodeSafetensors(readFileSync(path.join(dir, m.init))).tensors;
  const state = new Map<string, Float32Array>();
  for (const s of m.state) if (s.embed) state.set(s.name, s.init === 'zeros' ? new Float32Array(s.shape.reduce((a, b) => a * b, 1)) : (init.get(s.name)!.data as Float32Array));
  return bindEncoder(dir, m, state, { 'ssocl.step': '0', 'ssocl.preset': m.name, 'ssocl.frames_seen': '0' });
}

export async function exportEncoder(
  trainer: Trainer,
  modelsDir: string,
  info: { framesSeen: number; loss: number | null; probe: Float32Array; probeCount: number },
  keep = 5,
): Promise<ExportInfo> {
  const m = trainer.manifest;
  const step = trainer.steps;
  const bytes = bindEncoder(trainer.dir, m, trainer.state, { 'ssocl.step': String(step), 'ssocl.preset': m.name, 'ssocl.frames_seen': String(info.framesSeen) });
  // Check the model as a user would load it, before it replaces anything.
  const sess = await ort.InferenceSession.create(bytes);
  const [, c, h, w] = m.embed.images.shape as number[];
  let out;
  try {
    out = await sess.run({ [m.embed.images.name]: new ort.Tensor('float32', info.probe, [info.probeCount, c, h, w]) });
  } finally {
    await sess.release();
  }
  const ref = await trainer.embed(info.probe, info.probeCount);
  const got = out[m.embed.features].data as Float32Array;
  let maxAbsDiff = 0;
  for (let i = 0; i < got.length; i++) maxAbsDiff = Math.max(maxAbsDiff, Math.abs(got[i] - ref.features[i]));
  if (!(maxAbsDiff <= 1e-4)) throw new Error(`export check failed: features differ from the trainer's by ${maxAbsDiff}`);
  const artifact = m.files[m.trainStep.file];
  const file = path.join(modelsDir, `encoder-${String(step).padStart(9, '0')}.onnx`);
  writeFileAtomic(file, bytes);
  writeFileAtomic(path.join(modelsDir, 'latest.onnx'), bytes);
  const meta: ExportInfo = { file: path.basename(file), step, framesSeen: info.framesSeen, loss: info.loss, artifact, time: new Date().toISOString(), maxAbsDiff };
  writeFileAtomic(path.join(modelsDir, 'latest.json'), Buffer.from(JSON.stringify({ ...meta, preset: m.name, sha256: createHash('sha256').update(bytes).digest('hex') }, null, 1) + '\n'));
  // Newest by write time, not by name: a --fresh run starts its step numbers again from 1.
  const versions = readdirSync(modelsDir)
    .filter((f) => /^encoder-\d+\.onnx$/.test(f))
    .map((f) => ({ f, t: statSync(path.join(modelsDir, f)).mtimeMs }))
    .sort((a, b) => a.t - b.t || a.f.localeCompare(b.f));
  for (const old of versions.slice(0, -keep)) if (old.f !== path.basename(file)) rmSync(path.join(modelsDir, old.f), { force: true });
  return meta;
}
