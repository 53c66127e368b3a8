// The page's training bundle (esbuild, see bundle.ts): the agent's own Trainer (the compiled training
// step), Learner (buffer, replay draws, multi-crops) and export binding, unchanged, running on the
// page's onnxruntime-web. Artifact files are fetched from the server into the fs shim first, so
// Trainer.open reads and checks them as it does on disk.

import { files } from './shims/fs.ts';
import { Trainer } from '../../trainer/trainer.ts';
import { Learner, defaultLearnerConfig } from '../../trainer/learner.ts';
import { bindEncoder, sourceWithState } from '../../export/export.ts';
import type { Manifest } from '../../../core/manifest.ts';

/** Where the fetched artifact files live in the fs shim. */
const DIR = '/artifacts';

async function fetchBytes(url: string): Promise<Uint8Array> {
  const r = await fetch(url, { cache: 'no-store' });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

/** The training artifacts the server offers (`base` ends with '/'), opened as the agent opens them. */
export async function openTrainer(base: string, ep: 'wasm' | 'webgpu'): Promise<Trainer> {
  const manifest = await fetchBytes(`${base}manifest.json`);
  files.set(`${DIR}/manifest.json`, manifest);
  const m = JSON.parse(new TextDecoder().decode(manifest)) as Manifest;
  for (const name of Object.keys(m.files)) files.set(`${DIR}/${name}`, await fetchBytes(base + encodeURIComponent(name)));
  return Trainer.open(DIR, { ep });
}

/**
 * The encoder as trained so far, as `ssocl run` exports it: weights bound into embed.onnx, or, for an
 * imported model, the source model with the learnt weights (its own interface, read back through its
 * ssocl.encoder view).
 */
export function encoderBytes(t: Trainer): Uint8Array {
  const metadata = { 'ssocl.step': String(t.steps), 'ssocl.preset': t.manifest.name, 'ssocl.trained_in': 'browser' };
  return t.manifest.source ? sourceWithState(t.dir, t.manifest, t.state, metadata) : bindEncoder(t.dir, t.manifest, t.state, metadata);
}

export { Trainer, Learner, defaultLearnerConfig };
