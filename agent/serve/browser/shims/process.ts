// The `process` global for the page's training bundle (esbuild injects it where the agent's modules
// read process.env, time a run with process.cpuUsage, or write a notice to stderr).

export const process = {
  env: {} as Record<string, string | undefined>,
  pid: 0,
  platform: 'browser',
  arch: '',
  argv: [] as string[],
  // The page has no per-process CPU clock; the trainer's io counters then read 0 CPU ms.
  cpuUsage: (_prev?: unknown) => ({ user: 0, system: 0 }),
  memoryUsage: () => ({ rss: 0, heapUsed: 0, heapTotal: 0, external: 0, arrayBuffers: 0 }),
  stderr: { write: (s: string) => console.warn(s.trimEnd()) },
  stdout: { write: (s: string) => console.log(s.trimEnd()) },
  kill: () => {
    throw new Error('process.kill: not in the browser');
  },
};
