// `ssocl serve`'s HTTP server (node:http only): the dashboard page, its vendored libraries straight from
// node_modules (uPlot, onnxruntime-web), a server-sent-event stream of what AgentWatch sees (the agent's
// status record among it), the buffer's images as one binary response, and the published model for
// download and for the page's own inference. Every file it serves is named in a fixed list or a
// directory listing, never a path taken from the URL; it only ever reads the agent's directories.

import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { sha256 } from '../../core/atomic.ts';
import { asEncoder } from '../../core/onnx/model.ts';
import { tryReadInside } from '../../core/safe-read.ts';
import { trainerBundle } from './bundle.ts';
import { thin } from './metrics.ts';
import { readLatestModel } from './model-view.ts';
import { AgentWatch, bufferSummary, type AgentDirs, type WatchEvent, type WatchTiming } from './watch.ts';

const PAGE_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'page');
const require = createRequire(import.meta.url);
/** The packages' dist folders (their main entry points live there). */
const UPLOT_DIR = path.dirname(require.resolve('uplot'));
const ORT_DIR = path.dirname(require.resolve('onnxruntime-web'));

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
};

/** Points of step history a page gets when it connects (its charts are a few thousand pixels wide). */
const HISTORY_POINTS = 4000;

// 'wasm-unsafe-eval': onnxruntime-web compiles its WebAssembly; blob: and mediastream: for the webcam.
const CSP = [
  "default-src 'self'",
  "script-src 'self' 'wasm-unsafe-eval'",
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data: blob:",
  "media-src 'self' blob: mediastream:",
  "worker-src 'self' blob:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
].join('; ');

export interface ServeOptions {
  dirs: AgentDirs;
  /** Training artifacts the page may train with in the tab (served read-only: manifest.json and the files it names). */
  artifacts?: string;
  host: string;
  port: number;
  timing?: WatchTiming;
  /** Where what was found but not read (a link, a FIFO, a hard link in the agent's folders) is said; default stderr. */
  warn?: (msg: string) => void;
}

export interface Served {
  url: string;
  watch: AgentWatch;
  close(): Promise<void>;
}

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);
export const isLoopback = (host: string) => LOOPBACK.has(host) || /^127\.\d+\.\d+\.\d+$/.test(host);

/**
 * Bound to loopback, only requests naming a loopback host are answered: a web page elsewhere could
 * otherwise point its own host name at 127.0.0.1 (DNS rebinding) and read the dashboard through it.
 */
function hostAllowed(req: IncomingMessage, boundLoopback: boolean): boolean {
  if (!boundLoopback) return true;
  const h = (req.headers.host ?? '').replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1').toLowerCase();
  return isLoopback(h);
}

/** Files of `dir` matching `allow`, by name, looked up when asked (a listing, not a path join on the URL). */
function listed(dir: string, allow: RegExp): (name: string) => string | null {
  return (name) => {
    try {
      return readdirSync(dir).includes(name) && allow.test(name) ? path.join(dir, name) : null;
    } catch {
      return null;
    }
  };
}

const pageFile = listed(PAGE_DIR, /^[\w-]+\.(html|js|css|png|svg)$/);
const uplotFile = listed(UPLOT_DIR, /^uPlot\.(iife\.min\.js|min\.css)$/);
const ortFile = listed(ORT_DIR, /^ort[\w.-]*\.(mjs|js|wasm)$/);

/** Largest artifact file served (the edge preset's train-step graph is tens of MB). */
const MAX_ARTIFACT_BYTES = 512 << 20;

/**
 * An artifact file the page may fetch, read: manifest.json or a file its `files` names, a regular file
 * of its own in the directory (core/safe-read: not a link to a file elsewhere, not a FIFO); else null.
 */
function artifactBytes(dir: string | undefined, name: string, warn: (msg: string) => void): Buffer | null {
  if (!dir) return null;
  let names: string[];
  try {
    const m = JSON.parse(tryReadInside(dir, 'manifest.json', warn, { maxBytes: 16 << 20 })?.toString('utf8') ?? 'null') as { files?: Record<string, string> };
    names = ['manifest.json', ...Object.keys(m.files ?? {})];
  } catch {
    return null;
  }
  return names.includes(name) && listed(dir, /^[\w.-]+$/)(name) ? tryReadInside(dir, name, warn, { maxBytes: MAX_ARTIFACT_BYTES }) : null;
}

function send(res: ServerResponse, status: number, body: string | Uint8Array, type: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': String(Buffer.byteLength(body)), 'X-Content-Type-Options': 'nosniff', 'Content-Security-Policy': CSP, ...headers });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

const sendJson = (res: ServerResponse, v: unknown) => send(res, 200, JSON.stringify(v), 'application/json', { 'Cache-Control': 'no-store' });
const notFound = (res: ServerResponse) => send(res, 404, 'not found\n', 'text/plain; charset=utf-8');

function sendFile(res: ServerResponse, file: string | null, cache: string): void {
  if (!file) return notFound(res);
  let body: Buffer;
  try {
    body = readFileSync(file);
  } catch {
    return notFound(res);
  }
  send(res, 200, body, TYPES[path.extname(file)] ?? 'application/octet-stream', { 'Cache-Control': cache });
}

/** One SSE message. */
const sse = (event: string, data: unknown) => `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;

/** What a page is sent when it connects: everything known so far, the step history thinned. */
function snapshotEvents(w: AgentWatch): string {
  const t = w.tail;
  let out = sse('hello', { dirs: w.dirs, pid: process.pid });
  if (w.presence) out += sse('presence', w.presence);
  out += sse('status', w.status);
  out += sse('metrics', { reset: true, steps: thin(t.steps, HISTORY_POINTS), evals: t.evals, health: t.health, total: t.steps.length });
  if (w.model) out += sse('model', w.model);
  if (w.quarantine) out += sse('quarantine', w.quarantine);
  if (w.buffer) out += sse('buffer', bufferSummary(w.buffer));
  return out;
}

function eventText(e: WatchEvent): string {
  if (e.type === 'metrics' && e.data.steps.length > HISTORY_POINTS) return sse('metrics', { ...e.data, steps: thin(e.data.steps, HISTORY_POINTS) });
  return sse(e.type, e.data);
}

class EventHub {
  private clients = new Set<ServerResponse>();
  private ping: NodeJS.Timeout;

  constructor(private watch: AgentWatch) {
    watch.on((e) => this.broadcast(eventText(e)));
    // A comment line now and then keeps proxies and idle timeouts from closing a quiet stream.
    this.ping = setInterval(() => this.broadcast(': ping\n\n'), 15_000);
  }

  add(res: ServerResponse): void {
    // Built before the headers go: should it throw, the request handler answers 500, the server stays up.
    const snapshot = snapshotEvents(this.watch);
    res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-store', 'X-Content-Type-Options': 'nosniff' });
    res.write(`retry: 2000\n\n${snapshot}`);
    this.clients.add(res);
    res.on('close', () => this.clients.delete(res));
  }

  private broadcast(text: string): void {
    for (const res of this.clients) {
      // A client that stopped reading is dropped rather than buffered without bound.
      if (res.writableLength > 16 << 20) res.destroy();
      else res.write(text);
    }
  }

  close(): void {
    clearInterval(this.ping);
    for (const res of this.clients) res.end();
    this.clients.clear();
  }
}

function handle(req: IncomingMessage, res: ServerResponse, watch: AgentWatch, hub: EventHub, boundLoopback: boolean, artifacts: string | undefined): void {
  if (!hostAllowed(req, boundLoopback)) return send(res, 403, 'host not allowed (the server answers only to its loopback address)\n', 'text/plain; charset=utf-8');
  if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'read-only\n', 'text/plain; charset=utf-8', { Allow: 'GET, HEAD' });
  const url = new URL(req.url ?? '/', 'http://x');
  const p = url.pathname;
  const m = /^\/(page|vendor\/uplot|vendor\/ort)\/([^/]+)$/.exec(p);
  if (p === '/page/train.bundle.js') {
    trainerBundle().then(
      (js) => send(res, 200, js, TYPES['.js'], { 'Cache-Control': 'no-store' }),
      (e) => send(res, 500, `the training bundle did not build: ${(e as Error).message}\n`, 'text/plain; charset=utf-8'),
    );
    return;
  }
  if (p === '/' || p === '/index.html') return sendFile(res, pageFile('index.html'), 'no-store');
  if (m?.[1] === 'page') return sendFile(res, pageFile(m[2]), 'no-store');
  if (m?.[1] === 'vendor/uplot') return sendFile(res, uplotFile(m[2]), 'max-age=3600');
  if (m?.[1] === 'vendor/ort') return sendFile(res, ortFile(m[2]), 'max-age=3600');
  if (p === '/events') return hub.add(res);
  const art = /^\/artifacts\/([^/]+)$/.exec(p);
  if (art) {
    const name = decodeURIComponent(art[1]);
    const body = artifactBytes(artifacts, name, watch.warn);
    return body ? send(res, 200, body, TYPES[path.extname(name)] ?? 'application/octet-stream', { 'Cache-Control': 'no-store' }) : notFound(res);
  }
  if (p === '/api/state') {
    const b = watch.buffer;
    return sendJson(res, { status: watch.status, presence: watch.presence, model: watch.model, quarantine: watch.quarantine, buffer: b ? bufferSummary(b) : null, steps: watch.tail.steps.length, evals: watch.tail.evals, health: watch.tail.health });
  }
  if (p === '/api/buffer/images') {
    const b = watch.buffer;
    if (!b) return notFound(res);
    return send(res, 200, b.images, 'application/octet-stream', { 'Cache-Control': 'no-store', 'X-Buffer-Version': b.version, 'X-Image-Size': String(b.size) });
  }
  if (p === '/models/latest.onnx') {
    const bytes = readLatestModel(watch.dirs.models, watch.warn);
    if (!bytes) return notFound(res);
    const step = watch.model?.latest?.step;
    const name = typeof step === 'number' ? `encoder-${step}.onnx` : 'latest.onnx';
    // The page loads the model only when X-Sha256 matches latest.json's sha256 (an export publishes latest.json first).
    // ?view=encoder: what the page runs, the model read as an ssocl encoder (an imported model's export through
    // its ssocl.encoder view, built in memory; any other as it is); X-Body-Sha256 is then the body's own digest.
    const body = url.searchParams.get('view') === 'encoder' ? asEncoder(bytes) : bytes;
    return send(res, 200, body, 'application/octet-stream', { 'Cache-Control': 'no-store', 'X-Sha256': sha256(bytes), 'X-Body-Sha256': sha256(body), 'Content-Disposition': `attachment; filename="${name}"` });
  }
  if (p === '/models/latest.json') {
    const body = tryReadInside(watch.dirs.models, 'latest.json', watch.warn, { maxBytes: 16 << 20 });
    return body ? send(res, 200, body, 'application/json', { 'Cache-Control': 'no-store' }) : notFound(res);
  }
  return notFound(res);
}

export async function serve(o: ServeOptions): Promise<Served> {
  const watch = new AgentWatch(o.dirs, o.timing, o.warn);
  await watch.start();
  const hub = new EventHub(watch);
  const boundLoopback = isLoopback(o.host);
  const server = createServer((req, res) => {
    try {
      handle(req, res, watch, hub, boundLoopback, o.artifacts);
    } catch (e) {
      if (!res.headersSent) send(res, 500, `${(e as Error).message}\n`, 'text/plain; charset=utf-8');
      else res.destroy();
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    url: `http://${host}:${addr.port}/`,
    watch,
    async close() {
      watch.stop();
      hub.close();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
