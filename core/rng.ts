// Seeded random numbers (parameter init, the agent's sampling and augmentation, tests): xoshiro128**
// with a splitmix32 seed expansion, so the same seed gives the same bytes on every platform.

export class Rng {
  // The four state words as int32 fields rather than a Uint32Array: V8 keeps them in registers-friendly
  // small integers, about 4x faster per draw (the paper's step draws ~1.6M words per arrival).
  private s0 = 0;
  private s1 = 0;
  private s2 = 0;
  private s3 = 0;
  private spare: number | null = null;

  constructor(seed: number) {
    const s = [0, 0, 0, 0];
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      s[i] = (z ^ (z >>> 16)) >>> 0;
    }
    this.state = [...s, NaN];
  }

  /** The full generator state, for checkpoints: four unsigned 32-bit words and the spare normal (NaN if none). */
  get state(): number[] {
    return [this.s0 >>> 0, this.s1 >>> 0, this.s2 >>> 0, this.s3 >>> 0, this.spare === null ? NaN : this.spare];
  }
  set state(v: number[]) {
    // ToUint32 as Uint32Array.set did (NaN and missing words become 0), kept as int32.
    this.s0 = v[0] | 0;
    this.s1 = v[1] | 0;
    this.s2 = v[2] | 0;
    this.s3 = v[3] | 0;
    this.spare = Number.isNaN(v[4]) || v[4] === undefined ? null : v[4];
  }

  nextU32(): number {
    const s1 = this.s1;
    const r = Math.imul(s1, 5);
    const result = Math.imul((r << 7) | (r >>> 25), 9) >>> 0;
    const t = s1 << 9;
    const s2 = this.s2 ^ this.s0;
    const s3 = this.s3 ^ s1;
    this.s1 = s1 ^ s2;
    this.s0 = this.s0 ^ s3;
    this.s2 = s2 ^ t;
    this.s3 = (s3 << 11) | (s3 >>> 21);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  uniform(): number {
    const hi = this.nextU32() >>> 5;
    const lo = this.nextU32() >>> 6;
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  range(lo: number, hi: number): number {
    return lo + (hi - lo) * this.uniform();
  }

  int(n: number): number {
    return Math.floor(this.uniform() * n);
  }

  /** Standard normal (Box-Muller, both values used). */
  normal(): number {
    if (this.spare !== null) {
      const v = this.spare;
      this.spare = null;
      return v;
    }
    let u = 0;
    while (u === 0) u = this.uniform();
    const v = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }
}

/** n of 0..total-1 drawn without replacement with a fixed seed (all of them, in order, when n >= total). */
export function sampleIndices(total: number, n: number, seed: number): number[] {
  const idx = [...Array(total).keys()];
  if (n >= total) return idx;
  const rng = new Rng(seed);
  for (let i = 0; i < n; i++) {
    const j = i + rng.int(total - i);
    [idx[i], idx[j]] = [idx[j], idx[i]];
  }
  return idx.slice(0, n);
}
