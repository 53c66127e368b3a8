// Inputs and outputs of the inference commands: image files from a path (listed by frames/list.ts),
// decoded at the encoder's size; records written as JSON lines (streamed, one
// per frame, appendable) or as one float32 matrix (npy or safetensors, written atomically at the end).
// The vector is named after what it holds: `features` (backbone) or `embedding` (the projection).

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
/** What a vector in the output holds; the JSON field and the safetensors tensor carry this name. */
export type VectorName = 'features' | 'embedding';

/** An output that cannot be written as asked (exit code 2, before any work). */
export class OutputError extends Error {
  override name = 'OutputError';
  readonly exitCode = 2;
}

const EXTENSIONS: Record<string, OutFormat> = { '.jsonl': 'jsonl', '.ndjson': 'jsonl', '.npy': 'npy', '.safetensors': 'safetensors' };

/**
 * The format of --out FILE, by its extension: one this tool does not write (x.csv, a name without one)
 * is an error, never JSON lines under another name. `flag` (--format) must agree with the extension.
 */
export function formatOf(file: string | undefined, flag?: OutFormat, accept: OutFormat[] = ['jsonl', 'npy', 'safetensors']): OutFormat {
  if (!file || file === '-') return flag ?? 'jsonl';
  const ext = path.extname(file).toLowerCase();
  const byExt = EXTENSIONS[ext];
  if (!byExt || !accept.includes(byExt)) {
    const supported = Object.keys(EXTENSIONS).filter((e) => accept.includes(EXTENSIONS[e]));
    throw new OutputError(`--out ${file}: ${ext ? `${ext} is not` : 'a name without an extension is not'} an output this command writes; supported: ${supported.join(', ')}`);
  }
  if (flag && flag !== byExt) throw new OutputError(`--format ${flag}: --out ${file} names a ${byExt} file; give a matching extension or leave --format out`);
  return byExt;
}

/**
 * The vector field of the records already in a JSON-lines file (null: none yet, or no vectors). Read
 * from the first line only: appending vectors under another name would leave a file no reader can take
 * as one table (older ssocl wrote backbone features as `embedding`).
 */
export function vectorFieldOf(file: string): VectorName | null {
  if (!existsSync(file)) return null;
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(1 << 20);
    const n = readSync(fd, buf, 0, buf.length, 0);
    const nl = buf.subarray(0, n).indexOf(10);
    const first = JSON.parse(buf.subarray(0, nl < 0 ? n : nl).toString('utf8')) as Record<string, unknown>;
    return Array.isArray(first.features) ? 'features' : Array.isArray(first.embedding) ? 'embedding' : null;
  } catch {
    return null; // empty, or a first line longer than the read: nothing to compare with
  } finally {
    closeSync(fd);
  }
}

/** Refuses to append `field` vectors to a JSON-lines file whose records hold the other kind. */
export function checkAppend(file: string, field: VectorName): void {
  const there = vectorFieldOf(file);
  if (there && there !== field) {
    const what = there === 'embedding' ? ' (the projection, or backbone features from an older ssocl)' : '';
    throw new OutputError(`${file}: its records hold '${there}' vectors${what}, this run writes '${field}'; write to a new file`);
  }
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

/**
 * JSON lines to a file (appended; ids continue after the lines already there) or to stdout ('-'). A
 * record's vector goes in the field named `field` (run --emit-embeddings writes backbone features).
 */
export class JsonlSink implements RecordSink {
  next = 0;
  private fd: number;
  constructor(
    readonly file: string,
    readonly field: VectorName = 'features',
  ) {
    if (file === '-') this.fd = 1;
    else {
      if (existsSync(file)) {
        checkAppend(file, field);
        this.next = countLinesRepairingTail(file);
      }
      this.fd = openSync(file, 'a');
    }
  }
  add(rec: Omit<EmbedRecord, 'id'> & Record<string, unknown>, vector: Float32Array | null): void {
    const line = JSON.stringify({ id: this.next++, ...rec, ...(vector ? { [this.field]: f32List(vector) } : {}) }) + '\n';
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
    readonly field: VectorName = 'features',
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
      writeFileAtomic(this.file, encodeSafetensors(new Map([[this.field, { dtype: 'F32', shape: [this.rows.length, d], data: m }]]), { records: JSON.stringify(this.recs) }));
    }
  }
}

export function openSink(file: string | undefined, format: OutFormat, field: VectorName = 'features'): RecordSink {
  if (format === 'jsonl') return new JsonlSink(file ?? '-', field);
  if (!file || file === '-') throw new OutputError(`--format ${format}: needs --out FILE (a binary matrix is not written to the terminal)`);
  return new MatrixSink(file, format, field);
}

