// The method registry (agent/methods.ts): every method defined once, and read the same way by
// `ssocl run --method` and `ssocl bench`; no policy inferred from what the artifacts train.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { getPreset } from '../tools/artifacts/presets.ts';
import { METHODS, METHOD_NAMES, artifactName, artifactsMismatch } from '../agent/methods.ts';
import { runLearner } from '../agent/commands/run.ts';
import { REPO, CIFAR10_DIR } from './helpers/paths.ts';
import { tinyPreset } from './helpers/tiny.ts';

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-methods-'));
test.after(() => rmSync(root, { recursive: true, force: true }));

test('every method names presets that exist at both scales, with the crops it fixes', () => {
  for (const m of Object.values(METHODS)) {
    for (const scale of ['edge', 'paper'] as const) {
      const p = getPreset(m[scale].preset, m[scale].sets);
      if (m.crops !== undefined) assert.equal(p.crops, m.crops, `${m.name} ${scale}`);
      // What `ssocl artifacts` builds from it is what `ssocl run --method` accepts.
      const name = m[scale].sets.length ? artifactName(m, scale) : p.name;
      assert.equal(artifactsMismatch(m, { name, views: p.crops }), '', `${m.name} ${scale}`);
    }
  }
  assert.deepEqual(
    ['ours', 'ours-paper-eq', 'ours-buffer-replay', 'ours-reservoir', 'empssl', 'minred', 'simclr-reservoir'].filter((n) => !METHOD_NAMES.includes(n)),
    [],
  );
  // The baselines' rules as DESIGN section 4 states them.
  assert.deepEqual([METHODS.minred.buffer, METHODS.minred.replay, METHODS.minred.warmup], ['minred', 'buffer', 'fill']);
  assert.deepEqual([METHODS['simclr-reservoir'].buffer, METHODS['simclr-reservoir'].replay], ['reservoir', 'buffer']);
  assert.deepEqual([METHODS.ours.buffer, METHODS.ours.replay, METHODS.ours.warmup], ['diverse-strata-rolling', 'novel', 'none']);
  // Issue #31: ours' buffer changed; EMP-SSL keeps the rule it was set up with, and the old rule stays selectable.
  assert.deepEqual([METHODS.empssl.buffer, METHODS['ours-old-rule'].buffer], ['diverse', 'diverse']);
  // Ours' 16 spans reach `ssocl run` with its own policy, not with another chosen by --buffer (which keeps its default).
  assert.equal(runLearner({}).learner.strata, 16);
  assert.equal(runLearner({ buffer: 'diverse-strata' }).learner.strata, undefined);
  assert.equal(runLearner({ buffer: 'diverse-strata-rolling' }).learner.strata, 16);
});

test('ssocl run takes its learner rules from the method, each flag overriding one; ours without --method', () => {
  const run = (a: Record<string, unknown>) => runLearner({ seed: 0, ...a });
  const simclr = run({ method: 'simclr-reservoir' });
  assert.deepEqual([simclr.learner.policy, simclr.learner.replay, simclr.learner.warmup], ['reservoir', 'buffer', 'none']);
  assert.equal(simclr.method!.checkArtifacts, true);
  const fifo = run({ method: 'simclr-reservoir', buffer: 'fifo', warmup: 'fill', updates: 5 });
  assert.deepEqual([fifo.learner.policy, fifo.learner.replay, fifo.learner.warmup, fifo.learner.updates], ['fifo', 'buffer', 'fill', 5]);
  const dflt = run({});
  assert.equal(dflt.method!.def.name, 'ours');
  assert.equal(dflt.method!.checkArtifacts, false, 'any artifacts without --method');
  assert.deepEqual([dflt.learner.policy, dflt.learner.replay, dflt.learner.warmup, dflt.learner.updates], ['diverse-strata-rolling', 'novel', 'none', undefined]);
});

const skip = !existsSync(path.join(CIFAR10_DIR, 'test_batch.bin')) && 'no CIFAR-10';

test('ssocl bench --plan and ssocl run --method read the same definition; rows made under older rules are run again', { skip }, () => {
  // Rows from before rules were recorded: empssl's still stand; minred's trained without its warm-up,
  // ours' with the paper's rule (diverse) it had until issue #31.
  const json = path.join(root, 'plan.jsonl');
  const old = { order: 'seq', trial: 0, images: 4500, steps: 1, seconds: 1, floor20: 1, knn20: [1, 1, 1, 1], knn50: [1, 1, 1, 1], final20: 1, mean20: 1 };
  writeFileSync(json, ['ours', 'minred', 'empssl'].map((method) => JSON.stringify({ method, ...old }) + '\n').join(''));
  const r = spawnSync(process.execPath, [path.join(REPO, 'bin/ssocl.mjs'), 'bench', '--data-dir', path.dirname(CIFAR10_DIR), '--plan', '--methods', METHOD_NAMES.join(','), '--trials', '0', '--json', json], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /2 row\(s\) of ours, minred in .* were made under rules the method no longer has/);
  const lines = r.stdout.split('\n').filter((l) => l.startsWith('| '));
  const head = lines[0].slice(2, -2).split(' | ');
  const rows = lines.slice(1).map((l) => Object.fromEntries(l.slice(2, -2).split(' | ').map((v, i) => [head[i], v])));
  assert.deepEqual(rows.map((x) => x.method), METHOD_NAMES);
  for (const row of rows) {
    const m = METHODS[row.method];
    const run = runLearner({ method: m.name, seed: 0 }).learner;
    assert.deepEqual([row.preset, row.buffer, row.replay, row.warmup], [m.edge.preset, m.buffer, m.replay, m.warmup], `bench ${m.name}`);
    assert.deepEqual([run.policy, run.replay, run.warmup], [m.buffer, m.replay, m.warmup], `run ${m.name}`);
    if (m.updates !== undefined) assert.equal(Number(row['updates/arrival']), m.updates);
    assert.equal(row.status, m.name === 'empssl' ? 'done' : 'to run', m.name);
  }
});

// Tiny artifacts as `ssocl artifacts --preset edge-simclr | edge-minred` names them, buffer 12, 4 new a arrival.
const AGENT = 'agent={"newPerArrival":4,"updatesPerArrival":2,"bufferSize":12,"replay":"mixed"}';
const simclrArt = path.join(root, 'simclr');
const minredArt = path.join(root, 'minred');
writeArtifacts(compileArtifacts(tinyPreset(['name=edge-simclr', 'batch=8', 'crops=2', 'losses=[{"name":"nt-xent","weight":1}]', AGENT])), simclrArt);
writeArtifacts(
  compileArtifacts(tinyPreset(['name=edge-minred', 'batch=8', 'crops=2', 'predictor=[{"out":8,"bias":false,"bn":true,"act":true},{"out":8}]', 'losses=[{"name":"simsiam","weight":1}]', AGENT])),
  minredArt,
);

function run(art: string, ...extra: string[]) {
  const state = mkdtempSync(path.join(root, 'state-'));
  const args = [path.join(REPO, 'bin/ssocl.mjs'), 'run', '--dataset', 'demo', '--artifacts', art, '--state', state, '--models', path.join(state, 'models'), '--threads', '1', '--no-health-gate', ...extra];
  return spawnSync(process.execPath, args, { encoding: 'utf8' });
}

test('ssocl run --method simclr-reservoir gets a reservoir buffer; --buffer overrides it', () => {
  const r = run(simclrArt, '--method', 'simclr-reservoir', '--max-arrivals', '4');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /method simclr-reservoir, 4 new images per arrival, 2 updates, buffer 12 \(reservoir\), replay buffer\n/);
  const f = run(simclrArt, '--method', 'simclr-reservoir', '--buffer', 'fifo', '--max-arrivals', '1');
  assert.equal(f.status, 0, f.stderr);
  assert.match(f.stderr, /buffer 12 \(fifo\), replay buffer\n/);
});

test("ssocl run --method minred: MinRed's buffer, no step until the buffer fills; without --method, ours' rules on the same artifacts", () => {
  // 2 arrivals of 4 leave the buffer of 12 at 8: no step yet.
  const m = run(minredArt, '--method', 'minred', '--max-arrivals', '2');
  assert.equal(m.status, 0, m.stderr);
  assert.match(m.stderr, /buffer 12 \(minred\), replay buffer, no training until the buffer fills\n/);
  assert.match(m.stdout, / 2 arrivals, 0 steps /);
  const full = run(minredArt, '--method', 'minred', '--max-arrivals', '4');
  assert.match(full.stdout, / 4 arrivals, 4 steps /, full.stderr);
  // SimSiam artifacts without --method: ours (diverse-strata-rolling, novel), nothing inferred from the predictor.
  const o = run(minredArt, '--max-arrivals', '2');
  assert.equal(o.status, 0, o.stderr);
  assert.match(o.stderr, /method ours, 4 new images per arrival, 2 updates, buffer 12 \(diverse-strata-rolling\), replay novel\n/);
  assert.match(o.stdout, / 2 arrivals, 2 steps /);
});

test('ssocl run --method: an unknown name, or artifacts built for another method, is a one-line error (exit 2)', () => {
  const u = run(simclrArt, '--method', 'nope');
  assert.equal(u.status, 2);
  assert.equal(u.stderr, `ssocl: --method nope: expected one of ${METHOD_NAMES.join(", ")}\n`);
  const w = run(simclrArt, '--method', 'minred', '--max-arrivals', '1');
  assert.equal(w.status, 2, w.stderr);
  assert.match(w.stderr.trim().split('\n').at(-1)!, /^ssocl: --artifacts .*: built from preset 'edge-simclr'; --method minred trains 'edge-minred' \(or 'minred'\) artifacts: ssocl artifacts --preset edge-minred$/);
});
