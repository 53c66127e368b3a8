// Methods of the comparison as configurations of the same parts (artifacts preset + overrides,
// buffer policy, replay rule): no method has its own loop. Budgets are equalised by bench/compare
// (updates x crops per arrival as ours').

import type { BufferPolicy } from '../buffer/buffer.ts';
import type { Replay } from '../trainer/learner.ts';

export interface Method {
  name: string;
  /** Artifact preset and overrides at the edge scale (edge encoder) ... */
  preset: string;
  sets: string[];
  /** ... and at the paper's scale (ResNet-18-CIFAR; protocols gpu-cifar10, paper-cifar10/100). */
  paperPreset: string;
  paperSets: string[];
  buffer: BufferPolicy;
  replay: Replay;
}

// The paper's eq. 1 in place of the code's MCC, with each scale's own weights (edge: 1 and 0.02, as the
// edge preset's mcc; paper: 50 and 1, as paper-cifar's).
const MCC_PAPER_EDGE = 'losses=[{"name":"mcc-paper","weight":1},{"name":"tcr","weight":0.02}]';
const MCC_PAPER_PAPER = 'losses=[{"name":"mcc-paper","weight":50},{"name":"tcr","weight":1}]';

export const METHODS: Record<string, Method> = {
  ours: { name: 'ours', preset: 'edge', sets: [], paperPreset: 'paper-cifar', paperSets: [], buffer: 'diverse', replay: 'mixed' },
  'ours-paper-eq': { name: 'ours-paper-eq', preset: 'edge', sets: [MCC_PAPER_EDGE], paperPreset: 'paper-cifar', paperSets: [MCC_PAPER_PAPER], buffer: 'diverse', replay: 'mixed' },
  'ours-buffer-replay': { name: 'ours-buffer-replay', preset: 'edge', sets: [], paperPreset: 'paper-cifar', paperSets: [], buffer: 'diverse', replay: 'buffer' },
  // Ablation of the buffer alone: ours with a reservoir instead of the diverse removal rule (the paper's
  // uncorrelated-gradient claim is about the buffer's contents).
  'ours-reservoir': { name: 'ours-reservoir', preset: 'edge', sets: [], paperPreset: 'paper-cifar', paperSets: [], buffer: 'reservoir', replay: 'mixed' },
  empssl: { name: 'empssl', preset: 'edge-empssl', sets: [], paperPreset: 'empssl', paperSets: [], buffer: 'diverse', replay: 'mixed' },
  // Two views instead of four (or 20) crops: bench/compare gives it more updates for the same crops.
  minred: { name: 'minred', preset: 'edge-minred', sets: [], paperPreset: 'minred', paperSets: [], buffer: 'minred', replay: 'buffer' },
  // SCALE: pseudo-supervised contrast + IRD toward the model as each arrival found it, PSA memory on
  // backbone features; each step this arrival's images and as many from memory (its 128 + 128).
  scale: { name: 'scale', preset: 'edge-scale', sets: [], paperPreset: 'scale', paperSets: [], buffer: 'psa', replay: 'mixed' },
  'simclr-reservoir': { name: 'simclr-reservoir', preset: 'edge-simclr', sets: [], paperPreset: 'simclr', paperSets: [], buffer: 'reservoir', replay: 'buffer' },
};
