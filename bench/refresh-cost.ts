// bench/refresh-cost: what ours' buffer refresh (issue #31: every entry through embed.onnx in one batch
// before each removal round) adds to an arrival, against the paper's rule on the stored features, at
// the edge preset. Two learners in one process, same init and same CIFAR-10 arrivals, take arrivals in
// turn (so load on shared cores falls on both alike); after --warmup arrivals (the buffer full and
// shrinking) each arrival's process CPU time and wall time are summed, and the buffer's part apart.
// CPU time is the figure to read on shared cores: it counts the work, not the waiting.
// A policy may be given as POLICY@N: diverse-strata-rolling with each entry embedded every N arrivals;
// POLICY+novel trains it under the `novel` replay rule (the arrival embedded before its steps) in place of mixed.
// Prints a table and writes JSON.
//   node --import tsx bench/refresh-cost.ts [--arrivals 15] [--warmup 17] [--policies diverse,diverse-strata-refresh,diverse-strata-rolling@4] [--threads 1] [--json bench/out/refresh-cost.json]

import { mkdirSync } from 'node:fs';
import { cpus } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readCifar10 } from '../core/codecs/cifar.ts';
import { Rng } from '../core/rng.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { Learner, defaultLearnerConfig } from '../agent/trainer/learner.ts';
import { BUFFER_POLICIES, type BufferPolicy } from '../agent/buffer/buffer.ts';
import { writeFileAtomic } from '../core/atomic.ts';
import { benchArgs } from './args.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const values = benchArgs(import.meta.url, {
  arrivals: { type: 'string', default: '15', describe: 'arrivals measured per policy' },
  warmup: { type: 'string', default: '17', describe: 'arrivals before measuring (the edge buffer of 256 fills after 16 arrivals of 16 images)' },
  policies: { type: 'string', default: 'diverse,diverse-strata-refresh,diverse-strata-rolling', describe: 'buffer policies, comma-separated, the first the reference; POLICY@N sets the refresh interval of diverse-strata-rolling (default 4); POLICY+novel replays by the novel rule instead of mixed' },
  artifacts: { type: 'string', default: path.join(HERE, '../training-artifacts/edge'), describe: 'training artifacts' },
  threads: { type: 'string', default: '1', describe: 'ORT threads per session' },
  data: { type: 'string', default: path.resolve(HERE, '../../shared/data/cifar-10-batches-bin'), describe: 'CIFAR-10 binary folder' },
  json: { type: 'string', default: path.join(HERE, 'out/refresh-cost.json'), describe: 'results' },
});
const count = (flag: string, v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${flag} ${v}: a positive whole number`);
  return n;
};
const arrivals = count('arrivals', values.arrivals);
const warmup = count('warmup', values.warmup);
const threads = count('threads', values.threads);
const policies = values.policies.split(',').map((spec) => {
  const novel = spec.endsWith('+novel');
  const [name, every] = spec.slice(0, novel ? -'+novel'.length : undefined).split('@') as [BufferPolicy, string | undefined];
  if (!BUFFER_POLICIES.includes(name)) throw new Error(`--policies ${spec}: unknown (accepted: ${BUFFER_POLICIES.join(', ')}, diverse-strata-rolling@N)`);
  if (every !== undefined && name !== 'diverse-strata-rolling') throw new Error(`--policies ${spec}: @N is diverse-strata-rolling's refresh interval`);
  return { spec, novel, policy: name, ...(every !== undefined ? { refreshEvery: count(`policies ${spec}: N`, every) } : {}) };
});

const train = readCifar10(values.data, 'train');
const runs = await Promise.all(
  policies.map(async ({ spec, novel, ...buffer }) => {
    const tr = await Trainer.open(values.artifacts, { threads });
    const cfg = defaultLearnerConfig(tr, { seed: 0, ...(novel ? { replay: 'novel' as const } : {}) });
    return { policy: spec, tr, learner: new Learner(tr, { ...cfg, buffer: { ...cfg.buffer, ...buffer } }), cpu: 0, wall: 0, buffer: 0, train: 0, embedded: 0 };
  }),
);
const newPer = runs[0].tr.manifest.preset.agent.newPerArrival;
const per = train.images.length / train.count;
const rng = new Rng(1);
for (let a = 0; a < warmup + arrivals; a++) {
  const items = Array.from({ length: newPer }, (_, j) => {
    const i = rng.int(train.count);
    return { key: `${a}.${j}`, image: train.images.subarray(i * per, (i + 1) * per) };
  });
  for (const r of runs) {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const before = r.learner.buffer.lastRefresh;
    const rep = await r.learner.arrive(items);
    if (a < warmup) continue;
    const after = r.learner.buffer.lastRefresh;
    if (after && after !== before) r.embedded += after.entries.length;
    const c = process.cpuUsage(c0);
    r.cpu += (c.user + c.system) / 1000;
    r.wall += performance.now() - t0;
    r.buffer += rep.ms.buffer;
    r.train += rep.ms.train;
  }
}
const ref = runs[0];
console.log(`edge preset (${newPer} new per arrival, buffer ${ref.learner.buffer.cfg.capacity}), ${arrivals} arrivals measured after ${warmup}, ORT threads ${threads}; per arrival:`);
console.log('| policy | CPU ms | vs first | wall ms | vs first | buffer wall ms | train wall ms | entries embedded |');
console.log('|---|---|---|---|---|---|---|---|');
for (const r of runs) {
  const f = (v: number) => (v / arrivals).toFixed(1);
  console.log(`| ${r.policy} | ${f(r.cpu)} | ${((100 * (r.cpu - ref.cpu)) / ref.cpu).toFixed(1)} % | ${f(r.wall)} | ${((100 * (r.wall - ref.wall)) / ref.wall).toFixed(1)} % | ${f(r.buffer)} | ${f(r.train)} | ${f(r.embedded)} |`);
}
mkdirSync(path.dirname(values.json), { recursive: true });
const machine = { cores: cpus().length, cpu: cpus()[0]?.model, date: new Date().toISOString() };
const perArrival = (v: number) => v / arrivals;
writeFileAtomic(values.json, JSON.stringify({ machine, newPerArrival: newPer, arrivals, warmup, threads, policies: runs.map((r) => ({ policy: r.policy, cpuMs: perArrival(r.cpu), wallMs: perArrival(r.wall), bufferMs: perArrival(r.buffer), trainMs: perArrival(r.train), embeddedPerArrival: perArrival(r.embedded) })) }, null, 1) + '\n');
console.log(`wrote ${values.json}`);
for (const r of runs) await r.tr.close();
