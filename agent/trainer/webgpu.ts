// WebGPU on onnxruntime-node starts Dawn over Vulkan, and the Vulkan drivers it tries write to the
// process's stderr where ssocl cannot catch it: Mesa's drivers look for a Wayland display and libwayland
// prints "error: XDG_RUNTIME_DIR is invalid or not set in the environment." when that variable is unset,
// and Dawn prints its adapter warnings ("Vulkan shaderUniform*ArrayDynamicIndexing required ..."). So
// before this process opens its first webgpu session, a child process tries one (its stderr captured):
// where WebGPU cannot start, the user gets one line that says what to do instead, the noise only with
// --verbose; where it can, the session opens here with XDG_RUNTIME_DIR set so the display probe stays quiet.

import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { userInfo } from 'node:os';
import { pathToFileURL } from 'node:url';
import { encodeOnnx } from '../../core/onnx/model.ts';

/** Where Debian's chromium (chromium-common) and Fedora-style layouts put SwiftShader's Vulkan ICD manifest. */
export const SWIFTSHADER_ICDS = ['/usr/lib/chromium/vk_swiftshader_icd.json', '/usr/lib64/chromium-browser/vk_swiftshader_icd.json', '/usr/lib/chromium-browser/vk_swiftshader_icd.json'];

/**
 * A Wayland display is never what a headless agent wants, but an unset XDG_RUNTIME_DIR makes libwayland
 * complain on stderr. Set one for this process (and its children) where none is: the session's own
 * /run/user/<uid> when there is one, else /nonexistent (no display to find, and only root could make it).
 * libwayland needs an absolute path, nothing more.
 */
export function quietDisplayProbe(env: NodeJS.ProcessEnv = process.env): void {
  if (env.XDG_RUNTIME_DIR?.startsWith('/')) return;
  let own = '';
  try {
    const uid = userInfo().uid;
    const d = `/run/user/${uid}`;
    if (uid >= 0 && statSync(d).isDirectory()) own = d;
  } catch {
    // no per-user runtime directory: a headless box
  }
  env.XDG_RUNTIME_DIR = own || '/nonexistent';
}

/** The one-line advice for a webgpu EP that cannot start here. */
export function webgpuHint(): string {
  const icd = SWIFTSHADER_ICDS.find((f) => existsSync(f));
  const swift = "no GPU? WebGPU runs, slowly, on SwiftShader, the CPU Vulkan driver of Debian's chromium package";
  const how = icd ? `installed here: set VK_ICD_FILENAMES=${icd}` : `apt-get install chromium, then set VK_ICD_FILENAMES=${SWIFTSHADER_ICDS[0]}`;
  return `--ep-fallback cpu continues on the CPU; ${swift}, ${how} (see README)`;
}

/** ORT's first line, less the source location and assertion it starts with ("/onnxruntime_src/...cc:100 ... was false. Failed to get a WebGPU adapter: ..."). */
export function ortReason(message: string): string {
  const first = message.split('\n')[0].trim();
  const m = /\bwas false\.\s*(.+)$/.exec(first) ?? /^\/\S+:\d+ \S+(?:\([^)]*\))*\S*\s+(.+)$/.exec(first);
  return (m ? m[1] : first).trim();
}

export interface WebgpuProbe {
  ok: boolean;
  /** Why not, in ORT's words (first line, shortened). */
  reason: string;
  /** Everything the child said, for --verbose. */
  detail: string;
}

let probed: WebgpuProbe | undefined;

/**
 * Whether a webgpu session starts in this process's environment, tried once in a child process; sets
 * XDG_RUNTIME_DIR (quietDisplayProbe) for this process and the child first.
 */
export function probeWebgpu(): WebgpuProbe {
  if (probed) return probed;
  quietDisplayProbe();
  const relu = encodeOnnx({ name: 'probe', nodes: [{ op: 'Relu', name: 'r', inputs: ['x'], outputs: ['y'], attrs: {} }], initializers: [], inputs: [{ name: 'x', dtype: 'float32', shape: [2] }], outputs: [{ name: 'y', dtype: 'float32', shape: [2] }] });
  const ort = pathToFileURL(createRequire(import.meta.url).resolve('onnxruntime-node')).href;
  const script = [
    `const ort = await import(${JSON.stringify(ort)});`,
    "ort.env.logLevel = 'fatal';",
    'try {',
    `  const s = await ort.InferenceSession.create(Buffer.from(${JSON.stringify(Buffer.from(relu).toString('base64'))}, 'base64'), { executionProviders: ['webgpu'], logSeverityLevel: 4 });`,
    "  await s.release(); process.stdout.write('ok\\n');",
    "} catch (e) { process.stdout.write('fail ' + JSON.stringify(String(e && e.message)) + '\\n'); }",
    'process.exit(0);',
  ].join('\n');
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 120_000 });
  const out = (r.stdout ?? '').trim().split('\n').at(-1) ?? '';
  const detail = `${r.stderr ?? ''}${r.error ? `\n${r.error.message}` : ''}`.trim();
  if (out === 'ok') probed = { ok: true, reason: '', detail };
  else if (out.startsWith('fail ')) {
    const full = String(JSON.parse(out.slice(5)));
    probed = { ok: false, reason: ortReason(full), detail: `onnxruntime-node: ${full}\n${detail}`.trim() };
  } else probed = { ok: false, reason: `the probe process ended without an answer (${r.error ? r.error.message : `exit ${r.status ?? r.signal}`})`, detail };
  return probed;
}
