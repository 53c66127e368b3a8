// Data download against a local HTTP server on 127.0.0.1: resume after a dropped connection,
// checksum verification, unpacking, and refusal of archive paths that escape the target.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash, pbkdf2 } from 'node:crypto';
import { existsSync, statSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { fetchDataset, untar, download } from '../tools/data/fetch.ts';
import { readCifar10 } from '../core/codecs/cifar.ts';
import { tarEntry, tinyCifarArchive } from './helpers/archive.ts';

async function serve(body: Buffer, opts: { dropFirstAt?: number } = {}) {
  let requests = 0;
  const ranges: (string | undefined)[] = [];
  const server = http.createServer((req, res) => {
    requests++;
    ranges.push(req.headers.range);
    const m = /bytes=(\d+)-/.exec(req.headers.range ?? '');
    const start = m ? Number(m[1]) : 0;
    const slice = body.subarray(start);
    res.writeHead(m ? 206 : 200, { 'content-length': slice.length });
    if (requests === 1 && opts.dropFirstAt) {
      res.write(slice.subarray(0, opts.dropFirstAt), () => res.destroy());
      return;
    }
    res.end(slice);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return { url: `http://127.0.0.1:${port}/cifar-10-binary.tar.gz`, server, ranges };
}

test('download resumes after a dropped connection, verifies the checksum and unpacks a readable data set', async () => {
  const body = tinyCifarArchive();
  const md5 = createHash('md5').update(body).digest('hex');
  const cut = Math.floor(body.length / 2);
  assert.ok(cut > 1000);
  const { url, server, ranges } = await serve(body, { dropFirstAt: cut });
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-fetch-'));
  try {
    const src = { url, file: 'cifar-10-binary.tar.gz', md5, dir: 'cifar-10-batches-bin' };
    // libuv's threadpool, which does the file writes, is kept busy while the connection drops: a slow
    // disk, as CI had once, where reporting the error before the writes landed lost bytes.
    const pool = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
    const busy = Array.from({ length: pool }, () => new Promise((r) => pbkdf2('x', 'y', 2_000_000, 32, 'sha256', r)));
    await assert.rejects(fetchDataset(src, dir), /run again to resume/);
    // Everything that came before the drop is on disk when the error is reported (the resume asks for the rest).
    assert.equal(statSync(path.join(dir, 'cifar-10-binary.tar.gz.part')).size, cut);
    await Promise.all(busy);
    const out = await fetchDataset(src, dir);
    assert.equal(ranges[1], `bytes=${cut}-`);
    assert.deepEqual(readFileSync(path.join(dir, 'cifar-10-binary.tar.gz')), body);
    const train = readCifar10(out, 'train');
    assert.equal(train.count, 15);
    assert.equal(train.classes[9], 'truck');
    assert.equal(readCifar10(out, 'test').count, 3);
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a checksum mismatch removes the download and says so', async () => {
  const body = tinyCifarArchive();
  const { url, server } = await serve(body);
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-fetch-'));
  try {
    await assert.rejects(fetchDataset({ url, file: 'x.tar.gz', md5: '0'.repeat(32), dir: 'cifar-10-batches-bin' }, dir), /md5 .* does not match/);
    assert.ok(!existsSync(path.join(dir, 'x.tar.gz')));
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('archive entries that would land outside the target are refused; HTTP errors are reported', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-fetch-'));
  try {
    assert.throws(() => untar(gzipSync(Buffer.concat([tarEntry('../evil.txt', Buffer.from('x')), Buffer.alloc(1024)])), dir), /outside/);
    const server = http.createServer((_q, r) => r.writeHead(404).end());
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    await assert.rejects(download(`http://127.0.0.1:${port}/x`, path.join(dir, 'x')), /HTTP 404/);
    server.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
