// Multi-crop augmentation inside the graph: uint8 images + the host's packed per-crop draws
// (core/crop-params.ts) -> float32 crops in [0, 1], the same values as agent/frames/augment.ts's
// renderCrop (to float32 rounding), so the host no longer spends ~0.25 ms of CPU per crop.
// Standard opset-18 ops that ORT's CPU and WebGPU EPs both run: batched MatMul, Where, Greater,
// Abs, Max/Min, ReduceMean, Exp, Slice/Reshape/Unsqueeze, Cast. No Gather, GridSample or Floor: the
// crop-resize and the blur are per-crop matrices, and hue's wrap-arounds are Where selections.
// Nothing here is differentiated (the crops are an input to the differentiated part).

import { Graph, Value, fmt } from '../graph/graph.ts';
import { CROP_PARAM, CROP_PARAM_COUNT } from '../../core/crop-params.ts';

export interface CropGraphOptions {
  /** S: side of the input images (the buffer's resolution); crop boxes are in its pixels. */
  size: number;
  /** s: side of the output crops. */
  out: number;
}

/**
 * images uint8 [B, 3, S, S]; params float [B*N, CROP_PARAM_COUNT] with row i*B + j = crop i of
 * image j (as multiCrop lays them out). Returns float [B*N, 3, s, s] in [0, 1], the training step's
 * crops input, behind a stop-gradient.
 */
export function buildCrops(g: Graph, images: Value, params: Value, opts: CropGraphOptions): Value {
  return g.scope('crops', () => {
    const { size: S, out: s } = opts;
    if (!(Number.isInteger(S) && S >= 1 && Number.isInteger(s) && s >= 1)) throw new Error(`buildCrops: size ${S} and out ${s} must be positive integers`);
    if (images.dtype !== 'uint8' || images.rank !== 4 || images.shape[1] !== 3 || images.shape[2] !== S || images.shape[3] !== S) {
      throw new Error(`buildCrops: images must be uint8 [B, 3, ${S}, ${S}], got ${images.dtype} ${fmt(images.shape)}`);
    }
    if (params.dtype !== g.dtype || params.rank !== 2 || params.shape[1] !== CROP_PARAM_COUNT) {
      throw new Error(`buildCrops: params must be ${g.dtype} [B*N, ${CROP_PARAM_COUNT}], got ${params.dtype} ${fmt(params.shape)}`);
    }
    const [B] = images.dims();
    const [BN] = params.dims();
    if (BN % B !== 0) throw new Error(`buildCrops: ${BN} crop rows is not a multiple of ${B} images`);
    const N = BN / B;

    const resized = resize(g, images, params, N, B, S, s);
    let x = g.reshape(resized, [BN, 3, s, s]);
    // Per-crop columns broadcast over [BN, C, H, W].
    const col = (k: number) => g.reshape(g.slice(params, [k], [k + 1], [1]), [BN, 1, 1, 1]);
    const flag = (k: number) => g.greater(col(k), g.scalar(0.5));

    x = g.scope('jitter', () => jitter(g, x, col, flag));
    x = g.scope('grayscale', () => g.whereOp(flag(CROP_PARAM.GRAY), luma(g, x), x));
    x = g.scope('blur', () => {
      const sigma = col(CROP_PARAM.BLUR_SIGMA);
      return blur(g, x, sigma, g.greater(sigma, g.scalar(0)), s); // sigma 0 = no blur (not a 0/1 flag)
    });
    x = g.scope('solarize', () => {
      const inverted = g.whereOp(g.greater(g.scalar(0.5), x), x, g.sub(g.scalar(1), x));
      return g.whereOp(flag(CROP_PARAM.SOLARIZE), inverted, x);
    });
    return g.stopGradient(x);
  });
}

/**
 * Crop + bilinear resize (align-corners=false, source coordinate clamped to the box) as Ry · X · Rxᵀ
 * with per-crop [s, S] matrices. Weight of source row j for output row o is the hat function
 * max(0, 1 - |sy(o) - (j - y)|): exactly renderCrop's (1 - wy, wy) pair, without a Floor. The flip
 * reverses Rx's rows. Crops stay [N, B, ...] so image j broadcasts to its N crops without a Gather.
 */
function resize(g: Graph, images: Value, params: Value, N: number, B: number, S: number, s: number): Value {
  return g.scope('resize', () => {
    const col = (k: number) => g.reshape(g.slice(params, [k], [k + 1], [1]), [N, B, 1, 1]);
    const side = col(CROP_PARAM.SIDE);
    const scale = g.div(side, g.scalar(s));
    const o = g.constant(Array.from({ length: s }, (_, i) => i), [1, 1, 1, s]);
    // Source coordinate inside the box, as renderCrop: clamp((o + 0.5) * side / s - 0.5, 0, side - 1).
    const coord = (t: Value) => g.min(g.max(g.sub(g.mul(g.add(t, g.scalar(0.5)), scale), g.scalar(0.5)), g.scalar(0)), g.sub(side, g.scalar(1)));
    const sy = coord(o); // [N, B, 1, s]
    const flipped = g.mul(col(CROP_PARAM.FLIP), g.sub(g.scalar(s - 1), g.mul(g.scalar(2), o)));
    const sx = coord(g.add(o, flipped)); // o, or s - 1 - o where flipped
    const j = g.constant(Array.from({ length: S }, (_, i) => i), [1, 1, 1, S]);
    const hat = (t: Value) => g.relu(g.sub(g.scalar(1), g.unary('Abs', t)));
    // Ry [N, B, 1, s, S]; RxT [N, B, 1, S, s].
    const ry = hat(g.sub(g.unsqueeze(sy, [4]), g.unsqueeze(g.sub(j, col(CROP_PARAM.Y)), [3])));
    const rxT = hat(g.sub(g.unsqueeze(sx, [3]), g.unsqueeze(g.sub(j, col(CROP_PARAM.X)), [4])));
    const img = g.unsqueeze(g.cast(images, g.dtype), [0]); // [1, B, 3, S, S]
    const out = g.matmul(g.matmul(ry, img), rxT); // [N, B, 3, s, s]
    return g.div(out, g.scalar(255));
  });
}

/** 0.299 R + 0.587 G + 0.114 B, [BN, 1, H, W]. */
function luma(g: Graph, x: Value): Value {
  const ch = (c: number) => g.slice(x, [c], [c + 1], [1]);
  return g.add(g.add(g.mul(ch(0), g.scalar(0.299)), g.mul(ch(1), g.scalar(0.587))), g.mul(ch(2), g.scalar(0.114)));
}

const clamp01 = (g: Graph, v: Value) => g.max(g.min(v, g.scalar(1)), g.scalar(0));

/**
 * Colour jitter in each crop's own order: round t applies the op named in ORDER + t. Brightness,
 * contrast and saturation are all clamp01(f x + (1 - f) m) with m = 0, the crop's mean luma, or the
 * pixel's luma, so each round computes one blend and one hue shift and selects between them.
 */
function jitter(g: Graph, x: Value, col: (k: number) => Value, flag: (k: number) => Value): Value {
  const on = flag(CROP_PARAM.JITTER);
  const hue = col(CROP_PARAM.HUE);
  // renderCrop skips a zero hue shift; the HSV round trip is not bit-exact, so skip it here too.
  const hueOn = g.greater(g.unary('Abs', hue), g.scalar(0));
  for (let t = 0; t < 4; t++) {
    x = g.scope(`round${t}`, () => {
      const op = col(CROP_PARAM.ORDER + t);
      const isB = g.greater(g.scalar(0.5), op);
      const isC = g.greater(g.scalar(1.5), op);
      const isS = g.greater(g.scalar(2.5), op);
      const gray = luma(g, x);
      const m = g.whereOp(isB, g.scalar(0), g.whereOp(isC, g.reduceMean(gray, [2, 3]), gray));
      const f = g.whereOp(isB, col(CROP_PARAM.BRIGHTNESS), g.whereOp(isC, col(CROP_PARAM.CONTRAST), col(CROP_PARAM.SATURATION)));
      const blend = clamp01(g, g.add(g.mul(f, x), g.mul(g.sub(g.scalar(1), f), m)));
      const shifted = g.whereOp(hueOn, shiftHue(g, x, hue), x);
      return g.whereOp(on, g.whereOp(isS, blend, shifted), x);
    });
  }
  return x;
}

/**
 * Hue rotation through HSV (renderCrop's shiftHue). Back to RGB with the closed form
 * channel = V - (V - min) * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6, n = 5, 3, 1 for R, G, B:
 * the same piecewise-linear function as the six-case switch, with the mod as a Where.
 */
function shiftHue(g: Graph, x: Value, shift: Value): Value {
  return g.scope('hue', () => {
    const ch = (c: number) => g.slice(x, [c], [c + 1], [1]);
    const [r, gr, b] = [ch(0), ch(1), ch(2)];
    const mx = g.max(g.max(r, gr), b);
    const d = g.sub(mx, g.min(g.min(r, gr), b));
    const coloured = g.greater(d, g.scalar(0));
    const dd = g.whereOp(coloured, d, g.scalar(1)); // no 0/0 in the branches Where drops
    const hR = g.div(g.sub(gr, b), dd);
    const hG = g.add(g.div(g.sub(b, r), dd), g.scalar(2));
    const hB = g.add(g.div(g.sub(r, gr), dd), g.scalar(4));
    // renderCrop tests max === r first, then max === g.
    const h6 = g.whereOp(g.greater(mx, r), g.whereOp(g.greater(mx, gr), hB, hG), hR);
    // h in [-2/3, 4/3) before wrapping into [0, 1).
    let h = g.add(g.div(h6, g.scalar(6)), shift);
    h = g.whereOp(g.greater(g.scalar(0), h), g.add(h, g.scalar(1)), h);
    h = g.whereOp(g.greater(g.scalar(1), h), h, g.sub(h, g.scalar(1)));
    let k = g.add(g.constant([5, 3, 1], [1, 3, 1, 1]), g.mul(h, g.scalar(6))); // [BN, 3, H, W]
    k = g.whereOp(g.greater(g.scalar(6), k), k, g.sub(k, g.scalar(6)));
    const w = g.max(g.min(g.min(k, g.sub(g.scalar(4), k)), g.scalar(1)), g.scalar(0));
    const rgb = g.sub(mx, g.mul(d, w));
    return g.whereOp(coloured, rgb, x); // grey pixels: hue undefined, unchanged
  });
}

/**
 * renderCrop's separable 3-tap Gaussian (weights w, 1, w over 1 + 2w, w = exp(-1 / 2 sigma^2)) with
 * replicated edges, as Y = K · X · Kᵀ (horizontal pass first, as renderCrop) with a per-crop
 * tridiagonal K. Crops without blur get K = I, which leaves them bit-exact.
 */
function blur(g: Graph, x: Value, sigma: Value, on: Value, s: number): Value {
  const safe = g.whereOp(on, sigma, g.scalar(1));
  const w1 = g.whereOp(on, g.exp(g.div(g.scalar(-1), g.mul(g.scalar(2), g.mul(safe, safe)))), g.scalar(0));
  const norm = g.add(g.scalar(1), g.mul(g.scalar(2), w1));
  const side = g.div(w1, norm);
  const centre = g.div(g.scalar(1), norm);
  const eye = new Array(s * s).fill(0);
  const nbr = new Array(s * s).fill(0); // left and right neighbours, edges replicated
  for (let i = 0; i < s; i++) {
    eye[i * s + i] = 1;
    nbr[i * s + Math.max(i - 1, 0)] += 1;
    nbr[i * s + Math.min(i + 1, s - 1)] += 1;
  }
  const k = g.add(g.mul(centre, g.constant(eye, [1, 1, s, s])), g.mul(side, g.constant(nbr, [1, 1, s, s]))); // [BN, 1, s, s]
  const kT = g.transpose(k, [0, 1, 3, 2]);
  return g.matmul(k, g.matmul(x, kT));
}
