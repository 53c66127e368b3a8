// ssocl command line. Every flag is validated up front (numbers and paths through cli-args.ts); errors
// name the flag, the value and what is accepted, and exit with code 2.

import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import path from 'node:path';
import { existsSync } from 'node:fs';
import { EPS, type EP } from './trainer/backend.ts';
import { BUFFER_POLICY_TEXT, DEFAULT_METHOD, METHODS, METHOD_NAMES, artifactName, buildCommand } from './methods.ts';
import { EXAMPLES, INFER_GROUPS, RUN_GROUPS, examplesText, helpLayout, methodsHelp } from './cli-help.ts';

import { REPO_ROOT } from './paths.ts';
import { STATUS_EVERY_S, shownPath } from './commands/terminal.ts';
import { checkBrokerUrl, checkId } from './fleet/ids.ts';
import { unknownArgumentMessage } from './cli-suggest.ts';
import { UsageError, nums, readableDir, writableDir, writableFile, readableInput, readableFile, encoderFile, cifarDir, artifactsDir, datasetArg } from './cli-args.ts';

// The shared data sets beside the repository, or SSOCL_DATA.
const DEFAULT_DATA = process.env.SSOCL_DATA ?? path.resolve(REPO_ROOT, '../shared/data');

// Read from the raw arguments: an error can come before (or instead of) a successful parse.
const VERBOSE = (() => {
  const args = hideBin(process.argv);
  const end = args.indexOf('--');
  return (end < 0 ? args : args.slice(0, end)).some((a) => a === '--verbose' || a === '--verbose=true');
})();

// Errors whose class says the input was at fault (a flag, a file, an EP that cannot start): exit code 2.
const USAGE_ERRORS = new Set(['UsageError', 'ManifestError', 'EpError', 'EncoderError', 'CameraError']);

/**
 * Every error the command line prints goes through here: one line `ssocl: <message>`, and with --verbose
 * the rest of the message, the error's `detail` (what ORT said in full, for instance) and the stack.
 * Exit code: the error's own `exitCode`, else 2 for usage errors, else 1.
 */
function exitWithError(e: unknown): never {
  const err = e instanceof Error ? e : new Error(String(e));
  const [first, ...rest] = err.message.split('\n');
  const d = (err as { detail?: unknown }).detail;
  const detail = typeof d === 'string' ? d.trim() : '';
  const code = (err as { exitCode?: number }).exitCode ?? (USAGE_ERRORS.has(err.name) || /^--/.test(err.message) ? 2 : 1);
  const more = rest.join('\n').trim() !== '' || detail !== '' || code === 1;
  let out = `ssocl: ${first}${more && !VERBOSE ? ' (more with --verbose)' : ''}\n`;
  if (VERBOSE) {
    if (rest.length) out += `${rest.join('\n')}\n`;
    if (detail) out += `detail: ${detail}\n`;
    if (!(err instanceof UsageError) && err.stack) out += `${err.stack}\n`;
  }
  process.stderr.write(out);
  process.exit(code);
}

// The yargs instance of the command being parsed (set by a middleware that runs before validation).
let parsing: { y: import('yargs').Argv } | undefined;

/** An unknown flag or command: what was typed and the nearest that exists (cli-suggest.ts). */
function unknownMessage(): string | undefined {
  const y = (parsing?.y ?? cli) as any;
  const opts = y.getOptions();
  // yargs' internals, untyped: the handlers' command strings and the context of the one being parsed.
  const handlers = (cli as any).getInternalMethods().getCommandInstance().getCommandHandlers() as Record<string, { original: string }>;
  const bare = (c: string) => c.replace(/\s*[<[].*$/, '');
  const args = hideBin(process.argv);
  const end = args.indexOf('--');
  return unknownArgumentMessage({
    args: end < 0 ? args : args.slice(0, end),
    command: parsing ? (y.getInternalMethods().getContext().fullCommands as string[]).slice(-1).flatMap((c) => bare(c).split(' ')) : [],
    options: Object.keys(opts.key),
    booleans: opts.boolean,
    commands: Object.values(handlers).map((h) => bare(h.original)),
  });
}

/** yargs' own complaints, rephrased to the one-line shape of the others. */
function yargsMessage(msg: string): string {
  if (/^Unknown arguments?: /.test(msg)) {
    const m = unknownMessage();
    if (m) return m;
  }
  const needs = /^Not enough arguments following: (\S+)$/.exec(msg);
  if (needs) return `--${needs[1]}: needs a value`;
  const required = /^Missing required arguments?: (.+)$/.exec(msg);
  if (required) return `${required[1].split(', ').map((k) => `--${k}`).join(', ')}: required`;
  if (msg.startsWith('Invalid values:')) {
    const bad = [...msg.matchAll(/Argument: (\S+), Given: (.*?), Choices: (.*)/g)].map((m) => `--${m[1]} ${m[2].replace(/^"(.*)"$/, '$1')}: expected one of ${m[3].replace(/"/g, '')}`);
    if (bad.length) return bad.join('; ');
  }
  return msg.replace(/\s*\n\s*/g, ' ').trim();
}

const STATUS_EVERY = `log a one-line status (frames, steps/s, loss, buffer, last checkpoint and export) every this many seconds (0: never; default ${STATUS_EVERY_S} when stderr is not a terminal, never on a terminal, which has the progress line)`;

// What folder:ROOT means, for every --dataset that takes one.
const FOLDER_LAYOUT = 'folder:ROOT (your labelled images: ROOT/<class>/*.png|jpg with every 5th image per class held out as a kNN query, or ROOT/train/<class>/ + ROOT/val|test/<class>/; classes in name order)';

const epOption = {
  ep: { choices: EPS, default: 'cpu' as EP, describe: 'execution provider' },
  'ep-fallback': { choices: EPS, describe: 'EP to use when --ep cannot start (never silent)' },
  ...nums({ threads: { int: true, min: 1, describe: 'intra-op threads (default: all cores)' } }),
};


// Shared by embed and classify.
function inferOptions<T>(y: import('yargs').Argv<T>) {
  return y
    .options(epOption)
    .positional('input', { type: 'string', describe: 'an image file or a directory (searched recursively)' })
    .option('watch', { type: 'string', describe: 'instead of INPUT: keep taking new frames written to this directory' })
    .check((a) => {
      if (!a.input === !a.watch) throw new UsageError('give one input: INPUT (an image or a directory) or --watch DIR');
      return true;
    })
    .option('model', { type: 'string', default: 'models/latest.onnx', describe: 'exported encoder; with --watch it is reloaded whenever the file is replaced' })
    .options(nums({ batch: { int: true, min: 1, default: 256, describe: 'frames per encoder run (with --watch: at most this many of those waiting; 1 = single-frame latency mode)' } }))
    .option('recursive', { type: 'boolean', default: false, describe: 'with --watch: also watch subdirectories' })
    .option('fit', { choices: ['cover', 'letterbox'] as const, default: 'cover' as const, describe: 'resize to the model size by centre crop or padding' })
    .options(
      nums({
        'max-pixels': { int: true, min: 1, default: 40_000_000, describe: 'refuse images with more pixels' },
        'stable-ms': { min: 0, default: 300, describe: 'with --watch: a new file is read once its size has not changed for this long' },
        'reload-ms': { min: 0, default: 1000, describe: 'with --watch: how often to look for a new model file (0: never)' },
        'exit-when-idle': { min: 0, default: 0, describe: 'with --watch: stop after this many seconds without a new frame (0: never)' },
      }),
    );
}

/** embed and classify: the input, the watched directory, the model and the output, checked before any work. */
function inferPaths(a: { input?: string; watch?: string; model: string; out?: string }): void {
  if (a.input) readableInput('INPUT', a.input);
  if (a.watch) readableDir('--watch', a.watch);
  // No model yet is what a newcomer meets first (embed before any training): say how to make one.
  if (!existsSync(a.model)) throw new UsageError(`--model ${a.model}: no such file; run ssocl run --watch DIR (or npm start) first to train one, or give --model FILE.onnx`);
  encoderFile('--model', a.model);
  if (a.out && a.out !== '-') writableFile('--out', a.out);
}

function inferArgs(a: Record<string, any>) {
  return {
    input: a.input, watch: a.watch, recursive: a.recursive, model: a.model, ep: a.ep as EP, epFallback: a['ep-fallback'] as EP | undefined, threads: a.threads,
    batch: a.batch, fit: a.fit, maxPixels: a['max-pixels'], stableMs: a['stable-ms'], reloadMs: a['reload-ms'], exitWhenIdle: a['exit-when-idle'],
  };
}

/** Broker options, shared by run (--fleet ...) and fleet aggregate (--broker ...). */
function fleetBrokerOptions(flag: 'fleet' | 'broker') {
  const p = flag === 'fleet' ? 'fleet-' : '';
  const w = flag === 'fleet' ? 'with --fleet: ' : '';
  return {
    [flag]: {
      type: 'string' as const,
      describe:
        flag === 'fleet'
          ? 'learn together with other devices through this MQTT broker (mqtt://HOST:PORT, mqtts:// for TLS): share encoder updates each round and merge the global model; frames never leave the device'
          : 'the MQTT broker the fleet uses (mqtt://HOST:PORT, mqtts:// for TLS)',
      coerce: (v: string) => {
        try {
          return checkBrokerUrl(`--${flag}`, v);
        } catch (e) {
          throw new UsageError((e as Error).message);
        }
      },
    },
    [flag === 'fleet' ? 'fleet-name' : 'fleet']: {
      type: 'string' as const,
      default: 'default',
      describe: `${w}the fleet's name (its topics are ssocl/fleet/<name>/...)`,
      coerce: (v: string) => {
        try {
          return checkId(flag === 'fleet' ? '--fleet-name' : '--fleet', v);
        } catch (e) {
          throw new UsageError((e as Error).message);
        }
      },
    },
    [`${p}username`]: { type: 'string' as const, describe: `${w}broker user name` },
    [`${p}password`]: { type: 'string' as const, describe: `${w}broker password (or SSOCL_FLEET_PASSWORD, which ps does not show)` },
    [`${p}ca`]: { type: 'string' as const, describe: `${w}PEM file of the CA that signed the broker's certificate (mqtts://)` },
    [`${p}cert`]: { type: 'string' as const, describe: `${w}PEM client certificate (mutual TLS)` },
    [`${p}key`]: { type: 'string' as const, describe: `${w}PEM key of --${p}cert` },
    [`${p}insecure`]: { type: 'boolean' as const, default: false, describe: `${w}do not check the broker's TLS certificate (testing only)` },
  };
}

const cli = yargs(hideBin(process.argv))
  .scriptName('ssocl')
  .usage('$0 <command> [options]\n\nSelf-supervised online continual learning on edge devices.')
  .command(
    'artifacts',
    'compile a preset, or your own ONNX image model (--from-onnx), into training-artifacts/<name>/ (manifest.json, train_step.onnx, embed.onnx, init.safetensors)',
    // The preset list comes from the compiler, loaded only when this command is given (async builder).
    async (y) => {
      const { PRESETS } = await import('../tools/artifacts/presets.ts');
      return y
        .option('preset', { type: 'string', default: 'edge', describe: `one of: ${Object.keys(PRESETS).join(', ')}` })
        .option('set', { type: 'string', array: true, default: [] as string[], describe: 'override a preset field: key=value (dotted path, JSON value)' })
        .option('out', { type: 'string', describe: 'output directory (default training-artifacts/<name>)' })
        .option('name', { type: 'string', describe: 'artifact name (default: the preset name, or <preset>-custom with --set)' })
        .option('check', { type: 'boolean', default: false, describe: 'compare the existing directory with a fresh build instead of writing' })
        .option('from-onnx', { type: 'string', describe: "import MODEL.onnx (one float32 [batch, 3, H, W] input) instead of a preset: its weights are the starting point, the edge preset's loss, crops and optimizer train it (--set changes them; image.mean/std default to ImageNet's); default name: the file's" })
        .option('feature', { type: 'string', describe: 'with --from-onnx: the tensor the SSL loss and kNN use (default: the output, or the input of the last Gemm/MatMul when the output is a classifier)' })
        .options(nums({ 'input-size': { int: true, min: 8, max: 1024, describe: 'with --from-onnx: the training size in pixels (needed when the model has dynamic height and width)' } }))
        .option('train', { type: 'string', default: 'all', describe: 'with --from-onnx: what learns: all, last:N (the last N layers with weights before the feature) or a regular expression over weight names; the rest stays frozen (BN statistics update where their layer learns)' })
        .option('projector', { type: 'string', describe: "with --from-onnx: projector widths for the loss, e.g. 512,128 (hidden layers BN + ReLU); not part of the export; default the edge preset's" })
        .option('nchwc', { type: 'string', choices: ['auto', 'off', '8', '16'], defaultDescription: 'auto with --from-onnx, off for a preset', describe: "run the step's convolutions in ORT's blocked-layout (NCHWc) x86-64 CPU kernels, up to 1.4x faster steps there (most with depthwise layers and small maps); the step then trains only with --ep cpu on CPUs of that block (auto: this machine's, or off where it has none)" });
    },
    async (a) => {
      if (a.out && !a.check) writableDir('--out', a.out);
      const fromOnnx = a['from-onnx'];
      if (fromOnnx === undefined) {
        for (const flag of ['feature', 'input-size', 'projector'] as const) if (a[flag] !== undefined) throw new UsageError(`--${flag} needs --from-onnx MODEL.onnx`);
        if (a.train !== 'all') throw new UsageError('--train needs --from-onnx MODEL.onnx');
      } else readableFile('--from-onnx', fromOnnx);
      const projector = a.projector === undefined ? undefined : a.projector.split(',').map((x) => Number(x.trim()));
      if (projector && projector.some((w) => !Number.isInteger(w) || w < 1)) throw new UsageError(`--projector ${a.projector}: expected comma-separated positive widths, e.g. 512,128`);
      const { artifactsCommand } = await import('./commands/artifacts.ts');
      await artifactsCommand({
        preset: a.preset, set: a.set, out: a.out, name: a.name, check: a.check, ...(a.nchwc !== undefined ? { nchwc: String(a.nchwc) } : {}),
        ...(fromOnnx !== undefined ? { fromOnnx: { file: fromOnnx, feature: a.feature, inputSize: a['input-size'], train: a.train, projector } } : {}),
      });
    },
  )
  .command(
    'run',
    'the agent: learn from frames (a watched folder, a camera or a data set stream) with a diverse replay buffer and compiled training steps; checkpoints, exported encoder',
    (y) =>
      helpLayout(y
        .options(epOption)
        .option('watch', { type: 'string', describe: 'directory to take frames from (jpg, jpeg, png, webp, bmp, ppm, pgm)' })
        .option('camera', { type: 'string', describe: 'instead of --watch: a camera (/dev/video0), a stream URL (rtsp://...) or a video file, read through ffmpeg' })
        .options(nums({ fps: { min: 0, default: 0, describe: 'with --camera: frames per second taken from the input (0: every frame)' } }))
        .option('size', { type: 'string', describe: 'with --camera on a device: capture resolution WxH asked of the camera (frames are then scaled to the training size)' })
        .option('ffmpeg', { type: 'string', default: process.env.SSOCL_FFMPEG ?? 'ffmpeg', describe: 'with --camera: the ffmpeg binary (SSOCL_FFMPEG)' })
        .options(nums({ 'stall-s': { above: 0, default: 10, describe: 'with --camera on a live source: seconds without a frame before ffmpeg is restarted' } }))
        .option('dataset', { type: 'string', describe: `instead of --watch: replay a data set stream in-process (benchmarks, demos): demo, cifar10, cifar100 or ${FOLDER_LAYOUT}, decoded at the training size` })
        .option('stream-order', { choices: ['seq', 'seq-bl', 'seq-im'] as const, default: 'seq' as const, describe: 'with --dataset cifar10|cifar100|folder:ROOT: the class-incremental order' })
        .options(nums({ trial: { int: true, min: 0, default: 0, describe: 'with --dataset: seed of the stream order' } }))
        .option('data-dir', { type: 'string', default: DEFAULT_DATA, defaultDescription: shownPath(DEFAULT_DATA), describe: 'with --dataset: folder holding the data sets' })
        .options(
          nums({
            'per-class': { int: true, min: 1, describe: 'with --dataset cifar10|cifar100|folder:ROOT: a reduced stream, each class cut to this many images (seq-im keeps its imbalance)' },
            'eval-every': { above: 0, max: 100, describe: 'with --dataset cifar10|cifar100|folder:ROOT: kNN accuracy every this % of the stream (log + metrics), e.g. 25' },
            'eval-memory': { int: true, min: 1, default: 10000, describe: 'with --eval-every: train images used as the kNN memory (queries: the whole test, val or held-out split)' },
          }),
        )
        .check((a) => {
          if (a['help-methods']) return true;
          // Checked here rather than as yargs choices: the lists would fill --help (--help-methods has them).
          if (a.method !== undefined && !METHOD_NAMES.includes(String(a.method))) throw new UsageError(`--method ${a.method}: expected one of ${METHOD_NAMES.join(', ')}`);
          if (a.buffer !== undefined && !Object.hasOwn(BUFFER_POLICY_TEXT, String(a.buffer))) throw new UsageError(`--buffer ${a.buffer}: expected one of ${Object.keys(BUFFER_POLICY_TEXT).join(', ')}`);
          if ([a.watch, a.dataset, a.camera].filter(Boolean).length !== 1) throw new UsageError('give one source: --watch DIR, --camera DEVICE|URL|FILE or --dataset demo|cifar10|cifar100|folder:ROOT');
          if (a.dataset !== undefined) datasetArg(String(a.dataset), ['demo', 'cifar10', 'cifar100']);
          if (a.size !== undefined && !/^[1-9]\d*x[1-9]\d*$/.test(String(a.size))) throw new UsageError(`--size ${a.size}: expected WxH, e.g. 640x480`);
          return true;
        })
        .option('recursive', { type: 'boolean', default: false, describe: 'also watch subdirectories' })
        .option('allow-hard-links', { type: 'boolean', default: false, describe: 'read frames that have more than one hard link (refused by default: a hard link can alias a file outside the watched directory)' })
        .option('root-replaced', { choices: ['follow', 'stop'] as const, default: 'follow' as const, describe: 'when the watched directory is deleted and recreated: watch the new one, or stop (a link put in its place is never followed)' })
        .option('order', { choices: ['name', 'mtime'] as const, default: 'name' as const, describe: 'order of the files already there at start' })
        .option('after-ingest', { choices: ['keep', 'move', 'delete'] as const, default: 'keep' as const, describe: 'what to do with a file once two verified checkpoints hold what was learnt from it (move, delete: it leaves the watched directory when read and waits in <state>/held/ until then)' })
        .option('processed', { type: 'string', describe: 'where --after-ingest move puts files (default <state>/processed)' })
        .option('quarantine', { type: 'string', describe: 'where unreadable files go, each with a .reason file (default <state>/quarantine)' })
        .option('method', { type: 'string', describe: `what to train: ${DEFAULT_METHOD} (the default), or another method of the comparison as ssocl bench runs it (--help-methods says what each changes)` })
        .option('help-methods', { type: 'boolean', default: false, describe: 'print the methods of --method and the buffer policies of --buffer, each with what it changes, and exit' })
        .option('artifacts', { type: 'string', describe: "training artifacts directory (default: training-artifacts/<the method's edge preset>, e.g. training-artifacts/edge for ours); with --method they must be built for it" })
        .option('state', { type: 'string', default: 'ssocl-state', describe: 'checkpoints and the ingestion ledger' })
        .option('models', { type: 'string', default: 'models', describe: 'where encoders are exported (latest.onnx, latest.json, encoder-<step>.onnx)' })
        .option('fit', { choices: ['cover', 'letterbox'] as const, default: 'cover' as const, describe: 'resize to the training size by centre crop or padding' })
        .options(nums({ 'max-pixels': { int: true, min: 1, default: 40_000_000, describe: 'refuse images with more pixels (decompression bombs)' } }))
        .option('overflow', { choices: ['block', 'drop-oldest'] as const, default: 'block' as const, describe: 'when frames arrive faster than training: leave them waiting on disk, or drop the oldest waiting' })
        .options(
          nums({
            backlog: { int: true, min: 1, default: 10000, describe: 'waiting frames beyond which drop-oldest drops' },
            'checkpoint-every': { kind: 'every', default: '5m', describe: 'steps (e.g. 200) or time (30s, 5m, 1h); also on exit and on SIGINT/SIGTERM' },
            'export-every': { kind: 'every', default: '10m', describe: 'steps or time; also on exit' },
          }),
        )
        .option('fresh', { type: 'boolean', default: false, describe: 'ignore existing checkpoints and the ledger, start over (needed when checkpoints exist but none verifies: exit code 6 otherwise)' })
        .option('metrics', { type: 'string', describe: 'append one JSON line per step to this file' })
        .option('emit-embeddings', { type: 'string', describe: 'append the embedding (backbone features, current weights) of every ingested frame to this JSON-lines file' })
        .options(nums({ updates: { int: true, min: 1, describe: "updates per arrival, K (overrides the method's; default: the method's if it fixes one, else the artifacts')" } }))
        .option('replay', { choices: ['mixed', 'buffer', 'novel', 'novel-recent'] as const, describe: "batch composition, overriding the method's: mixed (this arrival's images + replayed ones), buffer (each minibatch drawn from the whole buffer), novel (mixed, with the arrival's near-duplicates replaced by replayed ones) or novel-recent (novel, half the replay from the buffer's newest quarter)" })
        .option('warmup', { choices: ['fill', 'none'] as const, describe: "overrides the method's: fill (no training step until the buffer first holds --buffer-size images, as MinRed) or none" })
        .options(nums({ 'buffer-size': { int: true, min: 1, describe: 'buffer capacity M (default from the artifacts)' } }))
        .option('buffer', { type: 'string', describe: "buffer policy, overriding the method's (--help-methods says what each does)" })
        .options(nums({ lr: { above: 0, describe: 'learning rate (default from the artifacts)' } }))
        .option('lr-schedule', { choices: ['constant', 'cosine'] as const, default: 'constant' as const, describe: 'learning rate over the run: constant, or a cosine decay from --lr to 0 over --lr-steps steps (0 after)' })
        .options(
          nums({
            'lr-steps': { int: true, min: 1, default: 10000, describe: 'steps over which the cosine schedule decays' },
            seed: { int: true, min: 0, default: 0, describe: 'seed of replay draws and crops' },
            'max-arrivals': { int: true, min: 0, default: 0, describe: 'stop after this many arrivals (0: never)' },
            'max-seconds': { min: 0, default: 0, describe: 'stop after this many seconds (0: never)' },
            'exit-when-idle': { min: 0, default: 0, describe: 'stop after this many seconds without a new frame, once every --passes pass is learnt (0: never; a finished folder then idles, saying so, waiting for new frames)' },
            passes: { int: true, min: 1, default: 1, describe: 'with --watch: learn the frames in the folder (and those that come) this many times (alias --epochs); the last incomplete arrival is learnt when the folder idles; more than 1 needs --after-ingest keep' },
          }),
        )
        .alias('passes', 'epochs')
        .options(nums({ 'status-every': { min: 0, describe: STATUS_EVERY } }))
        .options(
          nums({
            'disk-retry-s': { above: 0, default: 30, describe: 'disk full: seconds between tries to write the checkpoint (the agent pauses meanwhile)' },
            'max-skips': { int: true, min: 1, default: 10, describe: 'consecutive non-finite steps before stopping' },
            'stable-ms': { min: 0, default: 300, describe: 'a new file is read once its size has not changed for this long' },
          }),
        )
        .option('health-gate', { type: 'boolean', default: true, describe: 'measure each export on a health set of frames kept aside and refuse to publish a collapsed or worse encoder (--no-health-gate: measure and report only)' })
        .options(
          nums({
            'health-frames': { int: true, min: 2, default: 256, describe: 'frames in the health set (a reservoir of the stream, in <state>/health-set.safetensors)' },
            'health-min-rank': { min: 0, default: 1.5, describe: 'refuse an export whose effective rank (RankMe of the features) is below this (1: every frame embeds alike)' },
            'health-max-cos': { min: 0, max: 1, default: 0.99, describe: 'refuse an export whose mean pairwise cosine similarity is above this' },
            'health-max-rank-drop': { min: 0, max: 1, default: 0.5, describe: 'refuse an export whose effective rank is below (1 - this) x the published model\'s on the same frames' },
            'health-max-cos-rise': { min: 0, max: 2, describe: 'refuse an export whose mean cosine similarity is above the published model\'s + this (default: not checked; it wanders with the features\' mean direction)' },
            'probe-max-drop': { min: 0, max: 1, default: 0.1, describe: 'with --probe: refuse an export whose kNN accuracy (0-1) is below the published model\'s - this' },
          }),
        )
        .option('probe', { type: 'string', describe: 'a labelled folder ROOT/<class>/*.png|jpg: its kNN accuracy is measured at each export too (every 5th image per class a query)' })
        .options(fleetBrokerOptions('fleet') as {})
        .option('fleet-device', { type: 'string', describe: 'with --fleet: this device\'s id in the fleet (default: one made up once and kept in <state>/fleet-device)' })
        .options(nums({ 'fleet-every': { kind: 'every', default: '100', describe: 'with --fleet: publish an update every this many steps (e.g. 100) or this long (2m)' } }))
        .option('fleet-encoding', { choices: ['f16', 'f32'] as const, default: 'f16' as const, describe: 'with --fleet: updates as float16 changes (half the bytes) or float32' })
        .option('fleet-identity', { type: 'string', describe: 'with --fleet: this device\'s private key (ssocl fleet keygen --name DEVICE); its updates are signed with it, and the aggregator takes them only if DEVICE.pub is in its --allow folder' })
        .option('fleet-aggregator-key', { type: 'string', describe: 'with --fleet: the aggregator\'s public key; only global models it signed are merged (default: trust on first use, the first signed global model\'s key is pinned in <state>/fleet-aggregator-<name>.pub)' })
        .option('insecure-fleet', { type: 'boolean', default: false, describe: 'with --fleet: run without --fleet-identity (nothing signed or checked: any client that can publish on the broker can steer this device)' }),
      RUN_GROUPS, 'run'),
    async (a) => {
      if (a['help-methods']) return void process.stdout.write(methodsHelp());
      // What each path must be, before anything is created or read (--watch and --camera are checked by
      // the run itself, which names what it could not list or open).
      if (a.dataset === 'cifar10' || a.dataset === 'cifar100') cifarDir(a['data-dir'], a.dataset);
      const method = METHODS[a.method ?? DEFAULT_METHOD];
      if (a.artifacts === undefined) {
        a.artifacts = path.join(REPO_ROOT, 'training-artifacts', artifactName(method, 'edge'));
        if (!existsSync(path.join(a.artifacts, 'manifest.json'))) throw new UsageError(`--method ${method.name}: no artifacts in ${a.artifacts}; build them (${buildCommand(method, 'edge')}) or give --artifacts`);
      }
      artifactsDir('--artifacts', a.artifacts);
      writableDir('--state', a.state);
      writableDir('--models', a.models);
      if (a.processed) writableDir('--processed', a.processed);
      if (a.quarantine) writableDir('--quarantine', a.quarantine);
      if (a.probe) readableDir('--probe', a.probe);
      if (a.metrics) writableFile('--metrics', a.metrics);
      if (a['emit-embeddings']) {
        writableFile('--emit-embeddings', a['emit-embeddings']);
        (await import('./infer/io.ts')).checkAppend(a['emit-embeddings'], 'features');
      }
      const { runCommand } = await import('./commands/run.ts');
      await runCommand(a);
    },
  )
  .command(
    'eval <model>',
    'kNN accuracy of an exported encoder on CIFAR-10, CIFAR-100 (--dataset) or your own labelled images (--folder ROOT)',
    (y) =>
      y
        .positional('model', { type: 'string', demandOption: true, describe: 'an exported encoder (.onnx)' })
        .option('dataset', { choices: ['cifar10', 'cifar100'] as const, default: 'cifar10' as const, describe: 'the data set: train split as the kNN memory, test split as the queries (read from --data-dir; resized to the model\'s input size where that is not 32x32)' })
        .option('folder', { type: 'string', describe: 'instead of --dataset: your own labelled images, ROOT/<class>/*.png|jpg (every 5th per class is a query) or ROOT/train/<class>/ + ROOT/test|val/<class>/' })
        .option('data-dir', { type: 'string', default: DEFAULT_DATA, defaultDescription: shownPath(DEFAULT_DATA), describe: 'folder holding cifar-10-batches-bin/ or cifar-100-binary/' })
        .option('protocol', { choices: ['weighted', 'scale'] as const, default: 'weighted' as const, describe: 'weighted cosine kNN (T 0.07), or SCALE\'s (k 50, uniform, Euclidean)' })
        .options(
          nums({
            k: { kind: 'list', int: true, min: 1, default: '20,50', describe: 'neighbours, comma-separated (weighted protocol)' },
            threads: { int: true, min: 1, describe: 'intra-op threads of the feature and kNN runs (default: all cores)' },
            seed: { int: true, min: 0, default: 0, describe: 'draws of the scale protocol subsets' },
          }),
        ),
    async (a) => {
      encoderFile('MODEL', a.model!);
      if (a.folder) readableDir('--folder', a.folder);
      else cifarDir(a['data-dir'], a.dataset);
      const { evalCommand } = await import('./commands/eval.ts');
      await evalCommand({ model: a.model!, dataset: a.dataset, folder: a.folder, dataDir: a['data-dir'], protocol: a.protocol, k: a.k, threads: a.threads, seed: a.seed });
    },
  )
  .command(
    'data fetch <dataset>',
    'download CIFAR-10 or CIFAR-100 (official binary version) with resume and checksum verification',
    (y) =>
      y
        .positional('dataset', { choices: ['cifar10', 'cifar100'] as const, demandOption: true, describe: 'which data set' })
        .option('dir', { type: 'string', default: DEFAULT_DATA, defaultDescription: shownPath(DEFAULT_DATA), describe: 'where to put the archive and the unpacked folder' })
        .option('url', { type: 'string', describe: 'a mirror of the official archive (same file, same checksum)' })
        .options(
          nums({
            deadline: { above: 0, default: 3600, describe: 'seconds the whole download may take; then it stops (the .part file stays: run again to resume)' },
            'min-rate': { min: 0, default: 10240, describe: 'bytes per second the download must average over each minute, or it stops (run again to resume); 0: no minimum' },
          }),
        ),
    async (a) => {
      writableDir('--dir', a.dir);
      if (a.url !== undefined && !/^https?:\/\/[^/\s]+/i.test(a.url)) throw new UsageError(`--url ${a.url}: expected an http:// or https:// URL`);
      const { DATASETS, fetchDataset } = await import('../tools/data/fetch.ts');
      const src = { ...DATASETS[a.dataset!], ...(a.url ? { url: a.url } : {}) };
      const out = await fetchDataset(src, a.dir, (s) => process.stderr.write(`${s}\n`), { deadlineMs: a.deadline * 1000, minBytesPerS: a['min-rate'] });
      process.stdout.write(`${out}\n`);
    },
  )
  .command(
    'stream',
    'write a class-incremental stream of a data set as image files (a camera for `run --watch`), or print its order',
    (y) =>
      y
        .option('dataset', { type: 'string', default: 'cifar10', describe: `the data set whose train split is streamed: cifar10, cifar100 (by its 20 superclasses) or ${FOLDER_LAYOUT}` })
        .option('data-dir', { type: 'string', default: DEFAULT_DATA, defaultDescription: shownPath(DEFAULT_DATA), describe: 'folder holding cifar-10-batches-bin/ or cifar-100-binary/' })
        .option('order', { choices: ['seq', 'seq-bl', 'seq-im'] as const, default: 'seq' as const, describe: 'class-incremental order: seq (class by class), seq-bl (blurred boundaries), seq-im (imbalanced classes)' })
        .options(nums({ trial: { int: true, min: 0, default: 0, describe: 'seed of the within-class shuffles and the boundary blur' } }))
        .option('to', { type: 'string', describe: 'output directory' })
        .options(nums({ fps: { min: 0, default: 0, describe: 'frames per second (0: as fast as possible)' } }))
        .option('format', { choices: ['png', 'jpg'] as const, default: 'png' as const, describe: 'image file format of the frames written (folder:ROOT: its files are copied as they are)' })
        .options(nums({ limit: { int: true, min: 1, describe: 'write only the first N frames' } }))
        .options(nums({ clips: { int: true, min: 0, default: 0, describe: 'camera-like: each image becomes a clip of this many frames (a slow pan and zoom over it, brightness drift, sensor noise; seeded by --trial), the redundancy of a 10-30 fps camera (cifar10, cifar100; 0: the images as they are)' } }))
        .option('print-order', { type: 'boolean', default: false, describe: 'print the index order as JSON and exit' }),
    async (a) => {
      if (!datasetArg(a.dataset, ['cifar10', 'cifar100']).startsWith('folder:')) cifarDir(a['data-dir'], a.dataset as 'cifar10' | 'cifar100');
      if (a.to && !a['print-order']) writableDir('--to', a.to);
      const { streamCommand } = await import('./commands/stream.ts');
      await streamCommand({ dataset: a.dataset, dataDir: a['data-dir'], order: a.order, trial: a.trial, to: a.to, fps: a.fps, format: a.format, printOrder: a['print-order'], limit: a.limit, clips: a.clips });
    },
  )
  .command(
    'bench',
    'the paper\'s comparison (bench/compare.ts): methods x stream orders x paired trials, kNN beside the random-init floor; edge protocols on CPU, gpu/paper protocols for a GPU',
    (y) =>
      y
        .option('protocol', {
          choices: ['edge-cifar10', 'edge-cifar100', 'gpu-cifar10', 'paper-cifar10', 'paper-cifar100', 'edge-folder', 'paper-folder'] as const,
          describe: 'edge-*: edge encoder, reduced stream (450/class), b 32, K 2, kNN memory 10000; gpu-cifar10: ResNet-18-CIFAR, 10,000-image stream, b 100, K 1; paper-*: the full stream, b 100, K 10, memory = train split. cifar100 streams the 20 superclasses and reports fine and superclass kNN; *-folder stream --dataset folder:ROOT (paper-folder: ResNet-18-ImageNet at 64 px). Default: edge-cifar10, or edge-folder with --dataset folder:ROOT',
        })
        .option('dataset', { type: 'string', describe: `instead of CIFAR: ${FOLDER_LAYOUT}, streamed by the same rules (protocols edge-folder, paper-folder)` })
        .option('methods', { type: 'string', default: 'ours,empssl,minred,simclr-reservoir', describe: `comma-separated, as defined in agent/methods.ts (the definitions ssocl run --method uses): ${METHOD_NAMES.join(', ')}` })
        .option('orders', { type: 'string', default: 'seq', describe: 'seq, seq-bl, seq-im (comma-separated)' })
        .options(
          nums({
            trials: { kind: 'list', int: true, min: 0, default: '0,1,2,3,4', describe: 'paired seeds: same init, stream order, replay and crop draws across methods' },
            clips: { kind: 'list', int: true, min: 0, default: '0', describe: 'camera-like streams: frames per source image, comma-separated (0: plain images); each run sees as many frames, from every D-th image, as clips of D frames that pan, zoom, drift and carry sensor noise' },
            fps: { kind: 'list', above: 0, default: '1', describe: 'with --video: frames per second taken from it, comma-separated (the redundancy knob); every rate trains on as many frames as the sparsest gives' },
            idle: { kind: 'list', int: true, min: 0, describe: "a static camera: percent of frames (comma-separated, each below 100) from visits of 300 frames to 3 idle scenes (one image of each of the order's first 3 classes, revisited), the rest events of 10 frames from the other classes, class-incremental; as many frames as the stream has images; kNN on all classes; rows labelled ORDER+idleP carry the buffer's idle share" },
            'video-window': { above: 0, default: 1, describe: "with --video: frames within the same this-many seconds count as one scene in the buffer's same-clip share" },
            'per-class': { kind: 'or-all', int: true, min: 1, describe: "images per class of the stream, or 'all' (default: the protocol's)" },
            updates: { int: true, min: 1, describe: "updates per arrival for ours; 2-crop methods get more so updates x crops match (default: the protocol's)" },
            memory: { kind: 'or-all', int: true, min: 1, describe: "train images as kNN memory, or 'all' (default: the protocol's)" },
            queries: { kind: 'or-all', int: true, min: 1, describe: "test images as kNN queries, a fixed random subset, or 'all' (default: all; fewer only for quick checks)" },
          }),
        )
        .option('video', { type: 'string', describe: "a video file of your own (a camera's recording) streamed in place of the data set's train images, through ffmpeg at each --fps; kNN is still measured on the data set; rows are labelled video+fpsN" })
        .option('ffmpeg', { type: 'string', default: process.env.SSOCL_FFMPEG ?? 'ffmpeg', describe: 'with --video: the ffmpeg binary (SSOCL_FFMPEG)' })
        .option('ep', { choices: ['cpu', 'cuda', 'webgpu', 'wasm'] as const, default: 'cpu' as const, describe: 'execution provider of the training steps and features' })
        .options(nums({ threads: { int: true, min: 1, describe: 'ORT threads (CPU); default all cores' } }))
        .option('plan', { type: 'boolean', default: false, describe: 'print what each method would run (presets, stream sizes, updates x crops, done or not) and exit' })
        .option('report', { type: 'boolean', default: false, describe: 'print the tables and draw the charts of the rows already in --json; run nothing' })
        .option('data-dir', { type: 'string', default: DEFAULT_DATA, defaultDescription: shownPath(DEFAULT_DATA), describe: 'folder holding cifar-10-batches-bin/ or cifar-100-binary/' })
        .option('json', { type: 'string', default: path.join(REPO_ROOT, 'bench/out/compare.jsonl'), defaultDescription: shownPath(path.join(REPO_ROOT, 'bench/out/compare.jsonl')), describe: 'results, one JSON line per run; a run already there is skipped (resume)' }),
    async (a) => {
      const { spawnSync } = await import('node:child_process');
      const folder = a.dataset !== undefined && datasetArg(a.dataset, []).startsWith('folder:');
      const protocol = a.protocol ?? (folder ? 'edge-folder' : 'edge-cifar10');
      if (folder ? !protocol.endsWith('-folder') : protocol.endsWith('-folder') && !a.report) throw new UsageError(folder ? `--protocol ${protocol}: streams CIFAR; --dataset ${a.dataset} needs edge-folder or paper-folder` : `--protocol ${protocol}: needs --dataset folder:ROOT`);
      const c100 = protocol.endsWith('cifar100');
      if (!a.report && !folder) cifarDir(a['data-dir'], c100 ? 'cifar100' : 'cifar10');
      if (!a.report && !a.plan) writableFile('--json', a.json);
      const data = folder ? ['--dataset', a.dataset!] : ['--data', path.join(a['data-dir'], c100 ? 'cifar-100-binary' : 'cifar-10-batches-bin')];
      // tsx resolved from here, not from the caller's directory (which need not hold node_modules).
      const args = ['--import', import.meta.resolve('tsx'), path.join(REPO_ROOT, 'bench/compare.ts'), '--protocol', protocol, '--methods', a.methods, '--orders', a.orders, '--trials', a.trials.join(','), '--clips', a.clips.join(','), '--ep', a.ep, ...data, '--json', a.json];
      if (a.video !== undefined) {
        if (a.clips.some((c) => c > 0)) throw new UsageError('--video and --clips: one kind of stream at a time');
        readableFile('--video', a.video);
        args.push('--video', path.resolve(a.video), '--fps', a.fps.join(','), '--video-window', String(a['video-window']), '--ffmpeg', a.ffmpeg);
      }
      if (a.idle !== undefined) {
        if (a.video !== undefined || a.clips.some((c) => c > 0)) throw new UsageError('--idle and --clips / --video: one kind of stream at a time');
        const over = a.idle.find((p) => p > 99);
        if (over !== undefined) throw new UsageError(`--idle ${over}: whole percentages from 0 to 99`);
        args.push('--idle', a.idle.join(','));
      }
      if (a['per-class'] !== undefined) args.push('--per-class', String(a['per-class']));
      if (a.updates !== undefined) args.push('--updates', String(a.updates));
      if (a.memory !== undefined) args.push('--memory', String(a.memory));
      if (a.queries !== undefined) args.push('--queries', String(a.queries));
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
      helpLayout(inferOptions(y)
        .option('out', { type: 'string', describe: 'output file (default: JSON lines on stdout): .jsonl (or .ndjson) JSON lines, .npy or .safetensors one matrix' })
        .option('format', { choices: ['jsonl', 'npy', 'safetensors'] as const, describe: 'output format (default: from the --out extension, else jsonl); must agree with the --out extension' })
        .option('output', { choices: ['features', 'embedding'] as const, default: 'features' as const, describe: "backbone features (what kNN uses) or the L2-normalised projection; the records' vector field is named after it" }), INFER_GROUPS, 'embed'),
    async (a) => {
      inferPaths(a);
      const { embedCommand } = await import('./commands/infer.ts');
      await embedCommand({ ...inferArgs(a), out: a.out, format: a.format, output: a.output });
    },
  )
  .command(
    'classify [input]',
    'few-shot recognition of frames against a labelled support set DIR/<label>/*.png|jpg (weighted cosine kNN), with an optional novelty score',
    (y) =>
      helpLayout(inferOptions(y)
        .option('support', { type: 'string', demandOption: true, describe: 'labelled examples: DIR/<label>/*.png|jpg (a few per label)' })
        .option('out', { type: 'string', describe: 'output file, .jsonl (or .ndjson) (default: JSON lines on stdout)' })
        .options(
          nums({
            k: { int: true, min: 1, default: 20, describe: 'neighbours that vote' },
            temperature: { above: 0, default: 0.07, describe: 'vote weight exp(similarity / T)' },
            'reject-below': { min: 0, max: 1, describe: 'label "unknown" when the winning share of the vote is below this (0-1)' },
          }),
        )
        .option('novelty', { type: 'boolean', default: false, describe: 'add novelty = 1 - cosine similarity to the nearest support (and buffer) embedding' })
        .option('novelty-buffer', { type: 'string', describe: 'also compare with the images in the agent\'s buffer (its newest checkpoint in this state directory)' }), INFER_GROUPS, 'classify'),
    async (a) => {
      inferPaths(a);
      readableDir('--support', a.support);
      if (a['novelty-buffer'] !== undefined) readableDir('--novelty-buffer', a['novelty-buffer']);
      const { classifyCommand } = await import('./commands/infer.ts');
      await classifyCommand({ ...inferArgs(a), support: a.support, out: a.out, k: a.k, temperature: a.temperature, rejectBelow: a['reject-below'], novelty: a.novelty || a['novelty-buffer'] !== undefined, noveltyState: a['novelty-buffer'] });
    },
  )
  .command(
    'models <action> [step]',
    'the exported versions (list: published or refused by the health gate, the current one marked) and rollback [STEP] (an earlier version becomes latest.onnx)',
    (y) =>
      helpLayout(y
        .positional('action', { choices: ['list', 'rollback'] as const, demandOption: true, describe: 'list, or rollback' })
        .positional('step', { type: 'string', describe: 'rollback: the step of the version to publish (default: the published one before the current)' })
        .option('models', { type: 'string', default: 'models', describe: 'the models directory of the agent (--models of ssocl run)' })
        .option('state', { type: 'string', describe: "the agent's --state directory. list: whose status is shown (default: the one latest.json names); rollback: the version is measured on its health set and refused when it looks collapsed or gives non-finite features there (default: the one latest.json names, else ssocl-state; without a health set: checked on probe images only, said on stderr)" })
        .option('force', { type: 'boolean', default: false, describe: 'rollback: publish a version the health gate refused (at export or now, on the health set)' })
        .option('json', { type: 'boolean', default: false, describe: 'list: one JSON line per version' }), [], 'models'),
    async (a) => {
      readableDir('--models', a.models);
      const step = a.step === undefined ? undefined : Number(a.step);
      if (step !== undefined && !(Number.isSafeInteger(step) && step >= 0)) throw new UsageError(`STEP ${a.step}: expected a training step (a whole number)`);
      if (a.action === 'list' && step !== undefined) throw new UsageError('models list takes no STEP');
      const { modelsList, modelsRollback } = await import('./commands/models.ts');
      if (a.action === 'list') await modelsList({ models: a.models, json: a.json, state: a.state });
      else await modelsRollback({ models: a.models, state: a.state, step, force: a.force });
    },
  )
  .command(
    'serve',
    "a live dashboard of a running or finished agent in the browser (what it is doing, loss, throughput, gradient cosine, memory, health, buffer, quarantine, latest model), read from its directories and never written there",
    (y) =>
      helpLayout(y
        .option('state', { type: 'string', default: 'ssocl-state', describe: 'the agent\'s --state directory (status.json: what it is doing; the buffer: its live snapshot, else the checkpoints)' })
        .option('models', { type: 'string', default: 'models', describe: 'the agent\'s --models directory (latest.json, latest.onnx)' })
        .option('metrics', { type: 'string', describe: 'the agent\'s --metrics file (the charts)' })
        .option('quarantine', { type: 'string', describe: 'the agent\'s --quarantine directory (default <state>/quarantine)' })
        .option('artifacts', { type: 'string', default: path.join(REPO_ROOT, 'training-artifacts/edge'), defaultDescription: shownPath(path.join(REPO_ROOT, 'training-artifacts/edge')), describe: 'training artifacts the page can train with in the tab (the agent\'s --artifacts)' })
        .option('host', { type: 'string', default: '127.0.0.1', describe: 'address to listen on; anything but loopback lets others see the frames and take the model (a warning is printed)' })
        .options(
          nums({
            port: { int: true, min: 0, max: 65535, default: 8777, describe: 'port to listen on (0: any free port; the address is printed)' },
            'poll-ms': { min: 50, default: 500, describe: 'how often the agent\'s files are looked at (ms)' },
          }),
        ), [], 'serve'),
    async (a) => {
      const { serveCommand } = await import('./commands/serve.ts');
      await serveCommand({ state: a.state, models: a.models, metrics: a.metrics, quarantine: a.quarantine, artifacts: a.artifacts, host: a.host, port: a.port, pollMs: a['poll-ms'] });
    },
  )
  .command('fleet', 'a fleet of devices learning together over MQTT: fleet keygen (keys), fleet aggregate (the aggregator)', (fy) =>
    fy
      .command(
        'keygen',
        'make a fleet key pair (Ed25519): NAME.key (private, mode 0600) and NAME.pub; the aggregator\'s signs global models, each device\'s (NAME = its device id) its updates',
        (y) =>
          helpLayout(y
            .option('out', { type: 'string', demandOption: true, describe: 'the folder the two files are written to (made if missing; existing keys are never overwritten)' })
            .option('name', { type: 'string', default: 'aggregator', describe: 'the key\'s name: aggregator, or a device id (the aggregator\'s --allow folder holds DEVICE.pub)' }), [], 'fleet keygen'),
        async (a) => {
          writableDir('--out', a.out);
          const { fleetKeygenCommand } = await import('./commands/fleet.ts');
          fleetKeygenCommand(a);
        },
      )
      .command(
        'aggregate',
        'a fleet\'s aggregator: average the devices\' updates each round (weighted by frames learnt, or robustly), reject malformed or hostile ones, publish the global model (retained) and export it',
        (y) =>
          helpLayout(y
            .options(fleetBrokerOptions('broker') as {})
            .demandOption('broker')
            .option('artifacts', { type: 'string', default: path.join(REPO_ROOT, 'training-artifacts/edge'), defaultDescription: shownPath(path.join(REPO_ROOT, 'training-artifacts/edge')), describe: 'the artifacts the fleet trains (updates made with others are rejected)' })
            .option('models', { type: 'string', describe: 'export each global model here (latest.onnx, encoder-<version>.onnx); default: no export' })
            .options(
              nums({
                expect: { int: true, min: 0, default: 0, describe: 'close a round as soon as this many devices sent an update (0: by --round-timeout only)' },
                'round-timeout': { above: 0, default: 60, describe: 'seconds after a round\'s first update at which it closes (with at least --min-updates)' },
                'min-updates': { int: true, min: 1, default: 1, describe: 'updates a round needs before --round-timeout closes it' },
                'max-norm-ratio': { above: 0, default: 10, describe: 'reject an update whose norm is over this x the round\'s median norm (rounds of 3 or more)' },
                'max-history-ratio': { above: 0, default: 10, describe: 'reject an update whose norm is over this x the median accepted update norm of the fleet\'s last 10 rounds' },
                'max-abs-ratio': { above: 0, default: 10, describe: 'in the fleet\'s first round (no history yet): reject an update whose norm is over this x the global model\'s norm' },
                'weight-cap': { above: 0, default: 4, describe: 'an update weighs at most this x the round\'s median reported frames (a device claiming 1e12 frames counts as this many typical ones)' },
                'max-held': { int: true, min: 1, default: 1000, describe: 'updates a round holds at most (one per device); more are refused and logged' },
                'max-held-mib': { above: 0, default: 1024, describe: 'MiB of updates a round holds at most; more are refused and logged' },
                'max-rounds': { int: true, min: 0, default: 0, describe: 'stop after this many rounds (0: never)' },
                'server-lr': { above: 0, default: 1, describe: 'move the global parameters by this x the combined change (1: FedAvg; FedOpt\'s server step above 1); BN statistics always by the change itself' },
              }),
            )
            .option('robust', { type: 'string', default: 'mean', describe: 'how updates combine: mean (weighted by frames learnt, capped by --weight-cap), median (coordinate-wise), trimmed:F (coordinate-wise mean without the F lowest and F highest fraction, e.g. trimmed:0.2), krum:F (Krum, F hostile devices tolerated) or multi-krum:F,M (the mean of the M best Krum scores)' })
            .option('identity', { type: 'string', describe: 'the aggregator\'s private key (ssocl fleet keygen): every global model is signed with it' })
            .option('allow', { type: 'string', describe: 'a folder of device public keys, DEVICE.pub each: only updates signed by their device\'s key are taken (re-read when an unknown device speaks)' })
            .option('state', { type: 'string', describe: 'keep the last global model here and start from it (a forged retained model on the broker cannot reset the fleet); default: the broker\'s retained model only' })
            .option('insecure-fleet', { type: 'boolean', default: false, describe: 'run without --identity and --allow (nothing signed or checked: any client that can publish on the broker can steer the fleet)' })
            .option('encoding', { choices: ['f16', 'f32'] as const, default: 'f16' as const, describe: 'the published change from the previous global model: float16 or float32 (the retained full model is always float32)' }), [], 'fleet aggregate'),
        async (a) => {
          artifactsDir('--artifacts', a.artifacts);
          if (a.models) writableDir('--models', a.models);
          if (a.state) writableDir('--state', a.state);
          if (a.allow) readableDir('--allow', a.allow);
          if (a.identity) readableFile('--identity', a.identity);
          const { fleetAggregateCommand } = await import('./commands/fleet.ts');
          await fleetAggregateCommand(a);
        },
      )
      .demandCommand(1, 'name a fleet command: keygen or aggregate'),
  )
  .command(
    'demo',
    'the built-in default (npm start): replay the demo stream as image files into a temporary directory and run the agent on it, then export',
    (y) =>
      helpLayout(y
        .options(epOption)
        .options(
          nums({
            seconds: { above: 0, default: 120, describe: 'how long the agent trains' },
            fps: { above: 0, default: 20, describe: 'frames written per second by the demo "camera"' },
          }),
        )
        .option('models', { type: 'string', default: path.join(REPO_ROOT, 'models'), defaultDescription: shownPath(path.join(REPO_ROOT, 'models')), describe: 'where the encoder is exported (latest.onnx) and the per-step metrics written (demo-metrics.jsonl, started over)' })
        .option('state', { type: 'string', default: path.join(REPO_ROOT, 'demo-state'), defaultDescription: shownPath(path.join(REPO_ROOT, 'demo-state')), describe: "the agent's state (checkpoints, quarantine), started over by each demo and kept after it for ssocl serve" })
        .option('artifacts', { type: 'string', default: path.join(REPO_ROOT, 'training-artifacts/edge'), defaultDescription: shownPath(path.join(REPO_ROOT, 'training-artifacts/edge')), describe: 'artifact directory' })
        .options(nums({ 'status-every': { min: 0, describe: STATUS_EVERY } })), [], 'demo'),
    async (a) => {
      artifactsDir('--artifacts', a.artifacts);
      writableDir('--models', a.models);
      writableDir('--state', a.state);
      const { demoCommand } = await import('./commands/demo.ts');
      await demoCommand({ ep: a.ep, epFallback: a['ep-fallback'], threads: a.threads, seconds: a.seconds, fps: a.fps, models: a.models, artifacts: a.artifacts, state: a.state, statusEvery: a['status-every'] });
    },
  )
  .epilog(examplesText(EXAMPLES['']))
  // Wider than yargs' 80 columns where the terminal allows: fewer wrapped descriptions.
  .wrap(Math.min(100, process.stdout.columns || 100))
  .option('verbose', { type: 'boolean', default: false, describe: "on an error, also print the rest of its message, its detail (e.g. what ONNX Runtime said) and the stack" })
  .demandCommand(1, 'name a command (see --help)')
  .strict()
  // What the command being parsed knows, for "did you mean" (before validation, which is what fails).
  .middleware(((_argv: unknown, y: import('yargs').Argv) => void (parsing = { y })) as never, true)
  // yargs' own complaints come as a message (err absent, or its YError); anything thrown by a check, a
  // coerce or a handler comes as the error itself.
  .fail((msg, err) => exitWithError(err && err.name !== 'YError' ? err : new UsageError(yargsMessage(msg ?? err?.message ?? 'invalid arguments'))))
  .help();
// A check that fails inside an async builder's parse (artifacts' --input-size) escapes .fail() as a
// YError: the same one line and exit 2 as every other flag.
await cli.parseAsync().catch((e: Error) => exitWithError(e?.name === 'YError' ? new UsageError(yargsMessage(e.message)) : e));
// The command is done: exit now rather than when every handle is gone. A watched directory that keeps
// receiving files can keep chokidar's write-settling timers alive after it was closed (seen in the 1-hour
// soak: a `run --max-seconds` that had checkpointed, exported and printed its summary never exited).
process.exit(process.exitCode ?? 0);
