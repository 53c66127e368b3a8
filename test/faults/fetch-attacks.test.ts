// `ssocl data fetch` against hostile local HTTP servers on 127.0.0.1 (issue #21, item 10): a server that
// stalls, one that sends far more than the data set, a folder left half unpacked, and redirect games.
// Every server gives up by itself after a few seconds, so code without the defences fails instead of hanging.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { download, fetchDataset } from '../../tools/data/fetch.ts';
import { readCifar10 } from '../../core/codecs/cifar.ts';
import { tinyCifarArchive } from '../helpers/archive.ts';

// The name README documents, spelled out here rather than imported from the code under test.
const MARKER = '.ssocl-fetch-complete';

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

async function listen(handler: http.RequestListener) {
  const server = http.createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  const close = () => {
    server.closeAllConnections();
    server.close();
  };
  return { base, close };
}

/** Writes `limit` bytes in 64 KiB chunks, respecting back-pressure; stops when the client goes away. */
function pump(res: http.ServerResponse, limit: number, sent: { n: number }, then: () => void): void {
  const chunk = Buffer.alloc(65536, 0x5a);
  const step = () => {
    while (sent.n < limit) {
      if (res.destroyed) return;
      sent.n += chunk.length;
      if (!res.write(chunk)) {
        res.once('drain', step);
        return;
      }
    }
    then();
  };
  step();
}

const failure = (p: Promise<unknown>) => p.then(() => assert.fail('expected a rejection'), (e: Error) => e);

test('a stalling server is cut off by the idle timeout, before the headers and mid-body, with one line naming the URL', async () => {
  const { base, close } = await listen((req, res) => {
    // Bounded: hangs up by itself after 3 s.
    const stop = setTimeout(() => res.destroy(), 3000);
    res.on('close', () => clearTimeout(stop));
    if (req.url === '/mid') {
      res.writeHead(200, { 'content-length': 100_000 });
      res.write(Buffer.alloc(1000, 7));
    }
    // '/head': not even the headers.
  });
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-attack-'));
  try {
    for (const [route, sent] of [['/head', 0], ['/mid', 1000]] as const) {
      const url = `${base}${route}`;
      const dest = path.join(dir, `x${route.slice(1)}`);
      const t0 = Date.now();
      const err = await failure(download(url, dest, undefined, { idleTimeoutMs: 300 }));
      assert.match(err.message, new RegExp(`^GET ${esc(url)}: nothing received for 0\\.3 s \\(idle timeout; run again to resume\\)$`));
      assert.ok(Date.now() - t0 < 2000, `${route}: gave up after ${Date.now() - t0} ms, not at the 300 ms idle timeout`);
      // What came before the stall stays for the resume.
      if (sent) assert.equal(statSync(`${dest}.part`).size, sent);
    }
  } finally {
    close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a body bigger than the data set stops as soon as it passes the size cap; a Content-Length over the cap is refused before the body', async () => {
  const endless = { n: 0 };
  const announced = { n: 0 };
  const { base, close } = await listen((req, res) => {
    // Bounded at 64 MiB (endless) and 8 MiB (announced as 1 GB, then hangs up).
    if (req.url === '/endless') {
      res.writeHead(200); // chunked, no length
      pump(res, 64 * 2 ** 20, endless, () => res.end());
    } else {
      res.writeHead(200, { 'content-length': 1_000_000_000 });
      pump(res, 8 * 2 ** 20, announced, () => res.destroy());
    }
  });
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-attack-'));
  try {
    const body = tinyCifarArchive();
    const src = { url: `${base}/endless`, file: 'c.tar.gz', md5: createHash('md5').update(body).digest('hex'), dir: 'cifar-10-batches-bin', size: body.length };
    const t0 = Date.now();
    const err = await failure(fetchDataset(src, dir));
    assert.match(err.message, new RegExp(`^GET ${esc(src.url)}: more than the \\d+ bytes expected; stopped and removed the partial download$`));
    assert.ok(endless.n < 16 * 2 ** 20, `the server got to send ${endless.n} bytes for a ${body.length}-byte data set`);
    assert.ok(Date.now() - t0 < 3000);
    assert.ok(!existsSync(path.join(dir, 'c.tar.gz.part')) && !existsSync(path.join(dir, 'c.tar.gz')));

    const err2 = await failure(fetchDataset({ ...src, url: `${base}/announced` }, dir));
    assert.match(err2.message, new RegExp(`^GET ${esc(base)}/announced: the server announces 1000000000 bytes, more than the \\d+ expected; refused$`));
    assert.ok(announced.n < 16 * 2 ** 20);
    assert.ok(!existsSync(path.join(dir, 'c.tar.gz.part')));
  } finally {
    close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a folder left by an interrupted unpack (no completion marker) is unpacked again, replacing only the archive entries', async () => {
  const body = tinyCifarArchive();
  let requests = 0;
  const { base, close } = await listen((_req, res) => {
    requests++;
    res.writeHead(200, { 'content-length': body.length }).end(body);
  });
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-attack-'));
  const elsewhere = mkdtempSync(path.join(tmpdir(), 'ssocl-attack-outside-'));
  try {
    const src = { url: `${base}/cifar-10-binary.tar.gz`, file: 'cifar-10-binary.tar.gz', md5: createHash('md5').update(body).digest('hex'), dir: 'cifar-10-batches-bin' };
    const out = await fetchDataset(src, dir);
    assert.equal(requests, 1);
    // The state an unpack killed half-way leaves (the archive is complete; the folder is not), plus
    // things fetch did not put there: a user's files, and a symlink to a file outside.
    rmSync(path.join(out, MARKER), { force: true });
    truncateSync(path.join(out, 'data_batch_1.bin'), 100);
    unlinkSync(path.join(out, 'test_batch.bin'));
    const victim = path.join(elsewhere, 'victim.txt');
    writeFileSync(victim, 'keep');
    unlinkSync(path.join(out, 'data_batch_2.bin'));
    symlinkSync(victim, path.join(out, 'data_batch_2.bin'));
    writeFileSync(path.join(out, 'mine.txt'), 'user file');
    writeFileSync(path.join(dir, 'notes.txt'), 'user file');

    const log: string[] = [];
    assert.equal(await fetchDataset(src, dir, (s) => log.push(s)), out);
    assert.ok(!log.some((s) => /exists already/.test(s)), `a half-unpacked folder was taken as done: ${log.join(' | ')}`);
    assert.equal(readCifar10(out, 'train').count, 15);
    assert.equal(readCifar10(out, 'test').count, 3);
    assert.ok(!lstatSync(path.join(out, 'data_batch_2.bin')).isSymbolicLink());
    assert.equal(readFileSync(victim, 'utf8'), 'keep');
    assert.equal(readFileSync(path.join(out, 'mine.txt'), 'utf8'), 'user file');
    assert.equal(readFileSync(path.join(dir, 'notes.txt'), 'utf8'), 'user file');
    assert.ok(existsSync(path.join(out, MARKER)));
    assert.equal(requests, 1); // the verified archive was reused

    const again: string[] = [];
    await fetchDataset(src, dir, (s) => again.push(s));
    assert.deepEqual(again, [`${out} exists already`]);
  } finally {
    close();
    rmSync(dir, { recursive: true, force: true });
    rmSync(elsewhere, { recursive: true, force: true });
  }
});

test('a redirect loop stops at the limit naming the starting URL; a redirect to a non-http(s) scheme is refused; a short chain is followed', async () => {
  const body = Buffer.from('the real file');
  let loops = 0;
  const { base, close } = await listen((req, res) => {
    if (req.url === '/loop') {
      loops++;
      res.writeHead(302, { location: '/loop' }).end();
    } else if (req.url === '/scheme') res.writeHead(302, { location: 'file:///etc/passwd' }).end();
    else if (req.url === '/a') res.writeHead(301, { location: '/b' }).end();
    else if (req.url === '/b') res.writeHead(307, { location: `${base}/file` }).end();
    else res.writeHead(200, { 'content-length': body.length }).end(body);
  });
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-attack-'));
  try {
    const err = await failure(download(`${base}/loop`, path.join(dir, 'loop')));
    assert.match(err.message, new RegExp(`too many redirects \\(5\\) starting at ${esc(base)}/loop$`));
    assert.equal(loops, 6); // the first request and 5 redirects
    const err2 = await failure(download(`${base}/scheme`, path.join(dir, 'scheme')));
    assert.match(err2.message, new RegExp(`^GET ${esc(base)}/scheme: redirect to "file:///etc/passwd" refused \\(only http and https are followed\\)$`));
    assert.ok(!existsSync(path.join(dir, 'scheme')));
    await download(`${base}/a`, path.join(dir, 'a'));
    assert.deepEqual(readFileSync(path.join(dir, 'a')), body);
  } finally {
    close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('B11: a server dripping a byte now and then (each byte resets the idle timer) is cut off by the minimum rate, and a steady but endless one by the deadline', async () => {
  const { base, close } = await listen((req, res) => {
    // Bounded: hangs up by itself after 4 s.
    const stop = setTimeout(() => res.destroy(), 4000);
    res.writeHead(200, { 'content-length': 10_000_000 });
    // '/drip': a byte every 40 ms (10 ms under the idle timeout below); '/steady': 64 KiB every 50 ms.
    const drip = req.url === '/drip';
    const tick = setInterval(() => res.write(Buffer.alloc(drip ? 1 : 65536, 1)), drip ? 40 : 50);
    res.on('close', () => (clearTimeout(stop), clearInterval(tick)));
  });
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-attack-drip-'));
  try {
    let url = `${base}/drip`;
    let t0 = Date.now();
    let err = await failure(download(url, path.join(dir, 'drip'), undefined, { idleTimeoutMs: 300, minBytesPerS: 1000, rateWindowMs: 400 }));
    assert.match(err.message, new RegExp(`^GET ${esc(url)}: \\d+ bytes in the last 0\\.4 s, slower than the minimum 1000 bytes/s \\(run again to resume\\)$`));
    assert.ok(Date.now() - t0 < 1500, `gave up after ${Date.now() - t0} ms`);
    assert.ok(statSync(path.join(dir, 'drip.part')).size > 0, 'what came stays for the resume');
    url = `${base}/steady`;
    t0 = Date.now();
    err = await failure(download(url, path.join(dir, 'steady'), undefined, { idleTimeoutMs: 300, minBytesPerS: 1000, rateWindowMs: 400, deadlineMs: 700 }));
    assert.match(err.message, new RegExp(`^GET ${esc(url)}: not done after 0\\.7 s \\(the deadline; run again to resume\\)$`));
    assert.ok(Date.now() - t0 < 1500, `gave up after ${Date.now() - t0} ms`);
  } finally {
    close();
    rmSync(dir, { recursive: true, force: true });
  }
});
