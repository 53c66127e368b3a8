// Multi-crop augmentation: exact output of the geometric part against an independent bilinear
// resize, reproducibility per seed, and the statistics of the random draws.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CIFAR_AUGMENT, multiCrop, packCropParams, renderCrop, sampleCrop, sampleCropPacked, type CropParams } from '../agent/frames/augment.ts';
import { CROP_PARAM_COUNT } from '../core/crop-params.ts';
import { Rng } from '../core/rng.ts';

const S = 32;
function image(seed: number): Uint8Array {
  const r = new Rng(seed);
  return Uint8Array.from({ length: 3 * S * S }, () => r.int(256));
}

test('a plain crop is the 16x16 region resized x2 by half-pixel bilinear; flip mirrors it', () => {
  const im = image(1);
  const p: CropParams = { x: 5, y: 9, side: 16, flip: false, jitter: null, gray: false, blurSigma: 0, solarize: false };
  const out = new Float32Array(3 * S * S);
  renderCrop(im, 0, S, p, out, 0);
  // Independent: output pixel o samples source coordinate (o + 0.5) / 2 - 0.5, clamped, 2-tap linear.
  const src = (c: number, y: number, x: number) => im[c * S * S + (p.y + y) * S + (p.x + x)];
  const coord = (o: number) => {
    const s = Math.min(Math.max((o + 0.5) / 2 - 0.5, 0), 15);
    const i0 = Math.floor(s);
    return [i0, Math.min(i0 + 1, 15), s - i0] as const;
  };
  for (let c = 0; c < 3; c++) {
    for (let oy = 0; oy < S; oy++) {
      for (let ox = 0; ox < S; ox++) {
        const [y0, y1, wy] = coord(oy);
        const [x0, x1, wx] = coord(ox);
        const v = ((src(c, y0, x0) * (1 - wx) + src(c, y0, x1) * wx) * (1 - wy) + (src(c, y1, x0) * (1 - wx) + src(c, y1, x1) * wx) * wy) / 255;
        assert.ok(Math.abs(out[c * S * S + oy * S + ox] - v) < 1e-6);
      }
    }
  }
  const flipped = new Float32Array(3 * S * S);
  renderCrop(im, 0, S, { ...p, flip: true }, flipped, 0);
  for (let y = 0; y < S; y++) for (let x = 0; x < S; x++) assert.equal(flipped[y * S + x], out[y * S + (S - 1 - x)]);
});

test('grayscale gives equal channels; solarize inverts values at or above one half', () => {
  const im = image(2);
  const base: CropParams = { x: 0, y: 0, side: 16, flip: false, jitter: null, gray: false, blurSigma: 0, solarize: false };
  const g = new Float32Array(3 * S * S);
  renderCrop(im, 0, S, { ...base, gray: true }, g, 0);
  for (let i = 0; i < S * S; i++) assert.ok(g[i] === g[S * S + i] && g[i] === g[2 * S * S + i]);
  const plain = new Float32Array(3 * S * S);
  const sol = new Float32Array(3 * S * S);
  renderCrop(im, 0, S, base, plain, 0);
  renderCrop(im, 0, S, { ...base, solarize: true }, sol, 0);
  plain.forEach((v, i) => assert.ok(Math.abs(sol[i] - (v >= 0.5 ? 1 - v : v)) < 1e-7));
});

test('same seed, same crops; another seed, other crops; values stay in [0, 1]; layout row i*b + j', () => {
  const b = 3;
  const ims = new Uint8Array(b * 3 * S * S);
  for (let j = 0; j < b; j++) ims.set(image(10 + j), j * 3 * S * S);
  const a1 = multiCrop(ims, b, S, 4, new Rng(7));
  const a2 = multiCrop(ims, b, S, 4, new Rng(7));
  const a3 = multiCrop(ims, b, S, 4, new Rng(8));
  assert.deepEqual(a1, a2);
  assert.notDeepEqual(a1, a3);
  assert.ok(a1.every((v) => v >= 0 && v <= 1));
  // Row i*b + j is crop i of image j: rendering image j alone with the same draws gives the same row.
  const rng = new Rng(7);
  const per = 3 * S * S;
  for (let i = 0; i < 4; i++) {
    for (let j = 0; j < b; j++) {
      const p = sampleCrop(rng, S, CIFAR_AUGMENT);
      const row = new Float32Array(per);
      renderCrop(ims, j * per, S, p, row, 0);
      assert.deepEqual(a1.subarray((i * b + j) * per, (i * b + j + 1) * per), row);
    }
  }
});

test('crop draws follow the configured statistics', () => {
  const rng = new Rng(11);
  const n = 20000;
  let flip = 0, jitter = 0, gray = 0, blur = 0, sol = 0, xs = 0;
  for (let k = 0; k < n; k++) {
    const p = sampleCrop(rng, S, CIFAR_AUGMENT);
    assert.equal(p.side, 16); // 25% of the area
    assert.ok(p.x >= 0 && p.x <= 16 && p.y >= 0 && p.y <= 16);
    flip += +p.flip;
    jitter += +(p.jitter !== null);
    gray += +p.gray;
    blur += +(p.blurSigma > 0);
    sol += +p.solarize;
    xs += p.x;
    if (p.jitter) {
      assert.ok(p.jitter.brightness >= 0.6 && p.jitter.brightness <= 1.4 && Math.abs(p.jitter.hue) <= 0.2);
      assert.deepEqual([...p.jitter.order].sort(), [0, 1, 2, 3]);
    }
    if (p.blurSigma) assert.ok(p.blurSigma >= 0.1 && p.blurSigma <= 2);
  }
  // Binomial standard errors at n = 20000 are <= 0.0036; 0.015 is > 4 sigma.
  const near = (got: number, want: number) => assert.ok(Math.abs(got / n - want) < 0.015, `${got / n} vs ${want}`);
  near(flip, 0.5);
  near(jitter, 0.8);
  near(gray, 0.2);
  near(blur, 0.1);
  near(sol, 0.1);
  assert.ok(Math.abs(xs / n - 8) < 0.15, `mean crop x ${xs / n}`);
});

test('sampleCropPacked writes the draws sampleCrop makes, from the same generator, packed', () => {
  const a = new Rng(11);
  const b = new Rng(11);
  const n = 5000;
  const out = new Float32Array(n * CROP_PARAM_COUNT);
  // Every branch: a config that jitters, blurs and solarizes often.
  const c = { ...CIFAR_AUGMENT, blur: { p: 0.5, sigma: [0.1, 2] as [number, number] }, solarize: 0.5, grayscale: 0.5 };
  for (let i = 0; i < n; i++) sampleCropPacked(a, 32, c, out, i);
  const want = packCropParams(Array.from({ length: n }, () => sampleCrop(b, 32, c)));
  assert.deepEqual(out, want);
  assert.deepEqual(a.state, b.state, 'same number of draws');
});
