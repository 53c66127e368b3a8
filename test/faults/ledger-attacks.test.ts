// Attack: file names from an untrusted watched directory are written into the ingestion ledger. A name
// with a newline must not split into lines (it would be ingested again after every restart), nor plant
// a line of its own that marks another file as taken; any string round-trips, and ledgers written in the
// old format still read.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Ledger } from '../../agent/sources/ledger.ts';
import { Rng } from '../../core/rng.ts';
import { startAgent, tinyArtifacts, writeFrames } from './helpers.ts';

function tmp(): { root: string; file: string } {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-ledger-'));
  return { root, file: path.join(root, 'state/ingested.log') };
}

test('a name with a newline (and tabs, CR, backslashes) is still taken after the ledger is reopened', () => {
  const { root, file } = tmp();
  try {
    const names = ['a\nb.png', 'tab\there.png', 'cr\r.png', 'back\\slash\\n.png', '\n', 'end\\'];
    const l = new Ledger(file);
    names.forEach((n, i) => l.record('ingested', n, 100 + i, 5000.7 + i));
    const again = new Ledger(file);
    names.forEach((n, i) => assert.ok(again.has(n, 100 + i, 5000.7 + i), JSON.stringify(n)));
    assert.equal(again.count, names.length);
    assert.equal(readFileSync(file, 'utf8').split('\n').length, names.length + 1, 'one line per record');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a crafted name cannot plant a ledger line that marks another file as taken', () => {
  const { root, file } = tmp();
  try {
    const l = new Ledger(file);
    l.record('ingested', 'x.png\ningested\t123\t456\tvictim.png', 10, 20);
    l.record('quarantined', 'y.png\tingested\t123\t456\tvictim.png', 10, 20);
    const again = new Ledger(file);
    assert.equal(again.has('victim.png', 123, 456), false, 'victim.png suppressed by a planted line');
    assert.ok(again.has('x.png\ningested\t123\t456\tvictim.png', 10, 20));
    assert.ok(again.has('y.png\tingested\t123\t456\tvictim.png', 10, 20));
    assert.equal(again.count, 2);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a ledger in the old format (no header, plain tab-separated lines, one cut short) still reads', () => {
  const { root, file } = tmp();
  try {
    const l0 = new Ledger(file); // creates state/
    assert.equal(l0.count, 0);
    // As the previous version wrote it: a Windows-style path with backslashes is literal, a tab in a
    // name is everything after the third tab; the last line was cut short by a crash.
    writeFileSync(file, 'ingested\t10\t20\tf0001.png\nquarantined\t11\t21\tsub\\f0002.png\ndropped\t12\t22\ta\tb.png\ningested\t13\t2');
    const l = new Ledger(file);
    assert.ok(l.has('f0001.png', 10, 20));
    assert.ok(l.has('sub\\f0002.png', 11, 21));
    assert.ok(l.has('a\tb.png', 12, 22));
    assert.equal(l.count, 3);
    // New records append after the cut line, on their own line, and everything reads back.
    l.record('ingested', 'new\n.png', 14, 24);
    l.record('ingested', 'sub\\f0002.png', 15, 25);
    const again = new Ledger(file);
    for (const [n, s, m] of [['f0001.png', 10, 20], ['sub\\f0002.png', 11, 21], ['a\tb.png', 12, 22], ['new\n.png', 14, 24], ['sub\\f0002.png', 15, 25]] as const) assert.ok(again.has(n, s, m), JSON.stringify(n));
    assert.equal(again.count, 5);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('any string round-trips through the ledger (random strings with separators, escapes, lone surrogates, U+FFFD)', () => {
  const { root, file } = tmp();
  try {
    const rng = new Rng(2105);
    // Drawn from the troublesome characters more often than from the rest of UTF-16.
    const special = ['\t', '\n', '\r', '\\', '\\n', '\\t', '\\u', 'u', 'n', 't', ':e', 'ingested', '\uFFFD', '\uD800', '\uDBFF', '\uDC00', '\uDFFF', '\uD83D\uDE00', '\0', '\u2028', '.png', '/'];
    const draw = (): string => {
      let s = '';
      const n = rng.int(12);
      for (let k = 0; k < n; k++) s += rng.int(3) === 0 ? String.fromCharCode(rng.int(0x10000)) : special[rng.int(special.length)];
      return s;
    };
    const l = new Ledger(file);
    const recorded = new Map<string, [string, number, number]>();
    for (let i = 0; i < 2000; i++) {
      const e: [string, number, number] = [draw(), rng.int(4), rng.int(4) + 0.5];
      l.record(['ingested', 'quarantined', 'dropped'][rng.int(3)] as 'ingested', ...e);
      recorded.set(Ledger.key(...e), e);
    }
    const again = new Ledger(file);
    assert.equal(again.count, recorded.size, 'a record lost, split or merged with another');
    for (const [n, s, m] of recorded.values()) assert.ok(again.has(n, s, m), `lost ${JSON.stringify(n)} ${s} ${m}`);
    // And nothing else: a near miss of each name (one character more or less) is not taken unless recorded.
    for (const [n, s, m] of recorded.values()) {
      for (const other of [n + '\n', n.slice(0, -1), `x${n}`]) if (!recorded.has(Ledger.key(other, s, m))) assert.equal(again.has(other, s, m), false, JSON.stringify(other));
    }
    // Keys: distinct triples never share one (a path holding tabs and digits included).
    const triples: [string, number, number][] = [['a\t1', 2, 3], ['a', 1, 2], ['a\t1\t2', 3, 4], ['a', 12, 3], ['1\ta', 2, 3], ['', 1, 2]];
    assert.equal(new Set(triples.map((t) => Ledger.key(...t))).size, triples.length);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('end to end: frames whose names hold newlines are each ingested once over a restart, and cannot hide another frame', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-fault-ledger-'));
  try {
    const art = tinyArtifacts(path.join(root, 'art'));
    const frames = path.join(root, 'frames');
    const state = path.join(root, 'state');
    const written = await writeFrames(frames, 8);
    // The victim, written only later, will have exactly this size and mtime (ms, whole seconds).
    const victimBytes = readFileSync(path.join(frames, written[7]));
    const victimMtime = 1_700_000_000;
    // Four real frames under hostile names (one arrival of the tiny artifacts): one would plant a line
    // marking victim.png as ingested if a name could split into lines.
    const hostile = ['a\nb.png', `evil.png\ningested\t${victimBytes.length}\t${victimMtime * 1000}\tvictim.png`, 'cr\r\n.png', 'tab\t\\n.png'];
    hostile.forEach((h, i) => renameSync(path.join(frames, written[i]), path.join(frames, h)));
    const names = [...hostile, ...written.slice(4)];
    const args = ['--watch', frames, '--artifacts', art, '--state', state, '--models', path.join(root, 'models'), '--quarantine', path.join(root, 'q'), '--threads', '1', '--stable-ms', '100', '--exit-when-idle', '3'];
    // The counts carry over through the checkpoint, so they are totals over both runs.
    const counts = (out: string) => {
      const m = /(\d+) frames ingested, (\d+) quarantined/.exec(out);
      assert.ok(m, out);
      return { ingested: Number(m[1]), quarantined: Number(m[2]) };
    };
    const ledgerFile = path.join(state, 'ingested.log');
    const a = startAgent(args);
    assert.equal((await a.exit).code, 0, a.stderr());
    assert.deepEqual(counts(a.stdout()), { ingested: 8, quarantined: 0 }, a.stdout() + a.stderr());

    // The restart sees the same 8 (kept in place) plus 4 new ones, victim.png among them.
    writeFileSync(path.join(frames, 'victim.png'), victimBytes);
    utimesSync(path.join(frames, 'victim.png'), victimMtime, victimMtime);
    names.push('victim.png', ...(await writeFrames(frames, 3)));
    const b = startAgent(args);
    assert.equal((await b.exit).code, 0, b.stderr());
    assert.deepEqual(counts(b.stdout()), { ingested: 12, quarantined: 0 }, b.stdout() + b.stderr());
    // A third run with nothing new: takes nothing, and by its end every frame has its ledger line (a
    // frame may be committed only at the checkpoint after the one that learnt it).
    const c = startAgent(args);
    assert.equal((await c.exit).code, 0, c.stderr());
    assert.deepEqual(counts(c.stdout()), { ingested: 12, quarantined: 0 }, c.stdout() + c.stderr());
    const text = readFileSync(ledgerFile, 'utf8');
    assert.equal(text.split('\n').filter(Boolean).length, 12, `one ledger line per frame:\n${text}`);
    const l = new Ledger(ledgerFile);
    assert.equal(l.count, 12);
    for (const n of names) {
      const st = statSync(path.join(frames, n));
      assert.ok(l.has(n, st.size, st.mtimeMs), `${JSON.stringify(n)} not in the ledger as itself`);
    }
    console.log(`ledger: 4 frames with newlines in their names (one crafted to plant a line for victim.png) ingested once each over three runs; victim.png ingested; 12 frames, 12 ledger lines`);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
