// One session interface over the execution providers: onnxruntime-node for cpu, cuda and webgpu,
// onnxruntime-web (WASM) where no native binding exists. Callers never branch on the backend.

export type EP = 'cpu' | 'cuda' | 'webgpu' | 'wasm';
export const EPS: EP[] = ['cpu', 'cuda', 'webgpu', 'wasm'];

export interface EpOptions {
  threads?: number;
  /** CUDA: allow TF32 math in convolutions and matmuls. */
  cudaTf32?: boolean;
  /** CUDA: cuDNN convolution algorithm search ('EXHAUSTIVE' | 'HEURISTIC' | 'DEFAULT'). */
  cudnnSearch?: 'EXHAUSTIVE' | 'HEURISTIC' | 'DEFAULT';
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

export class EpError extends Error {
  override name = 'EpError';
  constructor(
    readonly ep: EP,
    message: string,
  ) {
    super(message);
  }
}

/** A session that started but failed while running (device lost, out of memory, driver error). */
export class SessionRunError extends Error {
  override name = 'SessionRunError';
  constructor(
    readonly ep: EP,
    message: string,
  ) {
    super(message);
  }
}

type OrtModule = typeof import('onnxruntime-node');

async function loadModule(ep: EP): Promise<OrtModule> {
  if (ep === 'wasm') return (await import('onnxruntime-web')) as unknown as OrtModule;
  return import('onnxruntime-node');
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

export async function openSession(model: Uint8Array, ep: EP, o: EpOptions = {}): Promise<Session> {
  const ort = await loadModule(ep);
  if (ep === 'wasm') {
    const env = ort.env as unknown as { wasm: { numThreads?: number } };
    if (o.threads) env.wasm.numThreads = o.threads;
  } else if (!ort.listSupportedBackends().some((b) => b.name === ep)) {
    throw new EpError(ep, `execution provider '${ep}' is not available in this onnxruntime-node build`);
  }
  let sess: import('onnxruntime-node').InferenceSession;
  try {
    sess = await ort.InferenceSession.create(model, {
      executionProviders: providerOptions(ep, o) as never,
      graphOptimizationLevel: 'all',
      ...(o.threads && ep !== 'wasm' ? { intraOpNumThreads: o.threads, interOpNumThreads: 1 } : {}),
    });
  } catch (e) {
    const msg = (e as Error).message.split('\n')[0];
    const hint = ep === 'cuda' ? ` (${CUDA_INSTALL_HINT})` : '';
    throw new EpError(ep, `could not start execution provider '${ep}': ${msg}${hint}`);
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
        throw new SessionRunError(ep, `execution provider '${ep}' failed during a run: ${(e as Error).message.split('\n')[0]}`);
      }
      const r: Record<string, FeedTensor> = {};
      for (const [k, t] of Object.entries(out)) r[k] = { type: t.type as FeedTensor['type'], data: t.data as FeedTensor['data'], dims: [...t.dims] };
      return r;
    },
    release: () => sess.release(),
  };
}

/** openSession, and on an EP that cannot start, the explicit fallback EP (with a warning), if one was asked for. */
export async function openSessionOrFallback(model: Uint8Array, ep: EP, fallback: EP | undefined, o: EpOptions = {}, warn: (msg: string) => void = (m) => process.emitWarning(m)): Promise<Session> {
  try {
    return await openSession(model, ep, o);
  } catch (e) {
    if (!(e instanceof EpError) || !fallback || fallback === ep) throw e;
    warn(`${e.message}; falling back to --ep ${fallback} as --ep-fallback asks`);
    return openSession(model, fallback, o);
  }
}
