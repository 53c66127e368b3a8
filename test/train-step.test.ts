// The whole compiled step: whole-network gradient checks that hold through ReLU kinks (Softplus
// build; path integral on the ReLU build), negative controls, alternative formulations agreeing,
// optimizer updates against an independent implementation, and over-fitting a fixed batch.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Value, type TypedData } from '../tools/graph/graph.ts';
import { GRAD_RULES, gradients, type ConvWeightGrad } from '../tools/graph/grad.ts';
import { buildLoss, buildTrainStep, initState } from '../tools/artifacts/build.ts';
import type { Preset } from '../tools/artifacts/presets.ts';
import { Rng } from '../core/rng.ts';
import { run, session } from './helpers/ort.ts';
import { tinyPreset } from './helpers/tiny.ts';

// A gentler temperature and loss weights than the defaults: the check is about the gradient, and a
// smoother loss keeps the quadrature error far below the tolerance.
const SMOOTH = ['tau=0.2', 'losses=[{"name":"mcc","weight":1},{"name":"tcr","weight":0.05}]'];

interface Net {
  eval(params: Map<string, Float32Array>): Promise<{ loss: number; grads: Map<string, Float32Array> }>;
  init: Map<string, Float32Array>;
  names: string[];
}

/** Loss and gradients of a preset's network on fixed random crops. */
async function lossNet(p: Preset, convWeightGrad: ConvWeightGrad = 'im2col'): Promise<Net> {
  const lg = buildLoss(p);
  const g = lg.g;
  const grads = gradients(g, lg.total, lg.params.map((x) => x.value), { convWeightGrad });
  g.output(lg.total, 'loss');
  grads.forEach((gv, i) => g.output(gv, `grad.${lg.params[i].spec.name}`));
  const sess = await session(g);
  const init = initState(lg.model.specs, 11);
  const rng = new Rng(5);
  const crops = Float32Array.from({ length: lg.crops.size() }, () => rng.uniform());
  const inputs = g.inputs;
  const names = lg.params.map((x) => x.value.name);
  return {
    init,
    names,
    async eval(params) {
      const feeds = new Map<Value, TypedData>();
      for (const v of inputs) feeds.set(v, v.name === 'crops' ? crops : params.get(v.name) ?? init.get(v.name)!);
      const out = await run(sess, g, feeds);
      const gm = new Map<string, Float32Array>();
      lg.params.forEach((x) => gm.set(x.value.name, out[`grad.${x.spec.name}`] as Float32Array));
      return { loss: out.loss[0] as number, grads: gm };
    },
  };
}

function direction(net: Net, rng: Rng, names: string[], scale: number): Map<string, Float32Array> {
  const d = new Map<string, Float32Array>();
  for (const n of names) {
    const p = net.init.get(n)!;
    // Relative to the tensor's own scale, so BN gammas and conv weights move comparably.
    const rms = Math.sqrt(p.reduce((a, v) => a + v * v, 0) / p.length) || 1;
    d.set(n, Float32Array.from(p, () => rng.normal() * rms * scale));
  }
  return d;
}

function shifted(net: Net, d: Map<string, Float32Array>, t: number): Map<string, Float32Array> {
  const m = new Map(net.init);
  for (const [n, dv] of d) m.set(n, Float32Array.from(net.init.get(n)!, (v, i) => v + t * dv[i]));
  return m;
}

function dot(grads: Map<string, Float32Array>, d: Map<string, Float32Array>): number {
  let s = 0;
  for (const [n, dv] of d) {
    const gv = grads.get(n)!;
    for (let i = 0; i < dv.length; i++) s += gv[i] * dv[i];
  }
  return s;
}

/**
 * Worst relative error of central differences along a random direction in each parameter tensor
 * (smooth nets). Richardson extrapolation of eps and eps/2 cancels the O(eps^2) curvature term,
 * which at float32 precision cannot be made small by shrinking eps alone.
 */
async function softplusCheck(net: Net): Promise<number> {
  const rng = new Rng(9);
  const base = await net.eval(net.init);
  const central = async (d: Map<string, Float32Array>, eps: number) =>
    ((await net.eval(shifted(net, d, eps))).loss - (await net.eval(shifted(net, d, -eps))).loss) / (2 * eps);
  let worst = 0;
  for (const name of net.names) {
    const d = direction(net, rng, [name], 1);
    const analytic = dot(base.grads, d);
    const fd = (4 * (await central(d, 5e-3)) - (await central(d, 1e-2))) / 3;
    // 3e-4 absolute: float32 rounding of the loss (~1e-6) over 2 eps, times Richardson's 4/3.
    const err = Math.max(0, Math.abs(fd - analytic) - 3e-4) / Math.max(Math.abs(analytic), Math.abs(fd), 1e-6);
    if (process.env.SSOCL_DEBUG) console.log(name, analytic, fd, err);
    worst = Math.max(worst, err);
  }
  return worst;
}

/**
 * L(x + d) - L(x) against Simpson's integral (64 intervals) of grad . d along the segment: exact for
 * a correct gradient up to quadrature error at the ReLU kinks the segment crosses, which a short
 * segment keeps few.
 */
async function pathIntegralCheck(net: Net, scale: number): Promise<number> {
  const d = direction(net, new Rng(13), net.names, scale);
  const l0 = (await net.eval(net.init)).loss;
  const l1 = (await net.eval(shifted(net, d, 1))).loss;
  const K = 64;
  let integral = 0;
  for (let k = 0; k <= K; k++) {
    const w = k === 0 || k === K ? 1 : k % 2 ? 4 : 2;
    integral += (w * dot((await net.eval(shifted(net, d, k / K))).grads, d)) / (3 * K);
  }
  return Math.abs(l1 - l0 - integral) / Math.abs(l1 - l0);
}


test('whole network (Softplus build): gradient of every parameter tensor matches central differences', async () => {
  const worst = await softplusCheck(await lossNet(tinyPreset(['activation="softplus"', ...SMOOTH])));
  assert.ok(worst < 5e-3, `worst relative error ${worst}`);
});

test('negative control: the Softplus check catches a broken rule', async () => {
  const saved = GRAD_RULES.Softplus;
  GRAD_RULES.Softplus = (g, n, [gy]) => [g.mul(gy!, g.sigmoid(g.mul(n.inputs[0]!, g.scalar(2))))];
  try {
    const worst = await softplusCheck(await lossNet(tinyPreset(['activation="softplus"', ...SMOOTH])));
    assert.ok(worst > 5e-2, `broken rule went unnoticed (worst ${worst})`);
  } finally {
    GRAD_RULES.Softplus = saved;
  }
});

test('whole network (ReLU build): path-integral check holds through the kinks', async () => {
  const err = await pathIntegralCheck(await lossNet(tinyPreset(SMOOTH)), 0.005);
  assert.ok(err < 1e-2, `relative error ${err}`);
});

test('negative control: the path-integral check catches a broken ReLU gradient', async () => {
  const saved = GRAD_RULES.Relu;
  GRAD_RULES.Relu = (_g, _n, [gy]) => [gy]; // ignores the mask
  try {
    const err = await pathIntegralCheck(await lossNet(tinyPreset(SMOOTH)), 0.005);
    assert.ok(err > 0.1, `broken rule went unnoticed (error ${err})`);
  } finally {
    GRAD_RULES.Relu = saved;
  }
});

// The preset names the formulation too: unfold-forward changes the forward it builds (Graph.unfoldConv).
for (const alt of ['batch-as-channels', 'im2col-offsets', 'batched-offsets', 'unfold-conv', 'unfold-depthwise', 'unfold-forward'] as const) test(`conv weight-gradient formulations agree on the whole network: im2col vs ${alt}`, async () => {
  const a = await (await lossNet(tinyPreset(['convWeightGrad="im2col"']), 'im2col')).eval((await lossNet(tinyPreset(['convWeightGrad="im2col"']))).init);
  const setsB = ['convInputGrad="conv"', `convWeightGrad="${alt}"`];
  const unfolded = buildLoss(tinyPreset(setsB)).g.nodes.filter((n) => n.composite?.op === 'UnfoldConv').length;
  assert.equal(unfolded, alt === 'unfold-forward' ? 6 : 0, 'every dense convolution (stem, 2 x 2 in the blocks, 1 downsample) built as Graph.unfoldConv');
  const netB = await lossNet(tinyPreset(setsB), alt);
  const b = await netB.eval(netB.init);
  assert.ok(Math.abs(a.loss - b.loss) <= 1e-6 * Math.abs(a.loss));
  for (const [n, ga] of a.grads) {
    const gb = b.grads.get(n)!;
    const scale = Math.max(...ga.map(Math.abs), 1e-6);
    const err = Math.max(...ga.map((v, i) => Math.abs(v - gb[i])));
    assert.ok(err <= 1e-4 * scale, `${n}: max difference ${err} (scale ${scale})`);
  }
});

/** Runs the compiled step once from `state`, returning every output. */
async function stepOnce(p: Preset, state: Map<string, Float32Array>, lr: number, stepNo: number) {
  const ts = buildTrainStep(p);
  const sess = await session(ts.g);
  const rng = new Rng(5);
  const feeds = new Map<Value, TypedData>();
  for (const v of ts.g.inputs) {
    if (v.name === 'crops') feeds.set(v, Float32Array.from({ length: v.size() }, () => rng.uniform()));
    else if (v.name === 'lr') feeds.set(v, Float32Array.of(lr));
    else if (v.name === 'step') feeds.set(v, Float32Array.of(stepNo));
    else feeds.set(v, state.get(v.name) ?? new Float32Array(v.size()));
  }
  return { out: await run(sess, ts.g, feeds), ts };
}

test('diagnostics: grad_norm and grad_cos are the norm and the cosine of the whole gradient (against the per-tensor gradients)', async () => {
  // The step hands its gradient back as diag.prev_grad.*.next; the cosine is taken against the previous
  // gradient fed in as diag.prev_grad.* state, so a fed-in g1 and the step's own g2 give both figures.
  const p = tinyPreset(['gradCos=true']);
  const net = await lossNet(p);
  const rng = new Rng(11);
  const state = new Map(net.init);
  const prev = new Map<string, Float32Array>();
  for (const name of net.names) {
    const g1 = Float32Array.from({ length: net.init.get(name)!.length }, () => rng.normal());
    prev.set(name, g1);
    state.set(`diag.prev_grad.${name.replace(/^params\./, '')}`, g1);
  }
  const { out } = await stepOnce(p, state, 0.01, 2);
  let nn = 0;
  let dot = 0;
  let pp = 0;
  for (const name of net.names) {
    const g2 = out[`diag.prev_grad.${name.replace(/^params\./, '')}.next`] as Float32Array;
    const g1 = prev.get(name)!;
    assert.equal(g2.length, g1.length, name);
    g2.forEach((v, i) => {
      nn += v * v;
      dot += v * g1[i];
      pp += g1[i] * g1[i];
    });
  }
  const norm = Math.sqrt(nn);
  const cos = dot / (norm * Math.sqrt(pp));
  const gotNorm = (out.grad_norm as Float32Array)[0];
  const gotCos = (out.grad_cos as Float32Array)[0];
  assert.ok(Math.abs(gotNorm - norm) <= 1e-5 * norm, `grad_norm ${gotNorm} vs ${norm}`);
  assert.ok(Math.abs(gotCos - cos) <= 1e-5, `grad_cos ${gotCos} vs ${cos}`);
  assert.ok(Math.abs(cos) > 1e-4, 'a cosine that tells a wrong sum from a right one');
});

test('diagnostics and LARS norms stay exact over millions of gradient values (a 4096 x 4096 projector layer)', async () => {
  // bench/peer on paper-cifar (34M parameters): the step's grad_norm came out 0.76% below PyTorch's, in
  // float32 and float64 alike, while the gradients agreed. One float32 ReduceSum over all the squares loses
  // small terms once its accumulators are large; a 4096 x 4096 gradient's LARS norm was 0.1% low the same
  // way. Against the step's own gradient (diag.prev_grad.*.next) summed on the host in float64.
  const wide = 'projector=[{"out":4096,"bn":true,"act":true},{"out":4096}]';
  const lars = 'optimizer={"type":"sgd","momentum":0,"weightDecay":0,"lars":true,"eta":0.005,"clip":false}';
  const p = tinyPreset([wide, lars, 'gradCos=true']);
  const state = initState(buildLoss(p).model.specs, 11);
  const lr = 0.01;
  const { out } = await stepOnce(p, state, lr, 1);
  let total = 0;
  const big = 'projector.1.linear.weight';
  let gg = 0;
  let pp = 0;
  let dd = 0;
  let dg = 0;
  for (const [name, w] of state) {
    if (!name.startsWith('params.')) continue;
    const g = out[`diag.prev_grad.${name.slice('params.'.length)}.next`] as Float32Array;
    for (const v of g) total += v * v;
    if (name !== `params.${big}`) continue;
    const next = out[`${name}.next`] as Float32Array;
    w.forEach((v, i) => {
      gg += g[i] * g[i];
      pp += v * v;
      dd += (next[i] - v) ** 2;
      dg += (next[i] - v) * g[i];
    });
  }
  assert.equal(state.get(`params.${big}`)!.length, 4096 * 4096);
  const norm = Math.sqrt(total);
  const got = (out.grad_norm as Float32Array)[0];
  assert.ok(Math.abs(got - norm) <= 1e-5 * norm, `grad_norm ${got} vs ${norm} (relative ${(got - norm) / norm})`);
  // LARS without decay, momentum or clipping: the update is -lr * eta |w| / (|g| + 1e-8) * g.
  assert.ok(dg < 0, 'the update opposes the gradient');
  const ratio = Math.sqrt(dd / gg) / lr;
  const want = (0.005 * Math.sqrt(pp)) / (Math.sqrt(gg) + 1e-8);
  assert.ok(Math.abs(ratio - want) <= 1e-5 * want, `${big}: LARS ratio ${ratio} vs ${want} (relative ${(ratio - want) / want})`);
});

test('an SGD step (no momentum, decay or LARS) moves every parameter by -lr times its gradient', async () => {
  const p = tinyPreset(['optimizer={"type":"sgd","momentum":0,"weightDecay":0,"lars":false}']);
  const net = await lossNet(p);
  const { grads } = await net.eval(net.init);
  const lr = 0.05;
  const { out } = await stepOnce(p, net.init, lr, 1);
  for (const name of net.names) {
    const before = net.init.get(name)!;
    const after = out[`${name}.next`] as Float32Array;
    const g = grads.get(name)!;
    before.forEach((v, i) => {
      const want = -lr * g[i];
      assert.ok(Math.abs(after[i] - v - want) <= 1e-6 + 1e-4 * Math.abs(want), `${name}[${i}]: moved ${after[i] - v}, expected ${want}`);
    });
  }
});

test('SGD + momentum + LARS and AdamW match an independent implementation over two steps', async () => {
  for (const opt of [
    { type: 'sgd', momentum: 0.9, weightDecay: 1e-4, lars: true, eta: 0.005, clip: true },
    { type: 'adamw', weightDecay: 0.05, beta1: 0.9, beta2: 0.999, eps: 1e-8 },
  ]) {
    const p = tinyPreset([`optimizer=${JSON.stringify(opt)}`]);
    const net = await lossNet(p);
    const lr = 0.1;
    const decay = new Set(buildLoss(p).params.filter((x) => x.spec.decay).map((x) => x.value.name));
    let state = new Map(net.init);
    const ref = new Map<string, { buf: Float64Array; m: Float64Array; v: Float64Array }>();
    for (let step = 1; step <= 2; step++) {
      const { out, ts } = await stepOnce(p, state, lr, step);
      // The step's own gradient at this state: same crops, from the loss graph.
      const { grads } = await net.eval(state);
      for (const name of net.names) {
        const w = state.get(name)!;
        const g = grads.get(name)!;
        const r = ref.get(name) ?? { buf: new Float64Array(w.length), m: new Float64Array(w.length), v: new Float64Array(w.length) };
        ref.set(name, r);
        const expect = new Float64Array(w.length);
        if (opt.type === 'sgd') {
          const wd = opt.weightDecay!;
          let ratio = 1;
          if (decay.has(name)) {
            const pn = Math.hypot(...w);
            const gn = Math.hypot(...g);
            if (pn > 0 && gn > 0) ratio = Math.min((opt.eta! * pn) / (gn + wd * pn + 1e-8) / lr, 1);
          }
          for (let i = 0; i < w.length; i++) {
            const u = (g[i] + (decay.has(name) ? wd * w[i] : 0)) * ratio;
            r.buf[i] = opt.momentum! * r.buf[i] + u;
            expect[i] = w[i] - lr * r.buf[i];
          }
        } else {
          for (let i = 0; i < w.length; i++) {
            r.m[i] = opt.beta1! * r.m[i] + (1 - opt.beta1!) * g[i];
            r.v[i] = opt.beta2! * r.v[i] + (1 - opt.beta2!) * g[i] * g[i];
            const mh = r.m[i] / (1 - opt.beta1! ** step);
            const vh = r.v[i] / (1 - opt.beta2! ** step);
            expect[i] = w[i] - lr * (mh / (Math.sqrt(vh) + opt.eps!) + (decay.has(name) ? opt.weightDecay! * w[i] : 0));
          }
        }
        const got = out[`${name}.next`] as Float32Array;
        const scale = Math.max(...expect.map((v, i) => Math.abs(v - w[i])), 1e-8);
        const err = Math.max(...got.map((v, i) => Math.abs(v - expect[i])));
        assert.ok(err <= 2e-3 * scale + 1e-6, `${opt.type} step ${step} ${name}: error ${err} (update scale ${scale})`);
      }
      const next = new Map<string, Float32Array>();
      for (const s of ts.state) next.set(s.name, out[s.next] as Float32Array);
      state = next;
    }
  }
});

test('a fixed batch is over-fitted: the loss falls on average over 50 steps', async () => {
  const p = tinyPreset(['encoder.widths=[8,16]', 'image.size=16', 'batch=16', 'crops=4', 'projector=[{"out":64,"bn":true,"act":true},{"out":32}]']);
  const ts = buildTrainStep(p);
  const sess = await session(ts.g);
  const rng = new Rng(3);
  let state = initState(ts.specs, 1) as Map<string, Float32Array>;
  const crops = Float32Array.from({ length: ts.g.inputs.find((v) => v.name === 'crops')!.size() }, () => rng.uniform());
  const losses: number[] = [];
  for (let step = 1; step <= 50; step++) {
    const feeds = new Map<Value, TypedData>();
    for (const v of ts.g.inputs) {
      if (v.name === 'crops') feeds.set(v, crops);
      else if (v.name === 'lr') feeds.set(v, Float32Array.of(p.lr));
      else if (v.name === 'step') feeds.set(v, Float32Array.of(step));
      else feeds.set(v, state.get(v.name) ?? new Float32Array(v.size()));
    }
    const out = await run(sess, ts.g, feeds);
    losses.push(out.loss[0] as number);
    const next = new Map<string, Float32Array>();
    for (const s of ts.state) next.set(s.name, out[s.next] as Float32Array);
    state = next;
  }
  const windows = [0, 1, 2, 3, 4].map((w) => losses.slice(w * 10, w * 10 + 10).reduce((a, b) => a + b, 0) / 10);
  for (let w = 1; w < windows.length; w++) assert.ok(windows[w] < windows[w - 1], `window means ${windows.map((x) => x.toFixed(3)).join(' > ')}`);
});
