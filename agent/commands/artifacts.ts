// `ssocl artifacts`: compile a preset (with overrides), or import an ONNX model (--from-onnx), and
// write or check its artifact directory.

import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { getPreset } from '../../tools/artifacts/presets.ts';
import { compileArtifacts, writeArtifacts, type BuiltArtifacts } from '../../tools/artifacts/write.ts';
import { compileFromOnnx } from '../../tools/import/artifacts.ts';
import { ImportError } from '../../tools/import/source.ts';
import { REPO_ROOT } from '../paths.ts';
import { UsageError } from '../cli-args.ts';
import { nchwcBlock } from '../trainer/backend.ts';

export interface ArtifactsArgs {
  preset: string;
  set: string[];
  out?: string;
  name?: string;
  check: boolean;
  fromOnnx?: { file: string; feature?: string; inputSize?: number; train: string; projector?: number[] };
  /** auto (ask this machine's ORT), off, 8 or 16; default: auto with --from-onnx, off for a preset. */
  nchwc?: string;
}

/**
 * --nchwc as a preset override. auto asks this process's onnxruntime-node for its NCHWc block (0 where
 * it has none: the step stays portable). The built-in presets default to off: their committed artifacts
 * also run on WebGPU, CUDA and in the browser.
 */
async function nchwcSets(a: ArtifactsArgs): Promise<string[]> {
  if (a.set.some((s) => s.startsWith('nchwc='))) {
    if (a.nchwc !== undefined) throw new UsageError('give --nchwc or --set nchwc=..., not both');
    return a.set;
  }
  let v = a.nchwc ?? (a.fromOnnx ? 'auto' : 'off');
  // --check without --nchwc compares with the block the directory was built for, not this machine's.
  if (a.check && a.nchwc === undefined) v = String(existingBlock(a) || 'off');
  if (v === 'off') return a.set;
  const block = v === 'auto' ? await nchwcBlock() : Number(v);
  return block ? [...a.set, `nchwc=${block}`] : a.set;
}

/**
 * The directory's name: --name, else the imported file's, else the preset's (`<preset>-custom` with
 * overrides, `set` the effective ones: --nchwc 16 on a preset must not write over its portable directory).
 */
function artifactName(a: ArtifactsArgs, set: string[]): string {
  return a.name ?? (a.fromOnnx ? path.basename(a.fromOnnx.file).replace(/\.onnx$/i, '') : set.length ? `${a.preset}-custom` : a.preset);
}

/** The NCHWc block of the directory --check compares with (0: none, or no manifest there). */
function existingBlock(a: ArtifactsArgs): number {
  const file = path.join(a.out ?? path.join(REPO_ROOT, 'training-artifacts', artifactName(a, a.set)), 'manifest.json');
  try {
    return (JSON.parse(readFileSync(file, 'utf8')) as { trainStep?: { nchwc?: { block?: number } } }).trainStep?.nchwc?.block ?? 0;
  } catch {
    return 0;
  }
}

/** The import's refusals (unsupported op, external data, a bad flag value) are usage errors: one line, exit 2, nothing written. */
function importArtifacts(a: ArtifactsArgs, name: string, set: string[]): BuiltArtifacts {
  const f = a.fromOnnx!;
  try {
    return compileFromOnnx(readFileSync(f.file), { feature: f.feature, inputSize: f.inputSize, train: f.train, projector: f.projector, name, set }).built;
  } catch (e) {
    if (e instanceof ImportError) throw new UsageError(`--from-onnx ${f.file}: ${e.message}`);
    throw e;
  }
}

/**
 * Under mixed replay a step's batch is this arrival's new images plus replayed ones, so the batch must
 * hold an arrival: `--set batch=8` on a preset of 16 new images per arrival compiled fine and `ssocl run`
 * then stopped at the first arrival. Refused here, before anything is written.
 */
export function holdsAnArrival(p: BuiltArtifacts['manifest']['preset']): void {
  const { newPerArrival, replay } = p.agent;
  if (replay === 'mixed' && newPerArrival > p.batch) {
    throw new UsageError(`--set batch=${p.batch}: a step of ${p.batch} images cannot hold an arrival of ${newPerArrival} new images under mixed replay; add --set agent.newPerArrival=${p.batch} (or fewer), or keep a batch of at least ${newPerArrival}`);
  }
}

export async function artifactsCommand(a: ArtifactsArgs): Promise<void> {
  const t0 = performance.now();
  const set = await nchwcSets(a);
  let built: BuiltArtifacts;
  if (a.fromOnnx) built = importArtifacts(a, artifactName(a, set), set);
  else {
    const preset = getPreset(a.preset, set);
    preset.name = artifactName(a, set);
    built = compileArtifacts(preset);
  }
  holdsAnArrival(built.manifest.preset);
  const ms = performance.now() - t0;
  const out = a.out ?? path.join(REPO_ROOT, 'training-artifacts', built.manifest.name);
  if (a.check) {
    const diffs: string[] = [];
    for (const [name, bytes] of [...built.files, ['manifest.json', Buffer.from(JSON.stringify(built.manifest, null, 1) + '\n')] as const]) {
      const file = path.join(out, name);
      if (!existsSync(file)) diffs.push(`${name}: missing`);
      else if (!Buffer.from(bytes).equals(readFileSync(file))) diffs.push(`${name}: differs`);
    }
    if (diffs.length) {
      const nc = built.manifest.trainStep.nchwc ? ` --nchwc ${built.manifest.trainStep.nchwc.block}` : a.fromOnnx ? ' --nchwc off' : '';
      process.stderr.write(`ssocl: ${out} does not match the compiler's output:\n  ${diffs.join('\n  ')}\nrebuild with: ssocl artifacts ${a.fromOnnx ? `--from-onnx ${a.fromOnnx.file}` : `--preset ${a.preset}`}${nc}\n`);
      process.exit(1);
    }
    process.stdout.write(`${out}: up to date (${built.files.size + 1} files)\n`);
    return;
  }
  writeArtifacts(built, out);
  const sizes = [...built.files].map(([k, v]) => `${k} ${(v.length / 1024).toFixed(0)} KiB`).join(', ');
  const params = built.manifest.state.filter((s) => s.role === 'param').reduce((n, s) => n + s.shape.reduce((x, y) => x * y, 1), 0);
  const src = built.manifest.preset.encoder as { arch: string; feature?: string; learns?: number; frozen?: number };
  const imported = src.arch === 'onnx' ? `; imported: feature '${src.feature}' (${built.manifest.preset.encoder.widths[0]} wide), ${src.learns} source tensors learn, ${src.frozen} frozen` : '';
  const nc = built.manifest.trainStep.nchwc;
  const kernels = nc ? `; ${nc.convs} convolutions in ORT's NCHWc CPU kernels (block ${nc.block}): trains with --ep cpu on x86-64 CPUs of this block only (--nchwc off for a portable step)` : '';
  process.stdout.write(`wrote ${out} in ${ms.toFixed(0)} ms: ${sizes}; ${params.toLocaleString('en')} parameters${imported}${kernels}\n`);
}
