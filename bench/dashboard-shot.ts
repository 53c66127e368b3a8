// bench/dashboard-shot: the README's dashboard picture (docs/dashboard.png) from what a user sees, not a
// test fixture: a real `ssocl run --dataset demo` (the edge artifacts, the demo's CIFAR-10 frames) with
// `ssocl serve` on its folders, captured by chromium (headless, as the browser tests drive it) while the
// agent trains. Checkpoints and exports every 20 s so the panels fill within the run. Not a benchmark;
// here because it is a long run (about 90 s) that the test suite must not pay for.
//   node --import tsx bench/dashboard-shot.ts [--seconds 75] [--at 55] [--out docs/dashboard.png]

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { findChromium, launchChromium } from '../test/helpers/browser.ts';
import { benchArgs } from './args.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CLI = path.join(REPO, 'bin/ssocl.mjs');
const values = benchArgs(import.meta.url, {
  seconds: { type: 'string', default: '75', describe: 'how long the agent trains (--max-seconds)' },
  at: { type: 'string', default: '55', describe: 'seconds after the start to take the picture (while it trains)' },
  out: { type: 'string', default: 'docs/dashboard.png', describe: 'where the PNG goes (relative to the repository)' },
});
const out = path.resolve(REPO, values.out);
const exe = findChromium();
if (!exe) {
  process.stderr.write('bench/dashboard-shot: chromium not found (apt-get install chromium, or set SSOCL_CHROMIUM)\n');
  process.exit(2);
}

const dir = mkdtempSync(path.join(tmpdir(), 'ssocl-shot-'));
const [state, models, metrics] = ['ssocl-state', 'models', 'metrics.jsonl'].map((p) => path.join(dir, p));
const child = (args: string[]) => {
  const c = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  c.stdout.on('data', (d) => (out += d));
  c.stderr.on('data', (d) => (out += d));
  return { c, out: () => out, exit: new Promise<number | null>((r) => c.on('exit', r)) };
};
const agent = child(['run', '--dataset', 'demo', '--state', state, '--models', models, '--metrics', metrics, '--max-seconds', values.seconds, '--checkpoint-every', '20s', '--export-every', '20s']);
const server = child(['serve', '--state', state, '--models', models, '--metrics', metrics, '--port', '0']);
const browser = await launchChromium(exe);
try {
  while (!/http:\/\/\S+/.test(server.out())) await new Promise((r) => setTimeout(r, 100));
  const page = await browser.newPage();
  await page.setViewport({ width: 1400, height: 1000 });
  await page.goto(/(http:\/\/\S+)/.exec(server.out())![1], { waitUntil: 'load' });
  await new Promise((r) => setTimeout(r, Number(values.at) * 1000));
  const seen = await page.evaluate(() => ({ agent: document.getElementById('agent')!.textContent, buffer: document.getElementById('b-info')!.textContent }));
  await page.evaluate(() => window.scrollTo(0, 0));
  writeFileSync(out, await page.screenshot({ fullPage: true }));
  process.stdout.write(`${out}: header '${seen.agent}', buffer '${seen.buffer}'${browser.errors.length ? `; page errors: ${browser.errors.join('; ')}` : ''}\n`);
  const code = await agent.exit;
  if (code !== 0) process.stderr.write(`the agent exited ${code}:\n${agent.out()}`);
} finally {
  await browser.close();
  server.c.kill('SIGTERM');
  agent.c.kill('SIGTERM');
  await Promise.all([server.exit, agent.exit]);
  rmSync(dir, { recursive: true, force: true });
}
