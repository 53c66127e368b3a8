// What a newcomer trips on (issue #19): every bad number, path or output name is one line naming the
// flag (or positional) and the value, exit code 2, before any work and with nothing created; every
// option of every command says what it does in --help; eval --folder states its minimum; embed names
// the vector after what it holds and refuses an --out it does not write; --verbose adds the detail.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import path from 'node:path';
import { REPO } from './helpers/paths.ts';
import { encodePng } from '../agent/frames/decode.ts';
import { readSafetensors } from '../core/codecs/safetensors.ts';
import { Rng } from '../core/rng.ts';

const CLI = path.join(REPO, 'bin/ssocl.mjs');
const MODEL = path.join(REPO, 'test/fixtures/edge-demo-step141.onnx');
const ART = path.join(REPO, 'training-artifacts/edge');
const root = mkdtempSync(path.join(tmpdir(), 'ssocl-cli-input-'));
// Every command runs here, so a default relative --state (ssocl-state) or --models (models) would show.
const cwd = path.join(root, 'cwd');
mkdirSync(cwd);
test.after(() => rmSync(root, { recursive: true, force: true }));

interface Result {
  status: number | null;
  stdout: string;
  stderr: string;
}

// A bad flag must fail at once; the old behaviour (running on) is cut off and shows as a failure.
// Spawns run a few at a time: each is a fresh node + tsx start (about 0.7 s of CPU).
const cli = (...args: string[]): Result => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd, timeout: 60_000 });

function cliAsync(args: string[]): Promise<Result> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [CLI, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => (stderr += d));
    c.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

/** Runs many command lines, a few at a time (each is a fresh node + tsx start). */
async function cliMany(lines: string[][], concurrency = Math.max(2, availableParallelism())): Promise<Result[]> {
  const out: Result[] = new Array(lines.length);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < lines.length; i = next++) out[i] = await cliAsync(lines[i]);
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return out;
}

/** Exit 2, nothing on stdout, and exactly `line` on stderr. */
function usage(r: Result, line: string | RegExp, what: string): void {
  assert.equal(r.status, 2, `${what}: exit code\n${r.stderr}`);
  assert.equal(r.stdout, '', `${what}: nothing on stdout`);
  if (typeof line === 'string') assert.equal(r.stderr, `ssocl: ${line}\n`, what);
  else assert.match(r.stderr, line, what);
}

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

async function images(dir: string, n: number, seed: number): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const rng = new Rng(seed);
  for (let i = 0; i < n; i++) {
    const x = new Uint8Array(3 * 32 * 32).map(() => rng.int(256));
    writeFileSync(path.join(dir, `img${i}.png`), await encodePng(x, 32));
  }
}

// --help, parsed: each command's options and positionals with their text (continuation lines joined).
interface HelpEntry {
  name: string;
  text: string;
}

function helpEntries(help: string): HelpEntry[] {
  const out: HelpEntry[] = [];
  let inList = false;
  for (const line of help.split('\n')) {
    // Options:, Positionals: and the groups a command puts its options in (Source (one of):, ...).
    if (/^\S.*:$/.test(line) && !/^(Commands|Examples):$/.test(line)) {
      inList = true;
      continue;
    }
    if (!line.trim() || /^\S/.test(line)) {
      inList = /^\S/.test(line) ? false : inList;
      continue;
    }
    if (!inList) continue;
    // An entry starts at the name column (2 spaces, 6 when the list has a one-letter alias); a wrapped
    // description or tag list continues further right.
    const m = /^ {2}(?: {4})?(--?[\w-]+|[a-z][\w-]*)(?: {2,}(.*))?$/.exec(line);
    if (m && line.search(/\S/) <= 6) out.push({ name: m[1], text: (m[2] ?? '').trim() });
    else out.at(-1)!.text += ` ${line.trim()}`;
  }
  return out;
}

// Commands whose own --help lists subcommands (ssocl fleet keygen, ssocl fleet aggregate).
const NESTED = ['fleet'];

function commands(): string[] {
  const listed = (help: string) => [...help.matchAll(/^ {2}ssocl ([a-z][a-z ]*?)(?= [<[]| {2,}|$)/gm)].map((m) => m[1]);
  const r = cli('--help');
  assert.equal(r.status, 0, r.stderr);
  const names = listed(r.stdout).flatMap((n) => {
    if (!NESTED.includes(n)) return [n];
    const sub = listed(cli(n, '--help').stdout);
    assert.ok(sub.length >= 2, `${n}'s subcommands: ${sub.join(', ')}`);
    return sub;
  });
  assert.ok(names.length >= 9, `commands found in --help: ${names.join(', ')}`);
  return names;
}

// Just enough for each command's own checks to be reached (positionals and required options).
const BASE: Record<string, string[]> = {
  run: ['--dataset', 'demo'],
  eval: ['model.onnx'],
  classify: ['--support', 'support'],
  'data fetch': ['cifar10'],
};

test('--help: every option and positional of every command says what it does, and no number bypasses the shared check', async () => {
  const cmds = commands();
  const helps = await cliMany([['--help'], ...cmds.map((c) => [...c.split(' '), '--help'])]);
  const missing: string[] = [];
  const typedNumber: string[] = [];
  ['(top level)', ...cmds].forEach((c, i) => {
    assert.equal(helps[i].status, 0, `${c} --help: ${helps[i].stderr}`);
    const entries = helpEntries(helps[i].stdout);
    assert.ok(entries.some((e) => e.name === '--help'), `${c}: options parsed from --help`);
    for (const e of entries) {
      // A description is text before the [type] [default] tags.
      if (e.text === '' || e.text.startsWith('[')) missing.push(`${c} ${e.name}`);
      if (/\[number\]/.test(e.text)) typedNumber.push(`${c} ${e.name}`);
    }
  });
  assert.deepEqual(missing, [], 'options without a description');
  // type: 'number' turns 'abc' into NaN and '' into 0 before any check sees it: numbers go through nums().
  assert.deepEqual(typedNumber, [], "numeric options declared with type 'number' instead of cli-args' nums()");
  const evalHelp = helps[1 + cmds.indexOf('eval')].stdout;
  assert.match(evalHelp.split('\n\n')[1], /--folder/, "eval's summary names --folder");
});

test('every numeric flag of every command: a value that is not a number is one line naming the flag, exit 2', async () => {
  const cmds = commands();
  const helps = await cliMany(cmds.map((c) => [...c.split(' '), '--help']));
  // Numeric flags are the options --help shows without a type tag (nums() declares them untyped).
  const cases: { cmd: string; flag: string }[] = [];
  cmds.forEach((c, i) => {
    for (const e of helpEntries(helps[i].stdout)) {
      if (!e.name.startsWith('-') || /\[(string|boolean|array|count|number)\]|\[choices:/.test(e.text)) continue;
      cases.push({ cmd: c, flag: e.name.replace(/^-+/, '') });
    }
  });
  const found = new Set(cases.map((c) => `${c.cmd} ${c.flag}`));
  for (const w of ['run max-seconds', 'run lr', 'run checkpoint-every', 'run threads', 'embed batch', 'classify k', 'classify reject-below', 'eval k', 'eval threads', 'stream limit', 'bench trials', 'bench memory', 'demo fps']) {
    assert.ok(found.has(w), `${w} is among the numeric flags found`);
  }
  assert.ok(cases.length >= 40, `${cases.length} numeric flags found`);
  const rs = await cliMany(cases.map(({ cmd, flag }) => [...cmd.split(' '), ...(BASE[cmd] ?? []), `--${flag}`, 'abc']));
  cases.forEach(({ cmd, flag }, i) => usage(rs[i], new RegExp(`^ssocl: --${esc(flag)} abc: expected [^\\n]+\\n$`), `${cmd} --${flag} abc`));
  assert.deepEqual(readdirSync(cwd), [], 'nothing created (no ssocl-state/, no models/)');
});

test('fleet keys (issue #30): keygen writes NAME.key (0600) and NAME.pub and never overwrites; aggregate and run --fleet without keys refuse in one line naming keygen and --insecure-fleet, creating nothing', async () => {
  const keys = path.join(root, 'fleet-keys');
  const made = cli('fleet', 'keygen', '--out', keys, '--name', 'cam1');
  assert.equal(made.status, 0, made.stderr);
  assert.match(made.stdout, /cam1\.key \(private.*\n.*cam1\.pub \(public\)\nfingerprint [0-9a-f]{16}\n$/);
  assert.equal(statSync(path.join(keys, 'cam1.key')).mode & 0o777, 0o600);
  assert.match(readFileSync(path.join(keys, 'cam1.pub'), 'utf8'), /^-----BEGIN PUBLIC KEY-----/);
  const before = readFileSync(path.join(keys, 'cam1.key'));
  const rs = await cliMany([
    ['fleet', 'keygen', '--out', keys, '--name', 'cam1'],
    ['fleet', 'keygen', '--out', keys, '--name', '../up'],
    ['fleet', 'aggregate', '--broker', 'mqtt://127.0.0.1:1'],
    ['fleet', 'aggregate', '--broker', 'mqtt://127.0.0.1:1', '--identity', path.join(keys, 'cam1.key')],
    ['fleet', 'aggregate', '--broker', 'mqtt://127.0.0.1:1', '--identity', path.join(keys, 'cam1.pub'), '--allow', keys],
    ['run', '--dataset', 'demo', '--fleet', 'mqtt://127.0.0.1:1'],
    ['run', '--dataset', 'demo', '--fleet', 'mqtt://127.0.0.1:1', '--fleet-identity', path.join(keys, 'nope.key')],
    ['fleet', 'aggregate', '--broker', 'mqtt://127.0.0.1:1', '--robust', 'krum:x'],
  ]);
  usage(rs[0], `--out ${keys}: cam1.key exists; keys are never overwritten (remove it, or give another --name)`, 'keygen again');
  assert.deepEqual(readFileSync(path.join(keys, 'cam1.key')), before, 'the key kept');
  usage(rs[1], /^ssocl: --name "\.\.\/up": use 1-64 letters/, 'keygen --name ../up');
  usage(rs[2], /^ssocl: fleet aggregate: no --identity and --allow; make keys with `ssocl fleet keygen --out DIR --name NAME` .* or give --insecure-fleet .*\n$/, 'aggregate without keys');
  usage(rs[3], /^ssocl: fleet aggregate: --identity .* and --allow .* go together\n$/, 'aggregate without --allow');
  usage(rs[4], /^ssocl: --identity .*cam1\.pub: not a readable private key .*ssocl fleet keygen\n$/, 'a public key as --identity');
  usage(rs[5], /^ssocl: --fleet: this device has no --fleet-identity; make keys with `ssocl fleet keygen .* or give --insecure-fleet .*\n$/, 'run --fleet without keys');
  usage(rs[6], /^ssocl: --fleet-identity .*nope\.key: not a readable private key \(ENOENT\)/, 'run --fleet-identity missing');
  usage(rs[7], /^ssocl: robust "krum:x": expected krum:F .* or multi-krum:F,M/, '--robust krum:x');
  assert.deepEqual(readdirSync(cwd), [], 'nothing created (no ssocl-state/, no fleet-device)');
});

test('numbers: range, whole numbers, missing and repeated values, each with the exact line', async () => {
  const cases: [string[], string][] = [
    [['run', '--dataset', 'demo', '--max-seconds', '-5'], '--max-seconds -5: expected a number >= 0'],
    [['run', '--dataset', 'demo', '--max-seconds'], '--max-seconds: needs a value'],
    [['run', '--dataset', 'demo', '--lr', ''], '--lr "": expected a number > 0'],
    [['run', '--dataset', 'demo', '--threads', '0'], '--threads 0: expected a whole number >= 1'],
    [['run', '--dataset', 'demo', '--threads', '1', '--threads', '2'], '--threads 1 2: given 2 times; give it once'],
    [['run', '--dataset', 'demo', '--eval-every', '150'], '--eval-every 150: expected a number > 0 and <= 100'],
    [['run', '--dataset', 'demo', '--updates', '1.5'], '--updates 1.5: expected a whole number >= 1'],
    [['run', '--dataset', 'demo', '--checkpoint-every', '0.4'], '--checkpoint-every 0.4: expected a number of steps (e.g. 500) or a duration (30s, 5m, 1h)'],
    [['run', '--dataset', 'demo', '--max-pixels', '1e400'], '--max-pixels 1e400: expected a whole number >= 1'],
    [['run', '--dataset', 'demo', '--size', '0x480'], '--size 0x480: expected WxH, e.g. 640x480'],
    [['embed', 'x.png', '--batch', '1.5'], '--batch 1.5: expected a whole number >= 1'],
    [['classify', 'x.png', '--support', 's', '--reject-below', '2'], '--reject-below 2: expected a number >= 0 and <= 1'],
    [['eval', 'm.onnx', '--k', '20,x'], '--k 20,x: expected whole numbers >= 1, comma-separated'],
    [['bench', '--trials', '0,-1'], '--trials 0,-1: expected whole numbers >= 0, comma-separated'],
    [['stream', '--limit', '0'], '--limit 0: expected a whole number >= 1'],
    [['demo', '--fps', '0'], '--fps 0: expected a number > 0'],
    [['run', '--dataset', 'demo', '--ep', 'gpu'], '--ep gpu: expected one of cpu, cuda, webgpu, wasm'],
  ];
  const rs = await cliMany(cases.map(([args]) => args));
  cases.forEach(([args, line], i) => usage(rs[i], line, args.join(' ')));
  assert.deepEqual(readdirSync(cwd), [], 'nothing created');
});

test('paths: each checked for what it must be before any work, one line naming the flag or positional, exit 2', async () => {
  const d = path.join(root, 'paths');
  mkdirSync(d);
  const text = path.join(d, 'notes.txt');
  writeFileSync(text, 'not a model\n');
  const empty = path.join(d, 'empty');
  mkdirSync(empty);
  const nope = path.join(d, 'nope');
  const state = path.join(d, 'state');
  const models = path.join(d, 'models');
  const fakeData = path.join(d, 'data');
  mkdirSync(path.join(fakeData, 'cifar-10-batches-bin'), { recursive: true });
  const run = (...a: string[]) => ['run', '--dataset', 'demo', '--state', state, '--models', models, ...a];
  const cases: [string[], string | RegExp][] = [
    [['eval', text], new RegExp(`^ssocl: MODEL ${esc(text)}: not a readable ONNX model \\(protobuf: [^\\n]+\\)\\n$`)],
    [['eval', path.join(nope, 'm.onnx')], `MODEL ${path.join(nope, 'm.onnx')}: no such file`],
    [['eval', empty], `MODEL ${empty}: a directory, not a file`],
    [['eval', MODEL, '--data-dir', nope], `--data-dir ${nope}: no such directory`],
    [['eval', MODEL, '--data-dir', empty], `--data-dir ${empty}: no cifar-10-batches-bin/ in it (get it with: ssocl data fetch cifar10 --dir ${empty})`],
    [['eval', MODEL, '--folder', text], `--folder ${text}: not a directory`],
    [run('--artifacts', nope), `--artifacts ${nope}: no such directory`],
    [run('--artifacts', empty), `--artifacts ${empty}: no manifest.json in it (build artifacts with 'ssocl artifacts --preset NAME')`],
    [['run', '--dataset', 'demo', '--artifacts', ART, '--state', path.join(text, 'state'), '--models', models], `--state ${path.join(text, 'state')}: cannot be created: ${text} is not a directory`],
    [['run', '--dataset', 'demo', '--artifacts', ART, '--state', state, '--models', text], `--models ${text}: not a directory`],
    [run('--artifacts', ART, '--metrics', empty), `--metrics ${empty}: a directory, not a file`],
    [['run', '--dataset', 'cifar10', '--data-dir', nope, '--state', state, '--models', models], `--data-dir ${nope}: no such directory`],
    [['embed', path.join(nope, 'x.png'), '--model', MODEL], `INPUT ${path.join(nope, 'x.png')}: no such file or directory`],
    [['embed', empty, '--model', path.join(nope, 'm.onnx')], `--model ${path.join(nope, 'm.onnx')}: no such file; run ssocl run --watch DIR (or npm start) first to train one, or give --model FILE.onnx`],
    [['embed', empty, '--model', text], new RegExp(`^ssocl: --model ${esc(text)}: not a readable ONNX model \\([^\\n]+\\)\\n$`)],
    [['embed', '--watch', nope, '--model', MODEL, '--out', path.join(d, 'w.jsonl')], `--watch ${nope}: no such directory`],
    [['embed', empty, '--model', MODEL, '--out', path.join(text, 'e.jsonl')], `--out ${path.join(text, 'e.jsonl')}: cannot be created: ${text} is not a directory`],
    [['classify', empty, '--model', MODEL, '--support', nope], `--support ${nope}: no such directory`],
    [['stream', '--data-dir', fakeData, '--to', text], `--to ${text}: not a directory`],
    [['data', 'fetch', 'cifar10', '--dir', path.join(text, 'x')], `--dir ${path.join(text, 'x')}: cannot be created: ${text} is not a directory`],
    [['demo', '--artifacts', empty, '--models', models], `--artifacts ${empty}: no manifest.json in it (build artifacts with 'ssocl artifacts --preset NAME')`],
  ];
  const rs = await cliMany(cases.map(([args]) => args));
  cases.forEach(([args, line], i) => usage(rs[i], line, args.join(' ')));
  assert.ok(!existsSync(state) && !existsSync(models), 'no state or models directory created');
  assert.ok(!existsSync(path.join(d, 'w.jsonl')) && !existsSync(path.join(d, 'w.jsonl.ledger')), 'no output or ledger created');
  assert.deepEqual(readdirSync(cwd), [], 'nothing created in the working directory');
});

test('eval --folder: fewer than 5 images in a class is an error naming the minimum; 5 per class gives a finite accuracy', async () => {
  const few = path.join(root, 'folder-few');
  await images(path.join(few, 'cat'), 3, 1);
  await images(path.join(few, 'dog'), 6, 2);
  usage(
    cli('eval', MODEL, '--folder', few, '--threads', '1'),
    `--folder ${few}: each class needs at least 5 images (every 5th is a query, the rest the kNN memory); fewer in: cat (3) (or give ROOT/train/<class>/ and ROOT/test/<class>/)`,
    'eval --folder with 3 images in a class',
  );
  const ok = path.join(root, 'folder-ok');
  await images(path.join(ok, 'cat'), 5, 3);
  await images(path.join(ok, 'dog'), 5, 4);
  const r = cli('eval', MODEL, '--folder', ok, '--threads', '1', '--k', '3');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /memory 8 train images, 2 test queries/);
  assert.match(r.stdout, /\| class \| 3 \| \d+\.\d\d \|/);
  assert.doesNotMatch(r.stdout, /NaN/);
});

test('embed: the vector is named after what it holds; an --out it does not write is refused, and so is appending the other kind', async () => {
  const d = path.join(root, 'embed');
  await images(path.join(d, 'in'), 2, 5);
  const input = path.join(d, 'in');
  let r = cli('embed', input, '--model', MODEL, '--threads', '1', '--out', path.join(d, 'f.jsonl'));
  assert.equal(r.status, 0, r.stderr);
  const feats = readFileSync(path.join(d, 'f.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(feats.length, 2);
  for (const x of feats) assert.ok(Array.isArray(x.features) && !('embedding' in x), 'default output: a features field');
  r = cli('embed', input, '--model', MODEL, '--threads', '1', '--output', 'embedding', '--out', path.join(d, 'e.jsonl'));
  assert.equal(r.status, 0, r.stderr);
  for (const x of readFileSync(path.join(d, 'e.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l))) {
    assert.ok(Array.isArray(x.embedding) && !('features' in x), '--output embedding: an embedding field');
  }
  r = cli('embed', input, '--model', MODEL, '--threads', '1', '--out', path.join(d, 'f.safetensors'));
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual([...readSafetensors(path.join(d, 'f.safetensors')).tensors.keys()], ['features']);

  const bad: [string[], string][] = [
    [['--out', path.join(d, 'x.csv')], `--out ${path.join(d, 'x.csv')}: .csv is not an output this command writes; supported: .jsonl, .ndjson, .npy, .safetensors`],
    [['--out', path.join(d, 'x')], `--out ${path.join(d, 'x')}: a name without an extension is not an output this command writes; supported: .jsonl, .ndjson, .npy, .safetensors`],
    [['--out', path.join(d, 'x.jsonl'), '--format', 'npy'], `--format npy: --out ${path.join(d, 'x.jsonl')} names a jsonl file; give a matching extension or leave --format out`],
    // e.jsonl holds projections: features appended to it would make one file of two kinds.
    [['--out', path.join(d, 'e.jsonl')], `${path.join(d, 'e.jsonl')}: its records hold 'embedding' vectors (the projection, or backbone features from an older ssocl), this run writes 'features'; write to a new file`],
  ];
  const before = readFileSync(path.join(d, 'e.jsonl'));
  for (const [args, line] of bad) usage(cli('embed', input, '--model', MODEL, '--threads', '1', ...args), line, `embed ${args.join(' ')}`);
  assert.ok(!existsSync(path.join(d, 'x.csv')) && !existsSync(path.join(d, 'x')) && !existsSync(path.join(d, 'x.jsonl')), 'nothing written');
  assert.deepEqual(readFileSync(path.join(d, 'e.jsonl')), before, 'the existing file is untouched');
  usage(
    cli('classify', input, '--model', MODEL, '--support', path.join(d, 'in'), '--out', path.join(d, 'c.csv')),
    `--out ${path.join(d, 'c.csv')}: .csv is not an output this command writes; supported: .jsonl, .ndjson`,
    'classify --out c.csv',
  );
});

test('--verbose: an error is one line without it; with it, the detail and the stack follow', async (t) => {
  const lib = path.join(REPO, 'node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime_providers_cuda.so');
  if (process.platform !== 'linux' || process.arch !== 'x64' || existsSync(lib)) {
    t.skip('needs a linux/x64 install without the CUDA provider library (--ep cuda must fail to start)');
    return;
  }
  await images(path.join(root, 'verbose'), 1, 6);
  const img = path.join(root, 'verbose/img0.png');
  const plain = cli('embed', img, '--model', MODEL, '--ep', 'cuda');
  assert.equal(plain.status, 2, plain.stderr);
  assert.match(plain.stderr, /^ssocl: could not start execution provider 'cuda'[^\n]* \(more with --verbose\)\n$/);
  const verbose = cli('embed', img, '--model', MODEL, '--ep', 'cuda', '--verbose');
  assert.equal(verbose.status, 2, verbose.stderr);
  const lines = verbose.stderr.split('\n');
  assert.equal(lines[0], plain.stderr.split('\n')[0].replace(' (more with --verbose)', ''), 'the same first line');
  assert.match(verbose.stderr, /\ndetail: \S/, "the error's detail");
  assert.match(verbose.stderr, /\n {4}at /, 'the stack');
  // A usage error has no stack worth showing: still one line with --verbose.
  usage(cli('run', '--dataset', 'demo', '--max-seconds', 'abc', '--verbose'), '--max-seconds abc: expected a number >= 0', 'usage error with --verbose');
});
