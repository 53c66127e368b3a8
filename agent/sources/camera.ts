// The `camera` source: frames from a camera device, a network stream or a video file through an ffmpeg
// child process. ffmpeg samples at --fps, scales (cover or letterbox) to the training size and writes
// raw RGB frames to a pipe: no temporary files, only small frames cross into Node.
//
// Live sources (devices and URLs) reconnect with back-off when ffmpeg exits or the stream stalls; a file
// ends cleanly. When frames come faster than training, `block` stops reading the pipe (a file waits, so
// nothing is lost; a live source then drops frames inside ffmpeg or the driver) and `drop-oldest` keeps
// reading and drops the oldest waiting frame beyond the backlog, counted.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { statSync } from 'node:fs';
import type { Fit } from '../frames/decode.ts';
import type { Overflow } from './dir.ts';

export interface CameraFrame {
  key: string;
  /** uint8 CHW RGB at size x size. */
  image: Uint8Array;
}

export interface CameraOptions {
  input: string;
  /** Frames per second sampled from the input (0: every frame). */
  fps: number;
  /** Output side (the training size). */
  size: number;
  fit: Fit;
  /** Capture resolution asked of a camera device (v4l2 -video_size), e.g. '640x480'. */
  captureSize?: string;
  ffmpeg: string;
  overflow: Overflow;
  backlog: number;
  /** Live sources: no frame for this long means the stream stalled (ffmpeg is restarted). */
  stallMs: number;
  /** Live sources: first and longest wait between reconnects. */
  backoffMs: [number, number];
  /** Frames to skip at the start (a file resumed where a checkpoint left it). */
  skip: number;
  log: (line: string) => void;
}

export class CameraError extends Error {
  override name = 'CameraError';
}

/** Devices and URLs are live (reconnect); anything else is a file (ends). */
export function isLive(input: string): boolean {
  return input.startsWith('/dev/') || /^[a-z][a-z0-9+.-]*:\/\//i.test(input);
}

/** Fails with an install hint when the ffmpeg binary cannot run. */
export function checkFfmpeg(bin: string): string {
  const r = spawnSync(bin, ['-hide_banner', '-version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    throw new CameraError(`cannot run ffmpeg ('${bin}': ${r.error ? (r.error as NodeJS.ErrnoException).code ?? r.error.message : `exit ${r.status}`}); install it (Debian/Ubuntu: apt-get install ffmpeg) or point --ffmpeg at it`);
  }
  return r.stdout.split('\n')[0];
}

export function ffmpegArgs(o: Pick<CameraOptions, 'input' | 'fps' | 'size' | 'fit' | 'captureSize'>): string[] {
  const s = o.size;
  const fit =
    o.fit === 'cover'
      ? `scale=${s}:${s}:force_original_aspect_ratio=increase,crop=${s}:${s}`
      : `scale=${s}:${s}:force_original_aspect_ratio=decrease,pad=${s}:${s}:(ow-iw)/2:(oh-ih)/2`;
  const pre: string[] = [];
  if (o.input.startsWith('/dev/video')) pre.push('-f', 'v4l2', ...(o.captureSize ? ['-video_size', o.captureSize] : []));
  if (/^rtsps?:\/\//i.test(o.input)) pre.push('-rtsp_transport', 'tcp');
  const filters = [...(o.fps > 0 ? [`fps=${o.fps}`] : []), fit];
  return ['-hide_banner', '-loglevel', 'error', '-nostdin', ...pre, '-i', o.input, '-an', '-vf', filters.join(','), '-pix_fmt', 'rgb24', '-f', 'rawvideo', 'pipe:1'];
}

/** One frame of ffmpeg's rgb24 output (HWC rows) as CHW planes, written into `out` from `at`. */
export function rgb24ToChw(hwc: Uint8Array, plane: number, out: Uint8Array, at = 0): void {
  for (let p = 0; p < plane; p++) {
    out[at + p] = hwc[3 * p];
    out[at + plane + p] = hwc[3 * p + 1];
    out[at + 2 * plane + p] = hwc[3 * p + 2];
  }
}

export class CameraSource {
  private queue: CameraFrame[] = [];
  private waiters: ((f: CameraFrame | null) => void)[] = [];
  private child: ChildProcess | null = null;
  private partial: Buffer[] = [];
  private partialBytes = 0;
  private closed = false;
  private stallTimer: NodeJS.Timeout | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private backoff: number;
  private stderrTail = '';
  /** Frames taken from ffmpeg so far (file position, for resume), skipped ones included. */
  position = 0;
  dropped = 0;
  connects = 0;
  /** A file has ended (or failed): no more frames will come. */
  ended = false;
  /** The file ended because ffmpeg failed, not at its end. */
  failed = false;
  endReason = '';
  readonly live: boolean;
  private readonly frameBytes: number;

  constructor(readonly o: CameraOptions) {
    this.live = isLive(o.input);
    this.frameBytes = 3 * o.size * o.size;
    this.backoff = o.backoffMs[0];
    if (!this.live) {
      try {
        if (!statSync(o.input).isFile()) throw new Error('not a file');
      } catch (e) {
        throw new CameraError(`--camera ${o.input}: no such video file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); a live source is a device (/dev/video0) or a URL (rtsp://...)`);
      }
    }
  }

  start(): void {
    this.connect();
  }

  private connect(): void {
    if (this.closed) return;
    this.connects++;
    this.partial = [];
    this.partialBytes = 0;
    this.stderrTail = '';
    const child = spawn(this.o.ffmpeg, ffmpegArgs(this.o), { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    child.on('error', (e) => this.o.log(`ffmpeg: ${(e as Error).message}`));
    child.stderr!.on('data', (c: Buffer) => (this.stderrTail = (this.stderrTail + c.toString()).slice(-600)));
    child.stdout!.on('data', (c: Buffer) => this.onData(c));
    child.on('close', (code, signal) => this.onExit(child, code, signal));
    this.armStall();
  }

  private armStall(): void {
    if (!this.live) return;
    if (this.stallTimer) clearTimeout(this.stallTimer);
    this.stallTimer = setTimeout(() => {
      if (this.closed || !this.child) return;
      // Blocked by our own back-pressure is not a stall.
      if (this.child.stdout!.isPaused()) return this.armStall();
      this.o.log(`camera ${this.o.input}: no frame for ${this.o.stallMs / 1000}s, restarting ffmpeg`);
      this.child.kill('SIGKILL');
    }, this.o.stallMs);
    this.stallTimer.unref();
  }

  private onData(c: Buffer): void {
    if (this.closed) return;
    this.partial.push(c);
    this.partialBytes += c.length;
    if (this.partialBytes < this.frameBytes) return;
    let buf = Buffer.concat(this.partial);
    const s = this.o.size;
    const plane = s * s;
    while (buf.length >= this.frameBytes) {
      const hwc = buf.subarray(0, this.frameBytes);
      buf = buf.subarray(this.frameBytes);
      this.position++;
      this.backoff = this.o.backoffMs[0];
      this.armStall();
      if (this.position <= this.o.skip) continue;
      const chw = new Uint8Array(this.frameBytes);
      rgb24ToChw(hwc, plane, chw);
      this.push({ key: `${this.live ? 'live' : 'frame'}-${this.connects}-${this.position}`, image: chw });
    }
    this.partial = buf.length ? [Buffer.from(buf)] : [];
    this.partialBytes = buf.length;
  }

  private push(f: CameraFrame): void {
    const w = this.waiters.shift();
    if (w) return w(f);
    this.queue.push(f);
    if (this.o.overflow === 'drop-oldest') {
      if (this.queue.length > this.o.backlog) {
        this.queue.shift();
        this.dropped++;
      }
    } else if (this.queue.length >= this.o.backlog) this.child?.stdout?.pause();
  }

  private onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.child !== child) return;
    this.child = null;
    if (this.stallTimer) clearTimeout(this.stallTimer);
    if (this.closed) return;
    const why = signal ? `killed by ${signal}` : `exit code ${code}`;
    const detail = this.stderrTail.trim().split('\n').slice(-2).join(' | ');
    if (!this.live) {
      this.ended = true;
      this.failed = code !== 0;
      this.endReason = code === 0 ? `end of ${this.o.input} (${this.position} frames)` : `ffmpeg could not read ${this.o.input} (${why}${detail ? `: ${detail}` : ''}) after ${this.position} frames`;
      for (const w of this.waiters.splice(0)) w(null);
      return;
    }
    this.o.log(`camera ${this.o.input}: ffmpeg stopped (${why}${detail ? `: ${detail}` : ''}); reconnecting in ${(this.backoff / 1000).toFixed(1)}s`);
    this.retryTimer = setTimeout(() => this.connect(), this.backoff);
    this.retryTimer.unref();
    this.backoff = Math.min(this.backoff * 2, this.o.backoffMs[1]);
  }

  get pending(): number {
    return this.queue.length;
  }

  /** Next frame; null on timeout or once a file has ended and its frames are taken. */
  next(timeoutMs: number): Promise<CameraFrame | null> {
    const f = this.queue.shift();
    if (f) {
      if (this.queue.length < this.o.backlog / 2) this.child?.stdout?.resume();
      return Promise.resolve(f);
    }
    this.child?.stdout?.resume();
    if (this.ended || this.closed) return Promise.resolve(null);
    return new Promise((resolve) => {
      const w = (x: CameraFrame | null) => {
        clearTimeout(timer);
        resolve(x);
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        resolve(null);
      }, timeoutMs);
      this.waiters.push(w);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.stallTimer) clearTimeout(this.stallTimer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    for (const w of this.waiters.splice(0)) w(null);
    const c = this.child;
    if (c && c.exitCode === null && c.signalCode === null) {
      // 'exit', not 'close': a paused stdout (block overflow) would never end, so close would never come.
      const gone = new Promise((r) => c.once('exit', r));
      c.stdout?.removeAllListeners('data');
      c.stdout?.destroy();
      c.kill('SIGTERM');
      const t = setTimeout(() => c.kill('SIGKILL'), 2000);
      await gone;
      clearTimeout(t);
    }
  }
}
