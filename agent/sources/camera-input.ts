// A camera, stream URL or video file (through ffmpeg) as the run's source. A video file resumes at the
// frame its checkpoint reached if it is the same file (path, size, mtime, fps); live sources go on.

import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Fit } from '../frames/decode.ts';
import type { Overflow } from './dir.ts';
import { CameraError, CameraSource, checkFfmpeg, isLive } from './camera.ts';
import type { Counters, Frame, Source } from './source.ts';

export interface CameraInputOptions {
  input: string;
  fps: number;
  captureSize?: string;
  ffmpeg: string;
  stallMs: number;
  size: number;
  fit: Fit;
  overflow: Overflow;
  backlog: number;
  log: (line: string) => void;
}

/** Checks what can be checked before anything is loaded: ffmpeg runs, a video file exists. */
export function checkCamera(input: string, ffmpeg: string): void {
  checkFfmpeg(ffmpeg);
  if (!isLive(input) && !(existsSync(input) && statSync(input).isFile())) {
    throw new CameraError(`--camera ${input}: no such video file; a live source is a device (/dev/video0) or a URL (rtsp://...)`);
  }
}

/** A video file's identity as a 31-bit number (checkpoint counters are numbers). */
function fileIdentity(file: string, fps: number): number {
  const st = statSync(file);
  let h = 2166136261;
  // fps too: positions count sampled frames.
  for (const ch of `${path.resolve(file)}|${st.size}|${Math.floor(st.mtimeMs)}|${fps}`) h = Math.imul(h ^ ch.charCodeAt(0), 16777619);
  return (h >>> 1) || 1;
}

export class CameraInput implements Source {
  private cam: CameraSource;
  private readonly fileId: number;
  private readonly droppedBase: number;
  private readonly from: number;

  constructor(
    private o: CameraInputOptions,
    counters: Counters,
  ) {
    this.fileId = isLive(o.input) ? 0 : fileIdentity(o.input, o.fps);
    this.from = this.fileId && this.fileId === counters.cameraFile ? counters.cameraPosition : 0;
    if (this.fileId && counters.cameraFile && this.fileId !== counters.cameraFile) o.log(`--camera ${o.input}: not the video the checkpoint was reading; starting at its first frame`);
    counters.cameraFile = this.fileId;
    counters.cameraPosition = this.from;
    this.droppedBase = counters.dropped;
    this.cam = new CameraSource({
      input: o.input, fps: o.fps, size: o.size, fit: o.fit, captureSize: o.captureSize, ffmpeg: o.ffmpeg,
      overflow: o.overflow, backlog: o.backlog, stallMs: o.stallMs, backoffMs: [1000, 30000], skip: this.from, log: o.log,
    });
  }

  get ended(): string {
    return this.cam.ended ? this.cam.endReason : '';
  }
  get failed(): boolean {
    return this.cam.failed;
  }
  get busy(): boolean {
    return false;
  }
  get waiting(): number {
    return this.cam.pending;
  }
  get progress(): null {
    return null;
  }

  describe(): string {
    return `reading ${this.o.input} through ffmpeg${this.o.fps ? ` at ${this.o.fps} fps` : ''}${this.from ? ` from frame ${this.from + 1}` : ''}`;
  }

  where(key: string): string {
    return `camera:${key}`;
  }

  async start(): Promise<void> {
    this.cam.start();
  }

  next(waitMs: number): Promise<Frame | null> {
    return this.cam.next(waitMs);
  }

  save(counters: Counters): void {
    // Frames still queued were not learnt: a resume reads them again.
    counters.cameraPosition = this.cam.position - this.cam.pending;
    counters.dropped = this.droppedBase + this.cam.dropped;
  }

  arrivalDone(): void {}
  pendingFrames(): [] {
    return [];
  }
  committed(): void {}

  close(): Promise<void> {
    return this.cam.close();
  }
}
