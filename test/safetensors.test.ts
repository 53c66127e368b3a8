// The strict safetensors reader (core/codecs/safetensors.ts) that checkpoints, the health set and fleet
// messages go through: what the encoder writes reads back exactly; every malformed file is refused with
// a line saying what, never decoded in part (issue 30, from review).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeSafetensors, encodeSafetensors } from '../core/codecs/safetensors.ts';

/** A file from a header written by hand (as JSON text or an object) and a data section. */
function file(header: unknown, data: Uint8Array | number, raw?: Uint8Array): Uint8Array {
  const head = raw ?? Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(head.length));
  return Buffer.concat([len, head, typeof data === 'number' ? Buffer.alloc(data) : data]);
}

const t = (dtype: string, shape: unknown, a: unknown, b: unknown) => ({ dtype, shape, data_offsets: [a, b] });

test('safetensors: what encodeSafetensors writes decodes exactly (dtypes, shapes, metadata, empty tensors, layout)', () => {
  const tensors = new Map<string, any>([
    ['b', Float32Array.of(1.5, -2, 3)],
    ['a', { dtype: 'U8', shape: [2, 2], data: Uint8Array.of(1, 2, 3, 4) }],
    ['empty', { dtype: 'F32', shape: [0, 4], data: new Float32Array(0) }],
    ['i', BigInt64Array.of(-5n)],
    ['h', Uint16Array.of(0x3c00)],
    ['7', Float64Array.of(Math.PI)],
  ]);
  const d = decodeSafetensors(encodeSafetensors(tensors, { note: 'x' }));
  assert.deepEqual(d.metadata, { note: 'x' });
  assert.deepEqual([...(d.tensors.get('b')!.data as Float32Array)], [1.5, -2, 3]);
  assert.deepEqual(d.tensors.get('a')!.shape, [2, 2]);
  assert.deepEqual([...(d.tensors.get('i')!.data as BigInt64Array)], [-5n]);
  assert.equal(d.tensors.get('empty')!.data.length, 0);
  assert.deepEqual(d.order, ['b', 'a', 'empty', 'i', 'h', '7'], 'names in the order of their bytes (a numeric name too)');
});

test('safetensors: malformed files are refused, each with a line saying what', () => {
  const f32 = (n: number) => new Uint8Array(4 * n);
  const cases: [string, Uint8Array, RegExp][] = [
    ['invalid UTF-8 in the header', file(null, 0, Uint8Array.of(0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d)), /not UTF-8 JSON/],
    ['a header that is an array', file([], 0), /not a JSON object/],
    ['a dtype outside the list', file({ x: t('BF16', [2], 0, 4) }, 4), /unsupported dtype "BF16"/],
    ['a negative dimension', file({ x: t('F32', [-1, -2], 0, 8) }, 8), /shape is not a list of whole numbers/],
    ['a fractional dimension', file({ x: t('U8', [1.5, 2], 0, 3) }, 3), /shape is not a list of whole numbers/],
    ['a string dimension', file({ x: t('U8', ['3'], 0, 3) }, 3), /shape is not a list of whole numbers/],
    ['offsets that disagree with the shape', file({ x: t('F32', [3], 0, 8) }, 8), /bad offsets .*8 bytes for 3 F32/],
    ['reversed offsets', file({ x: t('U8', [0], 4, 0) }, 4), /data_offsets is not \[begin, end\]/],
    ['a gap between tensors', file({ x: t('F32', [1], 0, 4), y: t('F32', [1], 8, 12) }, f32(3)), /"y" starts at 8, expected 4 \(a gap/],
    ['overlapping tensors', file({ x: t('F32', [2], 0, 8), y: t('F32', [1], 4, 8) }, f32(2)), /starts at 4, expected 8 \(an overlap/],
    ['data not starting at 0', file({ x: t('F32', [1], 4, 8) }, f32(2)), /starts at 4, expected 0/],
    ['trailing bytes', file({ x: t('F32', [1], 0, 4) }, f32(2)), /4 bytes after the last tensor \(trailing data\)/],
    ['cut short', file({ x: t('F32', [2], 0, 8) }, f32(1)), /missing \(cut short\)/],
    ['metadata that is not an object', file({ __metadata__: 'a' }, 0), /__metadata__ is not an object/],
    ['an unknown tensor field', file({ x: { ...t('U8', [1], 0, 1), extra: true } }, 1), /unknown fields \(extra\)/],
    ['a header length past the end', Buffer.concat([Buffer.from([255, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{}')]), /header length beyond end/],
    ['a header length over the limit', Buffer.from([0, 0, 0, 0, 1, 0, 0, 0]), /over the 100000000-byte limit/],
  ];
  for (const [what, bytes, want] of cases) assert.throws(() => decodeSafetensors(bytes), (e: Error) => want.test(e.message) && /^safetensors: /.test(e.message), what);
  const ok = encodeSafetensors(new Map([['w', new Float32Array(1000)]]));
  assert.throws(() => decodeSafetensors(ok, { maxBytes: 1000 }), /over the 1000-byte limit/);
  assert.equal(decodeSafetensors(ok, { maxBytes: ok.length }).tensors.get('w')!.data.length, 1000);
  assert.deepEqual(decodeSafetensors(file({ __metadata__: { a: 1, b: 'x' } }, 0)).metadata, { b: 'x' }, 'a metadata value that is not a string is left out');
});
