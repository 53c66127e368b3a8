// `ssocl models list|rollback`: the versions the agent exported into a models directory (published or
// refused by the health gate, the current one marked), and putting an earlier one back as
// latest.onnx + latest.json in the order exports use, so a running `embed --watch` reloads it whole.
// Versions are listed by model line (agent/pipeline/line.ts; one per state and source), with what the
// agent of the published line is doing (its <state>/status.json); a rollback may cross lines.
// A rollback is gated like an export: the model is measured on the agent's health set (--state) and
// refused, unless --force, when it looks collapsed or gives non-finite features there; the step it
// publishes is the model's own (its metadata), never what a sidecar claims.

import { existsSync } from 'node:fs';
import path from 'node:path';
import { listVersions, MAX_MODEL_BYTES, modelStep, publishLatest, reconcileLatest, type Version } from '../export/export.ts';
import { Encoder } from '../infer/encoder.ts';
import { readJsonObject } from '../../core/json.ts';
import { LEGACY_LINE } from '../pipeline/line.ts';
import { describeStatus, readStatus } from '../pipeline/status.ts';
import { readInside, UnsafeFile } from '../../core/safe-read.ts';

const warn = (msg: string) => process.stderr.write(`${msg}\n`);

const usage = (msg: string) => Object.assign(new Error(msg), { exitCode: 2 });

const num = (v: number | undefined, digits: number) => (v === undefined || v === null || !Number.isFinite(v) ? '-' : v.toFixed(digits));

function row(v: Version): string[] {
  const h = v.health;
  return [
    v.current ? '*' : ' ',
    v.step === null ? '?' : String(v.step),
    v.time.replace('T', ' ').replace(/\.\d+Z$/, 'Z'),
    v.intact ? v.status : 'damaged',
    num(h?.rank, 2),
    num(h?.meanCos, 3),
    num(h?.alignment, 3),
    h?.probe ? `${(h.probe.knn * 100).toFixed(1)}%` : '-',
    v.file + (v.status === 'rejected' && v.reason ? `  (${v.reason})` : ''),
  ];
}

/** "agent: training · step 51 · 2 s ago" for the state that published latest (or --state), if it has a record. */
function agentLine(models: string, state: string | undefined): string | null {
  const dir = state ?? readJsonObject(path.join(models, 'latest.json'))?.state;
  if (typeof dir !== 'string') return null;
  const s = readStatus(dir);
  return s ? `agent (${dir}): ${describeStatus(s)}` : null;
}

export async function modelsList(a: { models: string; json: boolean; state?: string }): Promise<void> {
  const repaired = reconcileLatest(a.models, warn);
  if (repaired) process.stderr.write(`${repaired}\n`);
  const versions = listVersions(a.models, warn);
  if (a.json) {
    for (const v of versions) process.stdout.write(JSON.stringify({ ...v, record: undefined }) + '\n');
    return;
  }
  if (!versions.length) {
    process.stdout.write(`no versions in ${a.models}\n`);
    return;
  }
  const head = ['', 'step', 'exported', 'status', 'rank', 'mean cos', 'align', 'probe', 'file'];
  const rows = [head, ...versions.map(row)];
  const widths = head.map((_, c) => Math.max(...rows.map((r) => (c === head.length - 1 ? 0 : r[c].length))));
  const print = (r: string[]) => process.stdout.write(r.map((x, c) => (c === 1 ? x.padStart(widths[c]) : x.padEnd(widths[c]))).join('  ').trimEnd() + '\n');
  // One block per line, oldest line first; step numbers compare within a block only.
  const lines = [...new Set(versions.map((v) => v.line))];
  const several = lines.length > 1;
  print(head);
  for (const line of lines) {
    const vs = versions.filter((v) => v.line === line);
    if (several) {
      const src = vs.find((v) => v.lineSource)?.lineSource;
      process.stdout.write(`line ${line} (${line === LEGACY_LINE ? 'exported before model lines' : (src ?? 'source not recorded')})${vs.some((v) => v.current) ? ', published' : ''}\n`);
    }
    for (const v of vs) print(row(v));
  }
  if (!versions.some((v) => v.current)) process.stdout.write(`(${path.join(a.models, 'latest.onnx')} is none of these)\n`);
  const agent = agentLine(a.models, a.state);
  if (agent) process.stdout.write(`${agent}\n`);
}

/** The version a rollback publishes: STEP's, or the newest published one exported before the current. */
function target(versions: Version[], step: number | undefined, models: string): Version {
  const cur = versions.find((v) => v.current);
  if (step !== undefined) {
    // Two model lines may both have a version at STEP: the one not published now is the one to put back.
    const at = versions.filter((x) => x.step === step);
    const v = at.filter((x) => !x.current).at(-1) ?? at.at(-1);
    if (!v) throw usage(`STEP ${step}: no version at that step in ${models} (there: ${versions.map((x) => x.step).join(', ') || 'none'})`);
    return v;
  }
  const earlier = versions.filter((v) => v.status !== 'rejected' && v.intact && !v.current && (!cur || v.time < cur.time));
  if (!earlier.length) throw usage(`no earlier published version in ${models} to roll back to${versions.length ? ' (see ssocl models list)' : ''}`);
  return earlier.at(-1)!;
}

export async function modelsRollback(o: { models: string; state?: string; step?: number; force: boolean }): Promise<void> {
  // The health set is the publishing agent's: --state, else the state latest.json names, else the default.
  const named = readJsonObject(path.join(o.models, 'latest.json'))?.state;
  const a = { ...o, state: o.state ?? (typeof named === 'string' ? named : 'ssocl-state') };
  const repaired = reconcileLatest(a.models, warn);
  if (repaired) process.stderr.write(`${repaired}\n`);
  const versions = listVersions(a.models, warn);
  const cur = versions.find((v) => v.current);
  const v = target(versions, a.step, a.models);
  if (v.current) {
    process.stdout.write(`${v.file} (step ${v.step}) is already what ${path.join(a.models, 'latest.onnx')} holds\n`);
    return;
  }
  if (!v.intact) throw usage(`STEP ${v.step}: ${v.file} is not the model its sidecar describes (damaged or replaced); not published`);
  if (v.status === 'rejected' && !a.force) throw usage(`STEP ${v.step}: ${v.file} was refused by the health gate (${v.reason ?? 'no reason recorded'}); --force publishes it anyway`);
  // The bytes that are checked are the bytes that are published (the file could change in between).
  let bytes: Buffer | null;
  try {
    bytes = readInside(a.models, v.file, { maxBytes: MAX_MODEL_BYTES });
  } catch (e) {
    throw usage(`STEP ${v.step}: ${e instanceof UnsafeFile ? e.message : (e as Error).message}`);
  }
  if (!bytes) throw usage(`STEP ${v.step}: ${v.file} is gone from ${a.models}`);
  const enc = await Encoder.fromBytes(v.file, bytes).catch((e: Error) => {
    throw usage(`STEP ${v.step}: ${e.message}`);
  });
  try {
    await gate(enc, v, a);
  } finally {
    await enc.release();
  }
  const from = cur ? { step: cur.step, sha256: cur.sha256 } : null;
  publishLatest(a.models, bytes, { ...v.record, step: modelStep(bytes) ?? v.step, status: 'published', rollback: { from, at: new Date().toISOString(), ...(a.force ? { forced: true } : {}) } });
  process.stdout.write(
    `${path.join(a.models, 'latest.onnx')}: step ${v.step} (${v.file})${cur ? `, was step ${cur.step}` : ''}; ` +
      `an agent exporting into ${a.models} replaces it at its next export that passes the health gate\n`,
  );
}

/** The health gate of a rollback: measured on --state's health set; refused unless --force. */
async function gate(enc: Encoder, v: Version, a: { state: string; force: boolean }): Promise<void> {
  const notMeasured = (why: string) => void warn(`health: not measured: ${why}; ${v.file} was checked on probe images only`);
  if (!existsSync(path.join(a.state, 'health-set.safetensors'))) return notMeasured(`no health set in ${a.state} (the agent keeps one there while it runs)`);
  // Loaded only when there is a set to measure on (the measuring code pulls in the image decoders).
  const { checkOnHealthSet } = await import('../health/model-check.ts');
  const { describeHealth } = await import('../health/gate.ts');
  const check = await checkOnHealthSet(enc, a.state, notMeasured);
  if (!check) return;
  warn(`health of ${v.file}: ${describeHealth(check.figures)}`);
  if (!check.reasons.length) return;
  if (!a.force) throw usage(`STEP ${v.step}: ${v.file} fails the health gate on the health set in ${a.state}: ${check.reasons.join('; ')}; --force publishes it anyway`);
  warn(`health gate: ${v.file} would be refused (${check.reasons.join('; ')}); published anyway (--force)`);
}
