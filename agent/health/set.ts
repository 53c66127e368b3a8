// The health set: frames kept aside from the stream to measure each candidate encoder on, stored in
// <state>/health-set.safetensors so it survives restarts. A reservoir (Algorithm R) over every frame
// the agent learns from keeps a uniform sample of the whole stream; the `active` set that candidates
// are measured on is a snapshot of it, renewed only right after a publish (when the trainer's weights
// are the published model's and its figures can be measured again on the new snapshot), so a candidate
// and the published model are always compared on the same frames.

import { existsSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { sha256, writeFileAtomic } from '../../core/atomic.ts';
import { decodeSafetensors, encodeSafetensors } from '../../core/codecs/safetensors.ts';
import { Rng } from '../../core/rng.ts';
import { readFileInside } from '../../core/safe-read.ts';
import type { HealthFigures } from './measure.ts';

const FORMAT = 'ssocl-health-set/1';

/** The published model's figures on the active set, for the next gate's relative checks. */
export interface Reference {
  /** sha256 of the published model they were measured on. */
  model: string;
  step: number;
  figures: HealthFigures;
}

export class HealthSet {
  private reservoir: Uint8Array[] = [];
  private seen = 0;
  private active: Uint8Array[] = [];
  private activeDigest = '';
  reference: Reference | null = null;

  constructor(
    readonly file: string,
    /** Frames are CHW uint8 at this training size. */
    readonly size: number,
    readonly capacity: number,
    private seed = 0,
  ) {}

  /**
   * The set saved in `file`, or an empty one where there is none, `fresh` asks to start over, or the
   * file cannot be used (the health set is a measuring aid, never a reason to stop the agent).
   */
  static load(file: string, size: number, capacity: number, fresh: boolean, log: (line: string) => void): HealthSet {
    // A temp file of a write a kill interrupted (the file it was replacing is whole).
    const dir = path.dirname(file);
    if (existsSync(dir)) for (const f of readdirSync(dir)) if (f.startsWith(`.${path.basename(file)}.tmp-`)) rmSync(path.join(dir, f), { force: true });
    if (fresh || !existsSync(file)) return new HealthSet(file, size, capacity);
    try {
      return HealthSet.read(file, size, capacity) ?? new HealthSet(file, size, capacity);
    } catch (e) {
      log(`health set ${file} could not be used (${(e as Error).message}): starting a new one`);
      rmSync(file, { force: true });
      return new HealthSet(file, size, capacity);
    }
  }

  /**
   * The set saved in `file` as it is, changing nothing (`ssocl models rollback` measures on it); null
   * when there is none; throws when it cannot be used (a link, a FIFO, damaged, another frame size).
   */
  static read(file: string, size: number, capacity = Infinity): HealthSet | null {
    const bytes = readFileInside(file, { maxBytes: 1 << 30 });
    if (!bytes) return null;
    const s = new HealthSet(file, size, Number.isFinite(capacity) ? capacity : 0);
    const { tensors, metadata } = decodeSafetensors(bytes);
    if (metadata.format !== FORMAT) throw new Error(`format ${metadata.format}, expected ${FORMAT}`);
    const per = 3 * size * size;
    const rows = (name: string): Uint8Array[] => {
      const t = tensors.get(name);
      if (!t) return [];
      if (t.dtype !== 'U8' || t.data.length % per) throw new Error(`${name}: not uint8 frames of 3x${size}x${size}`);
      return Array.from({ length: t.data.length / per }, (_, i) => (t.data as Uint8Array).slice(i * per, (i + 1) * per));
    };
    s.reservoir = rows('reservoir').slice(0, capacity);
    s.active = rows('active').slice(0, capacity);
    s.seen = Math.max(Number(metadata.seen) || 0, s.reservoir.length);
    s.seed = Number(metadata.seed) || 0;
    s.activeDigest = s.hashOf(s.active);
    const ref = metadata.reference ? (JSON.parse(metadata.reference) as Reference) : null;
    s.reference = ref && ref.figures?.set === s.activeDigest ? ref : null;
    return s;
  }

  private hashOf(frames: Uint8Array[]): string {
    return frames.length ? sha256(Buffer.concat(frames)).slice(0, 16) : '';
  }

  /** Frames offered so far (the whole stream this set samples). */
  get offered(): number {
    return this.seen;
  }

  /** Offers a frame to the reservoir: kept with probability capacity / frames offered so far. */
  offer(image: Uint8Array): void {
    this.seen++;
    if (this.reservoir.length < this.capacity) {
      this.reservoir.push(image.slice());
      return;
    }
    // A generator seeded by the frame's position, so no RNG state needs saving across restarts.
    const j = Math.floor(new Rng((this.seed ^ Math.imul(this.seen, 0x9e3779b1)) >>> 0).uniform() * this.seen);
    if (j < this.capacity) this.reservoir[j] = image.slice();
  }

  /** Digest of the active set (figures are compared only on the same one). */
  get digest(): string {
    return this.activeDigest;
  }

  /** The frames candidates are measured on (concatenated), their count and digest. */
  get frames(): { images: Uint8Array; count: number; digest: string } {
    return { images: Buffer.concat(this.active), count: this.active.length, digest: this.activeDigest };
  }

  /** The reservoir has frames the active set does not (a renewal would change it). */
  get stale(): boolean {
    return this.hashOf(this.reservoir) !== this.activeDigest;
  }

  /** The active set becomes the reservoir as it is now; figures measured on the old one no longer apply. */
  renew(): void {
    this.active = this.reservoir.slice();
    const d = this.hashOf(this.active);
    if (d !== this.activeDigest) this.reference = null;
    this.activeDigest = d;
  }

  /** Written atomically: a kill leaves the previous file whole. */
  save(): void {
    const stack = (frames: Uint8Array[]) => ({ dtype: 'U8' as const, shape: [frames.length, 3, this.size, this.size], data: frames.length ? Buffer.concat(frames) : new Uint8Array(0) });
    const meta: Record<string, string> = { format: FORMAT, size: String(this.size), seen: String(this.seen), seed: String(this.seed) };
    if (this.reference) meta.reference = JSON.stringify(this.reference);
    writeFileAtomic(this.file, encodeSafetensors(new Map([['active', stack(this.active)], ['reservoir', stack(this.reservoir)]]), meta));
  }
}
