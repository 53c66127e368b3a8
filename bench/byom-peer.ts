// bench/byom-peer: imported torchvision models (`ssocl artifacts --from-onnx`) against PyTorch on the
// same step, same threads: median ms per training step of ours (the Trainer on onnxruntime-node's CPU
// EP, intraOpNumThreads = --threads) and of torch (bench/reference/torchvision_step.py,
// torch.set_num_threads), back to back per model. The step is test/import-torch's: 2 crops x 8 images
// at --size px, a linear projector to 32, the MCC loss alone, plain SGD (BN kept, in training mode).
//
//   node --import tsx bench/byom-peer.ts [--models resnet18,mobilenet_v2] [--size 32] [--threads 2] [--steps 8] [--set key=value ...]

import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileFromOnnx } from '../tools/import/artifacts.ts';
import { writeArtifacts } from '../tools/artifacts/write.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { Rng } from '../core/rng.ts';
import { benchArgs } from './args.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..');
const PY = '/usr/bin/python3';
// As bench/peer: at glibc's defaults the PyTorch child page-faults and its step time swings 2-4x.
const GLIBC_TUNABLES = 'glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824';

const values = benchArgs(import.meta.url, {
  models: { type: 'string', default: 'resnet18,mobilenet_v2', describe: 'torchvision models, comma-separated' },
  size: { type: 'string', default: '32', describe: 'input size in pixels' },
  threads: { type: 'string', default: '2', describe: 'ORT intra-op threads / torch.set_num_threads' },
  steps: { type: 'string', default: '8', describe: 'timed steps (median reported)' },
  warmup: { type: 'string', default: '2', describe: 'warm-up steps before them' },
  set: { type: 'string', multiple: true, default: [], describe: 'further preset overrides for ours, key=value (e.g. convWeightGrad="batch-as-channels")' },
});
const size = Number(values.size);
const threads = Number(values.threads);
const steps = Number(values.steps);
const warmup = Number(values.warmup);
const VIEWS = 2;
const BATCH = 8;
const SETS = [`batch=${BATCH}`, `crops=${VIEWS}`, 'losses=[{"name":"mcc","weight":1}]', 'tau=0.2', 'optimizer={"type":"sgd","momentum":0,"weightDecay":0,"lars":false}', 'projector=[{"out":32}]', 'gradCos=false'];

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function ours(model: string, dir: string): Promise<number> {
  const { built } = compileFromOnnx(readFileSync(model), { train: 'all', name: path.basename(model, '.onnx'), set: [...SETS, ...(values.set as string[])] });
  writeArtifacts(built, dir);
  const tr = await Trainer.open(dir, { threads, noEmbed: true });
  try {
    const [n, c, s] = tr.manifest.trainStep.crops.shape as number[];
    const rng = new Rng(7);
    const crops = new Float32Array(n * c * s * s).map(() => rng.uniform());
    const ms: number[] = [];
    for (let k = 0; k < warmup + steps; k++) {
      const t0 = performance.now();
      await tr.step(crops, 0.01);
      if (k >= warmup) ms.push(performance.now() - t0);
    }
    return median(ms);
  } finally {
    await tr.close();
  }
}

const rows: string[] = [];
for (const name of String(values.models).split(',')) {
  const dir = mkdtempSync(path.join(tmpdir(), `byom-peer-${name}-`));
  try {
    const model = path.join(dir, 'model.onnx');
    const ex = spawnSync(PY, [path.join(REPO, 'test/helpers/torchvision_ref.py'), 'export', name, String(size), model, 'kept'], { encoding: 'utf8' });
    if (ex.status !== 0) throw new Error(`export ${name}: ${ex.stderr}`);
    const oursMs = await ours(model, path.join(dir, 'art'));
    const t = spawnSync(PY, [path.join(HERE, 'reference/torchvision_step.py'), name, String(size), String(VIEWS), String(BATCH), String(threads), String(steps), String(warmup)], {
      encoding: 'utf8',
      env: { ...process.env, GLIBC_TUNABLES },
    });
    if (t.status !== 0) throw new Error(`torch ${name}: ${t.stderr}`);
    const torchMs = median((JSON.parse(t.stdout.trim().split('\n').at(-1)!) as { ms: number[] }).ms);
    rows.push(`| ${name} | ${size} | ${VIEWS * BATCH} | ${threads} | ${oursMs.toFixed(0)} | ${torchMs.toFixed(0)} | ${(torchMs / oursMs).toFixed(2)} |`);
    process.stdout.write(`${rows.at(-1)}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
process.stdout.write(['', '| model | px | crops | threads | ours ms/step | PyTorch ms/step | ours/PyTorch speed |', '|---|---|---|---|---|---|---|', ...rows, ''].join('\n'));
