// Reading a file from an untrusted directory: opened without blocking, checked on the open descriptor
// to be a regular file (not a FIFO that would hang the agent, not a device such as /dev/zero) of the
// expected size, then read through that same descriptor.

import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';

export class UnreadableFile extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export function readRegularFile(file: string, expectedSize?: number, maxBytes = 1 << 30): Buffer {
  const fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new UnreadableFile('ENOTREG', 'not a regular file');
    if (st.size > maxBytes) throw new UnreadableFile('EFBIG', `${st.size} bytes, over the ${maxBytes}-byte limit`);
    if (expectedSize !== undefined && st.size !== expectedSize) throw new UnreadableFile('ECHANGED', `size changed since it was queued (${expectedSize} -> ${st.size} bytes)`);
    const buf = Buffer.allocUnsafe(st.size);
    let off = 0;
    while (off < st.size) {
      const n = readSync(fd, buf, off, st.size - off, off);
      if (n === 0) break;
      off += n;
    }
    return off === st.size ? buf : buf.subarray(0, off);
  } finally {
    closeSync(fd);
  }
}
