// Hot reload: a model file (e.g. models/latest.onnx, which the agent replaces by rename) watched by
// polling its identity (inode, size, mtime). A changed file is read once, opened and checked beside
// the current encoder; only a complete, working model replaces it, between batches. Each batch runs
// under `use()`, which pins the encoder it started with, so no frame ever sees a half-loaded model
// and the version recorded with a result is the one that computed it. Models are checked on real
// frames too (the first batch at start, the latest batch on reload): a model finite on the probe
// images and NaN on the stream's frames is refused.

import { statSync } from 'node:fs';
import { Encoder, EncoderError, type EncoderOptions } from './encoder.ts';

function identity(file: string): string | null {
  try {
    const st = statSync(file);
    return `${st.ino}:${st.size}:${st.mtimeMs}`;
  } catch {
    return null;
  }
}

export class LiveEncoder {
  private cur!: Encoder;
  private seen: string | null = null;
  private failed: string | null = null;
  /** Real frames (uint8 CHW) a reloaded model must give finite outputs on: the latest batch run. */
  private reference: { images: Uint8Array; count: number } | null = null;
  private pins = new Map<Encoder, number>();
  private retired = new Set<Encoder>();
  private timer: NodeJS.Timeout | null = null;
  private checking: Promise<void> | null = null;
  /** Called after each swap, with the new encoder. */
  onSwap: ((e: Encoder, previous: Encoder) => void) | null = null;
  swaps = 0;

  private constructor(
    readonly file: string,
    private o: EncoderOptions & { log: (msg: string) => void },
  ) {}

  static async open(file: string, o: EncoderOptions & { log: (msg: string) => void }, pollMs = 1000): Promise<LiveEncoder> {
    const l = new LiveEncoder(file, o);
    l.seen = identity(file);
    l.cur = await Encoder.open(file, o);
    if (pollMs > 0) {
      l.timer = setInterval(() => void l.check(), pollMs);
      l.timer.unref();
    }
    return l;
  }

  get current(): Encoder {
    return this.cur;
  }

  /**
   * The current model's outputs on these real frames must be finite (EncoderError, refused, when not);
   * they become the frames a reloaded model is checked on.
   */
  async checkOn(images: Uint8Array, count: number): Promise<void> {
    const bad = await this.cur.nonFiniteOn(images, count);
    if (bad) throw new EncoderError(`${this.file}: refused: ${bad}`, true);
    this.remember(images, count);
  }

  /** The frames a reloaded model is checked on from now (the stream's latest: what it will be given next). */
  remember(images: Uint8Array, count: number): void {
    this.reference = { images: images.slice(), count };
  }

  get checked(): boolean {
    return this.reference !== null;
  }

  /** Looks at the file now; resolves once a changed model has been loaded (or refused). */
  check(): Promise<void> {
    this.checking ??= this.reload().finally(() => (this.checking = null));
    return this.checking;
  }

  private async reload(): Promise<void> {
    const id = identity(this.file);
    if (id === null || id === this.seen || id === this.failed) return;
    let next: Encoder;
    try {
      next = await Encoder.open(this.file, this.o);
      const bad = this.reference && next.size === this.cur.size ? await next.nonFiniteOn(this.reference.images, this.reference.count) : null;
      if (bad) {
        await next.release();
        throw new EncoderError(`${this.file}: refused: ${bad}`, true);
      }
    } catch (e) {
      // E.g. a writer that does not rename into place, or a complete model that fails validation (bad
      // shapes, non-finite probe outputs): keep serving the old model, look again at the next poll
      // (said once per version of the file).
      const how = e instanceof EncoderError && e.refused ? 'was refused' : 'could not be loaded';
      if (this.failed !== id) this.o.log(`model ${this.file} changed but ${how}, keeping ${this.cur.version.sha256}: ${(e as Error).message}`);
      this.failed = id;
      return;
    }
    // A model of another shape (input size, output sizes) would break what this process holds (a matrix
    // of one width, support embeddings, buffer images at one size): keep the current one.
    const shape = (e: Encoder) => `${e.size}px -> features ${e.dims.features}, embedding ${e.dims.embedding}`;
    if (shape(next) !== shape(this.cur)) {
      this.o.log(`model ${this.file} changed shape (${shape(this.cur)} -> ${shape(next)}); keeping ${this.cur.version.sha256} (restart to use it)`);
      this.failed = id;
      await next.release();
      return;
    }
    this.seen = id;
    if (next.version.sha256 === this.cur.version.sha256) {
      await next.release();
      return;
    }
    const prev = this.cur;
    this.cur = next;
    this.swaps++;
    this.retire(prev);
    this.onSwap?.(next, prev);
  }

  private retire(e: Encoder): void {
    if (this.pins.get(e)) this.retired.add(e);
    else void e.release();
  }

  /** Runs `fn` with the current encoder, which stays loaded until `fn` is done. */
  async use<T>(fn: (e: Encoder) => Promise<T>): Promise<T> {
    const e = this.cur;
    this.pins.set(e, (this.pins.get(e) ?? 0) + 1);
    try {
      return await fn(e);
    } finally {
      const n = this.pins.get(e)! - 1;
      if (n) this.pins.set(e, n);
      else {
        this.pins.delete(e);
        if (this.retired.delete(e)) await e.release();
      }
    }
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.checking;
    await this.cur.release();
  }
}
