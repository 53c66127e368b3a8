// bench/train-step: speed of the compiled training step per preset and execution provider.
// Each configuration runs in its own process (so peak RSS is its own). Prints a table, writes JSON.
//
//   node --import tsx bench/train-step.ts [--configs edge,edge-bac,resnet18-small] [--eps cpu,wasm]
//        [--steps 10] [--threads N] [--json bench/out/train-step.json]

import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { getPreset, type Preset } from '../tools/artifacts/presets.ts';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { Graph } from '../tools/graph/graph.ts';
import { encodeModel } from '../tools/onnx/encode.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { openSession, type EP, type FeedTensor } from '../agent/trainer/backend.ts';
import { Rng } from '../core/rng.ts';
import { benchArgs } from './args.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));

const CONFIGS: Record<string, () => Preset> = {
  edge: () => getPreset('edge'),
  'edge-im2col': () => getPreset('edge', ['convWeightGrad="im2col"', 'convInputGrad="conv-transpose"']),
  'edge-bac': () => getPreset('edge', ['convWeightGrad="batch-as-channels"', 'convInputGrad="conv-transpose"']),
  'edge-unfold': () => getPreset('edge', ['convWeightGrad="unfold-conv"']),
  'edge-unfold-256': () => getPreset('edge', ['convWeightGrad="unfold-conv"', 'batch=64']),
  'edge-256': () => getPreset('edge', ['batch=64']),
  'resnet18-small': () => getPreset('paper-cifar', ['crops=4', 'batch=16', 'convWeightGrad="im2col-offsets"', 'convInputGrad="conv"']),
  'resnet18-small-bac': () => getPreset('paper-cifar', ['crops=4', 'batch=16']),
};

interface Row {
  config: string;
  ep: EP;
  crops: number;
  params: number;
  stepMs: number;
  stepMsP90: number;
  cropsPerS: number;
  forwardMs: number;
  stateMs: number;
  stateShare: number;
  stateMB: number;
  peakRssMB: number;
  loss0: number;
  lossN: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const p90 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * 0.9))];

async function child(config: string, ep: EP, steps: number, threads: number): Promise<Row> {
  const preset = CONFIGS[config]();
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-bench-'));
  try {
    writeArtifacts(compileArtifacts(preset), path.join(dir, 'a'));
    const tr = await Trainer.open(path.join(dir, 'a'), { ep, threads });
    const shape = tr.cropsShape;
    const n = shape.reduce((a, b) => a * b, 1);
    const rng = new Rng(1);
    const crops = Float32Array.from({ length: n }, () => rng.uniform());
    const times: number[] = [];
    const losses: number[] = [];
    for (let s = 0; s < steps + 2; s++) {
      const r = await tr.step(crops, preset.lr);
      if (s >= 2) times.push(r.ms); // two warm-up steps
      losses.push(r.loss);
    }
    // Forward only: the embed graph (eval-mode BN) over as many images as the step has crops.
    const fwd: number[] = [];
    for (let s = 0; s < Math.max(3, Math.floor(steps / 2)); s++) {
      const t0 = performance.now();
      await tr.embed(crops, shape[0]);
      fwd.push(performance.now() - t0);
    }
    // State traffic: a graph that only passes every state tensor through, fed and fetched as a step does.
    const g = new Graph();
    const feeds: Record<string, FeedTensor> = {};
    let bytes = 0;
    for (const st of tr.manifest.state) {
      g.output(g.input(st.name, st.shape), st.next);
      feeds[st.name] = { type: 'float32', data: tr.state.get(st.name)!, dims: st.shape };
      bytes += tr.state.get(st.name)!.byteLength;
    }
    const pass = await openSession(encodeModel(g, 'state'), ep, { threads });
    const st: number[] = [];
    for (let s = 0; s < 7; s++) {
      const t0 = performance.now();
      await pass.run(feeds);
      st.push(performance.now() - t0);
    }
    const params = tr.manifest.state.filter((x) => x.role === 'param').reduce((a, x) => a + x.shape.reduce((p, q) => p * q, 1), 0);
    const stepMs = median(times);
    await tr.close();
    return {
      config,
      ep,
      crops: shape[0],
      params,
      stepMs,
      stepMsP90: p90(times),
      cropsPerS: (shape[0] / stepMs) * 1000,
      forwardMs: median(fwd),
      stateMs: median(st.slice(2)),
      stateShare: median(st.slice(2)) / stepMs,
      stateMB: bytes / 2 ** 20,
      peakRssMB: process.resourceUsage().maxRSS / 1024,
      loss0: losses[0],
      lossN: losses[losses.length - 1],
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const values = benchArgs(import.meta.url, {
  configs: { type: 'string', default: 'edge,edge-bac,resnet18-small', describe: 'presets to time' },
  eps: { type: 'string', default: 'cpu', describe: 'execution providers (cpu, cuda, webgpu, wasm)' },
  steps: { type: 'string', default: '10', describe: 'timed steps per configuration' },
  threads: { type: 'string', default: String(cpus().length), describe: 'ORT intra-op threads' },
  json: { type: 'string', default: path.join(HERE, 'out/train-step.json'), describe: 'results' },
  child: { type: 'string', hidden: true },
});

if (values.child) {
  const [config, ep] = values.child.split(':');
  const row = await child(config, ep as EP, Number(values.steps), Number(values.threads));
  process.stdout.write('ROW ' + JSON.stringify(row) + '\n');
} else {
  const rows: Row[] = [];
  const failed: string[] = [];
  for (const config of values.configs.split(',')) {
    if (!CONFIGS[config]) throw new Error(`--configs: unknown '${config}' (accepted: ${Object.keys(CONFIGS).join(', ')})`);
    for (const ep of values.eps.split(',')) {
      process.stderr.write(`running ${config} on ${ep} ...\n`);
      const r = spawnSync(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--child', `${config}:${ep}`, '--steps', values.steps, '--threads', values.threads], {
        encoding: 'utf8',
        maxBuffer: 1 << 26,
      });
      const line = r.stdout.split('\n').find((l) => l.startsWith('ROW '));
      if (!line) {
        const why = (r.stderr || '').split('\n').find((l) => /error|Error/.test(l)) ?? `exit ${r.status}`;
        failed.push(`${config} on ${ep}: ${why.trim().slice(0, 200)}`);
        continue;
      }
      rows.push(JSON.parse(line.slice(4)));
      // Rows so far, so an interrupted run keeps what it measured.
      mkdirSync(path.dirname(values.json), { recursive: true });
      writeFileSync(values.json, JSON.stringify({ partial: true, rows, failed }, null, 1) + '\n');
    }
  }
  const header = ['config', 'ep', 'crops/step', 'params', 'ms/step (p50)', 'p90', 'crops/s', 'fwd ms', 'state MB', 'state ms', 'state %', 'peak RSS MB', 'loss first->last'];
  const table = [header, ...rows.map((r) => [r.config, r.ep, r.crops, r.params.toLocaleString('en'), r.stepMs.toFixed(0), r.stepMsP90.toFixed(0), r.cropsPerS.toFixed(0), r.forwardMs.toFixed(0), r.stateMB.toFixed(1), r.stateMs.toFixed(1), (100 * r.stateShare).toFixed(1), r.peakRssMB.toFixed(0), `${r.loss0.toFixed(2)} -> ${r.lossN.toFixed(2)}`].map(String))];
  const out = ['| ' + table[0].join(' | ') + ' |', '|' + table[0].map(() => '---').join('|') + '|', ...table.slice(1).map((r) => '| ' + r.join(' | ') + ' |')].join('\n');
  process.stdout.write(out + '\n');
  for (const f of failed) process.stdout.write(`not run: ${f}\n`);
  const machine = { cores: cpus().length, cpu: cpus()[0]?.model, node: process.version, threads: Number(values.threads), date: new Date().toISOString() };
  mkdirSync(path.dirname(values.json), { recursive: true });
  writeFileSync(values.json, JSON.stringify({ machine, rows, failed }, null, 1) + '\n');
  process.stdout.write(`wrote ${values.json}\n`);
}
