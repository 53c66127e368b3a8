// Reading the small JSON records the agent writes (latest.json, version sidecars), which may be absent,
// half-written by someone else or hand-edited: anything but a JSON object reads as null.

import { readFileSync } from 'node:fs';

export function readJsonObject(file: string): Record<string, unknown> | null {
  try {
    const v: unknown = JSON.parse(readFileSync(file, 'utf8'));
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}
