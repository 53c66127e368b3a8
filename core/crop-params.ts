// The per-crop random draws as the host hands them to a graph that renders the crops itself
// (tools/nn/augment-graph.ts): one fixed row of P float32 values per crop, in the same crop order as
// the JS multiCrop (row i*b + j = crop i of image j). The host keeps the RNG; the graph is pure.

/** The random draws of one crop: enough to replay it exactly (tests, logs). */
export interface CropParams {
  x: number;
  y: number;
  side: number;
  flip: boolean;
  jitter: null | { order: number[]; brightness: number; contrast: number; saturation: number; hue: number };
  gray: boolean;
  blurSigma: number;
  solarize: boolean;
}

/** Jitter op indices, as CropParams.jitter.order lists them. */
export const JITTER_OP = { brightness: 0, contrast: 1, saturation: 2, hue: 3 } as const;

/**
 * Column offsets of one packed row. Flags are exactly 0 or 1. ORDER + t holds the op applied in round
 * t (0 brightness, 1 contrast, 2 saturation, 3 hue). A crop without jitter has JITTER 0 and neutral
 * values (order 0 1 2 3, factors 1 1 1, hue 0) so that even a graph ignoring the flag leaves it alone.
 */
export const CROP_PARAM = {
  X: 0,
  Y: 1,
  SIDE: 2,
  FLIP: 3,
  JITTER: 4,
  ORDER: 5, // 4 slots: 5, 6, 7, 8
  BRIGHTNESS: 9,
  CONTRAST: 10,
  SATURATION: 11,
  HUE: 12,
  GRAY: 13,
  BLUR_SIGMA: 14, // 0 = no blur
  SOLARIZE: 15,
} as const;

/** Floats per crop. */
export const CROP_PARAM_COUNT = 16;

/** Rows of CROP_PARAM_COUNT float32 values, one per crop, in the order given. */
export function packCropParams(params: CropParams[]): Float32Array {
  const P = CROP_PARAM_COUNT;
  const out = new Float32Array(params.length * P);
  params.forEach((p, r) => {
    const o = r * P;
    if (!(p.side >= 1 && Number.isInteger(p.side) && Number.isInteger(p.x) && Number.isInteger(p.y) && p.x >= 0 && p.y >= 0)) {
      throw new Error(`packCropParams: crop ${r} has box x=${p.x} y=${p.y} side=${p.side}; expected non-negative integers, side >= 1`);
    }
    out[o + CROP_PARAM.X] = p.x;
    out[o + CROP_PARAM.Y] = p.y;
    out[o + CROP_PARAM.SIDE] = p.side;
    out[o + CROP_PARAM.FLIP] = p.flip ? 1 : 0;
    const j = p.jitter;
    if (j && !isPermutation(j.order)) throw new Error(`packCropParams: crop ${r} has jitter order [${j.order}]; expected a permutation of 0 1 2 3`);
    // The graph wraps the hue once; torchvision's adjust_hue allows no more than half a turn either.
    if (j && !(Math.abs(j.hue) <= 0.5)) throw new Error(`packCropParams: crop ${r} has hue shift ${j.hue}; expected one in [-0.5, 0.5]`);
    out[o + CROP_PARAM.JITTER] = j ? 1 : 0;
    for (let t = 0; t < 4; t++) out[o + CROP_PARAM.ORDER + t] = j ? j.order[t] : t;
    out[o + CROP_PARAM.BRIGHTNESS] = j ? j.brightness : 1;
    out[o + CROP_PARAM.CONTRAST] = j ? j.contrast : 1;
    out[o + CROP_PARAM.SATURATION] = j ? j.saturation : 1;
    out[o + CROP_PARAM.HUE] = j ? j.hue : 0;
    out[o + CROP_PARAM.GRAY] = p.gray ? 1 : 0;
    out[o + CROP_PARAM.BLUR_SIGMA] = p.blurSigma > 0 ? p.blurSigma : 0;
    out[o + CROP_PARAM.SOLARIZE] = p.solarize ? 1 : 0;
  });
  return out;
}

/** The inverse of packCropParams (factors come back rounded to float32). */
export function unpackCropParams(packed: Float32Array): CropParams[] {
  const P = CROP_PARAM_COUNT;
  if (packed.length % P !== 0) throw new Error(`unpackCropParams: ${packed.length} values is not a multiple of ${P}`);
  const out: CropParams[] = [];
  for (let o = 0; o < packed.length; o += P) {
    const at = (k: number) => packed[o + k];
    out.push({
      x: at(CROP_PARAM.X),
      y: at(CROP_PARAM.Y),
      side: at(CROP_PARAM.SIDE),
      flip: at(CROP_PARAM.FLIP) === 1,
      jitter:
        at(CROP_PARAM.JITTER) === 1
          ? {
              order: [0, 1, 2, 3].map((t) => at(CROP_PARAM.ORDER + t)),
              brightness: at(CROP_PARAM.BRIGHTNESS),
              contrast: at(CROP_PARAM.CONTRAST),
              saturation: at(CROP_PARAM.SATURATION),
              hue: at(CROP_PARAM.HUE),
            }
          : null,
      gray: at(CROP_PARAM.GRAY) === 1,
      blurSigma: at(CROP_PARAM.BLUR_SIGMA),
      solarize: at(CROP_PARAM.SOLARIZE) === 1,
    });
  }
  return out;
}

function isPermutation(order: number[]): boolean {
  return order.length === 4 && [0, 1, 2, 3].every((k) => order.includes(k));
}
