// `ssocl artifacts --from-onnx`: a user's ONNX model compiled into the same artifact directory the
// built-in presets give (manifest, train step, embed, init state), plus the source model itself, so
// an export can write the learnt weights back into it with its interface unchanged.

import { sha256 } from '../../core/atomic.ts';
import { PRESETS, applyOverrides, type Preset } from '../artifacts/presets.ts';
import { compileArtifacts, type BuiltArtifacts } from '../artifacts/write.ts';
import type { Backbone } from '../artifacts/build.ts';
import type { LayerSpec } from '../nn/heads.ts';
import { ImportError, lowerSource, prepareSource, stateName, type ImportOptions, type SourceModel } from './source.ts';
import type { Value } from '../graph/graph.ts';

export const SOURCE_FILE = 'source.onnx';
/** torchvision's normalisation: what an ImageNet-trained model expects of its input. */
export const IMAGENET_MEAN = [0.485, 0.456, 0.406];
export const IMAGENET_STD = [0.229, 0.224, 0.225];

export interface FromOnnxOptions extends ImportOptions {
  /** Projector widths, e.g. [512, 128]: hidden layers with BN and ReLU, then a linear output. */
  projector?: number[];
  name: string;
  /** Preset overrides (key=value) on the imported preset (losses, batch, crops, optimizer, image.mean ...). */
  set: string[];
}

function projectorOf(widths: number[]): LayerSpec[] {
  if (!widths.length || widths.some((w) => !Number.isInteger(w) || w < 1)) throw new ImportError(`--projector ${widths.join(',')}: expected positive whole widths, e.g. 512,128`);
  return widths.map((out, i) => (i < widths.length - 1 ? { out, bn: true, act: true } : { out }));
}

/** How a feature tensor becomes [B, C]: as it is, flattened where [B, C, 1, 1], else averaged over space. */
function reduceOf(f: Value, name: string): 'none' | 'flatten' | 'pool' {
  if (f.rank === 2) return 'none';
  if (f.rank === 4) return f.shape[2] === 1 && f.shape[3] === 1 ? 'flatten' : 'pool';
  throw new ImportError(`--feature ${name}: rank ${f.rank} ([${f.shape.join(', ')}]); expected [batch, features] or [batch, channels, h, w]`);
}

export function importBackbone(src: SourceModel, seen: { reduce: 'none' | 'flatten' | 'pool' } = { reduce: 'none' }): Backbone {
  return (m, x) => {
    const r = lowerSource(src, m, x);
    const f = r.feature;
    seen.reduce = reduceOf(f, src.feature);
    const features = seen.reduce === 'none' ? f : m.g.flatten(seen.reduce === 'pool' ? m.g.globalAvgPool(f) : f, 1);
    return { features, outputs: r.outputs };
  };
}

export function compileFromOnnx(bytes: Uint8Array, o: FromOnnxOptions): { built: BuiltArtifacts; src: SourceModel } {
  const src = prepareSource(bytes, o);
  const seen = { reduce: 'none' as 'none' | 'flatten' | 'pool' };
  const backbone = importBackbone(src, seen);
  const base = PRESETS.edge;
  let p: Preset = {
    ...structuredClone(base),
    name: o.name,
    seed: 0,
    encoder: { arch: 'onnx', widths: [0], sha256: sha256(bytes), input: src.input.name, feature: src.feature, train: o.train, learns: src.params.length + src.buffers.length, frozen: src.tensors.size - src.params.length - src.buffers.length },
    image: { size: src.size, mean: IMAGENET_MEAN, std: IMAGENET_STD },
    projector: o.projector ? projectorOf(o.projector) : base.projector,
    // torchvision layers range from 64 x 48x48 maps to 512 x 1x1: no one weight-gradient formulation
    // suits them all, so 'auto' picks per Conv node by its shape (tools/graph/grad.ts autoWeightGrad),
    // and the input gradient is the flipped-kernel Conv at stride 1. Quiet box, 128 crops, 2 threads,
    // wall ms per step (bench/step-cpu.ts, two interleaved rounds; RESULTS "bring your own model",
    // 2026-12-07 evening), against the earlier batch-as-channels + ConvTranspose: resnet18 96 px 3039,
    // 2900 vs 6203, 6495; 32 px 374 vs 450 (round 2).
    convWeightGrad: 'auto',
    convInputGrad: 'conv',
  };
  p = applyOverrides(p, o.set);
  p.name = o.name;
  if (p.image.size !== src.size) throw new ImportError(`--set image.size: an imported model's size is --input-size (${src.size})`);
  let built: BuiltArtifacts;
  try {
    built = compileArtifacts(p, { backbone, files: new Map([[SOURCE_FILE, bytes]]) });
  } catch (e) {
    if (e instanceof ImportError || process.env.SSOCL_DEBUG) throw e;
    throw new ImportError((e as Error).message);
  }
  const m = built.manifest;
  const feat = m.embed.outputs.find((v) => v.name === m.embed.features)!;
  const dim = feat.shape[1] as number;
  m.preset.encoder.widths = [dim];
  const weights: Record<string, string> = {};
  for (const t of [...src.params, ...src.buffers]) weights[`${src.params.includes(t) ? 'params' : 'buffers'}.${stateName(t)}`] = t;
  m.source = {
    file: SOURCE_FILE,
    input: src.input.name,
    outputs: Object.fromEntries(src.outputs.map((n) => [n, `source.${n}`])),
    weights,
    copies: Object.fromEntries([...src.copies].filter(([name]) => src.params.includes(name) || src.buffers.includes(name))),
    opset: src.decoded.opsets[''] ?? src.decoded.opsets['ai.onnx'] ?? 0,
    feature: src.feature,
    reduce: seen.reduce,
  };
  return { built, src };
}
