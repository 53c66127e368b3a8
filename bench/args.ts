// Command-line options of the bench scripts: node's parseArgs, plus a --help that prints the script's
// header comment and its options with their defaults, and a one-line error (exit 2) instead of a stack
// trace for an unknown or malformed option.

import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

export interface BenchOption {
  type: 'string' | 'boolean';
  default?: string | boolean | string[];
  multiple?: boolean;
  /** One line for --help. */
  describe?: string;
  /** Internal (e.g. the per-process child protocol): left out of --help. */
  hidden?: boolean;
}

/** The header comment of a script: its leading `//` lines, without the markers. */
export function headerOf(file: string): string {
  const lines: string[] = [];
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.startsWith('//')) break;
    lines.push(line.replace(/^\/\/ ?/, ''));
  }
  return lines.join('\n').trim();
}

export function helpText(file: string, options: Record<string, BenchOption>): string {
  const rows = Object.entries(options)
    .filter(([, o]) => !o.hidden)
    .map(([name, o]) => {
      const flag = o.type === 'boolean' ? `--${name}` : `--${name} ${o.multiple ? 'VALUE ...' : 'VALUE'}`;
      const dflt = o.default === undefined || (Array.isArray(o.default) && o.default.length === 0) || o.default === false ? '' : ` (default: ${Array.isArray(o.default) ? o.default.join(' ') : o.default})`;
      return `  ${flag.padEnd(28)} ${o.describe ?? ''}${dflt}`.trimEnd();
    });
  return `${headerOf(file)}\n\noptions:\n${rows.join('\n')}\n  ${'--help'.padEnd(28)} this text`;
}

/** parseArgs for a bench script (`import.meta.url` names it): --help prints and exits 0, a bad option
 *  prints one line and exits 2. */
export function benchArgs<const T extends Record<string, BenchOption>>(scriptUrl: string, options: T, argv = process.argv.slice(2)) {
  const file = fileURLToPath(scriptUrl);
  const name = `bench/${path.basename(file, '.ts')}`;
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(helpText(file, options) + '\n');
    process.exit(0);
  }
  // parseArgs validates any key present, even one set to undefined: pass only those given.
  const spec = Object.fromEntries(Object.entries(options).map(([k, o]) => [k, { type: o.type, ...(o.multiple ? { multiple: true } : {}), ...(o.default !== undefined ? { default: o.default } : {}) }]));
  try {
    return parseArgs({ args: argv, options: spec as never, strict: true }).values as { [K in keyof T]: T[K]['type'] extends 'boolean' ? boolean : T[K]['multiple'] extends true ? string[] : T[K] extends { default: string } ? string : string | undefined };
  } catch (e) {
    process.stderr.write(`${name}: ${(e as Error).message.split('\n')[0]} (see --help)\n`);
    process.exit(2);
  }
}
