// The camera source: a short video made by ffmpeg itself from demo-stream images. Frames are sampled at
// the requested rate, the agent learns from them and resumes a file where its checkpoint left it; a live
// (HTTP) stream that ends or stalls is reconnected with back-off; a missing ffmpeg is a clear error.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { REPO } from './helpers/paths.ts';
import { demoStream } from '../agent/commands/demo.ts';
import { encodePng } from '../agent/frames/decode.ts';
import { CameraSource, type CameraOptions } from '../agent/sources/camera.ts';
import { listCheckpoints } from '../agent/trainer/checkpoint.ts';

const CLI = path.join(REPO, 'bin/ssocl.mjs');
const FFMPEG = process.env.SSOCL_FFMPEG ?? 'ffmpeg';
const hasFfmpeg = !spawnSync(FFMPEG, ['-version']).error;
const skip = !hasFfmpeg && `ffmpeg not found ('${FFMPEG}'); .ci/run installs it (apt-get install ffmpeg)`;

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-camera-'));
const video = path.join(root, 'demo.mp4');
const ts = path.join(root, 'demo.ts');
const FRAMES = 200; // 8 s at 25 fps
test.after(() => rmSync(root, { recursive: true, force: true }));

test.before(async () => {
  if (!hasFfmpeg) return;
  const d = demoStream();
  mkdirSync(path.join(root, 'png'));
  for (let i = 0; i < FRAMES; i++) {
    const j = d.order[i];
    writeFileSync(path.join(root, 'png', `${String(i).padStart(4, '0')}.png`), await encodePng(d.images.subarray(j * 3072, (j + 1) * 3072), 32));
  }
  // Upscaled to 64x48 so the camera path really scales and crops (cover) to the training size.
  let r = spawnSync(FFMPEG, ['-hide_banner', '-loglevel', 'error', '-y', '-framerate', '25', '-i', path.join(root, 'png/%04d.png'), '-vf', 'scale=64:48', '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-crf', '12', video]);
  assert.equal(r.status, 0, String(r.stderr));
  r = spawnSync(FFMPEG, ['-hide_banner', '-loglevel', 'error', '-y', '-i', video, '-c', 'copy', '-f', 'mpegts', ts]);
  assert.equal(r.status, 0, String(r.stderr));
});

function options(over: Partial<CameraOptions>): CameraOptions {
  return { input: video, fps: 0, size: 32, fit: 'cover', ffmpeg: FFMPEG, overflow: 'block', backlog: 10000, stallMs: 10000, backoffMs: [200, 1000], skip: 0, log: () => {}, ...over };
}

async function drain(cam: CameraSource, until: (n: number) => boolean = () => false, timeoutMs = 1000): Promise<Uint8Array[]> {
  const got: Uint8Array[] = [];
  for (;;) {
    const f = await cam.next(timeoutMs);
    if (f) got.push(f.image);
    else if (cam.ended) break;
    if (until(got.length)) break;
  }
  return got;
}

test('a video file is sampled at --fps: 8 s at 25 fps gives 200, 100 and 40 frames at 0, 12.5 and 5 fps', { skip }, async () => {
  for (const [fps, want] of [[0, 200], [12.5, 100], [5, 40]] as const) {
    const cam = new CameraSource(options({ fps }));
    cam.start();
    const got = await drain(cam);
    await cam.close();
    assert.ok(Math.abs(got.length - want) <= 1, `--fps ${fps}: ${got.length} frames, expected ${want}`);
    assert.match(cam.endReason, /^end of /);
  }
  // Frames are the video's pictures: close to the source images (lossy codec, scaled twice).
  const cam = new CameraSource(options({ fps: 0 }));
  cam.start();
  const first = (await drain(cam, (n) => n >= 1))[0];
  await cam.close();
  const d = demoStream();
  const j = d.order[0];
  const src = d.images.subarray(j * 3072, (j + 1) * 3072);
  // Not pixel-exact (lossy codec, stretched to 64x48 then cover-cropped back to 32x32): closer to the
  // source image than a flat frame of its mean is.
  let mae = 0;
  let grey = 0;
  const m = src.reduce((a, b) => a + b, 0) / src.length;
  for (let k = 0; k < 3072; k++) {
    mae += Math.abs(first[k] - src[k]);
    grey += Math.abs(m - src[k]);
  }
  assert.ok(mae < grey, `first camera frame resembles its source image (MAE ${mae / 3072} vs ${grey / 3072} for flat grey)`);
});

test('the agent learns from a video file and resumes it where the checkpoint left it', { skip }, async () => {
  const state = path.join(root, 'state');
  const models = path.join(root, 'models');
  const args = (...extra: string[]) => [CLI, 'run', '--camera', video, '--fps', '12.5', '--state', state, '--models', models, '--threads', '2', ...extra];
  // Killed after its first checkpoint...
  const child = spawn(process.execPath, args('--checkpoint-every', '3', '--metrics', path.join(root, 'm.jsonl')), { stdio: 'ignore' });
  const ck = path.join(state, 'checkpoints');
  for (let i = 0; i < 600 && !(listCheckpoints(ck).length >= 2); i++) await new Promise((r) => setTimeout(r, 100));
  child.kill('SIGKILL');
  await new Promise((r) => child.on('exit', r));
  const cks = listCheckpoints(ck);
  assert.ok(cks.length >= 1, 'a checkpoint was written before the kill');
  // ...then run to the end of the file: it starts at the checkpoint's frame and takes the rest once.
  const r = spawnSync(process.execPath, args('--metrics', path.join(root, 'm.jsonl')), { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const from = Number(/from frame (\d+)/.exec(r.stderr)?.[1]);
  assert.ok(from > 1, `resumed inside the video (${r.stderr.split('\n').find((l) => /reading/.test(l))})`);
  const ingested = Number(/(\d+) frames ingested/.exec(r.stdout)![1]);
  assert.ok(Math.abs(ingested - 100) <= 1, `all 100 sampled frames over both runs, none twice (summary says ${ingested})`);
  assert.match(r.stdout, /stopped \(end of .*demo\.mp4/);
  const steps = readFileSync(path.join(root, 'm.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.ok(steps.length >= 12, `${steps.length} steps`);
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const first = mean(steps.slice(0, 4).map((s) => s.loss));
  const last = mean(steps.slice(-4).map((s) => s.loss));
  assert.ok(last < first, `the loss falls while learning from the video (${first.toFixed(3)} -> ${last.toFixed(3)})`);
  assert.ok(readFileSync(path.join(models, 'latest.onnx')).length > 1000);
  // Nothing left to read: a third run ends at once without a frame.
  const again = spawnSync(process.execPath, args(), { encoding: 'utf8' });
  assert.equal(again.status, 0, again.stderr);
  // (the summary's counts are the agent's totals, restored from the checkpoint: unchanged)
  assert.match(again.stdout, new RegExp(`stopped \\(end of .*\\(${ingested} frames\\)\\): ${ingested} frames ingested.*, ${/(\d+) steps/.exec(r.stdout)![1]} steps`));
});

test('overflow: block holds ffmpeg back and close() still finishes; drop-oldest keeps the newest backlog frames', { skip }, async () => {
  const blocked = new CameraSource(options({ backlog: 4, overflow: 'block' }));
  blocked.start();
  await new Promise((r) => setTimeout(r, 1500));
  assert.ok(blocked.pending >= 4 && blocked.pending < 40, `block: ${blocked.pending} frames waiting with backlog 4`);
  assert.equal(blocked.dropped, 0);
  const got = await drain(blocked, (n) => n >= 10);
  assert.equal(got.length, 10, 'reading resumes after the backlog drains');
  const t = Date.now();
  await blocked.close();
  assert.ok(Date.now() - t < 5000, 'close() returns while ffmpeg is held back');
  const dropping = new CameraSource(options({ backlog: 4, overflow: 'drop-oldest' }));
  dropping.start();
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(dropping.pending, 4);
  const rest = await drain(dropping);
  await dropping.close();
  assert.equal(dropping.dropped + rest.length, FRAMES, `every frame either dropped or taken (${dropping.dropped} dropped)`);
  // The agent itself stops cleanly while its camera is held back, with a checkpoint.
  const r = spawnSync(process.execPath, [CLI, 'run', '--camera', video, '--backlog', '8', '--max-arrivals', '2', '--state', path.join(root, 'st-block'), '--models', path.join(root, 'm-block'), '--threads', '2'], { encoding: 'utf8', timeout: 120000 });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /stopped \(--max-arrivals 2\): 32 frames ingested/);
  assert.equal(listCheckpoints(path.join(root, 'st-block/checkpoints')).length, 1);
});

test('a live stream that ends or stalls is reconnected with back-off; frames keep coming', { skip }, async () => {
  const data = readFileSync(ts);
  let requests = 0;
  const server = createServer((req, res) => {
    requests++;
    res.writeHead(200, { 'content-type': 'video/mp2t' });
    if (requests === 2) {
      // Second connection: half the stream, then silence with the connection held open (a stall).
      res.write(data.subarray(0, data.length >> 1));
      return;
    }
    res.end(data);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/cam.ts`;
  const logs: string[] = [];
  const cam = new CameraSource(options({ input: url, stallMs: 1500, log: (l) => logs.push(l) }));
  assert.equal(cam.live, true);
  cam.start();
  const got = await drain(cam, (n) => n >= 2.2 * FRAMES, 5000);
  await cam.close();
  server.closeAllConnections();
  server.close();
  assert.ok(got.length >= 2.2 * FRAMES, `${got.length} frames`);
  assert.ok(cam.connects >= 3 && requests >= 3, `${cam.connects} connections`);
  assert.ok(logs.some((l) => /ffmpeg stopped \(exit code 0\); reconnecting/.test(l)), logs.join('\n'));
  assert.ok(logs.some((l) => /no frame for 1.5s, restarting ffmpeg/.test(l)), logs.join('\n'));
});

test('a missing ffmpeg or video file is a clear error (exit 2)', async () => {
  let r = spawnSync(process.execPath, [CLI, 'run', '--camera', video, '--ffmpeg', path.join(root, 'no-ffmpeg'), '--state', path.join(root, 's2')], { encoding: 'utf8' });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /cannot run ffmpeg .*apt-get install ffmpeg/);
  if (!hasFfmpeg) return;
  r = spawnSync(process.execPath, [CLI, 'run', '--camera', path.join(root, 'none.mp4'), '--state', path.join(root, 's2')], { encoding: 'utf8' });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /no such video file/);
  r = spawnSync(process.execPath, [CLI, 'run', '--camera', video, '--size', '64', '--state', path.join(root, 's2')], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--size 64: expected WxH/);
});
