// ssocl command line. Every flag is validated up front; errors name the flag, the value and what is
// accepted, and exit with code 2.

import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import path from 'node:path';
import { PRESETS } from '../tools/artifacts/presets.ts';
import { EPS, type EP } from './trainer/backend.ts';

import { REPO_ROOT } from './paths.ts';

class UsageError extends Error {}

function fail(msg: string): never {
  process.stderr.write(`ssocl: ${msg}\n`);
  process.exit(2);
}

const epOption = {
  ep: { choices: EPS, default: 'cpu' as EP, describe: 'execution provider' },
  'ep-fallback': { choices: EPS, describe: 'EP to use when --ep cannot start (never silent)' },
  threads: { type: 'number' as const, describe: 'intra-op threads (default: all cores)' },
};

await yargs(hideBin(process.argv))
  .scriptName('ssocl')
  .usage('$0 <command> [options]\n\nSelf-supervised online continual learning on edge devices.')
  .command(
    'artifacts',
    'compile a preset into training-artifacts/<name>/ (manifest.json, train_step.onnx, embed.onnx, init.safetensors)',
    (y) =>
      y
        .option('preset', { type: 'string', default: 'edge', describe: `one of: ${Object.keys(PRESETS).join(', ')}` })
        .option('set', { type: 'string', array: true, default: [] as string[], describe: 'override a preset field: key=value (dotted path, JSON value)' })
        .option('out', { type: 'string', describe: 'output directory (default training-artifacts/<name>)' })
        .option('name', { type: 'string', describe: 'artifact name (default: the preset name, or <preset>-custom with --set)' })
        .option('check', { type: 'boolean', default: false, describe: 'compare the existing directory with a fresh build instead of writing' }),
    async (a) => {
      const { artifactsCommand } = await import('./commands/artifacts.ts');
      await artifactsCommand({ preset: a.preset, set: a.set, out: a.out, name: a.name, check: a.check });
    },
  )
  .command(
    'demo',
    'train the default (edge) artifacts for a short while on a built-in batch and print the falling loss',
    (y) =>
      y
        .options(epOption)
        .option('steps', { type: 'number', default: 30, describe: 'training steps' })
        .option('artifacts', { type: 'string', default: path.join(REPO_ROOT, 'training-artifacts/edge'), describe: 'artifact directory' }),
    async (a) => {
      const { demoCommand } = await import('./commands/demo.ts');
      await demoCommand({ ep: a.ep, epFallback: a['ep-fallback'], threads: a.threads, steps: a.steps, artifacts: a.artifacts });
    },
  )
  .demandCommand(1, 'name a command (see --help)')
  .strict()
  .fail((msg, err) => {
    if (err && !(err instanceof UsageError)) {
      process.stderr.write(`ssocl: ${err.message}\n`);
      process.exit(err.name === 'ManifestError' || err.name === 'EpError' || /^--/.test(err.message) ? 2 : 1);
    }
    fail(msg ?? err?.message ?? 'invalid arguments');
  })
  .help()
  .parseAsync();
