// The bench scripts' command lines: --help says what each option does and its default, internal options
// stay out of it, and a mistyped option is one clear line with exit 2 (not a stack trace, not a run).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { REPO } from './helpers/paths.ts';

const scripts = readdirSync(path.join(REPO, 'bench')).filter((f) => f.endsWith('.ts') && f !== 'args.ts');

function run(script: string, args: string[]) {
  return spawnSync(process.execPath, ['--import', 'tsx', path.join(REPO, 'bench', script), ...args], { encoding: 'utf8', cwd: REPO, timeout: 60_000 });
}

test('every bench script answers --help with its header and options', () => {
  assert.ok(scripts.length >= 7, scripts.join(','));
  for (const s of scripts) {
    const h = run(s, ['--help']);
    assert.equal(h.status, 0, `${s} --help: ${h.stderr}`);
    assert.ok(h.stdout.startsWith(`bench/${s.replace('.ts', '')}:`), `${s}: help starts with the header\n${h.stdout}`);
    assert.match(h.stdout, /\noptions:\n {2}--/, s);
    assert.doesNotMatch(h.stdout, /--child/, `${s}: the internal child option is hidden`);
  }
});

test('a mistyped option is one line and exit 2, before any work', () => {
  const bad = run('soak.ts', ['--minuts', '5']);
  assert.equal(bad.status, 2, bad.stderr);
  assert.match(bad.stderr, /^bench\/soak: Unknown option '--minuts'.*\(see --help\)\n$/);
  assert.equal(bad.stdout, '');
});

test('bench --help gives each default', () => {
  const h = run('soak.ts', ['--help']);
  assert.match(h.stdout, /--minutes VALUE +how long the agent runs \(default: 60\)/);
  assert.match(h.stdout, /--fps VALUE +.*\(default: 20\)/);
  const c = run('compare.ts', ['--help']);
  assert.match(c.stdout, /--plan +print the plan/);
  assert.doesNotMatch(c.stdout, /--plan .*\(default/, 'a false boolean default is not shown');
  // --dataset documents folders only; its older spelling for CIFAR (--dataset cifar100) stays accepted but undocumented.
  assert.match(c.stdout, /--dataset VALUE +folder:ROOT/);
  assert.doesNotMatch(c.stdout, /--dataset VALUE .*cifar100/, 'the older spelling stays accepted but undocumented');
});
