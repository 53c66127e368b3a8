// bench/byom-bn: how an imported model trains with its BN layers kept vs folded into the convolutions.
// Exports a torchvision model both ways (test/helpers/torchvision_ref.py), imports each with the edge
// preset's step (MCC + TCR, SGD momentum 0.9) at --crops x --batch, and runs --steps Trainer steps on one
// fixed batch per learning rate, printing the loss by step (NaN: the step guard refused the update).
//
//   node --import tsx bench/byom-bn.ts [--model resnet18] [--size 32] [--lrs kept:0.05,folded:0.05,folded:0.01,folded:0.002] [--steps 12]

import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileFromOnnx } from '../tools/import/artifacts.ts';
import { writeArtifacts } from '../tools/artifacts/write.ts';
import { Trainer } from '../agent/trainer/trainer.ts';
import { benchArgs } from './args.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const values = benchArgs(import.meta.url, {
  model: { type: 'string', default: 'resnet18', describe: 'torchvision model' },
  size: { type: 'string', default: '32', describe: 'input size in pixels' },
  crops: { type: 'string', default: '2', describe: 'crops per image' },
  batch: { type: 'string', default: '8', describe: 'images per step' },
  lrs: { type: 'string', default: 'kept:0.05,folded:0.05,folded:0.01,folded:0.002', describe: 'runs: export:learning rate, comma-separated' },
  steps: { type: 'string', default: '12', describe: 'steps per run' },
  threads: { type: 'string', default: '2', describe: 'ORT intra-op threads' },
});

const dir = mkdtempSync(path.join(tmpdir(), 'byom-bn-'));
try {
  for (const run of String(values.lrs).split(',')) {
    const [mode, lr] = run.split(':');
    const model = path.join(dir, `${mode}.onnx`);
    const ex = spawnSync('/usr/bin/python3', [path.join(REPO, 'test/helpers/torchvision_ref.py'), 'export', String(values.model), String(values.size), model, mode], { encoding: 'utf8' });
    if (ex.status !== 0) throw new Error(`export ${mode}: ${ex.stderr}`);
    const art = path.join(dir, `${mode}-${lr}`);
    const { built } = compileFromOnnx(readFileSync(model), { train: 'all', name: `${values.model}-${mode}`, set: [`batch=${values.batch}`, `crops=${values.crops}`, 'gradCos=false'] });
    writeArtifacts(built, art);
    const tr = await Trainer.open(art, { threads: Number(values.threads), noEmbed: true });
    const [n, c, s] = tr.manifest.trainStep.crops.shape as number[];
    // A fixed smooth pattern (the batch RESULTS.md's table was measured on).
    const crops = new Float32Array(n * c * s * s).map((_, i) => (Math.sin(i * 0.37) + 1) / 2);
    const losses: string[] = [];
    for (let k = 0; k < Number(values.steps); k++) {
      const r = await tr.step(crops, Number(lr));
      losses.push(r.applied ? r.loss.toFixed(3) : 'NaN');
    }
    await tr.close();
    process.stdout.write(`| ${values.model} BN ${mode} | ${lr} | ${losses.join(' ')} |\n`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
