// Compiles a preset into its graphs: the training step (crops, lr, step, state -> new state, losses,
// zbar, diagnostics) and the embedding graph (images, weights -> features, embedding).

import { Graph, Value } from '../graph/graph.ts';
import { gradients } from '../graph/grad.ts';
import { Model, l2normalize, type StateSpec } from '../nn/layers.ts';
import { resnet } from '../nn/encoders.ts';
import { mlp } from '../nn/heads.ts';
import * as L from '../losses/index.ts';
import { makeOptimizer } from '../optim/index.ts';
import { Rng } from '../../core/rng.ts';
import type { Preset } from './presets.ts';

export function views(p: Preset): number {
  return p.predictor || p.losses.some((l) => l.name === 'nt-xent' || l.name === 'simsiam') ? 2 : p.crops;
}

function normalizeInput(g: Graph, x: Value, p: Preset): Value {
  return g.scope('normalize', () => {
    const mean = g.constant(p.image.mean, [1, 3, 1, 1]);
    const invStd = g.constant(p.image.std.map((s) => 1 / s), [1, 3, 1, 1]);
    return g.mul(g.sub(x, mean), invStd);
  });
}

export interface LossGraph {
  g: Graph;
  model: Model;
  crops: Value;
  total: Value;
  terms: Map<string, Value>;
  zbar: Value;
  params: { spec: StateSpec; value: Value }[];
}

/** Forward graph of the training loss (shared by the step and the whole-network gradient tests). */
export function buildLoss(p: Preset, dtype: 'float32' | 'float64' = 'float32'): LossGraph {
  const g = new Graph(dtype);
  const v = views(p);
  const b = p.batch;
  const s = p.image.size;
  const crops = g.input('crops', [v * b, 3, s, s]);
  const model = new Model(g, true, p.activation, p.bnMomentum);
  const feats = resnet(model, normalizeInput(g, crops, p), p.encoder);
  const proj = g.scope('projector', () => mlp(model, 'projector', feats, p.projector));
  const pred = p.predictor ? g.scope('predictor', () => mlp(model, 'predictor', proj, p.predictor!)) : null;
  const mc = g.scope('zbar', () => L.multiCrop(g, proj, v, b));
  const terms = new Map<string, Value>();
  for (const { name } of p.losses) {
    const t = g.scope(`loss.${name}`, () => {
      switch (name) {
        case 'mcc':
          return L.mcc(g, mc, p.tau);
        case 'mcc-paper':
          return L.mccPaper(g, mc, p.tau);
        case 'tcr':
          return L.tcr(g, mc, p.tcrEps);
        case 'empssl-inv':
          return L.empsslInv(g, mc);
        case 'nt-xent':
          if (v !== 2) throw new Error('nt-xent needs 2 views');
          return L.ntXent(g, proj, p.ntXentTau);
        case 'simsiam':
          if (!pred) throw new Error('simsiam needs a predictor');
          return L.simsiam(g, pred, proj);
        default:
          throw new Error(`unknown loss '${name}' (accepted: ${L.LOSS_NAMES.join(', ')})`);
      }
    });
    terms.set(name, t);
  }
  let total: Value | null = null;
  for (const { name, weight } of p.losses) {
    const wt = g.mul(terms.get(name)!, g.scalar(weight));
    total = total ? g.add(total, wt) : wt;
  }
  if (!total) throw new Error(`preset ${p.name}: no loss terms`);
  const params = model.specs.filter((sp) => sp.role === 'param').map((spec) => ({ spec, value: model.values.get(spec.name)! }));
  return { g, model, crops, total, terms, zbar: mc.zbar, params };
}

export interface StateEntry {
  name: string;
  next: string;
  shape: number[];
  role: 'param' | 'buffer' | 'optim' | 'diag';
  init: 'file' | 'zeros';
  embed: boolean;
}

export interface TrainStepGraph {
  g: Graph;
  state: StateEntry[];
  specs: StateSpec[];
  terms: string[];
}

export function buildTrainStep(p: Preset, dtype: 'float32' | 'float64' = 'float32'): TrainStepGraph {
  const lg = buildLoss(p, dtype);
  const { g, model } = lg;
  const lr = g.input('lr', []);
  const step = g.input('step', []);
  const grads = gradients(g, lg.total, lg.params.map((x) => x.value), { convWeightGrad: p.convWeightGrad, convInputGrad: p.convInputGrad });
  const state: StateEntry[] = [];
  const outs: [Value, string][] = [];

  g.output(lg.total, 'loss');
  for (const [name, t] of lg.terms) g.output(t, `loss.${name}`);
  g.output(lg.zbar, 'zbar');

  g.scope('diagnostics', () => {
    const sq = grads.map((gr) => g.reduceSum(g.mul(gr, gr), gr.shape.map((_, i) => i), false));
    const total = sq.reduce((a, b) => g.add(a, b));
    const gnorm = g.sqrt(total);
    g.output(gnorm, 'grad_norm');
    if (p.gradCos) {
      // Cosine between this step's gradient and the previous step's (the paper's Fig. 1); 0 on the first step.
      let dot: Value | null = null;
      let prevSq: Value | null = null;
      lg.params.forEach(({ spec }, i) => {
        const name = `diag.prev_grad.${spec.name}`;
        const prev = g.input(name, spec.shape);
        const d = g.reduceSum(g.mul(prev, grads[i]), spec.shape.map((_, k) => k), false);
        const ps = g.reduceSum(g.mul(prev, prev), spec.shape.map((_, k) => k), false);
        dot = dot ? g.add(dot, d) : d;
        prevSq = prevSq ? g.add(prevSq, ps) : ps;
        state.push({ name, next: `${name}.next`, shape: spec.shape, role: 'diag', init: 'zeros', embed: false });
        outs.push([grads[i], `${name}.next`]);
      });
      g.output(g.div(dot!, g.add(g.mul(gnorm, g.sqrt(prevSq!)), g.scalar(1e-12))), 'grad_cos');
    }
  });

  const opt = makeOptimizer(p.optimizer);
  g.scope('optimizer', () => {
    lg.params.forEach(({ spec, value }, i) => {
      const slots: Record<string, Value> = {};
      for (const slot of opt.slots) {
        const name = `optim.${slot}.${spec.name}`;
        slots[slot] = g.input(name, spec.shape);
        state.push({ name, next: `${name}.next`, shape: spec.shape, role: 'optim', init: 'zeros', embed: false });
      }
      const r = g.scope(spec.name, () => opt.update(g, { lr, step }, { name: spec.name, value, grad: grads[i], decay: spec.decay }, grads[i], slots));
      outs.push([g.add(value, r.u), `params.${spec.name}.next`]);
      for (const slot of opt.slots) outs.push([r.slots[slot], `optim.${slot}.${spec.name}.next`]);
    });
  });

  for (const spec of model.specs) {
    if (spec.role === 'buffer') outs.push([model.updates.get(spec.name)!, `buffers.${spec.name}.next`]);
  }
  // State order: params and buffers (as declared), then optimizer slots and diagnostics.
  const own: StateEntry[] = model.specs.map((spec) => {
    const name = `${spec.role === 'param' ? 'params.' : 'buffers.'}${spec.name}`;
    return { name, next: `${name}.next`, shape: spec.shape, role: spec.role, init: 'file', embed: true };
  });
  const all = [...own, ...state.filter((s) => s.role === 'optim'), ...state.filter((s) => s.role === 'diag')];
  const order = new Map(all.map((s, i) => [s.next, i]));
  outs.sort((a, b) => order.get(a[1])! - order.get(b[1])!);
  for (const [v, name] of outs) g.output(v, name);
  return { g, state: all, specs: model.specs, terms: [...lg.terms.keys()] };
}

/** Inference graph: images in [0, 1] (any batch) -> backbone features and the L2-normalised embedding. */
export function buildEmbed(p: Preset): { g: Graph; specs: StateSpec[] } {
  const g = new Graph('float32');
  const s = p.image.size;
  const images = g.input('images', ['batch', 3, s, s]);
  const model = new Model(g, false, p.activation, p.bnMomentum);
  const feats = resnet(model, normalizeInput(g, images, p), p.encoder);
  const proj = g.scope('projector', () => mlp(model, 'projector', feats, p.projector));
  g.output(feats, 'features');
  g.output(l2normalize(g, proj), 'embedding');
  return { g, specs: model.specs };
}

/** Initial values of parameters and BN statistics, deterministic in the preset's seed. */
export function initState(specs: StateSpec[], seed: number): Map<string, Float32Array> {
  const rng = new Rng(seed);
  const out = new Map<string, Float32Array>();
  for (const s of specs) {
    const n = s.shape.reduce((a, b) => a * b, 1);
    const a = new Float32Array(n);
    switch (s.init.kind) {
      case 'kaiming-normal-fanout': {
        const std = Math.sqrt(2 / s.init.fanOut);
        for (let i = 0; i < n; i++) a[i] = rng.normal() * std;
        break;
      }
      case 'uniform': {
        const bnd = s.init.bound;
        for (let i = 0; i < n; i++) a[i] = rng.range(-bnd, bnd);
        break;
      }
      case 'ones':
        a.fill(1);
        break;
      case 'zeros':
        break;
    }
    out.set(`${s.role === 'param' ? 'params.' : 'buffers.'}${s.name}`, a);
  }
  return out;
}
