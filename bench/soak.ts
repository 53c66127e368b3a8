// bench/soak: the agent unattended for a long time on the demo stream (CPU). A writer plays the demo
// images in a loop as PNG files at --fps into a watched directory (a camera); the agent runs as a
// child process with the settings of a real deployment (delete after ingest, drop the oldest waiting
// frames when behind, periodic checkpoints and exports). RSS of the agent is sampled from /proc; at the
// end: RSS over time (must be flat after warm-up), frames/s, steps/s, drops, checkpoints, exports.
//
//   node --import tsx bench/soak.ts [--minutes 60] [--fps 20] [--json bench/out/soak.json]

import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync, existsSync, readdirSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { demoStream } from '../agent/commands/demo.ts';
import { encodePng } from '../agent/frames/decode.ts';
import { lineChart, svgToPng } from '../agent/report/plot.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '60' },
    fps: { type: 'string', default: '20' },
    'sample-s': { type: 'string', default: '15' },
    json: { type: 'string', default: path.join(HERE, 'out/soak.json') },
  },
});
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
const samples: { t: number; rssMB: number; hwmMB: number; frames: number; steps: number }[] = [];
const lastMetric = () => {
  if (!existsSync(metrics)) return { frames: 0, steps: 0 };
  const txt = readFileSync(metrics, 'utf8');
  const line = txt.slice(txt.lastIndexOf('\n', txt.length - 2) + 1).trim();
  try {
    const m = JSON.parse(line);
    return { frames: m.frames as number, steps: m.step as number };
  } catch {
    return { frames: 0, steps: 0 };
  }
};
const sampler = setInterval(() => {
  try {
    const st = readFileSync(`/proc/${child.pid}/status`, 'utf8');
    const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(st)?.[1] ?? 0);
    const m = lastMetric();
    samples.push({ t: (Date.now() - t0) / 1000, rssMB: kb('VmRSS') / 1024, hwmMB: kb('VmHWM') / 1024, ...m });
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
const mt = warm.reduce((a, s) => a + s.t, 0) / warm.length;
const mr = warm.reduce((a, s) => a + s.rssMB, 0) / warm.length;
const slope = (warm.reduce((a, s) => a + (s.t - mt) * (s.rssMB - mr), 0) / warm.reduce((a, s) => a + (s.t - mt) ** 2, 0)) * 3600;
const rssMin = Math.min(...warm.map((s) => s.rssMB));
const rssMax = Math.max(...warm.map((s) => s.rssMB));
const exportsLeft = existsSync(path.join(root, 'models')) ? readdirSync(path.join(root, 'models')).filter((f) => /^encoder-/.test(f)).length : 0;
const result = {
  machine: { cores: cpus().length, cpu: cpus()[0]?.model, date: new Date().toISOString() },
  minutes: wall / 60, exitCode: code, fpsWritten: fps, framesWritten: written, framesIngested: ingested, dropped: Number(summary?.[3] ?? NaN),
  quarantined: Number(summary?.[2] ?? NaN), steps, framesPerS: ingested / wall, stepsPerS: steps / wall,
  rss: { warmupMinutes: (0.1 * seconds) / 60, minMB: rssMin, maxMB: rssMax, meanMB: mr, slopeMBPerHour: slope, peakHwmMB: Math.max(...samples.map((s) => s.hwmMB)) },
  exportsKept: exportsLeft, samples,
};
console.log(`\nsoak: ${(wall / 60).toFixed(1)} min on ${result.machine.cores} cores, demo stream written at ${fps} fps, exit ${code}`);
console.log('| minutes | frames written | ingested | dropped (backlog 500) | frames/s | steps | steps/s | RSS after warm-up min-max MB | RSS slope MB/h | peak RSS MB |');
console.log('|---|---|---|---|---|---|---|---|---|---|');
console.log(`| ${(wall / 60).toFixed(1)} | ${written} | ${ingested} | ${result.dropped} | ${result.framesPerS.toFixed(2)} | ${steps} | ${result.stepsPerS.toFixed(3)} | ${rssMin.toFixed(0)}-${rssMax.toFixed(0)} | ${slope.toFixed(1)} | ${result.rss.peakHwmMB.toFixed(0)} |`);
mkdirSync(path.dirname(values.json!), { recursive: true });
writeFileSync(values.json!, JSON.stringify(result, null, 1) + '\n');
const svg = lineChart([{ name: 'agent RSS (MB)', points: samples.map((s) => [s.t / 60, s.rssMB] as [number, number]) }], { title: `soak: agent RSS over ${(wall / 60).toFixed(0)} minutes (demo stream, ${fps} fps)`, xLabel: 'minutes', yLabel: 'RSS MB' });
const base = values.json!.replace(/\.json$/, '');
writeFileSync(`${base}-rss.svg`, svg);
writeFileSync(`${base}-rss.png`, await svgToPng(svg));
console.log(`wrote ${values.json}, ${base}-rss.svg and .png`);
if (code !== 0) console.log(`agent stderr (tail):\n${err.slice(-3000)}`);
rmSync(root, { recursive: true, force: true });
