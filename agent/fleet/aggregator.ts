// The fleet's aggregator (ssocl fleet aggregate): collects each round's updates from the broker,
// screens them (artifacts, shapes, finite values, norms), averages what is left weighted by frames
// learnt (or a coordinate-wise median / trimmed mean), and publishes the next global model: float32 and
// retained (devices that join or fell behind, and this aggregator after a restart, read it back) and
// as a compact change from the previous version. It holds nothing a restart loses: the global model is
// the broker's retained message, and each device's latest update is retained too, so a restarted
// aggregator finds the round it was collecting. With keys (issue #30) it signs every global model and
// takes only updates signed by a key of its allow-list, each device's seq strictly increasing; with
// --state it also keeps its last global model on disk, so a forged retained one cannot reset the fleet.

import { randomBytes, createPublicKey, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { MqttClient } from 'mqtt';
import { writeFileAtomic } from '../../core/atomic.ts';
import { exportEncoder } from '../export/export.ts';
import { Trainer } from '../trainer/trainer.ts';
import type { EP } from '../trainer/backend.ts';
import { aggregate, type Robust } from './combine.ts';
import { checkTensors, nextHistory, screen, type Candidate, type ScreenOptions } from './screen.ts';
import { addInto, decodeMessage, encodeMessage, sharedSpec, type Decoded, type Enc, type GlobalHeader, type Spec, type UpdateHeader } from './codec.ts';
import { fingerprint, signerOf, verifyAuth, type AllowList, type Signer } from './keys.ts';
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
  screen?: Partial<Omit<ScreenOptions, 'history'>>;
  /**
   * The fleet's keys: globals are signed with `key`, updates taken only when signed by the key `allow`
   * holds for their device. Absent: an insecure fleet (nothing signed or checked; the CLI asks for
   * --insecure-fleet).
   */
  keys?: { key: KeyObject; allow: AllowList };
  /** Keep the last global model here (global-<fleet>.safetensors) and start from it: a forged retained model cannot reset the fleet's version. */
  state?: string;
  /** Updates held for a round at most (one per device), and their bytes at most; beyond either, refused and logged. */
  maxHeld?: number;
  maxHeldBytes?: number;
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
  private heldBytes = 0;
  /** Messages refused since start (updates and globals), by reason: the status the log lines report. */
  readonly refused = { total: 0, unsigned: 0, replay: 0, held: 0, other: 0 };
  /** The median accepted norm of recent rounds (the screen's absolute bound; carried in the global header). */
  norms: number[] = [];
  private readonly signer: Signer | null;
  private readonly ownKey: KeyObject | null;
  private readonly maxMessage: number;
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
    this.signer = o.keys ? signerOf(o.keys.key) : null;
    this.ownKey = o.keys ? createPublicKey(o.keys.key) : null;
    // An update is the shared tensors in float32 at most, plus a header: anything larger is refused before decoding.
    this.maxMessage = this.spec.reduce((n, s) => n + 4 * s.shape.reduce((a, b) => a * b, 1), 0) + 256 * 1024;
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
    const publish = async (topic: string, bytes: Buffer, retain: boolean) => void (await c.publishAsync(topic, bytes, { qos: 1, retain }));
    try {
      while (!(await connected(c, 10_000))) {
        if (this.stopped) return this.rounds;
        o.log(`fleet: waiting for the broker at ${redact(o.broker.url)}`);
      }
      await this.start(await this.readRetained(c), publish);
      for (const [topic, payload] of this.early!) this.receive(topic, payload);
      this.early = null;
      await c.subscribeAsync(this.t.updates, { qos: 1 });
      this.setReady();
      o.log(`fleet ${o.fleet}: aggregating on global v${this.version} (${o.expect ? `rounds close at ${o.expect} updates or ` : 'rounds close '}${o.roundTimeoutMs / 1000}s after their first update, with at least ${o.minUpdates}; ${describeRobust(o.robust)}${(o.serverLr ?? 1) !== 1 ? `, server learning rate ${o.serverLr}` : ''}; ${this.signer ? `globals signed by ${fingerprint(this.ownKey!)}, updates taken from the ${o.keys!.allow.size} key(s) of ${o.keys!.allow.dir}` : 'INSECURE: nothing signed or checked, any client can steer this fleet'})`);
      while (!this.stopped && !(o.maxRounds && this.rounds.length >= o.maxRounds)) {
        await new Promise<void>((r) => {
          this.wake = r;
          setTimeout(r, 200);
        });
        this.wake = null;
        if (this.roundDue()) await this.closeRound(publish);
      }
      return this.rounds;
    } finally {
      await c.endAsync(!c.connected).catch(() => {});
      await this.trainer.close().catch(() => {});
    }
  }

  /** The retained global model's bytes, if the fleet has one. */
  private async readRetained(c: MqttClient): Promise<Buffer | null> {
    let got: Buffer | null = null;
    // A message of our own on a topic of our own, sent after subscribing: the broker delivers the
    // retained global model (if any) before it, so its return means "nothing more is coming", however
    // slow the link (a fixed wait could start a fleet at v7 over again from v0).
    const sync = `${this.t.root}/aggregator-sync/${randomBytes(6).toString('hex')}`;
    let synced: () => void = () => {};
    const back = new Promise<void>((r) => (synced = r));
    const on = (topic: string, payload: Buffer) => {
      if (topic === sync) return synced();
      if (topic === this.t.global && payload.length) got = payload;
    };
    c.on('message', on);
    await c.subscribeAsync([this.t.global, sync], { qos: 1 });
    await c.publishAsync(sync, 'sync', { qos: 1 });
    await back;
    await c.unsubscribeAsync([this.t.global, sync]);
    c.off('message', on);
    return got;
  }

  private get stateFile(): string | null {
    return this.o.state ? path.join(this.o.state, `global-${this.o.fleet}.safetensors`) : null;
  }

  /**
   * Where the fleet continues from: the newest of the retained global model and the one kept in --state,
   * each taken only if it is this aggregator's (signed by its key; any model without keys). A retained
   * model that is not is logged and ignored (a forgery cannot set the fleet's version or replay guard);
   * if --state holds a newer one, it is published again as the retained model.
   */
  async start(retained: Buffer | null, publish: (topic: string, bytes: Buffer, retain: boolean) => Promise<void>): Promise<void> {
    let got: { header: GlobalHeader; tensors: Map<string, Float32Array>; bytes: Buffer } | null = null;
    let fromRetained = false;
    const look = (bytes: Buffer, where: string): void => {
      let m: Decoded;
      try {
        m = decodeMessage(bytes);
        if (m.header.kind !== 'global' || !m.header.full) throw new Error('not a full global model');
      } catch (e) {
        return this.refuse('other', `fleet: ignored ${where}: ${oneLine((e as Error).message)}`);
      }
      const h = m.header as GlobalHeader;
      if (this.ownKey && !verifyAuth(m.auth, this.ownKey)) return this.refuse('unsigned', `fleet: ignored ${where} (v${h.version}): ${m.auth.signature ? `signed by ${m.auth.key ? fingerprint(m.auth.key) : 'no key'}, not` : 'not signed by'} this aggregator's key ${fingerprint(this.ownKey)} (a forgery, or this aggregator's key changed)`);
      // Ours, yet unusable: starting over from the artifacts would publish a version 1 over the fleet's model.
      const unusable = h.fleet !== this.o.fleet ? `it is fleet ${h.fleet}'s` : h.artifact !== this.artifact ? `made for other artifacts (${h.artifact.slice(0, 12)}...)` : checkTensors(this.spec, m.tensors);
      if (unusable) throw new Error(`${where} cannot be used (${unusable}); give the artifacts the fleet trains, or another --fleet name`);
      if (!got || h.version > got.header.version) {
        got = { header: h, tensors: m.tensors, bytes };
        fromRetained = bytes === retained;
      }
    };
    if (this.stateFile && existsSync(this.stateFile)) look(readFileSync(this.stateFile), `the global model kept in ${this.stateFile}`);
    if (retained) look(retained, `the fleet's retained global model on ${this.t.global}`);
    const g = got as { header: GlobalHeader; tensors: Map<string, Float32Array>; bytes: Buffer } | null;
    if (!g) {
      if (retained) this.o.log(`fleet: NO usable global model; starting the fleet at v0${this.o.state ? '' : ' (give --state to keep the fleet\'s version on disk, out of reach of whoever can publish on the broker)'}`);
      return;
    }
    this.version = g.header.version;
    this.frames = g.header.frames;
    this.latest = Object.assign(Object.create(null), g.header.latest ?? {});
    this.norms = g.header.norms ?? [];
    this.global = g.tensors;
    this.o.log(`fleet: continuing from the ${fromRetained ? 'retained' : 'kept'} global v${this.version} (${this.frames} frames learnt)`);
    if (!fromRetained) await publish(this.t.global, g.bytes, true); // the broker's copy was lost or forged: ours again
  }

  private refuse(kind: keyof Aggregator['refused'], line: string): void {
    this.refused.total++;
    this.refused[kind]++;
    this.o.log(`${line} [${this.refused.total} refused since start]`);
  }

  /** One message from the broker (public for tests that drive the aggregator without one). */
  receive(topic: string, payload: Buffer): void {
    const prefix = `${this.t.root}/update/`;
    if (!topic.startsWith(prefix) || !payload.length) return;
    // A topic level can be anything a client chose: kept short and printable for logs and headers.
    const from = topic.slice(prefix.length).slice(0, 64).replace(/[^\x20-\x7e]/g, '?');
    let h: UpdateHeader;
    let delta: Map<string, Float32Array>;
    let kind: keyof Aggregator['refused'] = 'other';
    try {
      const m = decodeMessage(payload, this.maxMessage);
      if (m.header.kind !== 'update') throw new Error(`a ${m.header.kind} message`);
      h = m.header;
      delta = m.tensors;
      if (h.device !== from) throw new Error(`says it is from ${h.device}`);
      if (this.o.keys) {
        kind = 'unsigned';
        const key = this.o.keys.allow.get(from);
        if (!key) throw new Error(`device ${from} has no key in the allow-list ${this.o.keys.allow.dir}`);
        if (!verifyAuth(m.auth, key)) throw new Error(m.auth.signature ? `signature does not verify with ${from}'s key ${fingerprint(key)} (forged, or fields edited)` : 'not signed');
        kind = 'other';
      }
      if (h.fleet !== this.o.fleet) throw new Error(`for fleet ${h.fleet}`);
      if (h.artifact !== this.artifact) throw new Error(`made with other artifacts (${h.artifact.slice(0, 12)}...)`);
      const held = this.latest[from] ?? 0;
      const pending = this.cands.get(from)?.seq ?? 0;
      if (h.seq <= Math.max(held, pending)) {
        kind = 'replay';
        // The device's own retained update, read again after this aggregator restarted, is no replay: said quietly.
        if (h.seq === pending || (h.seq === held && h.base < this.version)) return;
        throw new Error(`seq ${h.seq} is not above ${from}'s last (${Math.max(held, pending)}): a replay`);
      }
    } catch (e) {
      const why = oneLine((e as Error).message).slice(0, 190);
      this.refuse(kind, `fleet: rejected the update on ${topic}: ${why}`);
      // Bounded: a flood of garbage must not grow the next global model's header without end.
      if (this.rejected.length < 100) this.rejected.push({ device: from, seq: 0, why });
      return;
    }
    if (h.base !== this.version) {
      const key = `${from}/${h.seq}`;
      if (!this.staleLogged.has(key) && h.base > this.version) this.o.log(`fleet: update ${h.seq} from ${from} is on v${h.base}, ahead of this aggregator's v${this.version}; ignored`);
      else if (!this.staleLogged.has(key) && this.rounds.length) this.o.log(`fleet: update ${h.seq} from ${from} is on v${h.base}, the fleet is at v${this.version}; ignored (the device merges v${this.version} and sends again)`);
      if (this.staleLogged.size < 10_000) this.staleLogged.add(key);
      return;
    }
    const prev = this.cands.get(from);
    const maxHeld = this.o.maxHeld ?? 1000;
    const maxBytes = this.o.maxHeldBytes ?? 1024 * 1024 * 1024;
    const bytes = this.heldBytes - (prev?.bytes ?? 0) + payload.length;
    if ((!prev && this.cands.size >= maxHeld) || bytes > maxBytes) {
      this.refuse('held', `fleet: refused update ${h.seq} from ${from}: the round holds ${this.cands.size} update(s), ${(this.heldBytes / 2 ** 20).toFixed(1)} MiB (bounds: ${maxHeld} updates, ${(maxBytes / 2 ** 20).toFixed(0)} MiB)`);
      return;
    }
    this.heldBytes = bytes;
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

  /** Closes the round (public for tests); a failure is logged and the round dropped, never fatal. */
  async closeRound(publish: (topic: string, bytes: Buffer, retain: boolean) => Promise<void>): Promise<void> {
    const cands = [...this.cands.values()];
    this.cands.clear();
    this.heldBytes = 0;
    this.firstAt = 0;
    try {
      await this.combine(cands, publish);
    } catch (e) {
      this.o.log(`fleet: round for v${this.version + 1} failed and is dropped (${oneLine((e as Error).message)}); the aggregator goes on`);
    }
  }

  private async combine(cands: Candidate[], publish: (topic: string, bytes: Buffer, retain: boolean) => Promise<void>): Promise<void> {
    const { kept, rejected, keptNorm } = screen(cands, this.global, this.spec, { ...this.o.screen, history: this.norms });
    const allRejected = [...this.rejected, ...rejected];
    this.rejected = [];
    for (const r of rejected) this.refuse('other', `fleet: rejected update ${r.seq} from ${r.device}: ${r.why}`);
    if (!kept.length) {
      this.o.log(`fleet: no acceptable update for v${this.version + 1} (${rejected.length} rejected); the round starts again`);
      return;
    }
    const agg = aggregate(kept, this.spec, this.o.robust);
    const lr = this.o.serverLr ?? 1;
    if (lr !== 1) for (const name of this.params) agg.get(name)!.forEach((v, i, a) => (a[i] = v * lr));
    const version = this.version + 1;
    const included = kept.map((k) => ({ device: k.device, seq: k.seq, frames: k.frames })).sort((a, b) => (a.device < b.device ? -1 : a.device > b.device ? 1 : 0));
    // Saturating: frames are what devices claim, and claims must not make a total the header cannot hold.
    const frames = included.reduce((s, k) => Math.min(Number.MAX_SAFE_INTEGER, s + k.frames), this.frames);
    const latest: Record<string, number> = Object.assign(Object.create(null), this.latest); // ids may be __proto__
    for (const k of included) latest[k.device] = Math.max(latest[k.device] ?? 0, k.seq);
    const norms = nextHistory(this.norms, keptNorm);
    const header: GlobalHeader = {
      kind: 'global', fleet: this.o.fleet, version, prev: this.version, artifact: this.artifact, included, latest,
      rejected: allRejected, frames, norms, madeAt: new Date().toISOString(), full: false,
    };
    // The change as devices will decode it: the new global is defined by the rounded change, so a
    // device that adds it to the previous global holds exactly the retained float32 model.
    const deltaBytes = encodeMessage(header, agg, this.o.enc, this.signer ?? undefined);
    const dq = decodeMessage(deltaBytes).tensors;
    const g = new Map([...this.global].map(([k, v]) => [k, v.slice()]));
    addInto(g, dq, this.spec);
    const fullBytes = encodeMessage({ ...header, full: true }, g, 'f32', this.signer ?? undefined);
    // Kept first: the broker's copy can be overwritten by anyone who may publish there, this one cannot.
    if (this.stateFile) writeFileAtomic(this.stateFile, fullBytes);
    // The retained full model first: a device that sees the change with a gap asks for it.
    await publish(this.t.global, fullBytes, true);
    await publish(this.t.delta, deltaBytes, false);
    this.global = g;
    this.version = version;
    this.frames = frames;
    this.latest = latest;
    this.norms = norms;
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
      `fleet: global v${version} from ${included.length} update(s)${rej} (${kept.map((k) => `${k.device}:${k.weight === k.frames ? k.frames : `${k.frames}->${k.weight}`}`).join(' ')}); ${frames} frames in all; ` +
        `published ${(fullBytes.length / 1024).toFixed(0)} KiB retained, ${(deltaBytes.length / 1024).toFixed(0)} KiB change${exported ? `; exported ${exported}` : ''}; ${this.refused.total} message(s) refused since start`,
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
  if (r === 'mean') return 'mean weighted by frames (capped)';
  if (r === 'median') return 'coordinate-wise median';
  if ('krum' in r) return r.keep === 1 ? `Krum (f=${r.krum})` : `Multi-Krum (f=${r.krum}, the ${r.keep} best averaged)`;
  return `trimmed mean (${r.trimmed} cut at each end)`;
}
