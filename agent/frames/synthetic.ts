// A built-in image set that needs no files: seeded random scenes (a coloured background with a few
// rectangles and discs), so the demo and tests run on a fresh clone with nothing downloaded.

import { Rng } from '../../core/rng.ts';

/** count images, uint8 CHW size x size each, concatenated. */
export function syntheticImages(count: number, size: number, seed: number): Uint8Array {
  const rng = new Rng(seed);
  const plane = size * size;
  const out = new Uint8Array(count * 3 * plane);
  for (let k = 0; k < count; k++) {
    const off = k * 3 * plane;
    const bg = [rng.int(256), rng.int(256), rng.int(256)];
    for (let c = 0; c < 3; c++) out.fill(bg[c], off + c * plane, off + (c + 1) * plane);
    const shapes = 1 + rng.int(3);
    for (let s = 0; s < shapes; s++) {
      const col = [rng.int(256), rng.int(256), rng.int(256)];
      const cx = rng.uniform() * size;
      const cy = rng.uniform() * size;
      const r = size * (0.1 + 0.3 * rng.uniform());
      const disc = rng.uniform() < 0.5;
      for (let y = 0; y < size; y++) {
        for (let x = 0; x < size; x++) {
          const inside = disc ? (x - cx) ** 2 + (y - cy) ** 2 < r * r : Math.abs(x - cx) < r && Math.abs(y - cy) < r * 0.6;
          if (inside) for (let c = 0; c < 3; c++) out[off + c * plane + y * size + x] = col[c];
        }
      }
    }
  }
  return out;
}
