// The fleet under attack (issue #30), without a broker: the aggregator and a device driven message by
// message (their receive(), the aggregator's start() and closeRound()), so each hostile message of the
// attack pass is a fast test. A forged global model (B5), a claim of 2^53 - 1 frames (B6), steering with
// 1e12 frames and a 9.9x norm (B7), a captured update replayed or edited, unknown senders and a payload
// flood: refused, logged and counted, never fatal; also after a restart with the message retained.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { Aggregator, type AggregatorOptions } from '../agent/fleet/aggregator.ts';
import { FleetDevice } from '../agent/fleet/device.ts';
import { decodeMessage, encodeMessage, sharedSpec, type GlobalHeader, type UpdateHeader } from '../agent/fleet/codec.ts';
import { AllowList, signerOf, verifyAuth } from '../agent/fleet/keys.ts';
import { l2 } from '../agent/fleet/screen.ts';
import { topics } from '../agent/fleet/transport.ts';
import { tinyPreset } from './helpers/tiny.ts';

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-fleet-hostile-'));
const art = path.join(root, 'art');
writeArtifacts(compileArtifacts(tinyPreset()), art);
const pair = () => generateKeyPairSync('ed25519');
const aggKeys = pair();
const attacker = pair();
const devKeys = Object.fromEntries(['devA', 'devB', 'devC', 'devD'].map((d) => [d, pair()]));
const allowDir = path.join(root, 'allow');
mkdirSync(allowDir);
for (const [d, k] of Object.entries(devKeys)) writeFileSync(path.join(allowDir, `${d}.pub`), k.publicKey.export({ type: 'spki', format: 'pem' }));

const trainers: Trainer[] = [];
test.after(async () => {
  for (const t of trainers) await t.close().catch(() => {});
  rmSync(root, { recursive: true, force: true });
});

const T = topics('F');
let spec: { name: string; shape: number[] }[];
let artifact: string;
let init: Map<string, Float32Array>;

async function openTrainer(): Promise<Trainer> {
  const t = await Trainer.open(art, { threads: 1 });
  trainers.push(t);
  spec ??= sharedSpec(t.manifest.state);
  artifact ??= t.manifest.files[t.manifest.trainStep.file];
  init ??= new Map(spec.map((s) => [s.name, t.initial().get(s.name)!]));
  return t;
}

type Published = { topic: string; bytes: Buffer; retain: boolean };
async function openAggregator(o: Partial<AggregatorOptions> = {}, log: string[] = []): Promise<{ agg: Aggregator; log: string[]; out: Published[]; publish: (topic: string, bytes: Buffer, retain: boolean) => Promise<void> }> {
  await openTrainer();
  const out: Published[] = [];
  const agg = await Aggregator.open({
    broker: { url: 'mqtt://127.0.0.1:1' }, fleet: 'F', artifacts: art, expect: 0, roundTimeoutMs: 1000, minUpdates: 1, robust: 'mean', enc: 'f32',
    keys: { key: aggKeys.privateKey, allow: new AllowList(allowDir, (l) => log.push(l)) }, log: (l) => log.push(l), ...o,
  });
  return { agg, log, out, publish: async (topic, bytes, retain) => void out.push({ topic, bytes, retain }) };
}

const scaled = (m: Map<string, Float32Array>, k: number) => new Map([...m].map(([n, v]) => [n, v.map((x) => x * k)]));
/** A small delta, different per seed. */
function small(seed: number, scale = 1e-3): Map<string, Float32Array> {
  let s = seed;
  return new Map(spec.map((x) => [x.name, Float32Array.from({ length: x.shape.reduce((a, b) => a * b, 1) }, () => (((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1) * scale)]));
}
function update(h: Partial<UpdateHeader> & { device: string }, delta: Map<string, Float32Array>, key: KeyObject | null): Buffer {
  const header: UpdateHeader = { kind: 'update', fleet: 'F', seq: 1, base: 0, frames: 10, step: 1, artifact, sentAt: '', ...h };
  return encodeMessage(header, delta, 'f32', key ? signerOf(key) : undefined);
}
function forgedGlobal(h: Partial<GlobalHeader>, tensors: Map<string, Float32Array>, key: KeyObject | null): Buffer {
  const header: GlobalHeader = { kind: 'global', fleet: 'F', version: 1_000_000, prev: 0, artifact, included: [], rejected: [], frames: 0, madeAt: '', full: false, ...h };
  return encodeMessage(header, tensors, 'f32', key ? signerOf(key) : undefined);
}
const fullOf = (out: Published[]) => out.filter((p) => p.topic === T.global).at(-1)!.bytes;
const deltaOf = (out: Published[]) => out.filter((p) => p.topic === T.delta).at(-1)!.bytes;

test('signatures: a signed message verifies with its key only; an edited header field, a swapped tensor or a stripped signature does not', async () => {
  await openTrainer();
  const bytes = update({ device: 'devA' }, small(1), devKeys.devA.privateKey);
  const m = decodeMessage(bytes);
  assert.ok(verifyAuth(m.auth, devKeys.devA.publicKey));
  assert.ok(!verifyAuth(m.auth, devKeys.devB.publicKey));
  // The same signature on a header with one field edited (frames), on swapped tensors, and none at all.
  const edited = decodeMessage(update({ device: 'devA', frames: 1e12 }, small(1), null));
  assert.ok(!verifyAuth({ ...edited.auth, signature: m.auth.signature }, devKeys.devA.publicKey));
  const [a, b] = spec.filter((s, i, all) => all.some((o) => o !== s && o.shape.join() === s.shape.join()));
  assert.ok(a && b, 'two tensors of the same shape to swap');
  const swapped = new Map(small(1));
  const va = swapped.get(a.name)!;
  swapped.set(a.name, swapped.get(b.name)!);
  swapped.set(b.name, va);
  const sw = decodeMessage(update({ device: 'devA' }, new Map(spec.map((s) => [s.name, swapped.get(s.name)!])), null));
  assert.ok(!verifyAuth({ ...sw.auth, signature: m.auth.signature }, devKeys.devA.publicKey));
  assert.ok(!verifyAuth(decodeMessage(update({ device: 'devA' }, small(1), null)).auth, devKeys.devA.publicKey));
});

test('B5: a forged global model (unsigned, or signed by another key; v1000000 x1000 on global-delta, a retained v777 on join) is never merged; the aggregator\'s own is, also after the device restarts', async () => {
  const t = await openTrainer();
  const log: string[] = [];
  const keys = { key: devKeys.devA.privateKey, aggregator: aggKeys.publicKey };
  const dev = new FleetDevice({ broker: { url: 'mqtt://127.0.0.1:1' }, fleet: 'F', device: 'devA', every: { steps: 1 }, enc: 'f16', keys }, t, (l) => log.push(l));
  const x1000 = scaled(init, 1000);
  const x1000delta = new Map([...init].map(([n, v]) => [n, v.map((x) => x * 999)]));
  dev.receive(T.delta, forgedGlobal({}, x1000delta, null));
  dev.receive(T.delta, forgedGlobal({}, x1000delta, attacker.privateKey));
  dev.receive(T.global, forgedGlobal({ version: 777, full: true }, x1000, attacker.privateKey)); // the retained one a joining device reads
  // The aggregator's key in a message it did not sign: the message names a key, the device checks against its own.
  const claimed = decodeMessage(forgedGlobal({ version: 778, full: true }, x1000, attacker.privateKey));
  assert.ok(!verifyAuth(claimed.auth, aggKeys.publicKey));
  await dev.between();
  assert.equal(dev.version, 0, log.join('\n'));
  assert.equal(dev.io.refused, 3);
  assert.equal(log.filter((l) => /ignored a global model on .*(unsigned; expected a signature by|not signed by) the aggregator key/.test(l)).length, 3, log.join('\n'));
  // The aggregator's real v1 is merged.
  const { agg, out, publish } = await openAggregator();
  await agg.start(null, publish);
  agg.receive(T.update('devB'), update({ device: 'devB' }, small(2), devKeys.devB.privateKey));
  await agg.closeRound(publish);
  dev.receive(T.delta, deltaOf(out));
  await dev.between();
  assert.equal(dev.version, 1);
  // Restarted (its checkpoint's record), the retained forgery still does nothing.
  const back = new FleetDevice({ broker: { url: 'mqtt://127.0.0.1:1' }, fleet: 'F', device: 'devA', every: { steps: 1 }, enc: 'f16', keys }, t, (l) => log.push(l), dev.record());
  back.receive(T.global, forgedGlobal({ version: 777, full: true }, x1000, attacker.privateKey));
  await back.between();
  assert.equal(back.version, 1);
});

test('a device back from an older checkpoint takes its seq from the signed global model (even one it holds), so its next update is no replay', async () => {
  const t = await openTrainer();
  const { agg, out, publish } = await openAggregator();
  await agg.start(null, publish);
  agg.receive(T.update('devA'), update({ device: 'devA', seq: 7 }, small(80), devKeys.devA.privateKey));
  await agg.closeRound(publish);
  const keys = { key: devKeys.devA.privateKey, aggregator: aggKeys.publicKey };
  const opts = { broker: { url: 'mqtt://127.0.0.1:1' }, fleet: 'F', device: 'devA', every: { steps: 1 }, enc: 'f16' as const, keys };
  const dev = new FleetDevice(opts, t, () => {});
  const rec = { ...dev.record(), version: 1, seq: 2, base: agg.global }; // at v1 already, with seq 2 (an older checkpoint)
  const back = new FleetDevice(opts, t, () => {}, rec);
  assert.equal(back.seq, 2);
  back.receive(T.global, fullOf(out));
  await back.between();
  assert.equal(back.version, 1);
  assert.equal(back.seq, 7);
  // A forged header cannot push it: an unsigned global with latest devA = 2^53 - 1 is refused before.
  back.receive(T.global, forgedGlobal({ version: 1, full: true, latest: { devA: Number.MAX_SAFE_INTEGER } }, init, null));
  assert.equal(back.seq, 7);
});

test('B5, trust on first use: without --fleet-aggregator-key an unsigned forgery is refused and pins nothing; the first signed global pins its key (said loudly), kept across a restart', async () => {
  const t = await openTrainer();
  const pin = path.join(root, 'tofu', 'fleet-aggregator-F.pub');
  const log: string[] = [];
  const opts = { broker: { url: 'mqtt://127.0.0.1:1' }, fleet: 'F', device: 'devA', every: { steps: 1 }, enc: 'f16' as const, keys: { key: devKeys.devA.privateKey, pin } };
  const dev = new FleetDevice(opts, t, (l) => log.push(l));
  dev.receive(T.global, forgedGlobal({ version: 777, full: true }, scaled(init, 1000), null));
  dev.receive(T.global, Buffer.alloc(16 * 1024 * 1024)); // larger than a global model of these artifacts can be
  await dev.between();
  assert.equal(dev.version, 0);
  assert.ok(!existsSync(pin));
  assert.ok(log.some((l) => /ignored a global model on .*: fleet message: 16777216 bytes is over the limit of \d+/.test(l)), log.join('\n'));
  const { agg, out, publish } = await openAggregator();
  await agg.start(null, publish);
  agg.receive(T.update('devB'), update({ device: 'devB' }, small(3), devKeys.devB.privateKey));
  await agg.closeRound(publish);
  dev.receive(T.global, fullOf(out));
  await dev.between();
  assert.equal(dev.version, 1);
  assert.ok(log.some((l) => /TRUST ON FIRST USE: pinned the aggregator key [0-9a-f]{16} from global v1 in .*fleet-aggregator-F\.pub/.test(l)), log.join('\n'));
  assert.match(readFileSync(pin, 'utf8'), /BEGIN PUBLIC KEY/);
  // Restarted: the pinned key holds; another signer's v777 is refused.
  const back = new FleetDevice(opts, t, (l) => log.push(l), dev.record());
  back.receive(T.global, forgedGlobal({ version: 777, full: true }, scaled(init, 1000), attacker.privateKey));
  await back.between();
  assert.equal(back.version, 1);
  assert.ok(log.some((l) => /not signed by the aggregator key/.test(l)));
});

test('B5, aggregator: a forged retained global (v1000000, another key) is ignored, counted and logged; with --state it continues from its own kept model and publishes it again', async () => {
  const state = path.join(root, 'agg-state');
  const first = await openAggregator({ state });
  await first.agg.start(null, first.publish);
  first.agg.receive(T.update('devA'), update({ device: 'devA' }, small(4), devKeys.devA.privateKey));
  await first.agg.closeRound(first.publish);
  assert.equal(first.agg.version, 1);
  const forged = forgedGlobal({ version: 1_000_000, full: true }, scaled(init, 1000), attacker.privateKey);
  const { agg, log, out, publish } = await openAggregator({ state });
  await agg.start(forged, publish);
  assert.equal(agg.version, 1, log.join('\n'));
  assert.equal(agg.refused.unsigned, 1);
  assert.ok(log.some((l) => /ignored the fleet's retained global model on ssocl\/fleet\/F\/global \(v1000000\): signed by [0-9a-f]{16}, not this aggregator's key/.test(l)), log.join('\n'));
  assert.ok(log.some((l) => /continuing from the kept global v1/.test(l)));
  assert.deepEqual(out.map((p) => [p.topic, p.retain]), [[T.global, true]], 'its own v1 retained again');
  assert.equal((decodeMessage(out[0].bytes).header as GlobalHeader).version, 1);
  // Without --state: ignored all the same; the fleet starts at v0 (said), never at the forged version.
  const bare = await openAggregator();
  await bare.agg.start(forged, bare.publish);
  assert.equal(bare.agg.version, 0);
  assert.ok(bare.log.some((l) => /NO usable global model; starting the fleet at v0 \(give --state/.test(l)), bare.log.join('\n'));
});

test('B6: an update claiming 2^53 - 1 frames does not stop the aggregator, in its round or retained and read again after a restart; the totals stay safe integers', async () => {
  const { agg, log, out, publish } = await openAggregator();
  await agg.start(null, publish);
  const huge = update({ device: 'devC', frames: Number.MAX_SAFE_INTEGER }, small(5), devKeys.devC.privateKey);
  agg.receive(T.update('devA'), update({ device: 'devA' }, small(6), devKeys.devA.privateKey));
  agg.receive(T.update('devC'), huge);
  await agg.closeRound(publish);
  assert.equal(agg.version, 1, log.join('\n'));
  assert.ok(Number.isSafeInteger(agg.frames));
  assert.ok(log.some((l) => /devC:9007199254740991->40/.test(l)), log.join('\n')); // weighed as 4 x the lower median (10)
  // A second round with it again on top of the saturated total.
  agg.receive(T.update('devC'), update({ device: 'devC', seq: 2, base: 1, frames: Number.MAX_SAFE_INTEGER }, small(7), devKeys.devC.privateKey));
  await agg.closeRound(publish);
  assert.equal(agg.version, 2);
  assert.equal(agg.frames, Number.MAX_SAFE_INTEGER);
  // Restarted from the retained v2, with the claim retained on devC's topic: read again, no crash, no round from it.
  const again = await openAggregator();
  await again.agg.start(fullOf(out), again.publish);
  again.agg.receive(T.update('devC'), update({ device: 'devC', seq: 2, base: 1, frames: Number.MAX_SAFE_INTEGER }, small(7), devKeys.devC.privateKey));
  await again.agg.closeRound(again.publish);
  assert.equal(again.agg.version, 2);
  again.agg.receive(T.update('devC'), update({ device: 'devC', seq: 3, base: 2, frames: Number.MAX_SAFE_INTEGER }, small(8), devKeys.devC.privateKey));
  await again.agg.closeRound(again.publish);
  assert.equal(again.agg.version, 3, again.log.join('\n'));
});

test('B7: with 1e12 frames and a change 9.9x the global norm, one or two devices cannot steer the model (history bound, kept across a restart); median and Multi-Krum hold too', async () => {
  for (const robust of ['mean', 'median', { krum: 2, keep: 2 }, 'restart'] as const) {
    let { agg, log, out, publish } = await openAggregator({ robust: robust === 'restart' ? 'mean' : robust });
    await agg.start(null, publish);
    const g0 = l2(agg.global);
    // Three ordinary rounds: the history of accepted norms.
    for (let v = 0; v < 3; v++) {
      for (const [i, d] of ['devA', 'devB'].entries()) agg.receive(T.update(d), update({ device: d, seq: v + 1, base: v }, small(10 * v + i), devKeys[d].privateKey));
      await agg.closeRound(publish);
    }
    assert.equal(agg.version, 3);
    if (robust === 'restart') {
      // A new aggregator from the retained v3: the norm history comes with the signed model.
      ({ agg, log, publish } = await openAggregator());
      await agg.start(fullOf(out), publish);
      assert.equal(agg.norms.length, 3);
    }
    const before = new Map([...agg.global].map(([k, v]) => [k, v.slice()]));
    const steer = scaled(agg.global, 9.9); // a change 9.9x the global norm
    assert.ok(l2(steer) < 10 * l2(agg.global) && l2(steer) > 9 * g0);
    for (const [i, d] of ['devA', 'devB'].entries()) agg.receive(T.update(d), update({ device: d, seq: 4, base: 3 }, small(40 + i), devKeys[d].privateKey));
    for (const d of ['devC', 'devD']) agg.receive(T.update(d), update({ device: d, seq: 1, base: 3, frames: 1e12 }, steer, devKeys[d].privateKey));
    await agg.closeRound(publish);
    assert.equal(agg.version, 4, JSON.stringify(robust));
    const moved = l2(new Map([...agg.global].map(([k, v]) => [k, v.map((x, i) => x - before.get(k)![i])])));
    assert.ok(moved < 0.01 * l2(before), `${JSON.stringify(robust)}: the global moved by ${moved} (norm ${l2(before)})`);
    assert.deepEqual(agg.rounds.at(-1)!.included.map((i) => i.device), ['devA', 'devB']);
    assert.equal(log.filter((l) => /rejected update 1 from dev[CD]: delta norm .* exceeds 10 x the median accepted norm of the last 3 round/.test(l)).length, 2, log.join('\n'));
  }
});

test('a captured update replayed unchanged, re-sent with edited fields, from another fleet, or from a device without an allowed key: refused, logged, counted; replays also after a restart', async () => {
  const { agg, log, out, publish } = await openAggregator();
  await agg.start(null, publish);
  const captured = update({ device: 'devA' }, small(50), devKeys.devA.privateKey);
  agg.receive(T.update('devA'), captured);
  await agg.closeRound(publish);
  assert.equal(agg.version, 1);
  // Edited: fleet, base, seq, frames changed, the captured signature kept.
  const m = decodeMessage(captured);
  const edited = update({ device: 'devA', seq: 9, base: 1, frames: 1e12 }, m.tensors, null);
  const resigned = resign(edited, m.auth.signature!, m.auth.key!);
  agg.receive(T.update('devA'), resigned);
  // Replayed as it was, now that the fleet is on v1 and holds devA's seq 1 (the stale base alone would drop it quietly: send it on the current base).
  agg.receive(T.update('devA'), update({ device: 'devA', seq: 1, base: 1 }, small(51), devKeys.devA.privateKey));
  // Another fleet's devA (validly signed) republished here; a device not in the allow-list; the attacker's key on devB's name.
  agg.receive(T.update('devA'), encodeMessage({ kind: 'update', fleet: 'G', device: 'devA', seq: 5, base: 1, frames: 10, step: 1, artifact, sentAt: '' }, small(52), 'f32', signerOf(devKeys.devA.privateKey)));
  agg.receive(T.update('stranger'), update({ device: 'stranger', base: 1 }, small(53), attacker.privateKey));
  agg.receive(T.update('devB'), update({ device: 'devB', base: 1 }, small(54), attacker.privateKey));
  agg.receive(T.update('devB'), update({ device: 'devB', base: 1 }, small(55), null));
  const lines = log.filter((l) => /rejected the update/.test(l));
  assert.equal(lines.length, 6, log.join('\n'));
  assert.match(lines[0], /update\/devA: signature does not verify with devA's key [0-9a-f]{16} \(forged, or fields edited\) \[\d+ refused since start\]/);
  assert.match(lines[1], /seq 1 is not above devA's last \(1\): a replay/);
  assert.match(lines[2], /for fleet G/);
  assert.match(lines[3], /device stranger has no key in the allow-list/);
  assert.match(lines[4], /signature does not verify with devB's key/);
  assert.match(lines[5], /update\/devB: not signed/);
  assert.deepEqual({ ...agg.refused }, { total: 6, unsigned: 4, replay: 1, other: 1, held: 0 });
  // The round still closes on a good update, and lists what it refused.
  agg.receive(T.update('devB'), update({ device: 'devB', seq: 2, base: 1 }, small(56), devKeys.devB.privateKey));
  await agg.closeRound(publish);
  assert.equal(agg.version, 2);
  assert.equal(agg.rounds.at(-1)!.rejected.length, 6);
  // Restarted from its retained v2 (no memory but the signed model): devB's seq 2 replayed on v2 is still refused.
  const again = await openAggregator();
  await again.agg.start(fullOf(out), again.publish);
  again.agg.receive(T.update('devB'), update({ device: 'devB', seq: 2, base: 2 }, small(57), devKeys.devB.privateKey));
  assert.ok(again.log.some((l) => /seq 2 is not above devB's last \(2\): a replay/.test(l)), again.log.join('\n'));
  assert.equal(again.agg.refused.replay, 1);
});

/** The message with another signature and key put in its metadata (the bytes a capture-and-edit attack sends). */
function resign(bytes: Buffer, signature: string, key: string): Buffer {
  const m = decodeMessage(bytes);
  return encodeMessageWithMeta(m.header, m.tensors, { signature, key });
}
function encodeMessageWithMeta(header: UpdateHeader | GlobalHeader, tensors: Map<string, Float32Array>, extra: Record<string, string>): Buffer {
  // Signed by a throwaway key, then its key and signature swapped for the captured ones.
  const throwaway = signerOf(pair().privateKey);
  const b = encodeMessage(header, tensors, 'f32', throwaway);
  const n = Number(b.readBigUInt64LE(0));
  const head = JSON.parse(b.subarray(8, 8 + n).toString('utf8'));
  head.__metadata__ = { ...head.__metadata__, ...extra };
  let json = JSON.stringify(head);
  json += ' '.repeat((8 - ((json.length + 8) % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return Buffer.concat([len, Buffer.from(json), b.subarray(8 + n)]);
}

test('payloads held per round are bounded (count and bytes): beyond, refused and logged; a message larger than an update can be is refused before decoding', async () => {
  const { agg, log, publish } = await openAggregator({ maxHeld: 2 });
  await agg.start(null, publish);
  for (const d of ['devA', 'devB', 'devC']) agg.receive(T.update(d), update({ device: d }, small(60), devKeys[d].privateKey));
  assert.ok(log.some((l) => /refused update 1 from devC: the round holds 2 update\(s\), .* \(bounds: 2 updates/.test(l)), log.join('\n'));
  // A newer update from a device already held replaces its old one (not refused).
  agg.receive(T.update('devA'), update({ device: 'devA', seq: 2 }, small(61), devKeys.devA.privateKey));
  assert.equal(agg.refused.held, 1);
  await agg.closeRound(publish);
  assert.deepEqual(agg.rounds[0].included.map((i) => `${i.device}:${i.seq}`), ['devA:2', 'devB:1']);
  const bytes = update({ device: 'devA' }, small(62), devKeys.devA.privateKey).length;
  const byBytes = await openAggregator({ maxHeldBytes: bytes * 1.5 });
  await byBytes.agg.start(null, byBytes.publish);
  for (const d of ['devA', 'devB']) byBytes.agg.receive(T.update(d), update({ device: d }, small(63), devKeys[d].privateKey));
  assert.ok(byBytes.log.some((l) => /refused update 1 from devB: the round holds 1 update/.test(l)), byBytes.log.join('\n'));
  const big = await openAggregator();
  await big.agg.start(null, big.publish);
  big.agg.receive(T.update('devA'), Buffer.alloc(8 * 1024 * 1024));
  assert.ok(big.log.some((l) => /rejected the update on .*devA: fleet message: 8388608 bytes is over the limit of \d+/.test(l)), big.log.join('\n'));
});
