// bench/byom-peer: imported torchvision models (`ssocl artifacts --from-onnx`) against PyTorch on the
// same training step, same threads, same crops and starting weights: ms per step and peak RSS of each
// side, each side in its own child process (ours: this script again as a child, the Trainer on
// onnxruntime-node's CPU EP, intraOpNumThreads = the thread count, so the compile's memory does not count;
// torch: bench/reference/torchvision_step.py, torch.set_num_threads, its ru_maxrss). Per model, size and
// thread count the sides alternate --rounds times and the best round of each is reported (a shared
// machine), with every round's figure in the JSON.
//
// The step is test/import-torch's at the edge preset's crops: --views x --batch crops (default the edge
// preset's 4 x 32 = 128) at --sizes px, the source's BN kept and in training mode, a linear projector to
// 32 (its starting weights written here and read by both sides), the MCC loss alone (tau 0.2), plain SGD
// at lr 0.01. The models are exported by test/helpers/torchvision_ref.py (random init from seed 0, BN
// kept, dynamic batch, opset 13). The first step's loss of both sides is compared (same weights, same
// crops: float32 on both, so within ~1e-5).
//
// The PyTorch child runs with bench/peer's GLIBC_TUNABLES and --torch-ld-path prepended to its
// LD_LIBRARY_PATH (e.g. an OpenBLAS folder; shared/notes/cpu-peer.md).
//
//   node --import tsx bench/byom-peer.ts [--models resnet18,mobilenet_v2] [--sizes 32,96] [--threads 2]
//        [--views 4] [--batch 32] [--steps 6] [--warmup 2] [--rounds 1] [--torch-ld-path DIR]
//        [--set key=value ...] [--json bench/out/byom-peer.json]

import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileFromOnnx } from '../tools/import/artifacts.ts';
import { writeArtifacts } from '../tools/artifacts/write.ts';
import { PRESETS } from '../tools/artifacts/presets.ts';
import { Trainer, readManifest } from '../agent/trainer/trainer.ts';
import { writeFileAtomic } from '../core/atomic.ts';
import { Rng } from '../core/rng.ts';
import { benchArgs } from './args.ts';
import { GLIBC_TUNABLES, torchEnv } from './reference/torch-env.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..');
const PY = '/usr/bin/python3';
const LR = 0.01;
const PROJ_OUT = 32;

const values = benchArgs(import.meta.url, {
  models: { type: 'string', default: 'resnet18,mobilenet_v2', describe: 'torchvision models, comma-separated' },
  sizes: { type: 'string', default: '32,96', describe: 'input sizes in pixels, comma-separated' },
  threads: { type: 'string', default: '2', describe: 'thread counts, comma-separated (ORT intra-op / torch.set_num_threads)' },
  views: { type: 'string', default: String(PRESETS.edge.crops), describe: "crops per image (the edge preset's)" },
  batch: { type: 'string', default: String(PRESETS.edge.batch), describe: "images per step (the edge preset's)" },
  steps: { type: 'string', default: '6', describe: 'timed steps per side and round (median reported)' },
  warmup: { type: 'string', default: '2', describe: 'warm-up steps before them' },
  rounds: { type: 'string', default: '1', describe: 'alternate ours and torch this many times and report the best round of each' },
  set: { type: 'string', multiple: true, default: [], describe: 'further preset overrides for ours, key=value (e.g. depthwiseWeightGrad="mul-reduce")' },
  'torch-ld-path': { type: 'string', describe: "prepended to the torch child's LD_LIBRARY_PATH (default: $SSOCL_TORCH_LD_PATH)" },
  json: { type: 'string', default: path.join(HERE, 'out/byom-peer.json'), describe: 'results' },
  // The per-process child protocol: one side's steps on an artifact directory.
  child: { type: 'string', hidden: true },
  crops: { type: 'string', hidden: true },
  projector: { type: 'string', hidden: true },
});

let work: string | null = null; // the temp folder of exports and artifacts, removed on every way out
function fail(msg: string): never {
  if (work) rmSync(work, { recursive: true, force: true });
  process.stderr.write(`bench/byom-peer: ${msg}\n`);
  process.exit(2);
}
const list = (flag: string, v: string, min: number) => {
  const xs = v.split(',').map((s) => Number(s.trim()));
  if (!xs.length || xs.some((x) => !Number.isInteger(x) || x < min)) fail(`--${flag} ${v}: expected whole numbers >= ${min}, comma-separated`);
  return xs;
};
const sizes = list('sizes', values.sizes, 8);
const threadsList = list('threads', values.threads, 1);
const [views] = list('views', values.views, 1);
const [batch] = list('batch', values.batch, 2);
const [steps] = list('steps', values.steps, 1);
const [warmup] = list('warmup', values.warmup, 0);
const [rounds] = list('rounds', values.rounds, 1);
const models = values.models.split(',').map((s) => s.trim());
for (const m of models) if (!/^[a-z0-9_]+$/.test(m)) fail(`--models ${m}: expected torchvision model names (e.g. resnet18, mobilenet_v2)`);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const f32 = (file: string) => new Float32Array(new Uint8Array(readFileSync(file)).buffer);

interface SideRun {
  ms: number[];
  medianMs: number;
  losses: number[];
  peakRssMB: number;
  info?: Record<string, unknown>;
}

// ------------------------------------------------------------------ ours, in a child process

/** --child DIR: our steps on an artifact directory, one JSON line on stdout. */
async function child(dir: string): Promise<void> {
  const tr = await Trainer.open(dir, { threads: threadsList[0], noEmbed: true });
  try {
    const pw = f32(values.projector!);
    const w = tr.state.get('params.projector.0.linear.weight')!;
    tr.state.set('params.projector.0.linear.weight', pw.slice(0, w.length));
    tr.state.set('params.projector.0.linear.bias', pw.slice(w.length));
    const crops = f32(values.crops!);
    const ms: number[] = [];
    const losses: number[] = [];
    for (let k = 0; k < warmup + steps; k++) {
      const st = await tr.step(crops, LR);
      if (!st.applied) throw new Error(`step ${k + 1} was not applied (loss ${st.loss})`);
      losses.push(st.loss);
      if (k >= warmup) ms.push(st.ms);
    }
    const out: SideRun = { ms, medianMs: median(ms), losses, peakRssMB: process.resourceUsage().maxRSS / 1024 };
    process.stdout.write(JSON.stringify(out) + '\n');
  } finally {
    await tr.close();
  }
}

/** Runs a child to the end; its last stdout line is its JSON result. */
function runChild(cmd: string, args: string[], env: NodeJS.ProcessEnv, label: string): Promise<SideRun> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    c.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    c.on('error', reject);
    c.on('close', (code) => {
      const last = out.trim().split('\n').at(-1) ?? '';
      if (code !== 0 || !last.startsWith('{')) return reject(new Error(`${label} exited with ${code}: ${err.trim().split('\n').slice(-3).join(' | ')}`));
      resolve(JSON.parse(last) as SideRun);
    });
  });
}

function ours(dir: string, threads: number, crops: string, projector: string): Promise<SideRun> {
  const args = ['--import', 'tsx', fileURLToPath(import.meta.url), '--child', dir, '--threads', String(threads), '--steps', String(steps), '--warmup', String(warmup), '--crops', crops, '--projector', projector];
  return runChild(process.execPath, args, process.env, 'ours');
}

function torch(name: string, size: number, threads: number, crops: string, projector: string): Promise<SideRun> {
  const env = torchEnv(threads, values['torch-ld-path'] ?? process.env.SSOCL_TORCH_LD_PATH);
  const args = [path.join(HERE, 'reference/torchvision_step.py'), name, String(size), String(views), String(batch), String(threads), String(steps), String(warmup), crops, projector];
  return runChild(PY, args, env, 'torch');
}

// ------------------------------------------------------------------ main

if (values.child) {
  await child(values.child);
  process.exit(0);
}

interface Row {
  model: string;
  size: number;
  crops: number;
  threads: number;
  ours: SideRun;
  torch: SideRun;
  roundsMs: { ours: number[]; torch: number[] };
  lossStep1: { ours: number; torch: number; rel: number };
  settings: string[];
}

const lscpu = spawnSync('lscpu', [], { encoding: 'utf8' }).stdout ?? '';
const machine = {
  cpu: lscpu.match(/Model name:\s*(.*)/)?.[1] ?? cpus()[0]?.model,
  cores: cpus().length,
  l2: lscpu.match(/L2 cache:\s*(.*)/)?.[1],
  l3: lscpu.match(/L3 cache:\s*(.*)/)?.[1],
  node: process.version,
  loadAtStart: loadavg().map((x) => Number(x.toFixed(2))),
  date: new Date().toISOString(),
};
const rows: Row[] = [];
const bestOf = (rs: SideRun[]) => rs.reduce((a, b) => (b.medianMs < a.medianMs ? b : a));
const save = (partial: boolean) => {
  mkdirSync(path.dirname(values.json), { recursive: true });
  writeFileAtomic(values.json, JSON.stringify({ partial, machine, views, batch, steps, warmup, rounds, lr: LR, glibcTunables: GLIBC_TUNABLES, torchLdPath: values['torch-ld-path'] ?? process.env.SSOCL_TORCH_LD_PATH ?? null, rows }, null, 1) + '\n');
};

work = mkdtempSync(path.join(tmpdir(), 'byom-peer-'));
try {
  for (const name of models) {
    for (const size of sizes) {
      const dir = path.join(work, `${name}-${size}`);
      mkdirSync(dir);
      const model = path.join(dir, 'model.onnx');
      const ex = spawnSync(PY, [path.join(REPO, 'test/helpers/torchvision_ref.py'), 'export', name, String(size), model, 'kept'], { encoding: 'utf8' });
      if (ex.status !== 0) fail(`exporting ${name} at ${size} px: ${(ex.stderr || '').trim().split('\n').pop()}`);
      const settings = [`batch=${batch}`, `crops=${views}`, 'losses=[{"name":"mcc","weight":1}]', 'tau=0.2', 'optimizer={"type":"sgd","momentum":0,"weightDecay":0,"lars":false}', `projector=[{"out":${PROJ_OUT}}]`, 'gradCos=false', ...values.set];
      const art = path.join(dir, 'art');
      try {
        writeArtifacts(compileFromOnnx(readFileSync(model), { train: 'all', name, set: settings }).built, art);
      } catch (e) {
        fail(`importing ${name} at ${size} px${values.set.length ? ` with --set ${values.set.join(' ')}` : ''}: ${(e as Error).message.split('\n')[0]}`);
      }
      // The starting projector and the crops, written once and read by both sides.
      const dim = readManifest(art).state.find((s) => s.name === 'params.projector.0.linear.weight')!.shape[1];
      const rng = new Rng(7);
      const bound = dim ** -0.5;
      const projector = path.join(dir, 'projector.f32');
      writeFileSync(projector, Buffer.from(Float32Array.from({ length: PROJ_OUT * dim + PROJ_OUT }, () => (rng.uniform() * 2 - 1) * bound).buffer));
      const crops = path.join(dir, 'crops.f32');
      writeFileSync(crops, Buffer.from(Float32Array.from({ length: views * batch * 3 * size * size }, () => rng.uniform()).buffer));
      for (const threads of threadsList) {
        const o: SideRun[] = [];
        const t: SideRun[] = [];
        for (let r = 1; r <= rounds; r++) {
          process.stderr.write(`${name} ${size} px, ${threads} thread(s), round ${r}/${rounds}: ours ...`);
          o.push(await ours(art, threads, crops, projector));
          process.stderr.write(` ${o.at(-1)!.medianMs.toFixed(0)} ms; torch ...`);
          t.push(await torch(name, size, threads, crops, projector));
          process.stderr.write(` ${t.at(-1)!.medianMs.toFixed(0)} ms\n`);
        }
        const [lo, lt] = [o[0].losses[0], t[0].losses[0]];
        rows.push({ model: name, size, crops: views * batch, threads, ours: bestOf(o), torch: bestOf(t), roundsMs: { ours: o.map((x) => x.medianMs), torch: t.map((x) => x.medianMs) }, lossStep1: { ours: lo, torch: lt, rel: Math.abs(lo - lt) / Math.abs(lt) }, settings });
        save(true);
      }
    }
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}

const f = (x: number, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const head = ['model', 'px', 'crops', 'threads', 'ours ms/step', 'PyTorch ms/step', 'ours/PyTorch speed', 'peak RSS MB ours / PyTorch', 'loss step 1 rel. diff', ...(rounds > 1 ? ['each round: ours / PyTorch ms'] : [])];
const lines = [
  `${machine.cpu}, ${machine.cores} cores; load at start ${machine.loadAtStart.join(' ')}; ${views} views x ${batch} images; median of ${steps} steps after ${warmup} warm-up${rounds > 1 ? `, best of ${rounds} alternating rounds per side` : ''}`,
  '',
  `| ${head.join(' | ')} |`,
  `|${head.map(() => '---').join('|')}|`,
  ...rows.map((r) =>
    `| ${[r.model, r.size, r.crops, r.threads, f(r.ours.medianMs), f(r.torch.medianMs), f(r.torch.medianMs / r.ours.medianMs, 2), `${f(r.ours.peakRssMB)} / ${f(r.torch.peakRssMB)}`, r.lossStep1.rel.toExponential(1), ...(rounds > 1 ? [`${r.roundsMs.ours.map((x) => f(x)).join(', ')} / ${r.roundsMs.torch.map((x) => f(x)).join(', ')}`] : [])].join(' | ')} |`,
  ),
  '',
  'ours/PyTorch speed = PyTorch ms / ours ms (above 1: ours faster); ours ms = the ORT session run (feeds, graph, outputs to the host), PyTorch ms = forward, loss, backward, SGD step; peak RSS = each side\'s child process (ours: the Trainer and its session, not the compile).',
];
process.stdout.write(lines.join('\n') + '\n');
save(false);
process.stdout.write(`wrote ${path.relative(process.cwd(), values.json) || values.json}\n`);
