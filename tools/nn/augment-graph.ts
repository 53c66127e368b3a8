// Multi-crop augmentation inside the graph: uint8 images + the host's packed per-crop draws
// (core/crop-params.ts) -> float32 crops in [0, 1], the same values as agent/frames/augment.ts's
// renderCrop (to float32 rounding), so the host no longer renders crops in JS.
// Standard opset-18 ops: MatMul, Mul/Add/Sub/Div, Max/Min, Abs, Relu, Exp, Greater, Cast, Where,
// ReduceMean, Slice/Concat/Reshape/Transpose/Unsqueeze (all on ORT's WebGPU EP; Max/Min natively only
// from microsoft/onnxruntime#29833, before that ORT places them on the CPU). No Gather, GridSample or
// Floor: the crop-resize and the blur are per-crop matrices, hue's wrap-arounds compare-and-subtract.
// Per-crop choices are exact 0/1 blends (a*m + b*(1-m)), since ORT's CPU Where costs ~10x a Mul;
// colour ops run per channel ([BN, 1, s, s] each), which also saves a split for the luma every
// round. Nothing here is differentiated (the crops are an input to the differentiated part).

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

    const resized = g.div(g.reshape(resize(g, images, params, N, B, S, s), [BN, 3, s, s]), g.scalar(255));
    let x: RGB = [0, 1, 2].map((c) => g.slice(resized, [c], [c + 1], [1])) as RGB;
    // Per-crop columns broadcast over [BN, 1, s, s]; flags as exact 0/1 floats.
    const col = (k: number) => g.reshape(g.slice(params, [k], [k + 1], [1]), [BN, 1, 1, 1]);
    const flag = (k: number) => g.cast(g.greater(col(k), g.scalar(0.5)), g.dtype);

    x = g.scope('jitter', () => jitter(g, x, col, flag));
    x = g.scope('grayscale', () => {
      const on = flag(CROP_PARAM.GRAY);
      const gray = luma(g, x);
      return x.map((c) => select(g, on, gray, c)) as RGB;
    });
    x = g.scope('blur', () => blur(g, x, col(CROP_PARAM.BLUR_SIGMA), s));
    x = g.scope('solarize', () => {
      const on = flag(CROP_PARAM.SOLARIZE);
      // v >= 0.5 -> 1 - v is min(v, 1 - v): the two meet at 0.5.
      return x.map((c) => select(g, on, g.min(c, g.sub(g.scalar(1), c)), c)) as RGB;
    });
    return g.stopGradient(g.concat(x, 1));
  });
}

/**
 * Crop + bilinear resize (align-corners=false, source coordinate clamped to the box) as Ry · X · Rxᵀ
 * with per-crop [s, S] matrices. Weight of source row j for output row o is the hat function
 * max(0, 1 - |sy(o) - (j - y)|): exactly renderCrop's (1 - wy, wy) pair, without a Floor. The flip
 * reverses Rx's rows. Built image-major ([B, N]) so the first product is one [N*s, S] x [S, 3*S]
 * GEMM per image (its N crops' Ry stacked, its channels side by side: no Gather, and few large
 * GEMMs rather than 3*B*N tiny ones), then one [3*s, S] x [S, s] per crop; a last transpose puts
 * the crops back in crop-major order. Returns [N, B, 3, s, s], in 0-255.
 */
function resize(g: Graph, images: Value, params: Value, N: number, B: number, S: number, s: number): Value {
  return g.scope('resize', () => {
    // Columns as [B, N, 1]: the params rows are crop-major (row i*B + j), so transpose.
    const col = (k: number) => g.unsqueeze(g.transpose(g.reshape(g.slice(params, [k], [k + 1], [1]), [N, B]), [1, 0]), [2]);
    const side = col(CROP_PARAM.SIDE);
    const scale = g.div(side, g.scalar(s));
    const o = g.constant(Array.from({ length: s }, (_, i) => i), [1, 1, s]);
    // Source coordinate inside the box, as renderCrop: clamp((o + 0.5) * side / s - 0.5, 0, side - 1).
    const coord = (t: Value) => g.min(g.max(g.sub(g.mul(g.add(t, g.scalar(0.5)), scale), g.scalar(0.5)), g.scalar(0)), g.sub(side, g.scalar(1)));
    const sy = coord(o); // [B, N, s]
    const flipped = g.mul(col(CROP_PARAM.FLIP), g.sub(g.scalar(s - 1), g.mul(g.scalar(2), o)));
    const sx = coord(g.add(o, flipped)); // o, or s - 1 - o where flipped
    const j = g.constant(Array.from({ length: S }, (_, i) => i), [1, 1, S]);
    const hat = (t: Value) => g.relu(g.sub(g.scalar(1), g.unary('Abs', t)));
    // Ry [B, N, s, S]; RxT [B, N, S, s].
    const ry = hat(g.sub(g.unsqueeze(sy, [3]), g.unsqueeze(g.sub(j, col(CROP_PARAM.Y)), [2])));
    const rxT = hat(g.sub(g.unsqueeze(sx, [2]), g.unsqueeze(g.sub(j, col(CROP_PARAM.X)), [3])));
    const img = g.reshape(g.transpose(g.cast(images, g.dtype), [0, 2, 1, 3]), [B, S, 3 * S]); // rows y, columns (c, x)
    const rows = g.matmul(g.reshape(ry, [B, N * s, S]), img); // [B, N*s, 3*S]: rows (n, oy), columns (c, x)
    const out = g.matmul(g.reshape(rows, [B * N, s * 3, S]), g.reshape(rxT, [B * N, S, s])); // rows (oy, c), columns ox
    const crops = g.transpose(g.reshape(out, [B, N, s, 3, s]), [1, 0, 3, 2, 4]);
    return crops;
  });
}

/** The three channels of a batch of crops, each [BN, 1, s, s]. */
type RGB = [Value, Value, Value];

/** a where m = 1, b where m = 0, bit-exact (a*1 + b*0) for finite a, b; m is a 0/1 float. */
function select(g: Graph, m: Value, a: Value, b: Value): Value {
  return g.add(g.mul(a, m), g.mul(b, g.sub(g.scalar(1), m)));
}

/** 0.299 R + 0.587 G + 0.114 B, [BN, 1, s, s]. */
function luma(g: Graph, [r, gr, b]: RGB): Value {
  return g.add(g.add(g.mul(r, g.scalar(0.299)), g.mul(gr, g.scalar(0.587))), g.mul(b, g.scalar(0.114)));
}

const clamp01 = (g: Graph, v: Value) => g.max(g.min(v, g.scalar(1)), g.scalar(0));

/**
 * Colour jitter in each crop's own order. Brightness, contrast and saturation are all
 * clamp01(f x + (1 - f) m) with m = 0, the crop's mean luma or the pixel's luma; hue is the only
 * other op. So the graph runs 3 blend slots (rounds 0-2, each active where it comes before the
 * crop's hue round), one hue shift, and 3 blend slots (rounds 1-3, active after it): one HSV round
 * trip instead of one per round. Which op a slot is, and whether it is active, is decided on
 * [BN, 1, 1, 1] tensors; an inactive slot is f = 1, m = 0, i.e. clamp01(x) = x.
 */
function jitter(g: Graph, x: RGB, col: (k: number) => Value, flag: (k: number) => Value): RGB {
  const F = g.dtype;
  const one = g.scalar(1);
  const zero = g.scalar(0);
  const is = (v: Value, k: number) => g.cast(g.greater(g.scalar(0.5), g.unary('Abs', g.sub(v, g.scalar(k)))), F); // v == k, for small ints
  const on = flag(CROP_PARAM.JITTER);
  const order = [0, 1, 2, 3].map((t) => col(CROP_PARAM.ORDER + t));
  const hueRound = order.slice(1).reduce((acc, op, i) => g.add(acc, g.mul(is(op, 3), g.scalar(i + 1))), zero);
  const blend = (t: number, active: Value) =>
    g.scope(`round${t}`, () => {
      const op = order[t];
      const wB = g.mul(active, is(op, 0));
      const wC = g.mul(active, is(op, 1));
      const wS = g.mul(active, is(op, 2));
      // Exactly the drawn factor (not 1 + (f - 1), which rounds), or 1 where the slot does nothing.
      const f = select(g, wB, col(CROP_PARAM.BRIGHTNESS), select(g, wC, col(CROP_PARAM.CONTRAST), select(g, wS, col(CROP_PARAM.SATURATION), one)));
      const gray = luma(g, x);
      // One-hot weights make m exactly 0, the crop's mean luma or the pixel's luma.
      const m = g.mul(g.sub(one, f), g.add(g.mul(wC, g.reduceMean(gray, [2, 3])), g.mul(wS, gray)));
      return x.map((c) => clamp01(g, g.add(g.mul(f, c), m))) as RGB;
    });
  for (let t = 0; t < 3; t++) x = blend(t, g.mul(on, g.cast(g.greater(hueRound, g.scalar(t)), F)));
  // renderCrop skips a zero hue shift; the HSV round trip is not bit-exact, so skip it here too.
  const hue = col(CROP_PARAM.HUE);
  x = shiftHue(g, x, hue, g.mul(on, g.cast(g.greater(g.unary('Abs', hue), zero), F)));
  for (let t = 1; t < 4; t++) x = blend(t, g.mul(on, g.cast(g.greater(g.scalar(t), hueRound), F)));
  return x;
}

/**
 * Hue rotation through HSV (renderCrop's shiftHue). Back to RGB with the closed form
 * channel = V - (V - min) * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6, n = 5, 3, 1 for R, G, B:
 * the same piecewise-linear function as the six-case switch.
 */
function shiftHue(g: Graph, x: RGB, shift: Value, enabled: Value): RGB {
  return g.scope('hue', () => {
    const F = g.dtype;
    const one = g.scalar(1);
    const [r, gr, b] = x;
    const mx = g.max(g.max(r, gr), b);
    const d = g.sub(mx, g.min(g.min(r, gr), b));
    // Grey pixels (hue undefined) and crops without a hue shift keep their values.
    const coloured = g.cast(g.greater(g.mul(d, enabled), g.scalar(0)), F);
    const dd = g.max(d, g.scalar(1e-30)); // grey: 0 / 1e-30, finite, and dropped below
    const hR = g.div(g.sub(gr, b), dd);
    const hG = g.add(g.div(g.sub(b, r), dd), g.scalar(2));
    const hB = g.add(g.div(g.sub(r, gr), dd), g.scalar(4));
    // renderCrop tests max === r first, then max === g.
    const notR = g.cast(g.greater(mx, r), F);
    const h6 = select(g, notR, select(g, g.cast(g.greater(mx, gr), F), hB, hG), hR);
    // h in [-2/3, 4/3] (|shift| <= 0.5, packCropParams checks) before wrapping into [0, 1] (1 and 0
    // give the same colour).
    let h = g.add(g.div(h6, g.scalar(6)), shift);
    h = g.sub(g.add(h, g.cast(g.greater(g.scalar(0), h), F)), g.cast(g.greater(h, one), F));
    const h6w = g.mul(h, g.scalar(6));
    return ([5, 3, 1] as const).map((n, c) => {
      let k = g.add(h6w, g.scalar(n));
      k = g.sub(k, g.mul(g.cast(g.greater(k, g.scalar(6)), F), g.scalar(6)));
      const w = clamp01(g, g.min(k, g.sub(g.scalar(4), k)));
      return select(g, coloured, g.sub(mx, g.mul(d, w)), x[c]);
    }) as RGB;
  });
}

/**
 * renderCrop's separable 3-tap Gaussian (weights w, 1, w over 1 + 2w, w = exp(-1 / 2 sigma^2)) with
 * replicated edges, as Y = K · X · Kᵀ (horizontal pass first, as renderCrop) with a per-crop
 * tridiagonal K. sigma = 0 (no blur) gives K = I, which leaves the crop bit-exact.
 */
function blur(g: Graph, x: RGB, sigma: Value, s: number): RGB {
  const on = g.greater(sigma, g.scalar(0));
  const safe = g.whereOp(on, sigma, g.scalar(1)); // [BN, 1, 1, 1]: Where is cheap here
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
  return x.map((c) => g.matmul(k, g.matmul(c, kT))) as RGB;
}
