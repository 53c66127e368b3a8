// Heads as layer lists: EMP-SSL projector, SimSiam projector and predictor, SimCLR projector.

import { Value } from '../graph/graph.ts';
import { Model, batchNorm, linear } from './layers.ts';

export interface LayerSpec {
  out: number;
  bias?: boolean; // default true
  bn?: boolean | 'no-affine';
  act?: boolean;
}

export function mlp(m: Model, name: string, x: Value, layers: LayerSpec[]): Value {
  let h = x;
  layers.forEach((l, i) => {
    h = linear(m, `${name}.${i}.linear`, h, l.out, l.bias ?? true);
    if (l.bn) h = batchNorm(m, `${name}.${i}.bn`, h, l.bn !== 'no-affine');
    if (l.act) h = m.act(h);
  });
  return h;
}

export const HEADS = {
  /** EMP-SSL / the paper: 512 -> 4096 -> 4096 -> 1024 by default. */
  empssl: (hidden = 4096, out = 1024): LayerSpec[] => [
    { out: hidden, bn: true, act: true },
    { out: hidden, bn: true, act: true },
    { out },
  ],
  simsiamProjector: (hidden = 2048, out = 2048): LayerSpec[] => [
    { out: hidden, bias: false, bn: true, act: true },
    { out: hidden, bias: false, bn: true, act: true },
    { out, bias: false, bn: 'no-affine' },
  ],
  simsiamPredictor: (hidden = 512, out = 2048): LayerSpec[] => [
    { out: hidden, bias: false, bn: true, act: true },
    { out },
  ],
  simclr: (hidden = 512, out = 128): LayerSpec[] => [{ out: hidden, act: true }, { out }],
};
