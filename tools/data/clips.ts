// Camera-like streams (issue #15): each source image becomes a short clip of D consecutive frames, as a
// camera panning and zooming slowly over a scene would give them. A frame is a view of the image
// (bilinear, i.e. a crop of an upsampled copy) whose centre and zoom move smoothly from a start to an
// end pose over the clip, with a slow brightness drift and sensor noise, at the image's own resolution.
// Every clip is drawn from its own seed (trial, source index), so any frame can be made on its own, in
// any order, and the same again.

import { Rng } from '../../core/rng.ts';

export interface ClipConfig {
  /** Frames per source image (1: one frame of the same process, no redundancy from the clip). */
  frames: number;
  /** The view's side as a fraction of the image's, drawn per pose in this range. */
  zoom: [number, number];
  /** Largest brightness change over a clip, as a factor: the end frame's gain is 1 +- this. */
  drift: number;
  /** Sensor noise: Gaussian standard deviation in 0-255 units. */
  noise: number;
}

export const DEFAULT_CLIP: ClipConfig = { frames: 10, zoom: [0.6, 0.9], drift: 0.15, noise: 3 };

/** One pose of the camera: the view's centre (fractions of the image side) and its side (fraction). */
interface Pose {
  cx: number;
  cy: number;
  side: number;
}

/** The clip's start and end poses and its brightness drift, from the clip's own seed. */
export function clipMotion(c: ClipConfig, trial: number, source: number): { start: Pose; end: Pose; gain: number; seed: number } {
  // A seed per (trial, source): splitmix-style mixing so neighbouring indices give unrelated clips.
  const seed = (Math.imul(trial + 1, 0x9e3779b1) ^ Math.imul(source + 1, 0x85ebca6b)) >>> 0;
  const rng = new Rng(seed);
  const pose = (): Pose => {
    const side = rng.range(c.zoom[0], c.zoom[1]);
    return { cx: rng.range(side / 2, 1 - side / 2), cy: rng.range(side / 2, 1 - side / 2), side };
  };
  const start = pose();
  const end = pose();
  const gain = rng.range(-c.drift, c.drift);
  return { start, end, gain, seed };
}

/**
 * Frame t (0-based) of the clip of `image` (uint8 CHW, size x size): a view at the pose between start
 * and end (smoothstep in t, so the camera eases in and out), brightness 1 + gain * t/(D-1), plus noise
 * drawn from the clip's seed and t.
 */
export function clipFrame(image: Uint8Array, size: number, c: ClipConfig, trial: number, source: number, t: number): Uint8Array {
  if (!(Number.isInteger(c.frames) && c.frames >= 1)) throw new Error(`clip frames ${c.frames}: expected a whole number >= 1`);
  if (!(Number.isInteger(t) && t >= 0 && t < c.frames)) throw new Error(`clip frame ${t}: expected 0..${c.frames - 1}`);
  const m = clipMotion(c, trial, source);
  const u = c.frames === 1 ? 0 : t / (c.frames - 1);
  const s = u * u * (3 - 2 * u);
  const lerp = (a: number, b: number) => a + (b - a) * s;
  const side = lerp(m.start.side, m.end.side) * size;
  const x0 = lerp(m.start.cx, m.end.cx) * size - side / 2;
  const y0 = lerp(m.start.cy, m.end.cy) * size - side / 2;
  const gain = 1 + m.gain * u;
  const noise = new Rng((m.seed ^ Math.imul(t + 1, 0xc2b2ae35)) >>> 0);
  const plane = size * size;
  const out = new Uint8Array(3 * plane);
  const step = side / size;
  for (let oy = 0; oy < size; oy++) {
    // Pixel centres of the view, in source pixel coordinates (align-corners false, as the crops).
    const sy = Math.min(Math.max(y0 + (oy + 0.5) * step - 0.5, 0), size - 1);
    const ya = Math.floor(sy);
    const yb = Math.min(ya + 1, size - 1);
    const wy = sy - ya;
    for (let ox = 0; ox < size; ox++) {
      const sx = Math.min(Math.max(x0 + (ox + 0.5) * step - 0.5, 0), size - 1);
      const xa = Math.floor(sx);
      const xb = Math.min(xa + 1, size - 1);
      const wx = sx - xa;
      for (let ch = 0; ch < 3; ch++) {
        const p = ch * plane;
        const v = (image[p + ya * size + xa] * (1 - wx) + image[p + ya * size + xb] * wx) * (1 - wy) + (image[p + yb * size + xa] * (1 - wx) + image[p + yb * size + xb] * wx) * wy;
        const n = c.noise > 0 ? c.noise * noise.normal() : 0;
        out[p + oy * size + ox] = Math.min(255, Math.max(0, Math.round(v * gain + n)));
      }
    }
  }
  return out;
}

/** The stream of a clip protocol: each source index in order becomes D consecutive (source, t) frames. */
export function clipStream(sources: readonly number[], frames: number): { source: number; t: number }[] {
  const out: { source: number; t: number }[] = [];
  for (const source of sources) for (let t = 0; t < frames; t++) out.push({ source, t });
  return out;
}

/** One frame of a static-camera stream: the source image, its clip (the motion's seed) and frame t of `frames`. */
export interface CameraFrame {
  source: number;
  /** Idle visits: -(visit + 1); events: the event's number (>= 0). */
  clip: number;
  t: number;
  frames: number;
  idle: boolean;
}

/**
 * A static camera's day (issue #31): `idlePercent` % of `total` frames are long visits of `visit`
 * frames to a few idle scenes (`scenes`, visited in turn, so each is revisited), the rest short events
 * of `event` frames, taken evenly from `events` in their order (a class-incremental order stays one),
 * each cutting into the idle view at even intervals (the idle visit then goes on where it was).
 */
export function staticCameraStream(scenes: readonly number[], events: readonly number[], total: number, idlePercent: number, visit = 300, event = 10): CameraFrame[] {
  if (!(idlePercent >= 0 && idlePercent < 100)) throw new Error(`--idle ${idlePercent}: a percentage from 0 to 99`);
  if (!scenes.length) throw new Error('static camera: no idle scenes');
  const eventClips = Math.min(events.length, Math.round((total * (1 - idlePercent / 100)) / event));
  const idleFrames = total - eventClips * event;
  const out: CameraFrame[] = [];
  let j = 0;
  const idleUntil = (end: number) => {
    for (; j < end; j++) {
      const v = Math.floor(j / visit);
      out.push({ source: scenes[v % scenes.length], clip: -(v + 1), t: j % visit, frames: visit, idle: true });
    }
  };
  for (let k = 0; k < eventClips; k++) {
    idleUntil(Math.round(((k + 1) * idleFrames) / (eventClips + 1)));
    const source = events[Math.floor((k * events.length) / eventClips)];
    for (let t = 0; t < event; t++) out.push({ source, clip: k, t, frames: event, idle: false });
  }
  idleUntil(idleFrames);
  return out;
}
