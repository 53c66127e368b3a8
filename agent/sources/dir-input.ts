// A watched directory as the run's source: files are read (confined to the directory, links and hard
// links refused), decoded to the training size (bad ones quarantined), held aside while learnt from,
// and committed (ledger, then --after-ingest) only once checkpoints hold what was learnt:
// - a frame's ledger line is written when the first checkpoint after it verifies;
// - it is deleted or moved (--after-ingest) when the checkpoint after that verifies too, so losing
//   the newest checkpoint loses no frame (the one before it plus the frames still on disk redo it);
// - frames of an arrival whose every update was skipped taught nothing: never committed by this run.
// With --passes N (--after-ingest keep only) the frames the ledger holds are read again, in name order,
// once the folder is drained, until N passes are learnt; the pass and the position in it are saved in
// the checkpoint counters, so a restarted agent goes on where it stopped. New frames stay welcome
// (read before the pass's own) and join the next pass.

import { existsSync, lstatSync, mkdirSync, readdirSync, renameSync, statSync } from 'node:fs';
import path from 'node:path';
import { decodeFrame, FrameError, type Fit } from '../frames/decode.ts';
import type { PendingFrame } from '../trainer/checkpoint.ts';
import { DirSource, type FileFrame, type Overflow } from './dir.ts';
import { AfterIngest, moveFile, Quarantine, uniqueTarget } from './files.ts';
import { Ledger } from './ledger.ts';
import { confinedPath, readRegularFile, UnreadableFile } from './read.ts';
import type { Counters, Frame, PassState, Source } from './source.ts';

export interface DirInputOptions {
  watch: string;
  recursive: boolean;
  order: 'name' | 'mtime';
  allowHardLinks: boolean;
  rootReplaced: 'follow' | 'stop';
  afterIngest: 'keep' | 'move' | 'delete';
  processed: string;
  quarantine: string;
  stateDir: string;
  models: string;
  size: number;
  fit: Fit;
  maxPixels: number;
  overflow: Overflow;
  backlog: number;
  stableMs: number;
  /** Passes over the frames (1: each frame once); more than 1 needs afterIngest 'keep'. */
  passes?: number;
  log: (line: string) => void;
}

/** What the resumed checkpoint says of frames (see the header). */
export interface DirResume {
  /** Frames the resumed checkpoint learnt from since the one before it. */
  pending: PendingFrame[];
  /** Newer checkpoints did not verify: frames they held are taken again. */
  rejectedNewer: boolean;
}

export class DirInput implements Source {
  ended = '';
  readonly failed = false;
  /** When a file was last taken (good or bad), for --exit-when-idle. */
  lastActivity = 0;
  private readonly dir: DirSource;
  private readonly ledger: Ledger;
  private readonly quarantine: Quarantine;
  private readonly after: AfterIngest;
  private readonly watch: string;
  private readonly heldDir: string;
  private holding: boolean;
  private readonly graceMs: number;
  /** Read since the last checkpoint. */
  private uncommitted: FileFrame[] = [];
  /** In the ledger and held by the newest verified checkpoint; finished when the next one verifies. */
  private prevPending: FileFrame[] = [];
  private lastCkptFile: string;
  private pendingIds: Set<string>;
  private droppedSince = 0;
  /** This pass's frames still to read again (passes after the first). */
  private replay: FileFrame[] = [];
  private readonly passes: number;

  constructor(
    private o: DirInputOptions,
    private counters: Counters,
    private resumed: DirResume & { file: string },
  ) {
    this.watch = path.resolve(o.watch);
    this.ledger = new Ledger(path.join(o.stateDir, 'ingested.log'));
    this.quarantine = new Quarantine(o.quarantine, o.log);
    // With --after-ingest delete|move a frame leaves the watched directory as soon as it is read, into
    // <state>/held/: left in place until the checkpoint (minutes) it would keep a watcher and a stat
    // poll each (the one-hour soak saw RSS saw-tooth 40-60 MB with ~2000 frames waiting).
    this.heldDir = path.join(o.stateDir, 'held');
    this.holding = o.afterIngest !== 'keep';
    this.after = new AfterIngest(o.afterIngest, o.processed, this.heldDir, () => this.dir.root, o.log);
    // A writer that paused longer than --stable-ms may not be done: a frame that fails to decode this
    // soon after its last change is looked at again before it is quarantined.
    this.graceMs = Math.max(5000, 10 * o.stableMs);
    this.lastCkptFile = resumed.file;
    this.passes = o.passes ?? 1;
    if (this.passes > 1 && o.afterIngest !== 'keep') throw new Error('--passes over 1 needs --after-ingest keep');
    counters.pass ||= 1;
    counters.passFrames ||= 0;
    counters.passPosition ||= 0;
    this.pendingIds = new Set(resumed.pending.map((p) => Ledger.key(p.key, p.size, p.mtimeMs)));
    this.dir = new DirSource({
      dir: this.watch,
      recursive: o.recursive,
      order: o.order,
      ledger: this.ledger,
      ignore: [o.processed, o.quarantine, o.stateDir, o.models].map((d) => path.resolve(d)),
      overflow: o.overflow,
      backlog: o.backlog,
      stableMs: o.stableMs,
      onDrop: (f) => this.dropped(f),
      onRefused: (p, why) => {
        counters.refused++;
        o.log(`refused ${p}: ${why}`);
      },
      onBadName: (dir, raw) => {
        counters.quarantined++;
        this.quarantine.moveRawName(this.dir.root, dir, raw);
      },
      rootReplaced: o.rootReplaced,
      onRootLost: (why) => {
        o.log(`${why}: stopping`);
        this.ended = why;
        void this.dir.close();
      },
    });
  }

  get busy(): boolean {
    // A frame that may still be being written waits for its second look.
    return this.dir.deferred > 0;
  }
  get waiting(): number {
    return this.dir.pending + this.replay.length;
  }

  get pass(): PassState {
    const c = this.counters;
    return { index: c.pass, of: Math.max(this.passes, c.pass), frames: c.passFrames, total: c.passFrames + this.waiting };
  }

  /** Starts the next pass once this one is learnt (and checkpointed, so the ledger holds it); false after the last. */
  nextPass(): boolean {
    const c = this.counters;
    if (c.pass >= this.passes) return false;
    c.pass++;
    c.passFrames = 0;
    c.passPosition = 0;
    this.replay = this.passList();
    this.o.log(`pass ${c.pass}/${this.passes}: learning the ${this.replay.length} frames again`);
    return true;
  }

  /** The frames a later pass reads again: those the ledger holds as learnt, in name order. */
  private passList(): FileFrame[] {
    return this.ledger.entries('ingested').map((e) => ({ key: e.rel, path: path.join(this.watch, e.rel), size: e.size, mtimeMs: e.mtimeMs, arrival: Date.now() }));
  }

  /** A frame of this pass read again; null when it is gone or changed (a changed one comes as a new frame). */
  private async again(): Promise<Frame | null> {
    const f = this.replay.shift()!;
    this.counters.passPosition++;
    this.lastActivity = Date.now();
    try {
      const bytes = readRegularFile(f.path, undefined, undefined, { root: this.dir.root, allowHardLinks: this.o.allowHardLinks });
      if (bytes.length !== f.size || Math.floor(statSync(f.path).mtimeMs) !== Math.floor(f.mtimeMs)) throw new Error('changed since it was learnt');
      const image = await decodeFrame(bytes, path.extname(f.path), { size: this.o.size, fit: this.o.fit, maxPixels: this.o.maxPixels });
      this.counters.passFrames++;
      return { key: f.key, image };
    } catch (e) {
      this.o.log(`pass ${this.counters.pass}: skipped ${f.key} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
      return null;
    }
  }
  get progress(): null {
    return null;
  }

  describe(): string {
    return `watching ${this.watch} (${this.dir.pending} frames waiting)`;
  }

  where(key: string): string {
    return path.join(this.o.watch, key);
  }

  async start(): Promise<void> {
    this.restoreHeld();
    // Frames the resumed checkpoint learnt from that stayed in place (keep, or another filesystem): not taken again.
    for (const p of this.resumed.pending) {
      if (!this.pendingIds.has(Ledger.key(p.key, p.size, p.mtimeMs))) continue;
      const f: FileFrame = { key: p.key, path: path.join(this.watch, p.key), size: p.size, mtimeMs: p.mtimeMs, arrival: Date.now() };
      if (!this.ledger.has(p.key, p.size, p.mtimeMs)) this.ledger.record('ingested', p.key, p.size, p.mtimeMs);
      this.dir.claim(f);
      this.prevPending.push(f);
    }
    // Resumed in a later pass: the rest of it.
    if (this.counters.pass > 1) {
      const all = this.passList();
      this.replay = all.slice(this.counters.passPosition);
      if (this.counters.pass <= this.passes) this.o.log(`resuming pass ${this.counters.pass}/${this.passes} at frame ${Math.min(this.counters.passPosition, all.length)} of ${all.length}`);
    }
    await this.dir.start();
  }

  /** The next decodable frame; null on timeout, or after a file that could not be used. */
  async next(waitMs: number): Promise<Frame | null> {
    if (this.replay.length && !this.dir.pending) return this.again();
    const f = await this.dir.next(waitMs);
    if (!f) return null;
    this.lastActivity = Date.now();
    const image = await this.read(f);
    if (!image) return null;
    this.counters.passFrames++;
    // Recorded in the ledger only once a checkpoint holds what was learnt from it (see the header).
    this.hold(f);
    this.uncommitted.push(f);
    return { key: f.key, image, ref: f };
  }

  /** The decoded image, or null (the file refused, skipped, deferred or quarantined, and logged). */
  private async read(f: FileFrame): Promise<Uint8Array | null> {
    const o = this.o;
    let bytes: Buffer;
    try {
      // The directory is untrusted: a file may have become a link, or its directory one, since it was
      // queued; the read checks the real path of what it opened.
      bytes = readRegularFile(f.path, undefined, undefined, { root: this.dir.root, allowHardLinks: o.allowHardLinks });
    } catch (e) {
      this.counters.refused++;
      const confinement = e instanceof UnreadableFile && (e.code === 'EOUTSIDE' || e.code === 'EHARDLINK');
      const why = e instanceof UnreadableFile ? e.message : `${(e as NodeJS.ErrnoException).code ?? (e as Error).message} (gone before it could be read)`;
      o.log(`${confinement ? 'refused' : 'skipped'} ${f.key}: ${why}`);
      this.dir.forget(f);
      return null;
    }
    if (bytes.length !== f.size) {
      // Still being written when it was queued: its final version comes with the next change event.
      o.log(`deferred ${f.key}: it changed size since it was queued (${f.size} -> ${bytes.length} bytes)`);
      this.dir.forget(f);
      return null;
    }
    try {
      return await decodeFrame(bytes, path.extname(f.path), { size: o.size, fit: o.fit, maxPixels: o.maxPixels });
    } catch (e) {
      const why = e instanceof FrameError ? e.message : `decode failed: ${(e as Error).message}`;
      if (Date.now() - f.mtimeMs < this.graceMs) {
        o.log(`deferred ${f.key}: ${why}; modified ${Math.round(Date.now() - f.mtimeMs)} ms ago, looking again in ${this.graceMs / 1000} s`);
        this.dir.recheckLater(f, this.graceMs);
      } else this.quarantineFrame(f, why);
      return null;
    }
  }

  private quarantineFrame(f: FileFrame, reason: string): void {
    this.counters.quarantined++;
    try {
      this.ledger.record('quarantined', f.key, f.size, f.mtimeMs);
    } catch (e) {
      this.o.log(`could not record ${f.key} as quarantined in the ledger (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    this.dir.forget(f);
    this.quarantine.move(() => confinedPath(f.path, this.dir.root), f.key, f.key, reason);
  }

  private dropped(f: FileFrame): void {
    this.counters.dropped++;
    // Reported as a count every 10 s (a camera far ahead of training would flood the log otherwise).
    if (!this.droppedSince++) setTimeout(() => {
      this.o.log(`dropped ${this.droppedSince} frame(s) in 10 s (from ${f.key} on): backlog over ${this.o.backlog} frames (--overflow drop-oldest)`);
      this.droppedSince = 0;
    }, 10_000).unref();
    // Done with like an ingested frame (deleted or moved), so a camera directory does not fill up with
    // frames nobody will read, nor the watcher's and ledger's memory with them.
    if (this.after.apply(f)) this.ledger.forget(f.key, f.size, f.mtimeMs);
  }

  /** Moves a frame being learnt from into held/ (see the constructor). */
  private hold(f: FileFrame): void {
    if (!this.holding) return;
    const to = path.join(this.heldDir, f.key);
    try {
      const from = confinedPath(f.path, this.dir.root);
      mkdirSync(path.dirname(to), { recursive: true });
      renameSync(from, to);
      f.path = to;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EXDEV') {
        this.holding = false;
        this.o.log(`--state ${this.o.stateDir} is on another filesystem than ${this.watch}: frames stay in the watched directory until the checkpoint`);
      } else if (code !== 'ENOENT') this.o.log(`could not hold ${f.key} in ${this.heldDir} (${(e as Error).message}); it stays in place until the checkpoint`);
    }
  }

  /**
   * Frames in held/ at start: held by a run that stopped before its checkpoint (or whose checkpoint did
   * not verify) go back where they were, to be taken again; those the resumed checkpoint learnt from
   * stay held until the next one; those an earlier checkpoint holds (in the ledger) are finished.
   */
  private restoreHeld(): void {
    if (!existsSync(this.heldDir)) return;
    const rejectedNewer = this.resumed.rejectedNewer;
    let back = 0;
    let finished = 0;
    for (const key of readdirSync(this.heldDir, { recursive: true, encoding: 'utf8' })) {
      const abs = path.join(this.heldDir, key);
      try {
        const st = lstatSync(abs);
        if (!st.isFile()) continue;
        const f: FileFrame = { key, path: abs, size: st.size, mtimeMs: st.mtimeMs, arrival: Date.now() };
        const inLedger = this.ledger.has(key, st.size, st.mtimeMs);
        if (this.pendingIds.delete(Ledger.key(key, st.size, st.mtimeMs))) {
          // The resumed checkpoint learnt from it (a kill may have come before its ledger line).
          if (!inLedger) this.ledger.record('ingested', key, st.size, st.mtimeMs);
          this.prevPending.push(f);
        } else if (inLedger && !rejectedNewer) {
          if (this.after.apply(f)) this.ledger.forget(key, st.size, st.mtimeMs);
          finished++;
        } else {
          // Not held by the checkpoint resumed from (one that did not verify did): learnt again.
          if (inLedger) this.ledger.record('returned', key, st.size, st.mtimeMs);
          const target = uniqueTarget(this.watch, key); // a new name if one of its name came meanwhile
          confinedPath(target, this.dir.root);
          moveFile(abs, target);
          back++;
        }
      } catch (e) {
        this.o.log(`could not return held frame ${abs}: ${(e as Error).message}`);
      }
    }
    if (back) this.o.log(`${back} frame(s) read by a run that stopped before its checkpoint${rejectedNewer ? ' (or whose checkpoint did not verify)' : ''} are back in ${this.watch}`);
    if (finished) this.o.log(`${finished} frame(s) the last checkpoint holds were finished (--after-ingest ${this.o.afterIngest})`);
  }

  save(): void {}

  arrivalDone(frames: Frame[], learnt: boolean): void {
    if (learnt) return;
    for (const fr of frames) {
      const i = this.uncommitted.indexOf(fr.ref as FileFrame);
      if (i >= 0) this.uncommitted.splice(i, 1);
    }
  }

  pendingFrames(): PendingFrame[] {
    return [...this.prevPending, ...this.uncommitted].map(({ key, size, mtimeMs }) => ({ key, size, mtimeMs }));
  }

  committed(file: string): void {
    // The same name is the same state written again (e.g. the final checkpoint right after a periodic
    // one): it replaced that file, so still only one checkpoint holds the previous frames.
    if (file !== this.lastCkptFile) for (const f of this.prevPending.splice(0)) if (this.after.apply(f)) this.ledger.forget(f.key, f.size, f.mtimeMs);
    this.lastCkptFile = file;
    // One by one, so a failed append (disk full) leaves the rest for the next checkpoint.
    while (this.uncommitted.length) {
      const f = this.uncommitted[0];
      this.ledger.record('ingested', f.key, f.size, f.mtimeMs);
      this.uncommitted.shift();
      this.dir.forget(f);
      this.prevPending.push(f);
    }
  }

  close(): Promise<void> {
    return this.dir.close();
  }
}
