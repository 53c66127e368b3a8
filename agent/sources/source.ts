// What the run loop reads frames from. The loop does not know which kind of source it has: a watched
// directory, a camera or video through ffmpeg, an in-process data set stream (and any source added
// later) all hand it decoded images at training size, say when they have ended, keep their own resume
// position in the checkpoint counters, and are told when a checkpoint holds what was learnt.

import type { PendingFrame } from '../trainer/checkpoint.ts';

/** A decoded frame: CHW uint8 at the training size. `ref` is the source's own handle (e.g. its file). */
export interface Frame {
  key: string;
  image: Uint8Array;
  ref?: unknown;
}

/** Counts shared by the run and its sources, saved in every checkpoint and restored on resume. */
export interface Counters {
  framesIngested: number;
  quarantined: number;
  dropped: number;
  refused: number;
  skippedSteps: number;
  datasetPosition: number;
  cameraPosition: number;
  cameraFile: number;
  evaluatedPct: number;
  [more: string]: number;
}

export function newCounters(): Counters {
  return { framesIngested: 0, quarantined: 0, dropped: 0, refused: 0, skippedSteps: 0, datasetPosition: 0, cameraPosition: 0, cameraFile: 0, evaluatedPct: 0 };
}

/** Where a finite folder's passes stand (run --watch --passes N). */
export interface PassState {
  /** 1-based, of `of`. */
  index: number;
  of: number;
  /** Frames learnt in this pass so far, of `total` known now. */
  frames: number;
  total: number;
}

export interface Source {
  /** What is read, for the start line ("watching DIR (N frames waiting)"). */
  describe(): string;
  /** Begins reading (after the run has resumed its state). */
  start(): Promise<void>;
  /** The next frame, or null if none came within `waitMs` (or the source has ended: see `ended`). */
  next(waitMs: number): Promise<Frame | null>;
  /** Why no frame will ever come again ('' while one may). */
  readonly ended: string;
  /** The end was a failure (the run reports it after saving what was learnt). */
  readonly failed: boolean;
  /** A frame may still come without anything new arriving (so the source is not idle yet). */
  readonly busy: boolean;
  /** When the source last took something in, good or not (--exit-when-idle counts from it too). */
  readonly lastActivity?: number;
  /** Frames read but not yet handed out, for the progress line. */
  readonly waiting: number;
  /** How far through a finite stream (inline evaluation at fractions of it), or null. */
  readonly progress: { done: number; total: number } | null;
  /** Where an emitted embedding says a frame came from. */
  where(key: string): string;
  /** Writes the resume position into the counters saved with each checkpoint. */
  save(counters: Counters): void;
  /** An arrival's frames were trained on; `learnt` false when every update was skipped. */
  arrivalDone(frames: Frame[], learnt: boolean): void;
  /** Frames learnt since the previous checkpoint, recorded in the next one. */
  pendingFrames(): PendingFrame[];
  /** The checkpoint `file` holding everything learnt so far was written and verified. */
  committed(file: string): void;
  /** A folder's passes (run --watch), or undefined for sources without them. */
  readonly pass?: PassState;
  /** Starts the next pass once the source is drained; false when there is none. */
  nextPass?(): boolean;
  /** Stops reading; a pending `next` returns null. */
  close(): Promise<void>;
}

/** The defaults for sources whose frames are not files (nothing to commit). */
export abstract class StreamSource implements Source {
  ended = '';
  failed = false;
  busy = false;
  abstract describe(): string;
  abstract next(waitMs: number): Promise<Frame | null>;
  abstract save(counters: Counters): void;
  abstract where(key: string): string;
  get waiting(): number {
    return 0;
  }
  get progress(): { done: number; total: number } | null {
    return null;
  }
  async start(): Promise<void> {}
  arrivalDone(): void {}
  pendingFrames(): PendingFrame[] {
    return [];
  }
  committed(): void {}
  async close(): Promise<void> {}
}
