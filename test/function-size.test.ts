// No function in agent/ longer than ~150 lines (issue #18: the run loop had grown to one 560-line
// function nobody could change). A small tokenizer finds function bodies: a '{' that follows ')' or
// '=>' (or a return type after ')'; blocks after if/for/while count too, never longer than their
// function), skipping strings, comments and template literals.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { REPO } from './helpers/paths.ts';

const LIMIT = 150;

/** [lines, first line] of every function body in a TypeScript source. */
export function functionBodies(src: string): { lines: number; line: number }[] {
  const out: { lines: number; line: number }[] = [];
  const stack: { line: number; fn: boolean }[] = [];
  const templates: number[] = []; // brace depth at which a template's ${ opened
  let line = 1;
  let depth = 0;
  let last = '';
  let i = 0;
  const template = () => {
    // Inside a template literal: to its end, or into a ${ expression.
    while (i < src.length && src[i] !== '`') {
      if (src[i] === '\\') i++;
      else if (src[i] === '\n') line++;
      else if (src[i] === '$' && src[i + 1] === '{') {
        depth++;
        templates.push(depth);
        stack.push({ line, fn: false });
        i += 2;
        return;
      }
      i++;
    }
    i++;
  };
  while (i < src.length) {
    const c = src[i];
    const n = src[i + 1];
    if (c === '\n') {
      line++;
      i++;
    } else if (c === '/' && n === '/') {
      while (i < src.length && src[i] !== '\n') i++;
    } else if (c === '/' && n === '*') {
      for (i += 2; i < src.length && !(src[i] === '*' && src[i + 1] === '/'); i++) if (src[i] === '\n') line++;
      i += 2;
    } else if (c === '"' || c === "'") {
      for (i++; i < src.length && src[i] !== c; i++) if (src[i] === '\\') i++;
      i++;
      last = 'str';
    } else if (c === '`') {
      i++;
      template();
      last = 'str';
    } else if (c === '{') {
      depth++;
      stack.push({ line, fn: last === ')' || last === '=>' || last === 'type' });
      i++;
      last = '{';
    } else if (c === '}') {
      const open = stack.pop();
      if (templates.length && templates[templates.length - 1] === depth) {
        templates.pop();
        depth--;
        i++;
        template();
        last = 'str';
        continue;
      }
      depth--;
      if (open?.fn) out.push({ lines: line - open.line + 1, line: open.line });
      i++;
      last = '}';
    } else if (c === '=' && n === '>') {
      last = '=>';
      i += 2;
    } else if (/\s/.test(c)) i++;
    else if (c === ')') {
      last = ')';
      i++;
    } else if ((last === ')' || last === 'type') && c === ':') {
      last = 'type';
      i++;
    } else if (last === 'type' && /[\w<>[\]|.,&? ]/.test(c)) i++;
    else {
      last = c;
      i++;
    }
  }
  return out;
}

function tsFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts'))
    .map((f) => path.join(dir, f));
}

test('the scanner measures function bodies', () => {
  const src = ['function a(x: number): Promise<void> {', '  const s = `${x ? `{${x}` : "}"}`;', '  if (x) {', '    return;', '  }', '}', 'const b = () => {', '  // }', '};'].join('\n');
  assert.deepEqual(functionBodies(src), [{ lines: 3, line: 3 }, { lines: 6, line: 1 }, { lines: 3, line: 7 }]);
});

test(`no function in agent/ is longer than ${LIMIT} lines`, () => {
  const long: string[] = [];
  let largest = { lines: 0, where: '' };
  for (const f of tsFiles(path.join(REPO, 'agent'))) {
    for (const b of functionBodies(readFileSync(f, 'utf8'))) {
      const where = `${path.relative(REPO, f)}:${b.line}`;
      if (b.lines > largest.lines) largest = { lines: b.lines, where };
      if (b.lines > LIMIT) long.push(`${where} (${b.lines} lines)`);
    }
  }
  assert.deepEqual(long, [], 'functions over the limit');
  console.log(`largest function body in agent/: ${largest.lines} lines (${largest.where})`);
});
