// "Did you mean": yargs' strict mode says `Unknown arguments: max-second, maxSecond` for a typo; this
// turns it into one line naming what was typed, where, and the nearest flag or command that exists.

/** What users of other training tools type for `ssocl run` and friends (the typo distance would not find them). */
const COMMAND_SYNONYMS: Record<string, string> = {
  train: 'run', learn: 'run', fit: 'run', start: 'run', agent: 'run', watch: 'run',
  infer: 'embed', predict: 'classify', recognize: 'classify', recognise: 'classify',
  dashboard: 'serve', ui: 'serve', web: 'serve',
  download: 'data fetch', fetch: 'data fetch',
  export: 'models', list: 'models', rollback: 'models',
  compile: 'artifacts', build: 'artifacts',
  evaluate: 'eval', knn: 'eval', benchmark: 'bench', compare: 'bench',
};

/** Edit distance with adjacent transpositions (`modle` is one edit from `model`). */
export function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

/** The candidate nearest to `word`: the only one it is a prefix of, else the closest within a few edits (ties: none). */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  const w = word.toLowerCase();
  const prefixed = candidates.filter((c) => c.startsWith(w));
  if (w.length >= 3 && prefixed.length === 1) return prefixed[0];
  const limit = w.length <= 4 ? 1 : w.length <= 8 ? 2 : 3;
  let best: string | undefined;
  let bestD = Infinity;
  let tie = false;
  for (const c of candidates) {
    const d = editDistance(w, c.toLowerCase());
    if (d < bestD) [best, bestD, tie] = [c, d, false];
    else if (d === bestD) tie = true;
  }
  return bestD <= limit && !tie ? best : undefined;
}

const kebab = (s: string) => s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

export interface ParseContext {
  /** The raw arguments (before `--`). */
  args: readonly string[];
  /** The command being parsed ([] at the top level), e.g. ['run'] or ['fleet', 'aggregate']. */
  command: readonly string[];
  /** The options it knows (long names, as declared). */
  options: readonly string[];
  /** The boolean ones (they also take --no-NAME). */
  booleans: readonly string[];
  /** The top-level commands, as `ssocl --help` lists them (first word and, for `data fetch`, the second). */
  commands: readonly string[];
}

/**
 * The one-line message for yargs' `Unknown argument(s): ...`, or undefined when the raw arguments do
 * not show what it was about (yargs' own message is then kept).
 */
export function unknownArgumentMessage(c: ParseContext): string | undefined {
  const where = ['ssocl', ...c.command].join(' ');
  const names = new Set<string>();
  for (const o of c.options) names.add(o);
  for (const b of c.booleans) names.add(`no-${b}`);
  // A word at the top level is a command: named first, its flags would be another command's.
  const words = c.args.filter((a) => !a.startsWith('-'));
  if (c.command.length === 0 && words.length) {
    const w = words[0];
    const near = COMMAND_SYNONYMS[w.toLowerCase()] ?? closest(w, c.commands);
    return `unknown command '${w}'; ${near ? `did you mean ssocl ${near}?` : `the commands: ${c.commands.join(', ')}`}`;
  }
  for (const a of c.args) {
    if (!/^-{1,2}[^-\d]/.test(a)) continue;
    const name = a.replace(/^-+/, '').split('=')[0];
    if (names.has(name) || names.has(kebab(name))) continue;
    const near = closest(kebab(name), [...names]);
    const typed = a.split('=')[0];
    return `unknown option ${typed} for ${where}; ${near ? `did you mean --${near}?` : `${where} --help lists them`}`;
  }
  return undefined;
}
