// The dir source: start-up order, extension filter, ledger (no file twice), overflow policies,
// and symbolic links that point outside the watched directory.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DirSource } from '../agent/sources/dir.ts';
import { Ledger } from '../agent/sources/ledger.ts';

function setup() {
  const root = mkdtempSync(path.join(tmpdir(), 'ssocl-src-'));
  const dir = path.join(root, 'frames');
  mkdirSync(dir);
  return { root, dir, ledger: new Ledger(path.join(root, 'state/ingested.log')) };
}

const opts = (dir: string, ledger: Ledger, over: Partial<ConstructorParameters<typeof DirSource>[0]> = {}) => ({
  dir,
  recursive: false,
  order: 'name' as const,
  ledger,
  ignore: [],
  overflow: 'block' as const,
  backlog: 1000,
  stableMs: 50,
  ...over,
});

test('existing files come in name or mtime order; non-image files are ignored; the ledger skips what was taken', async () => {
  const { root, dir, ledger } = setup();
  try {
    for (const [name, age] of [['b.png', 3], ['a.jpg', 1], ['c.webp', 2]] as const) {
      writeFileSync(path.join(dir, name), 'x');
      const t = new Date(Date.now() - age * 60_000);
      utimesSync(path.join(dir, name), t, t);
    }
    writeFileSync(path.join(dir, 'readme.txt'), 'x');
    let s = new DirSource(opts(dir, ledger));
    await s.start();
    const byName = [await s.next(0), await s.next(0), await s.next(0), await s.next(0)].map((f) => f?.key ?? null);
    await s.close();
    assert.deepEqual(byName, ['a.jpg', 'b.png', 'c.webp', null]);
    s = new DirSource(opts(dir, ledger, { order: 'mtime' }));
    await s.start();
    const byTime = [await s.next(0), await s.next(0), await s.next(0)].map((f) => f!.key);
    await s.close();
    assert.deepEqual(byTime, ['b.png', 'c.webp', 'a.jpg']);
    // Taken files are in the ledger: a new source (a restart) offers only the rest.
    const f = byTime[0];
    const st = (await import('node:fs')).statSync(path.join(dir, f));
    ledger.record('ingested', f, st.size, st.mtimeMs);
    const restarted = new DirSource(opts(dir, new Ledger(path.join(root, 'state/ingested.log'))));
    await restarted.start();
    assert.equal(restarted.pending, 2);
    await restarted.close();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('overflow: block keeps every waiting frame; drop-oldest keeps the newest backlog and records the drops', async () => {
  const { root, dir, ledger } = setup();
  try {
    const past = new Date(Date.now() - 60_000); // written a minute ago: complete, offered at once
    for (let i = 0; i < 10; i++) {
      writeFileSync(path.join(dir, `f${i}.png`), 'x');
      utimesSync(path.join(dir, `f${i}.png`), past, past);
    }
    const block = new DirSource(opts(dir, ledger, { backlog: 3 }));
    await block.start();
    assert.equal(block.pending, 10);
    await block.close();
    const dropped: string[] = [];
    const drop = new DirSource(opts(dir, ledger, { overflow: 'drop-oldest', backlog: 3, onDrop: (f) => dropped.push(f.key) }));
    await drop.start();
    assert.equal(drop.pending, 3);
    assert.equal(drop.dropped, 7);
    assert.deepEqual(dropped, ['f0.png', 'f1.png', 'f2.png', 'f3.png', 'f4.png', 'f5.png', 'f6.png']);
    assert.equal((await drop.next(0))!.key, 'f7.png');
    await drop.close();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a file still being written at start is offered only once its size has settled', async () => {
  const { root, dir, ledger } = setup();
  try {
    writeFileSync(path.join(dir, 'growing.png'), 'part');
    const s = new DirSource(opts(dir, ledger, { stableMs: 300 }));
    await s.start();
    assert.equal(s.pending, 0); // just modified: not taken yet
    writeFileSync(path.join(dir, 'growing.png'), 'part and the rest');
    const f = await s.next(5000);
    assert.equal(f?.key, 'growing.png');
    assert.equal(f?.size, 17);
    await s.close();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a new file is offered once written; a link to a file outside the watched directory is refused', async () => {
  const { root, dir, ledger } = setup();
  try {
    writeFileSync(path.join(root, 'secret.png'), 'x');
    symlinkSync(path.join(root, 'secret.png'), path.join(dir, 'link.png'));
    const refused: string[] = [];
    const s = new DirSource(opts(dir, ledger, { onRefused: (p, why) => refused.push(`${path.basename(p)}: ${why}`) }));
    await s.start();
    for (let t = 0; t < 50 && !refused.length; t++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(s.pending, 0);
    assert.match(refused[0], /link.png: symbolic link to .*secret.png, outside the watched directory/);
    writeFileSync(path.join(dir, 'new.png'), 'x');
    const f = await s.next(5000);
    assert.equal(f?.key, 'new.png');
    await s.close();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
