// WebGPU for tests on machines without a GPU: onnxruntime-node's WebGPU EP (Dawn) runs on SwiftShader,
// the Vulkan driver Debian's chromium packages ship (../shared/notes/webgpu-on-cpu.md). Finds its ICD
// file, builds the environment the Vulkan loader needs (read when the EP first starts, so it must be in
// place before a process opens its first webgpu session; XDG_RUNTIME_DIR the agent sets itself,
// agent/trainer/webgpu.ts), and probes in a child process whether a
// session actually starts. Where it does not, tests fail under CI (which installs chromium) and skip
// elsewhere, saying why.

import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { TestContext } from 'node:test';
import { REPO } from './paths.ts';
import { SWIFTSHADER_ICDS } from '../../agent/trainer/webgpu.ts';

/** SwiftShader's ICD manifest: from dpkg's file lists (the file is in chromium-common, chromium depends on it), else a known path. */
export function findSwiftShaderIcd(): string | null {
  const r = spawnSync('dpkg', ['-L', 'chromium', 'chromium-common'], { encoding: 'utf8' });
  const listed = (r.stdout ?? '').split('\n').find((l) => l.endsWith('/vk_swiftshader_icd.json'));
  if (listed && existsSync(listed)) return listed;
  return SWIFTSHADER_ICDS.find((f) => existsSync(f)) ?? null;
}

/**
 * The variables to add for a process that opens webgpu sessions: VK_ICD_FILENAMES (unless already set,
 * e.g. to a real GPU's driver). Nothing is created for it (an ssocl-xdg-* directory per run used to be
 * left in the temp directory).
 */
export function webgpuEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  if (!process.env.VK_ICD_FILENAMES) {
    const icd = findSwiftShaderIcd();
    if (icd) env.VK_ICD_FILENAMES = icd;
  }
  return env;
}

/** Puts webgpuEnv() into this process's environment: call before its first webgpu session. */
export function useWebgpuEnv(): void {
  Object.assign(process.env, webgpuEnv());
}

export interface WebGpuCheck {
  available: boolean;
  /** What was found, or why WebGPU cannot be used here. */
  reason: string;
}

let checked: WebGpuCheck | undefined;

/** Whether a webgpu session starts (in a child process with webgpuEnv(), so a crash or hang stays there). */
export function checkWebGpu(): WebGpuCheck {
  if (checked) return checked;
  const env = webgpuEnv();
  const driver = process.env.VK_ICD_FILENAMES ? `VK_ICD_FILENAMES=${process.env.VK_ICD_FILENAMES}` : env.VK_ICD_FILENAMES ? `SwiftShader (${env.VK_ICD_FILENAMES})` : '';
  // A one-node model through the agent's own backend, as the tests use it.
  const probe = [
    "import { encodeOnnx } from './core/onnx/model.ts';",
    "import { openSession } from './agent/trainer/backend.ts';",
    "const m = encodeOnnx({ name: 'probe', nodes: [{ op: 'Relu', name: 'r', inputs: ['x'], outputs: ['y'], attrs: {} }], initializers: [], inputs: [{ name: 'x', dtype: 'float32', shape: [2] }], outputs: [{ name: 'y', dtype: 'float32', shape: [2] }] });",
    "const s = await openSession(m, 'webgpu');",
    "const y = await s.run({ x: { type: 'float32', data: Float32Array.of(-1, 2), dims: [2] } });",
    "if (String(Array.from(y.y.data)) !== '0,2') throw new Error('webgpu probe gave ' + String(y.y.data));",
  ].join('\n');
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', probe], { cwd: REPO, env: { ...process.env, ...env }, encoding: 'utf8', timeout: 60_000 });
  if (r.status === 0) checked = { available: true, reason: `webgpu starts on ${driver || 'the default Vulkan driver'}` };
  else {
    const lines = (r.stderr || r.error?.message || '').split('\n');
    // The thrown error's own line ("EpError: could not start execution provider 'webgpu': ...").
    const why = (lines.find((l) => /^\w*Error: /.test(l)) ?? `exit ${r.status ?? r.signal}`).trim();
    checked = { available: false, reason: `${driver ? `webgpu did not start on ${driver}` : 'no SwiftShader Vulkan driver found (install Debian\'s chromium, see .ci/run)'}: ${why}` };
  }
  return checked;
}

/**
 * For a test that needs WebGPU: true when it is there; otherwise the test fails under CI (CI is set;
 * .ci/run installs chromium for this) and is skipped with the reason printed elsewhere.
 */
export function needWebGpu(t: TestContext): boolean {
  const w = checkWebGpu();
  if (w.available) return true;
  // As ORT reads CI: set and not an explicit no.
  if (process.env.CI && !/^(0|false|no|off)$/i.test(process.env.CI.trim())) throw new Error(`WebGPU is required under CI (.ci/run installs chromium for it): ${w.reason}`);
  process.stderr.write(`skipping '${t.name}': ${w.reason}\n`);
  t.skip(w.reason);
  return false;
}
