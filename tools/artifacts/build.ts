// Compiles a preset into its graphs: the training step (crops, lr, step, state -> new state, losses,
// zbar, diagnostics) and the embedding graph (images, weights -> features, embedding).

import { Graph, Value } from '../graph/graph.ts';
import { gradients } from '../graph/grad.ts';
import { Model, l2normalize, type StateSpec } from '../nn/layers.ts';
import { resnet } from '../nn/encoders.ts';
import { mlp } from '../nn/heads.ts';
import { buildCrops } from '../nn/augment-graph.ts';
import { CROP_PARAM_COUNT } from '../../core/crop-params.ts';
import * as L from '../losses/index.ts';
import { makeOptimizer } from '../optim/index.ts';
import { Rng } from '../../core/rng.ts';
import type { Preset } from './presets.ts';

export function views(p: Preset): number {
  return p.predictor || p.losses.some((l) => ['nt-xent', 'simsiam', 'scale-contrast', 'ird'].includes(l.name)) ? 2 : p.crops;
}

function normalizeInput(g: Graph, x: Value, p: Preset): Value {
  return g.scope('normalize', () => {
    const mean = g.constant(p.image.mean, [1, 3, 1, 1]);
    const invStd = g.constant(p.image.std.map((s) => 1 / s), [1, 3, 1, 1]);
    return g.mul(g.sub(x, mean), invStd);
  });
}

/**
 * The encoder: normalised images -> backbone features [B, F] (and, in an inference model, further
 * named outputs the embed graph exposes). Default: the preset's ResNet; an imported model brings its own.
 */
export type Backbone = (m: Model, x: Value) => { features: Value; outputs?: Map<string, Value> };

export function presetBackbone(p: Preset): Backbone {
  return (m, x) => {
    if (p.encoder.arch !== 'resnet') throw new Error(`preset ${p.name}: encoder '${p.encoder.arch}' needs its source model (ssocl artifacts --from-onnx)`);
    return { features: resnet(m, x, p.encoder) };
  };
}

export interface LossGraph {
  g: Graph;
  model: Model;
  crops: Value;
  total: Value;
  terms: Map<string, Value>;
  zbar: Value;
  params: { spec: StateSpec; value: Value }[];
  /** Further outputs of the step by name (SCALE: the distillation weight it used). */
  extras: Map<string, Value>;
}

/** How a training graph's dense convolutions compute their forward: unfolded where the weight gradient reuses it. */
function convForward(p: Preset): 'conv' | 'unfold' {
  return p.convWeightGrad === 'unfold-forward' ? 'unfold' : 'conv';
}

/** Forward graph of the training loss (shared by the step and the whole-network gradient tests). */
export function buildLoss(p: Preset, dtype: 'float32' | 'float64' = 'float32', backbone = presetBackbone(p)): LossGraph {
  const g = new Graph(dtype);
  const v = views(p);
  const b = p.batch;
  const s = p.image.size;
  const crops = g.input('crops', [v * b, 3, s, s]);
  return lossOn(g, p, crops, new Model(g, true, p.activation, p.bnMomentum, convForward(p)), backbone);
}

/** The loss of one batch of crops into `g`, with the state tensors `model` hands out. */
function lossOn(g: Graph, p: Preset, crops: Value, model: Model, backbone: Backbone): LossGraph {
  const v = views(p);
  const b = p.batch;
  const feats = backbone(model, normalizeInput(g, crops, p)).features;
  const { proj, past } = project(g, p, model, feats);
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
        case 'scale-contrast': {
          const sc = scaleOptions(p);
          const stream = p.agent.newPerArrival;
          if (!(stream > 0 && stream <= b)) throw new Error(`preset ${p.name}: scale-contrast needs 0 < agent.newPerArrival <= batch, got ${stream} of ${b}`);
          const mask = g.scope('mask', () => L.scaleMask(g, feats, v, b, stream, sc.tempTsne, sc.thresRatio));
          return L.scaleContrast(g, proj, mask, stream, sc.tempCont, sc.baseTemp);
        }
        case 'ird': {
          // SCALE distils on the first view of the batch (feed_images_0: stream and memory images).
          const sc = scaleOptions(p);
          return L.ird(g, g.slice(proj, [0], [b], [0]), past!, sc.currentTemp, sc.pastTemp);
        }
        default:
          throw new Error(`unknown loss '${name}' (accepted: ${L.LOSS_NAMES.join(', ')})`);
      }
    });
    terms.set(name, t);
  }
  let total: Value | null = null;
  for (const { name, weight } of p.losses) {
    if (name === 'ird') continue;
    const wt = g.mul(terms.get(name)!, g.scalar(weight));
    total = total ? g.add(total, wt) : wt;
  }
  if (!total) throw new Error(`preset ${p.name}: no loss terms besides ird`);
  const extras = new Map<string, Value>();
  const irdTerm = p.losses.find((l) => l.name === 'ird');
  if (irdTerm) {
    // SCALE's weight: distill_power x L_contrast / L_distill at the first step, then kept by the host.
    const given = g.input('distill_weight', []);
    const w = g.scope('distill_weight', () => L.distillWeight(g, given, total!, terms.get('ird')!, scaleOptions(p).distillPower));
    extras.set('distill_weight.used', w);
    total = g.add(total, g.mul(terms.get('ird')!, g.mul(w, g.scalar(irdTerm.weight))));
  }
  const params = model.specs.filter((sp) => sp.role === 'param').map((spec) => ({ spec, value: model.values.get(spec.name)! }));
  return { g, model, crops, total, terms, zbar: mc.zbar, params, extras };
}

function scaleOptions(p: Preset): NonNullable<Preset['scale']> {
  if (!p.scale) throw new Error(`preset ${p.name}: the scale-contrast and ird losses need the preset's scale options`);
  return p.scale;
}

/**
 * The projector on the crops' features, and with an ird loss also on the past model's features of the
 * first view (graph input past_features, computed by embed.onnx with the snapshot's weights): SCALE
 * projects both with the current projector. One pass over both is exact only without batch norm.
 */
function project(g: Graph, p: Preset, model: Model, feats: Value): { proj: Value; past: Value | null } {
  if (!p.losses.some((l) => l.name === 'ird')) return { proj: g.scope('projector', () => mlp(model, 'projector', feats, p.projector)), past: null };
  if (p.fuse) throw new Error(`preset ${p.name}: the ird loss takes the past features per step; it cannot be fused`);
  if (p.projector.some((l) => l.bn)) throw new Error(`preset ${p.name}: the ird loss needs a projector without batch norm`);
  const rows = feats.shape[0] as number;
  const past = g.input('past_features', [p.batch, feats.shape[1] as number]);
  const both = g.scope('projector', () => mlp(model, 'projector', g.concat([feats, past], 0), p.projector));
  return { proj: g.slice(both, [0], [rows], [0]), past: g.slice(both, [rows], [rows + p.batch], [0]) };
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
  /** Set when the graph runs K updates (preset `fuse`). */
  fused: FusedInfo | null;
}

/** The inputs of a fused step beyond the state; every per-step output gains a leading [K] axis. */
export interface FusedInfo {
  updates: number;
  /**
   * Either `crops`, float32 [K, ...crops]: each inner step's crops made on the host; or (preset
   * `cropsInGraph`) `images` uint8 [U, 3, S, S], `index` int64 [K, b] (inner step k's batch as rows
   * of images) and `cropParams` float32 [K, N*b, CROP_PARAM_COUNT] (core/crop-params.ts).
   */
  inputs: { crops: string | null; images: string | null; index: string | null; cropParams: string | null };
}

/**
 * Where one update's state comes from and its results go: the single step reads graph inputs and
 * writes graph outputs; an inner step of a fused run reads the state carried from the step before
 * and hands its results to the fused builder.
 */
interface StepPorts {
  state(name: string, shape: number[]): Value;
  output(v: Value, name: string): void;
}

/** Gradients, diagnostics and the optimizer update of one loss; results go to `ports.output`. */
function emitStep(p: Preset, lg: LossGraph, lr: Value, step: Value, ports: StepPorts): { state: StateEntry[]; terms: string[] } {
  const { g, model } = lg;
  const grads = gradients(g, lg.total, lg.params.map((x) => x.value), { convWeightGrad: p.convWeightGrad, convInputGrad: p.convInputGrad, ...(p.depthwiseWeightGrad ? { depthwiseWeightGrad: p.depthwiseWeightGrad } : {}) });
  const state: StateEntry[] = [];
  const outs: [Value, string][] = [];

  ports.output(lg.total, 'loss');
  for (const [name, t] of lg.terms) ports.output(t, `loss.${name}`);
  ports.output(lg.zbar, 'zbar');
  for (const [name, x] of lg.extras) ports.output(x, name);

  g.scope('diagnostics', () => {
    // Over the whole gradient as one flat vector: three sums of ~177k values instead of three small
    // Mul + ReduceSum + Add chains per parameter tensor (~300 nodes for the edge encoder). Graph.sumAll
    // sums in two stages: one float32 ReduceSum over paper-cifar's 34M squares came out 1.5% low.
    const flat = (vs: Value[]) => (vs.length === 1 ? g.reshape(vs[0], [-1]) : g.concat(vs.map((v) => g.reshape(v, [-1])), 0));
    const gf = flat(grads);
    const gnorm = g.sqrt(g.sumAll(g.mul(gf, gf)));
    ports.output(gnorm, 'grad_norm');
    if (p.gradCos) {
      // Cosine between this step's gradient and the previous step's (the paper's Fig. 1); 0 on the first step.
      const prev = lg.params.map(({ spec }, i) => {
        const name = `diag.prev_grad.${spec.name}`;
        state.push({ name, next: `${name}.next`, shape: spec.shape, role: 'diag', init: 'zeros', embed: false });
        outs.push([grads[i], `${name}.next`]);
        return ports.state(name, spec.shape);
      });
      const pf = flat(prev);
      const dot = g.sumAll(g.mul(pf, gf));
      const prevSq = g.sumAll(g.mul(pf, pf));
      ports.output(g.div(dot, g.add(g.mul(gnorm, g.sqrt(prevSq)), g.scalar(1e-12))), 'grad_cos');
    }
  });

  const opt = makeOptimizer(p.optimizer);
  g.scope('optimizer', () => {
    lg.params.forEach(({ spec, value }, i) => {
      const slots: Record<string, Value> = {};
      for (const slot of opt.slots) {
        const name = `optim.${slot}.${spec.name}`;
        slots[slot] = ports.state(name, spec.shape);
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
  for (const [v, name] of outs) ports.output(v, name);
  return { state: all, terms: [...lg.terms.keys()] };
}

export function buildTrainStep(p: Preset, dtype: 'float32' | 'float64' = 'float32', backbone = presetBackbone(p)): TrainStepGraph {
  if (p.fuse) return buildFusedStep(p, dtype, backbone);
  const lg = buildLoss(p, dtype, backbone);
  const { g, model } = lg;
  const lr = g.input('lr', []);
  const step = g.input('step', []);
  const r = emitStep(p, lg, lr, step, { state: (name, shape) => g.input(name, shape), output: (v, name) => g.output(v, name) });
  return { g, state: r.state, specs: model.specs, terms: r.terms, fused: null };
}

/** A Model whose state tensors come from `bind` (a fused run's carried state) instead of new inputs. */
class BoundModel extends Model {
  constructor(
    g: Graph,
    p: Preset,
    private readonly bind: (name: string, shape: number[]) => Value,
  ) {
    super(g, true, p.activation, p.bnMomentum, convForward(p));
  }

  override state(name: string, shape: number[], role: 'param' | 'buffer', init: StateSpec['init'], decay: boolean): Value {
    if (this.values.has(name)) throw new Error(`state '${name}' declared twice`);
    const v = this.bind(`${role === 'param' ? 'params.' : 'buffers.'}${name}`, shape);
    this.specs.push({ name, shape, role, init, decay });
    this.values.set(name, v);
    return v;
  }
}

/** Gathers made per graph: names count per graph so that the same preset gives the same bytes. */
const gathers = new WeakMap<Graph, number>();
/** ONNX Gather along axis 0 (the builder has no row-select op; the name cannot meet a builder name, which ends in _N). */
function gatherRows(g: Graph, x: Value, index: Value): Value {
  const n = gathers.get(g) ?? 0;
  gathers.set(g, n + 1);
  const out = new Value(g, `gather.${n}.rows`, [...index.shape, ...x.shape.slice(1)], x.dtype);
  g.addNode('Gather', [x, index], [out], { axis: { i: 0 } });
  return out;
}

function stack(g: Graph, xs: Value[]): Value {
  return g.concat(xs.map((x) => g.unsqueeze(x, [0])), 0);
}

/** 1 where |x| is finite (Greater(inf, NaN) is false), as a float. */
function finite(g: Graph, x: Value): Value {
  return g.cast(g.greater(g.scalar(Infinity, x.dtype), g.unary('Abs', x)), x.dtype);
}

/**
 * K updates in one graph (preset `fuse: K`), so the state crosses the host once per K updates:
 * K unrolled copies of the step, each reading the state the one before left. Unrolled rather than
 * an ONNX Loop: every EP runs the plain ops it already runs for one step (Loop bodies fall back to
 * the CPU on some EPs and cannot carry the builder's per-step shapes), and ORT plans memory across
 * the copies as one graph; the cost is a model K times the size (kilobytes: weights are inputs).
 *
 * Inner step k applies only when Trainer.step's guard would: finite loss, gradient norm and new
 * parameters, and an update no larger than MAX_UPDATE_RATIO (10) x the weights' norm; otherwise
 * Where carries the state unchanged into step k + 1. Like the host, a skipped update does not count:
 * step k runs as update number `step` + (updates applied before it) with learning rate
 * lrs[updates applied before it], so skips give what K single steps give.
 */
function buildFusedStep(p: Preset, dtype: 'float32' | 'float64', backbone: Backbone): TrainStepGraph {
  const K = p.fuse!;
  if (!Number.isInteger(K) || K < 1) throw new Error(`preset ${p.name}: fuse must be a positive integer, got ${K}`);
  const g = new Graph(dtype);
  const v = views(p);
  const b = p.batch;
  const s = p.image.size;
  let cropsAt: (k: number) => Value;
  let fusedInputs: FusedInfo['inputs'];
  const at = (k: number) => g.constant([k], [], 'int64');
  if (p.cropsInGraph) {
    // The arrival's distinct images once (the buffer keeps them at the training size), each inner
    // step's batch as rows of them, and the host's crop draws; the graph renders the crops.
    const images = g.input('images', ['U', 3, s, s], 'uint8');
    const index = g.input('index', [K, b], 'int64');
    const params = g.input('crop_params', [K, v * b, CROP_PARAM_COUNT]);
    cropsAt = (k) => buildCrops(g, gatherRows(g, images, gatherRows(g, index, at(k))), gatherRows(g, params, at(k)), { size: s, out: s });
    fusedInputs = { crops: null, images: images.name, index: index.name, cropParams: params.name };
  } else {
    const crops = g.input('crops', [K, v * b, 3, s, s]);
    cropsAt = (k) => gatherRows(g, crops, at(k));
    fusedInputs = { crops: crops.name, images: null, index: null, cropParams: null };
  }
  const lrs = g.input('lrs', [K]);
  const step0 = g.input('step', []);
  const cur = new Map<string, Value>();
  const per = new Map<string, Value[]>();
  const collect = (name: string, x: Value) => per.set(name, [...(per.get(name) ?? []), x]);
  let before = g.scalar(0); // updates applied so far in this run
  const inner: { state: StateEntry[]; terms: string[]; specs: StateSpec[] }[] = [];
  for (let k = 0; k < K; k++) {
    g.scope(`k${k}`, () => {
      // The first inner step reads graph inputs; later ones the state the step before left.
      const bind = (name: string, shape: number[]) => {
        if (k === 0) cur.set(name, g.input(name, shape));
        const x = cur.get(name);
        if (!x) throw new Error(`fused step: no carried state '${name}'`);
        return x;
      };
      const crops = cropsAt(k);
      const model = new BoundModel(g, p, bind);
      const lg = lossOn(g, p, crops, model, backbone);
      const lr = gatherRows(g, lrs, g.cast(before, 'int64'));
      const outs = new Map<string, Value>();
      const r = emitStep(p, lg, lr, g.add(step0, before), { state: bind, output: (x, name) => outs.set(name, x) });
      // The host guard (Trainer.step, sane()), in float32 sums: d2 <= 100 max(w2, 1e-6) is
      // |update| <= 10 max(|w|, 1e-3); d2 is non-finite exactly when a new parameter is (the old are finite).
      const ok = g.scope('guard', () => {
        let d2: Value | null = null;
        let w2: Value | null = null;
        for (const e of r.state) {
          if (e.role !== 'param') continue;
          const old = cur.get(e.name)!;
          const d = g.sub(outs.get(e.next)!, old);
          const axes = e.shape.map((_, i) => i);
          const dd = g.reduceSum(g.mul(d, d), axes, false);
          const ww = g.reduceSum(g.mul(old, old), axes, false);
          d2 = d2 ? g.add(d2, dd) : dd;
          w2 = w2 ? g.add(w2, ww) : ww;
        }
        const small = g.sub(g.scalar(1), g.cast(g.greater(d2!, g.mul(g.max(w2!, g.scalar(1e-6)), g.scalar(100))), dtype));
        const flag = [finite(g, outs.get('loss')!), finite(g, outs.get('grad_norm')!), finite(g, d2!), small].reduce((a, c) => g.mul(a, c));
        return flag;
      });
      const apply = g.greater(ok, g.scalar(0.5));
      // Behind a stop-gradient: step k + 1 differentiates its own forward pass, not this one.
      for (const e of r.state) cur.set(e.name, g.stopGradient(g.whereOp(apply, outs.get(e.next)!, cur.get(e.name)!)));
      before = g.add(before, ok);
      for (const [name, x] of outs) if (!name.endsWith('.next')) collect(name, x);
      collect('applied', ok);
      inner.push({ ...r, specs: model.specs });
    });
  }
  const { state, terms, specs } = inner[K - 1];
  for (const [name, xs] of per) g.output(stack(g, xs), name);
  for (const e of state) g.output(cur.get(e.name)!, e.next);
  return { g, state, specs, terms, fused: { updates: K, inputs: fusedInputs } };
}

/** Inference graph: images in [0, 1] (any batch) -> backbone features and the L2-normalised embedding. */
export function buildEmbed(p: Preset, backbone = presetBackbone(p)): { g: Graph; specs: StateSpec[] } {
  const g = new Graph('float32');
  const s = p.image.size;
  const images = g.input('images', ['batch', 3, s, s]);
  const model = new Model(g, false, p.activation, p.bnMomentum);
  const { features: feats, outputs } = backbone(model, normalizeInput(g, images, p));
  const proj = g.scope('projector', () => mlp(model, 'projector', feats, p.projector));
  g.output(feats, 'features');
  g.output(l2normalize(g, proj), 'embedding');
  // An imported model's own outputs, so an export of it can be checked against this graph.
  for (const [name, v] of outputs ?? []) g.output(v, `source.${name}`);
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
      case 'given':
        a.set(s.init.data);
        break;
    }
    out.set(`${s.role === 'param' ? 'params.' : 'buffers.'}${s.name}`, a);
  }
  return out;
}
