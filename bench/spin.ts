// bench/spin: ORT's intra-op spin-waiting against the agent's loop, where the train step, the buffer's
// embed and similarity sessions and the host's crops and buffer work follow each other on the same
// cores. Arrivals of the learner (random images) and back-to-back steps alone, per variant of the CPU
// sessions' spinning: `on` (ORT's default: workers keep spinning after run() returns), `stop`
// (session.force_spinning_stop, ssocl's default: spinning within a run only), `off` (allow_spinning 0).
// Variants alternate within each round; prints a table, writes JSON.
//
//   node --import tsx bench/spin.ts [--variants on,stop,off] [--rounds 3] [--threads 2] [--per 16] [--updates 1]

import { writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { cpus } from 'node:os';
import { Trainer } from '../agent/trainer/trainer.ts';
import { Learner, defaultLearnerConfig } from '../agent/trainer/learner.ts';
import { ortSimilarity } from '../agent/buffer/similarity.ts';
import { openChosen } from '../agent/trainer/backend.ts';
import { Rng } from '../core/rng.ts';
import { benchArgs } from './args.ts';

const values = benchArgs(import.meta.url, {
  artifacts: { type: 'string', default: 'training-artifacts/edge', describe: 'artifact directory the learner trains' },
  variants: { type: 'string', default: 'on,stop,off', describe: 'spinning of every CPU session: on (ORT default), stop (ssocl default), off' },
  rounds: { type: 'string', default: '3', describe: 'rounds; the variants alternate within each' },
  threads: { type: 'string', default: '2', describe: 'ORT intra-op threads' },
  per: { type: 'string', default: '16', describe: 'new images per arrival' },
  updates: { type: 'string', default: '1', describe: 'updates per arrival' },
  warm: { type: 'string', default: '30', describe: 'arrivals before timing (the buffer fills)' },
  arrivals: { type: 'string', default: '40', describe: 'timed arrivals' },
  steps: { type: 'string', default: '12', describe: 'timed back-to-back steps (after 3 warm-up steps)' },
  json: { type: 'string', default: 'bench/out/spin.json', describe: 'results' },
});
const SPIN: Record<string, Record<string, unknown>> = {
  on: { extra: { session: { force_spinning_stop: '0' } } },
  stop: { extra: { session: { force_spinning_stop: '1' } } },
  off: { extra: { session: { intra_op: { allow_spinning: '0' } } } },
};
const variants = String(values.variants).split(',');
for (const v of variants) if (!SPIN[v]) throw new Error(`--variants ${v}: unknown (accepted: ${Object.keys(SPIN).join(', ')})`);
const threads = Number(values.threads);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function arrivals(v: string): Promise<{ ms: number; train: number; buffer: number; augment: number }> {
  const trainer = await Trainer.open(String(values.artifacts), { threads, session: SPIN[v] });
  const engine = await ortSimilarity((m) => openChosen(m, { ep: 'cpu', threads, session: SPIN[v] }));
  const learner = new Learner(trainer, defaultLearnerConfig(trainer, { seed: 1, updates: Number(values.updates) }), engine);
  const rng = new Rng(3);
  const size = trainer.manifest.preset.image.size;
  let k = 0;
  const arrive = () => learner.arrive(Array.from({ length: Number(values.per) }, () => ({ key: String(k++), image: Uint8Array.from({ length: 3 * size * size }, () => rng.int(256)) })));
  for (let i = 0; i < Number(values.warm); i++) await arrive();
  const parts = { train: 0, buffer: 0, augment: 0 };
  const n = Number(values.arrivals);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const r = await arrive();
    parts.train += r.ms.train;
    parts.buffer += r.ms.buffer;
    parts.augment += r.ms.augment;
  }
  const ms = (performance.now() - t0) / n;
  await trainer.close();
  return { ms, train: parts.train / n, buffer: parts.buffer / n, augment: parts.augment / n };
}

async function steps(v: string): Promise<number> {
  const trainer = await Trainer.open(String(values.artifacts), { threads, noEmbed: true, session: SPIN[v] });
  const rng = new Rng(5);
  const crops = Float32Array.from({ length: trainer.cropsShape.reduce((a, b) => a * b, 1) }, () => rng.uniform());
  for (let i = 0; i < 3; i++) await trainer.step(crops, 0.01);
  const n = Number(values.steps);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await trainer.step(crops, 0.01);
  await trainer.close();
  return (performance.now() - t0) / n;
}

const rows: { variant: string; round: number; arrivalMs: number; trainMs: number; bufferMs: number; augmentMs: number; stepMs: number }[] = [];
for (let r = 0; r < Number(values.rounds); r++) {
  for (const v of variants) {
    const a = await arrivals(v);
    const s = await steps(v);
    rows.push({ variant: v, round: r, arrivalMs: a.ms, trainMs: a.train, bufferMs: a.buffer, augmentMs: a.augment, stepMs: s });
    console.log(`round ${r} ${v}: ${a.ms.toFixed(1)} ms/arrival (train ${a.train.toFixed(1)}, buffer ${a.buffer.toFixed(1)}, crops ${a.augment.toFixed(1)}); steps alone ${s.toFixed(1)} ms`);
  }
}
console.log('\n| spinning | arrival ms, best / median | train | buffer | crops | steps alone ms, best / median |');
console.log('|---|---|---|---|---|---|');
for (const v of variants) {
  const rs = rows.filter((x) => x.variant === v);
  const col = (f: (x: (typeof rows)[number]) => number) => median(rs.map(f)).toFixed(1);
  console.log(`| ${v} | ${Math.min(...rs.map((x) => x.arrivalMs)).toFixed(1)} / ${col((x) => x.arrivalMs)} | ${col((x) => x.trainMs)} | ${col((x) => x.bufferMs)} | ${col((x) => x.augmentMs)} | ${Math.min(...rs.map((x) => x.stepMs)).toFixed(1)} / ${col((x) => x.stepMs)} |`);
}
mkdirSync(path.dirname(String(values.json)), { recursive: true });
writeFileSync(String(values.json), JSON.stringify({ date: new Date().toISOString(), cpus: cpus().length, cpu: cpus()[0]?.model, threads, artifacts: values.artifacts, per: Number(values.per), updates: Number(values.updates), rows }, null, 1));
console.log(`wrote ${values.json}`);
