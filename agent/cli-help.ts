// How --help reads: each command's options in groups, what a user looks for first (where frames come
// from, where the state and the models go) first; the research methods' variants last and described
// only by `ssocl run --help-methods`; examples under each main command. Groups and examples name only
// flags the command has (a name that is not there is left out), so --help never lists a flag that
// does not exist.

import type { Argv } from 'yargs';
import { BUFFER_POLICY_TEXT, DEFAULT_METHOD, METHODS, METHOD_NAMES } from './methods.ts';

type Groups = readonly (readonly [string, readonly string[]])[];

export const RUN_GROUPS: Groups = [
  ['Source (one of):', ['watch', 'camera', 'dataset']],
  ['State and export:', ['state', 'models', 'metrics', 'fresh', 'checkpoint-every', 'export-every', 'emit-embeddings', 'status-every', 'disk-retry-s']],
  ['When to stop:', ['passes', 'exit-when-idle', 'max-seconds', 'max-arrivals']],
  ['Learning:', ['artifacts', 'ep', 'ep-fallback', 'threads', 'lr', 'lr-schedule', 'lr-steps', 'buffer-size', 'seed', 'max-skips']],
  ['Frames (--watch, --camera):', ['recursive', 'order', 'after-ingest', 'processed', 'quarantine', 'stable-ms', 'allow-hard-links', 'root-replaced', 'fit', 'max-pixels', 'overflow', 'backlog']],
  ['Camera (--camera):', ['fps', 'size', 'ffmpeg', 'stall-s']],
  ['Data set (--dataset):', ['stream-order', 'trial', 'data-dir', 'per-class', 'eval-every', 'eval-memory']],
  ['Health (each export, before it is published):', ['health-gate', 'health-frames', 'health-min-rank', 'health-max-cos', 'health-max-rank-drop', 'health-max-cos-rise', 'probe', 'probe-max-drop']],
  ['Fleet (learning with other devices):', ['fleet', 'fleet-name', 'fleet-device', 'fleet-every', 'fleet-encoding', 'fleet-username', 'fleet-password', 'fleet-ca', 'fleet-cert', 'fleet-key', 'fleet-insecure', 'fleet-identity', 'fleet-aggregator-key', 'insecure-fleet']],
  ['Research methods (the comparison of ssocl bench):', ['method', 'help-methods', 'updates', 'replay', 'warmup', 'buffer']],
];

export const INFER_GROUPS: Groups = [
  ['Input and output:', ['watch', 'model', 'out', 'format', 'output', 'support']],
  ['Recognition:', ['k', 'temperature', 'reject-below', 'novelty', 'novelty-buffer']],
  ['Frames:', ['batch', 'recursive', 'fit', 'max-pixels', 'stable-ms', 'reload-ms', 'exit-when-idle']],
  ['Execution:', ['ep', 'ep-fallback', 'threads']],
];

// Examples: [command line, what it does]. The quickstart of README, command by command.
export const EXAMPLES: Record<string, readonly (readonly [string, string])[]> = {
  '': [
    ['$0 demo', 'learn from the built-in demo stream for 2 minutes, export models/latest.onnx (npm start)'],
    ['$0 run --watch ./frames', 'learn from the images in ./frames and those written there later'],
    ['$0 embed ./frames --out embeddings.jsonl', 'embeddings of images from the exported encoder'],
    ['$0 serve --metrics metrics.jsonl', 'the dashboard of an agent, at http://127.0.0.1:8777/'],
    ['$0 run --help', 'the options of a command'],
  ],
  run: [
    ['$0 run --watch ./frames', 'learn from ./frames (state in ./ssocl-state, encoders in ./models), keep watching for new frames'],
    ['$0 run --watch ./frames --state ./state-frames --passes 3 --exit-when-idle 5', 'a folder of your own frames with its own state: 3 passes over it, then stop (README: its own --models too)'],
    ['$0 run --camera /dev/video0 --fps 5', 'learn from a camera through ffmpeg'],
    ['$0 run --dataset demo --metrics metrics.jsonl', 'replay the demo stream in-process, one metrics row per step'],
    ['$0 run --watch ./frames --fleet mqtt://hub:1883 --fleet-device cam1 --fleet-identity cam1.key', 'learn together with other devices, updates signed (ssocl fleet keygen --name cam1; add --fleet-aggregator-key aggregator.pub rather than trust the first signed global model)'],
    ['$0 run --help-methods', 'the research methods and buffer policies of --method and --buffer'],
  ],
  demo: [
    ['$0 demo', '2 minutes on the CPU; prints the ssocl serve command that shows the run'],
    ['$0 demo --seconds 30 --ep webgpu --ep-fallback cpu', 'shorter, on WebGPU where it starts'],
  ],
  embed: [
    ['$0 embed ./frames --model ./models-frames/latest.onnx --out embeddings.jsonl', 'one JSON line per image: its features and the model that made them'],
    ['$0 embed --watch ./frames --out embeddings.jsonl', 'keep embedding new frames, reloading models/latest.onnx when the agent exports'],
  ],
  classify: [
    ['$0 classify ./frames --support ./labelled', 'label each image by its nearest labelled examples (./labelled/<label>/*.jpg)'],
    ['$0 classify ./frames --support ./labelled --reject-below 0.6 --novelty', 'unknown below a 60% vote, with a novelty score'],
  ],
  serve: [
    ['$0 serve --state ./state-frames --models ./models-frames --metrics metrics-frames.jsonl', 'the dashboard of the agent that used these folders'],
  ],
  models: [
    ['$0 models list --models ./models-frames', 'the exported versions, the current one marked'],
    ['$0 models rollback --models ./models-frames', 'publish the version before the current one again'],
  ],
  'fleet aggregate': [['$0 fleet aggregate --broker mqtt://hub:1883 --identity aggregator.key --allow ./allow', 'signed global models; updates only from devices whose DEVICE.pub is in ./allow']],
  'fleet keygen': [['$0 fleet keygen --out keys --name cam1', 'keys/cam1.key (private, mode 0600) and keys/cam1.pub (for the aggregator\'s --allow folder)']],
};

/** Examples as --help ends with them: each command on its own line (to copy), what it does below. */
export function examplesText(examples: readonly (readonly [string, string])[]): string {
  return ['Examples:', ...examples.map(([line, what]) => `  ${line.replace('$0', 'ssocl')}\n      ${what}`)].join('\n');
}

/** The flags an example line uses. */
export function exampleFlags(line: string): string[] {
  return [...line.matchAll(/(?:^|\s)--([a-z][\w-]*)/g)].map((m) => m[1]);
}

/** `y` with its options in `groups` (those it has) and the examples of `command` whose flags it has (the top level's: every one). */
export function helpLayout<T>(y: Argv<T>, groups: Groups, command?: string): Argv<T> {
  const opts = (y as unknown as { getOptions(): { key: Record<string, unknown> } }).getOptions();
  const defined = new Set([...Object.keys(opts.key), 'help']);
  for (const [name, keys] of groups) {
    const have = keys.filter((k) => defined.has(k));
    if (have.length) y = y.group(have, name);
  }
  const examples = (EXAMPLES[command ?? ''] ?? []).filter(([line]) => exampleFlags(line).every((f) => defined.has(f)));
  if (examples.length) y = y.epilog(examplesText(examples));
  return y;
}

/** `ssocl run --help-methods`: every method and buffer policy, with what it changes. */
export function methodsHelp(): string {
  const w = Math.max(...METHOD_NAMES.map((n) => n.length));
  const bw = Math.max(...Object.keys(BUFFER_POLICY_TEXT).map((n) => n.length));
  return [
    `--method NAME: what to train, defined once in agent/methods.ts, as ssocl bench runs it (default ${DEFAULT_METHOD}): its artifacts, buffer policy, replay rule, warm-up and updates; --artifacts, --buffer, --replay, --warmup and --updates override each.`,
    '',
    ...METHOD_NAMES.map((n) => `  ${n.padEnd(w)}  ${METHODS[n].describe}`),
    '',
    "--buffer POLICY: the buffer policy, overriding the method's:",
    '',
    ...Object.entries(BUFFER_POLICY_TEXT).map(([n, t]) => `  ${n.padEnd(bw)}  ${t}`),
    '',
  ].join('\n');
}
