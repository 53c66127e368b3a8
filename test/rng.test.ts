// The seeded generator every draw goes through (init, replay, crops): its words are xoshiro128**'s, so
// checkpoints and runs replay the same on every platform.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../core/rng.ts';

test('rng: xoshiro128** words from state 1 2 3 4 (the reference C generator)', () => {
  // From a plain Python transcription of the reference algorithm (unsigned 32-bit arithmetic).
  const want = [11520, 0, 5927040, 70819200, 2031721883, 1637235492, 1287239034, 3734860849, 3729100597, 4258142804];
  const r = new Rng(0);
  r.state = [1, 2, 3, 4, NaN];
  assert.deepEqual(Array.from({ length: want.length }, () => r.nextU32()), want);
});

test('rng: the state round-trips as unsigned words and the spare normal', () => {
  const a = new Rng(0xdeadbeef);
  for (let i = 0; i < 1001; i++) a.normal(); // an odd count leaves a spare
  const st = a.state;
  assert.ok(st.slice(0, 4).every((w) => Number.isInteger(w) && w >= 0 && w <= 0xffffffff), `words ${st.slice(0, 4)}`);
  assert.ok(!Number.isNaN(st[4]), 'a spare normal is kept');
  const b = new Rng(1);
  b.state = st;
  for (let i = 0; i < 1000; i++) assert.equal(b.normal(), a.normal());
  assert.deepEqual(b.state.slice(0, 4), a.state.slice(0, 4));
});
