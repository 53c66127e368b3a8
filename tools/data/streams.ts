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

/**
 * Seq-im on a labelled folder (any number of classes): CIFAR-10's pattern, half full half full half
 * half full half half full (2048 = half of 4096), repeated over the classes in sorted order. Class c
 * keeps all of its images where the pattern at c mod 10 is full, and half of them (floored, at least
 * one) where it is half. Ten classes get exactly CIFAR-10's shape; ImageNet-100 gets 60 halved and 40
 * full classes, CIFAR-10's 6:4 ratio. (CIFAR-100's own 20-class pattern stays its own: it is a
 * different shape, 5 halved of 20.)
 */
export const SEQ_IM_PATTERN: readonly boolean[] = SEQ_IM_COUNTS.cifar10.map((n) => n === SEQ_COUNT.cifar10);

export function seqImCounts(held: number[]): number[] {
  return held.map((n, c) => (SEQ_IM_PATTERN[c % SEQ_IM_PATTERN.length] ? n : Math.max(1, Math.floor(n / 2))));
}

/**
 * A folder's stream: Seq takes every image a class holds (there is no CIFAR-style request to cap),
 * Seq-im the counts of `seqImCounts`, Seq-bl blurs Seq's blocks. `labels` index the sorted class names.
 */
export function folderStreamSpec(order: StreamOrder, labels: ArrayLike<number>, classes: number, trial: number): StreamSpec {
  if (!STREAM_ORDERS.includes(order)) throw new Error(`--order ${order}: unknown stream order (accepted: ${STREAM_ORDERS.join(', ')})`);
  const held = new Array(classes).fill(0);
  for (let i = 0; i < labels.length; i++) held[labels[i]]++;
  return { order, labels, classes, perClass: order === 'seq-im' ? seqImCounts(held) : held, trial };
}

export function streamSpec(dataset: 'cifar10' | 'cifar100', order: StreamOrder, labels: ArrayLike<number>, trial: number, fraction?: number): StreamSpec {
  if (!STREAM_ORDERS.includes(order)) throw new Error(`--order ${order}: unknown stream order (accepted: ${STREAM_ORDERS.join(', ')})`);
  const classes = dataset === 'cifar10' ? 10 : 20;
  const perClass = order === 'seq-im' ? SEQ_IM_COUNTS[dataset] : SEQ_COUNT[dataset];
  return { order, labels, classes, perClass, trial, fraction };
}
