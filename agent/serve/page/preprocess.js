// Frame preprocessing in the page, as close as is practical to the agent's (agent/frames/decode.ts:
// sharp's resize to S x S, fit cover, Lanczos3, then uint8 CHW, then /255 as the encoder's input).
// Like libvips under sharp: Lanczos3 widened by the reduction factor, sampled at pixel centres, the
// vertical axis first, rounded to 8 bits after each pass (a box pre-shrink, as libvips' gap option
// does, moved further from sharp's output, so there is none). Against decodeFrame on downscaled
// photo-like images with sensor noise, pixels differ by 1.4-1.7 levels of 255 on average, 8 at most
// (test/serve.test.ts): libvips' kernels are fixed-point and cut differently. Upscaling a frame smaller
// than S differs more (libvips enlarges by another path), and a browser's JPEG decoder is not libjpeg
// with shrink-on-load. Plain JS with no imports, so Node's tests load the very file the
// page runs.

/** @param {number} x */
function lanczos3(x) {
  if (x === 0) return 1;
  if (x <= -3 || x >= 3) return 0;
  const px = Math.PI * x;
  return (3 * Math.sin(px) * Math.sin(px / 3)) / (px * px);
}

/**
 * Lanczos3 resampling of one axis from `len` to `full` samples (widened by the reduction factor when
 * shrinking, so it also filters), keeping only outputs [from, from + count) of it (the cover crop).
 */
function reduceAxis(src, c, w, h, full, from, count, horizontal) {
  const len = horizontal ? w : h;
  const f = len / full;
  const spread = Math.max(1, f);
  const ow = horizontal ? count : w;
  const oh = horizontal ? h : count;
  const out = new Float32Array(c * ow * oh);
  for (let o = 0; o < count; o++) {
    const centre = (o + from + 0.5) * f - 0.5;
    const lo = Math.ceil(centre - 3 * spread);
    const hi = Math.floor(centre + 3 * spread);
    const idx = [];
    const wts = [];
    let sum = 0;
    for (let i = lo; i <= hi; i++) {
      const wt = lanczos3((i - centre) / spread);
      if (wt === 0) continue;
      idx.push(Math.min(len - 1, Math.max(0, i)));
      wts.push(wt);
      sum += wt;
    }
    for (let ch = 0; ch < c; ch++) {
      const other = horizontal ? h : w;
      for (let p = 0; p < other; p++) {
        let s = 0;
        for (let t = 0; t < idx.length; t++) s += wts[t] * (horizontal ? src[(ch * h + p) * w + idx[t]] : src[(ch * h + idx[t]) * w + p]);
        const v = Math.min(255, Math.max(0, Math.round(s / sum)));
        if (horizontal) out[(ch * oh + p) * ow + o] = v;
        else out[(ch * oh + o) * ow + p] = v;
      }
    }
  }
  return { data: out, w: ow, h: oh };
}

/**
 * An RGBA (or RGB) image, row-major as canvas ImageData holds it, to uint8 CHW RGB of size x size:
 * scaled so the shorter side is `size`, centre-cropped on the longer one (sharp's fit 'cover').
 * @param {Uint8Array | Uint8ClampedArray} pixels
 * @param {number} width
 * @param {number} height
 * @param {number} size
 * @param {number} [channels] 4 (canvas) or 3
 * @returns {Uint8Array}
 */
export function coverResize(pixels, width, height, size, channels = 4) {
  const scale = size / Math.min(width, height);
  const fullW = Math.max(size, Math.round(width * scale));
  const fullH = Math.max(size, Math.round(height * scale));
  // sharp's centre crop: (in - out + 1) / 2, whole pixels.
  const left = Math.floor((fullW - size + 1) / 2);
  const top = Math.floor((fullH - size + 1) / 2);
  let img = { data: new Float32Array(3 * width * height), w: width, h: height };
  const plane = width * height;
  for (let i = 0; i < plane; i++) for (let c = 0; c < 3; c++) img.data[c * plane + i] = pixels[i * channels + c];
  img = reduceAxis(img.data, 3, img.w, img.h, fullH, top, size, false);
  img = reduceAxis(img.data, 3, img.w, img.h, fullW, left, size, true);
  return Uint8Array.from(img.data);
}

/** uint8 CHW images to the encoder's input: float32 in [0, 1], as Node's Encoder.runU8 makes it. */
export function toInput(chw) {
  const x = new Float32Array(chw.length);
  for (let i = 0; i < x.length; i++) x[i] = chw[i] / 255;
  return x;
}
