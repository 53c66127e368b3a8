// What a newcomer meets on the command line (issue #29 items 6, 7, 9): --help in groups with the
// research variants out of the way and examples that use only flags that exist; "did you mean" for a
// typo'd flag or command; embed before any training says how to make a model; --ep webgpu on a box
// where it cannot start is one line with the way out and no Vulkan noise; defaults inside the clone shown
// relative; `ssocl demo` without a terminal prints status lines and ends with the serve command.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import path from 'node:path';
import { REPO } from './helpers/paths.ts';
import { tinyPreset } from './helpers/tiny.ts';
import { compileArtifacts, writeArtifacts } from '../tools/artifacts/write.ts';
import { closest, editDistance, unknownArgumentMessage } from '../agent/cli-suggest.ts';
import { EXAMPLES, exampleFlags } from '../agent/cli-help.ts';
import { agentOutput, shownPath } from '../agent/commands/terminal.ts';
import { METHOD_NAMES } from '../agent/methods.ts';
import { encodePng } from '../agent/frames/decode.ts';

const CLI = path.join(REPO, 'bin/ssocl.mjs');
const MODEL = path.join(REPO, 'test/fixtures/edge-demo-step141.onnx');
const root = mkdtempSync(path.join(tmpdir(), 'ssocl-cli-help-'));
const cwd = path.join(root, 'cwd');
mkdirSync(cwd);
test.after(() => rmSync(root, { recursive: true, force: true }));

interface Result {
  status: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], o: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Result> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [CLI, ...args], { cwd: o.cwd ?? cwd, env: o.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => (stderr += d));
    c.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

async function many(lines: string[][]): Promise<Result[]> {
  const out: Result[] = new Array(lines.length);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < lines.length; i = next++) out[i] = await cli(lines[i]);
  };
  await Promise.all(Array.from({ length: Math.max(2, availableParallelism()) }, worker));
  return out;
}

/** --help's sections: each heading (a line at column 0 ending in ':') and the option names under it. */
function sections(help: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let cur: string[] | null = null;
  for (const line of help.split('\n')) {
    if (/^\S.*:$/.test(line) && line !== 'Examples:') out.set(line, (cur = []));
    else if (/^\S/.test(line)) cur = null;
    else if (cur) {
      // '  --passes, --epochs  ...': a flag and its aliases.
      const m = /^ {2}(?: {4})?(--?[\w-]+(?:, --?[\w-]+)*)(?: {2,}|$)/.exec(line);
      if (m) cur.push(...m[1].split(', ').map((f) => f.replace(/^-+/, '')));
    }
  }
  return out;
}

/** The example command lines of a --help (the lines under Examples: that start with `ssocl`). */
function examples(help: string): string[] {
  const at = help.indexOf('\nExamples:\n');
  const out: string[] = [];
  // A command is at 2 spaces (a narrow terminal wraps it there too), what it does at 6.
  for (const l of at < 0 ? [] : help.slice(at).split('\n')) {
    if (/^ {2}ssocl /.test(l)) out.push(l.trim());
    else if (/^ {2}\S/.test(l) && out.length) out[out.length - 1] += ` ${l.trim()}`;
  }
  return out;
}

test('run --help: every option in a named group, --state and --models before the research methods, none of their variants listed; --help-methods has them', async () => {
  const [help, methods] = await many([['run', '--help'], ['run', '--help-methods']]);
  assert.equal(help.status, 0, help.stderr);
  const s = sections(help.stdout);
  const headings = [...s.keys()];
  assert.ok(headings[0].startsWith('Source'), `first group: ${headings[0]}`);
  assert.deepEqual((s.get('Options:') ?? []).sort(), ['help', 'verbose', 'version'], 'only the general options are left ungrouped');
  const order = headings.flatMap((h) => s.get(h)!);
  for (const f of ['watch', 'camera', 'dataset', 'state', 'models', 'max-seconds', 'ep', 'health-gate', 'fleet', 'method']) assert.ok(order.includes(f), `--${f} listed`);
  assert.ok(order.indexOf('state') < 10 && order.indexOf('models') < 10, `--state and --models among the first options (${order.slice(0, 10).join(' ')})`);
  const research = headings.find((h) => h.startsWith('Research methods'))!;
  assert.ok(research && headings.indexOf(research) === headings.length - 2, 'research methods: the last group before the general options');
  for (const f of ['method', 'buffer', 'replay', 'warmup']) assert.ok(s.get(research)!.includes(f), `--${f} under ${research}`);
  for (const name of METHOD_NAMES.filter((n) => n.includes('-'))) assert.ok(!help.stdout.includes(name), `${name} is not in run --help`);
  assert.ok(help.stdout.split('\n').length < 200, `run --help is ${help.stdout.split('\n').length} lines`);
  assert.equal(methods.status, 0, methods.stderr);
  for (const name of METHOD_NAMES) assert.match(methods.stdout, new RegExp(`^  ${name} +\\S`, 'm'), `--help-methods describes ${name}`);
  for (const p of ['diverse', 'reservoir', 'strata-random']) assert.match(methods.stdout, new RegExp(`^  ${p} +\\S`, 'm'), `--help-methods describes buffer ${p}`);
});

test('every example in --help uses only flags its command has, and the main commands have examples', async () => {
  const cmds = ['', 'run', 'demo', 'embed', 'classify', 'serve', 'models', 'fleet aggregate'];
  const helps = await many(cmds.map((c) => [...(c ? c.split(' ') : []), '--help']));
  const flagsOf = new Map<string, Set<string>>();
  cmds.forEach((c, i) => {
    assert.equal(helps[i].status, 0, `${c} --help: ${helps[i].stderr}`);
    flagsOf.set(c, new Set([...sections(helps[i].stdout).values()].flat()));
    assert.ok(examples(helps[i].stdout).length > 0, `ssocl ${c} --help has examples`);
  });
  // The top level's examples name other commands: each is checked against that command's --help.
  const shown = cmds.flatMap((c, i) => examples(helps[i].stdout));
  const missing: string[] = [];
  for (const line of shown) {
    const words = line.split(/\s+/).slice(1);
    const cmd = words[0] === 'fleet' ? 'fleet aggregate' : words[0];
    const have = flagsOf.get(cmd) ?? flagsOf.get(cmd === 'models' ? 'models' : '')!;
    for (const f of exampleFlags(line)) if (!have.has(f)) missing.push(`${line}: --${f}`);
  }
  assert.deepEqual(missing, [], 'flags in examples that the command does not have');
  // Examples whose flags a command lacks are left out, not shown: the table may name flags to come.
  const declared = Object.values(EXAMPLES).flat().length;
  assert.ok(shown.length <= declared && shown.length >= cmds.length, `${shown.length} examples shown of ${declared}`);
});

test('did you mean: a typo in a flag or a command is one line with the nearest that exists, exit 2 (and a missing required flag one line too)', async () => {
  const cases: [string[], string][] = [
    [['run', '--dataset', 'demo', '--max-second', '3'], 'unknown option --max-second for ssocl run; did you mean --max-seconds?'],
    [['train', '--watch', 'frames'], "unknown command 'train'; did you mean ssocl run?"],
    [['embed', 'x.png', '--modle', 'm.onnx'], 'unknown option --modle for ssocl embed; did you mean --model?'],
    [['data', 'fetch', 'cifar10', '--dri', 'x'], 'unknown option --dri for ssocl data fetch; did you mean --dir?'],
    [['classify', 'x.png'], '--support: required'],
  ];
  const rs = await many(cases.map(([a]) => a));
  cases.forEach(([args, line], i) => {
    assert.equal(rs[i].status, 2, `${args.join(' ')}: ${rs[i].stderr}`);
    assert.equal(rs[i].stderr, `ssocl: ${line}\n`, args.join(' '));
    assert.equal(rs[i].stdout, '');
  });
  const unknown = await cli(['frobnicate']);
  assert.match(unknown.stderr, /^ssocl: unknown command 'frobnicate'; the commands: artifacts, run, [^\n]*demo\n$/);
  // The rest in-process: what the CLI hands cli-suggest.ts.
  const ctx = { args: [], command: [], options: ['help', 'version', 'verbose'], booleans: ['help', 'version', 'verbose'], commands: ['run', 'embed', 'serve', 'data fetch'] };
  assert.equal(unknownArgumentMessage({ ...ctx, args: ['emebd', 'x.png'] }), "unknown command 'emebd'; did you mean ssocl embed?");
  assert.equal(unknownArgumentMessage({ ...ctx, args: ['download'] }), "unknown command 'download'; did you mean ssocl data fetch?");
  const run = { ...ctx, command: ['run'], options: ['watch', 'health-gate', 'max-seconds'], booleans: ['health-gate'] };
  assert.equal(unknownArgumentMessage({ ...run, args: ['--watch', 'f', '--no-health-gat'] }), 'unknown option --no-health-gat for ssocl run; did you mean --no-health-gate?');
  assert.equal(unknownArgumentMessage({ ...run, args: ['--watch=f', '--zzzzzz', '-5'] }), 'unknown option --zzzzzz for ssocl run; ssocl run --help lists them');
  assert.equal(unknownArgumentMessage({ ...run, args: ['--maxSeconds', '3'] }), undefined, 'a camelCase spelling of a known option is known');
  assert.equal(editDistance('modle', 'model'), 1, 'a transposition is one edit');
  assert.equal(closest('max-sec', ['max-seconds', 'max-arrivals']), 'max-seconds', 'a prefix of one option');
  assert.equal(closest('fpt', ['fit', 'fpx']), undefined, 'a tie suggests nothing');
});

test('embed before any training: the missing model says how to make one', async () => {
  const dir = path.join(root, 'frames');
  mkdirSync(dir, { recursive: true });
  const r = await cli(['embed', dir]);
  assert.equal(r.status, 2, r.stderr);
  assert.equal(r.stderr, 'ssocl: --model models/latest.onnx: no such file; run ssocl run --watch DIR (or npm start) first to train one, or give --model FILE.onnx\n');
});

test('--ep webgpu where it cannot start: one line naming --ep-fallback cpu and SwiftShader, no Vulkan loader output; --ep-fallback cpu carries on', async (t) => {
  const dir = path.join(root, 'webgpu');
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'a.png'), await encodePng(new Uint8Array(3 * 32 * 32).fill(90), 32));
  // The machine's own Vulkan drivers (Mesa's print the XDG_RUNTIME_DIR complaint), no runtime directory.
  const env = { ...process.env };
  delete env.VK_ICD_FILENAMES;
  delete env.XDG_RUNTIME_DIR;
  const r = await cli(['embed', dir, '--model', MODEL, '--ep', 'webgpu', '--out', path.join(dir, 'w.jsonl')], { env });
  if (r.status === 0) {
    t.skip('webgpu starts on this machine (a GPU, or a default Vulkan driver that works)');
    return;
  }
  assert.equal(r.status, 2, r.stderr);
  assert.equal(r.stderr.split('\n').length, 2, `one line:\n${r.stderr}`);
  assert.match(r.stderr, /^ssocl: could not start execution provider 'webgpu': [^\n]*--ep-fallback cpu[^\n]*SwiftShader[^\n]*chromium[^\n]*\(more with --verbose\)\n$/);
  assert.doesNotMatch(r.stderr, /XDG_RUNTIME_DIR|onnxruntime_src|Warning/);
  const f = await cli(['embed', dir, '--model', MODEL, '--ep', 'webgpu', '--ep-fallback', 'cpu', '--out', path.join(dir, 'c.jsonl')], { env });
  assert.equal(f.status, 0, f.stderr);
  assert.doesNotMatch(f.stderr, /XDG_RUNTIME_DIR|onnxruntime_src|Warning/);
  assert.match(f.stderr, /falling back to --ep cpu/);
  assert.equal(readFileSync(path.join(dir, 'c.jsonl'), 'utf8').trim().split('\n').length, 1);
});

test('defaults inside the clone are shown relative to it', async () => {
  const env = { ...process.env };
  delete env.SSOCL_DATA;
  const get = async (args: string[]) => {
    const r = await cli([...args, '--help'], { cwd: REPO, env });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.replace(/\s+/g, ' ');
  };
  const [demo, serve, run] = await Promise.all([get(['demo']), get(['serve']), get(['run'])]);
  assert.match(demo, /--models .*?\[default: models\]/);
  assert.match(demo, /--artifacts .*?\[default: training-artifacts\/edge\]/);
  assert.match(serve, /--artifacts .*?\[default: training-artifacts\/edge\]/);
  assert.match(run, /--data-dir .*?\[default: \.\.\/shared\/data\]/);
  for (const h of [demo, serve, run]) assert.ok(!h.includes(REPO), 'no absolute path of the clone');
  assert.equal(shownPath('/a/b/c', '/a/b'), 'c');
  assert.equal(shownPath('/a/x', '/a/b'), '../x');
  assert.equal(shownPath('/x/y', '/a/b'), '/x/y', 'two levels up: absolute');
});

test('status lines without a terminal: every 30 s by default (as run), never on a terminal, --status-every overrides', () => {
  const sink = { write: () => true };
  assert.equal(agentOutput(undefined, { ...sink, isTTY: false }).statusEveryMs, 30_000);
  assert.equal(agentOutput(undefined, { ...sink, isTTY: true }).statusEveryMs, 0);
  assert.equal(agentOutput(2, { ...sink, isTTY: true }).statusEveryMs, 2000);
  assert.equal(agentOutput(undefined, { ...sink, isTTY: false }).progress, undefined, 'no progress line without a terminal');
});

test('ssocl demo without a terminal: status lines while it trains, and its last line is the serve command for what it did', async () => {
  const art = path.join(root, 'art32');
  writeArtifacts(compileArtifacts(tinyPreset(['image.size=32', 'agent={"newPerArrival":4,"updatesPerArrival":1,"bufferSize":8,"replay":"mixed"}'])), art);
  const r = await cli(['demo', '--seconds', '3', '--status-every', '1', '--artifacts', art, '--models', 'm', '--state', 's', '--threads', '1'], { cwd: root });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /^status: training; frames \d+/m, 'status lines on stderr');
  const last = r.stdout.trimEnd().split('\n').at(-1)!;
  assert.equal(last, 'see it on the dashboard: npx ssocl serve --state s --models m --metrics m/demo-metrics.jsonl');
  assert.ok(existsSync(path.join(root, 's/checkpoints')) && existsSync(path.join(root, 'm/demo-metrics.jsonl')), 'what the serve command names is there');
});
