// Encoders: ResNets with a CIFAR stem (3x3, stride 1, no max-pool) or an ImageNet stem (7x7/2 +
// max-pool), basic blocks, configurable widths and depths. Output: pooled backbone features [B, C].

import { Value } from '../graph/graph.ts';
import { Model, batchNorm, conv2d } from './layers.ts';

export interface ResnetConfig {
  arch: 'resnet';
  stem: 'cifar' | 'imagenet';
  widths: number[];
  blocks: number[];
}

/**
 * An imported ONNX model (tools/import): the manifest records what was imported; the graph comes from
 * the source file. widths: [feature width], as the runtime reads the feature size from the last width.
 */
export interface ImportedConfig {
  arch: 'onnx';
  widths: number[];
  /** sha256 of the source model file. */
  sha256: string;
  input: string;
  feature: string;
  train: string;
  /** Tensors (parameters and BN statistics) that learn, of the source's weights. */
  learns: number;
  frozen: number;
}

export type EncoderConfig = ResnetConfig | ImportedConfig;

export const ENCODERS: Record<string, ResnetConfig> = {

  'resnet18-cifar': { arch: 'resnet', stem: 'cifar', widths: [64, 128, 256, 512], blocks: [2, 2, 2, 2] },
  'resnet18-imagenet': { arch: 'resnet', stem: 'imagenet', widths: [64, 128, 256, 512], blocks: [2, 2, 2, 2] },
  // Small enough to train at a useful speed on 2 CPU cores.
  'resnet-edge': { arch: 'resnet', stem: 'cifar', widths: [16, 32, 64], blocks: [1, 1, 1] },
};

export function featureDim(c: EncoderConfig): number {
  return c.widths[c.widths.length - 1];
}

function basicBlock(m: Model, name: string, x: Value, out: number, stride: number): Value {
  const g = m.g;
  const cin = x.shape[1] as number;
  let h = m.act(batchNorm(m, `${name}.bn1`, conv2d(m, `${name}.conv1`, x, out, 3, stride, 1)));
  h = batchNorm(m, `${name}.bn2`, conv2d(m, `${name}.conv2`, h, out, 3, 1, 1));
  const short = stride !== 1 || cin !== out ? batchNorm(m, `${name}.downsample.1`, conv2d(m, `${name}.downsample.0`, x, out, 1, stride, 0)) : x;
  return m.act(g.add(h, short));
}

export function resnet(m: Model, x: Value, c: ResnetConfig, prefix = 'encoder'): Value {
  const g = m.g;
  let h: Value;
  if (c.stem === 'cifar') {
    h = m.act(batchNorm(m, `${prefix}.bn1`, conv2d(m, `${prefix}.conv1`, x, c.widths[0], 3, 1, 1)));
  } else {
    h = m.act(batchNorm(m, `${prefix}.bn1`, conv2d(m, `${prefix}.conv1`, x, c.widths[0], 7, 2, 3)));
    h = g.scope(`${prefix}.maxpool`, () => g.maxPool(h, [3, 3], [2, 2], [1, 1, 1, 1])[0]);
  }
  c.widths.forEach((w, stage) => {
    for (let b = 0; b < c.blocks[stage]; b++) {
      const stride = stage > 0 && b === 0 ? 2 : 1;
      h = basicBlock(m, `${prefix}.layer${stage + 1}.${b}`, h, w, stride);
    }
  });
  return g.flatten(g.globalAvgPool(h), 1);
}
