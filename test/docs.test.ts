// What README tells a user to run agrees with what the code says and with the pinned packages.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { CUDA_INSTALL_HINT } from '../agent/trainer/backend.ts';
import { REPO } from './helpers/paths.ts';

test("the CUDA install line in README, the --ep cuda error hint and onnxruntime-node's installer agree", () => {
  const readme = readFileSync(path.join(REPO, 'README.md'), 'utf8');
  const inReadme = [...readme.matchAll(/ONNXRUNTIME_NODE_INSTALL=(\w+)/g)].map((m) => m[1]);
  const inHint = [...CUDA_INSTALL_HINT.matchAll(/ONNXRUNTIME_NODE_INSTALL=(\w+)/g)].map((m) => m[1]);
  assert.ok(inReadme.length > 0 && inHint.length === 1, 'both name an ONNXRUNTIME_NODE_INSTALL value');
  assert.deepEqual([...new Set(inReadme)], inHint, 'README and the error hint name the same value');
  // The installer of the pinned onnxruntime-node knows that value for linux/x64.
  const require = createRequire(path.join(REPO, 'package.json'));
  const meta = require('onnxruntime-node/script/install-metadata.js') as { requirements: Record<string, string[]> };
  assert.ok(meta.requirements['linux/x64'].includes(inHint[0]), `installer accepts ${inHint[0]} (it knows ${meta.requirements['linux/x64']})`);
  // And the CUDA 13 package the hint names is the one README names.
  const pkg = /com\.github\.asus4\.onnxruntime\.linux-x64-gpu@[\d.]+/.exec(CUDA_INSTALL_HINT)![0];
  assert.ok(readme.includes(pkg), `README names ${pkg}`);
});

/** The `npx ssocl ...` lines of README's sh code blocks: the command (one or two words) and the flags it gives. */
function readmeCommands(readme: string): { line: string; command: string; flags: string[] }[] {
  const out: { line: string; command: string; flags: string[] }[] = [];
  for (const block of readme.matchAll(/```sh\n([\s\S]*?)```/g)) {
    for (const raw of block[1].split('\n')) {
      const line = raw.replace(/\s+#.*$/, '').replace(/\s*&$/, '').trim();
      const m = /(?:^|\s)npx ssocl ((?:fleet aggregate|fleet keygen|data fetch|models (?:list|rollback)|[a-z]+))\b(.*)$/.exec(line);
      if (!m) continue;
      const flags = [...m[2].matchAll(/(?:^|\s)--([a-z][\w-]*)/g)].map((f) => f[1]);
      out.push({ line, command: m[1].replace(/^models \w+$/, 'models list'), flags });
    }
  }
  return out;
}

function help(command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [path.join(REPO, 'bin/ssocl.mjs'), ...command.split(' '), '--help'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (err += d));
    c.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`ssocl ${command} --help: exit ${code}: ${err}`))));
  });
}

// Flags README uses that are still to come from work in progress (none now). When one lands the check
// below fails on purpose: delete the entry, and every README flag is checked again.
const AWAITING = new Set<string>();

test("every flag of README's `npx ssocl` commands exists in that command's --help; the quickstart follows set-up", async () => {
  const readme = readFileSync(path.join(REPO, 'README.md'), 'utf8');
  const cmds = readmeCommands(readme);
  assert.ok(cmds.length >= 15, `${cmds.length} commands found in README`);
  const names = [...new Set(cmds.map((c) => c.command))];
  const helps = new Map(await Promise.all(names.map(async (n) => [n, await help(n)] as const)));
  const missing: string[] = [];
  const arrived: string[] = [];
  for (const c of cmds) {
    for (const f of c.flags) {
      const has = new RegExp(`^ +(?:-\\w, )?--${f}(?: |,|$)`, 'm').test(helps.get(c.command)!);
      const key = `${c.command} --${f}`;
      if (AWAITING.has(key)) {
        if (has) arrived.push(key);
      } else if (!has) missing.push(`${key} (${c.line})`);
    }
  }
  assert.deepEqual(missing, [], 'README commands with flags the command does not have');
  assert.deepEqual(arrived, [], 'flags awaited from another part now exist: remove them from AWAITING');
  // The quickstart: right after set-up, own frames -> model -> embed/classify -> dashboard, in that order.
  const sections = readme.split(/^## /m).map((x) => x.split('\n')[0]);
  const at = sections.findIndex((x) => x.startsWith('Your own frames'));
  assert.ok(at > 0 && sections[at - 1].startsWith('Set up'), `the quickstart follows set-up (sections: ${sections.join(' | ')})`);
  const quick = readmeCommands(readme.split(/^## /m)[at]).map((c) => c.command);
  assert.deepEqual(quick, ['run', 'embed', 'classify', 'serve']);
});
