// A fleet against a real Mosquitto (issues #22, #30): rounds averaged by frames, hostile updates rejected
// while the round completes, a round of one, clocks that disagree, the aggregator and the broker
// restarted mid-round, a device that missed rounds catching up, the fleet state in checkpoints, three
// agents learning on disjoint CIFAR-10 classes, and no image data in anything published; every device
// and the aggregator with keys (signed updates and global models), a forged global model published by
// an anonymous client, and the ACL file (agent/fleet/mosquitto.acl) enforced by the broker.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, type KeyPairKeyObjectResult } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { Aggregator, type AggregatorOptions } from '../agent/fleet/aggregator.ts';
import { FleetDevice, type FleetRecord } from '../agent/fleet/device.ts';
import { decodeMessage, encodeMessage, f16ToF32, f32ToF16, sharedSpec, type GlobalHeader, type UpdateHeader } from '../agent/fleet/codec.ts';
import { topics } from '../agent/fleet/transport.ts';
import { AllowList, signerOf } from '../agent/fleet/keys.ts';
import { fromCheckpoint, listCheckpoints, readCheckpoint, saveCheckpoint, toCheckpoint } from '../agent/trainer/checkpoint.ts';
import { runAgent, type AgentOptions } from '../agent/run.ts';
import { readCifar10 } from '../core/codecs/cifar.ts';
import { Broker, haveMosquitto, MOSQUITTO } from './helpers/mosquitto.ts';
import { CIFAR10_DIR } from './helpers/paths.ts';
import { tinyPreset } from './helpers/tiny.ts';

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-fleet-'));
const art = path.join(root, 'art');
writeArtifacts(compileArtifacts(tinyPreset(['agent={"newPerArrival":4,"updatesPerArrival":2,"bufferSize":12,"replay":"mixed"}'])), art);
// Without Mosquitto these skip, except in CI (.ci/run installs it), where they fail.
const skip = !haveMosquitto() && !process.env.CI && `mosquitto not found ('${MOSQUITTO}'); .ci/run installs it (apt-get install mosquitto)`;
let broker: Broker;
const seen: { topic: string; payload: Buffer }[] = [];
let observer: MqttClient;
const trainers: Trainer[] = [];
// Everything that holds a connection, closed after the tests even when one fails (a client left
// reconnecting would keep the process alive).
const clients: MqttClient[] = [];
const aggregators: Aggregator[] = [];
const devices: FleetDevice[] = [];
const brokers: Broker[] = [];

// The fleet's keys: the aggregator's, and one per device id the tests use, each DEVICE.pub in the allow-list.
const aggKey = generateKeyPairSync('ed25519');
const allowDir = path.join(root, 'allow');
mkdirSync(allowDir);
const devKeys = new Map<string, KeyPairKeyObjectResult>();
const IDS = ['d0', 'd1', 'd2', 'sec', 'bad', 'noca', 'evil-nan', 'evil-norm', 'evil-shape', 'evil-artifact', 'g0', 'g1', 'g2', 'g9', 'lonely', 'x', 'r0', 'r1', 'r2', 'a', 'b', 'late', 'cam0', 'cam1', 'cam2', 'devA', 'devB'];
for (const id of IDS) {
  const k = generateKeyPairSync('ed25519');
  devKeys.set(id, k);
  writeFileSync(path.join(allowDir, `${id}.pub`), k.publicKey.export({ type: 'spki', format: 'pem' }));
}
/** A device's keys as FleetDeviceOptions take them: its own, and the aggregator's public key. */
const keysOf = (id: string) => ({ key: devKeys.get(id)!.privateKey, aggregator: aggKey.publicKey });

test.before(async () => {
  if (skip) return;
  broker = await Broker.start(path.join(root, 'broker'));
  observer = await mqtt.connectAsync(broker.url, { clientId: 'observer', reconnectPeriod: 200 });
  observer.on('message', (topic, payload) => seen.push({ topic, payload: Buffer.from(payload) }));
  await observer.subscribeAsync('ssocl/#', { qos: 1 });
});

test.after(async () => {
  for (const a of aggregators) a.stop();
  for (const d of devices) await d.close(false).catch(() => {});
  for (const c of clients) await c.endAsync(true).catch(() => {});
  for (const b of brokers) await b.down();
  await observer?.endAsync(true).catch(() => {});
  for (const t of trainers) await t.close().catch(() => {});
  await broker?.down();
  rmSync(root, { recursive: true, force: true });
});

async function openTrainer(): Promise<Trainer> {
  const t = await Trainer.open(art, { threads: 1 });
  trainers.push(t);
  return t;
}

const until = async (what: string, ok: () => boolean, ms = 15000) => {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
};

/** A test client posing as devices (and attackers). */
async function client(id: string): Promise<MqttClient> {
  const c = await mqtt.connectAsync(broker.url, { clientId: id, reconnectPeriod: 200 });
  clients.push(c);
  return c;
}

async function openAggregator(o: AggregatorOptions): Promise<Aggregator> {
  const a = await Aggregator.open(o);
  aggregators.push(a);
  return a;
}

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) * 2 - 1;
}

type Spec = { name: string; shape: number[] }[];

function randomDelta(spec: Spec, seed: number, scale = 1e-3): Map<string, Float32Array> {
  const r = rng(seed);
  return new Map(spec.map((s) => [s.name, Float32Array.from({ length: s.shape.reduce((a, b) => a * b, 1) }, () => r() * scale)]));
}

async function sendUpdate(c: MqttClient, fleet: string, h: Partial<UpdateHeader> & { device: string }, delta: Map<string, Float32Array>, artifact: string): Promise<void> {
  const header: UpdateHeader = { kind: 'update', fleet, seq: 1, base: 0, frames: 10, step: 5, artifact, sentAt: new Date().toISOString(), ...h };
  const key = devKeys.get(h.device);
  await c.publishAsync(topics(fleet).update(h.device), encodeMessage(header, delta, 'f16', key && signerOf(key.privateKey)), { qos: 1, retain: true });
}

function aggregatorOptions(fleet: string, o: Partial<AggregatorOptions>, log: string[]): AggregatorOptions {
  return {
    broker: { url: broker.url }, fleet, artifacts: art, expect: 0, roundTimeoutMs: 1000, minUpdates: 1, robust: 'mean', enc: 'f16', log: (l) => log.push(l),
    keys: { key: aggKey.privateKey, allow: new AllowList(allowDir, (l) => log.push(l)) }, ...o,
  };
}

/** The globals published on a fleet, by version, as devices decode them. */
function globals(fleet: string, full: boolean): Map<number, { header: GlobalHeader; tensors: Map<string, Float32Array> }> {
  const t = topics(fleet);
  const out = new Map<number, { header: GlobalHeader; tensors: Map<string, Float32Array> }>();
  for (const m of seen) {
    if (m.topic !== (full ? t.global : t.delta) || !m.payload.length) continue;
    const d = decodeMessage(m.payload);
    out.set((d.header as GlobalHeader).version, d as { header: GlobalHeader; tensors: Map<string, Float32Array> });
  }
  return out;
}

/** Steps the device between arrivals until it has merged global version v. */
const merged = (dev: FleetDevice, v: number) =>
  until(`the device merged v${v}`, () => {
    void dev.between();
    return dev.version === v;
  });

/** The trainer's shared tensors are `global` plus what it learnt from `from` to `to`, to the float32 bit. */
function assertHolds(t: Trainer, global: Map<string, Float32Array>, to: Map<string, Float32Array>, from: Map<string, Float32Array>): void {
  for (const s of spec) {
    const now = t.state.get(s.name)!;
    for (let i = 0; i < now.length; i++) assert.equal(now[i], Math.fround(global.get(s.name)![i] + (to.get(s.name)![i] - from.get(s.name)![i])), `${s.name}[${i}]`);
  }
}

let initShared: Map<string, Float32Array>;
let spec: Spec;
let artifact: string;

test('a round averages the updates weighted by frames; the retained float32 model is the previous one plus the published change, exactly', { skip, timeout: 60_000 }, async () => {
  const t = await openTrainer();
  spec = sharedSpec(t.manifest.state);
  artifact = t.manifest.files[t.manifest.trainStep.file];
  const init = t.initial();
  initShared = new Map(spec.map((s) => [s.name, init.get(s.name)!]));
  const log: string[] = [];
  const agg = await openAggregator(aggregatorOptions('avg', { expect: 3, maxRounds: 1 }, log));
  const running = agg.run();
  const c = await client('fake-avg');
  const deltas = [1, 2, 3].map((i) => randomDelta(spec, i));
  const frames = [10, 20, 70];
  for (let i = 0; i < 3; i++) await sendUpdate(c, 'avg', { device: `d${i}`, frames: frames[i] }, deltas[i], artifact);
  await running;
  await c.endAsync();
  await until('the v1 messages', () => globals('avg', true).has(1) && globals('avg', false).has(1));
  const full = globals('avg', true).get(1)!;
  const change = globals('avg', false).get(1)!;
  assert.deepEqual(full.header.included.map((i) => [i.device, i.frames]), [['d0', 10], ['d1', 20], ['d2', 70]]);
  assert.equal(full.header.frames, 100);
  for (const s of spec) {
    const g = full.tensors.get(s.name)!;
    const d = change.tensors.get(s.name)!;
    const b = initShared.get(s.name)!;
    for (let k = 0; k < g.length; k++) {
      // Float64 weighted mean of the float16 values the devices sent, rounded to half as published.
      const sent = deltas.map((x) => f16ToF32(f32ToF16(Float32Array.of(x.get(s.name)![k])))[0]);
      const mean = (sent[0] * 10 + sent[1] * 20 + sent[2] * 70) / 100;
      const half = f16ToF32(f32ToF16(Float32Array.of(mean)))[0];
      assert.ok(Math.abs(d[k] - half) <= Math.abs(half) * 2 ** -10 + 1e-7, `${s.name}[${k}]: change ${d[k]} vs ${half}`);
      assert.equal(g[k], Math.fround(b[k] + d[k]), `${s.name}[${k}]: full = previous + change`);
    }
  }
  assert.equal(agg.version, 1);
});

test("an aggregator on other artifacts refuses to take over a fleet's model (it would publish v1 over it)", { skip, timeout: 60_000 }, async () => {
  const art2 = path.join(root, 'art2');
  writeArtifacts(compileArtifacts(tinyPreset(['crops=4', 'agent={"newPerArrival":4,"updatesPerArrival":2,"bufferSize":12,"replay":"mixed"}'])), art2);
  const log: string[] = [];
  const agg = await openAggregator({ ...aggregatorOptions('avg', {}, log), artifacts: art2 });
  await assert.rejects(agg.run(), /retained global model on ssocl\/fleet\/avg\/global cannot be used \(made for other artifacts/);
});

test('over TLS with a user name and password: a device and the aggregator connect with --fleet-ca; a wrong password is refused and said', { skip, timeout: 60_000 }, async () => {
  const secure = await Broker.start(path.join(root, 'broker-tls'), { tls: true, users: { cam: 'right' } });
  brokers.push(secure);
  try {
    const ca = path.join(secure.dir, 'ca.pem');
    const log: string[] = [];
    const agg = await openAggregator({ ...aggregatorOptions('tls', { expect: 1, maxRounds: 1 }, log), broker: { url: secure.url, ca, username: 'cam', password: 'right' } });
    const running = agg.run();
    await agg.ready;
    const t = await openTrainer();
    const dev = new FleetDevice({ broker: { url: secure.url, ca, username: 'cam', password: 'right' }, fleet: 'tls', device: 'sec', every: { steps: 1 }, enc: 'f16', keys: keysOf('sec') }, t, () => {});
    devices.push(dev);
    dev.start();
    nudge(t, 1e-3);
    dev.learnt(4);
    t.steps++;
    await until('the device published', () => {
      void dev.between();
      return dev.io.updates === 1;
    });
    await running;
    assert.equal(agg.version, 1);
    assert.deepEqual(agg.rounds[0].included.map((i) => i.device), ['sec']);
    const wrong: string[] = [];
    const bad = new FleetDevice({ broker: { url: secure.url, ca, username: 'cam', password: 'wrong' }, fleet: 'tls', device: 'bad', every: { steps: 1 }, enc: 'f16', keys: keysOf('bad') }, t, (l) => wrong.push(l));
    devices.push(bad);
    bad.start();
    await until('the refusal logged', () => wrong.some((l) => /Not authorized|Bad username or password/i.test(l)));
    const noCa: string[] = [];
    const untrusting = new FleetDevice({ broker: { url: secure.url, username: 'cam', password: 'right' }, fleet: 'tls', device: 'noca', every: { steps: 1 }, enc: 'f16', keys: keysOf('noca') }, t, (l) => noCa.push(l));
    devices.push(untrusting);
    untrusting.start();
    await until('the unknown CA logged', () => noCa.some((l) => /certificate/i.test(l)));
    await bad.close(false);
    await untrusting.close(false);
  } finally {
    await secure.down();
  }
});

test('hostile updates (NaN, a 1e6 norm, wrong shapes, other artifacts, garbage, a spoofed sender) are rejected and logged while the round completes', { skip, timeout: 60_000 }, async () => {
  const log: string[] = [];
  const agg = await openAggregator(aggregatorOptions('hostile', { roundTimeoutMs: 1500, maxRounds: 1 }, log));
  const running = agg.run();
  const c = await client('fake-hostile');
  const good = [4, 5, 6].map((i) => randomDelta(spec, i));
  const nan = randomDelta(spec, 7);
  nan.get(spec[0].name)![3] = NaN;
  const huge = randomDelta(spec, 8, 1e6);
  const shapes = randomDelta(spec, 9);
  shapes.set(spec[0].name, new Float32Array(3));
  // The evil ones first: the round must not close on them.
  await sendUpdate(c, 'hostile', { device: 'evil-nan' }, nan, artifact);
  await sendUpdate(c, 'hostile', { device: 'evil-norm' }, huge, artifact);
  await sendUpdate(c, 'hostile', { device: 'evil-shape' }, shapes, artifact);
  await sendUpdate(c, 'hostile', { device: 'evil-artifact' }, randomDelta(spec, 10), 'f'.repeat(64));
  await c.publishAsync(topics('hostile').update('evil-garbage'), Buffer.from('not a fleet message at all'), { qos: 1, retain: true });
  await sendUpdate(c, 'hostile', { device: 'g0' }, randomDelta(spec, 11), artifact).then(() =>
    // a message on g9's topic claiming to be from g0
    c.publishAsync(topics('hostile').update('g9'), encodeMessage({ kind: 'update', fleet: 'hostile', device: 'g0', seq: 2, base: 0, frames: 10, step: 1, artifact, sentAt: '' }, randomDelta(spec, 12), 'f16'), { qos: 1, retain: true }),
  );
  for (let i = 0; i < 3; i++) await sendUpdate(c, 'hostile', { device: `g${i}`, seq: 3, frames: 10 }, good[i], artifact);
  await running;
  await c.endAsync();
  await until('v1', () => globals('hostile', true).has(1));
  const h = globals('hostile', true).get(1)!.header;
  assert.deepEqual(h.included.map((i) => i.device), ['g0', 'g1', 'g2']);
  const why = Object.fromEntries(h.rejected.map((r) => [r.device, r.why]));
  assert.match(why['evil-nan'], /non-finite|NaN/i);
  assert.match(why['evil-norm'], /norm/);
  assert.match(why['evil-shape'], /values|shape/);
  assert.match(why['evil-artifact'], /artifacts/);
  assert.match(why['evil-garbage'], /not safetensors/);
  assert.match(why['g9'], /says it is from g0/);
  for (const d of ['evil-nan', 'evil-norm', 'evil-shape', 'evil-artifact', 'evil-garbage', 'g9']) assert.ok(log.some((l) => l.includes('rejected') && l.includes(d)), `logged: ${d}`);
  // The global is the mean of the good ones alone (equal frames).
  const g = globals('hostile', false).get(1)!.tensors.get(spec[1].name)!;
  const sent = (k: number) => good.map((x) => f16ToF32(f32ToF16(Float32Array.of(x.get(spec[1].name)![k])))[0]);
  for (let k = 0; k < g.length; k++) {
    const m = (sent(k)[0] + sent(k)[1] + sent(k)[2]) / 3;
    assert.ok(Math.abs(g[k] - m) <= Math.abs(m) * 2 ** -10 + 1e-7);
  }
});

test('B5: a forged global model from an anonymous client (v1000000 on global-delta, a retained v777) is not merged by a joining device, nor taken up by an aggregator started after it', { skip, timeout: 60_000 }, async () => {
  const evil = await client('anonymous-forger');
  const attacker = generateKeyPairSync('ed25519');
  const x1000 = new Map([...initShared].map(([k, v]) => [k, v.map((x) => x * 1000)]));
  const forged = (version: number, full: boolean) =>
    encodeMessage({ kind: 'global', fleet: 'forged', version, prev: 0, artifact, included: [], rejected: [], frames: 0, madeAt: '', full }, x1000, 'f32', signerOf(attacker.privateKey));
  await evil.publishAsync(topics('forged').global, forged(777, true), { qos: 1, retain: true });
  const t = await openTrainer();
  const dlog: string[] = [];
  const dev = new FleetDevice({ broker: { url: broker.url }, fleet: 'forged', device: 'devA', every: { steps: 1 }, enc: 'f16', keys: keysOf('devA') }, t, (l) => dlog.push(l));
  devices.push(dev);
  dev.start();
  await until('the retained forgery refused', () => dlog.some((l) => /ignored a global model on ssocl\/fleet\/forged\/global: v777 is not signed by the aggregator key/.test(l)));
  await evil.publishAsync(topics('forged').delta, forged(1_000_000, false), { qos: 1 });
  await until('the forged change refused', () => dlog.some((l) => /v1000000 is not signed/.test(l)));
  // An aggregator started now ignores the retained forgery (logged, counted) and starts the fleet at v0; its v1 is merged.
  const log: string[] = [];
  const agg = await openAggregator(aggregatorOptions('forged', { expect: 1, maxRounds: 1 }, log));
  const running = agg.run();
  await agg.ready;
  assert.equal(agg.version, 0);
  assert.equal(agg.refused.unsigned, 1);
  await sendUpdate(evil, 'forged', { device: 'devB' }, randomDelta(spec, 70), artifact);
  await running;
  await merged(dev, 1);
  assert.ok(!dlog.some((l) => /merged global v(777|1000000)/.test(l)));
  await dev.close(false);
  await evil.endAsync();
});

test('the ACL file (agent/fleet/mosquitto.acl) on mosquitto: a device may publish only its own update topic; only the aggregator the global models', { skip, timeout: 60_000 }, async () => {
  const acl = path.resolve(import.meta.dirname, '../agent/fleet/mosquitto.acl');
  const b = await Broker.start(path.join(root, 'broker-acl'), { users: { aggregator: 'agg-pw', devA: 'a-pw', devB: 'b-pw' }, acl });
  brokers.push(b);
  try {
    const as = async (user: string, password: string) => {
      const c = await mqtt.connectAsync(b.url, { clientId: `acl-${user}`, username: user, password, reconnectPeriod: 0 });
      clients.push(c);
      return c;
    };
    const got: string[] = [];
    const agg = await as('aggregator', 'agg-pw');
    agg.on('message', (topic, p) => got.push(`agg ${topic} ${p}`));
    await agg.subscribeAsync(['ssocl/fleet/F/update/+', 'ssocl/fleet/F/global', 'ssocl/fleet/F/global-delta'], { qos: 1 });
    const devA = await as('devA', 'a-pw');
    devA.on('message', (topic, p) => got.push(`devA ${topic} ${p}`));
    await devA.subscribeAsync(['ssocl/fleet/F/global', 'ssocl/fleet/F/global-delta'], { qos: 1 });
    // Denied: another device's update topic, the global models (retained or not), another fleet's... of another user name.
    await devA.publishAsync('ssocl/fleet/F/update/devB', 'as-devB', { qos: 1, retain: true });
    await devA.publishAsync('ssocl/fleet/F/global', 'forged-full', { qos: 1, retain: true });
    await devA.publishAsync('ssocl/fleet/F/global-delta', 'forged-delta', { qos: 1 });
    // Allowed (the controls, after the denied ones on the same connection): its own update; the aggregator's global model.
    await devA.publishAsync('ssocl/fleet/F/update/devA', 'own', { qos: 1, retain: true });
    await agg.publishAsync('ssocl/fleet/F/global', 'real-full', { qos: 1, retain: true });
    await until('the allowed messages', () => got.includes('agg ssocl/fleet/F/update/devA own') && got.includes('devA ssocl/fleet/F/global real-full'));
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(got.filter((g) => /as-devB|forged/.test(g)), [], got.join('\n'));
    // A client without a password is not let in.
    await assert.rejects(mqtt.connectAsync(b.url, { clientId: 'anon', reconnectPeriod: 0 }), /Not authorized|Connection refused/i);
    for (const c of [agg, devA]) await c.endAsync();
  } finally {
    await b.down();
  }
});

test('a round with a single update closes at its timeout, and device clocks far off do not matter', { skip, timeout: 60_000 }, async () => {
  const log: string[] = [];
  const agg = await openAggregator(aggregatorOptions('one', { expect: 3, roundTimeoutMs: 400, maxRounds: 2 }, log));
  const running = agg.run();
  const c = await client('fake-one');
  await sendUpdate(c, 'one', { device: 'lonely', sentAt: '1999-01-01T00:00:00Z' }, randomDelta(spec, 13), artifact);
  await until('v1', () => agg.version === 1);
  await sendUpdate(c, 'one', { device: 'lonely', seq: 2, base: 1, sentAt: '2099-12-31T23:59:59Z' }, randomDelta(spec, 14), artifact);
  await running;
  await c.endAsync();
  assert.equal(agg.version, 2);
  assert.deepEqual(agg.rounds.map((r) => r.included.map((i) => `${i.device}:${i.seq}`)), [['lonely:1'], ['lonely:2']]);
});

test('a server learning rate scales the parameters\' change, never the BN statistics\'', { skip, timeout: 60_000 }, async () => {
  const agg = await openAggregator(aggregatorOptions('serverlr', { expect: 1, maxRounds: 1, serverLr: 3 }, []));
  const running = agg.run();
  const c = await client('fake-serverlr');
  const delta = randomDelta(spec, 50);
  await sendUpdate(c, 'serverlr', { device: 'x' }, delta, artifact);
  await running;
  const t = trainers[0];
  const roles = new Map(t.manifest.state.map((s) => [s.name, s.role]));
  assert.ok([...roles.values()].includes('buffer'), 'the artifacts have BN statistics');
  const half = (v: number) => f16ToF32(f32ToF16(Float32Array.of(v)))[0];
  for (const s of spec) {
    const g = agg.global.get(s.name)!;
    const b = initShared.get(s.name)!;
    const lr = roles.get(s.name) === 'param' ? 3 : 1;
    for (let k = 0; k < g.length; k++) assert.equal(g[k], Math.fround(b[k] + half(Math.fround(lr * half(delta.get(s.name)![k])))), `${s.name}[${k}]`);
  }
});

test('the aggregator restarted mid-round and the broker restarted lose no round; a new aggregator continues from the retained global', { skip, timeout: 60_000 }, async () => {
  const log: string[] = [];
  const c = await client('fake-restart');
  let agg = await openAggregator(aggregatorOptions('restart', { expect: 3 }, log));
  let running = agg.run();
  await sendUpdate(c, 'restart', { device: 'r0' }, randomDelta(spec, 15), artifact);
  await sendUpdate(c, 'restart', { device: 'r1' }, randomDelta(spec, 16), artifact);
  await until('two updates collected', () => log.filter((l) => l.includes('for v1')).length === 2);
  agg.stop();
  await running;
  await c.endAsync();
  await broker.restart();
  const c2 = await client('fake-restart');
  await sendUpdate(c2, 'restart', { device: 'r2' }, randomDelta(spec, 17), artifact);
  agg = await openAggregator(aggregatorOptions('restart', { expect: 3, maxRounds: 1 }, log));
  await agg.run();
  assert.equal(agg.version, 1);
  assert.deepEqual(agg.rounds[0].included.map((i) => i.device), ['r0', 'r1', 'r2']);
  // The next aggregator starts from v1 (the broker's retained model), not from the artifacts.
  agg = await openAggregator(aggregatorOptions('restart', { expect: 1, maxRounds: 1 }, log));
  running = agg.run();
  await until('the new aggregator on v1', () => log.some((l) => l.includes('continuing from the retained global v1')));
  await sendUpdate(c2, 'restart', { device: 'r0', seq: 2, base: 1 }, randomDelta(spec, 18), artifact);
  await running;
  await c2.endAsync();
  assert.equal(agg.version, 2);
});

const sharedCopy = (t: Trainer) => new Map(spec.map((s) => [s.name, t.state.get(s.name)!.slice()]));
const nudge = (t: Trainer, by: number) => {
  for (const s of spec) t.state.set(s.name, t.state.get(s.name)!.map((v, i) => v + by * (((i % 7) - 3) / 3)));
};

test('a device that missed rounds catches up from the retained model, keeping what it learnt meanwhile; its next update is merged as FedAvg keeps local progress', { skip, timeout: 60_000 }, async () => {
  const log: string[] = [];
  const agg = await openAggregator(aggregatorOptions('catchup', { expect: 2 }, log));
  const running = agg.run();
  const c = await client('fake-catchup');
  // Two rounds while the device is away.
  for (let v = 0; v < 2; v++) {
    for (const d of ['a', 'b']) await sendUpdate(c, 'catchup', { device: d, seq: v + 1, base: v }, randomDelta(spec, 20 + v * 2 + (d === 'a' ? 0 : 1)), artifact);
    await until(`v${v + 1}`, () => agg.version === v + 1);
  }
  const t = await openTrainer();
  const dlog: string[] = [];
  const dev = new FleetDevice({ broker: { url: broker.url }, fleet: 'catchup', device: 'late', every: { steps: 1 }, enc: 'f16', keys: keysOf('late') }, t, (l) => dlog.push(l));
  devices.push(dev);
  nudge(t, 1e-3); // learnt while away
  dev.learnt(8);
  const local = sharedCopy(t);
  dev.start();
  const g2 = () => globals('catchup', true).get(2)!.tensors;
  await merged(dev, 2);
  assertHolds(t, g2(), local, initShared);
  for (const s of spec) assert.deepEqual(dev.base.get(s.name), g2().get(s.name), 'its base is the fleet\'s v2, bit for bit');
  // Its update (on v2) goes into v3 with another device's; meanwhile it learns more.
  t.steps++;
  await dev.between();
  const published = sharedCopy(t);
  nudge(t, 2e-3);
  dev.learnt(4);
  const after = sharedCopy(t);
  await sendUpdate(c, 'catchup', { device: 'a', seq: 3, base: 2 }, randomDelta(spec, 30), artifact);
  await until('v3', () => agg.version === 3);
  await merged(dev, 3);
  const g3 = globals('catchup', true).get(3)!;
  assert.deepEqual(g3.header.included.map((i) => i.device), ['a', 'late']);
  // Its own update is in v3: only what it learnt after publishing is carried over.
  assertHolds(t, g3.tensors, after, published);
  assert.equal(dev.framesSinceBase, 4, 'frames since its update');
  assert.ok(dlog.some((l) => /merged global v3 .*included/.test(l)), dlog.join('\n'));
  agg.stop();
  await running;
  await dev.close(false);
  await c.endAsync();
});

test('a device whose update went into a round it then missed (its queued changes lost) does not count that update twice', { skip, timeout: 60_000 }, async () => {
  const log: string[] = [];
  const agg = await openAggregator(aggregatorOptions('missed', { expect: 2 }, log));
  const running = agg.run();
  const c = await client('fake-missed');
  const t = await openTrainer();
  const dlog: string[] = [];
  const opts = { broker: { url: broker.url }, fleet: 'missed', device: 'late', every: { steps: 1 }, enc: 'f16' as const, keys: keysOf('late') };
  const dev = new FleetDevice(opts, t, (l) => dlog.push(l));
  devices.push(dev);
  dev.start();
  nudge(t, 1e-3);
  dev.learnt(8);
  t.steps++;
  await until('its update 1 on v0', () => {
    void dev.between();
    return dev.io.updates === 1;
  });
  const published = sharedCopy(t);
  const record = dev.record();
  assert.equal(record.published?.seq, 1);
  await dev.close(false);
  // Its queued changes are lost (a session the broker dropped): a clean session under its client id.
  const wipe = await mqtt.connectAsync(broker.url, { clientId: 'ssocl-missed-late', clean: true });
  await wipe.endAsync();
  // v1 takes its update with a's; v2 is a round without it.
  await sendUpdate(c, 'missed', { device: 'a', seq: 1, base: 0 }, randomDelta(spec, 50), artifact);
  await until('v1', () => agg.version === 1);
  assert.deepEqual(globals('missed', true).get(1)!.header.included.map((i) => i.device), ['a', 'late']);
  await sendUpdate(c, 'missed', { device: 'a', seq: 2, base: 1 }, randomDelta(spec, 51), artifact);
  await sendUpdate(c, 'missed', { device: 'b', seq: 1, base: 1 }, randomDelta(spec, 52), artifact);
  await until('v2', () => agg.version === 2);
  const g2 = globals('missed', true).get(2)!;
  assert.deepEqual({ ...g2.header.latest }, { a: 2, b: 1, late: 1 });
  // Meanwhile it learnt more; back from its checkpoint's record, it finds v2 (prev v1) retained.
  nudge(t, 2e-3);
  const local = sharedCopy(t);
  const back = new FleetDevice(opts, t, (l) => dlog.push(l), record);
  devices.push(back);
  back.learnt(4);
  back.start();
  await merged(back, 2);
  // v2 holds its update (through v1): only what it learnt after publishing is carried over.
  assertHolds(t, g2.tensors, local, published);
  assert.equal(back.framesSinceBase, 4, 'frames since its update');
  assert.ok(dlog.some((l) => /merged global v2 .*included/.test(l)), dlog.join('\n'));
  agg.stop();
  await running;
  await back.close(false);
  await c.endAsync();
});

test("a checkpoint keeps a device's fleet state (global model, pending update) and gives it back", { skip, timeout: 60_000 }, async () => {
  const t = await openTrainer();
  const base = randomDelta(spec, 40, 1);
  const snapshot = randomDelta(spec, 41, 1);
  const rec: FleetRecord = { fleet: 'f', device: 'd', version: 7, seq: 3, framesSinceBase: 12, published: { seq: 3, base: 7, frames: 9 }, base, snapshot };
  const learnerLike = { steps: 1, arrivals: 1, rng: [1, 2, 3, 4], cropRng: [1, 2, 3, 4], tensors: t.state, buffer: { nextId: 0, streamCount: 0, entries: [] }, distillWeight: 0 };
  const dir = path.join(root, 'ckpt');
  mkdirSync(dir);
  const file = saveCheckpoint(dir, toCheckpoint(learnerLike, { artifact, framesIngested: 4, counters: {}, pending: [], fleet: rec }));
  const back = fromCheckpoint(readCheckpoint(file)).run.fleet!;
  assert.deepEqual({ ...back, base: [...back.base], snapshot: [...back.snapshot!] }, { ...rec, base: [...base], snapshot: [...snapshot] });
  const dev = new FleetDevice({ broker: { url: broker.url }, fleet: 'f', device: 'd', every: { steps: 1 }, enc: 'f16' }, t, () => {}, back);
  assert.equal(dev.version, 7);
  assert.deepEqual(dev.record().published, rec.published);
});

test('three agents on disjoint CIFAR-10 classes learn in rounds; each holds the fleet\'s global model of its version bit for bit; the aggregator exports it', { skip, timeout: 60_000 }, async () => {
  const cifar = readCifar10(CIFAR10_DIR, 'test');
  const classes = [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]];
  const log: string[] = [];
  const models = path.join(root, 'fleet-models');
  mkdirSync(models);
  const agg = await openAggregator(aggregatorOptions('three', { expect: 3, roundTimeoutMs: 3000, models }, log));
  const running = agg.run();
  await agg.ready;
  const images: Uint8Array[] = [];
  const agent = (i: number) => {
    const order: number[] = [];
    for (let k = 0; k < cifar.labels.length && order.length < 320; k++) if (classes[i].includes(cifar.labels[k])) order.push(k);
    const dir = path.join(root, `agent${i}`);
    const o: AgentOptions = {
      dataset: { label: `cifar10 classes ${classes[i]}`, images: cifar.images, order, size: 32 },
      recursive: false, order: 'name', afterIngest: 'keep', processed: path.join(dir, 'p'), quarantine: path.join(dir, 'q'), artifacts: art,
      stateDir: path.join(dir, 'state'), models: path.join(dir, 'models'), ep: 'cpu', threads: 1, fit: 'cover', maxPixels: 1e7, overflow: 'block',
      backlog: 100, stableMs: 100, checkpointEvery: { steps: 1000 }, exportEvery: { steps: 1000 }, fresh: true, maxArrivals: 0, maxSeconds: 0,
      exitWhenIdle: 0, maxSkips: 10, diskRetryMs: 1000, learner: {}, log: (l) => log.push(`cam${i}: ${l}`), health: { gate: false },
      fleet: { broker: { url: broker.url }, fleet: 'three', device: `cam${i}`, every: { steps: 16 }, enc: 'f16', keys: keysOf(`cam${i}`) },
    };
    return runAgent(o).then((s) => ({ s, dir }));
  };
  const done = await Promise.all([0, 1, 2].map(agent));
  await until('two rounds', () => agg.rounds.length >= 2, 8000).catch((e) => { console.log(log.join('\n')); throw e; });
  agg.stop();
  await running;
  assert.ok(agg.rounds.length >= 2, `rounds: ${agg.rounds.length}`);
  assert.ok(agg.rounds.some((r) => r.included.length === 3), 'a round with all three');
  const full = globals('three', true);
  for (const { s, dir } of done) {
    assert.ok(s.steps > 0);
    const ck = readCheckpoint(listCheckpoints(path.join(dir, 'state', 'checkpoints')).at(-1)!);
    const f = fromCheckpoint(ck).run.fleet!;
    images.push(...ck.images); // the frames as the agent holds them (at the training size)
    assert.ok(f.version >= 1, `${dir}: merged a global model (at v${f.version})`);
    const g = full.get(f.version)!.tensors;
    for (const sp of spec) assert.deepEqual(f.base.get(sp.name), g.get(sp.name), `${dir}: its v${f.version} is the fleet's`);
  }
  const latest = JSON.parse(readFileSync(path.join(models, 'latest.json'), 'utf8'));
  assert.equal(latest.step, agg.version, 'the export is the newest global model');
  // Nothing published holds image data: every payload is a fleet message of the shared tensors only,
  // and no 32-byte run of any image an agent trained on appears in any payload.
  const names = spec.map((x) => x.name).sort();
  // Windows of varied bytes only: a flat run (a black border) could match a run of zeros by chance.
  const windows: Buffer[] = [];
  for (const im of images) for (let o = 0; o + 32 <= im.length; o += 40) if (new Set(im.subarray(o, o + 32)).size >= 8) windows.push(Buffer.from(im.subarray(o, o + 32)));
  assert.ok(windows.length > 50);
  let checked = 0;
  for (const m of seen) {
    if (!m.payload.length || m.topic.includes('evil') || m.topic.endsWith('/g9')) continue;
    if (m.topic.includes('/aggregator-sync/')) {
      assert.equal(m.payload.toString(), 'sync'); // the aggregator's marker for "retained messages delivered"
      continue;
    }
    const d = decodeMessage(m.payload);
    assert.deepEqual([...d.tensors.keys()].sort(), names, m.topic);
    if (!m.topic.startsWith('ssocl/fleet/three/')) continue;
    for (const w of windows) assert.equal(m.payload.indexOf(w), -1, `${m.topic} holds image bytes`);
    checked++;
  }
  assert.ok(checked >= 6, `payloads checked: ${checked}`);
});
