// Fleet messages (issue #22): half-float conversion against an arithmetic reference, the safetensors
// message round trip, and every way a message from the network can be refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { decodeSafetensors, encodeSafetensors, type StTensor } from '../core/codecs/safetensors.ts';
import { Rng } from '../core/rng.ts';
import {
  FleetFormatError,
  addInto,
  decodeMessage,
  delta,
  encodeMessage,
  f16ToF32,
  f32ToF16,
  sharedSpec,
  type GlobalHeader,
  type UpdateHeader,
} from '../agent/fleet/codec.ts';
import { checkTensors, l2 } from '../agent/fleet/screen.ts';
import { fingerprint, signerOf, verifyAuth } from '../agent/fleet/keys.ts';

// ---- references written differently from the code: plain arithmetic on values, no bit twiddling

/** The value of half bits by the textbook formula. */
function halfValue(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 31) return m ? NaN : s * Infinity;
  if (e === 0) return s * m * 2 ** -24;
  return s * 2 ** (e - 15) * (1 + m / 1024);
}

/** The nearest half value to x (ties to even), by scaling to the half's unit in the last place. */
function nearestHalf(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const neg = x < 0 || Object.is(x, -0);
  const a = Math.abs(x);
  if (a >= 65520) return neg ? -Infinity : Infinity; // 65520 is the tie between 65504 and 2^16, and 2^16's mantissa is even
  let e = -14;
  while (e < 15 && 2 ** (e + 1) <= a) e++;
  const ulp = 2 ** (e - 10);
  const q = a / ulp; // exact: a float32 divided by a power of two
  let r = Math.floor(q);
  const frac = q - r;
  if (frac > 0.5 || (frac === 0.5 && r % 2 === 1)) r++;
  const v = r * ulp;
  return neg ? -v : v;
}

const one = (x: number) => f32ToF16(new Float32Array([x]))[0];
const hex = (h: number) => '0x' + h.toString(16).padStart(4, '0');

test('f16: known bit patterns', () => {
  const cases: [number, number][] = [
    [1, 0x3c00],
    [-2, 0xc000],
    [0, 0x0000],
    [-0, 0x8000],
    [65504, 0x7bff],
    [65519, 0x7bff], // just under the tie: rounds down to the largest half
    [65520, 0x7c00], // the tie rounds to even = Inf
    [1e6, 0x7c00],
    [-1e6, 0xfc00],
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
    [2 ** -24, 0x0001], // smallest subnormal
    [2 ** -14, 0x0400], // smallest normal
    [2 ** -14 - 2 ** -24, 0x03ff], // largest subnormal
    [0.1, 0x2e66],
    [1 / 3, 0x3555],
    [2 ** -26, 0x0000], // under half the smallest subnormal
    // ties to even
    [1 + 2 ** -11, 0x3c00], // between 0x3c00 and 0x3c01: even is 0x3c00
    [1 + 3 * 2 ** -11, 0x3c02], // between 0x3c01 and 0x3c02: even is 0x3c02
    [1 + 2 ** -11 + 2 ** -20, 0x3c01], // just over the tie rounds up
    [2 ** -25, 0x0000], // subnormal tie between 0 and 0x0001
    [3 * 2 ** -25, 0x0002], // subnormal tie between 0x0001 and 0x0002
    [2049, 0x6800], // between 2048 (0x6800) and 2050 (0x6801)
    [2051, 0x6802],
  ];
  for (const [x, want] of cases) assert.equal(hex(one(x)), hex(want), `f32ToF16(${x})`);
  assert.deepEqual(Array.from(f16ToF32(new Uint16Array([0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0xfc00]))), [1, -2, 65504, 2 ** -24, Infinity, -Infinity]);
  assert.ok(Object.is(f16ToF32(new Uint16Array([0x8000]))[0], -0));
  assert.ok(Number.isNaN(f16ToF32(new Uint16Array([0x7e00]))[0]));
  assert.ok(Number.isNaN(f16ToF32(f32ToF16(new Float32Array([NaN])))[0]));
  // A single NaN whose payload lies only in the 13 bits a half drops must not turn into Inf.
  const lowNaN = new Float32Array(new Uint32Array([0x7f800001, 0xff800100]).buffer);
  assert.ok(Array.from(f16ToF32(f32ToF16(lowNaN))).every(Number.isNaN), 'low-payload NaNs stay NaN');
});

test('f16: every one of the 65536 half patterns decodes to the formula value and encodes back to itself (NaNs stay NaN)', () => {
  const all = new Uint16Array(65536).map((_, i) => i);
  const f = f16ToF32(all);
  const back = f32ToF16(f);
  let nans = 0;
  for (let h = 0; h < 65536; h++) {
    const want = halfValue(h);
    if (Number.isNaN(want)) {
      nans++;
      assert.ok(Number.isNaN(f[h]), `${hex(h)} decodes to NaN`);
      const b = back[h];
      assert.ok((b & 0x7c00) === 0x7c00 && (b & 0x3ff) !== 0, `${hex(h)} re-encodes as a NaN, got ${hex(b)}`);
      assert.equal(b & 0x8000, h & 0x8000, `${hex(h)} keeps its sign`);
    } else {
      assert.ok(Object.is(f[h], want), `${hex(h)} decodes to ${want}, got ${f[h]}`);
      assert.equal(back[h], h, `${hex(h)} round trip gave ${hex(back[h])}`);
    }
  }
  assert.equal(nans, 2 * 1023);
});

test('f16: random floats round to the arithmetic nearest-even half; relative error <= 2^-11 in the normal range', () => {
  const r = new Rng(22);
  const bits = new Uint32Array(1);
  const fl = new Float32Array(bits.buffer);
  const xs: number[] = [];
  // Random single-precision bit patterns with exponents around the half range (normals, subnormals, overflow).
  while (xs.length < 200000) {
    bits[0] = (r.nextU32() & 0x807fffff) | ((100 + r.int(50)) << 23);
    xs.push(fl[0]);
  }
  const got = f16ToF32(f32ToF16(new Float32Array(xs)));
  let normals = 0;
  for (let i = 0; i < xs.length; i++) {
    const x = xs[i];
    assert.ok(Object.is(got[i], nearestHalf(x)), `x=${x}: got ${got[i]}, want ${nearestHalf(x)}`);
    if (Math.abs(x) >= 2 ** -14 && Math.abs(x) <= 65504) {
      normals++;
      assert.ok(Math.abs(got[i] - x) / Math.abs(x) <= 2 ** -11, `x=${x}: relative error ${Math.abs(got[i] - x) / Math.abs(x)}`);
    }
  }
  assert.ok(normals > 100000, `${normals} normal-range samples`);
});

test('safetensors: F16 tensors (Uint16Array of half bits) encode and decode', () => {
  const h = new Uint16Array([0x3c00, 0xc000, 0x7bff]);
  const buf = encodeSafetensors(new Map<string, StTensor['data'] | StTensor>([['a', h], ['b', { dtype: 'F16', shape: [1, 3], data: h }], ['c', new Float32Array([1.5])]]));
  const { tensors } = decodeSafetensors(buf);
  assert.equal(tensors.get('a')!.dtype, 'F16');
  assert.ok(tensors.get('a')!.data instanceof Uint16Array);
  assert.deepEqual(Array.from(tensors.get('a')!.data as Uint16Array), [0x3c00, 0xc000, 0x7bff]);
  assert.deepEqual(tensors.get('b')!.shape, [1, 3]);
  assert.equal(tensors.get('c')!.dtype, 'F32');
  const head = JSON.parse(buf.subarray(8, 8 + Number(buf.readBigUInt64LE(0))).toString());
  assert.deepEqual(head.a, { dtype: 'F16', shape: [3], data_offsets: [0, 6] });
});

// ---- messages

const update: UpdateHeader = { kind: 'update', fleet: 'lab', device: 'cam-3', seq: 7, base: 2, frames: 480, step: 1234, artifact: 'sha256:abc', sentAt: '2026-12-02T06:00:00.000Z' };
const globalH: GlobalHeader = {
  kind: 'global',
  fleet: 'lab',
  version: 3,
  prev: 2,
  artifact: 'sha256:abc',
  included: [{ device: 'cam-1', seq: 4, frames: 100 }],
  rejected: [{ device: 'cam-2', seq: 9, why: 'delta norm 12 exceeds 10 x the median norm 1' }],
  frames: 100,
  madeAt: '2026-12-02T06:00:01.000Z',
  full: true,
};

function randomTensors(seed: number): Map<string, Float32Array> {
  const r = new Rng(seed);
  const m = new Map<string, Float32Array>();
  for (const [name, n] of [['enc.conv1.weight', 27], ['enc.bn1.running_mean', 8], ['enc.fc.bias', 5]] as const) m.set(name, Float32Array.from({ length: n }, () => r.normal() * 0.1));
  return m;
}

/** The raw dtypes a message carries. */
function dtypes(buf: Uint8Array): Record<string, string> {
  return Object.fromEntries([...decodeSafetensors(buf).tensors].map(([k, t]) => [k, t.dtype]));
}

function dataBytes(buf: Buffer): number {
  return buf.length - 8 - Number(buf.readBigUInt64LE(0));
}

/** The FleetFormatError decodeMessage throws, checked to be one line with no stack. */
function refused(buf: Uint8Array, re: RegExp, maxBytes?: number): string {
  let err: unknown;
  try {
    decodeMessage(buf, maxBytes);
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof FleetFormatError, `expected a FleetFormatError, got ${err}`);
  const msg = err.message;
  assert.match(msg, re);
  assert.ok(!msg.includes('\n') && !/\bat .*:\d+:\d+/.test(msg), `one line, no stack: ${msg}`);
  return msg;
}

/** A message with hand-made metadata but a correct digest, so only the metadata is wrong. */
function withMeta(meta: Record<string, unknown>, tensors = new Map([['x', new Float32Array([1, 2])]]) as Map<string, StTensor['data']>): Buffer {
  const hash = createHash('sha256');
  for (const t of tensors.values()) hash.update(new Uint8Array(t.buffer, t.byteOffset, t.byteLength));
  const m: Record<string, string> = { digest: hash.digest('hex') };
  for (const [k, v] of Object.entries(meta)) if (v !== undefined) m[k] = v as string; // deliberately unchecked types
  return encodeSafetensors(tensors, m);
}

test('message: f32 round trip is exact and keeps every header field; f16 round trip equals half rounding', () => {
  const t = randomTensors(1);
  const b32 = encodeMessage(update, t, 'f32');
  const d32 = decodeMessage(b32);
  assert.deepEqual(d32.header, update);
  assert.equal(d32.bytes, b32.length);
  assert.deepEqual([...d32.tensors.keys()], [...t.keys()]);
  for (const [k, v] of t) assert.deepEqual(d32.tensors.get(k), v);
  assert.deepEqual(Object.values(dtypes(b32)), ['F32', 'F32', 'F32']);

  const b16 = encodeMessage(globalH, t, 'f16');
  assert.equal(dataBytes(b16) * 2, dataBytes(b32), 'f16 halves the tensor section');
  assert.deepEqual(Object.values(dtypes(b16)), ['F16', 'F16', 'F16']);
  const d16 = decodeMessage(b16);
  assert.deepEqual(d16.header, globalH);
  for (const [k, v] of t) assert.deepEqual(d16.tensors.get(k), f16ToF32(f32ToF16(v)), k);
  const meta = decodeSafetensors(b16).metadata;
  assert.deepEqual(JSON.parse(meta.ssocl_fleet), globalH);
  assert.match(meta.digest, /^[0-9a-f]{64}$/);
  assert.deepEqual(encodeMessage(globalH, t, 'f16'), b16, 'same input, same bytes');
});

test('message: with f16, a tensor with a value beyond half range, either sign, goes F32 (exact); the others stay F16', () => {
  const t = randomTensors(2);
  t.get('enc.bn1.running_mean')![3] = 70000;
  t.get('enc.conv1.weight')![5] = -70000; // below -65504: the negative half of the range check (issue #30)
  t.get('enc.fc.bias')![0] = 65504; // the largest half still fits
  t.get('enc.fc.bias')![1] = -65504; // and the most negative
  const b = encodeMessage(update, t, 'f16');
  assert.deepEqual(dtypes(b), { 'enc.conv1.weight': 'F32', 'enc.bn1.running_mean': 'F32', 'enc.fc.bias': 'F16' });
  const d = decodeMessage(b);
  assert.deepEqual(d.tensors.get('enc.bn1.running_mean'), t.get('enc.bn1.running_mean'));
  assert.deepEqual(d.tensors.get('enc.conv1.weight'), t.get('enc.conv1.weight'));
  assert.equal(d.tensors.get('enc.conv1.weight')![5], -70000, 'not -Infinity');
  assert.deepEqual([d.tensors.get('enc.fc.bias')![0], d.tensors.get('enc.fc.bias')![1]], [65504, -65504]);
});

test('message: a signed message carries its key and signature; decoding gives the text they cover (header, digest, layout), unsigned ones none', () => {
  const t = randomTensors(4);
  const k = generateKeyPairSync('ed25519');
  const b = encodeMessage(update, t, 'f16', signerOf(k.privateKey));
  const d = decodeMessage(b);
  assert.ok(verifyAuth(d.auth, k.publicKey));
  assert.equal(fingerprint(d.auth.key!), fingerprint(k.publicKey));
  const text = d.auth.text.split('\n');
  assert.deepEqual(text.slice(0, 2), ['ssocl-fleet-signature-v1', JSON.stringify(update)]);
  assert.match(text[2], /^[0-9a-f]{64}$/);
  assert.deepEqual(text.slice(3), ['"enc.conv1.weight" F16 27', '"enc.bn1.running_mean" F16 8', '"enc.fc.bias" F16 5']);
  const plain = decodeMessage(encodeMessage(update, t, 'f16'));
  assert.equal(plain.auth.signature, undefined);
  assert.ok(!verifyAuth(plain.auth, k.publicKey));
  // Bytes flipped anywhere in the tensors: the digest refuses them before any signature is looked at.
  const flipped = Buffer.from(b);
  flipped[flipped.length - 1] ^= 1;
  assert.throws(() => decodeMessage(flipped), /digest mismatch/);
});

test('message: altered tensor bytes, truncation, garbage and oversize are refused in one line', () => {
  const b = encodeMessage(update, randomTensors(3), 'f16');
  const flipped = Buffer.from(b);
  flipped[flipped.length - 5] ^= 0x01; // inside the last tensor
  refused(flipped, /digest mismatch/);
  const early = Buffer.from(b);
  early[early.length - 50] ^= 0x80;
  refused(early, /digest mismatch/);
  refused(b.subarray(0, b.length - 3), /not safetensors \(the last tensor's 3 final bytes are missing \(cut short\)\)/);
  refused(b.subarray(0, 100), /not safetensors/);
  refused(b.subarray(0, 5), /not safetensors/);
  refused(new Uint8Array(0), /not safetensors/);
  refused(Buffer.from('hello, this is not a fleet message at all'), /not safetensors/);
  const r = new Rng(5);
  refused(Uint8Array.from({ length: 4096 }, () => r.int(256)), /not safetensors/);
  refused(Buffer.concat([b, Buffer.from([0])]), /not safetensors \(1 bytes after the last tensor \(trailing data\)\)/);
  refused(b, /over the limit of 500/, 500);
  assert.doesNotThrow(() => decodeMessage(b, b.length));
  refused(encodeSafetensors(new Map([['x', new Float32Array([1])]])), /no ssocl_fleet metadata/);
});

test('message: missing, unparsable or mistyped metadata and header fields are refused, naming the field', () => {
  const ok = JSON.stringify(update);
  assert.deepEqual(decodeMessage(withMeta({ ssocl_fleet: ok })).header, update, 'the hand-made control message decodes');
  refused(withMeta({}), /no ssocl_fleet metadata/);
  refused(withMeta({ ssocl_fleet: '{not json' }), /not JSON/);
  refused(withMeta({ ssocl_fleet: 42 }), /no ssocl_fleet metadata/);
  refused(withMeta({ ssocl_fleet: '[1,2]' }), /bad header: not an object/);
  const bad = (patch: Record<string, unknown>, re: RegExp, base: object = update) => refused(withMeta({ ssocl_fleet: JSON.stringify({ ...base, ...patch }) }), re);
  bad({ kind: 'gossip' }, /kind is gossip \(expected update or global\)/);
  bad({ kind: undefined }, /kind is missing/);
  bad({ seq: '7' }, /seq is not a non-negative integer/);
  bad({ seq: -1 }, /seq is not a non-negative integer/);
  bad({ frames: 1.5 }, /frames is not a non-negative integer/);
  bad({ base: null }, /base is not a non-negative integer/);
  bad({ step: 2 ** 60 }, /step is not a non-negative integer/);
  bad({ device: 3 }, /device is not a string/);
  bad({ device: 'x'.repeat(201) }, /device is longer than 200 characters/);
  bad({ device: 'cam\n3' }, /device has a control character/);
  bad({ sentAt: undefined }, /sentAt is not a string/);
  bad({ full: 'yes' }, /full is not a boolean/, globalH);
  bad({ included: {} }, /included is not an array/, globalH);
  bad({ included: [{ device: 'a', seq: 1, frames: -3 }] }, /included\[0\]\.frames is not a non-negative integer/, globalH);
  bad({ rejected: [{ device: 'a', seq: 1 }] }, /rejected\[0\]\.why is not a string/, globalH);
  bad({ version: '3' }, /version is not a non-negative integer/, globalH);
  bad({ latest: [1] }, /latest is not an object/, globalH);
  bad({ latest: { 'cam-1': -1 } }, /latest\.cam-1 is not a non-negative integer/, globalH);
  bad({ latest: { 'cam\n1': 1 } }, /latest key .* has a control character/, globalH);
  // Each device's newest update in the model; a device named __proto__ is a key like any other.
  const latest = decodeMessage(withMeta({ ssocl_fleet: JSON.stringify(globalH).replace(/}$/, ',"latest":{"cam-1":4,"__proto__":2}}') })).header as GlobalHeader;
  assert.deepEqual(Object.entries(latest.latest!), [['cam-1', 4], ['__proto__', 2]]);
  assert.equal(decodeMessage(withMeta({ ssocl_fleet: JSON.stringify({ ...update, extra: 1 }) })).header.kind, 'update');
  assert.ok(!('extra' in decodeMessage(withMeta({ ssocl_fleet: JSON.stringify({ ...update, extra: 1 }) })).header), 'unknown fields are dropped');
  // A wrong digest field and dtypes other than F16/F32.
  refused(encodeSafetensors(new Map([['x', new Float32Array([1])]]), { ssocl_fleet: ok, digest: 'abc' }), /no sha256 digest/);
  refused(withMeta({ ssocl_fleet: ok }, new Map([['x', new Float64Array([1, 2])]])), /tensor x has dtype F64 \(expected F16 or F32\)/);
  refused(withMeta({ ssocl_fleet: ok }, new Map([['x', new Uint8Array([1, 2])]])), /dtype U8/);
  // Tensors must tile the data section: no gap, overlap or negative offset, even with a matching digest.
  const raw = (tensors: Record<string, unknown>, data: Uint8Array) => {
    const head = Buffer.from(JSON.stringify({ __metadata__: { ssocl_fleet: ok, digest: createHash('sha256').update(data).digest('hex') }, ...tensors }));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(head.length));
    return Buffer.concat([len, head, data]);
  };
  const x = { dtype: 'F32', shape: [2], data_offsets: [0, 8] };
  assert.deepEqual(Array.from(decodeMessage(raw({ x, y: { dtype: 'F32', shape: [1], data_offsets: [8, 12] } }, new Uint8Array(12))).tensors.get('y')!), [0]);
  refused(raw({ x, y: { dtype: 'F32', shape: [1], data_offsets: [12, 16] } }, new Uint8Array(16)), /not safetensors \(tensor "y" starts at 12, expected 8 \(a gap in the data\)\)/);
  refused(raw({ x, y: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, new Uint8Array(8)), /not safetensors \(tensor "y" starts at 4, expected 8 \(an overlap in the data\)\)/);
  refused(raw({ x: { dtype: 'F32', shape: [1], data_offsets: [-4, 0] } }, new Uint8Array(0)), /tensor "x": data_offsets is not \[begin, end\]/);
  refused(raw({ x: { dtype: 'F32', shape: 'two', data_offsets: [0, 8] } }, new Uint8Array(8)), /tensor "x": shape is not a list of whole numbers/);
  refused(raw({ x: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8)), /not safetensors/);
  // encodeMessage refuses to write what decodeMessage would refuse.
  assert.throws(() => encodeMessage({ ...update, seq: -1 }, new Map(), 'f32'), FleetFormatError);
});

// ---- tensors

const spec = [
  { name: 'w', shape: [2, 2] },
  { name: 'bn.mean', shape: [3] },
];

test('sharedSpec keeps params and buffers in manifest order', () => {
  const state = [
    { name: 'w', shape: [2, 2], role: 'param' },
    { name: 'm.w', shape: [2, 2], role: 'optim' },
    { name: 'bn.mean', shape: [3], role: 'buffer' },
    { name: 'gn', shape: [], role: 'diag' },
    { name: 'b', shape: [2], role: 'param' },
  ];
  assert.deepEqual(sharedSpec(state), [...spec, { name: 'b', shape: [2] }]);
});

test('checkTensors names the first problem; delta, addInto and l2', () => {
  const t = () => new Map([['w', new Float32Array([1, 2, 3, 4])], ['bn.mean', new Float32Array([0, 0, 0])]]);
  assert.equal(checkTensors(spec, t()), '');
  const missing = t();
  missing.delete('bn.mean');
  assert.equal(checkTensors(spec, missing), 'tensor bn.mean is missing');
  assert.equal(checkTensors(spec, new Map([...t(), ['extra', new Float32Array(1)]])), 'unexpected tensor extra');
  assert.equal(checkTensors(spec, new Map([...t(), ['w', new Float32Array(12)]])), 'tensor w has 12 values, expected 4');
  assert.equal(checkTensors(spec, new Map([...t(), ['bn.mean', new Float32Array([0, NaN, 0])]])), 'tensor bn.mean has a non-finite value (NaN) at 1');
  assert.equal(checkTensors(spec, new Map([...t(), ['w', new Float32Array([1, 2, -Infinity, 4])]])), 'tensor w has a non-finite value (-Infinity) at 2');
  assert.equal(checkTensors(spec, new Map([...t(), ['bad\nname', new Float32Array(1)]])), 'unexpected tensor "bad\\nname"');

  const a = t();
  const b = new Map([['w', new Float32Array([0.5, 0.5, 0.5, 0.5])], ['bn.mean', new Float32Array([1, 1, 1])], ['ignored', new Float32Array(1)]]);
  const d = delta(a, b, spec);
  assert.deepEqual([...d.keys()], ['w', 'bn.mean']);
  assert.deepEqual(Array.from(d.get('w')!), [0.5, 1.5, 2.5, 3.5]);
  assert.deepEqual(Array.from(d.get('bn.mean')!), [-1, -1, -1]);
  assert.deepEqual(Array.from(a.get('w')!), [1, 2, 3, 4], 'inputs untouched');
  addInto(b, d, spec, 2);
  assert.deepEqual(Array.from(b.get('w')!), [1.5, 3.5, 5.5, 7.5]);
  assert.deepEqual(Array.from(b.get('bn.mean')!), [-1, -1, -1]);
  addInto(b, d, spec);
  assert.deepEqual(Array.from(b.get('w')!), [2, 5, 8, 11]);
  assert.throws(() => delta(a, missing, spec), /tensor bn.mean is missing/);
  assert.equal(l2(new Map([['a', new Float32Array([3])], ['b', new Float32Array([4, 0])]])), 5);
  // Float64 accumulation: 1e20^2 overflows float32 but not float64.
  assert.equal(l2(new Map([['a', new Float32Array([1e20, 1e20])]])), Math.sqrt(2 * Math.fround(1e20) ** 2));
});
