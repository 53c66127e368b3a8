// Frame decoding: any supported image file -> uint8 CHW RGB at the training resolution. sharp decodes
// JPEG, PNG and WebP; BMP and PPM/PGM are parsed here (sharp has no loader for them) and handed to
// sharp as raw pixels. Pixel count is bounded before decoding (decompression bombs). Data that ends before
// the size its header declares is refused (never padded with grey), and non-sRGB inputs (CMYK, 16-bit) are
// converted to 8-bit sRGB colorimetrically.

import { constants as zc, inflateSync } from 'node:zlib';
import sharp from 'sharp';
import type { FailOnOptions, Metadata, OutputInfo, Sharp } from 'sharp';

// Every frame is a new image: libvips' operation cache (up to 50 MB by default) only grows the RSS of
// a long-running agent.
sharp.cache(false);

export type Fit = 'cover' | 'letterbox';
export const FRAME_EXTENSIONS = ['.jpg', '.jpeg', '.png', '.webp', '.bmp', '.ppm', '.pgm'];

export class FrameError extends Error {}

export interface DecodeOptions {
  size: number;
  fit: Fit;
  /** Refuse images with more pixels than this (width x height). */
  maxPixels: number;
}

interface Raw {
  data: Uint8Array;
  width: number;
  height: number;
  channels: 1 | 3 | 4;
}

function check(w: number, h: number, o: DecodeOptions): void {
  if (!(w > 0 && h > 0)) throw new FrameError(`invalid dimensions ${w}x${h}`);
  if (w * h > o.maxPixels) throw new FrameError(`image of ${w}x${h} pixels exceeds the limit of ${o.maxPixels} pixels`);
}

/** Binary PPM (P6) and PGM (P5), maxval <= 255. */
function parsePnm(buf: Uint8Array, o: DecodeOptions): Raw {
  const magic = String.fromCharCode(buf[0], buf[1]);
  if (magic !== 'P5' && magic !== 'P6') throw new FrameError('not a binary PPM/PGM (P5/P6) file');
  let pos = 2;
  const fields: number[] = [];
  while (fields.length < 3) {
    while (pos < buf.length && /\s/.test(String.fromCharCode(buf[pos]))) pos++;
    if (buf[pos] === 0x23) {
      while (pos < buf.length && buf[pos] !== 0x0a) pos++;
      continue;
    }
    let s = '';
    while (pos < buf.length && /\d/.test(String.fromCharCode(buf[pos]))) s += String.fromCharCode(buf[pos++]);
    if (!s) throw new FrameError('truncated PPM/PGM header');
    fields.push(Number(s));
  }
  pos++; // one whitespace byte ends the header
  const [width, height, maxval] = fields;
  check(width, height, o);
  if (maxval > 255 || maxval < 1) throw new FrameError(`PPM/PGM maxval ${maxval} not supported (8-bit only)`);
  const channels = magic === 'P6' ? 3 : 1;
  const need = width * height * channels;
  if (buf.length - pos < need) throw new FrameError(`truncated PPM/PGM data (${buf.length - pos} of ${need} bytes)`);
  const data = buf.slice(pos, pos + need);
  if (maxval !== 255) for (let i = 0; i < data.length; i++) data[i] = Math.round((data[i] * 255) / maxval);
  return { data, width, height, channels };
}

/** Uncompressed 24- and 32-bit BMP (BI_RGB), bottom-up or top-down. */
function parseBmp(buf: Uint8Array, o: DecodeOptions): Raw {
  if (buf.length < 54 || buf[0] !== 0x42 || buf[1] !== 0x4d) throw new FrameError('not a BMP file');
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const offset = dv.getUint32(10, true);
  const width = dv.getInt32(18, true);
  const rawH = dv.getInt32(22, true);
  const bpp = dv.getUint16(28, true);
  const compression = dv.getUint32(30, true);
  const height = Math.abs(rawH);
  check(width, height, o);
  if ((bpp !== 24 && bpp !== 32) || (compression !== 0 && compression !== 3)) throw new FrameError(`BMP with ${bpp} bits and compression ${compression} not supported`);
  const bytes = bpp / 8;
  const stride = Math.ceil((width * bytes) / 4) * 4;
  if (offset + stride * height > buf.length) throw new FrameError('truncated BMP pixel data');
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    const row = offset + (rawH > 0 ? height - 1 - y : y) * stride;
    for (let x = 0; x < width; x++) {
      const p = row + x * bytes;
      const q = (y * width + x) * 3;
      data[q] = buf[p + 2];
      data[q + 1] = buf[p + 1];
      data[q + 2] = buf[p];
    }
  }
  return { data, width, height, channels: 3 };
}

const oneLine = (err: unknown): string => String((err as Error)?.message ?? err).split('\n')[0].trim();

const ascii = (b: Uint8Array, at: number, n: number): string => String.fromCharCode(...b.subarray(at, at + n));

/** Bytes of filtered scanlines a PNG of this header needs (Adam7 adds one filter byte per row per pass). */
function pngDataBytes(w: number, h: number, depth: number, colourType: number, interlaced: boolean): number {
  const samples = ({ 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 } as Record<number, number>)[colourType];
  if (!samples) return 0;
  const row = (pw: number) => 1 + Math.ceil((pw * samples * depth) / 8);
  if (!interlaced) return h * row(w);
  let n = 0;
  for (const [x0, y0, dx, dy] of [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [0, 1, 1, 2]]) {
    const pw = Math.ceil((w - x0) / dx);
    const ph = Math.ceil((h - y0) / dy);
    if (pw > 0 && ph > 0) n += ph * row(pw);
  }
  return n;
}

function pngShortfall(b: Uint8Array, sizeChecked: boolean): string | null {
  if (b.length < 33) return `PNG of ${b.length} bytes ends inside its header`;
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const size = `header says ${dv.getUint32(16)}x${dv.getUint32(20)}`;
  const idat: Uint8Array[] = [];
  let pos = 8;
  for (;;) {
    if (pos + 8 > b.length) return `PNG ends after ${b.length} bytes without its IEND chunk, ${size}`;
    const len = dv.getUint32(pos);
    const type = ascii(b, pos + 4, 4);
    if (pos + 12 + len > b.length) return `PNG stops at byte ${b.length}, inside chunk ${type}, which runs to byte ${pos + 12 + len}, ${size}`;
    if (type === 'IDAT') idat.push(b.subarray(pos + 8, pos + 8 + len));
    if (type === 'IEND') break;
    pos += 12 + len;
  }
  // Every chunk is whole, yet the compressed image data may still stop short (cut, then IEND appended).
  // Inflated only once the header's size has passed check(), so a crafted bomb cannot blow up memory here.
  const need = sizeChecked ? pngDataBytes(dv.getUint32(16), dv.getUint32(20), b[24], b[25], b[28] === 1) : 0;
  if (!need) return null;
  let got: number;
  try {
    got = inflateSync(Buffer.concat(idat), { finishFlush: zc.Z_SYNC_FLUSH, maxOutputLength: need }).length;
  } catch {
    return null; // corrupt rather than short, or all there (output hit the bound)
  }
  return got < need ? `PNG image data holds ${got} of the ${need} bytes, ${size}` : null;
}

function webpShortfall(b: Uint8Array): string | null {
  if (b.length < 12) return `WebP of ${b.length} bytes ends inside its header`;
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const riff = 8 + dv.getUint32(4, true);
  if (riff > b.length) return `WebP file holds ${b.length} of the ${riff} bytes its RIFF header says`;
  for (let pos = 12; pos + 8 <= riff; ) {
    const end = pos + 8 + dv.getUint32(pos + 4, true);
    if (end > riff) return `WebP stops at byte ${riff}, inside chunk ${ascii(b, pos, 4).trim()}, which runs to byte ${end}`;
    pos = end + (end & 1);
  }
  return null;
}

/**
 * On a failed read only: 'truncated: ...' when the bytes end before what the header declares, so the
 * quarantine reason says so instead of a loader's generic error. Format by content (a JPEG may be named .png).
 */
function truncation(b: Uint8Array, err: unknown, meta?: Metadata): string | null {
  const msg = oneLine(err);
  let why: string | null = null;
  if (b[0] === 0xff && b[1] === 0xd8) {
    // libjpeg: 'premature end of data segment' (scan data stops before the last MCU) or '... of JPEG file'.
    if (/premature end/i.test(msg)) why = meta?.width ? `JPEG data ends before the image does, header says ${meta.width}x${meta.height} (${msg})` : `JPEG ends inside its header (${msg})`;
  } else if (ascii(b, 0, 8) === '\x89PNG\r\n\x1a\n') {
    why = pngShortfall(b, meta !== undefined);
  } else if (ascii(b, 0, 4) === 'RIFF' && ascii(b, 8, 4) === 'WEBP') {
    why = webpShortfall(b);
  }
  return why && `truncated: ${why}`;
}

/** Decodes and resizes one image file's bytes; throws FrameError with a reason on anything unusable. */
export async function decodeFrame(buf: Uint8Array, ext: string, o: DecodeOptions): Promise<Uint8Array> {
  if (buf.length === 0) throw new FrameError('empty file');
  let img: Sharp;
  let meta: Metadata | undefined;
  const e = ext.toLowerCase();
  if (e === '.ppm' || e === '.pgm' || e === '.bmp') {
    const raw = e === '.bmp' ? parseBmp(buf, o) : parsePnm(buf, o);
    img = sharp(raw.data, { raw: { width: raw.width, height: raw.height, channels: raw.channels } });
  } else {
    try {
      // Header only (nothing is decoded), without sharp's own pixel limit, so an oversized image is
      // refused below with its size in the reason; decoding keeps the limit.
      meta = await sharp(buf, { limitInputPixels: false }).metadata();
    } catch (err) {
      throw new FrameError(truncation(buf, err) ?? `unreadable image: ${oneLine(err)}`);
    }
    if (!['jpeg', 'png', 'webp'].includes(meta.format ?? '')) throw new FrameError(`format '${meta.format}' is not a supported frame format`);
    check(meta.width ?? 0, meta.height ?? 0, o);
    // JPEG: scan data that stops before the header's size (cut, then an EOI appended, or a header that
    // claims more pixels) is only a libjpeg *warning*, and libvips fills the rest with grey; 'warning'
    // makes it an error (per decode: sharp's warning events come from one process-wide queue, so they
    // cannot be pinned on a frame). PNG and WebP loaders already fail on short data at 'truncated',
    // which keeps tolerating their benign warnings (libpng's iCCP complaints and the like).
    const failOn: FailOnOptions = meta.format === 'jpeg' ? 'warning' : 'truncated';
    img = sharp(buf, { limitInputPixels: o.maxPixels, failOn });
    // Non-sRGB input is converted at load by libvips' colourspace conversion. Otherwise sharp converts CMYK
    // with its built-in profile at perceptual intent (a visible shift), and converts 16-bit RGB with a profile
    // to P3, which the final toColourspace('srgb') only cuts to 8 bits. sRGB and grey skip this because it
    // turns off JPEG shrink-on-load.
    if (meta.space !== 'srgb' && meta.space !== 'b-w') img = img.pipelineColourspace('srgb');
    img = img.rotate(); // honour EXIF orientation
  }
  let out: { data: Buffer; info: OutputInfo };
  try {
    out = await img
      .removeAlpha()
      .toColourspace('srgb')
      .resize(o.size, o.size, { fit: o.fit === 'cover' ? 'cover' : 'contain', background: { r: 0, g: 0, b: 0 }, kernel: 'lanczos3' })
      .raw()
      .toBuffer({ resolveWithObject: true });
  } catch (err) {
    throw new FrameError(truncation(buf, err, meta) ?? `cannot decode: ${oneLine(err)}`);
  }
  const { data, info } = out;
  if (info.width !== o.size || info.height !== o.size) throw new FrameError(`resize gave ${info.width}x${info.height}`);
  const plane = o.size * o.size;
  const chw = new Uint8Array(3 * plane);
  const ch = info.channels;
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) chw[c * plane + i] = data[i * ch + (ch >= 3 ? c : 0)];
  }
  return chw;
}

/** uint8 CHW -> PNG bytes (for writing streams and the demo). */
export async function encodePng(chw: Uint8Array, size: number): Promise<Buffer> {
  const plane = size * size;
  const hwc = Buffer.alloc(3 * plane);
  for (let i = 0; i < plane; i++) for (let c = 0; c < 3; c++) hwc[i * 3 + c] = chw[c * plane + i];
  return sharp(hwc, { raw: { width: size, height: size, channels: 3 } }).png().toBuffer();
}

/** Resizes a uint8 CHW square image (for in-process streams whose size differs from the training size). */
export async function resizeChw(chw: Uint8Array, from: number, to: number): Promise<Uint8Array> {
  const plane = from * from;
  const hwc = Buffer.alloc(3 * plane);
  for (let i = 0; i < plane; i++) for (let c = 0; c < 3; c++) hwc[i * 3 + c] = chw[c * plane + i];
  const out = await sharp(hwc, { raw: { width: from, height: from, channels: 3 } }).resize(to, to, { kernel: 'lanczos3' }).raw().toBuffer();
  const p2 = to * to;
  const res = new Uint8Array(3 * p2);
  for (let i = 0; i < p2; i++) for (let c = 0; c < 3; c++) res[c * p2 + i] = out[i * 3 + c];
  return res;
}
