// Training in the tab: the agent's Trainer and Learner (bundled for the browser by the server from the
// same sources, /page/train.bundle.js) on the training artifacts `ssocl serve --artifacts` names, fed
// with images dropped on the page, preprocessed as the agent's frames are. Each `newPerArrival`
// images make an arrival: K steps, the buffer updated, exactly the agent's loop. The encoder can be
// downloaded as `ssocl run` exports it. WebGPU where it starts, WASM otherwise (and a line says so).
// While an arrival trains, "training step n" shows which step runs; a step still running after
// SLOW_MS says it is still working (WebGPU on a CPU compiles its shaders on the first step: minutes).

import { lineChart } from './charts.js';
import { coverResize } from './preprocess.js';

const $ = (id) => document.getElementById(id);
const status = (msg) => ($('train-status').textContent = msg);
const chart = lineChart($('chart-train'), { y: 'loss', height: 180 });
const note = (msg) => {
  $('train-note').hidden = !msg;
  $('train-note').textContent = msg;
};
const SLOW_MS = 10_000;

let bundle = null;
let learner = null;
const waiting = [];
/** [step number, loss] of each applied step. */
const losses = [];
let busy = Promise.resolve();
/** What runs now ('': nothing), e.g. 'training step 7', and since when. */
const running = { what: '', since: 0 };

function showRunning(what) {
  if (what !== running.what) running.since = performance.now();
  running.what = what;
  renderRunning();
}

function renderRunning() {
  const el = $('train-running');
  el.hidden = !running.what;
  if (!running.what) return;
  const ms = performance.now() - running.since;
  const why = (learner?.trainer.ep ?? $('train-ep').value) === 'webgpu' ? 'WebGPU compiles its shaders on first use; on a CPU adapter that can take minutes' : 'a large model on WASM, one thread';
  el.textContent = ms < SLOW_MS ? `${running.what}…` : `${running.what}… still working after ${Math.floor(ms / 1000)} s (${why})`;
}
setInterval(renderRunning, 1000);

/** The indicator follows each step the Learner runs (the trainer's own step, wrapped on this instance). */
function watchSteps(trainer) {
  const step = trainer.step.bind(trainer);
  trainer.step = (crops, lr) => {
    showRunning(`training step ${trainer.steps + 1}`);
    return step(crops, lr);
  };
}

/** The EP to ask for: WebGPU only where the browser offers an adapter; otherwise WASM, and why. */
async function chooseEp(ep) {
  if (ep !== 'webgpu') return { ep, why: '' };
  const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
  return adapter ? { ep, why: '' } : { ep: 'wasm', why: `WebGPU is not available in this browser (${navigator.gpu ? 'no adapter' : 'no navigator.gpu'}): training on WASM instead` };
}

/** onnxruntime-web for the bundle (it reaches ORT through globalThis.ort), the WebGPU build when asked. */
async function loadOrt(ep) {
  const ort = await import(ep === 'webgpu' ? '/vendor/ort/ort.webgpu.min.mjs' : '/vendor/ort/ort.wasm.min.mjs');
  ort.env.wasm.wasmPaths = '/vendor/ort/';
  ort.env.wasm.numThreads = 1;
  ort.env.logLevel = 'error';
  globalThis.ort = ort;
}

/** Opens the artifacts with a fresh Trainer and Learner (seed: the agent's default, 0). */
async function open(ep = 'wasm', seed = 0) {
  // The WebGPU build of onnxruntime-web runs WASM too: a fallback needs no other build.
  await loadOrt(ep);
  bundle ??= await import('/page/train.bundle.js');
  let use = await chooseEp(ep);
  let trainer;
  showRunning(`opening the training step on ${use.ep}`);
  try {
    trainer = await bundle.openTrainer('/artifacts/', use.ep);
  } catch (e) {
    if (use.ep !== 'webgpu') throw e;
    use = { ep: 'wasm', why: `WebGPU did not start (${e.message}): training on WASM instead` };
    trainer = await bundle.openTrainer('/artifacts/', 'wasm');
  } finally {
    showRunning('');
  }
  note(use.why);
  watchSteps(trainer);
  learner = new bundle.Learner(trainer, bundle.defaultLearnerConfig(trainer, { seed }));
  waiting.length = 0;
  losses.length = 0;
  const p = trainer.manifest.preset;
  status(`${trainer.manifest.name} on ${trainer.ep}: ${p.image.size}x${p.image.size} images, ${p.agent.newPerArrival} per arrival, K ${learner.cfg.updates}, buffer ${learner.cfg.buffer.capacity}`);
  return { ep: trainer.ep, size: p.image.size, perArrival: p.agent.newPerArrival };
}

/** One arrival through the agent's Learner; the report as plain data. */
async function arrive(items) {
  showRunning(`arrival ${learner.arrivals + 1}: adding ${items.length} images to the buffer`);
  let r;
  try {
    r = await learner.arrive(items);
  } finally {
    showRunning('');
  }
  // Each step at its own number (a skipped step changed nothing: its number is the next one's).
  for (const s of r.steps) if (s.applied) losses.push([s.step, s.loss]);
  $('chart-train').hidden = losses.length === 0;
  chart.set([{ label: 'loss' }], [losses.map((l) => l[0]), losses.map((l) => l[1])]);
  status(`step ${learner.trainer.steps}, buffer ${learner.buffer.size}, last loss ${r.steps.at(-1)?.loss.toFixed(4) ?? '– (the buffer is not full enough for a batch yet)'}`);
  const a = $('train-download');
  if (learner.trainer.steps > 0) {
    URL.revokeObjectURL(a.href);
    a.href = URL.createObjectURL(new Blob([bundle.encoderBytes(learner.trainer)]));
    a.download = `encoder-browser-${learner.trainer.steps}.onnx`;
    a.hidden = false;
  }
  return { steps: r.steps.map((s) => ({ step: s.step, loss: s.loss, terms: s.terms, applied: s.applied })), trained: r.trained, buffer: learner.buffer.size };
}

async function takeFiles(list) {
  if (!learner) await open($('train-ep').value);
  const size = learner.trainer.manifest.preset.image.size;
  const per = learner.trainer.manifest.preset.agent.newPerArrival;
  for (const file of list) {
    try {
      const bmp = await createImageBitmap(file);
      const c = new OffscreenCanvas(bmp.width, bmp.height);
      c.getContext('2d').drawImage(bmp, 0, 0);
      waiting.push({ key: file.name, image: coverResize(c.getContext('2d').getImageData(0, 0, bmp.width, bmp.height).data, bmp.width, bmp.height, size) });
    } catch (e) {
      status(`cannot read ${file.name}: ${e.message}`);
    }
    while (waiting.length >= per) await arrive(waiting.splice(0, per));
  }
  if (waiting.length) status(`${waiting.length} image(s) waiting for an arrival of ${per}`);
}

/** Plain arrays of a Map of Float32Arrays (for the tests). */
const stateOf = (t) => Object.fromEntries([...t.state].map(([k, v]) => [k, Array.from(v)]));

$('train-start').addEventListener('click', () => (busy = busy.then(() => open($('train-ep').value)).catch((e) => status(e.message))));
$('train-files').addEventListener('change', (e) => (busy = busy.then(() => takeFiles([...e.target.files])).catch((err) => status(err.message))));
const zone = $('train-files').parentElement;
zone.addEventListener('dragover', (e) => e.preventDefault());
zone.addEventListener('drop', (e) => {
  e.preventDefault();
  e.stopPropagation();
  busy = busy.then(() => takeFiles([...(e.dataTransfer?.files ?? [])])).catch((err) => status(err.message));
});

// For the browser tests: the same calls Node's Trainer and Learner take.
window.ssoclTrain = {
  open,
  /** One training step on given crops (float32, the manifest's crops layout). */
  async step(crops, lr) {
    const r = await learner.trainer.step(new Float32Array(crops), lr);
    return { loss: r.loss, terms: r.terms, applied: r.applied, state: stateOf(learner.trainer) };
  },
  /** One arrival of uint8 CHW images. */
  arrive: (images) => arrive(images.map((im, i) => ({ key: `test-${i}`, image: Uint8Array.from(im) }))),
  state: () => stateOf(learner.trainer),
  /** The loss chart's points, [step, loss]. */
  losses: () => losses.map((l) => [...l]),
  encoder: () => Array.from(bundle.encoderBytes(learner.trainer)),
};
