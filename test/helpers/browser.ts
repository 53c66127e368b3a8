// A real browser for tests: Debian's chromium (`.ci/run` installs it) driven by puppeteer-core, which
// never downloads one. Headless with --enable-unsafe-webgpu (SwiftShader's WebGPU where it starts; the
// page falls back to WASM otherwise, ../shared/notes/webgpu-on-cpu.md). Where chromium is missing,
// tests fail under CI and skip elsewhere, saying why.

import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';
import type { Browser, Page } from 'puppeteer-core';

/** chromium's executable: SSOCL_CHROMIUM, else the first of the usual names on PATH. */
export function findChromium(): string | null {
  if (process.env.SSOCL_CHROMIUM) return existsSync(process.env.SSOCL_CHROMIUM) ? process.env.SSOCL_CHROMIUM : null;
  for (const name of ['chromium', 'chromium-browser', 'google-chrome']) {
    const r = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
    const p = r.stdout.trim();
    if (r.status === 0 && p) return p;
  }
  return null;
}

/**
 * The browser, or null after failing (CI) or skipping (elsewhere) the test with the reason. `t` is the
 * test whose outcome the absence decides.
 */
export function chromiumOrSkip(t: TestContext): string | null {
  const exe = findChromium();
  if (exe) return exe;
  const why = 'chromium not found (apt-get install chromium, or set SSOCL_CHROMIUM)';
  if (process.env.CI) throw new Error(`${why}: required under CI`);
  process.stdout.write(`# skipped: ${why}\n`);
  t.skip(why);
  return null;
}

export interface Launched {
  browser: Browser;
  /** Messages the pages logged as errors, and uncaught exceptions in them. */
  errors: string[];
  newPage(): Promise<Page>;
  close(): Promise<void>;
}

export async function launchChromium(executablePath: string, extraArgs: string[] = []): Promise<Launched> {
  const puppeteer = (await import('puppeteer-core')).default;
  // A profile of its own, removed afterwards (chromium's default would be under $HOME).
  const profile = mkdtempSync(path.join(tmpdir(), 'ssocl-chromium-'));
  const browser = await puppeteer.launch({
    executablePath,
    headless: true,
    userDataDir: profile,
    args: ['--headless=new', '--no-sandbox', '--enable-unsafe-webgpu', '--no-first-run', '--no-default-browser-check', '--disable-dev-shm-usage', ...extraArgs],
    protocolTimeout: 120_000,
  });
  const errors: string[] = [];
  return {
    browser,
    errors,
    async newPage() {
      const page = await browser.newPage();
      page.on('console', (m) => {
        if (m.type() === 'error') errors.push(m.text());
      });
      page.on('pageerror', (e) => errors.push(String((e as Error).message ?? e)));
      // The console says only "Failed to load resource": name what failed.
      page.on('response', (r) => {
        if (r.status() >= 400) errors.push(`HTTP ${r.status()} ${r.url()}`);
      });
      return page;
    },
    async close() {
      await browser.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
