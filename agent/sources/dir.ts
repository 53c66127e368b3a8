// The `dir` source: frames from a watched directory (chokidar). Files already there are taken in
// name or mtime order; new ones once fully written (size stable; renames into the directory count as
// new files). Only paths wait in the queue, so a slow trainer holds back reading, not memory; the
// overflow policy (block | drop-oldest) decides what happens when the backlog passes its limit.

import chokidar, { type FSWatcher } from 'chokidar';
import { closeSync, fstatSync, lstatSync, openSync, readdirSync, realpathSync, statSync, type Stats } from 'node:fs';
import path from 'node:path';
import { FRAME_EXTENSIONS } from '../frames/decode.ts';
import { Ledger } from './ledger.ts';
import { isInside } from './read.ts';

export interface FileFrame {
  /** Path relative to the watched directory. */
  key: string;
  path: string;
  size: number;
  mtimeMs: number;
  /** When the source saw it (ms since epoch). */
  arrival: number;
}

export type Overflow = 'block' | 'drop-oldest';

export interface DirSourceOptions {
  dir: string;
  recursive: boolean;
  order: 'name' | 'mtime';
  ledger: Ledger;
  /** Directories inside `dir` to ignore (processed, quarantine). */
  ignore: string[];
  overflow: Overflow;
  /** Backlog length beyond which drop-oldest drops. */
  backlog: number;
  /** How long a file's size must stay unchanged before it is read. */
  stableMs: number;
  onDrop?: (f: FileFrame) => void;
  onRefused?: (absPath: string, reason: string) => void;
  /** A name that is not valid UTF-8 (no string path can reach it): the caller moves it aside. */
  onBadName?: (dir: string, raw: Buffer) => void;
  /**
   * The watched path no longer names the directory watched (deleted, recreated, or replaced by a
   * link). 'follow': watch what it names now if that is a real directory; 'stop': call onRootLost.
   */
  rootReplaced?: 'follow' | 'stop';
  onRootLost?: (why: string) => void;
  /** How often the watched path is checked (ms). */
  rootCheckMs?: number;
}

export class DirSource implements AsyncIterable<FileFrame> {
  private queue: FileFrame[] = [];
  private queued = new Set<string>();
  private refusedLinks = new Set<string>();
  private waiters: ((f: FileFrame | null) => void)[] = [];
  private watcher: FSWatcher | null = null;
  private closed = false;
  private resolveClosed!: () => void;
  private closedPromise = new Promise<void>((r) => (this.resolveClosed = r));
  private rootTimer: NodeJS.Timeout | null = null;
  // Held open while watching, so a deleted root's inode cannot be reused by the directory recreated in
  // its place (which would give it the same device:inode identity).
  private rootFd: number | null = null;
  private rootId = '';
  private rootNote = '';
  private badNames = new Set<string>();
  dropped = 0;
  /** Frames waiting for a second look (see recheckLater). */
  deferred = 0;
  root: string;

  constructor(readonly o: DirSourceOptions) {
    // Real path, so links that stay inside a watch path reached through a link are still inside.
    this.root = realpathSync(path.resolve(o.dir));
  }

  private holdRoot(): void {
    if (this.rootFd !== null) closeSync(this.rootFd);
    this.rootFd = openSync(this.root, 'r');
    this.rootId = identity(fstatSync(this.rootFd));
  }

  inside(real: string): boolean {
    return isInside(this.root, real);
  }

  private eligible(abs: string): boolean {
    if (!FRAME_EXTENSIONS.includes(path.extname(abs).toLowerCase())) return false;
    const rel = path.relative(this.root, abs);
    if (rel.startsWith('..') || path.basename(abs).startsWith('.')) return false;
    if (!this.o.recursive && rel.includes(path.sep)) return false;
    return !this.o.ignore.some((d) => abs === d || abs.startsWith(d + path.sep));
  }

  private offer(abs: string): void {
    if (this.closed || !this.eligible(abs)) return;
    let st;
    try {
      // Every level, not just the file: under --recursive a subdirectory may have become a link.
      const realDir = realpathSync(path.dirname(abs));
      if (!this.inside(path.join(realDir, path.basename(abs)))) {
        if (!this.refusedLinks.has(`${abs}\0${realDir}`)) {
          this.refusedLinks.add(`${abs}\0${realDir}`);
          this.o.onRefused?.(abs, `its directory now resolves to ${realDir}, outside the watched directory`);
        }
        return;
      }
      const l = lstatSync(abs);
      if (l.isSymbolicLink()) {
        // Untrusted directory: a link may point anywhere; only follow it inside the watched tree.
        const real = realpathSync(abs);
        if (!this.inside(real)) {
          // Reported once per link (the listing and a watcher event can both see it).
          if (this.refusedLinks.has(`${abs}\0${real}`)) return;
          this.refusedLinks.add(`${abs}\0${real}`);
          this.o.onRefused?.(abs, `symbolic link to ${real}, outside the watched directory`);
          return;
        }
      }
      st = statSync(abs);
    } catch {
      return; // gone between event and look
    }
    if (!st.isFile()) return;
    const key = path.relative(this.root, abs);
    if (this.o.ledger.has(key, st.size, st.mtimeMs)) return;
    const id = Ledger.key(key, st.size, st.mtimeMs);
    if (this.queued.has(id)) return;
    this.queued.add(id);
    const f: FileFrame = { key, path: abs, size: st.size, mtimeMs: st.mtimeMs, arrival: Date.now() };
    const w = this.waiters.shift();
    if (w) {
      w(f);
      return;
    }
    this.queue.push(f);
    if (this.o.overflow === 'drop-oldest' && this.queue.length > this.o.backlog) {
      const old = this.queue.shift()!;
      this.dropped++;
      try {
        this.o.ledger.record('dropped', old.key, old.size, old.mtimeMs);
      } catch (e) {
        // In a watcher callback: never let a full disk throw out of it.
        this.o.onRefused?.(old.path, `dropped, but the ledger could not record it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
      }
      this.forget(old);
      this.o.onDrop?.(old);
    }
  }

  /** Offers `abs` once its size and mtime stop changing (at most a few tries; events cover the rest). */
  private recheck(abs: string, tries: number): void {
    const before = statKey(abs);
    setTimeout(() => {
      if (this.closed) return;
      const after = statKey(abs);
      if (after !== null && after === before) this.offer(abs);
      else if (after !== null && tries < 20) this.recheck(abs, tries + 1);
    }, this.o.stableMs).unref();
  }

  private scan(dir: string, out: string[]): void {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true, encoding: 'buffer' });
    } catch (e) {
      this.o.onRefused?.(dir, `cannot list: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      return;
    }
    for (const d of entries) {
      const name = d.name.toString('utf8');
      if (!Buffer.from(name, 'utf8').equals(d.name)) {
        // Node turns invalid bytes into U+FFFD: the string names no file, so it would sit here unseen.
        if (!d.isDirectory()) this.badName(dir, d.name);
        continue;
      }
      const abs = path.join(dir, name);
      if (d.isDirectory()) {
        if (this.o.recursive && !this.o.ignore.includes(abs)) this.scan(abs, out);
      } else out.push(abs);
    }
  }

  private badName(dir: string, raw: Buffer): void {
    const id = `${dir}\0${raw.toString('hex')}`;
    if (this.badNames.has(id)) return;
    this.badNames.add(id);
    this.o.onBadName?.(dir, raw);
  }

  /** Looks at `f` again after `ms` (a frame that may still be being written), if it still exists. */
  recheckLater(f: FileFrame, ms: number): void {
    this.forget(f);
    this.deferred++;
    setTimeout(() => {
      if (!this.closed) this.recheck(f.path, 0);
    }, ms).unref();
    // Counted until its recheck has had time to offer it again.
    setTimeout(() => this.deferred--, ms + this.o.stableMs + 100).unref();
  }

  /** The watched path still names the directory being watched? Reported once per change. */
  private checkRoot(): void {
    const given = path.resolve(this.o.dir);
    let note = '';
    let next: string | null = null;
    try {
      const l = lstatSync(given);
      const real = realpathSync(given);
      if (l.isSymbolicLink() && real !== this.root) note = `was replaced by a symbolic link to ${real}`;
      else if (!statSync(real).isDirectory()) note = 'is no longer a directory';
      else if (identity(statSync(real)) !== this.rootId) {
        note = 'was deleted and recreated';
        next = real;
      }
    } catch {
      note = 'is gone';
    }
    if (note === this.rootNote) return;
    this.rootNote = note;
    if (!note) return;
    const msg = `the watched directory ${given} ${note}`;
    if (this.o.rootReplaced === 'stop') {
      this.o.onRootLost?.(`${msg} (--root-replaced stop)`);
      return;
    }
    if (!next) {
      this.o.onRefused?.(given, `${msg}; not followed (only a real directory is), waiting for one`);
      return;
    }
    this.o.onRefused?.(given, `${msg}; now watching the new one (--root-replaced follow)`);
    this.root = next;
    this.holdRoot();
    this.rootNote = '';
    void this.rewatch();
  }

  private async rewatch(): Promise<void> {
    await this.watcher?.close();
    this.watcher = null;
    if (!this.closed) await this.watchAndList();
  }

  /** Queues what is there now (in the chosen order), then watches for more. */
  async start(): Promise<void> {
    this.holdRoot();
    await this.watchAndList();
    this.rootTimer = setInterval(() => this.checkRoot(), this.o.rootCheckMs ?? 1000);
    this.rootTimer.unref();
  }

  private async watchAndList(): Promise<void> {
    // Watch first, then list: a file created in between comes as an event or in the listing, and
    // the queued set and the ledger drop the second sighting.
    this.watcher = chokidar.watch(this.root, {
      ignoreInitial: true,
      depth: this.o.recursive ? undefined : 0,
      followSymlinks: false,
      awaitWriteFinish: { stabilityThreshold: this.o.stableMs, pollInterval: Math.max(10, Math.floor(this.o.stableMs / 4)) },
      ignored: (p: string) => this.o.ignore.some((d) => p === d || p.startsWith(d + path.sep)),
    });
    this.watcher.on('add', (p) => {
      // A name chokidar got as lossy UTF-8: find the real bytes with a raw listing of its directory.
      if (p.includes('\uFFFD')) this.scan(path.dirname(path.resolve(p)), []);
      this.offer(path.resolve(p));
    });
    this.watcher.on('change', (p) => this.offer(path.resolve(p)));
    // E.g. ENOSPC (inotify watch limit) or EMFILE: report, keep going with what works.
    this.watcher.on('error', (e) => this.o.onRefused?.(this.root, `watcher error: ${(e as Error).message}`));
    await Promise.race([new Promise<void>((resolve) => this.watcher!.once('ready', () => resolve())), this.closedPromise]);
    if (this.closed) return;
    const existing: string[] = [];
    this.scan(this.root, existing);
    const withTime = existing.filter((f) => this.eligible(f)).map((f) => ({ f, t: safeMtime(f) }));
    withTime.sort((a, b) => (this.o.order === 'mtime' ? a.t - b.t || a.f.localeCompare(b.f) : a.f.localeCompare(b.f)));
    // A file modified within the stability window may still be being written: look again after it.
    const now = Date.now();
    for (const { f, t } of withTime) {
      if (now - t >= this.o.stableMs) this.offer(f);
      else this.recheck(f, 0);
    }
  }

  /** A frame taken before this source started (the resumed checkpoint's): not offered again. */
  claim(f: FileFrame): void {
    this.queued.add(Ledger.key(f.key, f.size, f.mtimeMs));
  }

  /** A taken frame is settled (in the ledger, or gone): stop remembering it, so memory stays flat. */
  forget(f: FileFrame): void {
    this.queued.delete(Ledger.key(f.key, f.size, f.mtimeMs));
  }

  get pending(): number {
    return this.queue.length;
  }

  /** Next frame, or null once closed; `timeoutMs` bounds the wait (null on timeout too). */
  next(timeoutMs?: number): Promise<FileFrame | null> {
    const f = this.queue.shift();
    if (f) return Promise.resolve(f);
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve) => {
      const w = (x: FileFrame | null) => {
        if (timer) clearTimeout(timer);
        resolve(x);
      };
      const timer = timeoutMs !== undefined ? setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        resolve(null);
      }, timeoutMs) : null;
      this.waiters.push(w);
    });
  }

  async *[Symbol.asyncIterator](): AsyncIterator<FileFrame> {
    for (;;) {
      const f = await this.next();
      if (!f) return;
      yield f;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.rootTimer) clearInterval(this.rootTimer);
    if (this.rootFd !== null) closeSync(this.rootFd);
    this.rootFd = null;
    this.resolveClosed();
    for (const w of this.waiters.splice(0)) w(null);
    await this.watcher?.close();
  }
}

/** A directory's identity (device and inode): a deleted and recreated one has a new one. */
function identity(st: Stats): string {
  return `${st.dev}:${st.ino}`;
}

function statKey(f: string): string | null {
  try {
    const st = statSync(f);
    return `${st.size}:${st.mtimeMs}`;
  } catch {
    return null;
  }
}

function safeMtime(f: string): number {
  try {
    return statSync(f).mtimeMs;
  } catch {
    return 0;
  }
}
