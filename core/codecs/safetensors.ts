// safetensors read/write (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
// length, a JSON header, then the raw little-endian tensor bytes. Used for initial weights, checkpoints,
// the health set and fleet messages; the reader is strict (see decodeSafetensors), as files and
// messages may come from elsewhere.

import { readFileSync } from 'node:fs';

export type StDtype = 'F32' | 'F16' | 'F64' | 'I64' | 'U8';
export interface StTensor {
  dtype: StDtype;
  shape: number[];
  /** F16 data is a Uint16Array of IEEE half bits (JS has no half-float array in Node 20). */
  data: Float32Array | Uint16Array | Float64Array | BigInt64Array | Uint8Array;
}

const BYTES: Record<StDtype, number> = { F32: 4, F16: 2, F64: 8, I64: 8, U8: 1 };

export function dtypeOf(data: StTensor['data']): StDtype {
  if (data instanceof Float32Array) return 'F32';
  if (data instanceof Uint16Array) return 'F16';
  if (data instanceof Float64Array) return 'F64';
  if (data instanceof BigInt64Array) return 'I64';
  return 'U8';
}

/** Serialises tensors in the given order (deterministic bytes for the same input). */
export function encodeSafetensors(tensors: Map<string, StTensor['data'] | StTensor>, metadata: Record<string, string> = {}): Buffer {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  const parts: Uint8Array[] = [];
  for (const [name, t] of tensors) {
    const data = 'shape' in t ? t.data : t;
    const shape = 'shape' in t ? t.shape : [data.length];
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    header[name] = { dtype: dtypeOf(data), shape, data_offsets: [offset, offset + bytes.length] };
    parts.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((json.length + 8) % 8)) % 8); // align the data section to 8 bytes
  const head = Buffer.from(json, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(head.length));
  return Buffer.concat([len, head, ...parts]);
}

/** Largest header accepted (the format's own reference implementation refuses more than 100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;
/** Largest file decoded unless the caller says otherwise. */
export const MAX_SAFETENSORS_BYTES = 2 ** 31;

export interface DecodedSafetensors {
  tensors: Map<string, StTensor>;
  metadata: Record<string, string>;
  /** Where the data section starts (8 + header length). */
  dataStart: number;
  /** Tensor names in the order their bytes lie in the data section. */
  order: string[];
}

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/**
 * A strict reader: the header is UTF-8 (fatal on a bad byte) JSON of an object; __metadata__, if there,
 * is an object (its string values kept, others left out); each tensor has exactly dtype (one of F32, F16, F64, I64, U8), shape (whole
 * numbers >= 0) and data_offsets [begin, end] whose length is the shape's element count x the dtype's
 * size; the tensors tile the data section exactly, in offset order, with no gap, overlap or trailing
 * byte; the whole is within `maxBytes`. Anything else is an Error saying what, never a partial result.
 */
export function decodeSafetensors(buf: Uint8Array, o: { maxBytes?: number } = {}): DecodedSafetensors {
  const bad = (why: string) => new Error(`safetensors: ${why}`);
  const maxBytes = o.maxBytes ?? MAX_SAFETENSORS_BYTES;
  if (buf.length > maxBytes) throw bad(`${buf.length} bytes, over the ${maxBytes}-byte limit`);
  if (buf.length < 8) throw bad('file too short');
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n64 = dv.getBigUint64(0, true);
  if (n64 > BigInt(MAX_HEADER_BYTES)) throw bad(`header of ${n64} bytes, over the ${MAX_HEADER_BYTES}-byte limit`);
  const n = Number(n64);
  if (8 + n > buf.length) throw bad('header length beyond end of file');
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(8, 8 + n)));
  } catch (e) {
    throw bad(`header is not UTF-8 JSON (${(e as Error).message})`);
  }
  if (!header || typeof header !== 'object' || Array.isArray(header)) throw bad('header is not a JSON object');
  const base = 8 + n;
  const metadata: Record<string, string> = {};
  const spans: { name: string; dtype: StDtype; shape: number[]; a: number; b: number }[] = [];
  for (const [name, info] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (!info || typeof info !== 'object' || Array.isArray(info)) throw bad('__metadata__ is not an object');
      // The format maps strings to strings; another value is left out (its reader finds it missing).
      for (const [k, v] of Object.entries(info)) if (typeof v === 'string') metadata[k] = v;
      continue;
    }
    const t = info as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
    const what = `tensor ${JSON.stringify(name.slice(0, 100))}`;
    if (!t || typeof t !== 'object' || Array.isArray(t)) throw bad(`${what} is not an object`);
    const extra = Object.keys(t).filter((k) => !['dtype', 'shape', 'data_offsets'].includes(k));
    if (extra.length) throw bad(`${what} has unknown fields (${extra.slice(0, 3).join(', ')})`);
    if (typeof t.dtype !== 'string' || !Object.hasOwn(BYTES, t.dtype)) throw bad(`unsupported dtype ${JSON.stringify(t.dtype)} for ${what} (accepted: ${Object.keys(BYTES).join(', ')})`);
    const dtype = t.dtype as StDtype;
    if (!Array.isArray(t.shape) || !t.shape.every(isCount)) throw bad(`${what}: shape is not a list of whole numbers >= 0`);
    const shape = t.shape as number[];
    const count = shape.reduce((x, y) => x * y, 1);
    const off = t.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !isCount(off[0]) || !isCount(off[1]) || off[0] > off[1]) throw bad(`${what}: data_offsets is not [begin, end] with 0 <= begin <= end`);
    const [a, b] = off as [number, number];
    if (!Number.isSafeInteger(count * BYTES[dtype]) || b - a !== count * BYTES[dtype]) throw bad(`bad offsets for ${what}: ${b - a} bytes for ${shape.join('x') || 'a scalar'} ${dtype}`);
    spans.push({ name, dtype, shape, a, b });
  }
  // Exactly tiled: every data byte belongs to one tensor, in offset order.
  spans.sort((x, y) => x.a - y.a || x.b - y.b);
  let at = 0;
  for (const sp of spans) {
    if (sp.a !== at) throw bad(`tensor ${JSON.stringify(sp.name.slice(0, 100))} starts at ${sp.a}, expected ${at} (${sp.a > at ? 'a gap' : 'an overlap'} in the data)`);
    at = sp.b;
  }
  if (base + at !== buf.length) throw bad(base + at > buf.length ? `the last tensor's ${base + at - buf.length} final bytes are missing (cut short)` : `${buf.length - base - at} bytes after the last tensor (trailing data)`);
  const tensors = new Map<string, StTensor>();
  for (const { name, dtype, shape, a, b } of spans) {
    // Copy so the result is aligned and independent of the file buffer.
    const bytes = Uint8Array.prototype.slice.call(buf, base + a, base + b); // a copy, also for Buffer (whose slice is a view)
    const data =
      dtype === 'F32'
        ? new Float32Array(bytes.buffer)
        : dtype === 'F16'
          ? new Uint16Array(bytes.buffer)
          : dtype === 'F64' ? new Float64Array(bytes.buffer) : dtype === 'I64' ? new BigInt64Array(bytes.buffer) : bytes;
    tensors.set(name, { dtype, shape, data });
  }
  return { tensors, metadata, dataStart: base, order: spans.map((sp) => sp.name) };
}

export function readSafetensors(file: string) {
  return decodeSafetensors(readFileSync(file));
}
