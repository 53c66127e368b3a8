// Reading the small JSON records the agent writes (latest.json, version sidecars), which may be absent,
// half-written by someone else or hand-edited: anything but a JSON object reads as null. Read through
// core/safe-read: a link, a FIFO or a device in their place reads as null too (said through `warn`).

import path from 'node:path';
import { tryReadInside } from './safe-read.ts';

/** Records are a few kB; a larger file in their place is not read. */
const MAX_RECORD_BYTES = 16 << 20;

export function readJsonObject(file: string, warn?: (msg: string) => void): Record<string, unknown> | null {
  const bytes = tryReadInside(path.dirname(file), path.basename(file), warn, { maxBytes: MAX_RECORD_BYTES });
  if (!bytes) return null;
  try {
    const v: unknown = JSON.parse(bytes.toString('utf8'));
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}
