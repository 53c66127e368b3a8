// Layer builders over the graph: parameters and BN statistics become named graph inputs (state),
// so one small model file serves any weights. A Model collects the state specs as layers ask for them.

import { Graph, Value, fmt } from '../graph/graph.ts';

export type StateRole = 'param' | 'buffer';
/** `given`: the value an imported model starts from (its initializer). */
export type Init = { kind: 'kaiming-normal-fanout'; fanOut: number } | { kind: 'uniform'; bound: number } | { kind: 'ones' } | { kind: 'zeros' } | { kind: 'given'; data: Float32Array };

export interface StateSpec {
  name: string; // e.g. "encoder.layer1.0.conv1.weight"
  shape: number[];
  role: StateRole;
  init: Init;
  /** Weight decay and LARS apply (not to biases and norm parameters). */
  decay: boolean;
}

export type Activation = 'relu' | 'softplus';

export class Model {
  readonly specs: StateSpec[] = [];
  readonly values = new Map<string, Value>();
  /** New values of BN running statistics produced by a training-mode graph. */
  readonly updates = new Map<string, Value>();

  constructor(
    readonly g: Graph,
    readonly training: boolean,
    readonly activation: Activation = 'relu',
    readonly bnMomentum = 0.1,
    /** 'unfold': conv2d as Graph.unfoldConv (convWeightGrad 'unfold-forward'; training graphs only). */
    readonly convForward: 'conv' | 'unfold' = 'conv',
  ) {}

  state(name: string, shape: number[], role: StateRole, init: Init, decay: boolean): Value {
    if (this.values.has(name)) throw new Error(`state '${name}' declared twice`);
    const prefix = role === 'param' ? 'params.' : 'buffers.';
    const v = this.g.input(prefix + name, shape, this.g.dtype);
    this.specs.push({ name, shape, role, init, decay });
    this.values.set(name, v);
    return v;
  }

  act(x: Value): Value {
    return this.activation === 'relu' ? this.g.relu(x) : this.g.softplus(x);
  }
}

export function conv2d(m: Model, name: string, x: Value, out: number, k: number, stride: number, pad: number): Value {
  const cin = x.shape[1] as number;
  const w = m.state(`${name}.weight`, [out, cin, k, k], 'param', { kind: 'kaiming-normal-fanout', fanOut: out * k * k }, true);
  const attrs = { strides: [stride, stride], pads: [pad, pad, pad, pad] };
  return m.g.scope(name, () => (m.convForward === 'unfold' ? m.g.unfoldConv(x, w, attrs) : m.g.conv(x, w, attrs)));
}

export function linear(m: Model, name: string, x: Value, out: number, bias = true): Value {
  if (x.rank !== 2) throw new Error(`${name}: linear needs [batch, features], got ${fmt(x.shape)}`);
  const fin = x.shape[1] as number;
  const bound = 1 / Math.sqrt(fin);
  // PyTorch layout [out, in], so weights compare directly with a reference implementation.
  const w = m.state(`${name}.weight`, [out, fin], 'param', { kind: 'uniform', bound }, true);
  const b = bias ? m.state(`${name}.bias`, [out], 'param', { kind: 'uniform', bound }, false) : null;
  return m.g.scope(name, () => m.g.gemm(x, w, b, { transB: true }));
}

/**
 * Batch normalisation over N (and H, W). Training: batch statistics, one composite op with a
 * closed-form gradient rule (GRAD_RULES.BatchNorm) and the running statistics as new state;
 * evaluation: running statistics.
 */
export function batchNorm(m: Model, name: string, x: Value, affine = true, eps = 1e-5): Value {
  const g = m.g;
  const c = x.shape[1] as number;
  const bshape = x.rank === 4 ? [1, c, 1, 1] : [1, c];
  const gamma = affine ? m.state(`${name}.weight`, [c], 'param', { kind: 'ones' }, false) : null;
  const beta = affine ? m.state(`${name}.bias`, [c], 'param', { kind: 'zeros' }, false) : null;
  const rm = m.state(`${name}.running_mean`, [c], 'buffer', { kind: 'zeros' }, false);
  const rv = m.state(`${name}.running_var`, [c], 'buffer', { kind: 'ones' }, false);
  return g.scope(name, () => {
    const epsV = g.scalar(eps);
    if (!m.training) {
      const inv = g.reciprocal(g.sqrt(g.add(rv, epsV)));
      let scale = inv;
      if (gamma) scale = g.mul(scale, gamma);
      let shift = g.neg(g.mul(rm, scale));
      if (beta) shift = g.add(shift, beta);
      return g.add(g.mul(x, g.reshape(scale, bshape)), g.reshape(shift, bshape));
    }
    // Differentiated as one op by GRAD_RULES.BatchNorm (closed form), which reads xhat, inv and gamma.
    const [y, mean, varB] = g.batchNormTraining(x, gamma, beta, eps);
    // Running statistics as PyTorch keeps them: unbiased variance, momentum on the new value.
    const [runMean, runVar] = g.batchNormRunningStats(x, mean, varB, rm, rv, m.bnMomentum);
    m.updates.set(`${name}.running_mean`, runMean);
    m.updates.set(`${name}.running_var`, runVar);
    return y;
  });
}

export function l2normalize(g: Graph, x: Value, axis = -1): Value {
  return g.div(x, g.sqrt(g.add(g.reduceSum(g.mul(x, x), [axis], true), g.scalar(1e-12))));
}
