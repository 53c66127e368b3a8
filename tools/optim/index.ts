// Optimizers as chains of pure transforms (after optax): each transform declares its state slots and
// maps (update, slots) -> (update, slots) in graph ops. Masks decide which parameters a transform
// touches: weight decay and LARS skip biases and norm parameters.

import { Graph, Value } from '../graph/graph.ts';

export interface ParamRef {
  name: string;
  value: Value;
  grad: Value; // raw gradient
  decay: boolean;
}

export interface Hyper {
  lr: Value; // scalar
  step: Value; // scalar, 1-based count of this update
}

export interface Transform {
  slots: string[];
  update(g: Graph, h: Hyper, p: ParamRef, u: Value, slots: Record<string, Value>): { u: Value; slots: Record<string, Value> };
}

/** Two-stage sum (Graph.sumAll): one float32 ReduceSum put a 4096 x 4096 gradient's norm 0.1% low. */
function norm(g: Graph, x: Value): Value {
  return g.sqrt(g.sumAll(g.mul(x, x)));
}

/** u + wd * p on decayed parameters (coupled decay before LARS/momentum, or decoupled after Adam). */
export const addDecayedWeights = (wd: number): Transform => ({
  slots: [],
  update: (g, _h, p, u) => ({ u: p.decay && wd ? g.add(u, g.mul(p.value, g.scalar(wd))) : u, slots: {} }),
});

/**
 * LARS trust ratio as in EMP-SSL's wrapper: ratio = eta |p| / (|g| + wd |p| + 1e-8), clipped to
 * min(ratio / lr, 1); 1 when |p| or |g| is 0. Applied to decayed parameters only.
 */
export const lars = (eta: number, wd: number, clip: boolean): Transform => ({
  slots: [],
  update: (g, h, p, u) => {
    if (!p.decay) return { u, slots: {} };
    const pn = norm(g, p.value);
    const gn = norm(g, p.grad);
    let ratio = g.div(g.mul(pn, g.scalar(eta)), g.add(g.add(gn, g.mul(pn, g.scalar(wd))), g.scalar(1e-8)));
    if (clip) ratio = g.min(g.div(ratio, h.lr), g.scalar(1));
    const nonzero = g.greater(g.mul(pn, gn), g.scalar(0));
    return { u: g.mul(u, g.whereOp(nonzero, ratio, g.scalar(1))), slots: {} };
  },
});

/** Heavy-ball momentum, PyTorch convention: buf = mu * buf + u. */
export const momentum = (mu: number): Transform => ({
  slots: mu ? ['momentum'] : [],
  update: (g, _h, _p, u, s): { u: Value; slots: Record<string, Value> } => {
    if (!mu) return { u, slots: {} };
    const buf = g.add(g.mul(s.momentum, g.scalar(mu)), u);
    return { u: buf, slots: { momentum: buf } };
  },
});

/** Adam moments with bias correction; step is a runtime input. */
export const adam = (b1: number, b2: number, eps: number): Transform => ({
  slots: ['adam_m', 'adam_v'],
  update: (g, h, _p, u, s) => {
    const m = g.add(g.mul(s.adam_m, g.scalar(b1)), g.mul(u, g.scalar(1 - b1)));
    const v = g.add(g.mul(s.adam_v, g.scalar(b2)), g.mul(g.mul(u, u), g.scalar(1 - b2)));
    const c1 = g.sub(g.scalar(1), g.binary('Pow', g.scalar(b1), h.step));
    const c2 = g.sub(g.scalar(1), g.binary('Pow', g.scalar(b2), h.step));
    const mhat = g.div(m, c1);
    const vhat = g.div(v, c2);
    return { u: g.div(mhat, g.add(g.sqrt(vhat), g.scalar(eps))), slots: { adam_m: m, adam_v: v } };
  },
});

/** Final -lr scale: the update is added to the parameter. */
export const scaleByLr = (): Transform => ({
  slots: [],
  update: (g, h, _p, u) => ({ u: g.neg(g.mul(u, h.lr)), slots: {} }),
});

export function chain(...ts: Transform[]): Transform {
  return {
    slots: ts.flatMap((t) => t.slots),
    update: (g, h, p, u, s) => {
      let cur = u;
      const out: Record<string, Value> = {};
      for (const t of ts) {
        const r = t.update(g, h, p, cur, s);
        cur = r.u;
        Object.assign(out, r.slots);
      }
      return { u: cur, slots: out };
    },
  };
}

export interface OptimizerConfig {
  type: 'sgd' | 'adamw';
  momentum?: number; // sgd, default 0.9
  weightDecay?: number; // default 1e-4 (sgd), 1e-2 (adamw)
  lars?: boolean; // sgd only, default true
  eta?: number; // LARS, default 0.005
  clip?: boolean; // LARS, default true
  beta1?: number;
  beta2?: number;
  eps?: number;
}

export function makeOptimizer(c: OptimizerConfig): Transform {
  if (c.type === 'sgd') {
    const wd = c.weightDecay ?? 1e-4;
    const parts = [addDecayedWeights(wd)];
    if (c.lars ?? true) parts.push(lars(c.eta ?? 0.005, wd, c.clip ?? true));
    return chain(...parts, momentum(c.momentum ?? 0.9), scaleByLr());
  }
  if (c.type === 'adamw') {
    return chain(adam(c.beta1 ?? 0.9, c.beta2 ?? 0.999, c.eps ?? 1e-8), addDecayedWeights(c.weightDecay ?? 1e-2), scaleByLr());
  }
  throw new Error(`unknown optimizer type '${(c as { type: string }).type}' (accepted: sgd, adamw)`);
}
