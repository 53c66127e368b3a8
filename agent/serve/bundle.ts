// The page's training bundle, built on first request with esbuild from the agent's own modules
// (browser/train.ts): node:fs, node:path, node:crypto, node:module (and the WebGPU probe's
// node:child_process, node:os, node:url) resolve to browser/shims/,
// onnxruntime-node and onnxruntime-web to the page's onnxruntime-web, and `process` is injected.
// Built in memory; nothing is written.

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Plugin } from 'esbuild';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SHIMS = path.join(HERE, 'browser/shims');
const SHIM: Record<string, string> = { fs: 'fs.ts', path: 'path.ts', crypto: 'crypto.ts', module: 'module.ts', 'onnxruntime-node': 'ort.ts', 'onnxruntime-web': 'ort.ts', child_process: 'webgpu-probe.ts', os: 'webgpu-probe.ts', url: 'webgpu-probe.ts' };

const shims: Plugin = {
  name: 'ssocl-browser-shims',
  setup(b) {
    b.onResolve({ filter: /^(node:)?(fs|path|crypto|module|child_process|os|url)$|^onnxruntime-(node|web)$/ }, (a) => ({ path: path.join(SHIMS, SHIM[a.path.replace(/^node:/, '')]) }));
    // Any other Node built-in reached from the entry is a mistake to see at build time, not in the page.
    b.onResolve({ filter: /^node:/ }, (a) => ({ errors: [{ text: `${a.path} (imported by ${a.importer}) has no browser shim` }] }));
  },
};

let built: Promise<string> | null = null;

/** The bundle's JavaScript (an ES module), built once per server. */
export function trainerBundle(): Promise<string> {
  built ??= (async () => {
    const esbuild = await import('esbuild');
    const r = await esbuild.build({
      entryPoints: [path.join(HERE, 'browser/train.ts')],
      bundle: true,
      format: 'esm',
      platform: 'browser',
      target: 'es2022',
      write: false,
      inject: [path.join(SHIMS, 'process.ts')],
      plugins: [shims],
      logLevel: 'silent',
      legalComments: 'none',
    });
    return r.outputFiles[0].text;
  })();
  built.catch(() => (built = null)); // a failed build is tried again on the next request
  return built;
}
