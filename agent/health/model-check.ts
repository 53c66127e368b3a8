// An exported model measured on the health set, outside a run: `ssocl models rollback` puts an older
// version back only once it has passed the gate's collapse floors (and given finite features) on the
// frames of the agent's own stream, as an export would have to. The set is read as it is, never changed.

import path from 'node:path';
import { CIFAR_AUGMENT } from '../frames/augment.ts';
import type { Encoder } from '../infer/encoder.ts';
import { DEFAULT_HEALTH, judge } from './gate.ts';
import { measureHealth, type HealthFigures } from './measure.ts';
import { HealthSet } from './set.ts';

export interface ModelCheck {
  figures: HealthFigures;
  /** Why the gate refuses it ([] when it passes). */
  reasons: string[];
}

/**
 * `enc` measured on the active frames of <stateDir>/health-set.safetensors and judged by the collapse
 * floors (the published model it replaces may be the broken one: no relative checks). null, with the
 * reason in `why`, when there is no usable set of the model's input size.
 */
export async function checkOnHealthSet(enc: Encoder, stateDir: string, why: (line: string) => void): Promise<ModelCheck | null> {
  const file = path.join(stateDir, 'health-set.safetensors');
  let set: HealthSet | null;
  try {
    set = HealthSet.read(file, enc.size);
  } catch (e) {
    why(`${file} could not be used (${(e as Error).message})`);
    return null;
  }
  if (!set || set.frames.count < 2) {
    why(`no health set with frames in ${stateDir} (${file}: the agent keeps one while it runs)`);
    return null;
  }
  const embed = async (x: Float32Array, n: number) => {
    const features = await enc.run(x, n, 'features');
    return { features: features.slice(), embedding: enc.dims.embedding !== null ? (await enc.run(x, n, 'embedding')).slice() : features.slice() };
  };
  const figures = await measureHealth(embed, set.frames, enc.size, CIFAR_AUGMENT);
  return { figures, reasons: judge(figures, null, DEFAULT_HEALTH) };
}
