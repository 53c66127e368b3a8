// Multi-crop augmentation (DESIGN.md section 3): per crop a fixed-area square crop resized to the
// training size, horizontal flip, colour jitter, grayscale, Gaussian blur and solarize, all drawn from
// an explicit seeded RNG. Output is float32 NCHW in [0, 1]; normalisation happens inside the graph.

import { Rng } from '../../core/rng.ts';
import { CROP_PARAM, CROP_PARAM_COUNT, type CropParams } from '../../core/crop-params.ts';

export interface AugmentConfig {
  /** Crop area as a fraction of the image (fixed, as in the author's code). */
  area: number;
  flip: number;
  jitter: { p: number; brightness: number; contrast: number; saturation: number; hue: number };
  grayscale: number;
  blur: { p: number; sigma: [number, number] };
  solarize: number;
}

export const CIFAR_AUGMENT: AugmentConfig = {
  area: 0.25,
  flip: 0.5,
  jitter: { p: 0.8, brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.2 },
  grayscale: 0.2,
  blur: { p: 0.1, sigma: [0.1, 2] },
  solarize: 0.1,
};

// The draws' type lives in core/ with its packed layout, so tools/ can build the in-graph crops.
export { packCropParams, type CropParams } from '../../core/crop-params.ts';

export function sampleCrop(rng: Rng, size: number, c: AugmentConfig): CropParams {
  const side = Math.max(1, Math.round(size * Math.sqrt(c.area)));
  const x = rng.int(size - side + 1);
  const y = rng.int(size - side + 1);
  const flip = rng.uniform() < c.flip;
  let jitter: CropParams['jitter'] = null;
  if (rng.uniform() < c.jitter.p) {
    const j = c.jitter;
    const order = [0, 1, 2, 3];
    for (let i = 3; i > 0; i--) {
      const k = rng.int(i + 1);
      [order[i], order[k]] = [order[k], order[i]];
    }
    jitter = {
      order,
      brightness: rng.range(1 - j.brightness, 1 + j.brightness),
      contrast: rng.range(1 - j.contrast, 1 + j.contrast),
      saturation: rng.range(1 - j.saturation, 1 + j.saturation),
      hue: rng.range(-j.hue, j.hue),
    };
  }
  const gray = rng.uniform() < c.grayscale;
  const blurSigma = rng.uniform() < c.blur.p ? rng.range(c.blur.sigma[0], c.blur.sigma[1]) : 0;
  const solarize = rng.uniform() < c.solarize;
  return { x, y, side, flip, jitter, gray, blurSigma, solarize };
}

const clamp01 = (v: number) => (v < 0 ? 0 : v > 1 ? 1 : v);

/**
 * Renders one crop of a uint8 CHW image (size x size) into `out` (float32 CHW, size x size) at `off`.
 * Bilinear resize with align-corners=false sampling, as torchvision's resize does.
 */
/**
 * sampleCrop's draws, in the same order from the same generator, written straight into one row of
 * packed parameters (core/crop-params.ts) for crops made in the graph: the paper's 4,000 crops per step
 * would otherwise allocate 4,000 objects (and their arrays) only to copy them into a Float32Array.
 */
export function sampleCropPacked(rng: Rng, size: number, c: AugmentConfig, out: Float32Array, row: number): void {
  const o = row * CROP_PARAM_COUNT;
  const side = Math.max(1, Math.round(size * Math.sqrt(c.area)));
  out[o + CROP_PARAM.X] = rng.int(size - side + 1);
  out[o + CROP_PARAM.Y] = rng.int(size - side + 1);
  out[o + CROP_PARAM.SIDE] = side;
  out[o + CROP_PARAM.FLIP] = rng.uniform() < c.flip ? 1 : 0;
  const j = c.jitter;
  if (rng.uniform() < j.p) {
    // sampleCrop's Fisher-Yates shuffle, done in place in the row.
    const ord = o + CROP_PARAM.ORDER;
    for (let t = 0; t < 4; t++) out[ord + t] = t;
    for (let i = 3; i > 0; i--) {
      const k = rng.int(i + 1);
      const v = out[ord + i];
      out[ord + i] = out[ord + k];
      out[ord + k] = v;
    }
    out[o + CROP_PARAM.JITTER] = 1;
    out[o + CROP_PARAM.BRIGHTNESS] = rng.range(1 - j.brightness, 1 + j.brightness);
    out[o + CROP_PARAM.CONTRAST] = rng.range(1 - j.contrast, 1 + j.contrast);
    out[o + CROP_PARAM.SATURATION] = rng.range(1 - j.saturation, 1 + j.saturation);
    out[o + CROP_PARAM.HUE] = rng.range(-j.hue, j.hue);
  } else {
    out[o + CROP_PARAM.JITTER] = 0;
    for (let t = 0; t < 4; t++) out[o + CROP_PARAM.ORDER + t] = t;
    out[o + CROP_PARAM.BRIGHTNESS] = 1;
    out[o + CROP_PARAM.CONTRAST] = 1;
    out[o + CROP_PARAM.SATURATION] = 1;
    out[o + CROP_PARAM.HUE] = 0;
  }
  out[o + CROP_PARAM.GRAY] = rng.uniform() < c.grayscale ? 1 : 0;
  out[o + CROP_PARAM.BLUR_SIGMA] = rng.uniform() < c.blur.p ? rng.range(c.blur.sigma[0], c.blur.sigma[1]) : 0;
  out[o + CROP_PARAM.SOLARIZE] = rng.uniform() < c.solarize ? 1 : 0;
}

export function renderCrop(img: Uint8Array, imgOff: number, size: number, p: CropParams, out: Float32Array, off: number): void {
  const plane = size * size;
  const scale = p.side / size;
  // Rendered in place in the output row (all steps below are per-pixel or separable).
  const tmp = out.subarray(off, off + 3 * plane);
  for (let oy = 0; oy < size; oy++) {
    const sy = Math.min(Math.max((oy + 0.5) * scale - 0.5, 0), p.side - 1);
    const y0 = Math.floor(sy);
    const y1 = Math.min(y0 + 1, p.side - 1);
    const wy = sy - y0;
    for (let ox = 0; ox < size; ox++) {
      const tx = p.flip ? size - 1 - ox : ox;
      const sx = Math.min(Math.max((tx + 0.5) * scale - 0.5, 0), p.side - 1);
      const x0 = Math.floor(sx);
      const x1 = Math.min(x0 + 1, p.side - 1);
      const wx = sx - x0;
      for (let c = 0; c < 3; c++) {
        const base = imgOff + c * plane + p.y * size + p.x;
        const a = img[base + y0 * size + x0];
        const b = img[base + y0 * size + x1];
        const cc = img[base + y1 * size + x0];
        const d = img[base + y1 * size + x1];
        tmp[c * plane + oy * size + ox] = ((a * (1 - wx) + b * wx) * (1 - wy) + (cc * (1 - wx) + d * wx) * wy) / 255;
      }
    }
  }
  if (p.jitter) {
    for (const op of p.jitter.order) {
      if (op === 0) for (let i = 0; i < 3 * plane; i++) tmp[i] = clamp01(tmp[i] * p.jitter.brightness);
      else if (op === 1) {
        // Contrast blends with the mean grey level of the whole crop.
        let mean = 0;
        for (let i = 0; i < plane; i++) mean += 0.299 * tmp[i] + 0.587 * tmp[plane + i] + 0.114 * tmp[2 * plane + i];
        mean /= plane;
        const f = p.jitter.contrast;
        for (let i = 0; i < 3 * plane; i++) tmp[i] = clamp01(f * tmp[i] + (1 - f) * mean);
      } else if (op === 2) {
        const f = p.jitter.saturation;
        for (let i = 0; i < plane; i++) {
          const gray = 0.299 * tmp[i] + 0.587 * tmp[plane + i] + 0.114 * tmp[2 * plane + i];
          for (let c = 0; c < 3; c++) tmp[c * plane + i] = clamp01(f * tmp[c * plane + i] + (1 - f) * gray);
        }
      } else if (p.jitter.hue !== 0) shiftHue(tmp, plane, p.jitter.hue);
    }
  }
  if (p.gray) {
    for (let i = 0; i < plane; i++) {
      const gray = 0.299 * tmp[i] + 0.587 * tmp[plane + i] + 0.114 * tmp[2 * plane + i];
      tmp[i] = tmp[plane + i] = tmp[2 * plane + i] = gray;
    }
  }
  if (p.blurSigma > 0) blur3(tmp, size, p.blurSigma);
  if (p.solarize) for (let i = 0; i < 3 * plane; i++) if (tmp[i] >= 0.5) tmp[i] = 1 - tmp[i];
}

/** Hue rotation through HSV (as torchvision's adjust_hue), in place, without per-pixel allocations. */
function shiftHue(t: Float32Array, plane: number, shift: number): void {
  for (let i = 0; i < plane; i++) {
    const r = t[i];
    const g = t[plane + i];
    const b = t[2 * plane + i];
    const max = r > g ? (r > b ? r : b) : g > b ? g : b;
    const min = r < g ? (r < b ? r : b) : g < b ? g : b;
    const d = max - min;
    if (d <= 0) continue; // grey: hue undefined, unchanged
    let h = max === r ? ((g - b) / d) % 6 : max === g ? (b - r) / d + 2 : (r - g) / d + 4;
    h = h / 6 + shift + 2;
    h -= Math.floor(h);
    const s = d / max;
    const v = max;
    const h6 = h * 6;
    const k = Math.floor(h6);
    const f = h6 - k;
    const p = v * (1 - s);
    const q = v * (1 - f * s);
    const u = v * (1 - (1 - f) * s);
    let R: number, G: number, B: number;
    switch (k % 6) {
      case 0: R = v; G = u; B = p; break;
      case 1: R = q; G = v; B = p; break;
      case 2: R = p; G = v; B = u; break;
      case 3: R = p; G = q; B = v; break;
      case 4: R = u; G = p; B = v; break;
      default: R = v; G = p; B = q;
    }
    t[i] = R;
    t[plane + i] = G;
    t[2 * plane + i] = B;
  }
}

/** Separable Gaussian blur with a 3-tap kernel (the crop is small), edges replicated. */
function blur3(t: Float32Array, size: number, sigma: number): void {
  const w1 = Math.exp(-1 / (2 * sigma * sigma));
  const k = [w1 / (1 + 2 * w1), 1 / (1 + 2 * w1), w1 / (1 + 2 * w1)];
  const plane = size * size;
  const row = new Float32Array(size);
  for (let c = 0; c < 3; c++) {
    const o = c * plane;
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) row[x] = k[0] * t[o + y * size + Math.max(x - 1, 0)] + k[1] * t[o + y * size + x] + k[2] * t[o + y * size + Math.min(x + 1, size - 1)];
      t.set(row, o + y * size);
    }
    for (let x = 0; x < size; x++) {
      for (let y = 0; y < size; y++) row[y] = k[0] * t[o + Math.max(y - 1, 0) * size + x] + k[1] * t[o + y * size + x] + k[2] * t[o + Math.min(y + 1, size - 1) * size + x];
      for (let y = 0; y < size; y++) t[o + y * size + x] = row[y];
    }
  }
}

/**
 * N crops of each of b images (uint8 CHW, concatenated), laid out as the training step expects:
 * row i*b + j holds crop i of image j.
 */
export function multiCrop(images: Uint8Array, b: number, size: number, n: number, rng: Rng, c: AugmentConfig = CIFAR_AUGMENT): Float32Array {
  const per = 3 * size * size;
  if (images.length !== b * per) throw new Error(`multiCrop: ${images.length} bytes for ${b} images of 3x${size}x${size}`);
  const out = new Float32Array(n * b * per);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < b; j++) renderCrop(images, j * per, size, sampleCrop(rng, size, c), out, (i * b + j) * per);
  }
  return out;
}
