// `ssocl data fetch`: download a data set archive over HTTP(S) with resume (Range requests on a
// .part file), verify its checksum, and unpack the tar.gz. No dependency beyond node:http(s) and zlib.

import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, mkdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { readFileSync } from 'node:fs';

export interface DatasetSource {
  url: string;
  file: string;
  md5: string;
  /** Directory the archive unpacks to. */
  dir: string;
}

// Checksums as published alongside the archives (https://www.cs.toronto.edu/~kriz/cifar.html).
export const DATASETS: Record<'cifar10' | 'cifar100', DatasetSource> = {
  cifar10: { url: 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz', file: 'cifar-10-binary.tar.gz', md5: 'c32a1d4ab5d03f1284b67883e8d87530', dir: 'cifar-10-batches-bin' },
  cifar100: { url: 'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz', file: 'cifar-100-binary.tar.gz', md5: '03b5dce01913d631647c71ecec9e9cb8', dir: 'cifar-100-binary' },
};

export async function md5File(file: string): Promise<string> {
  const h = createHash('md5');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Downloads `url` to `dest`, resuming a previous `dest.part`; follows redirects. */
export async function download(url: string, dest: string, progress?: (got: number, total: number | null) => void, redirects = 5): Promise<void> {
  const part = `${dest}.part`;
  const have = existsSync(part) ? statSync(part).size : 0;
  await new Promise<void>((resolve, reject) => {
    let midBody: ((e: Error) => void) | null = null;
    const lib = url.startsWith('https:') ? https : http;
    const req = lib.get(url, { headers: have ? { Range: `bytes=${have}-` } : {} }, (res) => {
      const code = res.statusCode ?? 0;
      if (code >= 300 && code < 400 && res.headers.location && redirects > 0) {
        res.resume();
        download(new URL(res.headers.location, url).toString(), dest, progress, redirects - 1).then(resolve, reject);
        return;
      }
      if (code === 416 && have) {
        // Already complete.
        res.resume();
        renameSync(part, dest);
        resolve();
        return;
      }
      if (code !== 200 && code !== 206) {
        res.resume();
        reject(new Error(`GET ${url}: HTTP ${code}`));
        return;
      }
      const append = code === 206;
      const total = res.headers['content-length'] ? Number(res.headers['content-length']) + (append ? have : 0) : null;
      let got = append ? have : 0;
      const out = createWriteStream(part, { flags: append ? 'a' : 'w' });
      res.on('data', (c: Buffer) => {
        got += c.length;
        progress?.(got, total);
      });
      res.pipe(out);
      // A dropped connection: finish writing what came (the next run resumes from the .part's size, so
      // rejecting before the flush would make it ask for bytes it already had) and close the file.
      let failed: Error | null = null;
      const fail = (e: Error) => {
        if (failed) return;
        failed = e;
        res.unpipe(out);
        out.end();
      };
      midBody = fail;
      res.on('aborted', () => fail(new Error(`GET ${url}: connection closed after ${got} bytes (run again to resume)`)));
      res.on('error', (e) => fail(e));
      out.on('error', (e) => reject(new Error(`writing ${part}: ${e.message}`)));
      out.on('finish', () => {
        if (failed) reject(failed);
        else if (total !== null && got < total) reject(new Error(`GET ${url}: got ${got} of ${total} bytes (run again to resume)`));
        else {
          renameSync(part, dest);
          resolve();
        }
      });
    });
    req.on('error', (e) => {
      const err = new Error(`GET ${url}: ${e.message} (run again to resume)`);
      // Mid-body: the same flush-then-reject as a dropped response.
      if (midBody) midBody(err);
      else reject(err);
    });
  });
}

/** Unpacks regular files of a (gzipped) ustar archive under `into`, refusing paths that escape it. */
export function untar(archive: Uint8Array, into: string): string[] {
  const tar = archive[0] === 0x1f && archive[1] === 0x8b ? gunzipSync(archive) : Buffer.from(archive);
  const root = path.resolve(into);
  const written: string[] = [];
  let pos = 0;
  let longName: string | null = null;
  while (pos + 512 <= tar.length) {
    const h = tar.subarray(pos, pos + 512);
    if (h.every((b) => b === 0)) break;
    const str = (a: number, n: number) => h.subarray(a, a + n).toString('utf8').replace(/\0.*$/s, '');
    let name = str(0, 100);
    const prefix = str(345, 155);
    if (prefix) name = `${prefix}/${name}`;
    const size = parseInt(str(124, 12).trim() || '0', 8);
    const type = String.fromCharCode(h[156]);
    const data = tar.subarray(pos + 512, pos + 512 + size);
    pos += 512 + Math.ceil(size / 512) * 512;
    if (type === 'L') {
      longName = data.toString('utf8').replace(/\0.*$/s, '');
      continue;
    }
    if (longName) {
      name = longName;
      longName = null;
    }
    if (type !== '0' && type !== '\0' && type !== '5') continue; // links and specials are skipped
    const target = path.resolve(root, name);
    if (!(target === root || target.startsWith(root + path.sep))) throw new Error(`archive entry '${name}' would be written outside ${root}`);
    if (type === '5') {
      mkdirSync(target, { recursive: true });
      continue;
    }
    mkdirSync(path.dirname(target), { recursive: true });
    writeFileSync(target, data);
    written.push(target);
  }
  return written;
}

export async function fetchDataset(src: DatasetSource, dir: string, log: (s: string) => void = () => {}): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const archive = path.join(dir, src.file);
  if (existsSync(path.join(dir, src.dir))) {
    log(`${path.join(dir, src.dir)} exists already`);
    return path.join(dir, src.dir);
  }
  if (!existsSync(archive)) {
    let last = -1;
    await download(src.url, archive, (got, total) => {
      const pct = total ? Math.floor((100 * got) / total) : -1;
      if (pct !== last && pct % 10 === 0) log(`${src.file}: ${pct}% (${(got / 2 ** 20).toFixed(1)} MiB)`);
      last = pct;
    });
  }
  const sum = await md5File(archive);
  if (sum !== src.md5) {
    rmSync(archive, { force: true });
    throw new Error(`${src.file}: md5 ${sum} does not match the published ${src.md5}; the download was removed, run again`);
  }
  log(`${src.file}: md5 verified; unpacking`);
  const files = untar(readFileSync(archive), dir);
  log(`unpacked ${files.length} files into ${dir}`);
  return path.join(dir, src.dir);
}
