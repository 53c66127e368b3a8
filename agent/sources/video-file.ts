// A user's own recording as a benchmark stream (issue #15): the video is decoded once through ffmpeg,
// with the camera source's sampling and scaling (agent/sources/camera.ts ffmpegArgs), into uint8 CHW
// frames at the training size. The frame rate taken is the redundancy knob: at 30 fps consecutive frames
// are near-duplicates, at 1 fps far less so.

import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { checkFfmpeg, ffmpegArgs, rgb24ToChw } from './camera.ts';

export interface DecodedVideo {
  /** count frames, uint8 CHW RGB, size x size each, in time order. */
  frames: Uint8Array;
  count: number;
}

/** Every frame of `file` sampled at `fps` (> 0) and cut (cover) to size x size. Throws one line on failure. */
export function decodeVideo(file: string, fps: number, size: number, ffmpeg = 'ffmpeg'): DecodedVideo {
  if (!(fps > 0)) throw new Error(`--fps ${fps}: a rate above 0 (a benchmark needs frames per second to define its scenes)`);
  try {
    if (!statSync(file).isFile()) throw new Error('not a file');
  } catch (e) {
    throw new Error(`--video ${file}: no such video file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  checkFfmpeg(ffmpeg);
  const bytes = 3 * size * size;
  // 2 GiB of raw frames is ~700,000 frames at 32 px: hours of video at 30 fps.
  const r = spawnSync(ffmpeg, ffmpegArgs({ input: file, fps, size, fit: 'cover' }), { maxBuffer: 2 ** 31, stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.error) throw new Error(`--video ${file}: ffmpeg failed (${r.error.message})`);
  const err = r.stderr.toString().trim().split('\n').at(-1) ?? '';
  if (r.status !== 0) throw new Error(`--video ${file}: ffmpeg exit ${r.status}${err ? `: ${err}` : ''}`);
  const count = Math.floor(r.stdout.length / bytes);
  if (count === 0) throw new Error(`--video ${file}: no frames decoded at ${fps} fps${err ? ` (${err})` : ''}`);
  // ffmpeg writes HWC rows; the learner takes CHW planes.
  const frames = new Uint8Array(count * bytes);
  for (let f = 0; f < count; f++) rgb24ToChw(r.stdout.subarray(f * bytes, (f + 1) * bytes), size * size, frames, f * bytes);
  return { frames, count };
}
