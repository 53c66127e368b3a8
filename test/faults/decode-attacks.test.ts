// Fault: hostile image files at the frame decoder (issue #21, item 8). Data that ends before the size its
// header declares must be refused with a 'truncated: ...' reason (libvips would otherwise pad it with grey
// and the agent would train on it), and a CMYK JPEG must decode to the picture's sRGB colours.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import zlib from 'node:zlib';
import sharp from 'sharp';
import { decodeFrame, FrameError, type DecodeOptions } from '../../agent/frames/decode.ts';

const S = 32;
const opts: DecodeOptions = { size: S, fit: 'cover', maxPixels: 40_000_000 };

/** An image-like RGB picture: flat patches of everyday colours (sky, grass, skin, wood, grey, near-black...) with a horizontal shade ramp. */
function picture(w: number, h: number): Buffer {
  const palette = [[110, 160, 220], [80, 140, 60], [225, 180, 150], [150, 100, 60], [128, 128, 128], [30, 30, 35], [240, 240, 235], [180, 30, 40], [40, 60, 140], [230, 200, 60], [90, 170, 160], [170, 120, 190]];
  const px = Buffer.alloc(w * h * 3);
  const cell = Math.max(1, Math.floor(w / 4));
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const col = palette[(Math.floor(x / cell) + 4 * Math.floor(y / cell)) % palette.length];
      const shade = 0.85 + (0.3 * (x % cell)) / cell;
      for (let c = 0; c < 3; c++) px[(y * w + x) * 3 + c] = Math.min(255, Math.round(col[c] * shade));
    }
  }
  return px;
}
const raw = (px: Buffer, w: number, h: number, channels: 1 | 2 | 3 = 3) => sharp(px, { raw: { width: w, height: h, channels } });

interface Ref {
  data: Buffer;
  channels: number;
}
/** The reference: the raw pixels resized like decodeFrame's cover fit, without going through any file format. */
async function reference(px: Buffer, w: number, h: number, channels: 1 | 3 = 3): Promise<Ref> {
  const { data, info } = await raw(px, w, h, channels).resize(S, S, { fit: 'cover', kernel: 'lanczos3' }).raw().toBuffer({ resolveWithObject: true });
  return { data, channels: info.channels };
}
/** Mean absolute difference of a CHW decode against an HWC reference (1 channel: compared with each of R, G, B). */
function meanAbsDiff(chw: Uint8Array, ref: Ref): number {
  const plane = S * S;
  let sum = 0;
  for (let i = 0; i < plane; i++) for (let c = 0; c < 3; c++) sum += Math.abs(chw[c * plane + i] - ref.data[i * ref.channels + (ref.channels >= 3 ? c : 0)]);
  return sum / (3 * plane);
}

async function refused(buf: Buffer, ext: string, reason: RegExp, what: string, o: DecodeOptions = opts): Promise<string> {
  let err: unknown = null;
  try {
    const out = await decodeFrame(buf, ext, o);
    let mean = 0;
    for (const v of out) mean += v / out.length;
    assert.fail(`${what}: decoded (mean pixel ${mean.toFixed(1)}) instead of being refused`);
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof FrameError, `${what}: ${String(err)}`);
  assert.match(err.message, reason, what);
  assert.doesNotMatch(err.message, /\n/, `${what}: the reason is one line`);
  return err.message;
}

/** Rewrites the frame size in a JPEG's SOFn segment (found by walking the marker segments). */
function patchJpegSize(jpeg: Buffer, w: number, h: number): Buffer {
  const b = Buffer.from(jpeg);
  for (let pos = 2; pos + 4 <= b.length; pos += 2 + b.readUInt16BE(pos + 2)) {
    const m = b[pos + 1];
    if (m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc) {
      b.writeUInt16BE(h, pos + 5);
      b.writeUInt16BE(w, pos + 7);
      return b;
    }
  }
  throw new Error('no SOF segment');
}

test('a JPEG whose header claims 6000x6000 but holds 64x48 of data is refused as truncated, not decoded as grey', async () => {
  const small = await raw(picture(64, 48), 64, 48).jpeg().toBuffer();
  // Control: the same file, header untouched, decodes.
  assert.equal((await decodeFrame(small, '.jpg', opts)).length, 3 * S * S);
  // The attack: header enlarged; the scan data still ends in a proper EOI marker, so nothing looks cut.
  const lie = patchJpegSize(small, 6000, 6000);
  assert.equal((await sharp(lie).metadata()).width, 6000);
  console.log(await refused(lie, '.jpg', /^truncated: JPEG .*header says 6000x6000/, 'enlarged header (baseline)'));
  const lieProgressive = patchJpegSize(await raw(picture(64, 48), 64, 48).jpeg({ progressive: true }).toBuffer(), 6000, 6000);
  await refused(lieProgressive, '.jpg', /^truncated: JPEG .*header says 6000x6000/, 'enlarged header (progressive)');
  // The same from a real big JPEG: cut at half, with an EOI put back on the end.
  const big = await raw(picture(64, 48), 64, 48).resize(1600, 1200).jpeg().toBuffer();
  const cut = Buffer.concat([big.subarray(0, big.length >> 1), Buffer.from([0xff, 0xd9])]);
  await refused(cut, '.jpg', /^truncated: JPEG .*header says 1600x1200/, 'big JPEG cut, EOI re-appended');
  await refused(big.subarray(0, big.length >> 1), '.jpg', /^truncated: JPEG .*header says 1600x1200/, 'big JPEG cut');
});

test('a truncated PNG is refused as truncated, with the size its header says', async () => {
  const png = await raw(picture(64, 48), 64, 48).resize(640, 480).png({ compressionLevel: 9 }).toBuffer();
  const iend = png.subarray(png.length - 12);
  assert.equal(iend.subarray(4, 8).toString(), 'IEND');
  const half = png.subarray(0, png.length >> 1);
  await refused(half, '.png', /^truncated: PNG .*header says 640x480/, 'PNG cut');
  // Cut, then IEND put back: every chunk is whole, the compressed rows are not.
  await refused(Buffer.concat([half, iend]), '.png', /^truncated: PNG .*header says 640x480/, 'PNG cut, IEND re-appended');
  const interlaced = await raw(picture(64, 48), 64, 48).resize(640, 480).png({ progressive: true }).toBuffer();
  await refused(Buffer.concat([interlaced.subarray(0, interlaced.length >> 1), iend]), '.png', /^truncated: PNG .*header says 640x480/, 'interlaced PNG cut, IEND re-appended');
  // A whole 64x48 PNG whose IHDR (CRC fixed) claims 1000x1000: the image data runs out.
  const lie = Buffer.from(await raw(picture(64, 48), 64, 48).png().toBuffer());
  lie.writeUInt32BE(1000, 16);
  lie.writeUInt32BE(1000, 20);
  lie.writeUInt32BE(zlib.crc32(lie.subarray(12, 29)), 29);
  console.log(await refused(lie, '.png', /^truncated: PNG image data holds \d+ of the \d+ bytes, header says 1000x1000/, 'PNG with an enlarged IHDR'));
});

test('a truncated WebP is refused as truncated', async () => {
  const webp = await raw(picture(64, 48), 64, 48).resize(640, 480).webp().toBuffer();
  await refused(webp.subarray(0, webp.length >> 1), '.webp', /^truncated: WebP file holds \d+ of the \d+ bytes its RIFF header says/, 'WebP cut');
  const fixed = Buffer.from(webp.subarray(0, webp.length >> 1));
  fixed.writeUInt32LE(fixed.length - 8, 4); // RIFF size made consistent: the VP8 chunk still runs past the end
  await refused(fixed, '.webp', /^truncated: WebP stops at byte \d+, inside chunk VP8/, 'WebP cut, RIFF size fixed');
});

test('a CMYK JPEG decodes to the sRGB colours of its picture (like an ordinary JPEG does)', async () => {
  const [w, h] = [256, 192];
  const px = picture(w, h);
  const ref = await reference(px, w, h);
  const cmyk = await raw(px, w, h).toColourspace('cmyk').jpeg({ quality: 90 }).toBuffer();
  assert.equal((await sharp(cmyk).metadata()).space, 'cmyk');
  const srgb = await raw(px, w, h).jpeg({ quality: 90 }).toBuffer();
  const dCmyk = meanAbsDiff(await decodeFrame(cmyk, '.jpg', opts), ref);
  const dSrgb = meanAbsDiff(await decodeFrame(srgb, '.jpg', opts), ref);
  console.log(`mean abs difference from the picture: CMYK JPEG ${dCmyk.toFixed(2)}, sRGB JPEG ${dSrgb.toFixed(2)}`);
  assert.ok(dSrgb < 2, `sRGB JPEG ${dSrgb}`);
  // Measured with sharp 0.35.5: 3.9 converted colorimetrically, 9.9 through sharp's own perceptual CMYK path.
  assert.ok(dCmyk < 6, `CMYK JPEG decodes ${dCmyk.toFixed(2)} away from the picture (sRGB JPEG: ${dSrgb.toFixed(2)})`);
});

test('16-bit and grey+alpha inputs end as 3-channel 8-bit sRGB with their colours', async () => {
  const [w, h] = [200, 150];
  const px = picture(w, h);
  const ref = await reference(px, w, h);
  const grey = await raw(px, w, h).greyscale().raw().toBuffer();
  const refGrey = await reference(grey, w, h, 1);
  const greyAlpha = Buffer.alloc(w * h * 2);
  const greyAlpha16 = new Uint16Array(w * h * 2); // a typed array of 16-bit samples is raw input of depth ushort
  for (let i = 0; i < w * h; i++) {
    [greyAlpha[2 * i], greyAlpha[2 * i + 1]] = [grey[i], 255];
    [greyAlpha16[2 * i], greyAlpha16[2 * i + 1]] = [grey[i] * 257, 65535];
  }
  // [what, file, IHDR bit depth and colour type (2 RGB, 4 grey+alpha), reference]
  const cases: [string, Buffer, [number, number], Ref][] = [
    ['16-bit RGB PNG', await raw(px, w, h).toColourspace('rgb16').png().toBuffer(), [16, 2], ref],
    // sharp processes 16-bit RGB with a profile in P3; only cutting that to 8 bits leaves P3 values (5.2 away on this picture).
    ['16-bit RGB PNG with an sRGB profile', await raw(px, w, h).toColourspace('rgb16').withIccProfile('srgb').png().toBuffer(), [16, 2], ref],
    ['16-bit grey+alpha PNG', await sharp(greyAlpha16, { raw: { width: w, height: h, channels: 2 } }).toColourspace('grey16').png().toBuffer(), [16, 4], refGrey],
    ['8-bit grey+alpha PNG', await raw(greyAlpha, w, h, 2).toColourspace('b-w').png().toBuffer(), [8, 4], refGrey],
  ];
  for (const [what, buf, ihdr, r] of cases) {
    assert.deepEqual([buf[24], buf[25]], ihdr, `${what}: IHDR bit depth and colour type`);
    const m = await sharp(buf).metadata();
    const out = await decodeFrame(buf, '.png', opts);
    assert.equal(out.length, 3 * S * S, what);
    const d = meanAbsDiff(out, r);
    console.log(`${what} (${m.space}, ${m.channels} channels, ${m.depth}): mean abs difference ${d.toFixed(2)}`);
    assert.ok(d < 1.5, `${what}: ${d.toFixed(2)}`);
  }
});
