// A model brought by a user, end to end through the CLI, small enough for the default suite: the
// checked-in tiny torchvision-style classifier (test/fixtures/tiny-byom.onnx, made by tiny_byom.py with
// Debian's torch 1.13: conv+BN+ReLU x2, pooling, a Linear head; input 'input' [batch, 3, 16, 16],
// output 'logits' [batch, 10], dynamic batch, BN kept), given metadata of its own, imported with
// `ssocl artifacts --from-onnx` and trained by `ssocl run --watch` on demo frames (a few seconds).

import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import assert from 'node:assert/strict';
import { replaceWeights } from '../../core/onnx/model.ts';
import { encodePng } from '../../agent/frames/decode.ts';
import { demoImage } from '../faults/helpers.ts';
import { REPO } from './paths.ts';

export const BYOM_FIXTURE = path.join(REPO, 'test/fixtures/tiny-byom.onnx');
/** The fixture's training size and feature width (the pooled 12 channels its classifier reads). */
export const BYOM_SIZE = 16;
export const BYOM_WIDTH = 12;
/** The frames the run learns from (demo images at 32 px, as a camera folder would hold them). */
export const BYOM_FRAMES = 48;

export function ssocl(args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [path.join(REPO, 'bin/ssocl.mjs'), ...args], { encoding: 'utf8' });
}

export interface ImportedRun {
  /** The user's model as given (the fixture with metadata 'app.name'). */
  source: string;
  art: string;
  state: string;
  models: string;
  frames: string;
  runLog: string;
}

/** model.onnx -> `ssocl artifacts --from-onnx` -> `ssocl run --watch` (one pass, then stop) in `root`. */
export async function importedRun(root: string): Promise<ImportedRun> {
  const source = path.join(root, 'model.onnx');
  writeFileSync(source, replaceWeights(readFileSync(BYOM_FIXTURE), new Map(), { 'app.name': 'tiny-byom' }));
  const art = path.join(root, 'art');
  const a = ssocl(['artifacts', '--from-onnx', source, '--out', art, '--set', 'crops=2', '--projector', '16,8']);
  assert.equal(a.status, 0, a.stderr);
  const frames = path.join(root, 'frames');
  mkdirSync(frames);
  for (let k = 0; k < BYOM_FRAMES; k++) writeFileSync(path.join(frames, `f${String(k).padStart(3, '0')}.png`), await encodePng(demoImage(k), 32));
  const state = path.join(root, 'state');
  const models = path.join(root, 'models');
  const r = ssocl(['run', '--watch', frames, '--artifacts', art, '--state', state, '--models', models, '--passes', '1', '--exit-when-idle', '1', '--export-every', '3', '--health-frames', '16']);
  assert.equal(r.status, 0, r.stderr);
  return { source, art, state, models, frames, runLog: r.stderr };
}
