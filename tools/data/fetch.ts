// `ssocl data fetch`: download a data set archive over HTTP(S) with resume (Range requests on a
// .part file), verify its checksum, and unpack the tar.gz. No dependency beyond node:http(s) and zlib.
// A hostile or broken server is bounded: connect and idle timeouts, an overall deadline and a minimum
// rate (a server dripping a byte now and then resets an idle timer for ever), a size cap, a redirect
// limit, and a completion marker so that an interrupted unpack is redone instead of taken as done.

import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, lstatSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { writeFileAtomic } from '../../core/atomic.ts';

export interface DatasetSource {
  url: string;
  file: string;
  md5: string;
  /** Directory the archive unpacks to. */
  dir: string;
  /** Size of the archive in bytes, when known: the download is capped a little above it. */
  size?: number;
}

// Checksums as published alongside the archives (https://www.cs.toronto.edu/~kriz/cifar.html); sizes as served there.
export const DATASETS: Record<'cifar10' | 'cifar100', DatasetSource> = {
  cifar10: { url: 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz', file: 'cifar-10-binary.tar.gz', md5: 'c32a1d4ab5d03f1284b67883e8d87530', dir: 'cifar-10-batches-bin', size: 170052171 },
  cifar100: { url: 'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz', file: 'cifar-100-binary.tar.gz', md5: '03b5dce01913d631647c71ecec9e9cb8', dir: 'cifar-100-binary', size: 168513733 },
};

export interface FetchOptions {
  /** Milliseconds to wait for the TCP connection (default 30 s). */
  connectTimeoutMs?: number;
  /** Milliseconds without a byte from the server, headers or body, before giving up (default 60 s). */
  idleTimeoutMs?: number;
  /** Redirects followed before giving up (default 5). */
  maxRedirects?: number;
  /** Refuse to let the file grow past this many bytes (default: none for download(), the data set's size + 1% for fetchDataset()). */
  maxBytes?: number;
  /** Milliseconds the whole download may take, redirects included (default 1 h: CIFAR at 50 kB/s). */
  deadlineMs?: number;
  /** Bytes per second the body must average over each rate window, or the download stops (default 10,240). */
  minBytesPerS?: number;
  /** Milliseconds over which the rate is measured (default 60 s). */
  rateWindowMs?: number;
}

export const DEFAULT_DEADLINE_MS = 3600_000;
export const DEFAULT_MIN_RATE = 10_240;

/** File name of the completion marker, written into the unpacked folder once it is complete and verified. */
export const COMPLETE_MARKER = '.ssocl-fetch-complete';

/** The size cap for an archive of `size` bytes: a mirror may differ slightly, the md5 is the real check. */
export function sizeCap(size: number): number {
  return Math.ceil(size * 1.01) + 65536;
}

export async function md5File(file: string): Promise<string> {
  const h = createHash('md5');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

const secs = (ms: number) => `${ms / 1000} s`;

/**
 * Downloads `url` to `dest`, resuming a previous `dest.part`; follows up to `maxRedirects` http(s) redirects.
 * Every failure is one line naming the URL; those worth retrying end in "(run again to resume)".
 */
export async function download(url: string, dest: string, progress?: (got: number, total: number | null) => void, opts: FetchOptions = {}): Promise<void> {
  const max = opts.maxRedirects ?? 5;
  if (!/^https?:\/\//i.test(url) || !URL.canParse(url)) throw new Error(`GET ${url}: not an http(s) URL`);
  let current = url;
  const deadlineAt = Date.now() + (opts.deadlineMs ?? DEFAULT_DEADLINE_MS);
  for (let hops = 0; ; hops++) {
    const location = await getOnce(current, dest, progress, opts, deadlineAt);
    if (location === null) return;
    if (hops >= max) throw new Error(`too many redirects (${max}) starting at ${url}`);
    let next: URL;
    try {
      next = new URL(location, current);
    } catch {
      throw new Error(`GET ${current}: redirect to an invalid location ${JSON.stringify(location.slice(0, 200))}`);
    }
    // file:, data: and the like would read local or made-up bytes as the download.
    if (!/^https?:$/.test(next.protocol)) throw new Error(`GET ${current}: redirect to ${JSON.stringify(next.href.slice(0, 200))} refused (only http and https are followed)`);
    current = next.href;
  }
}

/** One GET of `url` into `dest` (via `dest.part`); resolves with the Location of a redirect, or null once `dest` is complete. */
function getOnce(url: string, dest: string, progress: ((got: number, total: number | null) => void) | undefined, opts: FetchOptions, deadlineAt: number): Promise<string | null> {
  const part = `${dest}.part`;
  const cap = opts.maxBytes ?? Infinity;
  const connectMs = opts.connectTimeoutMs ?? 30_000;
  const idleMs = opts.idleTimeoutMs ?? 60_000;
  let have = existsSync(part) ? statSync(part).size : 0;
  if (have > cap) {
    // Already past the cap: not a prefix of the right file, so resuming it cannot help.
    rmSync(part, { force: true });
    have = 0;
  }
  return new Promise<string | null>((resolve, reject) => {
    let midBody: ((e: Error) => void) | null = null;
    // Set when fetch itself cuts the connection, so that this, not the socket error it causes, is reported.
    let reason: Error | null = null;
    const cut = (e: Error) => {
      reason ??= e;
      if (midBody) midBody(e);
      else reject(e);
      req.destroy();
    };
    const lib = new URL(url).protocol === 'https:' ? https : http;
    const req = lib.get(url, { headers: have ? { Range: `bytes=${have}-` } : {} }, (res) => {
      const code = res.statusCode ?? 0;
      if (code >= 300 && code < 400 && res.headers.location) {
        res.resume();
        resolve(res.headers.location);
        return;
      }
      if (code === 416 && have) {
        // Already complete.
        res.resume();
        renameSync(part, dest);
        resolve(null);
        return;
      }
      if (code !== 200 && code !== 206) {
        res.resume();
        reject(new Error(`GET ${url}: HTTP ${code}`));
        return;
      }
      const append = code === 206;
      const total = res.headers['content-length'] ? Number(res.headers['content-length']) + (append ? have : 0) : null;
      if (total !== null && total > cap) {
        req.destroy();
        reject(new Error(`GET ${url}: the server announces ${total} bytes, more than the ${cap} expected; refused`));
        return;
      }
      let got = append ? have : 0;
      let tooBig = false;
      // The minimum rate, measured over whole windows of the body.
      const minRate = opts.minBytesPerS ?? DEFAULT_MIN_RATE;
      const windowMs = opts.rateWindowMs ?? 60_000;
      let windowStart = got;
      rateTimer = setInterval(() => {
        const n = got - windowStart;
        windowStart = got;
        if (n < (minRate * windowMs) / 1000) cut(new Error(`GET ${url}: ${n} bytes in the last ${secs(windowMs)}, slower than the minimum ${minRate} bytes/s (run again to resume)`));
      }, windowMs);
      const out = createWriteStream(part, { flags: append ? 'a' : 'w' });
      // A dropped connection: finish writing what came (the next run resumes from the .part's size, so
      // rejecting before the flush would make it ask for bytes it already had) and close the file.
      let failed: Error | null = null;
      const close = () => {
        if (!out.writableEnded) out.end();
      };
      const fail = (e: Error) => {
        if (failed) return;
        failed = reason ?? e;
        close();
      };
      // Written by hand rather than piped, so that the chunk passing the cap is never written.
      res.on('data', (c: Buffer) => {
        if (failed) return;
        got += c.length;
        if (got > cap) {
          tooBig = true;
          cut(new Error(`GET ${url}: more than the ${cap} bytes expected; stopped and removed the partial download`));
          return;
        }
        progress?.(got, total);
        if (!out.write(c)) {
          res.pause();
          out.once('drain', () => res.resume());
        }
      });
      res.on('end', () => {
        clearInterval(rateTimer);
        close();
      });
      midBody = fail;
      const dropped = () => fail(new Error(`GET ${url}: connection closed after ${got} bytes (run again to resume)`));
      res.on('aborted', dropped);
      res.on('close', () => {
        if (!res.complete) dropped();
      });
      res.on('error', (e) => fail(e));
      out.on('error', (e) => reject(new Error(`writing ${part}: ${e.message}`)));
      out.on('finish', () => {
        if (tooBig) rmSync(part, { force: true });
        if (failed) reject(failed);
        else if (total !== null && got < total) reject(new Error(`GET ${url}: got ${got} of ${total} bytes (run again to resume)`));
        else {
          renameSync(part, dest);
          resolve(null);
        }
      });
    });
    // The connect timeout runs until the TCP connection is up; from then on the idle timeout (the TLS
    // handshake, the wait for the headers, every gap in the body).
    let connectTimer: NodeJS.Timeout | undefined;
    let rateTimer: NodeJS.Timeout | undefined;
    const total = opts.deadlineMs ?? DEFAULT_DEADLINE_MS;
    const deadline = setTimeout(() => cut(new Error(`GET ${url}: not done after ${secs(total)} (the deadline; run again to resume)`)), Math.max(0, deadlineAt - Date.now()));
    req.on('socket', (socket) => {
      if (!socket.connecting) return; // a kept-alive socket, connected already
      connectTimer = setTimeout(() => cut(new Error(`GET ${url}: no connection after ${secs(connectMs)} (connect timeout; run again to resume)`)), connectMs);
      socket.once('connect', () => clearTimeout(connectTimer));
    });
    req.on('close', () => {
      clearTimeout(connectTimer);
      clearTimeout(deadline);
      clearInterval(rateTimer);
    });
    req.setTimeout(idleMs, () => cut(new Error(`GET ${url}: nothing received for ${secs(idleMs)} (idle timeout; run again to resume)`)));
    req.on('error', (e) => {
      const err = reason ?? new Error(`GET ${url}: ${e.message} (run again to resume)`);
      // Mid-body: the same flush-then-reject as a dropped response.
      if (midBody) midBody(err);
      else reject(err);
    });
  });
}

/** Unpacks regular files of a (gzipped) ustar archive under `into`, refusing paths that escape it. */
export function untar(archive: Uint8Array, into: string): string[] {
  return untarFiles(archive, into).map((f) => f.path);
}

/** Creates the folders `rel` under `root` one level at a time, refusing anything but a real folder on the way. */
function mkdirInside(root: string, rel: string): void {
  let p = root;
  for (const part of rel.split(path.sep).filter(Boolean)) {
    p = path.join(p, part);
    const st = lstatSync(p, { throwIfNoEntry: false });
    // A symlink left there would carry the writes outside `root`.
    if (!st) mkdirSync(p);
    else if (!st.isDirectory()) throw new Error(`${p} is in the way of the archive's folder (${st.isSymbolicLink() ? 'a symlink' : 'not a folder'}); move it and run again`);
  }
}

function untarFiles(archive: Uint8Array, into: string): { path: string; size: number }[] {
  const tar = archive[0] === 0x1f && archive[1] === 0x8b ? gunzipSync(archive) : Buffer.from(archive);
  const root = path.resolve(into);
  mkdirSync(root, { recursive: true });
  const written: { path: string; size: number }[] = [];
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
    if (data.length < size) throw new Error(`archive entry '${name}' is cut short (${data.length} of ${size} bytes)`);
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
      mkdirInside(root, path.relative(root, target));
      continue;
    }
    mkdirInside(root, path.relative(root, path.dirname(target)));
    // Replace what is there rather than write through it: a leftover could be a symlink to elsewhere.
    const st = lstatSync(target, { throwIfNoEntry: false });
    if (st?.isDirectory()) throw new Error(`${target} is a folder where the archive has a file; move it and run again`);
    if (st) unlinkSync(target);
    writeFileSync(target, data, { flag: 'wx' });
    written.push({ path: target, size });
  }
  return written;
}

function readMarker(marker: string): { md5?: string } | null {
  try {
    return JSON.parse(readFileSync(marker, 'utf8'));
  } catch {
    return null;
  }
}

/**
 * Downloads, verifies and unpacks `src` under `dir`; returns the unpacked folder. A folder counts as done
 * only with its completion marker: one without (an interrupted unpack) is unpacked again over itself,
 * replacing the archive's own entries and leaving anything else in it alone.
 */
export async function fetchDataset(src: DatasetSource, dir: string, log: (s: string) => void = () => {}, opts: FetchOptions = {}): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const archive = path.join(dir, src.file);
  const out = path.join(dir, src.dir);
  const marker = path.join(out, COMPLETE_MARKER);
  if (readMarker(marker)?.md5 === src.md5) {
    log(`${out} exists already`);
    return out;
  }
  if (existsSync(out)) log(`${out} has no completion marker (an interrupted unpack?); unpacking again`);
  if (!existsSync(archive)) {
    let last = -1;
    await download(
      src.url,
      archive,
      (got, total) => {
        const pct = total ? Math.floor((100 * got) / total) : -1;
        if (pct !== last && pct % 10 === 0) log(`${src.file}: ${pct}% (${(got / 2 ** 20).toFixed(1)} MiB)`);
        last = pct;
      },
      { ...opts, maxBytes: opts.maxBytes ?? (src.size ? sizeCap(src.size) : undefined) },
    );
  }
  const sum = await md5File(archive);
  if (sum !== src.md5) {
    rmSync(archive, { force: true });
    throw new Error(`${src.file}: md5 ${sum} does not match the published ${src.md5}; the download was removed, run again`);
  }
  log(`${src.file}: md5 verified; unpacking`);
  const files = untarFiles(readFileSync(archive), dir);
  if (!statSync(out, { throwIfNoEntry: false })?.isDirectory()) throw new Error(`${src.file}: the archive has no ${src.dir}/ folder`);
  for (const f of files) {
    const size = statSync(f.path).size;
    if (size !== f.size) throw new Error(`${f.path}: ${size} bytes on disk, ${f.size} in the archive; run again`);
  }
  writeFileAtomic(marker, `${JSON.stringify({ md5: src.md5, file: src.file, files: files.map((f) => path.relative(out, f.path)) })}\n`);
  log(`unpacked ${files.length} files into ${dir}`);
  return out;
}
