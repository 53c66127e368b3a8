// `ssocl demo` (npm start): train the default edge artifacts for a short while on the built-in image
// set and print the loss as it falls. Builds the artifacts first if they are missing.

import { existsSync } from 'node:fs';
import { Trainer } from '../trainer/trainer.ts';
import type { EP } from '../trainer/backend.ts';
import { multiCrop } from '../frames/augment.ts';
import { syntheticImages } from '../frames/synthetic.ts';
import { Rng } from '../../tools/nn/rng.ts';
import { getPreset } from '../../tools/artifacts/presets.ts';
import { compileArtifacts, writeArtifacts } from '../../tools/artifacts/write.ts';

export interface DemoArgs {
  ep: EP;
  epFallback?: EP;
  threads?: number;
  steps: number;
  artifacts: string;
}

export async function demoCommand(a: DemoArgs): Promise<void> {
  if (!existsSync(a.artifacts)) {
    process.stdout.write(`compiling the edge artifacts into ${a.artifacts} ...\n`);
    writeArtifacts(compileArtifacts(getPreset('edge')), a.artifacts);
  }
  const tr = await Trainer.open(a.artifacts, { ep: a.ep, epFallback: a.epFallback, threads: a.threads });
  const p = tr.manifest.preset;
  const b = tr.manifest.trainStep.crops.images;
  const n = tr.manifest.trainStep.crops.views;
  const size = p.image.size;
  const images = syntheticImages(b, size, 1);
  const rng = new Rng(2);
  process.stdout.write(`training ${tr.manifest.name} on ${tr.ep}: ${b} built-in images x ${n} crops per step, lr ${p.lr}\n`);
  const first: number[] = [];
  const last: number[] = [];
  for (let s = 1; s <= a.steps; s++) {
    const r = await tr.step(multiCrop(images, b, size, n, rng), p.lr);
    const terms = Object.entries(r.terms).map(([k, v]) => `${k} ${v.toFixed(4)}`).join(', ');
    process.stdout.write(`step ${String(s).padStart(3)}  loss ${r.loss.toFixed(4)}  (${terms})  ${r.ms.toFixed(0)} ms${r.applied ? '' : '  SKIPPED: non-finite'}\n`);
    if (s <= 5) first.push(r.loss);
    if (s > a.steps - 5) last.push(r.loss);
  }
  const mean = (xs: number[]) => xs.reduce((x, y) => x + y, 0) / xs.length;
  process.stdout.write(`mean loss of the first 5 steps ${mean(first).toFixed(4)}, of the last 5 ${mean(last).toFixed(4)}\n`);
  await tr.close();
}
