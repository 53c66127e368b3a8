// The `dataset` source: an in-process replay of images already in memory (a stream order over a
// labelled set, or the demo set), for benchmarks and tests. Images are resized from the set's size to
// the training size the artifacts were built for; the position is saved for resume.

import { resizeChw } from '../frames/decode.ts';
import { StreamSource, type Counters, type Frame } from './source.ts';

/** A data set stream: `order` indexes CHW uint8 images of `size` x `size` packed in `images`. */
export interface DatasetStream {
  label: string;
  images: Uint8Array;
  order: number[];
  size: number;
}

export class DatasetSource extends StreamSource {
  private pos: number;
  private readonly per: number;

  constructor(
    private stream: DatasetStream,
    /** The training size (the manifest's). */
    private size: number,
    counters: Counters,
  ) {
    super();
    this.per = 3 * stream.size * stream.size;
    if (stream.images.length % this.per) throw new Error(`dataset ${stream.label}: ${stream.images.length} bytes is not a whole number of ${stream.size}x${stream.size} images`);
    this.pos = counters.datasetPosition;
  }

  get remaining(): number {
    return this.stream.order.length - this.pos;
  }

  get progress(): { done: number; total: number } {
    return { done: this.pos, total: this.stream.order.length };
  }

  describe(): string {
    return `replaying ${this.stream.label} (${this.remaining} frames left)`;
  }

  where(key: string): string {
    return `dataset:${key}`;
  }

  async next(): Promise<Frame | null> {
    if (this.pos >= this.stream.order.length) {
      this.ended ||= `end of the ${this.stream.label} stream`;
      return null;
    }
    const i = this.stream.order[this.pos++];
    const image = this.stream.images.subarray(i * this.per, (i + 1) * this.per);
    return { key: `#${i}`, image: this.size === this.stream.size ? image : await resizeChw(image, this.stream.size, this.size) };
  }

  save(counters: Counters): void {
    counters.datasetPosition = this.pos;
  }
}
