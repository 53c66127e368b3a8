// Nothing but what the user asked for: a short `ssocl run` with HOME, XDG_CACHE_HOME, TMPDIR and the
// working directory pointed at fresh empty directories writes only into its --state and --models
// directories (issue #19 item 9). onnxruntime-node's telemetry used to leave a device id and an event
// database under ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ and `.ses` and mat-debug-<pid>.log
// files in the temp directory of every process that opened a session. And on the terminal: an EP that
// cannot start is one line of ssocl's, not ORT's multi-line red log first (issue #19 item 4).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import path from 'node:path';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { CUDA_INSTALL_HINT } from '../agent/trainer/backend.ts';
import { REPO } from './helpers/paths.ts';
import { tinyPreset } from './helpers/tiny.ts';

/**
 * ORT suppresses its telemetry by itself where one of these says "CI" (the list in its
 * telemetry_environment.h), so the child runs without them: a user's machine, where the litter was.
 * The opt-outs go too, so the test shows that ssocl sets them itself.
 */
const NOT_A_USER = ['CI', 'TF_BUILD', 'GITHUB_ACTIONS', 'GITLAB_CI', 'CIRCLECI', 'TRAVIS', 'JENKINS_URL', 'CODEBUILD_BUILD_ID', 'BUILDKITE', 'TEAMCITY_VERSION', 'APPVEYOR', 'BITBUCKET_BUILD_NUMBER', 'SYSTEM_TEAMFOUNDATIONCOLLECTIONURI', 'ORT_RUNNING_UNIT_TESTS', 'ORT_DISABLE_TELEMETRY', 'ORT_TELEMETRY_DISABLED'];

/** Every file and directory under `dir`, relative to it. */
function tree(dir: string, rel = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(path.join(dir, rel), { withFileTypes: true })) {
    const p = path.join(rel, e.name);
    out.push(e.isDirectory() ? `${p}/` : p);
    if (e.isDirectory()) out.push(...tree(dir, p));
  }
  return out;
}

test('ssocl run writes nothing outside its --state and --models directories (no ORT telemetry files in the cache or temp directory)', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-litter-'));
  try {
    const art = path.join(root, 'art');
    writeArtifacts(compileArtifacts(tinyPreset(['agent={"newPerArrival":4,"updatesPerArrival":1,"bufferSize":8,"replay":"mixed"}'])), art);
    const dirs = { home: path.join(root, 'home'), cache: path.join(root, 'cache'), tmp: path.join(root, 'tmp'), cwd: path.join(root, 'cwd') };
    for (const d of Object.values(dirs)) mkdirSync(d);
    const env: NodeJS.ProcessEnv = { ...process.env, HOME: dirs.home, XDG_CACHE_HOME: dirs.cache, TMPDIR: dirs.tmp };
    for (const k of NOT_A_USER) delete env[k];
    const state = path.join(root, 'state');
    const models = path.join(root, 'models');
    const child = spawn(process.execPath, [path.join(REPO, 'bin/ssocl.mjs'), 'run', '--dataset', 'demo', '--max-arrivals', '2', '--artifacts', art, '--state', state, '--models', models, '--threads', '1'], {
      cwd: dirs.cwd,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    const code = await new Promise<number | null>((r) => child.on('exit', r));
    assert.equal(code, 0, err);
    assert.ok(existsSync(path.join(models, 'latest.onnx')) && readdirSync(path.join(state, 'checkpoints')).length > 0, 'the run did its work');
    // tsx (which runs the TypeScript sources) keeps its transform cache in $TMPDIR/tsx-<uid>/, one file
    // per source, shared by every run: a cache, not litter. Anything else there is.
    const tsxCache = `tsx-${userInfo().uid}/`;
    const found = Object.entries(dirs).flatMap(([name, d]) => tree(d).filter((p) => !(name === 'tmp' && p.startsWith(tsxCache))).map((p) => `${name}: ${p}`));
    assert.deepEqual(found, [], `written outside --state and --models:\n  ${found.join('\n  ')}`);
    // The temp directory the test itself runs with gets nothing of the child's either.
    assert.ok(!existsSync(path.join(tmpdir(), `mat-debug-${child.pid}.log`)), `mat-debug-${child.pid}.log in ${tmpdir()}`);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

/** ORT's own log lines ("[E:onnxruntime:...", in red), which ssocl keeps quiet unless --verbose. */
const ORT_LOG = /\[[VIWEF]:onnxruntime|\x1b\[/;

test('--ep cuda without the CUDA provider: one line naming the EP and the install hint; with --ep-fallback cpu one plain notice line', async (t) => {
  const bin = path.join(path.dirname(createRequire(import.meta.url).resolve('onnxruntime-node')), '../bin/napi-v6', process.platform, process.arch);
  if (existsSync(path.join(bin, 'libonnxruntime_providers_cuda.so'))) return t.skip('the CUDA provider is installed here');
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-cuda-'));
  try {
    const art = path.join(root, 'art');
    writeArtifacts(compileArtifacts(tinyPreset(['agent={"newPerArrival":4,"updatesPerArrival":1,"bufferSize":8,"replay":"mixed"}'])), art);
    const run = (...extra: string[]) =>
      spawnSync(process.execPath, [path.join(REPO, 'bin/ssocl.mjs'), 'run', '--dataset', 'demo', '--max-arrivals', '1', '--artifacts', art, '--state', path.join(root, 'state'), '--models', path.join(root, 'models'), '--threads', '1', '--ep', 'cuda', ...extra], { encoding: 'utf8' });
    let r = run();
    assert.equal(r.status, 2, r.stderr);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], /^ssocl: could not start execution provider 'cuda': /);
    assert.ok(lines[0].includes(CUDA_INSTALL_HINT), lines[0]);
    r = run('--ep-fallback', 'cpu');
    assert.equal(r.status, 0, r.stderr);
    assert.doesNotMatch(r.stderr, ORT_LOG);
    // A log line, not a Node warning ("(node:PID) Warning: ... (Use `node --trace-warnings ...`)").
    assert.doesNotMatch(r.stderr, /Warning|trace-warnings/);
    const notices = r.stderr.split('\n').filter((l) => l.includes('falling back'));
    assert.deepEqual(notices.length, 1, r.stderr);
    assert.match(notices[0], /^could not start execution provider 'cuda': .*; falling back to --ep cpu as --ep-fallback asks$/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
