// Export: embed.onnx with the current weights bound in as initializers, a self-contained encoder
// (input float32 NCHW in [0, 1], dynamic batch; outputs `features` and `embedding`). It is loaded in a
// fresh session and checked against the trainer's own embedding before being renamed into place.
//
// Publishing takes three atomic writes, in this order: the versioned encoder-<step>.onnx, then
// latest.json (naming that file and its sha256), then latest.onnx. latest.json is the commit record:
// it is written only once the file it names is whole, so at every moment it names a file that matches
// it. A kill before latest.onnx is renamed leaves latest.onnx one export behind; reconcileLatest (at
// start, and after a failed export) finishes the publish from the versioned file, or, where that is
// gone, rewrites latest.json from latest.onnx itself (its metadata_props carry the step and the rest).
//
// Each version has a sidecar encoder-<step>.json (written after the model it describes): step, time,
// health figures, and status `published` or `rejected` (the health gate refused it: the model is kept
// for inspection, latest.* untouched). A rollback publishes an older version in the same order.
// Each also names its model line (agent/pipeline/line.ts): versions are kept per line, and a version
// whose step-named file is another line's is named encoder-<step>-<line>.onnx instead.

import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { bindInputs, modelInfo, replaceWeights, type EncoderView } from '../../core/onnx/model.ts';
import { readManifest, type Trainer } from '../trainer/trainer.ts';
import { openSession } from '../trainer/backend.ts';
import type { Manifest } from '../../core/manifest.ts';
import { decodeSafetensors } from '../../core/codecs/safetensors.ts';
import { sha256, writeFileAtomic } from '../../core/atomic.ts';
import type { HealthFigures } from '../health/measure.ts';
import { readJsonObject } from '../../core/json.ts';
import { tryReadInside } from '../../core/safe-read.ts';

/** Largest model file read from a models folder (the agent's encoders are a few MB). */
export const MAX_MODEL_BYTES = 256 << 20;

/** A model file of `modelsDir`, read only when it is a regular file of its own there (a link or a FIFO is said through `warn` and reads as null). */
const readModel = (modelsDir: string, name: string, warn?: (msg: string) => void) => tryReadInside(modelsDir, name, warn, { maxBytes: MAX_MODEL_BYTES });

/** ssocl.step of a model's own metadata, or null (not a model, or not one of ours). */
export function modelStep(bytes: Uint8Array): number | null {
  try {
    const v = modelInfo(bytes).metadata['ssocl.step'];
    return v !== undefined && /^\d+$/.test(v) && Number.isSafeInteger(Number(v)) ? Number(v) : null;
  } catch {
    return null;
  }
}

export interface ExportInfo {
  file: string;
  step: number;
  framesSeen: number;
  loss: number | null;
  artifact: string;
  time: string;
  maxAbsDiff: number;
  sha256: string;
  /** rejected: refused by the health gate (kept as a version, not published). */
  status: 'published' | 'rejected';
  reason?: string;
  health?: HealthFigures;
}

/** embed.onnx of an artifact directory with `state` (parameters and BN statistics) bound in. */
export function bindEncoder(dir: string, m: Manifest, state: Map<string, Float32Array>, metadata: Record<string, string>): Uint8Array {
  const embedBytes = readFileSync(path.join(dir, m.embed.file));
  const values = new Map<string, { dtype: 'float32'; dims: number[]; data: Float32Array }>();
  for (const s of m.state) if (s.embed) values.set(s.name, { dtype: 'float32', dims: s.shape, data: state.get(s.name)! });
  return bindInputs(embedBytes, values, { metadata });
}

/**
 * An imported model (manifest `source`) with `state` written into its own weights: the file the user
 * imported, same inputs, outputs, opset and metadata (plus ssocl's), the learnt values in place.
 */
export function sourceWithState(dir: string, m: Manifest, state: Map<string, Float32Array>, metadata: Record<string, string>): Uint8Array {
  const src = m.source!;
  const bytes = readFileSync(path.join(dir, src.file));
  const shapes = new Map(m.state.map((s) => [s.name, s.shape]));
  const values = new Map<string, { dtype: 'float32'; dims: number[]; data: Float32Array }>();
  for (const [name, tensor] of Object.entries(src.weights)) values.set(tensor, { dtype: 'float32', dims: shapes.get(name)!, data: state.get(name)! });
  // How ssocl's own tools read it as an encoder (core/onnx/model.ts encoderView); the file's interface stays the source's.
  const view: EncoderView = { input: src.input, mean: m.preset.image.mean, std: m.preset.image.std, feature: src.feature, reduce: src.reduce, width: m.preset.encoder.widths.at(-1)!, size: m.preset.image.size };
  return replaceWeights(bytes, values, { ...metadata, 'ssocl.encoder': JSON.stringify(view) });
}

/**
 * The export of an imported model checked as its users will run it: its own outputs on the probe
 * (normalised as its input expects) against the same outputs of embed.onnx with the trainer's state.
 * Returns the largest difference relative to the output's scale.
 */
async function checkSource(trainer: Trainer, bytes: Uint8Array, probe: Float32Array, count: number): Promise<number> {
  const m = trainer.manifest;
  const src = m.source!;
  const [, c, h, w] = m.embed.images.shape as number[];
  const { mean, std } = m.preset.image;
  const plane = h * w;
  const normalised = probe.subarray(0, count * c * plane).map((v, i) => (v - mean[Math.floor(i / plane) % c]) / std[Math.floor(i / plane) % c]);
  const exported = await openSession(bytes, trainer.ep);
  const embed = await openSession(bindEncoder(trainer.dir, m, trainer.state, {}), trainer.ep);
  try {
    const got = await exported.run({ [src.input]: { type: 'float32', data: normalised, dims: [count, c, h, w] } });
    const ref = await embed.run({ [m.embed.images.name]: { type: 'float32', data: probe.subarray(0, count * c * plane), dims: [count, c, h, w] } });
    let worst = 0;
    for (const [name, embedName] of Object.entries(src.outputs)) {
      const a = got[name].data as Float32Array;
      const b = ref[embedName].data as Float32Array;
      if (a.length !== b.length) throw new Error(`export check failed: output '${name}' has ${a.length} values, embed.onnx's ${b.length}`);
      let scale = 1;
      for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]));
      for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]) / scale);
    }
    if (!(worst <= 1e-4)) throw new Error(`export check failed: the exported model's outputs differ from embed.onnx's by ${worst} of their scale`);
    return worst;
  } finally {
    await exported.release();
    await embed.release();
  }
}

/** The encoder of an artifact directory at its initial weights (the random-init floor). */
export function initialEncoder(dir: string): Uint8Array {
  const m = readManifest(dir);
  const init = decodeSafetensors(readFileSync(path.join(dir, m.init))).tensors;
  const state = new Map<string, Float32Array>();
  for (const s of m.state) if (s.embed) state.set(s.name, s.init === 'zeros' ? new Float32Array(s.shape.reduce((a, b) => a * b, 1)) : (init.get(s.name)!.data as Float32Array));
  return bindEncoder(dir, m, state, { 'ssocl.step': '0', 'ssocl.preset': m.name, 'ssocl.frames_seen': '0' });
}

/** The model line of exports whose sidecar or latest.json names none (written before lines existed). */
export const LEGACY_LINE = 'legacy';

/** The model line (agent/pipeline/line.ts) an export's record, sidecar or latest.json, belongs to. */
export function lineOf(record: Record<string, unknown> | null | undefined): string {
  return typeof record?.line === 'string' && record.line ? record.line : LEGACY_LINE;
}

const VERSIONED = /^encoder-\d+(-[0-9a-f]+)?\.onnx$/;

/** encoder-<step>.onnx's sidecar: encoder-<step>.json. */
export const sidecarOf = (file: string) => file.replace(/\.onnx$/, '.json');

const jsonBytes = (v: unknown) => Buffer.from(JSON.stringify(v, null, 1) + '\n');

/**
 * Publishes a whole versioned model: latest.json (the commit record, naming it) first, then latest.onnx,
 * each by rename, so a reader of latest.onnx sees the old model or the new one, never a mix, and a kill
 * in between is finished by reconcileLatest. Used by exports and rollbacks alike.
 */
export function publishLatest(modelsDir: string, bytes: Uint8Array, record: Record<string, unknown>): void {
  try {
    writeFileAtomic(path.join(modelsDir, 'latest.json'), jsonBytes(record));
    writeFileAtomic(path.join(modelsDir, 'latest.onnx'), bytes);
  } catch (e) {
    // E.g. a full disk between the two writes: leave the pair agreeing (on the old model if need be).
    try {
      reconcileLatest(modelsDir);
    } catch {
      // the error that matters is the export's
    }
    throw e;
  }
}

/**
 * Keeps the newest `keep` published versions and the newest `keep` rejected ones (by write time, not by
 * name: a --fresh run starts its step numbers again from 1), and always the one latest.json names.
 */
function pruneVersions(modelsDir: string, keep: number, justWritten: string): void {
  const current = readJsonObject(path.join(modelsDir, 'latest.json'))?.file;
  const files = readdirSync(modelsDir);
  const versions = files
    .filter((f) => VERSIONED.test(f))
    .map((f) => {
      const side = readJsonObject(path.join(modelsDir, sidecarOf(f)));
      return { f, t: statSync(path.join(modelsDir, f)).mtimeMs, rejected: side?.status === 'rejected', line: lineOf(side) };
    })
    .sort((a, b) => a.t - b.t || a.f.localeCompare(b.f));
  // Per line: another line's exports never push a line's versions out.
  for (const [line, rejected] of [...new Set(versions.map((v) => v.line))].flatMap((l) => [[l, false], [l, true]] as const)) {
    for (const old of versions.filter((v) => v.line === line && v.rejected === rejected).slice(0, -keep)) {
      if (old.f === justWritten || old.f === current) continue;
      rmSync(path.join(modelsDir, old.f), { force: true });
      rmSync(path.join(modelsDir, sidecarOf(old.f)), { force: true });
    }
  }
  // Sidecars whose model is gone (a kill between the two removals above).
  for (const f of files) if (/^encoder-\d+(-[0-9a-f]+)?\.json$/.test(f) && !existsSync(path.join(modelsDir, f.replace(/\.json$/, '.onnx')))) rmSync(path.join(modelsDir, f), { force: true });
}

/** The exported encoder's features on the probe against the trainer's own embedding (largest absolute difference). */
async function checkEncoder(trainer: Trainer, bytes: Uint8Array, probe: Float32Array, probeCount: number): Promise<number> {
  const m = trainer.manifest;
  // Check the model as a user would load it, before it replaces anything: a fresh session on the EP
  // the trainer runs on (after any fallback), so the comparison is like for like.
  const sess = await openSession(bytes, trainer.ep);
  const [, c, h, w] = m.embed.images.shape as number[];
  let out;
  try {
    out = await sess.run({ [m.embed.images.name]: { type: 'float32', data: probe, dims: [probeCount, c, h, w] } });
  } finally {
    await sess.release();
  }
  const ref = await trainer.embed(probe, probeCount);
  const got = out[m.embed.features].data as Float32Array;
  let maxAbsDiff = 0;
  for (let i = 0; i < got.length; i++) maxAbsDiff = Math.max(maxAbsDiff, Math.abs(got[i] - ref.features[i]));
  if (!(maxAbsDiff <= 1e-4)) throw new Error(`export check failed: features differ from the trainer's by ${maxAbsDiff}`);
  return maxAbsDiff;
}

/**
 * Writes the encoder as it is now as encoder-<step>.onnx (+ sidecar) and, unless `rejected` gives the
 * health gate's reason, publishes it as latest.json + latest.onnx.
 */
export async function exportEncoder(
  trainer: Trainer,
  modelsDir: string,
  info: {
    framesSeen: number; loss: number | null; probe: Float32Array; probeCount: number; health?: HealthFigures; rejected?: string;
    /** The model line it belongs to, and the state that trains it (none: the legacy line). */
    line?: { id: string; source: string; state: string };
  },
  keep = 5,
): Promise<ExportInfo> {
  const m = trainer.manifest;
  const step = trainer.steps;
  const artifact = m.files[m.trainStep.file];
  // Everything latest.json says that is known before the check also goes into the model itself, so
  // reconcileLatest can rebuild latest.json from latest.onnx alone.
  const metadata = {
    'ssocl.step': String(step),
    'ssocl.preset': m.name,
    'ssocl.frames_seen': String(info.framesSeen),
    'ssocl.artifact': artifact,
    ...(info.loss !== null ? { 'ssocl.loss': String(info.loss) } : {}),
    // The line's id only: its source and state are paths of this machine, kept out of a file that travels.
    ...(info.line ? { 'ssocl.line': info.line.id } : {}),
  };
  // An imported model is exported as itself (its interface unchanged), with the learnt weights.
  const bytes = m.source ? sourceWithState(trainer.dir, m, trainer.state, metadata) : bindEncoder(trainer.dir, m, trainer.state, metadata);
  const maxAbsDiff = m.source ? await checkSource(trainer, bytes, info.probe, info.probeCount) : await checkEncoder(trainer, bytes, info.probe, info.probeCount);
  let file = path.join(modelsDir, `encoder-${String(step).padStart(9, '0')}.onnx`);
  // The step's name is another line's version (two lines reach the same step): this one is named by its line.
  if (existsSync(file) && lineOf(readJsonObject(sidecarOf(file))) !== (info.line?.id ?? lineOf(null))) file = file.replace(/\.onnx$/, `-${info.line?.id ?? '0'}.onnx`);
  const name = path.basename(file);
  const meta: ExportInfo = {
    file: name, step, framesSeen: info.framesSeen, loss: info.loss, artifact, time: new Date().toISOString(), maxAbsDiff, sha256: sha256(bytes),
    status: info.rejected ? 'rejected' : 'published', ...(info.rejected ? { reason: info.rejected } : {}), ...(info.health ? { health: info.health } : {}),
  };
  const record = { ...meta, preset: m.name, ...(info.line ? { line: info.line.id, lineSource: info.line.source, state: info.line.state } : {}) };
  if (info.rejected && readJsonObject(path.join(modelsDir, 'latest.json'))?.file === name) {
    // A --fresh run's step numbers start again: never overwrite the published model's own version.
    return { ...meta, file: '' };
  }
  writeFileAtomic(file, bytes);
  writeFileAtomic(path.join(modelsDir, sidecarOf(name)), jsonBytes(record));
  if (!info.rejected) publishLatest(modelsDir, bytes, record);
  pruneVersions(modelsDir, keep, name);
  return meta;
}

/**
 * Makes models/latest.json and models/latest.onnx describe the same model (latest.json's sha256 is
 * latest.onnx's, its step the model's own ssocl.step), after a kill or an error between the writes of an
 * export. Call it before anything reads or exports there (the agent: at start). Returns a line for the
 * log saying what it repaired, or null when there was nothing to repair.
 */
export function reconcileLatest(modelsDir: string, warn?: (msg: string) => void): string | null {
  const jsonFile = path.join(modelsDir, 'latest.json');
  const onnxFile = path.join(modelsDir, 'latest.onnx');
  type Latest = { file?: unknown; sha256?: unknown; step?: unknown };
  // Missing or unreadable (or a link, a FIFO: not read): rebuilt below where latest.onnx exists.
  const json = readJsonObject(jsonFile, warn) as Latest | null;
  const onnx = readModel(modelsDir, 'latest.onnx', warn);
  // The step latest.json states must be the model's own (a hand-edited record would hold exports back for ever).
  const ownStep = onnx ? modelStep(onnx) : null;
  const stepAgrees = ownStep === null || json?.step === ownStep;
  if (onnx && json && json.sha256 === sha256(onnx) && stepAgrees) return null;
  // An interrupted publish: latest.json was written after the versioned file it names; where that file
  // is whole (it has latest.json's sha256), finish by copying it to latest.onnx.
  // (The versioned file's own step must be what latest.json says, as for latest.onnx above.)
  if (json && typeof json.file === 'string' && VERSIONED.test(json.file)) {
    try {
      const b = readModel(modelsDir, json.file, warn);
      if (b && sha256(b) === json.sha256 && modelStep(b) === json.step) {
        writeFileAtomic(onnxFile, b);
        return `latest.onnx was behind latest.json (an export stopped between its writes): completed from ${json.file} (step ${json.step})`;
      }
    } catch {
      // gone, or no room to copy: fall back to latest.onnx as it is
    }
  }
  if (!onnx) {
    if (!json && !existsSync(jsonFile)) return null;
    rmSync(jsonFile, { force: true });
    return 'latest.json named no model that exists (and there is no latest.onnx): removed';
  }
  // latest.onnx is the truth: describe it from its own metadata.
  const md = modelInfo(onnx).metadata;
  const sha = sha256(onnx);
  const num = (k: string) => (md[k] !== undefined && md[k] !== '' && Number.isFinite(Number(md[k])) ? Number(md[k]) : null);
  // The versioned file that holds these bytes, if one is still there.
  const same = readdirSync(modelsDir)
    .filter((f) => VERSIONED.test(f))
    .find((f) => {
      try {
        if (statSync(path.join(modelsDir, f)).size !== onnx.length) return false;
        const b = readModel(modelsDir, f, warn);
        return b !== null && sha256(b) === sha;
      } catch {
        return false;
      }
    });
  // The health figures live in the version's sidecar (the model's bytes depend on its weights alone).
  const health = same ? (readJsonObject(path.join(modelsDir, sidecarOf(same)), warn)?.health as HealthFigures | undefined) : undefined;
  const rebuilt = {
    file: same ?? 'latest.onnx',
    step: num('ssocl.step'),
    framesSeen: num('ssocl.frames_seen'),
    loss: num('ssocl.loss'),
    artifact: md['ssocl.artifact'] ?? null,
    time: statSync(onnxFile).mtime.toISOString(),
    maxAbsDiff: null,
    preset: md['ssocl.preset'] ?? null,
    sha256: sha,
    status: 'published',
    ...(health ? { health } : {}),
    ...(md['ssocl.line'] ? { line: md['ssocl.line'] } : {}),
    rebuiltFrom: 'latest.onnx',
  };
  writeFileAtomic(jsonFile, jsonBytes(rebuilt));
  if (json && json.sha256 === sha && !stepAgrees) return `latest.json said step ${JSON.stringify(json.step)} but latest.onnx is the model of step ${ownStep}: rewritten from latest.onnx's own metadata`;
  return `latest.json did not describe latest.onnx: rewritten from latest.onnx's own metadata (step ${rebuilt.step})`;
}

/** One encoder-<step>.onnx in a models directory, as `ssocl models list` shows it. */
export interface Version {
  file: string;
  step: number | null;
  time: string;
  status: 'published' | 'rejected' | 'unknown';
  reason?: string;
  health?: HealthFigures;
  framesSeen: number | null;
  sha256: string;
  /** The bytes are those its sidecar names (false: the file was damaged or replaced). */
  intact: boolean;
  /** latest.onnx holds this model. */
  current: boolean;
  /** Its model line (LEGACY_LINE for versions exported before lines) and what that line learns from. */
  line: string;
  lineSource: string | null;
  /** What latest.json would say of it once published. */
  record: Record<string, unknown>;
}

/** The versions in `modelsDir`, oldest first, from their sidecars (or, without one, the model's own metadata). */
export function listVersions(modelsDir: string, warn?: (msg: string) => void): Version[] {
  const latest = readJsonObject(path.join(modelsDir, 'latest.json'), warn);
  const out: Version[] = [];
  for (const f of readdirSync(modelsDir).filter((x) => VERSIONED.test(x))) {
    // Gone (an export pruning it), or not a regular file of its own: not listed.
    const bytes = readModel(modelsDir, f, warn);
    if (!bytes) continue;
    const sha = sha256(bytes);
    const side = readJsonObject(path.join(modelsDir, sidecarOf(f)), warn);
    let md: Record<string, string> = {};
    try {
      md = modelInfo(bytes).metadata;
    } catch {
      // not a model any more: listed as damaged
    }
    const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : typeof v === 'string' && v !== '' && Number.isFinite(Number(v)) ? Number(v) : null);
    const record = side ?? {
      file: f, step: num(md['ssocl.step']), framesSeen: num(md['ssocl.frames_seen']), loss: num(md['ssocl.loss']), artifact: md['ssocl.artifact'] ?? null,
      time: statSync(path.join(modelsDir, f)).mtime.toISOString(), preset: md['ssocl.preset'] ?? null, sha256: sha,
    };
    const status = side?.status === 'rejected' ? 'rejected' : side ? 'published' : 'unknown';
    // The step is the model's own (its metadata), whatever the sidecar says: a rollback publishes this one.
    const step = md['ssocl.step'] !== undefined ? modelStep(bytes) : num(record.step);
    out.push({
      file: f, step, time: String(record.time ?? ''), status, ...(typeof side?.reason === 'string' ? { reason: side.reason } : {}),
      ...(record.health ? { health: record.health as HealthFigures } : {}), framesSeen: num(record.framesSeen), sha256: sha,
      intact: (side?.sha256 ?? sha) === sha && Object.keys(md).length > 0 && (side === null || md['ssocl.step'] === undefined || num(side.step) === step),
      current: latest?.sha256 === sha, record: { ...record, file: f, sha256: sha, step },
      line: lineOf(side ?? (md['ssocl.line'] ? { line: md['ssocl.line'] } : null)), lineSource: typeof record.lineSource === 'string' ? record.lineSource : null,
    });
  }
  return out.sort((a, b) => a.time.localeCompare(b.time) || a.file.localeCompare(b.file));
}
