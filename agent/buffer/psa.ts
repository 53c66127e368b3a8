// PSA subset selection (Salomon et al. 2013, as diversipy's psa_select implements it), SCALE's memory
// rule: partition the points into k boxes by repeatedly halving the box with the largest extent along
// its widest dimension, then keep from each box the point nearest its centre (Euclidean).
//
// Follows diversipy step by step so the same boxes are split in the same order, ties included: the
// box queue is Python's heapq (a min-heap on -extent with heappush / heappushpop), the widest dimension
// is the first of equal extents, a point goes to the upper half when its coordinate is >= the midpoint,
// and the nearest point is the first of equal distances in member order. diversipy works in the
// points' float32; extents and midpoints are rounded to float32 here too, distances are summed in
// float64 (a near-tie in the last float32 bit may resolve differently).

interface Box {
  members: number[];
  /** -(largest extent): the heap key, smallest first. */
  key: number;
  dim: number;
  min: Float64Array;
  max: Float64Array;
}

function makeBox(x: Float32Array, d: number, members: number[]): Box {
  if (!members.length) throw new Error('psa: a box emptied (fewer distinct points than the selection size)');
  const min = new Float64Array(d).fill(Infinity);
  const max = new Float64Array(d).fill(-Infinity);
  for (const i of members) {
    for (let k = 0; k < d; k++) {
      const v = x[i * d + k];
      if (v < min[k]) min[k] = v;
      if (v > max[k]) max[k] = v;
    }
  }
  let key = Infinity;
  let dim = 0;
  for (let k = 0; k < d; k++) {
    const neg = Math.fround(min[k] - max[k]);
    if (neg < key) {
      key = neg;
      dim = k;
    }
  }
  return { members, key, dim, min, max };
}

// Python's heapq on Box.key (only `<` is used, as there).
function siftDown(h: Box[], start: number, pos: number): void {
  const item = h[pos];
  while (pos > start) {
    const parent = (pos - 1) >> 1;
    if (item.key < h[parent].key) {
      h[pos] = h[parent];
      pos = parent;
      continue;
    }
    break;
  }
  h[pos] = item;
}
function siftUp(h: Box[], pos: number): void {
  const end = h.length;
  const start = pos;
  const item = h[pos];
  let child = 2 * pos + 1;
  while (child < end) {
    const right = child + 1;
    if (right < end && !(h[child].key < h[right].key)) child = right;
    h[pos] = h[child];
    pos = child;
    child = 2 * pos + 1;
  }
  h[pos] = item;
  siftDown(h, start, pos);
}
function heapPush(h: Box[], b: Box): void {
  h.push(b);
  siftDown(h, 0, h.length - 1);
}
function heapPushPop(h: Box[], b: Box): Box {
  if (h.length && h[0].key < b.key) {
    const top = h[0];
    h[0] = b;
    siftUp(h, 0);
    return top;
  }
  return b;
}

function representative(x: Float32Array, d: number, box: Box): number {
  let best = -1;
  let bestD = Infinity;
  for (const i of box.members) {
    let s = 0;
    for (let k = 0; k < d; k++) {
      const c = Math.fround(Math.fround(box.max[k] + box.min[k]) * 0.5);
      const t = x[i * d + k] - c;
      s += t * t;
    }
    if (s < bestD) {
      bestD = s;
      best = i;
    }
  }
  return best;
}

/** Indices (ascending) of the k of n points [n, d] that PSA keeps. */
export function psaSelect(x: Float32Array, d: number, k: number): number[] {
  const n = x.length / d;
  if (!Number.isInteger(n)) throw new Error(`psa: ${x.length} values are not rows of ${d}`);
  if (!(k > 0 && k <= n)) throw new Error(`psa: cannot select ${k} of ${n} points`);
  const heap: Box[] = [];
  let widest = makeBox(x, d, Array.from({ length: n }, (_, i) => i));
  while (heap.length + 1 < k) {
    const dim = widest.dim;
    const mid = Math.fround(Math.fround(widest.min[dim] + widest.max[dim]) / 2);
    const lo: number[] = [];
    const hi: number[] = [];
    for (const i of widest.members) (x[i * d + dim] < mid ? lo : hi).push(i);
    heapPush(heap, makeBox(x, d, lo));
    widest = heapPushPop(heap, makeBox(x, d, hi));
  }
  heapPush(heap, widest);
  return heap.map((b) => representative(x, d, b)).sort((a, b) => a - b);
}
