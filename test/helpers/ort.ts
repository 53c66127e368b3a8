// Test helpers: run a builder Graph on onnxruntime-node's CPU EP, and check its gradients against
// central finite differences.
import * as ort from 'onnxruntime-node';
import { Graph, Value, type DType, type TypedData } from '../../tools/graph/graph.ts';
import { gradients, type GradOptions } from '../../tools/graph/grad.ts';
import { encodeModel } from '../../tools/onnx/encode.ts';
import { Rng } from '../../core/rng.ts';

export async function session(g: Graph): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(encodeModel(g, 'test'), { graphOptimizationLevel: 'all', intraOpNumThreads: 2 });
}

const ORT_TYPE: Partial<Record<DType, ort.Tensor.Type>> = { float32: 'float32', float64: 'float64', int64: 'int64', uint8: 'uint8' };

export async function run(
  sess: ort.InferenceSession,
  g: Graph,
  feeds: Map<Value, TypedData>,
): Promise<Record<string, TypedData>> {
  const f: Record<string, ort.Tensor> = {};
  for (const [v, data] of feeds) f[v.name] = new ort.Tensor(ORT_TYPE[v.dtype]!, data as any, v.dims());
  const out = await sess.run(f);
  const r: Record<string, TypedData> = {};
  for (const [k, t] of Object.entries(out)) r[k] = t.data as TypedData;
  return r;
}

export function randn(rng: Rng, n: number, dtype: 'float32' | 'float64'): TypedData {
  const a = dtype === 'float64' ? new Float64Array(n) : new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.normal();
  return a;
}

export interface GradCase {
  dtype: 'float32' | 'float64';
  inputs: { shape: number[]; diff?: boolean; init?: (rng: Rng, n: number) => number[] }[];
  build: (g: Graph, xs: Value[]) => Value;
  /** Finite-difference step; 1 is exact for functions linear in each input (conv in float32). */
  eps?: number;
  rtol?: number;
  atol?: number;
  /** Elements checked per input (random subset). */
  samples?: number;
  seed?: number;
  opts?: GradOptions;
  /** Inputs the build adds itself (layer parameters) get random values and are differentiated too. */
  diffExtras?: boolean;
}

export interface GradReport {
  maxAbsErr: number;
  maxRelErr: number;
  checked: number;
  failures: string[];
}

/** L = sum(build(x) * R) for a fixed random R; compares dL/dx with central differences. */
export async function gradCheck(c: GradCase): Promise<GradReport> {
  const rng = new Rng(c.seed ?? 1);
  const g = new Graph(c.dtype);
  const own = c.inputs.map((inp, i) => g.input(`x${i}`, inp.shape));
  const y = c.build(g, own);
  const extras = g.inputs.filter((v) => !own.includes(v));
  const xs = [...own, ...extras];
  const specs = [...c.inputs, ...extras.map((v) => ({ shape: v.dims(), diff: c.diffExtras ?? false, init: undefined }))];
  const r = g.constant(randn(rng, y.size(), c.dtype), y.shape);
  const loss = g.reduceSum(g.mul(y, r), y.shape.map((_, i) => i), false);
  const diff = xs.filter((_, i) => specs[i].diff !== false);
  const grads = gradients(g, loss, diff, c.opts);
  g.output(loss, 'loss');
  grads.forEach((gv, i) => g.output(gv, `grad${i}`));
  const sess = await session(g);
  const values = specs.map((inp) => {
    const n = inp.shape.reduce((a, b) => a * b, 1);
    const data: number[] = inp.init ? inp.init(rng, n) : Array.from(randn(rng, n, c.dtype) as Float64Array);
    return c.dtype === 'float64' ? Float64Array.from(data) : Float32Array.from(data);
  });
  const feeds = () => new Map(xs.map((x, i) => [x, values[i]] as [Value, TypedData]));
  const base = await run(sess, g, feeds());
  const eps = c.eps ?? (c.dtype === 'float64' ? 1e-6 : 1e-2);
  const rtol = c.rtol ?? (c.dtype === 'float64' ? 1e-6 : 1e-3);
  const atol = c.atol ?? (c.dtype === 'float64' ? 1e-8 : 1e-4);
  const report: GradReport = { maxAbsErr: 0, maxRelErr: 0, checked: 0, failures: [] };
  for (let d = 0; d < diff.length; d++) {
    const idx = xs.indexOf(diff[d]);
    const x = values[idx];
    const analytic = base[`grad${d}`] as Float32Array | Float64Array;
    const picks = sample(rng, x.length, c.samples ?? 24);
    for (const e of picks) {
      const keep = x[e];
      x[e] = keep + eps;
      const lp = (await run(sess, g, feeds())).loss[0] as number;
      x[e] = keep - eps;
      const lm = (await run(sess, g, feeds())).loss[0] as number;
      x[e] = keep;
      const fd = (lp - lm) / (2 * eps);
      const a = analytic[e];
      const abs = Math.abs(a - fd);
      const rel = abs / Math.max(Math.abs(a), Math.abs(fd), 1e-30);
      report.maxAbsErr = Math.max(report.maxAbsErr, abs);
      if (abs > atol) report.maxRelErr = Math.max(report.maxRelErr, rel);
      report.checked++;
      if (abs > atol + rtol * Math.max(Math.abs(a), Math.abs(fd))) report.failures.push(`input ${idx}[${e}]: analytic ${a} vs fd ${fd}`);
    }
  }
  return report;
}

function sample(rng: Rng, n: number, k: number): number[] {
  if (n <= k) return Array.from({ length: n }, (_, i) => i);
  const s = new Set<number>();
  while (s.size < k) s.add(Math.floor(rng.uniform() * n));
  return [...s].sort((a, b) => a - b);
}
