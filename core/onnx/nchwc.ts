// ORT's NCHWc block size, asked of the runtime itself: a one-node model (com.microsoft.nchwc
// ReorderInput) whose output is the blocked layout as raw memory. MLAS picks the block by the CPU
// (16 with AVX-512, 8 with AVX2) and has no NCHWc kernels elsewhere (ARM, WASM): there the session does
// not open. A train step compiled for one block (Graph.nchwcConvs) computes wrong values under another,
// so the block is read from the runtime, not guessed from the CPU's flags.

import { encodeOnnx } from './model.ts';

const C = 32;
const HW = 2;

/** The probe: x [1, 32, 1, 2] in, its blocked layout out. */
export function nchwcProbeModel(): Uint8Array {
  return encodeOnnx({
    name: 'nchwc-probe',
    nodes: [{ op: 'ReorderInput', name: 'reorder', inputs: ['x'], outputs: ['y'], attrs: {}, domain: 'com.microsoft.nchwc' }],
    initializers: [],
    inputs: [{ name: 'x', dtype: 'float32', shape: [1, C, 1, HW] }],
    outputs: [{ name: 'y', dtype: 'float32', shape: [1, C, 1, HW] }],
  });
}

/** The probe's input: element (c, p) holds c * 2 + p. */
export function nchwcProbeInput(): Float32Array {
  return Float32Array.from({ length: C * HW }, (_, i) => i);
}

/**
 * The block size the probe's output shows (blocked: pixel 0 of channels 0..B-1 first, i.e. 0, 2, 4, ...),
 * or 0 when the output is not a blocked layout this reads.
 */
export function nchwcBlockOf(out: ArrayLike<number>): number {
  let b = 0;
  while (b < C && out[b] === b * HW) b++;
  return [8, 16, 32].includes(b) ? b : 0;
}
