// Attacks through the watched directory (issue #21, items 1, 5, 7, 9, 11): a subdirectory swapped
// for a link to an outside directory, hard links, names that are not UTF-8, the root deleted or
// replaced, a writer that pauses mid-file, and two quick SIGTERMs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, copyFileSync, existsSync, linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ledgerStatus, startAgent, tinyArtifacts, waitFor, writeFrames } from './helpers.ts';

const root = mkdtempSync(path.join(tmpdir(), 'ssocl-fault-dir-'));
const art = tinyArtifacts(path.join(root, 'art'));
test.after(() => rmSync(root, { recursive: true, force: true }));

function setup(name: string) {
  const dir = path.join(root, name);
  const frames = path.join(dir, 'frames');
  const state = path.join(dir, 'state');
  mkdirSync(frames, { recursive: true });
  const metrics = path.join(dir, 'm.jsonl');
  const args = ['--watch', frames, '--artifacts', art, '--state', state, '--models', path.join(dir, 'models'), '--threads', '1', '--stable-ms', '100', '--metrics', metrics];
  const steps = () => (existsSync(metrics) ? readFileSync(metrics, 'utf8').split('\n').filter(Boolean).length : 0);
  return { dir, frames, state, args, steps };
}

/** Names whose last ledger line says 'ingested'. */
const ingested = (state: string): Set<string> => new Set([...ledgerStatus(state)].filter(([, st]) => st === 'ingested').map(([n]) => n));

test('item 1: under --recursive, a subdirectory swapped for a link to an outside directory mid-run: nothing outside is read, moved or deleted', async () => {
  const s = setup('escape');
  const names = await writeFrames(path.join(s.frames, 'sub'), 400);
  // The outside directory holds files of the same names: the queued paths now lead there.
  const outside = path.join(s.dir, 'outside');
  mkdirSync(outside);
  for (const n of names) copyFileSync(path.join(s.frames, 'sub', n), path.join(outside, n));
  const a = startAgent([...s.args, '--recursive', '--after-ingest', 'delete', '--checkpoint-every', '4', '--exit-when-idle', '3']);
  assert.ok(await waitFor(() => s.steps() >= 1, 60000), a.stderr());
  renameSync(path.join(s.frames, 'sub'), path.join(s.dir, 'sub-moved'));
  symlinkSync(outside, path.join(s.frames, 'sub'));
  const r = await a.exit;
  assert.equal(r.code, 0, a.stderr());
  assert.deepEqual(readdirSync(outside).sort(), [...names].sort(), 'outside files moved or deleted');
  assert.match(a.stderr(), /refused .*(resolves to|now resolves to) .*outside/);
  const learnt = ingested(s.state).size;
  assert.ok(learnt < names.length, 'outside files were ingested');
  console.log(`escape: sub/ swapped for a link to an outside directory after ${learnt} frames; all ${names.length} outside files untouched, the rest refused`);
});

test('item 1: a hard link in the watched directory is refused (it can alias any file); --allow-hard-links accepts it', async () => {
  const s = setup('hardlink');
  await writeFrames(s.frames, 8);
  const outside = path.join(s.dir, 'secret');
  mkdirSync(outside);
  const [secret] = await writeFrames(outside, 1);
  linkSync(path.join(outside, secret), path.join(s.frames, 'h.png'));
  let a = startAgent([...s.args, '--after-ingest', 'delete', '--exit-when-idle', '2']);
  assert.equal((await a.exit).code, 0, a.stderr());
  assert.match(a.stderr(), /refused h\.png: a hard link \(2 names\)/);
  assert.ok(!ingested(s.state).has('h.png'));
  assert.ok(existsSync(path.join(s.frames, 'h.png')) && existsSync(path.join(outside, secret)), 'a hard link or its target was removed');
  a = startAgent([...s.args, '--after-ingest', 'keep', '--allow-hard-links', '--exit-when-idle', '2']);
  assert.equal((await a.exit).code, 0, a.stderr());
  assert.ok(ingested(s.state).has('h.png'), a.stderr());
});

test('item 5: a file name that is not valid UTF-8 is quarantined (by its raw bytes) with a reason and counted', async () => {
  const s = setup('badname');
  await writeFrames(s.frames, 8);
  const raw = Buffer.concat([Buffer.from(s.frames + '/'), Buffer.from([0x66, 0xff, 0x2e, 0x70, 0x6e, 0x67])]); // "f\xff.png"
  copyFileSync(path.join(s.frames, readdirSync(s.frames)[0]), raw);
  const a = startAgent([...s.args, '--exit-when-idle', '2']);
  assert.equal((await a.exit).code, 0, a.stderr());
  assert.match(a.stderr(), /quarantined f%ff\.png: file name is not valid UTF-8/);
  const q = path.join(s.state, 'quarantine');
  assert.ok(existsSync(path.join(q, 'f%ff.png')) && existsSync(path.join(q, 'f%ff.png.reason')), readdirSync(q).join(', '));
  assert.match(a.stdout(), /, 1 quarantined,/);
});

test('item 7: the watched directory deleted and recreated is followed; one replaced by a link is reported and not followed', async () => {
  const s = setup('root');
  await writeFrames(s.frames, 8);
  let a = startAgent([...s.args, '--exit-when-idle', '6']);
  assert.ok(await waitFor(() => s.steps() >= 1, 60000), a.stderr());
  rmSync(s.frames, { recursive: true, force: true });
  mkdirSync(s.frames);
  const later = await writeFrames(s.frames, 8);
  let r = await a.exit;
  assert.equal(r.code, 0, a.stderr());
  assert.match(a.stderr(), /the watched directory .* was deleted and recreated; now watching the new one/);
  const got = ingested(s.state);
  assert.deepEqual(later.filter((n) => !got.has(n)), [], 'frames written to the recreated directory were not taken');

  const outside = path.join(s.dir, 'elsewhere');
  const there = await writeFrames(outside, 8);
  a = startAgent([...s.args, '--exit-when-idle', '4']);
  assert.ok(await waitFor(() => /watching/.test(a.stderr()), 60000), a.stderr());
  renameSync(s.frames, path.join(s.dir, 'frames-old'));
  symlinkSync(outside, s.frames);
  r = await a.exit;
  assert.equal(r.code, 0, a.stderr());
  assert.match(a.stderr(), /was replaced by a symbolic link to .*elsewhere; not followed/);
  assert.deepEqual(readdirSync(outside).sort(), [...there].sort());
  assert.ok(there.every((n) => !ingested(s.state).has(n)), 'frames behind the link were taken');
});

test('item 9: a writer that pauses longer than --stable-ms mid-file: the frame is taken whole once written, not quarantined', async () => {
  const s = setup('pause');
  await writeFrames(s.frames, 8);
  const src = path.join(s.dir, 'src');
  const [one] = await writeFrames(src, 1);
  const bytes = readFileSync(path.join(src, one));
  const a = startAgent([...s.args, '--exit-when-idle', '3']);
  assert.ok(await waitFor(() => /watching/.test(a.stderr()), 60000), a.stderr());
  const slow = path.join(s.frames, 'slow.png');
  writeFileSync(slow, bytes.subarray(0, bytes.length >> 1));
  await new Promise((r) => setTimeout(r, 1500)); // 15x --stable-ms
  appendFileSync(slow, bytes.subarray(bytes.length >> 1));
  const r = await a.exit;
  assert.equal(r.code, 0, a.stderr());
  assert.doesNotMatch(a.stderr(), /quarantined slow\.png/);
  assert.ok(ingested(s.state).has('slow.png'), a.stderr());
});

test('item 11: a second SIGTERM during the final checkpoint and export (< 50 ms after the first): they still finish, exit 0', async () => {
  const s = setup('sigterm');
  await writeFrames(s.frames, 200);
  for (let k = 0; k < 3; k++) {
    const before = s.steps();
    const a = startAgent([...s.args, '--exit-when-idle', '30']);
    assert.ok(await waitFor(() => s.steps() >= before + 2, 60000), a.stderr());
    a.child.kill('SIGTERM');
    // The second one while the final checkpoint and export are being written (at most 50 ms later).
    await waitFor(() => /\ncheckpoint /.test(a.stderr()), 50, 2);
    a.child.kill('SIGTERM');
    const r = await a.exit;
    assert.deepEqual(r, { code: 0, signal: null }, a.stderr());
    assert.match(a.stderr(), /\nexported /);
  }
});
