// Class-incremental streams (DESIGN.md section 5, SCALE's procedure): `seq` (classes in ascending
// order, each shuffled), `seq-im` (imbalanced per-class counts), `seq-bl` (blurred boundaries: items
// near each boundary swapped with a linearly falling probability). Seeded by the trial number.

import { Rng } from '../../core/rng.ts';

export type StreamOrder = 'seq' | 'seq-bl' | 'seq-im';
export const STREAM_ORDERS: StreamOrder[] = ['seq', 'seq-bl', 'seq-im'];

export const SEQ_IM_COUNTS = {
  cifar10: [2048, 4096, 2048, 4096, 2048, 2048, 4096, 2048, 2048, 4096],
  cifar100: [1280, 2560, 2560, 2560, 1280, 2560, 2560, 2560, 2560, 1280, 2560, 2560, 2560, 2560, 1280, 2560, 2560, 2560, 2560, 1280],
};
export const SEQ_COUNT = { cifar10: 4096, cifar100: 2560 };

export interface StreamSpec {
  order: StreamOrder;
  /** Stream class of each item (CIFAR-10 labels; CIFAR-100 superclasses). */
  labels: ArrayLike<number>;
  classes: number;
  /** Items requested per class (capped by what exists); for seq-im one count per class. */
  perClass: number | number[];
  trial: number;
  /** Fraction of each class used, for reduced protocols (applied after the cap). */
  fraction?: number;
  blend?: number;
}

/** Per-class index lists: each class shuffled with the trial's RNG, then cut to its count. */
export function classBlocks(s: StreamSpec, rng: Rng): number[][] {
  const byClass: number[][] = Array.from({ length: s.classes }, () => []);
  for (let i = 0; i < s.labels.length; i++) byClass[s.labels[i]].push(i);
  return byClass.map((idx, c) => {
    for (let i = idx.length - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [idx[i], idx[j]] = [idx[j], idx[i]];
    }
    const want = Array.isArray(s.perClass) ? s.perClass[c] : s.perClass;
    const n = Math.min(want, idx.length);
    return idx.slice(0, Math.max(1, Math.floor(n * (s.fraction ?? 1))));
  });
}

/** SCALE's boundary blur: at each boundary in order, swap prev[-t-1] and next[t] with p falling 0.5 -> 0.05. */
export function blurBoundaries(blocks: number[][], rng: Rng, ratio = 0.5): number[][] {
  const out = blocks.map((b) => b.slice());
  for (let c = 1; c < out.length; c++) {
    const prev = out[c - 1];
    const next = out[c];
    const n = Math.floor((Math.min(prev.length, next.length) * ratio) / 2);
    for (let t = 0; t < n; t++) {
      const p = n === 1 ? 0.5 : 0.5 + ((0.05 - 0.5) * t) / (n - 1);
      if (rng.uniform() < p) {
        const a = prev.length - 1 - t;
        [prev[a], next[t]] = [next[t], prev[a]];
      }
    }
  }
  return out;
}

export function makeStream(s: StreamSpec): number[] {
  const rng = new Rng(s.trial);
  let blocks = classBlocks(s, rng);
  if (s.order === 'seq-bl') blocks = blurBoundaries(blocks, rng, s.blend ?? 0.5);
  return blocks.flat();
}

export function streamSpec(dataset: 'cifar10' | 'cifar100', order: StreamOrder, labels: ArrayLike<number>, trial: number, fraction?: number): StreamSpec {
  if (!STREAM_ORDERS.includes(order)) throw new Error(`--order ${order}: unknown stream order (accepted: ${STREAM_ORDERS.join(', ')})`);
  const classes = dataset === 'cifar10' ? 10 : 20;
  const perClass = order === 'seq-im' ? SEQ_IM_COUNTS[dataset] : SEQ_COUNT[dataset];
  return { order, labels, classes, perClass, trial, fraction };
}
