// The fleet's aggregator (ssocl fleet aggregate): collects each round's updates from the broker,
// screens them (artifacts, shapes, finite values, norms), averages what is left weighted by frames
// learnt (or a coordinate-wise median / trimmed mean), and publishes the next global model: float32 and
// retained (devices that join or fell behind, and this aggregator after a restart, read it back) and
// as a compact change from the previous version. It holds nothing a restart loses: the global model is
// the broker's retained message, and each device's latest update is retained too, so a restarted
// aggregator finds the round it was collecting.

import { randomBytes } from 'node:crypto';
import type { MqttClient } from 'mqtt';
import { exportEncoder } from '../export/export.ts';
import { Trainer } from '../trainer/trainer.ts';
import type { EP } from '../trainer/backend.ts';
import { aggregate, screen, type Candidate, type Robust, type ScreenOptions } from './aggregate.ts';
import { addInto, checkTensors, decodeMessage, encodeMessage, sharedSpec, type Enc, type GlobalHeader, type Spec, type UpdateHeader } from './codec.ts';
import { connect, connected, redact, topics, type BrokerOptions } from './transport.ts';

export interface AggregatorOptions {
  broker: BrokerOptions;
  fleet: string;
  artifacts: string;
  /** Export each global model here like the agent does (latest.onnx + versions); unset: no export. */
  models?: string;
  /** Close a round as soon as this many devices sent an update for it (0: by time only). */
  expect: number;
  /** ...or this long after its first update, once it has minUpdates. */
  roundTimeoutMs: number;
  minUpdates: number;
  robust: Robust;
  screen?: Partial<ScreenOptions>;
  /** The change from the previous global: f16 (half the bytes) or f32. */
  enc: Enc;
  /**
   * The server learning rate (FedOpt's SGD server step): the parameters move by this x the combined
   * change (1: FedAvg). BN statistics always take the combined change as it is (they are averages, not
   * steps).
   */
  serverLr?: number;
  /** Stop after this many rounds (0: run until stopped). */
  maxRounds?: number;
  ep?: EP;
  log: (line: string) => void;
}

export interface RoundSummary {
  version: number;
  included: GlobalHeader['included'];
  rejected: GlobalHeader['rejected'];
  bytesFull: number;
  bytesDelta: number;
  exported: string;
}

export class Aggregator {
  version = 0;
  global: Map<string, Float32Array>;
  /** Frames learnt into the global model, over all rounds. */
  frames = 0;
  /** Per device, the newest update seq the global model holds (published in its header). */
  latest: Record<string, number> = Object.create(null);
  readonly rounds: RoundSummary[] = [];
  private cands = new Map<string, Candidate & { bytes: number }>();
  private rejected: GlobalHeader['rejected'] = [];
  private firstAt = 0;
  private staleLogged = new Set<string>();
  private readonly spec: Spec;
  private readonly params: Set<string>;
  private readonly artifact: string;
  private readonly t: ReturnType<typeof topics>;
  private wake: (() => void) | null = null;
  private stopped = false;
  /** Updates that came before the retained global was read (a persistent session's queue). */
  private early: [string, Buffer][] | null = [];
  private setReady: () => void = () => {};
  /** Resolves once the aggregator knows the fleet's version and takes updates. */
  readonly ready = new Promise<void>((r) => (this.setReady = r));

  private constructor(
    private o: AggregatorOptions,
    private trainer: Trainer,
  ) {
    const m = trainer.manifest;
    this.spec = sharedSpec(m.state);
    this.params = new Set(m.state.filter((s) => s.role === 'param').map((s) => s.name));
    this.artifact = m.files[m.trainStep.file];
    this.t = topics(o.fleet);
    const init = trainer.initial();
    this.global = new Map(this.spec.map((s) => [s.name, init.get(s.name)!]));
  }

  static async open(o: AggregatorOptions): Promise<Aggregator> {
    const trainer = await Trainer.open(o.artifacts, { ep: o.ep ?? 'cpu', threads: 1, log: o.log });
    return new Aggregator(o, trainer);
  }

  stop(): void {
    this.stopped = true;
    this.wake?.();
  }

  /** Runs rounds until stop() or maxRounds. */
  async run(): Promise<RoundSummary[]> {
    const { o } = this;
    const c = connect(o.broker, `ssocl-aggregator-${o.fleet}`, o.log);
    c.on('message', (topic, payload) => (this.early ? this.early.push([topic, payload]) : this.receive(topic, payload)));
    try {
      while (!(await connected(c, 10_000))) {
        if (this.stopped) return this.rounds;
        o.log(`fleet: waiting for the broker at ${redact(o.broker.url)}`);
      }
      await this.readGlobal(c);
      for (const [topic, payload] of this.early!) this.receive(topic, payload);
      this.early = null;
      await c.subscribeAsync(this.t.updates, { qos: 1 });
      this.setReady();
      o.log(`fleet ${o.fleet}: aggregating on global v${this.version} (${o.expect ? `rounds close at ${o.expect} updates or ` : 'rounds close '}${o.roundTimeoutMs / 1000}s after their first update, with at least ${o.minUpdates}; ${describeRobust(o.robust)}${(o.serverLr ?? 1) !== 1 ? `, server learning rate ${o.serverLr}` : ''})`);
      while (!this.stopped && !(o.maxRounds && this.rounds.length >= o.maxRounds)) {
        await new Promise<void>((r) => {
          this.wake = r;
          setTimeout(r, 200);
        });
        this.wake = null;
        if (this.roundDue()) await this.closeRound(c);
      }
      return this.rounds;
    } finally {
      await c.endAsync(!c.connected).catch(() => {});
      await this.trainer.close().catch(() => {});
    }
  }

  /** The retained global model, if the fleet has one: this aggregator continues from it. */
  private async readGlobal(c: MqttClient): Promise<void> {
    let got: { header: GlobalHeader; tensors: Map<string, Float32Array> } | null = null;
    let bad = '';
    // A message of our own on a topic of our own, sent after subscribing: the broker delivers the
    // retained global model (if any) before it, so its return means "nothing more is coming", however
    // slow the link (a fixed wait could start a fleet at v7 over again from v0).
    const sync = `${this.t.root}/aggregator-sync/${randomBytes(6).toString('hex')}`;
    let synced: () => void = () => {};
    const back = new Promise<void>((r) => (synced = r));
    const on = (topic: string, payload: Buffer) => {
      if (topic === sync) return synced();
      if (topic !== this.t.global || !payload.length) return;
      try {
        const m = decodeMessage(payload);
        if (m.header.kind !== 'global' || !m.header.full) throw new Error('not a full global model');
        if (m.header.fleet !== this.o.fleet) throw new Error(`it is fleet ${m.header.fleet}'s`);
        if (m.header.artifact !== this.artifact) throw new Error(`made for other artifacts (${m.header.artifact.slice(0, 12)}...)`);
        const why = checkTensors(this.spec, m.tensors);
        if (why) throw new Error(why);
        if (!got || m.header.version > got.header.version) got = { header: m.header, tensors: m.tensors };
      } catch (e) {
        bad = (e as Error).message;
      }
    };
    c.on('message', on);
    await c.subscribeAsync([this.t.global, sync], { qos: 1 });
    await c.publishAsync(sync, 'sync', { qos: 1 });
    await back;
    await c.unsubscribeAsync([this.t.global, sync]);
    c.off('message', on);
    // Starting over from the artifacts would publish a version 1 over the fleet's model: refuse.
    if (bad && !got) throw new Error(`the fleet's retained global model on ${this.t.global} cannot be used (${bad}); give the artifacts the fleet trains, or another --fleet name`);
    const g = got as { header: GlobalHeader; tensors: Map<string, Float32Array> } | null;
    if (g) {
      this.version = g.header.version;
      this.frames = g.header.frames;
      this.latest = Object.assign(Object.create(null), g.header.latest ?? {});
      this.global = g.tensors;
      this.o.log(`fleet: continuing from the retained global v${this.version} (${this.frames} frames learnt)`);
    }
  }

  private receive(topic: string, payload: Buffer): void {
    const prefix = `${this.t.root}/update/`;
    if (!topic.startsWith(prefix) || !payload.length) return;
    // A topic level can be anything a client chose: kept short and printable for logs and headers.
    const from = topic.slice(prefix.length).slice(0, 64).replace(/[^\x20-\x7e]/g, '?');
    let h: UpdateHeader;
    let delta: Map<string, Float32Array>;
    try {
      const m = decodeMessage(payload);
      if (m.header.kind !== 'update') throw new Error(`a ${m.header.kind} message`);
      h = m.header;
      delta = m.tensors;
      if (h.device !== from) throw new Error(`says it is from ${h.device}`);
      if (h.fleet !== this.o.fleet) throw new Error(`for fleet ${h.fleet}`);
      if (h.artifact !== this.artifact) throw new Error(`made with other artifacts (${h.artifact.slice(0, 12)}...)`);
    } catch (e) {
      const why = oneLine((e as Error).message).slice(0, 190);
      this.o.log(`fleet: rejected the update on ${topic}: ${why}`);
      // Bounded: a flood of garbage must not grow the next global model's header without end.
      if (this.rejected.length < 100) this.rejected.push({ device: from, seq: 0, why });
      return;
    }
    if (h.base !== this.version) {
      const key = `${from}/${h.seq}`;
      if (!this.staleLogged.has(key) && h.base > this.version) this.o.log(`fleet: update ${h.seq} from ${from} is on v${h.base}, ahead of this aggregator's v${this.version}; ignored`);
      else if (!this.staleLogged.has(key) && this.rounds.length) this.o.log(`fleet: update ${h.seq} from ${from} is on v${h.base}, the fleet is at v${this.version}; ignored (the device merges v${this.version} and sends again)`);
      this.staleLogged.add(key);
      return;
    }
    const prev = this.cands.get(from);
    if (prev && prev.seq >= h.seq) return;
    this.cands.set(from, { device: from, seq: h.seq, frames: h.frames, delta, bytes: payload.length });
    if (!this.firstAt) this.firstAt = performance.now();
    this.o.log(`fleet: update ${h.seq} from ${from}: ${h.frames} frames, step ${h.step}, ${(payload.length / 1024).toFixed(0)} KiB (${this.cands.size} for v${this.version + 1})`);
    if (this.o.expect && this.cands.size >= this.o.expect) this.wake?.();
  }

  private roundDue(): boolean {
    const n = this.cands.size;
    if (!n) return false;
    if (this.o.expect && n >= this.o.expect) return true;
    return n >= this.o.minUpdates && performance.now() - this.firstAt >= this.o.roundTimeoutMs;
  }

  private async closeRound(c: MqttClient): Promise<void> {
    const cands = [...this.cands.values()];
    this.cands.clear();
    this.firstAt = 0;
    const { kept, rejected } = screen(cands, this.global, this.spec, this.o.screen);
    const allRejected = [...this.rejected, ...rejected];
    this.rejected = [];
    for (const r of rejected) this.o.log(`fleet: rejected update ${r.seq} from ${r.device}: ${r.why}`);
    if (!kept.length) {
      this.o.log(`fleet: no acceptable update for v${this.version + 1} (${rejected.length} rejected); the round starts again`);
      return;
    }
    const agg = aggregate(kept, this.spec, this.o.robust);
    const lr = this.o.serverLr ?? 1;
    if (lr !== 1) for (const name of this.params) agg.get(name)!.forEach((v, i, a) => (a[i] = v * lr));
    const version = this.version + 1;
    const included = kept.map((k) => ({ device: k.device, seq: k.seq, frames: k.frames })).sort((a, b) => (a.device < b.device ? -1 : a.device > b.device ? 1 : 0));
    const frames = this.frames + included.reduce((s, k) => s + k.frames, 0);
    const latest: Record<string, number> = Object.assign(Object.create(null), this.latest); // ids may be __proto__
    for (const k of included) latest[k.device] = Math.max(latest[k.device] ?? 0, k.seq);
    const header: GlobalHeader = {
      kind: 'global', fleet: this.o.fleet, version, prev: this.version, artifact: this.artifact, included, latest,
      rejected: allRejected, frames, madeAt: new Date().toISOString(), full: false,
    };
    // The change as devices will decode it: the new global is defined by the rounded change, so a
    // device that adds it to the previous global holds exactly the retained float32 model.
    const deltaBytes = encodeMessage(header, agg, this.o.enc);
    const dq = decodeMessage(deltaBytes).tensors;
    const g = new Map([...this.global].map(([k, v]) => [k, v.slice()]));
    addInto(g, dq, this.spec);
    const fullBytes = encodeMessage({ ...header, full: true }, g, 'f32');
    // The retained full model first: a device that sees the change with a gap asks for it.
    await c.publishAsync(this.t.global, fullBytes, { qos: 1, retain: true });
    await c.publishAsync(this.t.delta, deltaBytes, { qos: 1 });
    this.global = g;
    this.version = version;
    this.frames = frames;
    this.latest = latest;
    let exported = '';
    if (this.o.models) {
      try {
        exported = await this.export();
      } catch (e) {
        this.o.log(`fleet: export of v${version} failed, aggregation goes on: ${(e as Error).message}`);
      }
    }
    const rej = allRejected.length ? `, ${allRejected.length} rejected` : '';
    this.o.log(
      `fleet: global v${version} from ${included.length} update(s)${rej} (${included.map((k) => `${k.device}:${k.frames}`).join(' ')}); ${frames} frames in all; ` +
        `published ${(fullBytes.length / 1024).toFixed(0)} KiB retained, ${(deltaBytes.length / 1024).toFixed(0)} KiB change${exported ? `; exported ${exported}` : ''}`,
    );
    this.rounds.push({ version, included, rejected: allRejected, bytesFull: fullBytes.length, bytesDelta: deltaBytes.length, exported });
  }

  /** The global model as an ONNX encoder in --models, checked like the agent's exports; its step is the version. */
  private async export(): Promise<string> {
    const tr = this.trainer;
    for (const [k, v] of this.global) tr.state.set(k, v);
    tr.steps = this.version;
    const [, ch, h, w] = tr.manifest.embed.images.shape as number[];
    const probe = new Float32Array(2 * ch * h * w);
    for (let i = 0; i < probe.length; i++) probe[i] = ((i * 2654435761) >>> 0) / 2 ** 32;
    const info = await exportEncoder(tr, this.o.models!, { framesSeen: this.frames, loss: null, probe, probeCount: 2 });
    return info.file;
  }
}

function oneLine(s: string): string {
  return s.split('\n')[0].slice(0, 300);
}

export function describeRobust(r: Robust): string {
  return r === 'mean' ? 'mean weighted by frames' : r === 'median' ? 'coordinate-wise median' : `trimmed mean (${r.trimmed} cut at each end)`;
}
