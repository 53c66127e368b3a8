// Module boundaries: core/ is the shared base (no agent/, no tools/), the agent's runtime does not load
// the compiler (only the command front-ends that run it may), tools/ does not depend on the runtime,
// and the agent's top-level parts import one another one way only. Read from the sources with a regex,
// static and dynamic imports alike, so a lazy import() counts as much as a static one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { REPO } from './helpers/paths.ts';

/** agent/ files that are front-ends of tools/ (they run the compiler or the data tools), and what each may import there. */
const AGENT_TOOLS_FRONT_ENDS: Record<string, string[]> = {
  // `ssocl artifacts`: compiles a preset.
  'agent/commands/artifacts.ts': ['tools/artifacts/presets.ts', 'tools/artifacts/write.ts', 'tools/import/artifacts.ts', 'tools/import/source.ts'],
  // `ssocl stream`: makes class-incremental stream orders and camera-like clips.
  'agent/commands/stream.ts': ['tools/data/streams.ts', 'tools/data/clips.ts'],
  // `ssocl data fetch` and the preset list of `ssocl artifacts`, both loaded lazily (see below).
  'agent/cli.ts': ['tools/artifacts/presets.ts', 'tools/data/fetch.ts'],
};
/** Front-ends whose tools/ imports must be dynamic, so the other commands never load the compiler. */
const LAZY_ONLY = new Set(['agent/cli.ts']);

interface Import {
  spec: string;
  dynamic: boolean;
}

/** The module specifiers of `import ... from`, `export ... from`, `import '...'` and `import('...')`. */
function importsOf(source: string): Import[] {
  const out: Import[] = [];
  for (const m of source.matchAll(/\b(?:import|export)\s+(?:type\s+)?[\w*{}\s,$]*?\bfrom\s*(['"])([^'"\n]+)\1/g)) out.push({ spec: m[2], dynamic: false });
  for (const m of source.matchAll(/^\s*import\s*(['"])([^'"\n]+)\1/gm)) out.push({ spec: m[2], dynamic: false });
  for (const m of source.matchAll(/\bimport\s*\(\s*(['"])([^'"\n]+)\1\s*\)/g)) out.push({ spec: m[2], dynamic: true });
  return out;
}

function tsFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(path.join(REPO, dir), { withFileTypes: true })) {
    const rel = `${dir}/${e.name}`;
    if (e.isDirectory()) out.push(...tsFiles(rel));
    else if (e.isFile() && e.name.endsWith('.ts')) out.push(rel);
  }
  return out;
}

interface Edge {
  from: string;
  to: string;
  dynamic: boolean;
}

/** Relative imports of every .ts file under agent/, core/ and tools/, as repository-relative paths. */
function edges(): Edge[] {
  const out: Edge[] = [];
  for (const file of ['agent', 'core', 'tools'].flatMap(tsFiles)) {
    for (const { spec, dynamic } of importsOf(readFileSync(path.join(REPO, file), 'utf8'))) {
      if (!spec.startsWith('.')) continue; // node: built-ins and packages
      const to = path.posix.normalize(path.posix.join(path.posix.dirname(file), spec));
      out.push({ from: file, to, dynamic });
    }
  }
  return out;
}

const under = (p: string, dir: string) => p.startsWith(`${dir}/`);
const show = (es: Edge[]) => es.map((e) => `${e.from} -> ${e.to}${e.dynamic ? ' (dynamic)' : ''}`).join('\n  ');

test('the import reader finds static, type-only, multi-line, re-export, bare and dynamic imports', () => {
  const src = [
    "import { a } from './a.ts';",
    "import type { B } from '../b.ts';",
    'import {\n  c,\n  d,\n} from "./c.ts";',
    "export { e } from './e.ts';",
    "export * from './f.ts';",
    "import './g.ts';",
    "import x, { y } from 'node:fs';",
    "  const { h } = await import('../h.ts');",
    "// a comment that names import and from without a specifier",
  ].join('\n');
  assert.deepEqual(
    importsOf(src).map((i) => `${i.spec}${i.dynamic ? ' dyn' : ''}`).sort(),
    ['../b.ts', '../h.ts dyn', './a.ts', './c.ts', './e.ts', './f.ts', './g.ts', 'node:fs'].sort(),
  );
});

test('every relative import names a file that exists (the reader parses what the compiler resolves)', () => {
  const missing = edges().filter((e) => !existsSync(path.join(REPO, e.to)));
  assert.equal(missing.length, 0, `unresolved imports:\n  ${show(missing)}`);
});

test('core/ imports nothing outside core/', () => {
  const bad = edges().filter((e) => under(e.from, 'core') && !under(e.to, 'core'));
  assert.equal(bad.length, 0, `core/ must not depend on agent/, tools/ or anything else in the repository:\n  ${show(bad)}`);
});

test('agent/ imports tools/ only in the command front-ends of the tools, and cli.ts only lazily', () => {
  const toTools = edges().filter((e) => under(e.from, 'agent') && under(e.to, 'tools'));
  const bad = toTools.filter((e) => !AGENT_TOOLS_FRONT_ENDS[e.from]?.includes(e.to) || (LAZY_ONLY.has(e.from) && !e.dynamic));
  assert.equal(bad.length, 0, `the agent's runtime must not load the compiler (move what it needs to core/):\n  ${show(bad)}`);
  // The check above is only as good as the list: the front-ends are still there.
  for (const f of Object.keys(AGENT_TOOLS_FRONT_ENDS)) assert.ok(existsSync(path.join(REPO, f)), `${f} listed as a front-end but gone`);
});

test('tools/ imports nothing from agent/', () => {
  const bad = edges().filter((e) => under(e.from, 'tools') && under(e.to, 'agent'));
  assert.equal(bad.length, 0, `tools/ must not depend on the runtime:\n  ${show(bad)}`);
});

/** A cycle in `graph` as [a, b, ..., a], or null. */
function findCycle(graph: Map<string, Set<string>>): string[] | null {
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (n: string): string[] | null => {
    if (state.get(n) === 'done') return null;
    if (state.get(n) === 'open') return [...stack.slice(stack.indexOf(n)), n];
    state.set(n, 'open');
    stack.push(n);
    for (const m of graph.get(n) ?? []) {
      const c = visit(m);
      if (c) return c;
    }
    stack.pop();
    state.set(n, 'done');
    return null;
  };
  for (const n of [...graph.keys()].sort()) {
    const c = visit(n);
    if (c) return c;
  }
  return null;
}

test('the cycle finder finds a cycle and accepts a DAG', () => {
  const g = (es: [string, string][]) => {
    const m = new Map<string, Set<string>>();
    for (const [a, b] of es) m.set(a, (m.get(a) ?? new Set()).add(b));
    return m;
  };
  assert.equal(findCycle(g([['a', 'b'], ['b', 'c'], ['a', 'c']])), null);
  assert.deepEqual(findCycle(g([['a', 'b'], ['b', 'c'], ['c', 'a']])), ['a', 'b', 'c', 'a']);
});

test("agent/'s top-level folders (and files) import one another without a cycle", () => {
  // agent/eval/knn.ts -> 'agent/eval'; agent/run.ts stays 'agent/run.ts'.
  const part = (p: string) => p.split('/').slice(0, 2).join('/');
  const graph = new Map<string, Set<string>>();
  const why = new Map<string, Edge>();
  for (const e of edges()) {
    if (!under(e.from, 'agent') || !under(e.to, 'agent')) continue;
    const [a, b] = [part(e.from), part(e.to)];
    if (a === b) continue;
    graph.set(a, (graph.get(a) ?? new Set()).add(b));
    if (!why.has(`${a} ${b}`)) why.set(`${a} ${b}`, e);
  }
  const cycle = findCycle(graph);
  const links = cycle?.slice(1).map((b, i) => why.get(`${cycle[i]} ${b}`)!) ?? [];
  assert.equal(cycle, null, `import cycle ${cycle?.join(' -> ')}, e.g.:\n  ${show(links)}`);
});
