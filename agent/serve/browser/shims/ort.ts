// onnxruntime-node and onnxruntime-web for the page's training bundle: the onnxruntime-web module the
// page imported from /vendor/ort (set as globalThis.ort before the bundle runs), so backend.ts's
// `import('onnxruntime-node')` for webgpu and `import('onnxruntime-web')` for wasm both reach it.

type Ort = typeof import('onnxruntime-web');
const ort = (): Ort => {
  const o = (globalThis as { ort?: Ort }).ort;
  if (!o) throw new Error('onnxruntime-web is not loaded (globalThis.ort)');
  return o;
};

export const env = new Proxy({} as Ort['env'], {
  get: (_t, k) => (ort().env as unknown as Record<string | symbol, unknown>)[k],
  set: (_t, k, v) => (((ort().env as unknown as Record<string | symbol, unknown>)[k] = v), true),
});

export const InferenceSession = {
  create: (...a: Parameters<Ort['InferenceSession']['create']>) => ort().InferenceSession.create(...a),
};

/** `new Tensor(type, data, dims)` gives onnxruntime-web's tensor (a constructor returning an object yields it). */
export const Tensor = function Tensor(type: string, data: unknown, dims: readonly number[]) {
  return new (ort().Tensor as unknown as new (...a: unknown[]) => object)(type, data, dims);
} as unknown as Ort['Tensor'];

/** What onnxruntime-node's listSupportedBackends tells backend.ts: the EPs this page can ask for. */
export const listSupportedBackends = () => [{ name: 'webgpu' }, { name: 'wasm' }, { name: 'cpu' }];
