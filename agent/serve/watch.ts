// Follows a running (or finished) agent from the outside by polling what it writes: the metrics file,
// its status record, the buffer (live snapshot or newest checkpoint), latest.json, the quarantine folder. Polling rather than fs.watch: the
// agent replaces files by rename and its directories may not exist yet when the server starts, and a
// stat a few times a second costs nothing. Nothing here writes, creates or locks anything.

import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { readBufferView, readLiveBufferView, newestCheckpointName, type BufferView } from './buffer-view.ts';
import { LIVE_BUFFER_FILE } from '../buffer/snapshot.ts';
import { MetricsTail, type MetricsBatch } from './metrics.ts';
import { readModelView, type ModelView } from './model-view.ts';
import { QuarantineReader, type QuarantineView } from './quarantine-view.ts';
import { describeStatus, readStatus, type AgentStatusView, type StatusRecord } from './status-view.ts';

export interface AgentDirs {
  state: string;
  models: string;
  metrics?: string;
  /** Default <state>/quarantine, as ssocl run's. */
  quarantine: string;
}

export interface Presence {
  state: boolean;
  checkpoints: boolean;
  models: boolean;
  metrics: boolean | null;
}

export type WatchEvent =
  | { type: 'metrics'; data: MetricsBatch }
  | { type: 'buffer'; data: Omit<BufferView, 'images'> }
  | { type: 'model'; data: ModelView }
  | { type: 'quarantine'; data: QuarantineView }
  | { type: 'presence'; data: Presence }
  | { type: 'status'; data: AgentStatusView };

export interface WatchTiming {
  /** How often the metrics file and the directories are looked at. */
  pollMs: number;
  /** At most one checkpoint read per this long (each is a whole file, verified). */
  bufferMs: number;
  /** The quarantine folder (a recursive listing) at most this often. */
  quarantineMs: number;
}

const stamp = (file: string): string => {
  try {
    const s = statSync(file);
    return `${s.ino}:${s.size}:${s.mtimeMs}`;
  } catch {
    return '';
  }
};

export class AgentWatch {
  readonly tail: MetricsTail;
  readonly warn: (msg: string) => void;
  buffer: BufferView | null = null;
  model: ModelView | null = null;
  quarantine: QuarantineView | null = null;
  presence: Presence | null = null;
  /** The status view as last announced (what a change is measured against). */
  private statusView: AgentStatusView = describeStatus(null);
  private listeners = new Set<(e: WatchEvent) => void>();
  private timer: NodeJS.Timeout | null = null;
  private busy = false;
  private modelStamp = '';
  private statusStamp = '';
  private statusRecord: StatusRecord | null = null;
  private checkpointView: BufferView | null = null;
  private liveView: BufferView | null = null;
  private liveStamp = '';
  private lastBufferRead = 0;
  private lastQuarantineRead = 0;
  private quarantineJson = '';
  private quarantineReader: QuarantineReader;

  constructor(
    readonly dirs: AgentDirs,
    private timing: WatchTiming = { pollMs: 500, bufferMs: 2000, quarantineMs: 2000 },
    /** Says what was found but not read (a link, a FIFO, a hard link in the agent's folders), once each. */
    warn: (msg: string) => void = (m) => process.stderr.write(`ssocl serve: ${m}\n`),
  ) {
    // Polled again and again: each thing is said once.
    const said = new Set<string>();
    this.warn = (m) => {
      if (said.has(m)) return;
      if (said.size > 10_000) said.clear();
      said.add(m);
      warn(m);
    };
    this.tail = new MetricsTail(dirs.metrics);
    this.quarantineReader = new QuarantineReader(dirs.quarantine, undefined, undefined, warn);
  }

  on(fn: (e: WatchEvent) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private emit(e: WatchEvent): void {
    for (const fn of this.listeners) {
      // A listener's failure (e.g. an event it cannot serialise) stays its own: the polling goes on.
      try {
        fn(e);
      } catch (err) {
        this.warn(`a ${e.type} event was not sent: ${(err as Error).message}`);
      }
    }
  }

  /** One look at everything now, then every pollMs. */
  async start(): Promise<void> {
    await this.tick();
    this.timer = setInterval(() => void this.tick().catch((err) => this.warn(`poll failed: ${(err as Error).message}`)), this.timing.pollMs);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** One poll; ticks never overlap (a slow checkpoint read delays the next one instead). */
  async tick(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      this.pollPresence();
      this.pollStatus();
      const batch = this.tail.poll();
      if (batch) this.emit({ type: 'metrics', data: batch });
      this.pollModel();
      this.pollQuarantine();
      await this.pollBuffer();
    } finally {
      this.busy = false;
    }
  }

  private pollPresence(): void {
    const p: Presence = {
      state: existsSync(this.dirs.state),
      checkpoints: existsSync(path.join(this.dirs.state, 'checkpoints')),
      models: existsSync(path.join(this.dirs.models, 'latest.json')),
      metrics: this.dirs.metrics ? existsSync(this.dirs.metrics) : null,
    };
    if (JSON.stringify(p) === JSON.stringify(this.presence)) return;
    this.presence = p;
    this.emit({ type: 'presence', data: p });
  }

  /** The status record when it changes, and its view when that changes (a heartbeat that stops shows without a write). */
  private pollStatus(): void {
    const file = path.join(this.dirs.state, 'status.json');
    const s = stamp(file);
    if (s !== this.statusStamp) {
      this.statusStamp = s;
      this.statusRecord = readStatus(file);
    }
    const v = describeStatus(this.statusRecord);
    const key = (x: AgentStatusView) => JSON.stringify([x.phase, x.label, x.notPublishing, x.record?.time]);
    if (key(v) === key(this.statusView)) return;
    this.statusView = v;
    this.emit({ type: 'status', data: v });
  }

  /** The status as of now (its age counted to this moment, for a page that connects later). */
  get status(): AgentStatusView {
    return describeStatus(this.statusRecord);
  }

  private pollModel(): void {
    const s = `${stamp(path.join(this.dirs.models, 'latest.json'))}|${stamp(path.join(this.dirs.models, 'latest.onnx'))}`;
    if (s === this.modelStamp) return;
    this.modelStamp = s;
    this.model = readModelView(this.dirs.models, this.warn);
    this.emit({ type: 'model', data: this.model });
  }

  private pollQuarantine(): void {
    const now = Date.now();
    if (now - this.lastQuarantineRead < this.timing.quarantineMs) return;
    this.lastQuarantineRead = now;
    const q = this.quarantineReader.read();
    const json = JSON.stringify(q);
    if (json === this.quarantineJson) return;
    this.quarantineJson = json;
    this.quarantine = q;
    this.emit({ type: 'quarantine', data: q });
  }

  /** The live snapshot or the newest checkpoint, whichever is newer; each read again only when it changed. */
  private async pollBuffer(): Promise<void> {
    const now = Date.now();
    if (now - this.lastBufferRead < this.timing.bufferMs) return;
    const ckpts = path.join(this.dirs.state, 'checkpoints');
    const newest = newestCheckpointName(ckpts);
    const live = stamp(path.join(this.dirs.state, LIVE_BUFFER_FILE));
    const ckChanged = !!newest && newest !== this.checkpointView?.version;
    if (!ckChanged && live === this.liveStamp) return;
    this.lastBufferRead = now;
    if (ckChanged) this.checkpointView = (await readBufferView(ckpts, this.warn)) ?? this.checkpointView;
    if (live !== this.liveStamp) {
      this.liveStamp = live;
      this.liveView = live ? await readLiveBufferView(this.dirs.state) : null;
    }
    const [c, l] = [this.checkpointView, this.liveView];
    const view = c && l ? (Date.parse(l.time) > Date.parse(c.time) ? l : c) : (l ?? c);
    if (!view || view.version === this.buffer?.version) return;
    this.buffer = view;
    this.emit({ type: 'buffer', data: bufferSummary(view) });
  }
}

/** The buffer without its images (they go by a separate binary request). */
export function bufferSummary(v: BufferView): Omit<BufferView, 'images'> {
  const { images: _images, ...rest } = v;
  return rest;
}
