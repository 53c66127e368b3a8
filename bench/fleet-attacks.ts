// bench/fleet-attacks: the hostile messages of issue #30's attack pass, sent to the edge artifacts'
// aggregator and a device without a broker (their receive(), start() and closeRound()), once with the
// fleet's guards off (no keys, no weight cap, no history norm bound: the rules before issue #30, as far as
// options can restore them) and once with them on (keys, defaults). Prints a table of what each attack
// got, and the cost of signing and checking an update.
//
//   node --import tsx bench/fleet-attacks.ts [--json FILE]

import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { benchArgs } from './args.ts';
import { Aggregator, type AggregatorOptions } from '../agent/fleet/aggregator.ts';
import { FleetDevice } from '../agent/fleet/device.ts';
import { decodeMessage, encodeMessage, sharedSpec, type GlobalHeader, type UpdateHeader } from '../agent/fleet/codec.ts';
import { AllowList, signerOf, verifyAuth } from '../agent/fleet/keys.ts';
import { l2 } from '../agent/fleet/screen.ts';
import { topics } from '../agent/fleet/transport.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { REPO_ROOT } from '../agent/paths.ts';

const args = benchArgs(import.meta.url, { json: { type: 'string', default: 'bench/results/fleet-attacks.json', describe: 'where the rows and the signing costs are written as JSON' } });
const art = path.join(REPO_ROOT, 'training-artifacts/edge');
const root = mkdtempSync(path.join(tmpdir(), 'ssocl-fleet-attacks-'));
const T = topics('F');
const aggKey = generateKeyPairSync('ed25519');
const attacker = generateKeyPairSync('ed25519');
const ids = ['devA', 'devB', 'devC', 'devD'];
const devKeys = Object.fromEntries(ids.map((d) => [d, generateKeyPairSync('ed25519')]));
const allow = path.join(root, 'allow');
mkdirSync(allow);
for (const d of ids) writeFileSync(path.join(allow, `${d}.pub`), devKeys[d].publicKey.export({ type: 'spki', format: 'pem' }));

const trainer = await Trainer.open(art, { threads: 1 });
const spec = sharedSpec(trainer.manifest.state);
const artifact = trainer.manifest.files[trainer.manifest.trainStep.file];
const init = new Map(spec.map((s) => [s.name, trainer.initial().get(s.name)!.slice()]));
const scaled = (m: Map<string, Float32Array>, k: number) => new Map([...m].map(([n, v]) => [n, v.map((x) => x * k)]));
function small(seed: number, scale = 1e-3): Map<string, Float32Array> {
  let s = seed;
  return new Map(spec.map((x) => [x.name, Float32Array.from({ length: x.shape.reduce((a, b) => a * b, 1) }, () => (((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1) * scale)]));
}
const update = (h: Partial<UpdateHeader> & { device: string }, d: Map<string, Float32Array>, signed: boolean) =>
  encodeMessage({ kind: 'update', fleet: 'F', seq: 1, base: 0, frames: 10, step: 1, artifact, sentAt: '', ...h }, d, 'f16', signed && devKeys[h.device] ? signerOf(devKeys[h.device].privateKey) : undefined);

type Mode = 'guards off' | 'guards on';
async function aggregator(mode: Mode, o: Partial<AggregatorOptions> = {}) {
  const log: string[] = [];
  const on = mode === 'guards on';
  const agg = await Aggregator.open({
    broker: { url: 'mqtt://127.0.0.1:1' }, fleet: 'F', artifacts: art, expect: 0, roundTimeoutMs: 1000, minUpdates: 1, robust: 'mean', enc: 'f16', log: (l) => log.push(l),
    ...(on ? { keys: { key: aggKey.privateKey, allow: new AllowList(allow, () => {}) } } : { screen: { historyRatio: 1e300, weightCap: 1e300 }, maxHeld: 1e9, maxHeldBytes: 1e15 }),
    ...o,
  });
  const out: { topic: string; bytes: Buffer }[] = [];
  const publish = async (topic: string, bytes: Buffer) => void out.push({ topic, bytes });
  await agg.start(null, publish);
  return { agg, log, out, publish };
}

const rows: { attack: string; mode: Mode; got: string }[] = [];
for (const mode of ['guards off', 'guards on'] as Mode[]) {
  const on = mode === 'guards on';
  // B5: a forged global change v1000000 (init x1000) and a retained v777, signed by another key.
  {
    const dlog: string[] = [];
    const dev = new FleetDevice({ broker: { url: 'mqtt://127.0.0.1:1' }, fleet: 'F', device: 'devA', every: { steps: 1 }, enc: 'f16', ...(on ? { keys: { key: devKeys.devA.privateKey, aggregator: aggKey.publicKey } } : {}) }, trainer, (l) => dlog.push(l));
    const g = (version: number, full: boolean, t: Map<string, Float32Array>) =>
      encodeMessage({ kind: 'global', fleet: 'F', version, prev: 0, artifact, included: [], rejected: [], frames: 0, madeAt: '', full } as GlobalHeader, t, 'f32', signerOf(attacker.privateKey));
    dev.receive(T.delta, g(1_000_000, false, scaled(init, 999)));
    dev.receive(T.global, g(777, true, scaled(init, 1000)));
    await dev.between();
    rows.push({ attack: 'B5 forged global v1000000 / retained v777', mode, got: `device at v${dev.version}, encoder norm ${l2(dev.base).toFixed(1)} (init ${l2(init).toFixed(1)}); ${dev.io.refused} refused` });
    for (const s of spec) trainer.state.set(s.name, init.get(s.name)!.slice());
  }
  // B6: 2^53 - 1 frames beside an honest update; then again on the saturated total.
  {
    const { agg, publish } = await aggregator(mode);
    agg.receive(T.update('devA'), update({ device: 'devA' }, small(1), on));
    agg.receive(T.update('devC'), update({ device: 'devC', frames: Number.MAX_SAFE_INTEGER }, small(2), on));
    await agg.closeRound(publish);
    agg.receive(T.update('devC'), update({ device: 'devC', seq: 2, base: 1, frames: Number.MAX_SAFE_INTEGER }, small(3), on));
    await agg.closeRound(publish);
    rows.push({ attack: 'B6 frames 2^53 - 1 (twice)', mode, got: `aggregator alive at v${agg.version}, frames total ${agg.frames} (safe: ${Number.isSafeInteger(agg.frames)})` });
  }
  // B7: three honest rounds, then two devices with 1e12 frames and a change 9.9x the global norm.
  for (const robust of ['mean', 'median'] as const) {
    const { agg, publish } = await aggregator(mode, { robust });
    for (let v = 0; v < 3; v++) {
      for (const [i, d] of ['devA', 'devB'].entries()) agg.receive(T.update(d), update({ device: d, seq: v + 1, base: v }, small(10 * v + i), on));
      await agg.closeRound(publish);
    }
    const before = l2(agg.global);
    for (const [i, d] of ['devA', 'devB'].entries()) agg.receive(T.update(d), update({ device: d, seq: 4, base: 3 }, small(40 + i), on));
    for (const d of ['devC', 'devD']) agg.receive(T.update(d), update({ device: d, seq: 1, base: 3, frames: 1e12 }, scaled(agg.global, 9.9), on));
    await agg.closeRound(publish);
    rows.push({ attack: `B7 steer: 2 of 4 devices, 1e12 frames, 9.9x norm (${robust})`, mode, got: `global L2 ${before.toFixed(2)} -> ${l2(agg.global).toFixed(2)}; took ${agg.rounds.at(-1)!.included.map((i) => i.device).join(' ')}` });
  }
  // A captured update of devA re-sent with fleet, base, seq and frames edited (its signature kept when there is one).
  {
    const { agg, log, publish } = await aggregator(mode);
    const captured = decodeMessage(update({ device: 'devA', fleet: 'F' }, small(5), on));
    const edited = withMeta(encodeMessage({ ...(captured.header as UpdateHeader), seq: 7, frames: 1e12 }, captured.tensors, 'f16'), on ? { key: captured.auth.key!, signature: captured.auth.signature! } : {});
    agg.receive(T.update('devA'), edited);
    await agg.closeRound(publish);
    rows.push({ attack: 'captured update, fields edited', mode, got: agg.version ? `accepted as devA's (v${agg.version}, ${agg.rounds[0].included[0].frames} frames)` : `refused: ${log.find((l) => /rejected/.test(l))?.replace(/^.*devA: /, '').replace(/ \[.*$/, '')}` });
  }
  // A flood: 1500 devices' updates in one round; with the guards on, also on an insecure fleet (no keys: only the held-payload bound, 1000 updates by default).
  for (const keys of on ? [true, false] : [false]) {
    const { agg, log } = await aggregator(mode, on && !keys ? { keys: undefined } : {});
    const one = update({ device: 'devA' }, small(6), false);
    for (let i = 0; i < 1500; i++) agg.receive(T.update(`flood${i}`), update({ device: `flood${i}` }, small(6), false));
    const held = log.filter((l) => /^fleet: update 1 from flood/.test(l)).length;
    rows.push({ attack: `flood: 1500 unknown devices in a round${on && !keys ? ' (insecure fleet)' : ''}`, mode, got: `${held} held (${((held * one.length) / 2 ** 20).toFixed(0)} MiB); ${agg.refused.total} refused` });
  }
}

// The cost of identity per update (edge: the shared tensors as f16).
const d = small(9);
const n = 200;
let t0 = performance.now();
let bytes: Buffer = Buffer.alloc(0);
for (let i = 0; i < n; i++) bytes = update({ device: 'devA', seq: i + 1 }, d, true);
const signMs = (performance.now() - t0) / n;
t0 = performance.now();
for (let i = 0; i < n; i++) update({ device: 'devA', seq: i + 1 }, d, false);
const plainMs = (performance.now() - t0) / n;
t0 = performance.now();
let ok = 0;
for (let i = 0; i < n; i++) ok += Number(verifyAuth(decodeMessage(bytes).auth, devKeys.devA.publicKey));
const checkMs = (performance.now() - t0) / n;

/** The message with its metadata's key and signature replaced (a capture-and-edit attack keeps the captured ones). */
function withMeta(b: Buffer, extra: Record<string, string>): Buffer {
  const n = Number(b.readBigUInt64LE(0));
  const head = JSON.parse(b.subarray(8, 8 + n).toString('utf8'));
  head.__metadata__ = { ...head.__metadata__, ...extra };
  let json = JSON.stringify(head);
  json += ' '.repeat((8 - ((Buffer.byteLength(json) + 8) % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return Buffer.concat([len, Buffer.from(json), b.subarray(8 + n)]);
}

console.log('| attack | guards | what it got |\n|---|---|---|');
for (const r of rows) console.log(`| ${r.attack} | ${r.mode} | ${r.got} |`);
console.log(`\nedge update ${(bytes.length / 1024).toFixed(0)} KiB: encode ${plainMs.toFixed(2)} ms unsigned, ${signMs.toFixed(2)} ms signed; decode + verify ${checkMs.toFixed(2)} ms (${ok}/${n} verified)`);
writeFileSync(args.json, JSON.stringify({ date: new Date().toISOString(), rows, updateKiB: bytes.length / 1024, encodeMs: plainMs, signedEncodeMs: signMs, decodeVerifyMs: checkMs }, null, 1) + '\n');
console.log(`rows in ${args.json}`);
await trainer.close();
rmSync(root, { recursive: true, force: true });
