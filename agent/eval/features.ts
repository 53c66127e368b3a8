// Features of a labelled image set from an exported encoder (or embed.onnx with weights), computed
// with ORT in batches, with a progress callback.

import { readFileSync } from 'node:fs';
import { openChosen, type EpChoice } from '../trainer/backend.ts';
import { asEncoder } from '../../core/onnx/model.ts';
import { resizeChw } from '../frames/decode.ts';

export interface FeatureModel {
  run(images: Float32Array, count: number): Promise<Float32Array>;
  dim: number;
  close(): Promise<void>;
}

/** An exported encoder file: input 'images' [B, 3, S, S] in [0, 1], output 'features'; on the EP chosen (cpu by default). */
export async function openEncoder(file: string, size: number, c: EpChoice = {}): Promise<FeatureModel> {
  const sess = await openChosen(asEncoder(readFileSync(file)), c);
  if (!sess.inputNames.includes('images') || !sess.outputNames.includes('features')) {
    await sess.release();
    throw new Error(`${file}: not an ssocl encoder (needs input 'images' and output 'features')`);
  }
  const probe = await sess.run({ images: { type: 'float32', data: new Float32Array(3 * size * size), dims: [1, 3, size, size] } }, ['features']);
  return {
    dim: probe.features.dims[1],
    async run(images, count) {
      const out = await sess.run({ images: { type: 'float32', data: images, dims: [count, 3, size, size] } }, ['features']);
      return out.features.data as Float32Array;
    },
    close: () => sess.release(),
  };
}

/** Features of uint8 CHW images (count x 3 x size x size), batch by batch. */
export async function computeFeatures(
  model: FeatureModel,
  images: Uint8Array,
  indices: ArrayLike<number>,
  size: number,
  batch = 500,
  progress?: (done: number, total: number) => void,
): Promise<Float32Array> {
  const per = 3 * size * size;
  const n = indices.length;
  const out = new Float32Array(n * model.dim);
  const buf = new Float32Array(batch * per);
  for (let s = 0; s < n; s += batch) {
    const m = Math.min(batch, n - s);
    for (let j = 0; j < m; j++) {
      const src = indices[s + j] * per;
      for (let k = 0; k < per; k++) buf[j * per + k] = images[src + k] / 255;
    }
    const f = await model.run(m === batch ? buf : buf.subarray(0, m * per), m);
    out.set(f, s * model.dim);
    progress?.(s + m, n);
  }
  return out;
}

/**
 * The images `idx` picks (uint8 CHW, `from` x `from`) resized to `to` and packed in that order, with the
 * indices into the packed set: CIFAR's 32 px images for a model that takes another size (an imported one).
 */
export async function resizedImages(images: Uint8Array, idx: number[], from: number, to: number): Promise<{ images: Uint8Array; idx: number[] }> {
  const per = 3 * from * from;
  const out = new Uint8Array(idx.length * 3 * to * to);
  for (let j = 0; j < idx.length; j++) out.set(await resizeChw(images.subarray(idx[j] * per, (idx[j] + 1) * per), from, to), j * 3 * to * to);
  return { images: out, idx: idx.map((_, j) => j) };
}
