// Label-free health figures of a set of embeddings (rows of an [n, d] matrix): the effective rank
// (RankMe: exp of the entropy of the singular values normalised to sum 1), the mean pairwise cosine
// similarity, and the alignment of two views (mean cosine of row i of A with row i of B). Pure
// functions in float64; the singular values come from a small Jacobi eigen-solver on a Gram matrix.

/**
 * Eigenvalues of a symmetric k x k matrix (row-major, float64; destroyed), by cyclic Jacobi rotations.
 * Exact to rounding for the sizes used here (k <= a few hundred), with no dependency.
 */
export function symmetricEigenvalues(a: Float64Array, k: number, maxSweeps = 60): Float64Array {
  if (a.length !== k * k) throw new Error(`symmetricEigenvalues: ${a.length} values for ${k} x ${k}`);
  let total = 0;
  for (let i = 0; i < a.length; i++) total += a[i] * a[i];
  for (let sweep = 0; sweep < maxSweeps; sweep++) {
    let off = 0;
    for (let p = 0; p < k; p++) for (let q = p + 1; q < k; q++) off += a[p * k + q] * a[p * k + q];
    if (off <= 1e-30 * total || off === 0) break;
    for (let p = 0; p < k - 1; p++) {
      for (let q = p + 1; q < k; q++) {
        const apq = a[p * k + q];
        if (apq === 0) continue;
        const app = a[p * k + p];
        const aqq = a[q * k + q];
        // Rotation angle that zeroes a[p][q] (the smaller root, for stability).
        const theta = (aqq - app) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let r = 0; r < k; r++) {
          const arp = a[r * k + p];
          const arq = a[r * k + q];
          a[r * k + p] = c * arp - s * arq;
          a[r * k + q] = s * arp + c * arq;
        }
        for (let r = 0; r < k; r++) {
          const apr = a[p * k + r];
          const aqr = a[q * k + r];
          a[p * k + r] = c * apr - s * aqr;
          a[q * k + r] = s * apr + c * aqr;
        }
      }
    }
  }
  const ev = new Float64Array(k);
  for (let i = 0; i < k; i++) ev[i] = a[i * k + i];
  return ev.sort().reverse();
}

/**
 * Singular values of the [n, d] matrix x (descending): square roots of the eigenvalues of the Gram
 * matrix X^T X (d x d), or of X X^T (n x n) when that is smaller; both have the same non-zero eigenvalues,
 * and the smaller one keeps a 512-d encoder on 256 frames cheap.
 */
export function singularValues(x: ArrayLike<number>, n: number, d: number): Float64Array {
  if (x.length !== n * d) throw new Error(`singularValues: ${x.length} values for ${n} x ${d}`);
  const byCols = d <= n;
  const k = byCols ? d : n;
  const len = byCols ? n : d;
  const at = byCols ? (i: number, r: number) => x[r * d + i] : (i: number, r: number) => x[i * d + r];
  const g = new Float64Array(k * k);
  for (let i = 0; i < k; i++) {
    for (let j = i; j < k; j++) {
      let s = 0;
      for (let r = 0; r < len; r++) s += at(i, r) * at(j, r);
      g[i * k + j] = s;
      g[j * k + i] = s;
    }
  }
  const ev = symmetricEigenvalues(g, k);
  // Eigenvalues at rounding level of the largest are zeros: their square roots (~1e-8 of the largest
  // singular value) would otherwise add entropy to a matrix of lower rank.
  const floor = Math.max(ev[0], 0) * 1e-13;
  return ev.map((v) => (v > floor ? Math.sqrt(v) : 0));
}

/** RankMe (Garrido et al. 2023): exp(-sum p log p), p = singular values / their sum; 1 for a rank-1 matrix, k for k equal ones. */
export function effectiveRank(sv: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < sv.length; i++) sum += sv[i];
  if (!(sum > 0)) return 0;
  let h = 0;
  for (let i = 0; i < sv.length; i++) {
    const p = sv[i] / sum;
    if (p > 0) h -= p * Math.log(p);
  }
  return Math.exp(h);
}

/** Rows scaled to unit length, float64 (a zero row stays zero). */
function unitRows(x: ArrayLike<number>, n: number, d: number): Float64Array {
  const u = new Float64Array(n * d);
  for (let r = 0; r < n; r++) {
    let s = 0;
    for (let i = 0; i < d; i++) s += x[r * d + i] * x[r * d + i];
    const inv = s > 0 ? 1 / Math.sqrt(s) : 0;
    for (let i = 0; i < d; i++) u[r * d + i] = x[r * d + i] * inv;
  }
  return u;
}

/** Mean cosine similarity over all pairs of distinct rows: (|sum of unit rows|^2 - n) / (n (n - 1)), O(n d). */
export function meanPairwiseCosine(x: ArrayLike<number>, n: number, d: number): number {
  if (n < 2) return NaN;
  const u = unitRows(x, n, d);
  const sum = new Float64Array(d);
  let self = 0;
  for (let r = 0; r < n; r++) {
    for (let i = 0; i < d; i++) {
      sum[i] += u[r * d + i];
      self += u[r * d + i] * u[r * d + i];
    }
  }
  let s2 = 0;
  for (let i = 0; i < d; i++) s2 += sum[i] * sum[i];
  return (s2 - self) / (n * (n - 1));
}

/** Mean cosine between row i of a and row i of b (two views of the same frame). */
export function alignment(a: ArrayLike<number>, b: ArrayLike<number>, n: number, d: number): number {
  const ua = unitRows(a, n, d);
  const ub = unitRows(b, n, d);
  let s = 0;
  for (let i = 0; i < n * d; i++) s += ua[i] * ub[i];
  return s / n;
}
