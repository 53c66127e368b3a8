// `ssocl artifacts`: compile a preset (with overrides) and write or check its artifact directory.

import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { getPreset } from '../../tools/artifacts/presets.ts';
import { compileArtifacts, writeArtifacts } from '../../tools/artifacts/write.ts';
import { REPO_ROOT } from '../paths.ts';

export interface ArtifactsArgs {
  preset: string;
  set: string[];
  out?: string;
  name?: string;
  check: boolean;
}

export async function artifactsCommand(a: ArtifactsArgs): Promise<void> {
  const preset = getPreset(a.preset, a.set);
  preset.name = a.name ?? (a.set.length ? `${a.preset}-custom` : a.preset);
  const out = a.out ?? path.join(REPO_ROOT, 'training-artifacts', preset.name);
  const t0 = performance.now();
  const built = compileArtifacts(preset);
  const ms = performance.now() - t0;
  if (a.check) {
    const diffs: string[] = [];
    for (const [name, bytes] of [...built.files, ['manifest.json', Buffer.from(JSON.stringify(built.manifest, null, 1) + '\n')] as const]) {
      const file = path.join(out, name);
      if (!existsSync(file)) diffs.push(`${name}: missing`);
      else if (!Buffer.from(bytes).equals(readFileSync(file))) diffs.push(`${name}: differs`);
    }
    if (diffs.length) {
      process.stderr.write(`ssocl: ${out} does not match the compiler's output:\n  ${diffs.join('\n  ')}\nrebuild with: ssocl artifacts --preset ${a.preset}\n`);
      process.exit(1);
    }
    process.stdout.write(`${out}: up to date (${built.files.size + 1} files)\n`);
    return;
  }
  writeArtifacts(built, out);
  const sizes = [...built.files].map(([k, v]) => `${k} ${(v.length / 1024).toFixed(0)} KiB`).join(', ');
  const params = built.manifest.state.filter((s) => s.role === 'param').reduce((n, s) => n + s.shape.reduce((x, y) => x * y, 1), 0);
  process.stdout.write(`wrote ${out} in ${ms.toFixed(0)} ms: ${sizes}; ${params.toLocaleString('en')} parameters\n`);
}
