// The `dataset` source: an in-process replay of images already in memory (a stream order over a
// labelled set, or the demo set), for benchmarks and tests. Same pull interface as the dir source.

export interface DatasetFrame {
  key: string;
  image: Uint8Array;
}

export class DatasetSource {
  private pos = 0;
  constructor(
    private images: Uint8Array,
    private order: number[],
    private per: number,
  ) {}

  get remaining(): number {
    return this.order.length - this.pos;
  }

  async next(): Promise<DatasetFrame | null> {
    if (this.pos >= this.order.length) return null;
    const i = this.order[this.pos++];
    return { key: `#${i}`, image: this.images.subarray(i * this.per, (i + 1) * this.per) };
  }

  /** Position for checkpoints (resume continues the stream). */
  get position(): number {
    return this.pos;
  }
  set position(p: number) {
    this.pos = p;
  }
}
