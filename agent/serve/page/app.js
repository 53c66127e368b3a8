// The dashboard: follows /events (the server's view of the agent's files) into charts and panels, and
// wires the "try the model" panel to the model in the page. window.ssocl exposes the live state for
// the browser tests (and for a curious console).

import { fmt, lineChart } from './charts.js';
import { append, thinOlderHalf } from './history.js';
import { PageModel } from './model.js';
import { coverResize, toInput } from './preprocess.js';
import { rates } from './rates.js';

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const state = { steps: [], evals: [], health: [], model: null, quarantine: null, buffer: null, presence: null, status: null, events: 0, dirs: null };
/** The page keeps at most this many step points; beyond it the older half is thinned. */
const MAX_POINTS = 20000;
/** ... and of eval and health records (the server keeps as many). */
const MAX_RECORDS = 5000;

const charts = {
  loss: lineChart($('chart-loss'), { y: 'loss' }),
  terms: lineChart($('chart-terms'), { y: 'term' }),
  rate: lineChart($('chart-rate'), { y: 'per second', y2: 'crops/s' }),
  grad: lineChart($('chart-grad'), { y: 'cosine', y2: 'grad norm' }),
  mem: lineChart($('chart-mem'), { y: 'MB' }),
  buffer: lineChart($('chart-buffer'), { y: 'entries', y2: 'mean NN cosine' }),
  health: lineChart($('chart-health'), { y: 'rank', y2: 'cosine' }),
  eval: lineChart($('chart-eval'), { y: '%' }),
};

function drawCharts() {
  const s = state.steps;
  const x = s.map((p) => p.step);
  const col = (f) => s.map(f);
  // The loss of one step is noisy (a batch of new and replayed frames): an EMA beside it shows the trend.
  let ema = null;
  const smooth = col((p) => (p.loss === null ? ema : (ema = ema === null ? p.loss : 0.95 * ema + 0.05 * p.loss)));
  charts.loss.set([{ label: 'loss', color: 'rgba(9,105,218,.35)' }, { label: 'EMA', color: '#0969da' }], [x, col((p) => p.loss), smooth]);
  const terms = [...new Set(s.flatMap((p) => Object.keys(p.terms)))].sort();
  charts.terms.set(terms.map((t) => ({ label: t })), [x, ...terms.map((t) => col((p) => p.terms[t] ?? null))]);
  const r = rates(s);
  charts.rate.set([{ label: 'steps/s' }, { label: 'frames/s' }, { label: 'crops/s', right: true }], [x, r.sps, r.fps, col((p) => p.cropsPerS)]);
  // Artifacts built with gradCos=false do not report it (it keeps the previous gradient as extra state).
  const measured = s.some((p) => p.gradCos !== null);
  charts.grad.set([{ label: measured || !s.length ? 'gradient cosine' : 'gradient cosine (not measured by these artifacts)' }, { label: 'grad norm', right: true }], [x, col((p) => p.gradCos), col((p) => p.gradNorm)]);
  charts.mem.set([{ label: 'rss' }, { label: 'heap' }], [x, col((p) => p.rss), col((p) => p.heap)]);
  charts.buffer.set([{ label: 'entries' }, { label: 'mean NN cosine', right: true }], [x, col((p) => p.buffer), col((p) => p.nnSim)]);
  if (state.health.length) {
    $('card-health').hidden = false;
    const h = state.health;
    charts.health.set(
      [{ label: 'rank', points: true }, { label: 'mean cos', right: true, points: true }, { label: 'alignment', right: true, points: true }],
      [h.map((v) => v.step), h.map((v) => v.rank ?? null), h.map((v) => v.meanCos ?? null), h.map((v) => v.alignment ?? null)],
    );
  }
  if (state.evals.length) {
    $('card-eval').hidden = false;
    const e = state.evals;
    const keys = [...new Set(e.flatMap((v) => Object.keys(v).filter((k) => typeof v[k] === 'number' && !['percent', 'step', 'frames'].includes(k))))].sort();
    charts.eval.set(keys.map((k) => ({ label: k, points: true })), [e.map((v) => v.step), ...keys.map((k) => e.map((v) => v[k] ?? null))]);
  }
  const last = s.at(-1);
  const rl = r.sps.at(-1);
  $('summary').textContent = last
    ? `step ${last.step} · frames ${last.frames ?? '–'} · loss ${fmt(last.loss)} · ${fmt(rl ?? NaN)} steps/s · ${fmt(r.fps.at(-1) ?? NaN)} frames/s · last step ${new Date(last.t).toLocaleTimeString()}`
    : 'no steps yet';
}

let drawPending = false;
function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  // At most a few redraws a second however fast the steps come.
  setTimeout(() => {
    drawPending = false;
    drawCharts();
  }, 250);
}

function onMetrics(m) {
  const had = state.steps.length > 0;
  if (m.reset) {
    state.steps = [];
    state.evals = [];
    state.health = [];
  }
  // Appended one by one (history.js): a long run's history is 100,000+ points.
  append(state.steps, m.steps);
  append(state.evals, m.evals);
  append(state.health, m.health);
  state.steps = thinOlderHalf(state.steps, MAX_POINTS);
  state.evals = thinOlderHalf(state.evals, MAX_RECORDS);
  state.health = thinOlderHalf(state.health, MAX_RECORDS);
  if (had !== state.steps.length > 0) renderWaiting();
  scheduleDraw();
}

/** An agent that trains, idles or is starting: the page is not waiting for it, whatever it has not written yet. */
const agentActive = () => state.steps.length > 0 || ['starting', 'training', 'idle', 'stopping'].includes(state.status?.phase);

function onPresence(p) {
  state.presence = p;
  renderWaiting();
}

function renderWaiting() {
  const p = state.presence;
  if (!p) return;
  const d = state.dirs ?? {};
  const missing = [];
  if (p.metrics === null) missing.push('no --metrics file given to ssocl serve: no charts (give it the file ssocl run writes with --metrics)');
  else if (!p.metrics) missing.push(`no metrics yet at ${d.metrics}`);
  // A running agent checkpoints and exports every few minutes: its first ones are not what the page waits for.
  const active = agentActive();
  if (!p.checkpoints && !active) missing.push(`no checkpoints yet in ${d.state}/checkpoints`);
  if (!p.models && !active) missing.push(`no export yet in ${d.models}`);
  $('waiting').hidden = missing.length === 0;
  $('waiting').innerHTML = missing.length ? `<h2>${active ? 'Note' : 'Waiting for the agent'}</h2><ul>${missing.map((m) => `<li>${esc(m)}</li>`).join('')}</ul>` : '';
}

/** "12 s", "3 min", "2 h" */
function ago(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  return s < 60 ? `${s} s` : s < 3600 ? `${Math.floor(s / 60)} min` : s < 172800 ? `${Math.floor(s / 3600)} h` : `${Math.floor(s / 86400)} days`;
}

/** The agent's status record (the server's view of <state>/status.json), with its age counted on here. */
function onStatus(v) {
  state.status = { ...v, receivedAt: performance.now() };
  renderStatus();
  renderWaiting();
  if (state.model) renderModel();
}

function renderStatus() {
  const v = state.status;
  if (!v) return;
  const el = $('agent');
  el.className = `badge agent-${v.phase}`;
  el.textContent = v.label;
  const r = v.record;
  el.title = r ? `pid ${r.pid}, step ${r.step}, arrival ${r.arrival}, ${r.frames} frames${r.line ? `, line ${r.line}` : ''}` : 'ssocl run writes <state>/status.json while it runs; none there yet';
  $('agent-pub').hidden = !v.notPublishing;
  $('agent-pub').textContent = v.notPublishing ? `not publishing: ${v.notPublishing}` : '';
  const age = v.ageMs === null ? '' : ago(v.ageMs + performance.now() - v.receivedAt);
  $('agent-age').textContent = age ? (v.phase === 'stopped' ? `${age} ago` : `status ${age} old`) : '';
}

function healthRows(h) {
  if (!h) return '';
  const rows = [
    ['effective rank', fmt(h.rank)],
    ['mean cosine', fmt(h.meanCos)],
    ['alignment', fmt(h.alignment)],
    ['projection rank', fmt(h.embeddingRank)],
    ...(h.probe ? [['probe kNN', `${fmt(h.probe.knn * 100)}%`]] : []),
    ['health frames', h.frames],
  ];
  return rows.map(([k, v]) => `<tr><th>${k}</th><td>${esc(v)}</td></tr>`).join('');
}

function onModel(m) {
  state.model = m;
  renderModel();
  if (m.latest) void tryModel.refresh().then(() => renderQuery());
}

function renderModel() {
  const m = state.model;
  const l = m.latest;
  if (!l) {
    $('model-body').innerHTML = 'no export yet';
    return;
  }
  const versions = m.versions.slice(-6).reverse();
  // Several model lines (each state and source its own; agent/pipeline/line.ts): say which each version is of.
  const lines = new Set(m.versions.map((v) => v.line)).size > 1;
  const now = state.status?.record;
  const ahead = now && state.status.phase !== 'stale' && now.step > l.step ? now.step : null;
  $('model-body').className = '';
  $('model-body').innerHTML = `
    <table>
      <tr><th>step</th><td>${esc(l.step)}</td></tr>
      <tr><th>exported</th><td>${esc(new Date(l.time).toLocaleString())}</td></tr>
      <tr><th>frames seen</th><td>${esc(l.framesSeen ?? '–')}</td></tr>
      <tr><th>loss</th><td>${esc(fmt(l.loss))}</td></tr>
      <tr><th>input</th><td>${m.size ? `${m.size}x${m.size}` : '–'}, ${m.featureDim ?? '–'} features</td></tr>
      ${healthRows(l.health)}
      <tr><th>sha256</th><td class="dim">${esc(String(l.sha256).slice(0, 16))}</td></tr>
    </table>
    <p><a id="download" href="/models/latest.onnx" download="encoder-${esc(l.step)}.onnx">Download latest.onnx</a> (step ${esc(l.step)})</p>
    <table id="versions">${versions.map((v) => `<tr><td>${esc(v.file)}</td>${lines ? `<td class="dim">line ${esc(v.line)}</td>` : ''}<td class="${v.status === 'rejected' ? 'bad' : 'ok'}">${esc(v.status)}</td><td class="reason dim">${esc(v.reason ?? '')}</td></tr>`).join('')}</table>
    ${ahead ? `<p class="dim">The agent is at step ${esc(ahead)} now; this is its last export (it exports every --export-every).</p>` : ''}`;
}

function onQuarantine(q) {
  state.quarantine = q;
  $('q-count').textContent = String(q.count);
  if (!q.count) {
    $('q-body').innerHTML = 'nothing quarantined';
    return;
  }
  $('q-body').className = '';
  $('q-body').innerHTML = `
    <table>${q.kinds.map((k) => `<tr><th>${esc(k.count)}</th><td>${esc(k.kind)}</td></tr>`).join('')}</table>
    <h2>Newest</h2>
    <table>${q.recent.slice(0, 12).map((r) => `<tr><td>${esc(r.file)}</td><td class="reason dim">${esc(r.reason)}</td></tr>`).join('')}</table>
    ${q.partial ? '<p class="dim">(more files than were listed)</p>' : ''}`;
}

/** A uint8 CHW image into a canvas of its own size (CSS scales it up). */
function drawChw(canvas, images, index, size) {
  const per = 3 * size * size;
  const plane = size * size;
  canvas.width = size;
  canvas.height = size;
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(size, size);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) img.data[i * 4 + c] = images[index * per + c * plane + i];
    img.data[i * 4 + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

/** Border colour for a nearest-neighbour cosine: green (distinct) to red (redundant). */
const simColour = (v) => (v === null ? 'transparent' : `hsl(${Math.round(120 * Math.max(0, Math.min(1, 1 - v)))}, 70%, 45%)`);

function renderBuffer() {
  const b = state.buffer;
  if (!b?.images) return;
  const grid = $('b-grid');
  grid.className = 'grid';
  grid.textContent = '';
  const order = b.entries.map((e, i) => i);
  if ($('b-sort').checked) order.sort((i, j) => (b.entries[j].nnSim ?? -2) - (b.entries[i].nnSim ?? -2));
  for (const i of order) {
    const e = b.entries[i];
    const cell = document.createElement('div');
    cell.className = `thumb${e.seen ? '' : ' unseen'}`;
    cell.title = `${e.key}\nid ${e.id}, in the buffer for ${e.lifespan} arrivals${e.seen ? '' : ', not trained on yet'}\nnearest-neighbour cosine ${e.nnSim === null ? '–' : e.nnSim.toFixed(3)}`;
    const c = document.createElement('canvas');
    drawChw(c, b.images, i, b.size);
    c.style.borderColor = simColour(e.nnSim);
    const label = document.createElement('span');
    label.textContent = e.nnSim === null ? '–' : e.nnSim.toFixed(2);
    cell.append(c, label);
    grid.append(cell);
  }
  const from = b.source === 'live' ? 'live snapshot' : b.version;
  $('b-info').textContent = `${b.entries.length} entries at step ${b.step} (${from}, ${new Date(b.time).toLocaleTimeString()}); mean nearest-neighbour cosine ${fmt(b.meanNnSim)} over the stored features`;
  // The mix (issue #31): entries per eighth of the stream so far, oldest first, and distinct source clips.
  const m = b.mix;
  const mixEl = $('b-mix');
  if (m && mixEl) mixEl.textContent = `by age (eighths of the stream so far, oldest first): ${m.byAge.join(' · ')}; ${m.sources} source clip${m.sources === 1 ? '' : 's'}${m.largestSource ? `, the largest ${m.largestSource.source} with ${m.largestSource.entries}` : ''}`;
}

async function onBuffer(b) {
  const r = await fetch('/api/buffer/images', { cache: 'no-store' });
  if (!r.ok) return;
  // A newer checkpoint may have been read in between: the images go with the version the header names.
  if (r.headers.get('x-buffer-version') !== b.version) return;
  state.buffer = { ...b, images: new Uint8Array(await r.arrayBuffer()) };
  tryModel.setBuffer(b.version, state.buffer.images, b.size);
  renderBuffer();
  void renderQuery();
}

// "Try the model": the last query image (uint8 CHW at the model's size) and its nearest buffer entries.
const tryStatus = (msg) => ($('try-status').textContent = msg);
const tryModel = new PageModel(tryStatus);
let query = null;

async function renderQuery() {
  if (!query || !state.buffer?.images || !tryModel.session) return;
  try {
    const hits = await tryModel.nearest(toInput(query.chw));
    const box = $('nearest');
    box.textContent = '';
    for (const h of hits) {
      const cell = document.createElement('div');
      cell.className = 'hit';
      const c = document.createElement('canvas');
      drawChw(c, state.buffer.images, h.index, state.buffer.size);
      const label = document.createElement('span');
      label.textContent = h.sim.toFixed(3);
      cell.title = state.buffer.entries[h.index]?.key ?? '';
      cell.append(c, label);
      box.append(cell);
    }
    tryStatus(`nearest buffer images by cosine of features (model step ${tryModel.step}, ${tryModel.ep})`);
  } catch (e) {
    tryStatus(e.message);
  }
}

/** Any drawable (image bitmap, video frame) to the model's input, preprocessed as the agent does. */
async function setQuery(source, width, height) {
  if (!state.model?.latest || !(await tryModel.refresh())) return tryStatus('no model published yet');
  const size = tryModel.size ?? state.model?.size;
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext('2d');
  ctx.drawImage(source, 0, 0);
  const px = ctx.getImageData(0, 0, width, height).data;
  query = { chw: coverResize(px, width, height, size) };
  const q = $('query');
  drawChw(q, query.chw, 0, size);
  await renderQuery();
}

async function takeFile(file) {
  if (!file) return;
  try {
    const bmp = await createImageBitmap(file);
    await setQuery(bmp, bmp.width, bmp.height);
  } catch (e) {
    tryStatus(`cannot read ${file.name}: ${e.message}`);
  }
}

function wireTry() {
  const drop = $('drop');
  $('file').addEventListener('change', (e) => void takeFile(e.target.files[0]));
  for (const t of ['dragenter', 'dragover']) drop.addEventListener(t, (e) => (e.preventDefault(), drop.classList.add('over')));
  for (const t of ['dragleave', 'drop']) drop.addEventListener(t, () => drop.classList.remove('over'));
  document.addEventListener('dragover', (e) => e.preventDefault());
  document.addEventListener('drop', (e) => {
    e.preventDefault();
    void takeFile(e.dataTransfer?.files?.[0]);
  });
  const button = $('webcam');
  if (!navigator.mediaDevices?.getUserMedia) button.hidden = true;
  let timer = null;
  button.addEventListener('click', async () => {
    const video = $('video');
    if (timer) {
      clearInterval(timer);
      timer = null;
      video.srcObject?.getTracks().forEach((t) => t.stop());
      video.hidden = true;
      button.textContent = 'Webcam';
      return;
    }
    try {
      video.srcObject = await navigator.mediaDevices.getUserMedia({ video: true });
      await video.play();
    } catch (e) {
      return tryStatus(`webcam: ${e.message}`);
    }
    video.hidden = false;
    button.textContent = 'Stop webcam';
    let busy = false;
    timer = setInterval(async () => {
      if (busy || !video.videoWidth) return;
      busy = true;
      await setQuery(video, video.videoWidth, video.videoHeight).finally(() => (busy = false));
    }, 1000);
  });
  $('b-sort').addEventListener('change', renderBuffer);
}

function connect() {
  const es = new EventSource('/events');
  const on = (name, fn) =>
    es.addEventListener(name, (e) => {
      state.events++;
      fn(JSON.parse(e.data));
    });
  // The page's connection to ssocl serve, not the agent (its own badge, from the status record).
  es.onopen = () => {
    $('conn').textContent = 'connected';
    $('conn').className = 'badge on';
  };
  es.onerror = () => {
    $('conn').textContent = 'reconnecting';
    $('conn').className = 'badge off';
  };
  on('hello', (h) => {
    state.dirs = h.dirs;
    $('where').textContent = `${h.dirs.state} · ${h.dirs.models}${h.dirs.metrics ? ` · ${h.dirs.metrics}` : ''}`;
  });
  on('presence', onPresence);
  on('status', onStatus);
  on('metrics', onMetrics);
  on('model', onModel);
  on('quarantine', onQuarantine);
  on('buffer', (b) => void onBuffer(b));
}

window.ssocl = {
  state,
  charts,
  model: tryModel,
  /** The page's encoder on a float32 NCHW tensor (the tests compare it with Node's). */
  embed: (x, count) => tryModel.embed(x, count),
  takeFile,
};

wireTry();
connect();
drawCharts();
tryStatus('waiting for a published model');
// latest.json is polled as well as announced: a missed event or a model that was mid-publish is picked up.
// (Only once an export exists: before that the request would only log a 404 every 2 s.)
setInterval(() => state.presence?.models && void tryModel.refresh(), 2000);
setInterval(renderStatus, 1000);
