// Training in the tab: the agent's Trainer and Learner (bundled for the browser by the server from the
// same sources, /page/train.bundle.js) on the training artifacts `ssocl serve --artifacts` names, fed
// with images dropped on the page, preprocessed as the agent's frames are. Each `newPerArrival`
// images make an arrival: K steps, the buffer updated, exactly the agent's loop. The encoder can be
// downloaded as `ssocl run` exports it. WebGPU where it starts, WASM otherwise.

import { lineChart } from './charts.js';
import { coverResize } from './preprocess.js';

const $ = (id) => document.getElementById(id);
const status = (msg) => ($('train-status').textContent = msg);
const chart = lineChart($('chart-train'), { y: 'loss', height: 180 });

let bundle = null;
let learner = null;
const waiting = [];
const losses = [];
let busy = Promise.resolve();

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
  await loadOrt(ep);
  bundle ??= await import('/page/train.bundle.js');
  const trainer = await bundle.openTrainer('/artifacts/', ep);
  learner = new bundle.Learner(trainer, bundle.defaultLearnerConfig(trainer, { seed }));
  waiting.length = 0;
  losses.length = 0;
  const p = trainer.manifest.preset;
  status(`${trainer.manifest.name} on ${trainer.ep}: ${p.image.size}x${p.image.size} images, ${p.agent.newPerArrival} per arrival, K ${learner.cfg.updates}, buffer ${learner.cfg.buffer.capacity}`);
  return { ep: trainer.ep, size: p.image.size, perArrival: p.agent.newPerArrival };
}

/** One arrival through the agent's Learner; the report as plain data. */
async function arrive(items) {
  const r = await learner.arrive(items);
  for (const s of r.steps) losses.push([learner.trainer.steps, s.loss]);
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
  encoder: () => Array.from(bundle.encoderBytes(learner.trainer)),
};
