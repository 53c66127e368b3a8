// An exported encoder for inference: one immutable snapshot of a model file (read once, so a file
// replaced while it loads cannot mix two versions), opened on the chosen EP, with its version (sha256
// of the bytes, training step from the metadata) recorded with everything it computes. A model is
// validated before use (declared shapes within limits, then a probe run whose outputs must be finite
// and of the declared size): a model file is input like any other, and a bad one must be refused with
// a clear error, not exhaust memory or turn every result into NaN.

import { sha256 } from '../../core/atomic.ts';
import { readRegular, UnsafeFile } from '../../core/safe-read.ts';
import { asEncoder, modelInfo } from '../../core/onnx/model.ts';
import { openSessionOrFallback, type EP, type EpOptions, type Session } from '../trainer/backend.ts';

export type EncoderOutput = 'features' | 'embedding';

export interface ModelVersion {
  /** First 16 hex digits of the file's sha256. */
  sha256: string;
  /** Training step the weights come from (ssocl exports), else null. */
  step: number | null;
  /** The model line it was exported from (agent/pipeline/line.ts), where it names one. */
  line?: string;
}

export interface EncoderOptions extends EpOptions {
  ep?: EP;
  epFallback?: EP;
  warn?: (msg: string) => void;
}

export class EncoderError extends Error {
  override name = 'EncoderError';
  constructor(
    message: string,
    /** The file is a readable ONNX model but failed validation (as opposed to unreadable or cut short). */
    readonly refused = false,
  ) {
    super(message);
  }
}

/**
 * Largest input side accepted. Frames are decoded to, and batches allocated at, the model's declared
 * size: a model declaring 60000x60000 would need ~43 GB per frame as float32 and be OOM-killed
 * without a word. 1024 leaves ample room above the 32-96 px encoders ssocl exports.
 */
export const MAX_INPUT_SIDE = 1024;
/** Largest model file read (the agent's encoders are a few MB). */
export const MAX_MODEL_BYTES = 1 << 30;
/** Largest output width accepted (features, embedding), for the same reason on the output side. */
export const MAX_OUTPUT_DIM = 65536;
/** A model with a fixed batch size is probed with that many images; more than this is not an edge encoder. */
const MAX_FIXED_BATCH = 16;
const ONNX_FLOAT = 1;

/**
 * Probe images: mid-grey, and a pattern (checkerboard with colour ramps) that exercises every
 * channel and spatial position, alternating; NCHW float32 in [0, 1].
 */
function probeImages(count: number, size: number): Float32Array {
  const per = 3 * size * size;
  const x = new Float32Array(count * per);
  for (let n = 0; n < count; n++) {
    for (let c = 0; c < 3; c++) {
      for (let i = 0; i < size; i++) {
        for (let j = 0; j < size; j++) {
          const k = n * per + (c * size + i) * size + j;
          x[k] = n % 2 === 0 ? 0.5 : ((i >> 2) + (j >> 2)) % 2 ? (c === 0 ? i : c === 1 ? j : i + j) / (2 * size) : 1 - c / 3;
        }
      }
    }
  }
  return x;
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
      // Not blocking: a FIFO named as the model (or put in place of latest.onnx) is refused, not waited on.
      bytes = readRegular(file, { maxBytes: MAX_MODEL_BYTES });
    } catch (e) {
      if (e instanceof UnsafeFile) throw new EncoderError(`cannot read model ${file}: ${e.reason}`);
      throw new EncoderError(`cannot read model ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    return Encoder.fromBytes(file, bytes, o);
  }

  static async fromBytes(file: string, original: Uint8Array, o: EncoderOptions = {}): Promise<Encoder> {
    let info;
    let bytes = original;
    try {
      // An imported model's export keeps its own interface; its metadata says how to read it as an encoder.
      bytes = asEncoder(original);
      info = modelInfo(bytes);
    } catch (e) {
      throw new EncoderError(`${file}: not a readable ONNX model (${(e as Error).message})`);
    }
    const input = info.inputs.find((i) => i.name === 'images');
    const [b, c, h, w] = input?.dims ?? [];
    if (!input || input.dims.length !== 4 || c !== 3 || typeof h !== 'number' || h !== w) {
      throw new EncoderError(`${file}: not an ssocl encoder (needs one input 'images' of shape [batch, 3, S, S]; has ${info.inputs.map((i) => `${i.name} [${i.dims}]`).join(', ') || 'none'})`);
    }
    // Checked before a session exists or anything is allocated at the declared size.
    const shape = `[${input.dims.join(', ')}]`;
    if (!(Number.isInteger(h) && h >= 1 && h <= MAX_INPUT_SIDE)) {
      throw new EncoderError(`${file}: refused: input 'images' ${shape} is ${h}x${w} px; the largest accepted is ${MAX_INPUT_SIDE}x${MAX_INPUT_SIDE}`, true);
    }
    if (typeof b === 'number' && !(Number.isInteger(b) && b >= 1 && b <= MAX_FIXED_BATCH)) {
      throw new EncoderError(`${file}: refused: input 'images' ${shape} has a fixed batch of ${b} (use a dynamic batch dimension)`, true);
    }
    if (input.elemType !== ONNX_FLOAT) throw new EncoderError(`${file}: refused: input 'images' ${shape} is not float32 (ONNX elem_type ${input.elemType})`, true);
    const outDim = (n: string) => {
      const d = info.outputs.find((x) => x.name === n)?.dims[1];
      return typeof d === 'number' ? d : null;
    };
    const dims = { features: outDim('features'), embedding: outDim('embedding') };
    if (dims.features === null) throw new EncoderError(`${file}: not an ssocl encoder (no output 'features' of shape [batch, D])`);
    for (const [n, d] of Object.entries(dims)) {
      if (d !== null && !(Number.isInteger(d) && d >= 1 && d <= MAX_OUTPUT_DIM)) {
        throw new EncoderError(`${file}: refused: output '${n}' [${info.outputs.find((x) => x.name === n)!.dims.join(', ')}] has width ${d}; accepted 1 to ${MAX_OUTPUT_DIM}`, true);
      }
    }
    const step = info.metadata['ssocl.step'];
    const line = info.metadata['ssocl.line'];
    const version = { sha256: sha256(original).slice(0, 16), step: step !== undefined ? Number(step) : null, ...(line ? { line } : {}) };
    const session = await openSessionOrFallback(bytes, o.ep ?? 'cpu', o.epFallback, o, o.warn);
    const enc = new Encoder(file, version, h, dims, session);
    try {
      await enc.probe(typeof b === 'number' ? b : 2);
    } catch (e) {
      await session.release();
      throw e;
    }
    return enc;
  }

  /**
   * One run on known images: every declared output must have the declared size and finite values. A
   * model whose weights hold a NaN (or overflow) passes every shape check and then writes nulls.
   */
  private async probe(count: number): Promise<void> {
    const outputs = (Object.keys(this.dims) as EncoderOutput[]).filter((n) => this.dims[n] !== null);
    const s = this.size;
    let out;
    try {
      out = await this.session.run({ images: { type: 'float32', data: probeImages(count, s), dims: [count, 3, s, s] } }, outputs);
    } catch (e) {
      throw new EncoderError(`${this.file}: refused: probe run on ${count} images of [3, ${s}, ${s}] failed: ${String((e as Error).message).split('\n')[0]}`, true);
    }
    for (const n of outputs) {
      const t = out[n];
      const want = count * this.dims[n]!;
      if (!t || t.data.length !== want) {
        throw new EncoderError(`${this.file}: refused: probe output '${n}' has ${t ? `shape [${t.dims.join(', ')}]` : 'no value'}, expected [${count}, ${this.dims[n]}]`, true);
      }
      let bad = 0;
      for (let i = 0; i < t.data.length; i++) if (!Number.isFinite(t.data[i] as number)) bad++;
      if (bad) throw new EncoderError(`${this.file}: refused: probe output '${n}' has ${bad} of ${want} values not finite (NaN or infinite) on mid-grey and patterned images`, true);
    }
  }

  /**
   * What is not finite in this model's outputs on real frames (uint8 CHW), or null when all is: the
   * probe images are synthetic, and a model can be finite on them and NaN on a camera's frames.
   */
  async nonFiniteOn(images: Uint8Array, count: number): Promise<string | null> {
    for (const n of (Object.keys(this.dims) as EncoderOutput[]).filter((o) => this.dims[o] !== null)) {
      const v = await this.runU8(images, count, n);
      let bad = 0;
      for (let i = 0; i < v.length; i++) if (!Number.isFinite(v[i])) bad++;
      if (bad) return `output '${n}' has ${bad} of ${v.length} values not finite (NaN or infinite) on ${count} real frames`;
    }
    return null;
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
