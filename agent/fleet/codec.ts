// Fleet messages (issue #22): a device's encoder update or the aggregator's global model, as safetensors
// bytes with the header and a digest in __metadata__. Pure and transport-free: the MQTT side only moves
// the bytes. Everything read here comes from the network, so decoding checks every field.

import { createHash } from 'node:crypto';
import { decodeSafetensors, encodeSafetensors } from '../../core/codecs/safetensors.ts';
import { signText, type Auth, type Signer } from './keys.ts';

export class FleetFormatError extends Error {}

export type Enc = 'f16' | 'f32';
export type Spec = readonly { name: string; shape: number[] }[];

export interface UpdateHeader {
  kind: 'update';
  fleet: string;
  device: string;
  seq: number;
  /** The global version the update was trained from. */
  base: number;
  frames: number;
  step: number;
  artifact: string;
  sentAt: string;
}
export interface GlobalHeader {
  kind: 'global';
  fleet: string;
  version: number;
  prev: number;
  artifact: string;
  included: { device: string; seq: number; frames: number }[];
  /**
   * Per device, the newest update the model holds over all rounds (absent from older aggregators): a
   * device that missed the round which took its update still knows it is in.
   */
  latest?: Record<string, number>;
  rejected: { device: string; seq: number; why: string }[];
  frames: number;
  /** The median accepted update norm of each recent round, oldest first (the aggregator's norm bound; absent from older aggregators). */
  norms?: number[];
  madeAt: string;
  full: boolean;
}
export type Header = UpdateHeader | GlobalHeader;

const META_KEY = 'ssocl_fleet';
const MAX_STRING = 200;
const HALF_MAX = 65504;
const DEFAULT_MAX_BYTES = 64 * 1024 * 1024;

// ---- IEEE half <-> single, on the bits (Node 20 has no Float16Array or Math.f16round).

/** Round-to-nearest-even; overflow -> ±Inf; half subnormals kept; NaN stays NaN (payload's top bits kept). */
export function f32ToF16(a: Float32Array): Uint16Array {
  const bits = new Uint32Array(a.buffer, a.byteOffset, a.length); // bits, not values: reading a NaN as a number may canonicalise it
  const out = new Uint16Array(a.length);
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i];
    const sign = (b >>> 16) & 0x8000;
    const exp = (b >>> 23) & 0xff;
    const mant = b & 0x7fffff;
    let h: number;
    if (exp === 0xff) {
      const m = mant >>> 13;
      h = 0x7c00 | (mant === 0 ? 0 : m || 0x200); // a NaN whose payload sits only in the dropped bits must not become Inf
    } else {
      const e = exp - 112; // rebias 127 -> 15
      if (e >= 0x1f) h = 0x7c00;
      else if (e <= 0) {
        if (e < -10) h = 0; // below half of the smallest subnormal: rounds to zero
        else {
          // Half subnormal: value / 2^-24 is the 24-bit significand (implicit one included) shifted right by 14 - e.
          const m = mant | 0x800000;
          const shift = 14 - e;
          h = m >>> shift;
          const rem = m & ((1 << shift) - 1);
          const half = 1 << (shift - 1);
          if (rem > half || (rem === half && h & 1)) h++; // a carry into 0x400 is the smallest normal, as it should be
        }
      } else {
        h = (e << 10) | (mant >>> 13);
        const rem = mant & 0x1fff;
        if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++; // a carry out of the mantissa bumps the exponent, up to Inf
      }
    }
    out[i] = sign | h;
  }
  return out;
}

export function f16ToF32(h: Uint16Array): Float32Array {
  const out = new Float32Array(h.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < h.length; i++) {
    const x = h[i];
    const sign = (x & 0x8000) << 16;
    const e = (x >>> 10) & 0x1f;
    let m = x & 0x3ff;
    if (e === 0x1f) bits[i] = sign | 0x7f800000 | (m << 13);
    else if (e !== 0) bits[i] = sign | ((e + 112) << 23) | (m << 13);
    else if (m === 0) bits[i] = sign;
    else {
      // Subnormal half: a normal single once the leading one is shifted up to the implicit bit.
      let e32 = 113;
      while (!(m & 0x400)) {
        m <<= 1;
        e32--;
      }
      bits[i] = sign | (e32 << 23) | ((m & 0x3ff) << 13);
    }
  }
  return out;
}

// ---- Messages

/**
 * Safetensors bytes: the tensors (f16: each tensor as F16 unless a value is outside half range (|x| > 65504) — then that tensor goes F32 — f32: all F32) and __metadata__ { ssocl_fleet: JSON of header, digest: sha256 hex over the tensor section bytes in header order }; with a signer also
 * { key: its public key, signature: Ed25519 over signedText (the header JSON, the digest and the tensors' layout) }.
 */
export function encodeMessage(header: Header, tensors: Map<string, Float32Array>, enc: Enc, signer?: Signer): Buffer {
  if (enc !== 'f16' && enc !== 'f32') throw new FleetFormatError(`fleet message: unknown encoding ${String(enc)} (expected f16 or f32)`);
  const clean = parseHeader(header); // a header the receiver would refuse is a bug here, not on the wire
  const out = new Map<string, Float32Array | Uint16Array>();
  for (const [name, t] of tensors) out.set(name, enc === 'f16' && fitsHalf(t) ? f32ToF16(t) : t);
  const hash = createHash('sha256');
  for (const t of out.values()) hash.update(new Uint8Array(t.buffer, t.byteOffset, t.byteLength)); // the data section, in the order it is written
  const json = JSON.stringify(clean);
  const digest = hash.digest('hex');
  const meta: Record<string, string> = { [META_KEY]: json, digest };
  if (signer) {
    const layout = [...out].map(([name, t]) => ({ name, dtype: t instanceof Uint16Array ? 'F16' : 'F32', count: t.length }));
    meta.key = signer.pub;
    meta.signature = signText(signer, signedText(json, digest, layout));
  }
  return encodeSafetensors(out, meta);
}

/** What a signature covers: the header exactly as sent, the tensor bytes' digest, and each tensor's name, dtype and size in data order (a renamed or swapped tensor breaks it). */
function signedText(json: string, digest: string, layout: { name: string; dtype: string; count: number }[]): string {
  return ['ssocl-fleet-signature-v1', json, digest, ...layout.map((l) => `${JSON.stringify(l.name)} ${l.dtype} ${l.count}`)].join('\n');
}

function fitsHalf(t: Float32Array): boolean {
  for (let i = 0; i < t.length; i++) if (t[i] > HALF_MAX || t[i] < -HALF_MAX) return false; // NaN fits: it stays NaN
  return true;
}

/** Inverse of encodeMessage. Every failure is a FleetFormatError with a one-line message. */
export function decodeMessage(bytes: Uint8Array, maxBytes = DEFAULT_MAX_BYTES): Decoded {
  if (bytes.length > maxBytes) throw new FleetFormatError(`fleet message: ${bytes.length} bytes is over the limit of ${maxBytes}`);
  // The strict decode checks the structure once: the tensors tile the data section exactly (in offset
  // order, no gap, overlap or trailing bytes), so the digest over that section covers every tensor byte
  // and nothing else.
  let decoded: ReturnType<typeof decodeSafetensors>;
  try {
    decoded = decodeSafetensors(bytes);
  } catch (e) {
    throw new FleetFormatError(`fleet message: not safetensors (${oneLine((e as Error).message).replace(/^safetensors: /, '')})`);
  }
  for (const name of decoded.order) {
    const dtype = decoded.tensors.get(name)!.dtype;
    if (dtype !== 'F16' && dtype !== 'F32') throw new FleetFormatError(`fleet message: tensor ${show(name)} has dtype ${dtype} (expected F16 or F32)`);
  }
  const meta = decoded.metadata as Record<string, unknown>;
  if (typeof meta !== 'object' || meta === null || typeof meta[META_KEY] !== 'string') throw new FleetFormatError(`fleet message: no ${META_KEY} metadata`);
  if (typeof meta.digest !== 'string' || !/^[0-9a-f]{64}$/.test(meta.digest)) throw new FleetFormatError('fleet message: no sha256 digest in the metadata');
  let raw: unknown;
  try {
    raw = JSON.parse(meta[META_KEY] as string);
  } catch {
    throw new FleetFormatError(`fleet message: ${META_KEY} metadata is not JSON`);
  }
  const header = parseHeader(raw);
  const digest = createHash('sha256').update(bytes.subarray(decoded.dataStart)).digest('hex');
  if (digest !== meta.digest) throw new FleetFormatError(`fleet message from ${describe(header)}: digest mismatch (tensor bytes altered or corrupted)`);
  const tensors = new Map<string, Float32Array>();
  const sizes: { name: string; dtype: string; count: number }[] = [];
  for (const name of decoded.order) {
    const t = decoded.tensors.get(name)!; // dtype F16 or F32: checked above
    tensors.set(name, t.dtype === 'F16' ? f16ToF32(t.data as Uint16Array) : (t.data as Float32Array));
    sizes.push({ name, dtype: t.dtype, count: t.data.length });
  }
  const auth: Auth = { text: signedText(meta[META_KEY] as string, digest, sizes) };
  if (typeof meta.key === 'string') auth.key = meta.key;
  if (typeof meta.signature === 'string') auth.signature = meta.signature;
  return { header, tensors, bytes: bytes.length, auth };
}

export interface Decoded {
  header: Header;
  tensors: Map<string, Float32Array>;
  bytes: number;
  /** What to check the signature with (keys.ts verifyAuth); unsigned messages have no signature. */
  auth: Auth;
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** A validated copy of a header (only the known fields), or a FleetFormatError naming the first bad field. */
function parseHeader(h: unknown): Header {
  const bad = (why: string) => new FleetFormatError(`fleet message: bad header: ${why}`);
  if (typeof h !== 'object' || h === null || Array.isArray(h)) throw bad('not an object');
  const o = h as Record<string, unknown>;
  const str = (x: Record<string, unknown>, k: string, at = k): string => {
    const v = x[k];
    if (typeof v !== 'string') throw bad(`${at} is not a string`);
    if (v.length > MAX_STRING) throw bad(`${at} is longer than ${MAX_STRING} characters`);
    if (/[\u0000-\u001f\u007f]/.test(v)) throw bad(`${at} has a control character`); // these end up in topics and one-line logs
    return v;
  };
  const int = (x: Record<string, unknown>, k: string, at = k): number => {
    if (!isCount(x[k])) throw bad(`${at} is not a non-negative integer`);
    return x[k] as number;
  };
  const list = <T>(k: string, item: (x: Record<string, unknown>, at: string) => T): T[] => {
    if (!Array.isArray(o[k])) throw bad(`${k} is not an array`);
    return (o[k] as unknown[]).map((x, i) => {
      if (typeof x !== 'object' || x === null || Array.isArray(x)) throw bad(`${k}[${i}] is not an object`);
      return item(x as Record<string, unknown>, `${k}[${i}]`);
    });
  };
  if (o.kind === 'update') {
    return { kind: 'update', fleet: str(o, 'fleet'), device: str(o, 'device'), seq: int(o, 'seq'), base: int(o, 'base'), frames: int(o, 'frames'), step: int(o, 'step'), artifact: str(o, 'artifact'), sentAt: str(o, 'sentAt') };
  }
  if (o.kind === 'global') {
    const fleet = str(o, 'fleet');
    const version = int(o, 'version');
    const prev = int(o, 'prev');
    const artifact = str(o, 'artifact');
    const included = list('included', (x, at) => ({ device: str(x, 'device', `${at}.device`), seq: int(x, 'seq', `${at}.seq`), frames: int(x, 'frames', `${at}.frames`) }));
    const rejected = list('rejected', (x, at) => ({ device: str(x, 'device', `${at}.device`), seq: int(x, 'seq', `${at}.seq`), why: str(x, 'why', `${at}.why`) }));
    const frames = int(o, 'frames');
    const madeAt = str(o, 'madeAt');
    if (typeof o.full !== 'boolean') throw bad('full is not a boolean');
    let latest: Record<string, number> | undefined;
    if (o.latest !== undefined) {
      if (typeof o.latest !== 'object' || o.latest === null || Array.isArray(o.latest)) throw bad('latest is not an object');
      const l = o.latest as Record<string, unknown>;
      latest = Object.create(null) as Record<string, number>; // a device may be named __proto__
      for (const k of Object.keys(l)) {
        str({ k }, 'k', `latest key ${show(k.slice(0, 40))}`);
        latest[k] = int(l, k, `latest.${k}`);
      }
    }
    let norms: number[] | undefined;
    if (o.norms !== undefined) {
      if (!Array.isArray(o.norms) || o.norms.length > 100 || !o.norms.every((x) => typeof x === 'number' && Number.isFinite(x) && x >= 0)) throw bad('norms is not a list of at most 100 finite non-negative numbers');
      norms = [...(o.norms as number[])];
    }
    return { kind: 'global', fleet, version, prev, artifact, included, ...(latest ? { latest } : {}), rejected, frames, ...(norms ? { norms } : {}), madeAt, full: o.full };
  }
  throw bad(`kind is ${typeof o.kind === 'string' ? show(o.kind) : 'missing'} (expected update or global)`);
}

function describe(h: Header): string {
  return h.kind === 'update' ? `${h.device} seq ${h.seq}` : `global v${h.version}`;
}

/** A name from the wire as it can appear in a one-line message. */
function show(s: string): string {
  const t = s.length > 80 ? s.slice(0, 80) + '…' : s;
  return /^[\w.\-/:[\]]+$/.test(t) ? t : JSON.stringify(t);
}

function oneLine(s: string): string {
  return s.split('\n')[0].slice(0, 200);
}

// ---- Tensors

/** The shared tensors' spec from a manifest's state: roles param and buffer, in manifest order. */
export function sharedSpec(state: { name: string; shape: number[]; role: string }[]): { name: string; shape: number[] }[] {
  return state.filter((s) => s.role === 'param' || s.role === 'buffer').map((s) => ({ name: s.name, shape: [...s.shape] }));
}

function count(shape: number[]): number {
  return shape.reduce((x, y) => x * y, 1);
}

function need(m: Map<string, Float32Array>, s: { name: string; shape: number[] }, what: string): Float32Array {
  const v = m.get(s.name);
  if (!v || v.length !== count(s.shape)) throw new Error(`${what}: tensor ${show(s.name)} is ${v ? `${v.length} values, expected ${count(s.shape)}` : 'missing'}`);
  return v;
}

/** a - b per tensor of the spec (new arrays, spec order). */
export function delta(a: Map<string, Float32Array>, b: Map<string, Float32Array>, spec: Spec): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const s of spec) {
    const x = need(a, s, 'delta');
    const y = need(b, s, 'delta');
    const d = new Float32Array(x.length);
    for (let i = 0; i < d.length; i++) d[i] = x[i] - y[i];
    out.set(s.name, d);
  }
  return out;
}

/** target += scale * d in place, per tensor of the spec (the sum in float64, stored as float32: one rounding). */
export function addInto(target: Map<string, Float32Array>, d: Map<string, Float32Array>, spec: Spec, scale = 1): void {
  for (const s of spec) {
    const t = need(target, s, 'addInto');
    const x = need(d, s, 'addInto');
    for (let i = 0; i < t.length; i++) t[i] = t[i] + scale * x[i];
  }
}
