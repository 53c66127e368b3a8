// ssocl command line. Every flag is validated up front; errors name the flag, the value and what is
// accepted, and exit with code 2.

import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import path from 'node:path';
import { EPS, type EP } from './trainer/backend.ts';

import { REPO_ROOT } from './paths.ts';

// The shared data sets beside the repository, or SSOCL_DATA.
const DEFAULT_DATA = process.env.SSOCL_DATA ?? path.resolve(REPO_ROOT, '../shared/data');

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


// Shared by embed and classify.
function inferOptions<T>(y: import('yargs').Argv<T>) {
  return y
    .options(epOption)
    .positional('input', { type: 'string', describe: 'an image file or a directory (searched recursively)' })
    .option('watch', { type: 'string', describe: 'instead of INPUT: keep taking new frames written to this directory' })
    .check((a) => {
      if (!a.input === !a.watch) throw new UsageError('give one input: INPUT (an image or a directory) or --watch DIR');
      if (!(Number.isInteger(a.batch) && (a.batch as number) > 0)) throw new UsageError(`--batch ${a.batch}: must be a positive integer`);
      return true;
    })
    .option('model', { type: 'string', default: 'models/latest.onnx', describe: 'exported encoder; with --watch it is reloaded whenever the file is replaced' })
    .option('batch', { type: 'number', default: 256, describe: 'frames per encoder run (with --watch: at most this many of those waiting; 1 = single-frame latency mode)' })
    .option('recursive', { type: 'boolean', default: false, describe: 'with --watch: also watch subdirectories' })
    .option('fit', { choices: ['cover', 'letterbox'] as const, default: 'cover' as const, describe: 'resize to the model size by centre crop or padding' })
    .option('max-pixels', { type: 'number', default: 40_000_000, describe: 'refuse images with more pixels' })
    .option('stable-ms', { type: 'number', default: 300, describe: 'with --watch: a new file is read once its size has not changed for this long' })
    .option('reload-ms', { type: 'number', default: 1000, describe: 'with --watch: how often to look for a new model file (0: never)' })
    .option('exit-when-idle', { type: 'number', default: 0, describe: 'with --watch: stop after this many seconds without a new frame (0: never)' });
}

function inferArgs(a: Record<string, any>) {
  return {
    input: a.input, watch: a.watch, recursive: a.recursive, model: a.model, ep: a.ep as EP, epFallback: a['ep-fallback'] as EP | undefined, threads: a.threads,
    batch: a.batch, fit: a.fit, maxPixels: a['max-pixels'], stableMs: a['stable-ms'], reloadMs: a['reload-ms'], exitWhenIdle: a['exit-when-idle'],
  };
}

await yargs(hideBin(process.argv))
  .scriptName('ssocl')
  .usage('$0 <command> [options]\n\nSelf-supervised online continual learning on edge devices.')
  .command(
    'artifacts',
    'compile a preset into training-artifacts/<name>/ (manifest.json, train_step.onnx, embed.onnx, init.safetensors)',
    // The preset list comes from the compiler, loaded only when this command is given (async builder).
    async (y) => {
      const { PRESETS } = await import('../tools/artifacts/presets.ts');
      return y
        .option('preset', { type: 'string', default: 'edge', describe: `one of: ${Object.keys(PRESETS).join(', ')}` })
        .option('set', { type: 'string', array: true, default: [] as string[], describe: 'override a preset field: key=value (dotted path, JSON value)' })
        .option('out', { type: 'string', describe: 'output directory (default training-artifacts/<name>)' })
        .option('name', { type: 'string', describe: 'artifact name (default: the preset name, or <preset>-custom with --set)' })
        .option('check', { type: 'boolean', default: false, describe: 'compare the existing directory with a fresh build instead of writing' });
    },
    async (a) => {
      const { artifactsCommand } = await import('./commands/artifacts.ts');
      await artifactsCommand({ preset: a.preset, set: a.set, out: a.out, name: a.name, check: a.check });
    },
  )
  .command(
    'run',
    'learn from frames written to a directory: diverse buffer, compiled training steps, checkpoints, exported encoder',
    (y) =>
      y
        .options(epOption)
        .option('watch', { type: 'string', describe: 'directory to take frames from (jpg, jpeg, png, webp, bmp, ppm, pgm)' })
        .option('camera', { type: 'string', describe: 'instead of --watch: a camera (/dev/video0), a stream URL (rtsp://...) or a video file, read through ffmpeg' })
        .option('fps', { type: 'number', default: 0, describe: 'with --camera: frames per second taken from the input (0: every frame)' })
        .option('size', { type: 'string', describe: 'with --camera on a device: capture resolution WxH asked of the camera (frames are then scaled to the training size)' })
        .option('ffmpeg', { type: 'string', default: process.env.SSOCL_FFMPEG ?? 'ffmpeg', describe: 'with --camera: the ffmpeg binary (SSOCL_FFMPEG)' })
        .option('stall-s', { type: 'number', default: 10, describe: 'with --camera on a live source: seconds without a frame before ffmpeg is restarted' })
        .option('dataset', { choices: ['demo', 'cifar10', 'cifar100'] as const, describe: 'instead of --watch: replay a data set stream in-process (benchmarks, demos)' })
        .option('stream-order', { choices: ['seq', 'seq-bl', 'seq-im'] as const, default: 'seq' as const, describe: 'with --dataset cifar10|cifar100: the class-incremental order' })
        .option('trial', { type: 'number', default: 0, describe: 'with --dataset: seed of the stream order' })
        .option('data-dir', { type: 'string', default: DEFAULT_DATA, describe: 'with --dataset: folder holding the data sets' })
        .option('per-class', { type: 'number', describe: 'with --dataset cifar10|cifar100: a reduced stream, each class cut to this many images (seq-im keeps its imbalance)' })
        .option('eval-every', { type: 'number', describe: 'with --dataset cifar10|cifar100: kNN accuracy every this % of the stream (log + metrics), e.g. 25' })
        .option('eval-memory', { type: 'number', default: 10000, describe: 'with --eval-every: train images used as the kNN memory (queries: the whole test split)' })
        .check((a) => {
          if ([a.watch, a.dataset, a.camera].filter(Boolean).length !== 1) throw new UsageError('give one source: --watch DIR, --camera DEVICE|URL|FILE or --dataset demo|cifar10|cifar100');
          if (a.size !== undefined && !/^\d+x\d+$/.test(String(a.size))) throw new UsageError(`--size ${a.size}: expected WxH, e.g. 640x480`);
          if (!(Number(a.fps) >= 0)) throw new UsageError(`--fps ${a.fps}: must be 0 or more`);
          if (!(Number(a['stall-s']) > 0)) throw new UsageError(`--stall-s ${a['stall-s']}: must be positive`);
          return true;
        })
        .option('recursive', { type: 'boolean', default: false, describe: 'also watch subdirectories' })
        .option('allow-hard-links', { type: 'boolean', default: false, describe: 'read frames that have more than one hard link (refused by default: a hard link can alias a file outside the watched directory)' })
        .option('root-replaced', { choices: ['follow', 'stop'] as const, default: 'follow' as const, describe: 'when the watched directory is deleted and recreated: watch the new one, or stop (a link put in its place is never followed)' })
        .option('order', { choices: ['name', 'mtime'] as const, default: 'name' as const, describe: 'order of the files already there at start' })
        .option('after-ingest', { choices: ['keep', 'move', 'delete'] as const, default: 'keep' as const, describe: 'what to do with a file once two verified checkpoints hold what was learnt from it (move, delete: it leaves the watched directory when read and waits in <state>/held/ until then)' })
        .option('processed', { type: 'string', describe: 'where --after-ingest move puts files (default <state>/processed)' })
        .option('quarantine', { type: 'string', describe: 'where unreadable files go, each with a .reason file (default <state>/quarantine)' })
        .option('artifacts', { type: 'string', default: path.join(REPO_ROOT, 'training-artifacts/edge'), describe: 'training artifacts directory' })
        .option('state', { type: 'string', default: 'ssocl-state', describe: 'checkpoints and the ingestion ledger' })
        .option('models', { type: 'string', default: 'models', describe: 'where encoders are exported (latest.onnx, latest.json, encoder-<step>.onnx)' })
        .option('fit', { choices: ['cover', 'letterbox'] as const, default: 'cover' as const, describe: 'resize to the training size by centre crop or padding' })
        .option('max-pixels', { type: 'number', default: 40_000_000, describe: 'refuse images with more pixels (decompression bombs)' })
        .option('overflow', { choices: ['block', 'drop-oldest'] as const, default: 'block' as const, describe: 'when frames arrive faster than training: leave them waiting on disk, or drop the oldest waiting' })
        .option('backlog', { type: 'number', default: 10000, describe: 'waiting frames beyond which drop-oldest drops' })
        .option('checkpoint-every', { type: 'string', default: '5m', describe: 'steps (e.g. 200) or time (30s, 5m, 1h); also on exit and on SIGINT/SIGTERM' })
        .option('export-every', { type: 'string', default: '10m', describe: 'steps or time; also on exit' })
        .option('fresh', { type: 'boolean', default: false, describe: 'ignore existing checkpoints and the ledger, start over (needed when checkpoints exist but none verifies: exit code 6 otherwise)' })
        .option('metrics', { type: 'string', describe: 'append one JSON line per step to this file' })
        .option('emit-embeddings', { type: 'string', describe: 'append the embedding (backbone features, current weights) of every ingested frame to this JSON-lines file' })
        .option('updates', { type: 'number', describe: 'updates per arrival, K (default from the artifacts)' })
        .option('replay', { choices: ['mixed', 'buffer'] as const, describe: 'batch composition (default from the artifacts)' })
        .option('buffer-size', { type: 'number', describe: 'buffer capacity M (default from the artifacts)' })
        .option('buffer', { choices: ['diverse', 'minred', 'reservoir', 'fifo'] as const, describe: 'buffer policy (default diverse; minred for SimSiam artifacts)' })
        .option('lr', { type: 'number', describe: 'learning rate (default from the artifacts)' })
        .option('lr-schedule', { choices: ['constant', 'cosine'] as const, default: 'constant' as const })
        .option('lr-steps', { type: 'number', default: 10000, describe: 'steps over which the cosine schedule decays' })
        .option('seed', { type: 'number', default: 0, describe: 'seed of replay draws and crops' })
        .option('max-arrivals', { type: 'number', default: 0, describe: 'stop after this many arrivals (0: never)' })
        .option('max-seconds', { type: 'number', default: 0, describe: 'stop after this many seconds (0: never)' })
        .option('exit-when-idle', { type: 'number', default: 0, describe: 'stop after this many seconds without a new frame (0: never)' })
        .option('disk-retry-s', { type: 'number', default: 30, describe: 'disk full: seconds between tries to write the checkpoint (the agent pauses meanwhile)' })
        .option('max-skips', { type: 'number', default: 10, describe: 'consecutive non-finite steps before stopping' })
        .option('stable-ms', { type: 'number', default: 300, describe: 'a new file is read once its size has not changed for this long' }),
    async (a) => {
      const { runCommand } = await import('./commands/run.ts');
      await runCommand(a);
    },
  )
  .command(
    'eval <model>',
    'kNN accuracy of an exported encoder on CIFAR-10 or CIFAR-100',
    (y) =>
      y
        .positional('model', { type: 'string', demandOption: true, describe: 'an exported encoder (.onnx)' })
        .option('dataset', { choices: ['cifar10', 'cifar100'] as const, default: 'cifar10' as const })
        .option('folder', { type: 'string', describe: 'instead of --dataset: your own labelled images, ROOT/<class>/*.png|jpg (every 5th per class is a query) or ROOT/train/<class>/ + ROOT/test|val/<class>/' })
        .option('data-dir', { type: 'string', default: DEFAULT_DATA, describe: 'folder holding cifar-10-batches-bin/ or cifar-100-binary/' })
        .option('protocol', { choices: ['weighted', 'scale'] as const, default: 'weighted' as const, describe: 'weighted cosine kNN (T 0.07), or SCALE\'s (k 50, uniform, Euclidean)' })
        .option('k', { type: 'string', default: '20,50', describe: 'neighbours, comma-separated (weighted protocol)' })
        .option('threads', { type: 'number' })
        .option('seed', { type: 'number', default: 0, describe: 'draws of the scale protocol subsets' }),
    async (a) => {
      const ks = String(a.k).split(',').map(Number);
      if (ks.some((k) => !(Number.isInteger(k) && k > 0))) throw new Error(`--k ${a.k}: expected positive integers, e.g. 20,50`);
      const { evalCommand } = await import('./commands/eval.ts');
      await evalCommand({ model: a.model!, dataset: a.dataset, folder: a.folder, dataDir: a['data-dir'], protocol: a.protocol, k: ks, threads: a.threads, seed: a.seed });
    },
  )
  .command(
    'data fetch <dataset>',
    'download CIFAR-10 or CIFAR-100 (official binary version) with resume and checksum verification',
    (y) =>
      y
        .positional('dataset', { choices: ['cifar10', 'cifar100'] as const, demandOption: true })
        .option('dir', { type: 'string', default: DEFAULT_DATA, describe: 'where to put the archive and the unpacked folder' })
        .option('url', { type: 'string', describe: 'a mirror of the official archive (same file, same checksum)' }),
    async (a) => {
      const { DATASETS, fetchDataset } = await import('../tools/data/fetch.ts');
      const src = { ...DATASETS[a.dataset!], ...(a.url ? { url: a.url } : {}) };
      const out = await fetchDataset(src, a.dir, (s) => process.stderr.write(`${s}\n`));
      process.stdout.write(`${out}\n`);
    },
  )
  .command(
    'stream',
    'write a class-incremental stream of a data set as image files (a camera for `run --watch`), or print its order',
    (y) =>
      y
        .option('dataset', { choices: ['cifar10', 'cifar100'] as const, default: 'cifar10' as const })
        .option('data-dir', { type: 'string', default: DEFAULT_DATA })
        .option('order', { choices: ['seq', 'seq-bl', 'seq-im'] as const, default: 'seq' as const })
        .option('trial', { type: 'number', default: 0, describe: 'seed of the within-class shuffles and the boundary blur' })
        .option('to', { type: 'string', describe: 'output directory' })
        .option('fps', { type: 'number', default: 0, describe: 'frames per second (0: as fast as possible)' })
        .option('format', { choices: ['png', 'jpg'] as const, default: 'png' as const })
        .option('limit', { type: 'number', describe: 'write only the first N frames' })
        .option('print-order', { type: 'boolean', default: false, describe: 'print the index order as JSON and exit' }),
    async (a) => {
      const { streamCommand } = await import('./commands/stream.ts');
      await streamCommand({ dataset: a.dataset, dataDir: a['data-dir'], order: a.order, trial: a.trial, to: a.to, fps: a.fps, format: a.format, printOrder: a['print-order'], limit: a.limit });
    },
  )
  .command(
    'bench',
    'the paper\'s comparison (bench/compare.ts): methods x stream orders x paired trials, kNN beside the random-init floor; edge protocols on CPU, gpu/paper protocols for a GPU',
    (y) =>
      y
        .option('protocol', {
          choices: ['edge-cifar10', 'edge-cifar100', 'gpu-cifar10', 'paper-cifar10', 'paper-cifar100'] as const,
          default: 'edge-cifar10' as const,
          describe: 'edge-*: edge encoder, reduced stream (450/class), b 32, K 2, kNN memory 10000; gpu-cifar10: ResNet-18-CIFAR, 10,000-image stream, b 100, K 1; paper-*: the full stream, b 100, K 10, memory = train split. cifar100 streams the 20 superclasses and reports fine and superclass kNN',
        })
        .option('methods', { type: 'string', default: 'ours,empssl,minred,simclr-reservoir', describe: 'also: ours-paper-eq, ours-buffer-replay, ours-reservoir (ablations of ours)' })
        .option('orders', { type: 'string', default: 'seq', describe: 'seq, seq-bl, seq-im (comma-separated)' })
        .option('trials', { type: 'string', default: '0,1,2,3,4', describe: 'paired seeds: same init, stream order, replay and crop draws across methods' })
        .option('per-class', { type: 'string', describe: "images per class of the stream, or 'all' (default: the protocol's)" })
        .option('updates', { type: 'number', describe: "updates per arrival for ours; 2-crop methods get more so updates x crops match (default: the protocol's)" })
        .option('memory', { type: 'string', describe: "train images as kNN memory, or 'all' (default: the protocol's)" })
        .option('queries', { type: 'string', describe: "test images as kNN queries, a fixed random subset, or 'all' (default: all; fewer only for quick checks)" })
        .option('ep', { choices: ['cpu', 'cuda', 'webgpu', 'wasm'] as const, default: 'cpu' as const, describe: 'execution provider of the training steps and features' })
        .option('threads', { type: 'number', describe: 'ORT threads (CPU); default all cores' })
        .option('plan', { type: 'boolean', default: false, describe: 'print what each method would run (presets, stream sizes, updates x crops, done or not) and exit' })
        .option('report', { type: 'boolean', default: false, describe: 'print the tables and draw the charts of the rows already in --json; run nothing' })
        .option('data-dir', { type: 'string', default: DEFAULT_DATA })
        .option('json', { type: 'string', default: path.join(REPO_ROOT, 'bench/out/compare.jsonl'), describe: 'results, one JSON line per run; a run already there is skipped (resume)' }),
    async (a) => {
      const { spawnSync } = await import('node:child_process');
      const c100 = a.protocol.endsWith('cifar100');
      const args = ['--import', 'tsx', path.join(REPO_ROOT, 'bench/compare.ts'), '--protocol', a.protocol, '--methods', a.methods, '--orders', a.orders, '--trials', a.trials, '--ep', a.ep, '--data', path.join(a['data-dir'], c100 ? 'cifar-100-binary' : 'cifar-10-batches-bin'), '--json', a.json];
      if (a['per-class'] !== undefined) args.push('--per-class', a['per-class']);
      if (a.updates !== undefined) args.push('--updates', String(a.updates));
      if (a.memory !== undefined) args.push('--memory', a.memory);
      if (a.queries !== undefined) args.push('--queries', a.queries);
      if (a.threads !== undefined) args.push('--threads', String(a.threads));
      if (a.plan) args.push('--plan');
      if (a.report) args.push('--report');
      const r = spawnSync(process.execPath, args, { stdio: 'inherit' });
      process.exitCode = r.status ?? 1;
    },
  )
  .command(
    'embed [input]',
    'embeddings of frames (an image, a directory, or --watch DIR) from an exported encoder, hot-reloaded when it is replaced',
    (y) =>
      inferOptions(y)
        .option('out', { type: 'string', describe: 'output file (default: JSON lines on stdout); .npy or .safetensors write one matrix' })
        .option('format', { choices: ['jsonl', 'npy', 'safetensors'] as const, describe: 'output format (default: from the --out extension, else jsonl)' })
        .option('output', { choices: ['features', 'embedding'] as const, default: 'features' as const, describe: 'backbone features (what kNN uses) or the L2-normalised projection' }),
    async (a) => {
      const { embedCommand } = await import('./commands/infer.ts');
      await embedCommand({ ...inferArgs(a), out: a.out, format: a.format, output: a.output });
    },
  )
  .command(
    'classify [input]',
    'few-shot recognition of frames against a labelled support set DIR/<label>/*.png|jpg (weighted cosine kNN), with an optional novelty score',
    (y) =>
      inferOptions(y)
        .option('support', { type: 'string', demandOption: true, describe: 'labelled examples: DIR/<label>/*.png|jpg (a few per label)' })
        .option('out', { type: 'string', describe: 'output file (default: JSON lines on stdout)' })
        .option('k', { type: 'number', default: 20, describe: 'neighbours that vote' })
        .option('temperature', { type: 'number', default: 0.07, describe: 'vote weight exp(similarity / T)' })
        .option('reject-below', { type: 'number', describe: 'label "unknown" when the winning share of the vote is below this (0-1)' })
        .option('novelty', { type: 'boolean', default: false, describe: 'add novelty = 1 - cosine similarity to the nearest support (and buffer) embedding' })
        .option('novelty-buffer', { type: 'string', describe: 'also compare with the images in the agent\'s buffer (its newest checkpoint in this state directory)' }),
    async (a) => {
      const k = a.k;
      if (!(Number.isInteger(k) && k > 0)) throw new UsageError(`--k ${k}: must be a positive integer`);
      if (!(a.temperature > 0)) throw new UsageError(`--temperature ${a.temperature}: must be positive`);
      if (a['reject-below'] !== undefined && !(a['reject-below'] >= 0 && a['reject-below'] <= 1)) throw new UsageError(`--reject-below ${a['reject-below']}: must be between 0 and 1`);
      const { classifyCommand } = await import('./commands/infer.ts');
      await classifyCommand({ ...inferArgs(a), support: a.support, out: a.out, k, temperature: a.temperature, rejectBelow: a['reject-below'], novelty: a.novelty || a['novelty-buffer'] !== undefined, noveltyState: a['novelty-buffer'] });
    },
  )
  .command(
    'demo',
    'the built-in default (npm start): replay the demo stream as image files into a temporary directory and run the agent on it, then export',
    (y) =>
      y
        .options(epOption)
        .option('seconds', { type: 'number', default: 120, describe: 'how long the agent trains' })
        .option('fps', { type: 'number', default: 20, describe: 'frames written per second by the demo "camera"' })
        .option('models', { type: 'string', default: path.join(REPO_ROOT, 'models'), describe: 'where the encoder is exported' })
        .option('artifacts', { type: 'string', default: path.join(REPO_ROOT, 'training-artifacts/edge'), describe: 'artifact directory' }),
    async (a) => {
      const { demoCommand } = await import('./commands/demo.ts');
      await demoCommand({ ep: a.ep, epFallback: a['ep-fallback'], threads: a.threads, seconds: a.seconds, fps: a.fps, models: a.models, artifacts: a.artifacts });
    },
  )
  .demandCommand(1, 'name a command (see --help)')
  .strict()
  .fail((msg, err) => {
    if (err && !(err instanceof UsageError)) {
      process.stderr.write(`ssocl: ${err.message}\n`);
      const code = (err as { exitCode?: number }).exitCode;
      process.exit(code ?? (err.name === 'ManifestError' || err.name === 'EpError' || err.name === 'EncoderError' || err.name === 'CameraError' || /^--/.test(err.message) ? 2 : 1));
    }
    fail(msg ?? err?.message ?? 'invalid arguments');
  })
  .help()
  .parseAsync();
// The command is done: exit now rather than when every handle is gone. A watched directory that keeps
// receiving files can keep chokidar's write-settling timers alive after it was closed (seen in the 1-hour
// soak: a `run --max-seconds` that had checkpointed, exported and printed its summary never exited).
process.exit(process.exitCode ?? 0);
