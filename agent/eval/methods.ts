// Methods of the comparison as configurations of the same parts (artifacts preset + overrides,
// buffer policy, replay rule, updates scale): no method has its own loop.

import type { BufferPolicy } from '../buffer/buffer.ts';
import type { Replay } from '../trainer/learner.ts';

export interface Method {
  name: string;
  preset: string;
  sets: string[];
  buffer: BufferPolicy;
  replay: Replay;
  /** Updates per arrival relative to ours, so updates x crops is the same for every method. */
  updatesScale: number;
}

export const METHODS: Record<string, Method> = {
  ours: { name: 'ours', preset: 'edge', sets: [], buffer: 'diverse', replay: 'mixed', updatesScale: 1 },
  'ours-paper-eq': { name: 'ours-paper-eq', preset: 'edge', sets: ['losses=[{"name":"mcc-paper","weight":1},{"name":"tcr","weight":0.02}]'], buffer: 'diverse', replay: 'mixed', updatesScale: 1 },
  'ours-buffer-replay': { name: 'ours-buffer-replay', preset: 'edge', sets: [], buffer: 'diverse', replay: 'buffer', updatesScale: 1 },
  empssl: { name: 'empssl', preset: 'edge-empssl', sets: [], buffer: 'diverse', replay: 'mixed', updatesScale: 1 },
  // Two views instead of four crops: twice the updates for the same number of crops.
  minred: { name: 'minred', preset: 'edge-minred', sets: [], buffer: 'minred', replay: 'buffer', updatesScale: 2 },
  'simclr-reservoir': { name: 'simclr-reservoir', preset: 'edge-simclr', sets: [], buffer: 'reservoir', replay: 'buffer', updatesScale: 2 },
};
