// bench/soak: the agent unattended for a long time on the demo stream (CPU). A writer plays the demo
// images in a loop as PNG files at --fps into a watched directory (a camera); the agent runs as a
// child process with the settings of a real deployment (delete after ingest, drop the oldest waiting
// frames when behind, periodic checkpoints and exports). RSS of the agent is sampled from /proc; at the
// end: RSS over time (must be flat after warm-up), frames/s, steps/s, drops, checkpoints, exports.
//
//   node --import tsx bench/soak.ts [--minutes 60] [--fps 20] [--json bench/out/soak.json]
//   node --import tsx bench/soak.ts --replot bench/results/soak-held-1h.json   (redraw a saved run)

import { spawn } from 'node:child_process';
import { closeSync, fstatSync, mkdirSync, mkdtempSync, openSync, readSync, renameSync, rmSync, writeFileSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { demoStream } from '../agent/commands/demo.ts';
import { encodePng } from '../agent/frames/decode.ts';
import { lineChart, svgToPng } from '../agent/report/plot.ts';
import { benchArgs } from './args.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const values = benchArgs(import.meta.url, {
  minutes: { type: 'string', default: '60', describe: 'how long the agent runs' },
  fps: { type: 'string', default: '20', describe: 'frames written per second into the watched directory' },
  'sample-s': { type: 'string', default: '15', describe: 'seconds between RSS samples' },
  json: { type: 'string', default: path.join(HERE, 'out/soak.json'), describe: 'results; the charts go beside it' },
  replot: { type: 'string', describe: 'only redraw the charts of a saved result JSON (beside it), nothing run' },
});

type Sample = { t: number; rssMB: number; heapMB?: number; externalMB?: number };
// RSS over time beside the agent's own JS heap and external memory (from its metrics lines), as
// FILE-rss.svg and .png beside FILE.json; returns that FILE.
async function draw(result: { minutes: number; fpsWritten: number; samples: Sample[] }, json: string) {
  const { samples } = result;
  const base = json.replace(/\.json$/, '');
  const series = [{ name: 'agent RSS (MB)', points: samples.map((s) => [s.t / 60, s.rssMB] as [number, number]) }];
  if (samples.some((x) => x.heapMB !== undefined)) {
    series.push({ name: 'JS heap used (MB)', points: samples.filter((x) => x.heapMB !== undefined).map((x) => [x.t / 60, x.heapMB!] as [number, number]) });
    series.push({ name: 'external + array buffers (MB)', points: samples.filter((x) => x.externalMB !== undefined).map((x) => [x.t / 60, x.externalMB!] as [number, number]) });
  }
  const svg = lineChart(series, { title: `soak: agent RSS over ${result.minutes.toFixed(0)} minutes (demo stream, ${result.fpsWritten} fps)`, xLabel: 'minutes', yLabel: 'RSS MB' });
  writeFileSync(`${base}-rss.svg`, svg);
  writeFileSync(`${base}-rss.png`, await svgToPng(svg));
  return base;
}
if (values.replot !== undefined) {
  const base = await draw(JSON.parse(readFileSync(values.replot, 'utf8')), values.replot);
  console.log(`wrote ${base}-rss.svg and .png`);
  process.exit(0);
}
const seconds = Number(values.minutes) * 60;
const fps = Number(values.fps);
const root = mkdtempSync(path.join(tmpdir(), 'ssocl-soak-'));
const frames = path.join(root, 'frames');
const metrics = path.join(root, 'metrics.jsonl');
mkdirSync(frames);

// PNG bytes of the demo images, encoded once; the writer cycles through them with fresh names.
const d = demoStream();
const pngs: Buffer[] = [];
for (const i of d.order) pngs.push(await encodePng(d.images.subarray(i * 3072, (i + 1) * 3072), 32));
let written = 0;
let writing = true;
const writer = (async () => {
  const t0 = Date.now();
  while (writing) {
    const name = `frame-${String(written).padStart(7, '0')}.png`;
    const tmp = path.join(frames, `.${name}.part`);
    writeFileSync(tmp, pngs[written % pngs.length]);
    renameSync(tmp, path.join(frames, name));
    written++;
    const due = t0 + (written * 1000) / fps;
    await new Promise((r) => setTimeout(r, Math.max(0, due - Date.now())));
  }
})();

const args = [path.join(HERE, '../bin/ssocl.mjs'), 'run', '--watch', frames, '--state', path.join(root, 'state'), '--models', path.join(root, 'models'), '--after-ingest', 'delete', '--overflow', 'drop-oldest', '--backlog', '500', '--checkpoint-every', '5m', '--export-every', '10m', '--metrics', metrics, '--max-seconds', String(seconds), '--stable-ms', '100'];
const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
let out = '';
let err = '';
child.stdout.on('data', (c) => (out += c));
child.stderr.on('data', (c) => (err = (err + c).slice(-200_000)));
const exit = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
const t0 = Date.now();
// heapMB/externalMB: the agent's own process.memoryUsage() from its newest metrics line, to tell a
// JS-heap or buffer leak from native memory (ORT, libvips, the allocator) when RSS moves.
const samples: { t: number; rssMB: number; hwmMB: number; anonMB: number; fileMB: number; frames: number; steps: number; heapMB?: number; heapTotalMB?: number; externalMB?: number }[] = [];
let metricsRead = 0;
let metricsTail = '';
const lastMetric = (): { frames: number; steps: number; heapMB?: number; heapTotalMB?: number; externalMB?: number } => {
  if (!existsSync(metrics)) return { frames: 0, steps: 0 };
  // Only the bytes appended since the last sample (the file grows by a line per step).
  const fd = openSync(metrics, 'r');
  try {
    const size = fstatSync(fd).size;
    if (size > metricsRead) {
      const buf = Buffer.alloc(Math.min(size - metricsRead, 1 << 20));
      readSync(fd, buf, 0, buf.length, size - buf.length);
      metricsRead = size;
      const lines = buf.toString('utf8').trim().split('\n');
      const ok = (l: string) => {
        try {
          return JSON.parse(l).step !== undefined;
        } catch {
          return false; // a cut first line of the chunk
        }
      };
      metricsTail = [...lines].reverse().find(ok) ?? metricsTail;
    }
  } finally {
    closeSync(fd);
  }
  try {
    const m = JSON.parse(metricsTail);
    return { frames: m.frames as number, steps: m.step as number, heapMB: m.mem?.heap, heapTotalMB: m.mem?.heapTotal, externalMB: m.mem?.external };
  } catch {
    return { frames: 0, steps: 0 };
  }
};
const sampler = setInterval(() => {
  try {
    const st = readFileSync(`/proc/${child.pid}/status`, 'utf8');
    const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(st)?.[1] ?? 0);
    const m = lastMetric();
    samples.push({ t: (Date.now() - t0) / 1000, rssMB: kb('VmRSS') / 1024, hwmMB: kb('VmHWM') / 1024, anonMB: kb('RssAnon') / 1024, fileMB: kb('RssFile') / 1024, ...m });
    process.stderr.write(`\r${((Date.now() - t0) / 60000).toFixed(1)} min  RSS ${(kb('VmRSS') / 1024).toFixed(0)} MB  frames ${m.frames}  steps ${m.steps}  written ${written}   `);
  } catch {
    /* exited */
  }
}, Number(values['sample-s']) * 1000);
const code = await exit;
clearInterval(sampler);
writing = false;
await writer;
const wall = (Date.now() - t0) / 1000;
const summary = /(\d+) frames ingested, (\d+) quarantined, (\d+) dropped, (\d+) refused; (\d+) arrivals, (\d+) steps/.exec(out);
const ingested = Number(summary?.[1] ?? NaN);
const steps = Number(summary?.[6] ?? NaN);
// Flatness: least-squares slope of RSS after a 10% warm-up, in MB per hour, and the spread.
// While the agent ran: after --max-seconds it checkpoints, exports and frees memory (not part of the figure).
const warm = samples.filter((s) => s.t >= 0.1 * seconds && s.t <= seconds);
const mr = warm.reduce((a, s) => a + s.rssMB, 0) / warm.length;
// Least-squares slope in MB per hour.
const fit = (pts: { t: number; y: number }[]) => {
  const tm = pts.reduce((a, q) => a + q.t, 0) / pts.length;
  const ym = pts.reduce((a, q) => a + q.y, 0) / pts.length;
  return (pts.reduce((a, q) => a + (q.t - tm) * (q.y - ym), 0) / pts.reduce((a, q) => a + (q.t - tm) ** 2, 0)) * 3600;
};
const slope = fit(warm.map((x) => ({ t: x.t, y: x.rssMB })));
// RSS saws up and down with garbage collection; a leak shows as a rising floor. So also: the lowest RSS
// in each 10-minute window after warm-up, and the slope through those floors.
const win = 600;
const floors: { t: number; rssMB: number }[] = [];
for (let w = 0.1 * seconds; w < seconds; w += win) {
  const ws = warm.filter((x) => x.t >= w && x.t < Math.min(w + win, seconds));
  if (ws.length >= 5) floors.push(ws.reduce((a, b) => (b.rssMB < a.rssMB ? b : a)));
}
const floorSlope = floors.length >= 2 ? fit(floors.map((f) => ({ t: f.t, y: f.rssMB }))) : NaN;
const withHeap = warm.filter((x) => x.heapMB !== undefined);
const heapSlope = withHeap.length >= 2 ? fit(withHeap.map((x) => ({ t: x.t, y: x.heapMB! }))) : NaN;
const extSlope = withHeap.length >= 2 ? fit(withHeap.map((x) => ({ t: x.t, y: x.externalMB! }))) : NaN;
const rssMin = Math.min(...warm.map((s) => s.rssMB));
const rssMax = Math.max(...warm.map((s) => s.rssMB));
const exportsLeft = existsSync(path.join(root, 'models')) ? readdirSync(path.join(root, 'models')).filter((f) => /^encoder-/.test(f)).length : 0;
const result = {
  machine: { cores: cpus().length, cpu: cpus()[0]?.model, date: new Date().toISOString() },
  minutes: wall / 60, exitCode: code, fpsWritten: fps, framesWritten: written, framesIngested: ingested, dropped: Number(summary?.[3] ?? NaN),
  quarantined: Number(summary?.[2] ?? NaN), steps, framesPerS: ingested / wall, stepsPerS: steps / wall,
  rss: { warmupMinutes: (0.1 * seconds) / 60, minMB: rssMin, maxMB: rssMax, meanMB: mr, slopeMBPerHour: slope, floorsMB: floors.map((f) => [Math.round(f.t), Math.round(f.rssMB)]), floorSlopeMBPerHour: floorSlope, heapSlopeMBPerHour: heapSlope, externalSlopeMBPerHour: extSlope, peakHwmMB: Math.max(...samples.map((s) => s.hwmMB)) },
  exportsKept: exportsLeft, samples,
};
console.log(`\nsoak: ${(wall / 60).toFixed(1)} min on ${result.machine.cores} cores, demo stream written at ${fps} fps, exit ${code}`);
console.log('| minutes | frames written | ingested | dropped (backlog 500) | frames/s | steps | steps/s | RSS after warm-up min-max MB | RSS slope MB/h | 10-min RSS floors MB | floor slope MB/h | JS heap / external slope MB/h | peak RSS MB |');
console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
console.log(`| ${(wall / 60).toFixed(1)} | ${written} | ${ingested} | ${result.dropped} | ${result.framesPerS.toFixed(2)} | ${steps} | ${result.stepsPerS.toFixed(3)} | ${rssMin.toFixed(0)}-${rssMax.toFixed(0)} | ${slope.toFixed(1)} | ${floors.map((f) => f.rssMB.toFixed(0)).join(' ')} | ${floorSlope.toFixed(1)} | ${heapSlope.toFixed(1)} / ${extSlope.toFixed(1)} | ${result.rss.peakHwmMB.toFixed(0)} |`);
mkdirSync(path.dirname(values.json), { recursive: true });
writeFileSync(values.json, JSON.stringify(result, null, 1) + '\n');
const base = await draw(result, values.json);
console.log(`wrote ${values.json}, ${base}-rss.svg and .png`);
if (code !== 0) console.log(`agent stderr (tail):\n${err.slice(-3000)}`);
rmSync(root, { recursive: true, force: true });
