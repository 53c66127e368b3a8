// Where tests find the shared data and reference values: ../shared beside the repository by default,
// or SSOCL_SHARED.
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const SHARED = process.env.SSOCL_SHARED ?? path.resolve(REPO, '../shared');
export const TESTVECTORS = path.join(SHARED, 'testvectors');
export const CIFAR10_DIR = process.env.SSOCL_CIFAR10 ?? path.join(SHARED, 'data/cifar-10-batches-bin');
