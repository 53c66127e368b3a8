// bench/mem-probes: where an agent's resident memory could creep, one suspect at a time, each in its
// own process (so one's pages do not hide another's): chokidar watching many files, the ORT similarity
// session fed ever-changing shapes (with and without its arena and memory patterns), and frame decoding.
// Prints a table of RSS checkpoints per probe, writes JSON.
//
//   node --import tsx bench/mem-probes.ts [--files 2000] [--runs 40000] [--decodes 30000] [--json bench/out/mem-probes.json]

import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchArgs } from './args.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const values = benchArgs(import.meta.url, {
  files: { type: 'string', default: '2000', describe: 'files added and deleted per chokidar round' },
  runs: { type: 'string', default: '40000', describe: 'similarity-session runs' },
  decodes: { type: 'string', default: '30000', describe: 'frames decoded' },
  json: { type: 'string', default: path.join(HERE, 'out/mem-probes.json'), describe: 'results' },
  child: { type: 'string', hidden: true },
});
const rss = () => Math.round(process.memoryUsage().rss / 1048576);
const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function chokidarProbe(n: number): Promise<string[]> {
  const { default: chokidar } = await import('chokidar');
  const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-probe-'));
  // The dir source's settings.
  const w = chokidar.watch(dir, { ignoreInitial: true, depth: 0, followSymlinks: false, awaitWriteFinish: { stabilityThreshold: 100, pollInterval: 25 } });
  await new Promise<void>((r) => w.once('ready', () => r()));
  let adds = 0;
  w.on('add', () => adds++);
  const out = [`start ${rss()}`];
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < n; i++) {
      writeFileSync(path.join(dir, `f${round}-${i}.png`), Buffer.alloc(1500));
      if (i % 100 === 0) await wait(5);
    }
    while (adds < (round + 1) * n) await wait(100);
    await wait(500);
    const watched = rss();
    for (let i = 0; i < n; i++) unlinkSync(path.join(dir, `f${round}-${i}.png`));
    await wait(1500);
    out.push(`round ${round + 1}: ${watched} watched, ${rss()} deleted`);
  }
  await w.close();
  rmSync(dir, { recursive: true, force: true });
  return out;
}

async function similarityProbe(runs: number, variant: string): Promise<string[]> {
  const ort = await import('onnxruntime-node');
  const { Graph } = await import('../tools/graph/graph.ts');
  const { encodeModel } = await import('../tools/onnx/encode.ts');
  // The buffer's similarity graph (agent/buffer/similarity.ts): [na, d] x [nb, d]^T.
  const g = new Graph();
  const a = g.input('a', ['na', 'd']);
  const b = g.input('b', ['nb', 'd']);
  g.output(g.matmul(a, g.transpose(b, [1, 0])), 's');
  const opts: Record<string, unknown> = { graphOptimizationLevel: 'all', intraOpNumThreads: 1 };
  if (variant !== 'default') opts.enableMemPattern = false;
  if (variant === 'no-arena') opts.enableCpuMemArena = false;
  const sess = await ort.InferenceSession.create(encodeModel(g, 'similarity'), opts as never);
  const d = 64;
  const nb = 320;
  const B = new Float32Array(nb * d).fill(0.1);
  let seed = 1;
  const out = [`start ${rss()}`];
  for (let it = 1; it <= runs; it++) {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    const na = 1 + (seed % 300);
    await sess.run({ a: new ort.Tensor('float32', new Float32Array(na * d).fill(0.2), [na, d]), b: new ort.Tensor('float32', B, [nb, d]) });
    if (it % Math.ceil(runs / 8) === 0) out.push(`${it}: ${rss()}`);
  }
  await sess.release();
  return out;
}

async function decodeProbe(n: number): Promise<string[]> {
  const { decodeFrame, encodePng } = await import('../agent/frames/decode.ts');
  const { demoStream } = await import('../agent/commands/demo.ts');
  const dm = demoStream();
  const pngs: Buffer[] = [];
  for (const i of dm.order.slice(0, 200)) pngs.push(await encodePng(dm.images.subarray(i * 3072, (i + 1) * 3072), 32));
  const out = [`start ${rss()}`];
  for (let it = 1; it <= n; it++) {
    await decodeFrame(pngs[it % pngs.length], '.png', { size: 32, fit: 'cover', maxPixels: 1 << 24 });
    if (it % Math.ceil(n / 8) === 0) out.push(`${it}: ${rss()}`);
  }
  return out;
}

const PROBES: Record<string, () => Promise<string[]>> = {
  'chokidar: files watched, then deleted (3 rounds)': () => chokidarProbe(Number(values.files)),
  'ORT similarity, varying shapes (arena, memory patterns)': () => similarityProbe(Number(values.runs), 'default'),
  'ORT similarity, varying shapes (no memory patterns)': () => similarityProbe(Number(values.runs), 'no-patterns'),
  'ORT similarity, varying shapes (no arena, no patterns)': () => similarityProbe(Number(values.runs), 'no-arena'),
  'decodeFrame of demo PNGs': () => decodeProbe(Number(values.decodes)),
};

if (values.child) {
  const r = await PROBES[values.child]();
  process.stdout.write('ROW ' + JSON.stringify(r) + '\n');
  process.exit(0);
}
const rows: { probe: string; rssMB: string[] }[] = [];
for (const name of Object.keys(PROBES)) {
  process.stderr.write(`${name} ...\n`);
  const argv = [...process.execArgv, fileURLToPath(import.meta.url), '--child', name, '--files', values.files, '--runs', values.runs, '--decodes', values.decodes];
  const r = spawnSync(process.execPath, argv, { encoding: 'utf8', maxBuffer: 1 << 24 });
  const line = r.stdout.split('\n').find((l) => l.startsWith('ROW '));
  rows.push({ probe: name, rssMB: line ? JSON.parse(line.slice(4)) : [`failed: ${(r.stderr || '').trim().split('\n').at(-1)}`] });
}
console.log('| probe | RSS MB at each checkpoint |\n|---|---|');
for (const r of rows) console.log(`| ${r.probe} | ${r.rssMB.join('; ')} |`);
mkdirSync(path.dirname(values.json), { recursive: true });
writeFileSync(values.json, JSON.stringify({ machine: { cores: cpus().length, cpu: cpus()[0]?.model, node: process.version, date: new Date().toISOString() }, files: Number(values.files), runs: Number(values.runs), decodes: Number(values.decodes), rows }, null, 1) + '\n');
console.log(`wrote ${values.json}`);
