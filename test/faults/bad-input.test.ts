// Fault: bad input in the watched directory. Every kind is refused or quarantined with a reason, the
// agent keeps running and learns from the good frames, and the counts are reported.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, symlinkSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import zlib from 'node:zlib';
import { encodePng } from '../../agent/frames/decode.ts';
import { demoImage, startAgent, tinyArtifacts, waitFor, writeFrames } from './helpers.ts';

/** A PNG signature + IHDR chunk claiming width x height, and nothing else (a decompression bomb's header). */
function pngHeader(width: number, height: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const chunk = (type: string, data: Buffer) => {
    const body = Buffer.concat([Buffer.from(type), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32(body));
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    return Buffer.concat([len, body, crc]);
  };
  // A valid header and a few bytes of compressed rows: what a bomb looks like before it inflates.
  const idat = zlib.deflateSync(Buffer.alloc(4096));
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', idat), chunk('IEND', Buffer.alloc(0))]);
}

test('bad input: each kind refused or quarantined with a reason; the agent keeps learning', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-fault-input-'));
  try {
    const art = tinyArtifacts(path.join(root, 'art'));
    const frames = path.join(root, 'frames');
    const good = await writeFrames(frames, 24);
    const chw = demoImage(5);
    const hwc = Buffer.alloc(3072);
    for (let p = 0; p < 1024; p++) for (let c = 0; c < 3; c++) hwc[3 * p + c] = chw[c * 1024 + p];
    const jpeg = await sharp(hwc, { raw: { width: 32, height: 32, channels: 3 } }).jpeg().toBuffer();
    const png = await encodePng(chw, 32);
    writeFileSync(path.join(frames, 'b-zero-byte.jpg'), Buffer.alloc(0));
    writeFileSync(path.join(frames, 'b-truncated.jpg'), jpeg.subarray(0, jpeg.length >> 1));
    writeFileSync(path.join(frames, 'b-truncated.png'), png.subarray(0, png.length >> 1));
    writeFileSync(path.join(frames, 'b-text.png'), 'this is not an image\n');
    writeFileSync(path.join(frames, 'b-huge-header.png'), pngHeader(20000, 20000));
    writeFileSync(path.join(frames, 'b-jpeg-named.png'), jpeg); // wrong extension, real image: decoded by content
    writeFileSync(path.join(frames, 'notes.txt'), 'not a frame extension: never read');
    writeFileSync(path.join(root, 'secret.png'), png);
    symlinkSync(path.join(root, 'secret.png'), path.join(frames, 'b-link-outside.png'));
    // Deleted between being queued and being read: last in name order, removed once the agent runs.
    writeFileSync(path.join(frames, 'zz-deleted.png'), png);
    const state = path.join(root, 'state');
    const a = startAgent(['--watch', frames, '--artifacts', art, '--state', state, '--models', path.join(root, 'models'), '--threads', '1', '--stable-ms', '200', '--exit-when-idle', '3']);
    assert.ok(await waitFor(() => /watching/.test(a.stderr()), 30000), a.stderr());
    unlinkSync(path.join(frames, 'zz-deleted.png'));
    // A frame still being written (two pieces, the pause shorter than --stable-ms): read once, whole.
    const fd = openSync(path.join(frames, 'c-slow.png'), 'w');
    writeSync(fd, png, 0, 50);
    await new Promise((r) => setTimeout(r, 100));
    writeSync(fd, png, 50, png.length - 50);
    closeSync(fd);
    const { code } = await a.exit;
    assert.equal(code, 0, a.stderr());
    const q = readdirSync(path.join(state, 'quarantine')).filter((f) => !f.endsWith('.reason')).sort();
    assert.deepEqual(q, ['b-huge-header.png', 'b-text.png', 'b-truncated.jpg', 'b-truncated.png', 'b-zero-byte.jpg']);
    const reason = (f: string) => readFileSync(path.join(state, 'quarantine', `${f}.reason`), 'utf8');
    assert.match(reason('b-zero-byte.jpg'), /empty file/);
    assert.match(reason('b-huge-header.png'), /20000x20000 pixels exceeds the limit/);
    for (const f of ['b-text.png', 'b-truncated.jpg', 'b-truncated.png']) assert.ok(reason(f).trim().length > 5, `${f}: ${reason(f)}`);
    assert.match(a.stderr(), /refused .*b-link-outside\.png: symbolic link to .*outside the watched directory/);
    assert.match(a.stderr(), /skipped zz-deleted\.png: ENOENT \(gone before it could be read\)/);
    assert.ok(existsSync(path.join(root, 'secret.png')), 'the link target outside is untouched');
    // Good frames + the wrongly named JPEG + the slow one are learnt; counts are reported.
    const m = /(\d+) frames ingested, (\d+) quarantined, (\d+) dropped, (\d+) refused; (\d+) arrivals, (\d+) steps/.exec(a.stdout())!;
    assert.ok(m, a.stdout());
    assert.equal(Number(m[1]), good.length + 2);
    assert.equal(Number(m[2]), 5);
    assert.equal(Number(m[4]), 2, a.stderr());
    assert.ok(Number(m[6]) > 0);
    const ledger = readFileSync(path.join(state, 'ingested.log'), 'utf8');
    assert.match(ledger, /ingested\t\d+\t\d+\tb-jpeg-named\.png/);
    assert.equal(ledger.match(/\tc-slow\.png\n/g)?.length, 1);
    console.log(`bad input: ${m[1]} frames ingested (24 good + a JPEG named .png + one written slowly), ${m[2]} quarantined with a reason (zero-byte, truncated JPEG, truncated PNG, text, 20000x20000 header), ${m[4]} refused (link outside, deleted before read); agent exit 0 after ${m[6]} steps`);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
