// In-graph crops (tools/nn/augment-graph.ts) against the JS renderer they replace, on the same packed
// draws; the packed draws' statistics; and a negative control showing the comparison sees a wrong
// jitter order, a lost flip or a lost blur.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CIFAR_AUGMENT, renderCrop, sampleCrop, type AugmentConfig, type CropParams } from '../agent/frames/augment.ts';
import { CROP_PARAM, CROP_PARAM_COUNT, packCropParams, unpackCropParams } from '../core/crop-params.ts';
import { Rng } from '../core/rng.ts';
import { Graph, type TypedData, type Value } from '../tools/graph/graph.ts';
import { buildCrops } from '../tools/nn/augment-graph.ts';
import { run, session } from './helpers/ort.ts';

const S = 32;
const PER = 3 * S * S;
const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');

/**
 * Float32 rounding only: renderCrop computes each step in float64 and stores float32, the graph
 * computes in float32 (factors and sigma also arrive rounded to float32). Every step is continuous
 * (solarize too: 1 - v meets v at 0.5), so the gap stays a few float32 ulps of values in [0, 1].
 */
const TOL = 1e-5;

/** b real CIFAR-10 images (the demo stream), then hand-made edge cases: flat grey, pure primaries, 0 and 255. */
function images(b: number): Uint8Array {
  const bin = readFileSync(path.join(ROOT, 'agent/demo/cifar10-demo.bin'));
  const out = new Uint8Array(b * PER);
  const synthetic = 2;
  for (let j = 0; j < b - synthetic; j++) out.set(bin.subarray(j * 97 * 3073 + 1, j * 97 * 3073 + 3073), j * PER);
  const rng = new Rng(3);
  for (let j = b - synthetic; j < b; j++) {
    for (let y = 0; y < S; y++) {
      for (let x = 0; x < S; x++) {
        const q = (y >> 3) * 4 + (x >> 3); // 16 flat 8x8 blocks
        const rgb = q < 4 ? [128, 128, 128] : q < 7 ? [0, 0, 0].map((_, c) => (c === q - 4 ? 255 : 0)) : q < 9 ? [q & 1 ? 255 : 0, q & 1 ? 255 : 0, q & 1 ? 255 : 0] : [rng.int(256), rng.int(256), rng.int(256)];
        for (let c = 0; c < 3; c++) out[j * PER + c * S * S + y * S + x] = rgb[c];
      }
    }
  }
  return out;
}

/** Draws in multiCrop's order (row i*b + j = crop i of image j). */
function draws(b: number, n: number, seed: number, c: AugmentConfig): CropParams[] {
  const rng = new Rng(seed);
  return Array.from({ length: b * n }, () => sampleCrop(rng, S, c));
}

function renderJs(ims: Uint8Array, b: number, ps: CropParams[]): Float32Array {
  const out = new Float32Array(ps.length * PER);
  ps.forEach((p, r) => renderCrop(ims, (r % b) * PER, S, p, out, r * PER));
  return out;
}

async function cropGraph(b: number, rows: number, out = S) {
  const g = new Graph('float32');
  const im = g.input('images', [b, 3, S, S], 'uint8');
  const pr = g.input('params', [rows, CROP_PARAM_COUNT]);
  g.output(buildCrops(g, im, pr, { size: S, out }), 'crops');
  const sess = await session(g);
  return async (ims: Uint8Array, packed: Float32Array) => (await run(sess, g, new Map<Value, TypedData>([[im, ims], [pr, packed]]))).crops as Float32Array;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): { max: number; at: number } {
  let max = 0;
  let at = -1;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= max)) [max, at] = [d, i];
  }
  return { max, at };
}

// Every branch is frequent, so each appears on real and on edge-case images.
const BUSY: AugmentConfig = { ...CIFAR_AUGMENT, flip: 0.5, jitter: { ...CIFAR_AUGMENT.jitter, p: 0.85 }, grayscale: 0.3, blur: { p: 0.5, sigma: [0.1, 2] }, solarize: 0.5 };
const B = 16;
const N = 12;

test('in-graph crops equal renderCrop on the same draws (every branch, CIFAR images and edge cases)', async () => {
  const ims = images(B);
  const ps = draws(B, N, 21, BUSY);
  // Exact corner cases among the random ones: a zero hue shift (renderCrop skips it), factors at
  // their bounds, the smallest blur, everything at once, nothing at all, and the widest hue shifts.
  ps[0] = { ...ps[0], jitter: { order: [3, 2, 1, 0], brightness: 1.4, contrast: 0.6, saturation: 1.4, hue: 0 } };
  ps[1] = { ...ps[1], flip: true, jitter: { order: [1, 3, 0, 2], brightness: 0.6, contrast: 1.4, saturation: 0.6, hue: -0.2 }, gray: true, blurSigma: 2, solarize: true };
  ps[2] = { ...ps[2], flip: false, jitter: null, gray: false, blurSigma: 0, solarize: false };
  ps[B - 1] = { ...ps[B - 1], jitter: { order: [2, 0, 3, 1], brightness: 1.1, contrast: 0.9, saturation: 1.3, hue: 0.2 }, blurSigma: 0.1 };
  // Half a turn either way: the widest hue wrap packCropParams accepts.
  ps[3] = { ...ps[3], jitter: { order: [3, 0, 1, 2], brightness: 1, contrast: 1, saturation: 1, hue: 0.5 } };
  ps[B + 3] = { ...ps[B + 3], jitter: { order: [1, 2, 0, 3], brightness: 0.9, contrast: 1.2, saturation: 1.1, hue: -0.5 } };
  const count = (f: (p: CropParams) => boolean) => ps.filter(f).length;
  for (const [name, k] of Object.entries({
    flip: count((p) => p.flip),
    jitter: count((p) => !!p.jitter),
    gray: count((p) => p.gray),
    blur: count((p) => p.blurSigma > 0),
    solarize: count((p) => p.solarize),
    plain: count((p) => !p.flip && !p.jitter && !p.gray && !p.blurSigma && !p.solarize),
  })) assert.ok(k > 0, `no crop exercises ${name}`);
  for (let t = 0; t < 4; t++) for (let op = 0; op < 4; op++) assert.ok(ps.some((p) => p.jitter?.order[t] === op), `op ${op} never in round ${t}`);

  const packed = packCropParams(ps);
  // Against the float64 draws as the host renders them today (the graph sees them rounded to float32).
  const want = renderJs(ims, B, ps);
  const got = await (await cropGraph(B, B * N))(ims, packed);
  assert.equal(got.length, want.length);
  const { max, at } = maxAbsDiff(got, want);
  const row = Math.floor(at / PER);
  assert.ok(max < TOL, `max |graph - js| = ${max} at crop ${row} (${JSON.stringify(ps[row])})`);
  // Within [0, 1]; the crop with no colour op is off by at most one float32 ulp (resize weights are
  // multiples of 1/4 here, so only the division by 255 rounds differently).
  assert.ok(got.every((v) => v >= 0 && v <= 1));
  assert.ok(maxAbsDiff(got.subarray(2 * PER, 3 * PER), want.subarray(2 * PER, 3 * PER)).max <= 2 ** -24);
});

test('the comparison sees a swapped jitter order, a lost flip and a lost blur (negative control)', async () => {
  const ims = images(B);
  const ps = draws(B, N, 22, BUSY);
  const packed = packCropParams(ps);
  const want = renderJs(ims, B, unpackCropParams(packed));
  const crops = await cropGraph(B, B * N);
  const broken = (edit: (row: Float32Array) => boolean) => {
    const q = packed.slice();
    let edited = 0;
    for (let r = 0; r < ps.length; r++) if (edit(q.subarray(r * CROP_PARAM_COUNT, (r + 1) * CROP_PARAM_COUNT))) edited++;
    assert.ok(edited > 0);
    return q;
  };
  const swapFirstTwo = broken((row) => {
    if (row[CROP_PARAM.JITTER] !== 1) return false;
    const a = row[CROP_PARAM.ORDER];
    row[CROP_PARAM.ORDER] = row[CROP_PARAM.ORDER + 1];
    row[CROP_PARAM.ORDER + 1] = a;
    return true;
  });
  const noFlip = broken((row) => row[CROP_PARAM.FLIP] === 1 && !(row[CROP_PARAM.FLIP] = 0));
  const noBlur = broken((row) => row[CROP_PARAM.BLUR_SIGMA] > 0 && !(row[CROP_PARAM.BLUR_SIGMA] = 0));
  for (const [name, q] of [['swapped jitter order', swapFirstTwo], ['no flip', noFlip], ['no blur', noBlur]] as const) {
    const { max } = maxAbsDiff(await crops(ims, q), want);
    assert.ok(max > 100 * TOL, `${name}: max diff only ${max}`);
  }
});

test('output size differs from the image size: the geometric part against an independent bilinear resize', async () => {
  const b = 2;
  const out = 12;
  const ims = images(b);
  const ps: CropParams[] = [
    { x: 3, y: 7, side: 16, flip: false, jitter: null, gray: false, blurSigma: 0, solarize: false },
    { x: 0, y: 20, side: 12, flip: true, jitter: null, gray: false, blurSigma: 0, solarize: false },
    { x: 11, y: 2, side: 21, flip: true, jitter: null, gray: false, blurSigma: 0, solarize: false },
    { x: 31, y: 31, side: 1, flip: false, jitter: null, gray: false, blurSigma: 0, solarize: false },
  ];
  const got = await (await cropGraph(b, ps.length, out))(ims, packCropParams(ps));
  ps.forEach((p, r) => {
    const scale = p.side / out;
    const coord = (o: number) => {
      const s = Math.min(Math.max((o + 0.5) * scale - 0.5, 0), p.side - 1);
      const i0 = Math.floor(s);
      return [i0, Math.min(i0 + 1, p.side - 1), s - i0] as const;
    };
    const src = (c: number, y: number, x: number) => ims[(r % b) * PER + c * S * S + (p.y + y) * S + (p.x + x)];
    for (let c = 0; c < 3; c++) {
      for (let oy = 0; oy < out; oy++) {
        for (let ox = 0; ox < out; ox++) {
          const [y0, y1, wy] = coord(oy);
          const [x0, x1, wx] = coord(p.flip ? out - 1 - ox : ox);
          const v = ((src(c, y0, x0) * (1 - wx) + src(c, y0, x1) * wx) * (1 - wy) + (src(c, y1, x0) * (1 - wx) + src(c, y1, x1) * wx) * wy) / 255;
          const g = got[r * 3 * out * out + c * out * out + oy * out + ox];
          assert.ok(Math.abs(g - v) < TOL, `crop ${r} c${c} (${oy}, ${ox}): ${g} vs ${v}`);
        }
      }
    }
  });
});

test('packed CIFAR draws follow DESIGN section 3 (rates within 5 binomial sigmas, factor ranges, layout)', () => {
  const n = 40000;
  const packed = packCropParams(draws(1, n, 5, CIFAR_AUGMENT));
  assert.equal(packed.length, n * CROP_PARAM_COUNT);
  const col = (k: number) => Array.from({ length: n }, (_, r) => packed[r * CROP_PARAM_COUNT + k]);
  // 5 sigmas of a binomial proportion: a false alarm about once in 1.7 million runs (per rate).
  const rate = (name: string, xs: number[], p: number) => {
    assert.ok(xs.every((v) => v === 0 || v === 1), `${name} flag not 0/1`);
    const hat = xs.reduce((a: number, b) => a + b, 0) / xs.length;
    const bound = 5 * Math.sqrt((p * (1 - p)) / xs.length);
    assert.ok(Math.abs(hat - p) < bound, `${name}: rate ${hat} vs ${p} (bound ${bound.toFixed(4)})`);
  };
  const blurOn = col(CROP_PARAM.BLUR_SIGMA).map((v): number => (v > 0 ? 1 : 0));
  rate('flip', col(CROP_PARAM.FLIP), CIFAR_AUGMENT.flip);
  rate('jitter', col(CROP_PARAM.JITTER), CIFAR_AUGMENT.jitter.p);
  rate('grayscale', col(CROP_PARAM.GRAY), CIFAR_AUGMENT.grayscale);
  rate('blur', blurOn, CIFAR_AUGMENT.blur.p);
  rate('solarize', col(CROP_PARAM.SOLARIZE), CIFAR_AUGMENT.solarize);

  const side = Math.round(S * Math.sqrt(CIFAR_AUGMENT.area));
  const j = CIFAR_AUGMENT.jitter;
  const f32 = Math.fround;
  const slotCounts = Array.from({ length: 4 }, () => [0, 0, 0, 0]);
  let jittered = 0;
  for (let r = 0; r < n; r++) {
    const at = (k: number) => packed[r * CROP_PARAM_COUNT + k];
    assert.equal(at(CROP_PARAM.SIDE), side);
    assert.ok(at(CROP_PARAM.X) >= 0 && at(CROP_PARAM.X) + side <= S && at(CROP_PARAM.Y) >= 0 && at(CROP_PARAM.Y) + side <= S);
    const order = [0, 1, 2, 3].map((t) => at(CROP_PARAM.ORDER + t));
    assert.deepEqual([...order].sort(), [0, 1, 2, 3]);
    const factors = [CROP_PARAM.BRIGHTNESS, CROP_PARAM.CONTRAST, CROP_PARAM.SATURATION, CROP_PARAM.HUE].map(at);
    if (at(CROP_PARAM.JITTER) === 1) {
      jittered++;
      order.forEach((op, t) => slotCounts[t][op]++);
      assert.ok(factors[0] >= f32(1 - j.brightness) && factors[0] <= f32(1 + j.brightness));
      assert.ok(factors[1] >= f32(1 - j.contrast) && factors[1] <= f32(1 + j.contrast));
      assert.ok(factors[2] >= f32(1 - j.saturation) && factors[2] <= f32(1 + j.saturation));
      assert.ok(factors[3] >= f32(-j.hue) && factors[3] <= f32(j.hue));
    } else {
      assert.deepEqual(order, [0, 1, 2, 3]);
      assert.deepEqual(factors, [1, 1, 1, 0]); // neutral: even a graph ignoring the flag changes nothing
    }
    const sigma = at(CROP_PARAM.BLUR_SIGMA);
    assert.ok(sigma === 0 || (sigma >= f32(CIFAR_AUGMENT.blur.sigma[0]) && sigma <= f32(CIFAR_AUGMENT.blur.sigma[1])));
  }
  // Each op in each round with probability 1/4 among jittered crops (a uniform shuffle).
  for (let t = 0; t < 4; t++) {
    for (let op = 0; op < 4; op++) {
      const hat = slotCounts[t][op] / jittered;
      assert.ok(Math.abs(hat - 0.25) < 5 * Math.sqrt((0.25 * 0.75) / jittered), `op ${op} in round ${t}: ${hat}`);
    }
  }
});

test('packCropParams round-trips through unpackCropParams and refuses malformed draws', () => {
  const ps = draws(3, 5, 9, BUSY).map((p) => ({ ...p, blurSigma: Math.fround(p.blurSigma), jitter: p.jitter && { ...p.jitter, brightness: Math.fround(p.jitter.brightness), contrast: Math.fround(p.jitter.contrast), saturation: Math.fround(p.jitter.saturation), hue: Math.fround(p.jitter.hue) } }));
  assert.deepEqual(unpackCropParams(packCropParams(ps)), ps);
  const base = ps[0];
  assert.throws(() => packCropParams([{ ...base, jitter: { order: [0, 1, 1, 3], brightness: 1, contrast: 1, saturation: 1, hue: 0 } }]), /permutation/);
  assert.throws(() => packCropParams([{ ...base, side: 0 }]), /side/);
  assert.throws(() => packCropParams([{ ...base, jitter: { order: [0, 1, 2, 3], brightness: 1, contrast: 1, saturation: 1, hue: 0.6 } }]), /hue/);
  assert.throws(() => unpackCropParams(new Float32Array(CROP_PARAM_COUNT + 1)), /multiple/);
});
