// safetensors read/write (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
// length, a JSON header, then the raw little-endian tensor bytes. Used for initial weights and checkpoints.

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

export function decodeSafetensors(buf: Uint8Array): { tensors: Map<string, StTensor>; metadata: Record<string, string> } {
  if (buf.length < 8) throw new Error('safetensors: file too short');
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n = Number(dv.getBigUint64(0, true));
  if (8 + n > buf.length) throw new Error('safetensors: header length beyond end of file');
  const header = JSON.parse(new TextDecoder().decode(buf.subarray(8, 8 + n)));
  const base = 8 + n;
  const tensors = new Map<string, StTensor>();
  for (const [name, info] of Object.entries<any>(header)) {
    if (name === '__metadata__') continue;
    const dtype = info.dtype as StDtype;
    if (!(dtype in BYTES)) throw new Error(`safetensors: unsupported dtype ${dtype} for ${name}`);
    const [a, b] = info.data_offsets as [number, number];
    const count = info.shape.reduce((x: number, y: number) => x * y, 1);
    if (b - a !== count * BYTES[dtype] || base + b > buf.length) throw new Error(`safetensors: bad offsets for ${name}`);
    // Copy so the result is aligned and independent of the file buffer.
    const bytes = Uint8Array.prototype.slice.call(buf, base + a, base + b); // a copy, also for Buffer (whose slice is a view)
    const data =
      dtype === 'F32'
        ? new Float32Array(bytes.buffer)
        : dtype === 'F16'
          ? new Uint16Array(bytes.buffer)
          : dtype === 'F64' ? new Float64Array(bytes.buffer) : dtype === 'I64' ? new BigInt64Array(bytes.buffer) : bytes;
    tensors.set(name, { dtype, shape: info.shape, data });
  }
  return { tensors, metadata: header.__metadata__ ?? {} };
}

export function readSafetensors(file: string) {
  return decodeSafetensors(readFileSync(file));
}
