// The options every ORT session opens with (agent/trainer/backend.ts): CPU sessions stop their workers'
// spinning at the end of each run (bench/spin.ts: the agent's alternating sessions and host work lost
// 16-25 % of an arrival to the previous session's spinning workers), and a caller's options still win.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sessionOptions } from '../agent/trainer/backend.ts';

test('CPU sessions stop spinning at the end of each run; a caller may override it or add to it', () => {
  const cpu = sessionOptions('cpu', { threads: 2 }) as { extra: { session: Record<string, unknown> }; intraOpNumThreads: number };
  assert.equal(cpu.extra.session.force_spinning_stop, '1');
  assert.equal(cpu.intraOpNumThreads, 2);
  // A caller's own config entries merge with the default rather than replace it.
  const more = sessionOptions('cpu', { session: { enableProfiling: true, extra: { session: { intra_op: { allow_spinning: '0' } } } } }) as { extra: { session: Record<string, unknown> }; enableProfiling: boolean };
  assert.deepEqual(more.extra.session, { force_spinning_stop: '1', intra_op: { allow_spinning: '0' } });
  assert.equal(more.enableProfiling, true);
  const back = sessionOptions('cpu', { session: { extra: { session: { force_spinning_stop: '0' } } } }) as { extra: { session: Record<string, unknown> } };
  assert.equal(back.extra.session.force_spinning_stop, '0');
  // Other EPs are unmeasured: ORT's defaults.
  assert.equal((sessionOptions('wasm', {}) as { extra?: unknown }).extra, undefined);
});
