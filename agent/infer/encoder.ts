// An exported encoder for inference: one immutable snapshot of a model file (read once, so a file
// replaced while it loads cannot mix two versions), opened on the chosen EP, with its version (sha256
// of the bytes, training step from the metadata) recorded with everything it computes.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { modelInfo } from '../../tools/onnx/model.ts';
import { openSessionOrFallback, type EP, type EpOptions, type Session } from '../trainer/backend.ts';

export type EncoderOutput = 'features' | 'embedding';

export interface ModelVersion {
  /** First 16 hex digits of the file's sha256. */
  sha256: string;
  /** Training step the weights come from (ssocl exports), else null. */
  step: number | null;
}

export interface EncoderOptions extends EpOptions {
  ep?: EP;
  epFallback?: EP;
  warn?: (msg: string) => void;
}

export class EncoderError extends Error {
  override name = 'EncoderError';
}

export class Encoder {
  private constructor(
    readonly file: string,
    readonly version: ModelVersion,
    /** Input side (images are [B, 3, size, size] float32 in [0, 1]). */
    readonly size: number,
    readonly dims: Record<EncoderOutput, number | null>,
    private session: Session,
  ) {}

  get ep(): EP {
    return this.session.ep;
  }

  static async open(file: string, o: EncoderOptions = {}): Promise<Encoder> {
    let bytes: Buffer;
    try {
      bytes = readFileSync(file);
    } catch (e) {
      throw new EncoderError(`cannot read model ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    return Encoder.fromBytes(file, bytes, o);
  }

  static async fromBytes(file: string, bytes: Uint8Array, o: EncoderOptions = {}): Promise<Encoder> {
    let info;
    try {
      info = modelInfo(bytes);
    } catch (e) {
      throw new EncoderError(`${file}: not a readable ONNX model (${(e as Error).message})`);
    }
    const input = info.inputs.find((i) => i.name === 'images');
    const [, c, h, w] = input?.dims ?? [];
    if (!input || input.dims.length !== 4 || c !== 3 || typeof h !== 'number' || h !== w) {
      throw new EncoderError(`${file}: not an ssocl encoder (needs one input 'images' of shape [batch, 3, S, S]; has ${info.inputs.map((i) => `${i.name} [${i.dims}]`).join(', ') || 'none'})`);
    }
    const outDim = (n: string) => {
      const d = info.outputs.find((x) => x.name === n)?.dims[1];
      return typeof d === 'number' ? d : null;
    };
    const dims = { features: outDim('features'), embedding: outDim('embedding') };
    if (dims.features === null) throw new EncoderError(`${file}: not an ssocl encoder (no output 'features' of shape [batch, D])`);
    const step = info.metadata['ssocl.step'];
    const version = { sha256: createHash('sha256').update(bytes).digest('hex').slice(0, 16), step: step !== undefined ? Number(step) : null };
    const session = await openSessionOrFallback(bytes, o.ep ?? 'cpu', o.epFallback, o, o.warn);
    return new Encoder(file, version, h, dims, session);
  }

  dim(output: EncoderOutput): number {
    const d = this.dims[output];
    if (d === null) throw new EncoderError(`${this.file} has no output '${output}'`);
    return d;
  }

  /** Vectors of `count` images (NCHW float32 in [0, 1]). */
  async run(images: Float32Array, count: number, output: EncoderOutput = 'features'): Promise<Float32Array> {
    const s = this.size;
    if (images.length !== count * 3 * s * s) throw new EncoderError(`encoder: ${images.length} values for ${count} images of [3, ${s}, ${s}]`);
    const out = await this.session.run({ images: { type: 'float32', data: images, dims: [count, 3, s, s] } }, [output]);
    return out[output].data as Float32Array;
  }

  /** Same, from uint8 CHW images. */
  async runU8(images: Uint8Array, count: number, output: EncoderOutput = 'features'): Promise<Float32Array> {
    const x = new Float32Array(images.length);
    for (let i = 0; i < x.length; i++) x[i] = images[i] / 255;
    return this.run(x, count, output);
  }

  release(): Promise<void> {
    return this.session.release();
  }
}
