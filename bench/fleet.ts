// bench/fleet: the fleet benchmark (issue #22): D devices, each streaming its own C classes of CIFAR-10's train split
// (class-incremental within its share), learn with a fleet (a real Mosquitto broker and ssocl's
// aggregator, in rounds every --every steps) and, paired, alone: the same frames, order, seeds and steps.
// Each device's final encoder is measured by weighted kNN@20 on all ten classes (a fixed memory of train
// images, a fixed set of test queries), beside the random-init floor and the fleet's global model; and
// bytes per device per round are counted on the broker (updates up, the global model's change down; the
// full model a device reads once when it joins is reported apart). Prints a table, writes JSON lines.
//
//   node --import tsx bench/fleet.ts --devices 5 --classes 2 --per-class 450 --trials 0

import { generateKeyPairSync } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { readCifar10 } from '../core/codecs/cifar.ts';
import { Rng, sampleIndices } from '../core/rng.ts';
import { Aggregator } from '../agent/fleet/aggregator.ts';
import { AllowList } from '../agent/fleet/keys.ts';
import { topics } from '../agent/fleet/transport.ts';
import { runAgent, type AgentOptions } from '../agent/run.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { latestCheckpoint } from '../agent/trainer/checkpoint.ts';
import { openChosen } from '../agent/trainer/backend.ts';
import { ortSimilarity } from '../agent/buffer/similarity.ts';
import { computeFeatures } from '../agent/eval/features.ts';
import { knnWeightedBlocks } from '../agent/eval/knn.ts';
import { Broker } from '../test/helpers/mosquitto.ts';
import { REPO_ROOT } from '../agent/paths.ts';
import { benchArgs } from './args.ts';

const values = benchArgs(import.meta.url, {
  devices: { type: 'string', default: '5', describe: 'devices in the fleet' },
  classes: { type: 'string', default: '2', describe: 'classes each device sees (disjoint shares of a seeded class permutation)' },
  'per-class': { type: 'string', default: '450', describe: 'train images per class in each device\'s stream' },
  every: { type: 'string', default: '16', describe: 'steps between a device\'s updates' },
  trials: { type: 'string', default: '0', describe: 'seeds (class shares, stream order, init draws), comma-separated' },
  robust: { type: 'string', default: 'mean', describe: 'the aggregator\'s rule: mean, median, trimmed:F' },
  'server-lr': { type: 'string', default: '1', describe: 'the aggregator\'s server learning rate (1: FedAvg)' },
  'skip-alone': { type: 'boolean', default: false, describe: 'run the fleet only (the alone rows of the same trial and settings are read from --json)' },
  encoding: { type: 'string', default: 'f16', describe: 'f16 or f32 updates and changes' },
  memory: { type: 'string', default: '5000', describe: 'train images as kNN memory' },
  queries: { type: 'string', default: '2000', describe: 'test images as kNN queries' },
  threads: { type: 'string', default: '1', describe: 'ORT threads per device' },
  artifacts: { type: 'string', default: path.join(REPO_ROOT, 'training-artifacts/edge'), describe: 'training artifacts' },
  'data-dir': { type: 'string', default: path.resolve(REPO_ROOT, '../shared/data'), describe: 'folder holding cifar-10-batches-bin/' },
  json: { type: 'string', default: path.join(REPO_ROOT, 'bench/out/fleet.jsonl'), describe: 'results, one JSON line per trial' },
});

const int = (k: keyof typeof values, min = 1) => {
  const v = Number(values[k]);
  if (!Number.isInteger(v) || v < min) {
    process.stderr.write(`bench/fleet: --${String(k)} ${values[k]}: expected an integer >= ${min}\n`);
    process.exit(2);
  }
  return v;
};
const D = int('devices');
const C = int('classes');
const perClass = int('per-class');
const every = int('every');
const threads = int('threads');
if (D * C > 10) {
  process.stderr.write(`bench/fleet: ${D} devices x ${C} classes is more than CIFAR-10's 10\n`);
  process.exit(2);
}
const trials = String(values.trials).split(',').map(Number);
const cifarDir = path.join(values['data-dir'], 'cifar-10-batches-bin');
const train = readCifar10(cifarDir, 'train');
const test = readCifar10(cifarDir, 'test');
const engine = await ortSimilarity((m) => openChosen(m, { ep: 'cpu', threads }));

const memIdx = sampleIndices(train.count, int('memory'), 12345);
const qIdx = sampleIndices(test.count, int('queries'), 54321);

async function knn(tr: Trainer): Promise<number> {
  const m = { dim: tr.manifest.preset.encoder.widths.at(-1)!, run: async (x: Float32Array, c: number) => (await tr.embed(x, c)).features, close: async () => {} };
  const fm = await computeFeatures(m, train.images, memIdx, 32);
  const fq = await computeFeatures(m, test.images, qIdx, 32);
  const r = await knnWeightedBlocks(engine, { memory: fm, memoryLabels: memIdx.map((i) => train.labels[i]), queries: fq, queryLabels: qIdx.map((i) => test.labels[i]), d: m.dim, classes: 10 }, [20]);
  return r[0].accuracy;
}

/** kNN of a state (a checkpoint's, the global model's) through a trainer on the artifacts. */
async function knnOf(state: Map<string, Float32Array> | null): Promise<number> {
  const tr = await Trainer.open(values.artifacts, { threads, noEmbed: false });
  try {
    if (state) for (const [k, v] of state) if (tr.state.has(k)) tr.state.set(k, v);
    return await knn(tr);
  } finally {
    await tr.close();
  }
}

/** Device d's stream in trial t: its classes one after another, each's images in a seeded order. */
function streams(t: number): { classes: number[]; order: number[] }[] {
  const rng = new Rng(1000 + t);
  const perm = [...Array(10).keys()];
  for (let i = 9; i > 0; i--) {
    const j = rng.int(i + 1);
    [perm[i], perm[j]] = [perm[j], perm[i]];
  }
  const byClass: number[][] = Array.from({ length: 10 }, () => []);
  for (let i = 0; i < train.count; i++) byClass[train.labels[i]].push(i);
  return Array.from({ length: D }, (_, d) => {
    const classes = perm.slice(d * C, (d + 1) * C);
    const order = classes.flatMap((c) => sampleIndices(byClass[c].length, perClass, 7 * t + c).map((k) => byClass[c][k]));
    return { classes, order };
  });
}

function agentOptions(dir: string, order: number[], seed: number, log: string, fleet?: AgentOptions['fleet']): AgentOptions {
  return {
    dataset: { label: 'fleet share', images: train.images, order, size: 32 },
    recursive: false, order: 'name', afterIngest: 'keep', processed: path.join(dir, 'p'), quarantine: path.join(dir, 'q'), artifacts: values.artifacts,
    stateDir: path.join(dir, 'state'), models: path.join(dir, 'models'), ep: 'cpu', threads, fit: 'cover', maxPixels: 1e7, overflow: 'block',
    backlog: 100, stableMs: 100, checkpointEvery: { steps: 1e9 }, exportEvery: { steps: 1e9 }, fresh: true, maxArrivals: 0, maxSeconds: 0,
    exitWhenIdle: 0, maxSkips: 10, diskRetryMs: 1000, learner: { seed }, log: (l) => appendFileSync(log, `${l}\n`), health: { gate: false },
    ...(fleet ? { fleet } : {}),
  };
}

async function finalState(dir: string): Promise<Map<string, Float32Array>> {
  const c = latestCheckpoint(path.join(dir, 'state', 'checkpoints'));
  if (!c) throw new Error(`${dir}: no checkpoint`);
  return c.data.state;
}

/** The alone figures of an earlier row with the same trial and streams (--skip-alone). */
function previousAlone(t: number): { alone: number[]; aloneS: number; steps: number[] } | null {
  if (!existsSync(values.json)) return null;
  for (const line of readFileSync(values.json, 'utf8').split('\n').reverse()) {
    if (!line.trim()) continue;
    const r = JSON.parse(line) as Row;
    if (r.trial === t && r.devices === D && r.perClass === perClass && r.classes.every((c) => c.length === C) && (r.threads ?? 1) === threads) return { alone: r.alone, aloneS: r.seconds.alone, steps: r.aloneSteps ?? r.steps };
  }
  return null;
}

interface Row {
  trial: number;
  devices: number;
  classes: number[][];
  perClass: number;
  every: number;
  steps: number[];
  aloneSteps?: number[];
  threads?: number;
  serverLr?: number;
  floor: number;
  alone: number[];
  fleet: number[];
  global: number;
  rounds: number;
  /** Per device per round, bytes: its update up, the global model's change down; the full model read at joining. */
  upPerRound: number;
  downPerRound: number;
  fullOnJoin: number;
  seconds: { alone: number; fleet: number };
}

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-bench-fleet-'));
mkdirSync(path.dirname(values.json), { recursive: true });
try {
  const floor = await knnOf(null);
  for (const t of trials) {
    const s = streams(t);
    process.stderr.write(`trial ${t}: shares ${s.map((x) => x.classes.join('+')).join(', ')}; ${perClass} images per class, update every ${every} steps\n`);
    // Alone: the same streams, side by side in this process as in the fleet run (or, with --skip-alone,
    // an earlier row's figures for the same trial and streams: the alone runs do not depend on the fleet).
    let t0 = performance.now();
    let aloneKnn: number[];
    let aloneS: number;
    let aloneSteps: number[];
    const prior = values['skip-alone'] ? previousAlone(t) : null;
    if (prior) {
      ({ alone: aloneKnn, aloneS, steps: aloneSteps } = prior);
    } else {
      const alone = await Promise.all(s.map((x, d) => runAgent(agentOptions(path.join(root, `t${t}-alone-${d}`), x.order, 100 * t + d, path.join(root, `t${t}-alone-${d}.log`)))));
      aloneS = (performance.now() - t0) / 1000;
      aloneSteps = alone.map((a) => a.steps);
      aloneKnn = [];
      for (let d = 0; d < D; d++) aloneKnn.push(await knnOf(await finalState(path.join(root, `t${t}-alone-${d}`))));
    }
    process.stderr.write(`  alone: ${aloneKnn.map((k) => k.toFixed(2)).join(' ')} (${aloneS.toFixed(0)} s${prior ? ', from an earlier row' : ''})\n`);
    // The fleet: broker, aggregator (a round closes when every device sent its update, or 30 s after the first).
    const broker = await Broker.start(path.join(root, `t${t}-broker`));
    const fleetName = `bench${t}`;
    // Keys as a real fleet has them (issue #30): the aggregator signs, each device signs, an allow-list.
    const aggKey = generateKeyPairSync('ed25519');
    const allow = path.join(root, `t${t}-allow`);
    mkdirSync(allow);
    const devKeys = Array.from({ length: D }, (_, d) => {
      const k = generateKeyPairSync('ed25519');
      writeFileSync(path.join(allow, `cam${d}.pub`), k.publicKey.export({ type: 'spki', format: 'pem' }));
      return { key: k.privateKey, aggregator: aggKey.publicKey };
    });
    const seen = { up: 0, delta: 0, full: 0, updates: 0, deltas: 0 };
    const obs = await mqtt.connectAsync(broker.url, { clientId: 'bench-observer' });
    const tp = topics(fleetName);
    obs.on('message', (topic, p) => {
      if (topic === tp.delta) (seen.delta += p.length), seen.deltas++;
      else if (topic === tp.global) seen.full = p.length;
      else if (topic.startsWith(`${tp.root}/update/`)) (seen.up += p.length), seen.updates++;
    });
    await obs.subscribeAsync(`${tp.root}/#`, { qos: 1 });
    const aggLog = path.join(root, `t${t}-aggregator.log`);
    const agg = await Aggregator.open({
      broker: { url: broker.url }, fleet: fleetName, artifacts: values.artifacts, expect: D, roundTimeoutMs: 30_000, minUpdates: 1,
      robust: (await import('../agent/fleet/combine.ts')).parseRobust(values.robust), serverLr: Number(values['server-lr']), enc: values.encoding as 'f16' | 'f32', log: (l) => appendFileSync(aggLog, `${l}\n`),
      keys: { key: aggKey.privateKey, allow: new AllowList(allow, () => {}) },
    });
    const running = agg.run();
    await agg.ready;
    t0 = performance.now();
    const fleet = await Promise.all(
      s.map((x, d) =>
        runAgent(agentOptions(path.join(root, `t${t}-fleet-${d}`), x.order, 100 * t + d, path.join(root, `t${t}-fleet-${d}.log`), {
          broker: { url: broker.url }, fleet: fleetName, device: `cam${d}`, every: { steps: every }, enc: values.encoding as 'f16' | 'f32', keys: devKeys[d],
        })),
      ),
    );
    const fleetS = (performance.now() - t0) / 1000;
    // The devices' last updates (sent as they stopped) make one more round when they share a version.
    await new Promise((r) => setTimeout(r, 1500));
    agg.stop();
    await running;
    await obs.endAsync();
    await broker.down();
    const fleetKnn: number[] = [];
    for (let d = 0; d < D; d++) fleetKnn.push(await knnOf(await finalState(path.join(root, `t${t}-fleet-${d}`))));
    const globalKnn = await knnOf(agg.global);
    const row: Row = {
      trial: t, devices: D, classes: s.map((x) => x.classes), perClass, every, steps: fleet.map((f) => f.steps), aloneSteps, threads, serverLr: Number(values['server-lr']), floor, alone: aloneKnn, fleet: fleetKnn, global: globalKnn,
      rounds: agg.rounds.length, upPerRound: seen.updates ? seen.up / seen.updates : 0, downPerRound: seen.deltas ? seen.delta / seen.deltas : 0, fullOnJoin: seen.full,
      seconds: { alone: aloneS, fleet: fleetS },
    };
    appendFileSync(values.json, `${JSON.stringify(row)}\n`);
    process.stdout.write(`\ntrial ${t}: kNN@20 on all 10 classes (floor ${floor.toFixed(2)}), ${row.rounds} rounds, global model ${globalKnn.toFixed(2)}\n`);
    process.stdout.write(`| device | classes | steps | alone | fleet | fleet - alone |\n|---|---|---|---|---|---|\n`);
    for (let d = 0; d < D; d++) process.stdout.write(`| cam${d} | ${s[d].classes.join('+')} | ${fleet[d].steps} (${aloneSteps[d]}) | ${aloneKnn[d].toFixed(2)} | ${fleetKnn[d].toFixed(2)} | ${(fleetKnn[d] - aloneKnn[d]).toFixed(2)} |\n`);
    process.stdout.write(`bytes per device per round: ${(row.upPerRound / 1024).toFixed(0)} KiB up + ${(row.downPerRound / 1024).toFixed(0)} KiB down = ${((row.upPerRound + row.downPerRound) / 1e6).toFixed(3)} MB; full model on joining ${(row.fullOnJoin / 1024).toFixed(0)} KiB; wall ${aloneS.toFixed(0)} s alone, ${fleetS.toFixed(0)} s fleet\n`);
  }
} finally {
  rmSync(root, { recursive: true, force: true });
}
process.exit(0);
