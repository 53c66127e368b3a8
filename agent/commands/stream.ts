// `ssocl stream`: replay a data set's class-incremental stream as image files (a "camera" for the
// dir source), or print its index order.

import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { readCifar10, readCifar100 } from '../../core/codecs/cifar.ts';
import { makeStream, streamSpec, type StreamOrder } from '../../tools/data/streams.ts';

export interface StreamArgs {
  dataset: 'cifar10' | 'cifar100';
  dataDir: string;
  order: StreamOrder;
  trial: number;
  to?: string;
  fps: number;
  format: 'png' | 'jpg';
  printOrder: boolean;
  limit?: number;
}

export function streamOrder(a: Pick<StreamArgs, 'dataset' | 'dataDir' | 'order' | 'trial'>) {
  const d = a.dataset === 'cifar10' ? readCifar10(path.join(a.dataDir, 'cifar-10-batches-bin'), 'train') : readCifar100(path.join(a.dataDir, 'cifar-100-binary'), 'train');
  const labels = a.dataset === 'cifar10' ? d.labels : d.coarse!;
  return { data: d, labels, order: makeStream(streamSpec(a.dataset, a.order, labels, a.trial)) };
}

export async function streamCommand(a: StreamArgs): Promise<void> {
  const { data, labels, order } = streamOrder(a);
  const items = a.limit ? order.slice(0, a.limit) : order;
  if (a.printOrder) {
    process.stdout.write(JSON.stringify({ dataset: a.dataset, order: a.order, trial: a.trial, count: items.length, indices: items }) + '\n');
    return;
  }
  if (!a.to) throw new Error('--to DIR is needed unless --print-order is given');
  mkdirSync(a.to, { recursive: true });
  const delay = a.fps > 0 ? 1000 / a.fps : 0;
  const t0 = Date.now();
  for (const [k, i] of items.entries()) {
    const chw = data.images.subarray(i * 3072, (i + 1) * 3072);
    const hwc = Buffer.alloc(3072);
    for (let p = 0; p < 1024; p++) for (let c = 0; c < 3; c++) hwc[p * 3 + c] = chw[c * 1024 + p];
    const img = sharp(hwc, { raw: { width: 32, height: 32, channels: 3 } });
    const bytes = await (a.format === 'png' ? img.png() : img.jpeg({ quality: 95 })).toBuffer();
    const name = `${String(k).padStart(6, '0')}-c${labels[i]}.${a.format}`;
    const tmp = path.join(a.to, `.${name}.part`);
    writeFileSync(tmp, bytes);
    renameSync(tmp, path.join(a.to, name));
    if (process.stderr.isTTY && k % 100 === 0) process.stderr.write(`\r${k + 1}/${items.length} frames`);
    if (delay) {
      const wait = t0 + (k + 1) * delay - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
  }
  process.stderr.write(`\nwrote ${items.length} frames (${a.dataset} ${a.order}, trial ${a.trial}) to ${a.to}\n`);
}
