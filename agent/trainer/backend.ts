// One session interface over the execution providers: onnxruntime-node for cpu, cuda and webgpu,
// onnxruntime-web (WASM) where no native binding exists. Callers never branch on the backend.
// Every ORT session the agent opens comes through here, so --ep, --ep-fallback, ORT's logging and
// its telemetry switch are decided in this one file.

import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { probeWebgpu, webgpuHint } from './webgpu.ts';
import { nchwcBlockOf, nchwcProbeInput, nchwcProbeModel } from '../../core/onnx/nchwc.ts';

export type EP = 'cpu' | 'cuda' | 'webgpu' | 'wasm';
export const EPS: EP[] = ['cpu', 'cuda', 'webgpu', 'wasm'];

export interface EpOptions {
  threads?: number;
  /** CUDA: allow TF32 math in convolutions and matmuls. */
  cudaTf32?: boolean;
  /** CUDA: cuDNN convolution algorithm search ('EXHAUSTIVE' | 'HEURISTIC' | 'DEFAULT'). */
  cudnnSearch?: 'EXHAUSTIVE' | 'HEURISTIC' | 'DEFAULT';
  /** More ORT session options, over the defaults below: the profiler and the speed levers bench/profile-step measures. */
  session?: Record<string, unknown>;
}

/** What a caller chooses for its sessions: the EP, the explicit fallback and where the fallback notice goes. */
export interface EpChoice extends EpOptions {
  ep?: EP;
  epFallback?: EP;
  /** One line per notice (the fallback); default: a line on stderr. */
  log?: (line: string) => void;
}

export interface FeedTensor {
  type: 'float32' | 'float64' | 'int64' | 'uint8';
  data: Float32Array | Float64Array | BigInt64Array | Uint8Array;
  dims: number[];
}

export interface Session {
  readonly ep: EP;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  run(feeds: Record<string, FeedTensor>, fetches?: string[]): Promise<Record<string, FeedTensor>>;
  release(): Promise<void>;
}

/**
 * How the CUDA provider gets installed, as README says: the pinned installer accepts only `cuda12`;
 * CUDA 13 needs the provider copied from npm (test/docs.test.ts keeps the two in step).
 */
export const CUDA_INSTALL_HINT =
  "the CUDA provider library is not installed: for CUDA 12 run onnxruntime-node's installer with ONNXRUNTIME_NODE_INSTALL=cuda12, for CUDA 13 copy it from com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9; see README";

/**
 * An EP that cannot start. `message` is one line naming the EP (and for CUDA the install hint);
 * `detail` is what ORT said in full and what was checked, for --verbose ('' when there is no more);
 * `hint`, what to do instead, closes the message in parentheses, and is left out of the notice when
 * --ep-fallback is already doing it (`brief`).
 */
export class EpError extends Error {
  override name = 'EpError';
  readonly brief: string;
  constructor(
    readonly ep: EP,
    message: string,
    readonly detail = '',
    hint = '',
  ) {
    super(hint ? `${message} (${hint})` : message);
    this.brief = message;
  }
}

/** A session that started but failed while running (device lost, out of memory, driver error); `detail` as EpError's. */
export class SessionRunError extends Error {
  override name = 'SessionRunError';
  constructor(
    readonly ep: EP,
    message: string,
    readonly detail = '',
  ) {
    super(message);
  }
}

/** The default notice sink: one plain line on stderr (not process.emitWarning, which adds a --trace-warnings hint). */
export const stderrLine = (line: string): void => {
  process.stderr.write(`${line}\n`);
};

let ortVerbose = false;

/**
 * ORT's own log on stderr: off (fatal only) by default, since ssocl reports every failure itself in
 * one line; on (warnings and errors, e.g. which CUDA library failed to load) for --verbose. ORT fixes
 * its process-wide log level when the first session opens: call this before opening any.
 */
export function setOrtVerbose(on: boolean): void {
  ortVerbose = on;
}

/**
 * onnxruntime-node 1.29 on Linux starts Microsoft's 1DS telemetry with its first session: it writes a
 * device id and an event database under $XDG_CACHE_HOME (~/.cache)/Microsoft/DeveloperTools/.onnxruntime,
 * a `.ses` file and an empty mat-debug-<pid>.log in $TMPDIR, and sends events to Microsoft. It reads
 * ORT_DISABLE_TELEMETRY once, when that first session creates its environment, so this runs before
 * every session opens (test/litter.test.ts). A value the user set is left as it is.
 */
function beforeOrtStarts(): void {
  process.env.ORT_DISABLE_TELEMETRY ??= '1';
  // The spelling other ORT sources read (microsoft/onnxruntime#29843), should the pin move; 1.29.0 ignores it.
  process.env.ORT_TELEMETRY_DISABLED ??= '1';
}

type OrtModule = typeof import('onnxruntime-node');
const PACKAGE: Record<EP, string> = { cpu: 'onnxruntime-node', cuda: 'onnxruntime-node', webgpu: 'onnxruntime-node', wasm: 'onnxruntime-web' };

async function loadModule(ep: EP): Promise<OrtModule> {
  beforeOrtStarts();
  const ort = ep === 'wasm' ? ((await import('onnxruntime-web')) as unknown as OrtModule) : await import('onnxruntime-node');
  // Read by onnxruntime-node when its first session creates the process-wide environment.
  ort.env.logLevel = ortVerbose ? 'warning' : 'fatal';
  return ort;
}

let nchwcCache: Promise<number> | null = null;

/**
 * MLAS's NCHWc block size in this process's onnxruntime-node CPU EP (core/onnx/nchwc.ts), or 0 where it
 * has no NCHWc kernels. Asked once per process.
 */
export function nchwcBlock(): Promise<number> {
  nchwcCache ??= (async () => {
    let s: import('onnxruntime-node').InferenceSession | undefined;
    try {
      const ort = await loadModule('cpu');
      s = await ort.InferenceSession.create(nchwcProbeModel(), { graphOptimizationLevel: 'disabled', logSeverityLevel: 4 } as never);
      const out = await s!.run({ x: new ort.Tensor('float32', nchwcProbeInput(), [1, 32, 1, 2]) });
      return nchwcBlockOf(out.y.data as Float32Array);
    } catch {
      return 0; // no NCHWc kernels in this build (ARM), no runtime, or a probe that does not run: the portable step
    } finally {
      await s?.release().catch(() => {});
    }
  })();
  return nchwcCache;
}

/**
 * For a CUDA EP that did not start: which of the provider libraries ORT loads are there (ORT's own
 * error says only "Failed to load shared library"; its log line names the file, see setOrtVerbose).
 */
function cudaLibraries(): string {
  try {
    const bin = path.join(path.dirname(createRequire(import.meta.url).resolve('onnxruntime-node')), '..', 'bin', 'napi-v6', process.platform, process.arch);
    const libs = ['libonnxruntime_providers_shared.so', 'libonnxruntime_providers_cuda.so'].map((f) => `${f} ${existsSync(path.join(bin, f)) ? 'present' : 'missing'}`);
    const all = libs.every((l) => l.endsWith('present'));
    return `in ${bin}: ${libs.join(', ')}${all ? ' (so a CUDA or cuDNN library they need, or the driver, is what failed)' : ''}`;
  } catch {
    return '';
  }
}

function providerOptions(ep: EP, o: EpOptions): unknown[] {
  switch (ep) {
    case 'cpu':
    case 'wasm':
      return [ep];
    case 'cuda':
      return [
        {
          name: 'cuda',
          ...(o.cudaTf32 !== undefined ? { use_tf32: o.cudaTf32 ? 1 : 0 } : {}),
          ...(o.cudnnSearch ? { cudnn_conv_algo_search: o.cudnnSearch } : {}),
        },
        'cpu',
      ];
    case 'webgpu':
      return ['webgpu', 'cpu'];
  }
}

/**
 * ORT's intra-op workers spin-wait for work after each parallel section, and by default keep spinning
 * after run() returns: in the agent's loop the train step, the buffer's embed and similarity sessions
 * and the host's crops and buffer work follow each other on the same cores, and each finds the previous
 * session's workers still spinning. `session.force_spinning_stop` stops them at the end of each run
 * (spinning within a run is kept). Quiet 2-core box, edge learner, 16 new images and one step per
 * arrival, 3 alternating rounds (bench/spin.ts, bench/RESULTS.md issue #33): 269.5 / 271.7 -> 232.2 /
 * 239.3 ms per arrival (best / median; the embed's share 40 -> 23 ms, the host's crops 18 -> 10 ms);
 * back-to-back steps alone unchanged. allow_spinning 0 (no spinning at all) gained about as much here
 * and less in an earlier probe. CPU only: the other EPs are unmeasured.
 */
const CPU_SESSION_CONFIG = { force_spinning_stop: '1' };

/** The options a session of `ep` opens with: the defaults, then the caller's (`o.session`, its `extra` merged key by key). */
export function sessionOptions(ep: EP, o: EpOptions = {}): Record<string, unknown> {
  const { extra, ...rest } = (o.session ?? {}) as { extra?: Record<string, unknown> };
  const session = { ...(ep === 'cpu' ? CPU_SESSION_CONFIG : {}), ...(extra?.session as object | undefined) };
  const merged = { ...extra, ...(Object.keys(session).length ? { session } : {}) };
  return {
    executionProviders: providerOptions(ep, o),
    graphOptimizationLevel: 'all',
    // Session-level log (e.g. "some nodes were not assigned to the preferred execution providers" on
    // webgpu, which is normal): as quiet as the process-wide one.
    logSeverityLevel: ortVerbose ? 2 : 4,
    ...(o.threads && ep !== 'wasm' ? { intraOpNumThreads: o.threads, interOpNumThreads: 1 } : {}),
    ...rest,
    ...(Object.keys(merged).length ? { extra: merged } : {}),
  };
}

export async function openSession(model: Uint8Array, ep: EP, o: EpOptions = {}): Promise<Session> {
  const ort = await loadModule(ep);
  if (ep === 'wasm') {
    const env = ort.env as unknown as { wasm: { numThreads?: number } };
    if (o.threads) env.wasm.numThreads = o.threads;
  } else if (!ort.listSupportedBackends().some((b) => b.name === ep)) {
    const have = ort.listSupportedBackends().map((b) => b.name).join(', ');
    throw new EpError(ep, `execution provider '${ep}' is not available in this onnxruntime-node build`, `onnxruntime-node ${ort.env.versions.node ?? ''} offers: ${have}`);
  } else if (ep === 'webgpu') {
    // Tried first in a child process: where it cannot start, Vulkan's noise stays there (webgpu.ts).
    const p = probeWebgpu();
    if (!p.ok) throw new EpError(ep, `could not start execution provider 'webgpu': ${p.reason}`, p.detail, webgpuHint());
  }
  let sess: import('onnxruntime-node').InferenceSession;
  try {
    sess = await ort.InferenceSession.create(model, sessionOptions(ep, o) as never);
  } catch (e) {
    const full = String((e as Error).message);
    const msg = full.split('\n')[0];
    const hint = ep === 'cuda' ? ` (${CUDA_INSTALL_HINT})` : '';
    const detail = [`${PACKAGE[ep]}: ${full.trim()}`, ep === 'cuda' ? cudaLibraries() : ''].filter(Boolean).join('\n');
    throw new EpError(ep, `could not start execution provider '${ep}': ${msg}${hint}`, detail);
  }
  return {
    ep,
    inputNames: sess.inputNames,
    outputNames: sess.outputNames,
    async run(feeds, fetches) {
      const f: Record<string, import('onnxruntime-node').Tensor> = {};
      for (const [k, t] of Object.entries(feeds)) f[k] = new ort.Tensor(t.type, t.data as never, t.dims);
      let out;
      try {
        out = fetches ? await sess.run(f, fetches) : await sess.run(f);
      } catch (e) {
        const full = String((e as Error).message);
        throw new SessionRunError(ep, `execution provider '${ep}' failed during a run: ${full.split('\n')[0]}`, `${PACKAGE[ep]}: ${full.trim()}`);
      }
      const r: Record<string, FeedTensor> = {};
      for (const [k, t] of Object.entries(out)) r[k] = { type: t.type as FeedTensor['type'], data: t.data as FeedTensor['data'], dims: [...t.dims] };
      return r;
    },
    release: () => sess.release(),
  };
}

/** openSession, and on an EP that cannot start, the explicit fallback EP (with a notice line), if one was asked for. */
export async function openSessionOrFallback(model: Uint8Array, ep: EP, fallback: EP | undefined, o: EpOptions = {}, log: (line: string) => void = stderrLine): Promise<Session> {
  try {
    return await openSession(model, ep, o);
  } catch (e) {
    if (!(e instanceof EpError) || !fallback || fallback === ep) throw e;
    log(`${e.brief}; falling back to --ep ${fallback} as --ep-fallback asks`);
    return openSession(model, fallback, o);
  }
}

/**
 * A session on what the caller chose (cpu when nothing was), for the stateless models beside the
 * trainer (buffer similarity, evaluation features, the export check). With a fallback, an EP that
 * cannot start or fails during a run is left for the fallback (one notice line), as the trainer does.
 */
export async function openChosen(model: Uint8Array, c: EpChoice = {}): Promise<Session> {
  const log = c.log ?? stderrLine;
  let sess = await openSessionOrFallback(model, c.ep ?? 'cpu', c.epFallback, c, log);
  const moved = async (e: unknown): Promise<boolean> => {
    const to = c.epFallback;
    if (!(e instanceof SessionRunError) || !to || to === sess.ep) return false;
    log(`${e.message}; moving to --ep ${to} as --ep-fallback asks`);
    await sess.release().catch(() => {});
    sess = await openSession(model, to, c);
    return true;
  };
  return {
    get ep() {
      return sess.ep;
    },
    inputNames: sess.inputNames,
    outputNames: sess.outputNames,
    async run(feeds, fetches) {
      try {
        return await sess.run(feeds, fetches);
      } catch (e) {
        if (!(await moved(e))) throw e;
        return sess.run(feeds, fetches);
      }
    },
    release: () => sess.release(),
  };
}
