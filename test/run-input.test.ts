// What a newcomer trips on in `ssocl run` (issue #19 items 2, 3, 6): a --watch that is a file or cannot
// be listed is a one-line exit 2 before anything is loaded; a run that trained nothing never replaces a
// published encoder (and an untrained one is never published); without a terminal the run says how it
// is doing every --status-every seconds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CLI, tinyArtifacts } from './faults/helpers.ts';

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-run-input-'));
chmodSync(root, 0o755);
const art = tinyArtifacts(path.join(root, 'art'));
const run = (...args: string[]) => spawnSync(process.execPath, [CLI, 'run', '--artifacts', art, '--threads', '1', ...args], { encoding: 'utf8', timeout: 60_000 });
const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');
const lines = (s: string) => s.split('\n').filter(Boolean);

test.after(() => rmSync(root, { recursive: true, force: true }));

test('item 2: --watch naming a file is one line and exit 2, before anything is created', () => {
  const file = path.join(root, 'not-a-dir.png');
  writeFileSync(file, 'x');
  const st = path.join(root, 'st-file');
  const r = run('--watch', file, '--state', st, '--models', path.join(root, 'm-file'));
  assert.equal(r.status, 2, r.stderr);
  assert.deepEqual(lines(r.stderr), [`ssocl: --watch ${file}: not a directory`]);
  assert.ok(!existsSync(path.join(st, 'checkpoints')), 'no checkpoint written');
});

// Root can list a mode-000 directory, so the unreadable case runs as an unprivileged user when the
// test runs as root (and as the test's own user otherwise).
const uid = process.getuid?.() ?? -1;
const asUser = uid === 0 ? ['runuser', ['-u', 'nobody', '--']] as const : null;
test('item 2: a --watch directory the agent cannot list is one line and exit 2', { skip: uid === 0 && !existsSync('/usr/sbin/runuser') ? 'runs as root without runuser' : false }, () => {
  const dir = mkdtempSync(path.join(root, 'locked-'));
  chmodSync(dir, 0o000);
  const open = mkdtempSync(path.join(root, 'open-'));
  chmodSync(open, 0o777);
  const args = [CLI, 'run', '--artifacts', art, '--watch', dir, '--state', path.join(open, 'st'), '--models', path.join(open, 'm')];
  const r = asUser ? spawnSync(asUser[0], [...asUser[1], process.execPath, ...args], { encoding: 'utf8' }) : spawnSync(process.execPath, args, { encoding: 'utf8' });
  chmodSync(dir, 0o755);
  assert.equal(r.status, 2, r.stderr);
  assert.deepEqual(lines(r.stderr), [`ssocl: --watch ${dir}: cannot list it (EACCES); the agent needs read and search permission`]);
});

test('item 3: a run that trained nothing leaves the published encoder as it was; an untrained one is never published', () => {
  const models = path.join(root, 'models');
  // A trained encoder is published first.
  const first = run('--dataset', 'demo', '--state', path.join(root, 'st-a'), '--models', models, '--max-arrivals', '4');
  assert.equal(first.status, 0, first.stderr);
  const latest = path.join(models, 'latest.onnx');
  const before = sha(latest);
  const step = JSON.parse(readFileSync(path.join(models, 'latest.json'), 'utf8')).step;
  assert.ok(step > 0);
  // Then a run whose watched directory stays empty, started over on a new state, same models folder.
  const empty = path.join(root, 'empty');
  mkdirSync(empty);
  const versions = readdirSync(models).sort();
  const second = run('--watch', empty, '--state', path.join(root, 'st-b'), '--models', models, '--exit-when-idle', '1', '--fresh');
  assert.equal(second.status, 0, second.stderr);
  assert.match(second.stderr, new RegExp(`not exporting: the encoder has not been trained yet \\(step 0\\); ${latest.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(step ${step}\\) stays`));
  assert.equal(sha(latest), before, 'latest.onnx unchanged');
  assert.deepEqual(readdirSync(models).sort(), versions, 'no new version written');
  // With nothing published at all, an untrained encoder is not published either.
  const fresh = path.join(root, 'models-none');
  const third = run('--watch', empty, '--state', path.join(root, 'st-c'), '--models', fresh, '--exit-when-idle', '1');
  assert.equal(third.status, 0, third.stderr);
  assert.ok(!existsSync(path.join(fresh, 'latest.onnx')), 'no untrained latest.onnx');
  assert.match(third.stderr, /not exporting: the encoder has not been trained yet \(step 0\)\n/);
});

test('item 6: without a terminal, a status line every --status-every seconds', () => {
  // stderr is a pipe here, as under a service manager.
  const r = run('--dataset', 'demo', '--state', path.join(root, 'st-status'), '--models', path.join(root, 'm-status'), '--max-seconds', '4', '--status-every', '1');
  assert.equal(r.status, 0, r.stderr);
  const status = lines(r.stderr).filter((l) => l.startsWith('status: '));
  assert.ok(status.length >= 2, `status lines: ${status.length}\n${r.stderr}`);
  assert.match(status[1], /^status: (starting|training|idle \([^)]*\)); frames \d+ \(\+\d+\), step \d+ \(\d+\.\d\d\/s\), loss (\d+\.\d{4}|-), buffer \d+, waiting \d+, quarantined 0, checkpoint (none yet|ckpt-\S+ \(\d+ s ago\)), export (none yet|step \d+)$/);
  // And none when it is turned off.
  const off = run('--dataset', 'demo', '--state', path.join(root, 'st-quiet'), '--models', path.join(root, 'm-quiet'), '--max-seconds', '2', '--status-every', '0');
  assert.equal(off.status, 0, off.stderr);
  assert.ok(!/^status: /m.test(off.stderr), off.stderr);
});
