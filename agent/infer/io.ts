// Inputs and outputs of the inference commands: image files from a path (listed by frames/list.ts),
// decoded at the encoder's size; records written as JSON lines (streamed, one
// per frame, appendable) or as one float32 matrix (npy or safetensors, written atomically at the end).

import { closeSync, existsSync, fstatSync, fsyncSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import path from 'node:path';
import { decodeFrame, FrameError, type Fit } from '../frames/decode.ts';
import { readRegularFile, UnreadableFile } from '../sources/read.ts';
import { encodeSafetensors } from '../../core/codecs/safetensors.ts';
import { encodeNpy } from '../../core/codecs/npy.ts';
import { writeFileAtomic } from '../../core/atomic.ts';
import type { FrameRef } from '../frames/list.ts';
import type { ModelVersion } from './encoder.ts';

export interface DecodedFrame extends FrameRef {
  image: Uint8Array;
}

/**
 * Reads and decodes frames, several at a time (sharp decodes on libuv's thread pool, so a 32x32 PNG
 * costs mostly per-call overhead that overlaps); results keep the input order. A frame that cannot be
 * read or decoded is reported and left out.
 */
export async function decodeFrames(refs: FrameRef[], size: number, fit: Fit, maxPixels: number, onBad: (f: FrameRef, reason: string) => void, concurrency = 8): Promise<DecodedFrame[]> {
  const out: (DecodedFrame | null)[] = new Array(refs.length).fill(null);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < refs.length; i = next++) {
      const f = refs[i];
      try {
        const image = await decodeFrame(readRegularFile(f.path, f.size), path.extname(f.path), { size, fit, maxPixels });
        out[i] = { ...f, image };
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        onBad(f, e instanceof FrameError || e instanceof UnreadableFile ? e.message : err.code ? `cannot read: ${err.code}` : `decode failed: ${err.message}`);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, refs.length) }, worker));
  return out.filter((f): f is DecodedFrame => f !== null);
}

export function stackImages(frames: { image: Uint8Array }[]): Uint8Array {
  const per = frames[0]?.image.length ?? 0;
  const x = new Uint8Array(frames.length * per);
  frames.forEach((f, i) => x.set(f.image, i * per));
  return x;
}

export interface EmbedRecord {
  /** Row number in the output (continues across appended runs of a JSON-lines file). */
  id: number;
  key: string;
  path: string;
  /** The frame's modification time (when it was captured or written). */
  time: string;
  model: ModelVersion;
}

/** Float32 values as the shortest decimal that reads back to the same float32. */
export function f32List(v: Float32Array): number[] {
  const out = new Array<number>(v.length);
  for (let i = 0; i < v.length; i++) {
    const x = v[i];
    let s = Number(x.toPrecision(6));
    if (Math.fround(s) !== x) s = Number(x.toPrecision(9));
    out[i] = s;
  }
  return out;
}

export type OutFormat = 'jsonl' | 'npy' | 'safetensors';

export function formatOf(file: string | undefined, flag?: OutFormat): OutFormat {
  if (flag) return flag;
  if (!file || file === '-') return 'jsonl';
  const ext = path.extname(file).toLowerCase();
  return ext === '.npy' ? 'npy' : ext === '.safetensors' ? 'safetensors' : 'jsonl';
}

export interface RecordSink {
  /** Id the next record gets. */
  readonly next: number;
  add(rec: Omit<EmbedRecord, 'id'> & Record<string, unknown>, vector: Float32Array | null): void;
  /** Makes what was added durable (JSON lines); a matrix is only written by close(). */
  sync(): void;
  /** Finishes the output (a matrix is written only here). */
  close(): void;
  /** After a failure: never replace an existing output with a partial one. */
  abort(): void;
}

/**
 * Lines in a JSON-lines file, counted in chunks (the file may be far larger than a string can hold); a
 * last line cut short by a crash or a full disk is cut off, so appending starts on a fresh line.
 */
function countLinesRepairingTail(file: string): number {
  const fd = openSync(file, 'r+');
  try {
    const size = fstatSync(fd).size;
    const buf = Buffer.allocUnsafe(1 << 20);
    let lines = 0;
    let lastNl = -1;
    for (let pos = 0; pos < size; ) {
      const n = readSync(fd, buf, 0, Math.min(buf.length, size - pos), pos);
      if (n === 0) break;
      for (let i = 0; i < n; i++) {
        if (buf[i] === 10) {
          lines++;
          lastNl = pos + i;
        }
      }
      pos += n;
    }
    if (lastNl + 1 < size) ftruncateSync(fd, lastNl + 1);
    return lines;
  } finally {
    closeSync(fd);
  }
}

/** JSON lines to a file (appended; ids continue after the lines already there) or to stdout ('-'). */
export class JsonlSink implements RecordSink {
  next = 0;
  private fd: number;
  constructor(readonly file: string) {
    if (file === '-') this.fd = 1;
    else {
      if (existsSync(file)) this.next = countLinesRepairingTail(file);
      this.fd = openSync(file, 'a');
    }
  }
  add(rec: Omit<EmbedRecord, 'id'> & Record<string, unknown>, vector: Float32Array | null): void {
    const line = JSON.stringify({ id: this.next++, ...rec, ...(vector ? { embedding: f32List(vector) } : {}) }) + '\n';
    writeSync(this.fd, line);
  }
  /** Durable before the caller records the frames as done (a crash repeats a frame, never loses one). */
  sync(): void {
    if (this.fd !== 1) fsyncSync(this.fd);
  }
  close(): void {
    if (this.fd !== 1 && this.fd >= 0) {
      fsyncSync(this.fd);
      closeSync(this.fd);
      this.fd = -1;
    }
  }
  abort(): void {
    this.close(); // lines already written are complete records
  }
}

/** One [N, D] float32 matrix, rows in id order; the records go beside it (npy) or in its metadata. */
export class MatrixSink implements RecordSink {
  next = 0;
  private rows: Float32Array[] = [];
  private recs: EmbedRecord[] = [];
  constructor(
    readonly file: string,
    readonly format: 'npy' | 'safetensors',
  ) {}
  add(rec: Omit<EmbedRecord, 'id'>, vector: Float32Array | null): void {
    if (!vector) throw new Error('matrix output needs a vector per record');
    if (this.rows.length && vector.length !== this.rows[0].length) {
      throw new Error(`the model's output size changed (${this.rows[0].length} -> ${vector.length}); a matrix needs one size: write JSON lines instead`);
    }
    this.recs.push({ id: this.next++, ...rec });
    this.rows.push(vector.slice());
  }
  /** The records file written beside an .npy matrix. */
  static recordsFile(file: string): string {
    return file.replace(/\.npy$/i, '') + '.records.jsonl';
  }
  sync(): void {}
  abort(): void {
    this.rows = [];
  }
  close(): void {
    const d = this.rows[0]?.length ?? 0;
    const m = new Float32Array(this.rows.length * d);
    this.rows.forEach((r, i) => m.set(r, i * d));
    if (this.format === 'npy') {
      writeFileAtomic(MatrixSink.recordsFile(this.file), Buffer.from(this.recs.map((r) => JSON.stringify(r) + '\n').join('')));
      writeFileAtomic(this.file, encodeNpy(m, [this.rows.length, d]));
    } else {
      writeFileAtomic(this.file, encodeSafetensors(new Map([['embeddings', { dtype: 'F32', shape: [this.rows.length, d], data: m }]]), { records: JSON.stringify(this.recs) }));
    }
  }
}

export function openSink(file: string | undefined, format: OutFormat): RecordSink {
  if (format === 'jsonl') return new JsonlSink(file ?? '-');
  if (!file || file === '-') throw new Error(`--format ${format}: needs --out FILE (a binary matrix is not written to the terminal)`);
  return new MatrixSink(file, format);
}

