// What README tells a user to run agrees with what the code says and with the pinned packages.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { CUDA_INSTALL_HINT } from '../agent/trainer/backend.ts';
import { REPO } from './helpers/paths.ts';

test("the CUDA install line in README, the --ep cuda error hint and onnxruntime-node's installer agree", () => {
  const readme = readFileSync(path.join(REPO, 'README.md'), 'utf8');
  const inReadme = [...readme.matchAll(/ONNXRUNTIME_NODE_INSTALL=(\w+)/g)].map((m) => m[1]);
  const inHint = [...CUDA_INSTALL_HINT.matchAll(/ONNXRUNTIME_NODE_INSTALL=(\w+)/g)].map((m) => m[1]);
  assert.ok(inReadme.length > 0 && inHint.length === 1, 'both name an ONNXRUNTIME_NODE_INSTALL value');
  assert.deepEqual([...new Set(inReadme)], inHint, 'README and the error hint name the same value');
  // The installer of the pinned onnxruntime-node knows that value for linux/x64.
  const require = createRequire(path.join(REPO, 'package.json'));
  const meta = require('onnxruntime-node/script/install-metadata.js') as { requirements: Record<string, string[]> };
  assert.ok(meta.requirements['linux/x64'].includes(inHint[0]), `installer accepts ${inHint[0]} (it knows ${meta.requirements['linux/x64']})`);
  // And the CUDA 13 package the hint names is the one README names.
  const pkg = /com\.github\.asus4\.onnxruntime\.linux-x64-gpu@[\d.]+/.exec(CUDA_INSTALL_HINT)![0];
  assert.ok(readme.includes(pkg), `README names ${pkg}`);
});
