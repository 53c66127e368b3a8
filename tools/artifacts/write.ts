// Writes an artifact directory: manifest.json, train_step.onnx, embed.onnx, init.safetensors.
// Same preset, same bytes. Written to a temporary directory and renamed into place.

import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { sha256 } from '../../core/atomic.ts';
import { OPSET } from '../../core/onnx/model.ts';
import { encodeModel } from '../onnx/encode.ts';
import { encodeSafetensors } from '../../core/codecs/safetensors.ts';
import { buildEmbed, buildTrainStep, initState, presetBackbone, views, type Backbone } from './build.ts';
import { MANIFEST_FORMAT, type Manifest, type TensorInfo } from '../../core/manifest.ts';
import { assertNchwc, type Preset } from './presets.ts';
import type { Graph } from '../graph/graph.ts';

const PKG = JSON.parse(readFileSync(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../package.json'), 'utf8'));
export const GENERATOR = { name: 'ssocl-tools', version: PKG.version as string };

const info = (vs: Graph['inputs']): TensorInfo[] => vs.map((v) => ({ name: v.name, shape: v.shape, dtype: v.dtype as TensorInfo['dtype'] }));

export interface BuiltArtifacts {
  manifest: Manifest<Preset>;
  files: Map<string, Uint8Array>;
}

/** `extra`: an imported model's encoder and the further files its directory holds (tools/import). */
export function compileArtifacts(p: Preset, extra: { backbone?: Backbone; files?: Map<string, Uint8Array> } = {}): BuiltArtifacts {
  const backbone = extra.backbone ?? presetBackbone(p);
  assertNchwc(p.nchwc ?? 0);
  const ts = buildTrainStep(p, 'float32', backbone);
  // The train step only: embed.onnx stays plain, since a preset's export is embed.onnx with the weights
  // bound, and an exported encoder must load anywhere.
  const nchwcConvs = p.nchwc ? ts.g.nchwcConvs(p.nchwc, { dense: true }) : 0;
  const em = buildEmbed(p, backbone);
  const meta = { producer: GENERATOR.name, producerVersion: GENERATOR.version };
  const trainBytes = encodeModel(ts.g, `${p.name}.train_step`, meta);
  const embedBytes = encodeModel(em.g, `${p.name}.embed`, meta);
  const init = initState(ts.specs, p.seed);
  const initBytes = encodeSafetensors(init, { preset: p.name, seed: String(p.seed) });
  const files = new Map<string, Uint8Array>([
    ['train_step.onnx', trainBytes],
    ['embed.onnx', embedBytes],
    ['init.safetensors', initBytes],
    ...(extra.files ?? []),
  ]);
  const v = views(p);
  const embedNames = new Set(em.g.inputs.map((x) => x.name));
  const s = p.image.size;
  const fin = ts.fused?.inputs;
  const one = (name: string | null | undefined) => {
    const x = name ? ts.g.inputs.find((i) => i.name === name) : undefined;
    return x ? info([x])[0] : null;
  };
  const images = em.g.inputs.find((x) => x.name === 'images')!;
  const manifest: Manifest<Preset> = {
    format: MANIFEST_FORMAT,
    name: p.name,
    generator: GENERATOR,
    opset: OPSET,
    preset: p,
    trainStep: {
      file: 'train_step.onnx',
      crops: {
        name: 'crops',
        // One (inner) step's crops.
        shape: [v * p.batch, 3, s, s],
        dtype: 'float32',
        layout: 'row i*b + j holds crop (view) i of image j; NCHW pixels in [0, 1], augmented; normalisation is inside the graph',
        views: v,
        images: p.batch,
        range: [0, 1],
      },
      lr: ts.fused ? 'lrs' : 'lr',
      step: 'step',
      loss: 'loss',
      terms: Object.fromEntries(ts.terms.map((t) => [t, `loss.${t}`])),
      zbar: 'zbar',
      gradNorm: 'grad_norm',
      gradCos: p.gradCos ? 'grad_cos' : null,
      // Only where a Conv was rewritten: a step with none stays portable (e.g. channels not a multiple of the block).
      ...(nchwcConvs ? { nchwc: { block: p.nchwc!, convs: nchwcConvs } } : {}),
      inputs: info(ts.g.inputs),
      outputs: info(ts.g.outputs),
      ...(ts.fused
        ? {
            fused: {
              updates: ts.fused.updates,
              lrs: 'lrs',
              applied: 'applied',
              crops: one(fin!.crops) && { ...one(fin!.crops)!, layout: "[k] holds inner step k's crops, laid out as crops.layout says" },
              images: one(fin!.images) && { ...one(fin!.images)!, range: [0, 255] as [number, number] },
              index: one(fin!.index),
              cropParams: one(fin!.cropParams) && { ...one(fin!.cropParams)!, layout: `[k, i*b + j] holds the draws of crop i of image j of inner step k, packed by core/crop-params.ts` },
            },
          }
        : {}),
      ...(one('past_features')
        ? {
            distill: {
              pastFeatures: { ...one('past_features')!, layout: "row j: embed.onnx features of crops row j (view 0 of image j) under the past model's weights" },
              weight: 'distill_weight',
              weightUsed: 'distill_weight.used',
              refresh: 'arrival' as const,
            },
          }
        : {}),
    },
    embed: {
      file: 'embed.onnx',
      images: { name: 'images', shape: images.shape, dtype: 'float32', range: [0, 1] },
      features: 'features',
      embedding: 'embedding',
      inputs: info(em.g.inputs),
      outputs: info(em.g.outputs),
    },
    state: ts.state.map((s) => ({ ...s, dtype: 'float32' as const, embed: embedNames.has(s.name) })),
    init: 'init.safetensors',
    files: Object.fromEntries([...files].map(([k, b]) => [k, sha256(b)])),
  };
  return { manifest, files };
}

export function writeArtifacts(built: BuiltArtifacts, outDir: string): void {
  const parent = path.dirname(path.resolve(outDir));
  mkdirSync(parent, { recursive: true });
  const tmp = `${path.resolve(outDir)}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp);
  for (const [name, bytes] of built.files) writeFileSync(path.join(tmp, name), bytes);
  writeFileSync(path.join(tmp, 'manifest.json'), JSON.stringify(built.manifest, null, 1) + '\n');
  // Swap in the new directory; the old one is removed only after the new one is complete.
  const old = `${path.resolve(outDir)}.old-${process.pid}`;
  if (existsSync(outDir)) renameSync(outDir, old);
  renameSync(tmp, outDir);
  rmSync(old, { recursive: true, force: true });
}
