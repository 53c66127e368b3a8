// A device of a fleet (ssocl run --fleet): every round it publishes its encoder update (parameters and
// BN statistics minus the global model it last took, weighted by the frames it learnt since) and merges
// each new global model between arrivals, FedAvg-style without stopping training: the global model
// plus whatever this device learnt that the global model does not hold yet (everything since its
// update if the aggregator took that update, else everything since the previous global). Only those
// tensors leave the device: never frames, crops, buffer contents or features.

import { existsSync } from 'node:fs';
import type { KeyObject } from 'node:crypto';
import type { MqttClient } from 'mqtt';
import { writeFileAtomic } from '../../core/atomic.ts';
import type { Every } from '../pipeline/every.ts';
import { Due } from '../pipeline/every.ts';
import type { Trainer } from '../trainer/trainer.ts';
import type { FleetRecord } from '../trainer/checkpoint.ts';

export type { FleetRecord } from '../trainer/checkpoint.ts';
import { FleetFormatError, addInto, decodeMessage, delta, encodeMessage, sharedSpec, type Enc, type GlobalHeader, type Spec, type UpdateHeader } from './codec.ts';
import { fingerprint, keyOf, readPublicKey, signerOf, verifyAuth, type Auth, type Signer } from './keys.ts';
import { checkTensors } from './screen.ts';
import { connect, topics, type BrokerOptions } from './transport.ts';

export interface FleetDeviceOptions {
  broker: BrokerOptions;
  fleet: string;
  device: string;
  every: Every;
  enc: Enc;
  /**
   * Identity (issue #30): updates signed with `key`; a global model merged only if signed by `aggregator`,
   * or without it by the key pinned in the file `pin` (written from the first signed global model this
   * device sees: trust on first use). Absent: an insecure fleet (the CLI asks for --insecure-fleet).
   */
  keys?: { key: KeyObject; aggregator?: KeyObject; pin?: string };
}

export class FleetDevice {
  version = 0;
  seq = 0;
  framesSinceBase = 0;
  base: Map<string, Float32Array>;
  private published: { seq: number; base: number; frames: number; snapshot: Map<string, Float32Array> } | null = null;
  private inbox: { header: GlobalHeader; tensors: Map<string, Float32Array> }[] = [];
  private wantFull = false;
  private due: Due;
  private client: MqttClient | null = null;
  private readonly t: ReturnType<typeof topics>;
  private readonly spec: Spec;
  private readonly artifact: string;
  private offlineLogged = false;
  private inflight: Promise<unknown> = Promise.resolve();
  private readonly signer: Signer | null;
  private readonly maxMessage: number;
  /** The aggregator's key globals must be signed by (given, or pinned); null: none yet (or an insecure fleet). */
  private aggregatorKey: KeyObject | null = null;
  /** Bytes published and received (payloads), rounds taken part in, and global models refused, for the log and benchmarks. */
  readonly io = { bytesUp: 0, bytesDown: 0, updates: 0, globals: 0, refused: 0 };

  constructor(
    private o: FleetDeviceOptions,
    private trainer: Trainer,
    private log: (line: string) => void,
    record?: FleetRecord | null,
  ) {
    this.t = topics(o.fleet);
    this.spec = sharedSpec(trainer.manifest.state);
    const m = trainer.manifest;
    this.artifact = m.files[m.trainStep.file];
    this.due = new Due(o.every, trainer.steps);
    this.signer = o.keys ? signerOf(o.keys.key) : null;
    // A global model is the shared tensors in float32 plus a header that grows with the fleet's devices: anything larger is refused before decoding.
    this.maxMessage = this.spec.reduce((n, s) => n + 4 * s.shape.reduce((a, b) => a * b, 1), 0) + 4 * 1024 * 1024;
    if (o.keys?.aggregator) this.aggregatorKey = o.keys.aggregator;
    else if (o.keys?.pin && existsSync(o.keys.pin)) {
      this.aggregatorKey = readPublicKey('the pinned aggregator key', o.keys.pin);
      log(`fleet: global models must be signed by the aggregator key ${fingerprint(this.aggregatorKey)} pinned in ${o.keys.pin}`);
    }
    if (record && record.fleet === o.fleet && record.device === o.device) {
      this.version = record.version;
      this.seq = record.seq;
      this.framesSinceBase = record.framesSinceBase;
      this.base = record.base;
      this.published = record.published && record.snapshot ? { ...record.published, snapshot: record.snapshot } : null;
    } else {
      // Version 0 is the artifacts' initial state, which every device of the fleet starts from.
      this.base = this.sharedOf(trainer.initial());
      if (record) log(`fleet: the checkpoint's fleet state is for ${record.fleet}/${record.device}; joining ${o.fleet}/${o.device} from version 0`);
    }
  }

  /** Connects in the background; training does not wait for the broker. */
  start(): void {
    if (!this.o.keys) this.log('fleet: INSECURE fleet (no --fleet-identity): updates go unsigned and any global model on the broker is merged');
    const c = connect(this.o.broker, `ssocl-${this.o.fleet}-${this.o.device}`, this.log);
    this.client = c;
    c.on('connect', (ack) => {
      this.offlineLogged = false;
      // A resumed persistent session keeps its subscriptions; subscribing again is harmless.
      c.subscribe(this.t.delta, { qos: 1 });
      // Every (re)connection checks the retained global: a device that was away may have missed more
      // rounds than the broker queued for it.
      if (!ack.sessionPresent || this.wantFull || this.version === 0) this.requestFull();
    });
    c.on('message', (topic, payload) => this.receive(topic, payload));
  }

  private requestFull(): void {
    this.wantFull = true;
    const c = this.client;
    c?.subscribe(this.t.global, { qos: 1 });
    // A retained model comes right after the subscription; none means the fleet has no global model
    // yet: stop listening there (each round's full model would double what a device downloads), the
    // changes then start from version 0.
    setTimeout(() => {
      if (this.wantFull && this.version === 0 && !this.inbox.some((m) => m.header.full) && this.client === c && c?.connected) {
        this.wantFull = false;
        c.unsubscribe(this.t.global);
      }
    }, 3000).unref();
  }

  /** One message from the broker (public for tests that drive a device without one). */
  receive(topic: string, payload: Buffer): void {
    if (topic !== this.t.global && topic !== this.t.delta) return;
    if (!payload.length) return;
    this.io.bytesDown += payload.length;
    try {
      const { header, tensors, auth } = decodeMessage(payload, this.maxMessage);
      if (header.kind !== 'global') throw new FleetFormatError(`a ${header.kind} message on ${topic}`);
      if (header.fleet !== this.o.fleet) throw new FleetFormatError(`for fleet ${header.fleet}`);
      if (header.artifact !== this.artifact) throw new FleetFormatError(`made for other artifacts (${header.artifact.slice(0, 12)}...)`);
      const bad = checkTensors(this.spec, tensors);
      if (bad) throw new FleetFormatError(bad);
      if (header.full !== (topic === this.t.global)) throw new FleetFormatError(`full=${header.full} on ${topic}`);
      if (this.o.keys) this.checkSigned(header, auth);
      this.catchUpSeq(header);
      this.inbox.push({ header, tensors });
    } catch (e) {
      this.io.refused++;
      this.log(`fleet: ignored a global model on ${topic}: ${(e as Error).message} [${this.io.refused} refused since start]`);
    }
  }

  /** Throws unless the global model is signed by the aggregator's key; pins the first signer's key when none is given. */
  private checkSigned(h: GlobalHeader, auth: Auth): void {
    let key = this.aggregatorKey;
    if (!key) {
      const claimed = keyOf(auth);
      if (!this.o.keys?.pin) throw new FleetFormatError('no aggregator key to check it with');
      if (!claimed || !verifyAuth(auth, claimed)) throw new FleetFormatError('not signed (no aggregator key pinned yet)');
      writeFileAtomic(this.o.keys.pin, claimed.export({ type: 'spki', format: 'pem' }) as string);
      key = this.aggregatorKey = claimed;
      this.log(`fleet: TRUST ON FIRST USE: pinned the aggregator key ${fingerprint(key)} from global v${h.version} in ${this.o.keys.pin}; from now on only global models it signs are merged. If that is not your aggregator's key (ssocl fleet keygen printed its fingerprint), stop, remove that file and give --fleet-aggregator-key`);
    }
    if (!verifyAuth(auth, key)) throw new FleetFormatError(`v${h.version} is ${auth.signature ? 'not signed by' : 'unsigned; expected a signature by'} the aggregator key ${fingerprint(key)}`);
  }

  /**
   * The aggregator refuses a seq not above the newest it holds of this device (replays): a device back
   * from an older checkpoint takes that seq from any global model it accepts, also one it already holds
   * (a fleet of one would otherwise wait for ever). Bounded, so no header makes the next seq unsafe.
   */
  private catchUpSeq(h: GlobalHeader): void {
    const held = h.latest?.[this.o.device] ?? 0;
    if (held > this.seq && held < 2 ** 52) this.seq = held;
  }

  /** Counts frames learnt from (weights the next update). */
  learnt(frames: number): void {
    this.framesSinceBase += frames;
  }

  /** Between arrivals: merge what arrived, then publish if a round is due. */
  async between(): Promise<void> {
    this.mergeInbox();
    if (this.due.due(this.trainer.steps)) {
      if (this.publish()) this.due.done(this.trainer.steps);
    }
  }

  private mergeInbox(): void {
    const box = this.inbox.splice(0);
    // Fulls first by version: a delta chain can then continue from the newest full.
    box.sort((a, b) => a.header.version - b.header.version || Number(b.header.full) - Number(a.header.full));
    for (const { header, tensors } of box) {
      if (header.version <= this.version) continue;
      if (header.full) {
        this.adopt(header, tensors);
        if (this.wantFull) {
          this.wantFull = false;
          this.client?.unsubscribe(this.t.global);
        }
      } else if (header.prev === this.version) {
        const g = this.sharedOf(this.base, true);
        addInto(g, tensors, this.spec);
        this.adopt(header, g);
      } else if (!this.wantFull) {
        this.log(`fleet: global v${header.version} follows v${header.prev}, this device is at v${this.version}: fetching the full model`);
        this.requestFull();
      }
    }
  }

  /** The new global model plus what this device learnt that it does not hold. */
  private adopt(h: GlobalHeader, g: Map<string, Float32Array>): void {
    const p = this.published;
    // Its pending update is in this model if this round took it, or (a round this device missed) the
    // model's newest update of this device is that one or later.
    const ours = !!p && ((p.base === h.prev && h.included.some((i) => i.device === this.o.device && i.seq === p.seq)) || (h.latest?.[this.o.device] ?? 0) >= p.seq);
    const from = ours ? p!.snapshot : this.base;
    for (const s of this.spec) {
      const local = this.trainer.state.get(s.name)!;
      const f = from.get(s.name)!;
      const gv = g.get(s.name)!;
      // New arrays: a checkpoint snapshot or SCALE's past model may hold the old ones.
      const v = new Float32Array(local.length);
      for (let i = 0; i < v.length; i++) v[i] = gv[i] + (local[i] - f[i]);
      this.trainer.state.set(s.name, v);
    }
    if (ours) this.framesSinceBase = Math.max(0, this.framesSinceBase - p!.frames);
    // Any newer global supersedes a pending update: its base is no longer the aggregator's.
    this.published = null;
    this.base = g;
    this.version = h.version;
    this.io.globals++;
    const rej = h.rejected.length ? `, ${h.rejected.length} rejected` : '';
    this.log(`fleet: merged global v${h.version} (${h.included.length} update(s)${rej}, ${ours ? 'this device\'s included' : 'this device\'s not in it: its learning since v' + (h.prev) + ' carried over'})`);
  }

  /** Publishes this round's update; false if it could not go now (offline, nothing learnt). */
  private publish(): boolean {
    const c = this.client;
    if (!this.framesSinceBase) return false;
    if (!c?.connected) {
      if (!this.offlineLogged) this.log('fleet: broker not reachable; this round\'s update waits until it is, training goes on');
      this.offlineLogged = true;
      return false;
    }
    const snapshot = this.sharedOf(this.trainer.state, true);
    const header: UpdateHeader = {
      kind: 'update', fleet: this.o.fleet, device: this.o.device, seq: this.seq + 1, base: this.version,
      frames: this.framesSinceBase, step: this.trainer.steps, artifact: this.artifact, sentAt: new Date().toISOString(),
    };
    const bytes = encodeMessage(header, delta(snapshot, this.base, this.spec), this.o.enc, this.signer ?? undefined);
    this.seq++;
    this.published = { seq: this.seq, base: this.version, frames: this.framesSinceBase, snapshot };
    this.io.bytesUp += bytes.length;
    this.io.updates++;
    const seq = this.seq;
    this.inflight = c.publishAsync(this.t.update(this.o.device), bytes, { qos: 1, retain: true }).then(
      () => {},
      (e: Error) => this.log(`fleet: update ${seq} not delivered: ${e.message}`),
    );
    this.log(`fleet: update ${seq} on v${this.version}: ${header.frames} frames, step ${header.step}, ${(bytes.length / 1024).toFixed(0)} KiB`);
    return true;
  }

  /** The state a checkpoint keeps. */
  record(): FleetRecord {
    const p = this.published;
    return {
      fleet: this.o.fleet, device: this.o.device, version: this.version, seq: this.seq, framesSinceBase: this.framesSinceBase,
      published: p ? { seq: p.seq, base: p.base, frames: p.frames } : null, base: this.base, snapshot: p ? p.snapshot : null,
    };
  }

  /** A last update of what is not yet published (best effort, a few seconds at most), then disconnect. */
  async close(final = true): Promise<void> {
    const c = this.client;
    if (!c) return;
    this.mergeInbox();
    if (final && c.connected && this.framesSinceBase && (!this.published || this.published.frames < this.framesSinceBase)) this.publish();
    await Promise.race([this.inflight, new Promise((r) => setTimeout(r, 5000))]);
    // Forced when not connected: a client still trying to reconnect would otherwise wait on it.
    await c.endAsync(!c.connected).catch(() => {});
    this.client = null;
  }

  private sharedOf(state: Map<string, Float32Array>, copy = false): Map<string, Float32Array> {
    return new Map(this.spec.map((s) => [s.name, copy ? state.get(s.name)!.slice() : state.get(s.name)!]));
  }
}
