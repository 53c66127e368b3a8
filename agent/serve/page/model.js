// The published encoder in the page, with onnxruntime-web: loaded from /models/latest.onnx (read as an
// ssocl encoder, ?view=encoder) when latest.json names a new one (polled, and on the server's model
// event), checked against latest.json's sha256 before use (an export writes latest.json first, so for
// a moment latest.onnx is still the old model), run on the buffer's images and on a query image to
// find the query's nearest buffer entries. 'wasm' by default; ?ep=webgpu asks for WebGPU, with WASM when it cannot start.

const params = new URLSearchParams(location.search);
const WANT_WEBGPU = params.get('ep') === 'webgpu';
let ort = null;

/** onnxruntime-web, imported when the first model loads: the dashboard works without it. */
async function loadOrt() {
  const m = await import(WANT_WEBGPU ? '/vendor/ort/ort.webgpu.min.mjs' : '/vendor/ort/ort.wasm.min.mjs');
  m.env.wasm.wasmPaths = '/vendor/ort/';
  // One thread: the page is not cross-origin isolated (no SharedArrayBuffer), and one thread sums in a
  // fixed order, so the page's features are reproducible run to run.
  m.env.wasm.numThreads = 1;
  m.env.logLevel = 'error';
  return m;
}

async function sha256Hex(bytes) {
  const d = await crypto.subtle.digest('SHA-256', bytes);
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** Rows of a [n, d] matrix scaled to unit length (cosine similarity by dot products). */
function normalise(m, n) {
  const d = m.length / n;
  const out = new Float32Array(m.length);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let k = 0; k < d; k++) s += m[i * d + k] ** 2;
    const inv = 1 / Math.sqrt(s + 1e-12);
    for (let k = 0; k < d; k++) out[i * d + k] = m[i * d + k] * inv;
  }
  return out;
}

export class PageModel {
  /** @param {(msg: string) => void} status */
  constructor(status) {
    this.status = status;
    this.session = null;
    this.sha = null;
    this.step = null;
    this.size = null;
    this.ep = null;
    this.buffer = null; // { version, images, size, count }
    this.bufferFeatures = null; // { key, features (unit rows), d }
    this.queue = Promise.resolve();
    this.loading = null;
  }

  /** Runs `fn` after everything queued before it: one session run at a time, a model swap between runs. */
  serial(fn) {
    const p = this.queue.then(fn);
    this.queue = p.catch(() => {});
    return p;
  }

  /** Loads latest.onnx if latest.json names a model other than the one loaded. Returns whether one is loaded. */
  async refresh() {
    let latest;
    try {
      const r = await fetch('/models/latest.json', { cache: 'no-store' });
      if (!r.ok) return Boolean(this.session);
      latest = await r.json();
    } catch {
      return Boolean(this.session);
    }
    if (!latest?.sha256 || latest.sha256 === this.sha) return Boolean(this.session);
    this.loading ??= this.load(latest).finally(() => (this.loading = null));
    await this.loading;
    return Boolean(this.session);
  }

  async load(latest) {
    // As an ssocl encoder (input 'images' in [0, 1], output 'features'): an imported model's export keeps
    // its own interface, and the server gives its ssocl.encoder view (the same bytes for any other model).
    const r = await fetch('/models/latest.onnx?view=encoder', { cache: 'no-store' });
    if (!r.ok) return;
    const bytes = new Uint8Array(await r.arrayBuffer());
    // Both checks: the server's header says what it read, the digest here that the body arrived whole.
    if (r.headers.get('x-sha256') !== latest.sha256 || (await sha256Hex(bytes)) !== r.headers.get('x-body-sha256')) return; // mid-publish: next poll
    try {
      ort ??= await loadOrt();
    } catch (e) {
      return this.status(`cannot load onnxruntime-web: ${e.message}`);
    }
    const eps = WANT_WEBGPU ? ['webgpu', 'wasm'] : ['wasm'];
    let session = null;
    for (const ep of eps) {
      try {
        session = await ort.InferenceSession.create(bytes, { executionProviders: [ep], graphOptimizationLevel: 'all' });
        this.ep = ep;
        break;
      } catch (e) {
        this.status(`could not start ${ep}: ${e.message}`);
      }
    }
    if (!session) return;
    const dims = session.inputMetadata?.find?.((m) => m.name === 'images')?.shape;
    await this.serial(async () => {
      await this.session?.release();
      this.session = session;
      this.sha = latest.sha256;
      this.step = latest.step ?? null;
      this.size = typeof dims?.[2] === 'number' ? dims[2] : this.buffer?.size ?? null;
    });
    this.status(`model of step ${this.step} loaded (${this.ep})`);
  }

  /**
   * Features of `count` images given as float32 NCHW in [0, 1], exactly as Node's Encoder.run takes them.
   * @returns {Promise<{ features: Float32Array, sha: string, step: number | null }>}
   */
  embed(x, count) {
    return this.serial(async () => {
      if (!this.session) throw new Error('no model loaded');
      const s = this.size ?? Math.round(Math.sqrt(x.length / count / 3));
      const out = await this.session.run({ images: new ort.Tensor('float32', x, [count, 3, s, s]) }, ['features']);
      return { features: out.features.data, sha: this.sha, step: this.step };
    });
  }

  setBuffer(version, images, size) {
    this.buffer = { version, images, size, count: images.length / (3 * size * size) };
  }

  /** The buffer's features under the loaded model (computed once per model and buffer version). */
  async bufferMatrix() {
    const b = this.buffer;
    if (!b || !this.session) return null;
    if (this.size !== null && this.size !== b.size) throw new Error(`the buffer holds ${b.size}x${b.size} images, the model takes ${this.size}x${this.size}`);
    const key = `${this.sha}|${b.version}`;
    if (this.bufferFeatures?.key === key) return this.bufferFeatures;
    const per = 3 * b.size * b.size;
    const parts = [];
    for (let i = 0; i < b.count; i += 64) {
      const n = Math.min(64, b.count - i);
      const x = new Float32Array(n * per);
      for (let k = 0; k < x.length; k++) x[k] = b.images[i * per + k] / 255;
      parts.push((await this.embed(x, n)).features);
    }
    const d = parts.length ? parts[0].length / Math.min(64, b.count) : 0;
    const all = new Float32Array(b.count * d);
    let off = 0;
    for (const p of parts) {
      all.set(p, off);
      off += p.length;
    }
    this.bufferFeatures = { key, features: normalise(all, b.count), d };
    return this.bufferFeatures;
  }

  /** The k buffer entries nearest (cosine of features) to one image given as float32 CHW in [0, 1]. */
  async nearest(x, k = 8) {
    const m = await this.bufferMatrix();
    if (!m) return [];
    const q = normalise((await this.embed(x, 1)).features, 1);
    const sims = [];
    for (let i = 0; i < this.buffer.count; i++) {
      let s = 0;
      for (let j = 0; j < m.d; j++) s += q[j] * m.features[i * m.d + j];
      sims.push({ index: i, sim: s });
    }
    return sims.sort((a, b) => b.sim - a.sim).slice(0, k);
  }
}
