// Test archives for `ssocl data fetch`: ustar entries written by hand, and a small CIFAR-10 in the
// official binary layout (3 images per batch file), gzipped.
import { gzipSync } from 'node:zlib';
import { encodeCifar10 } from '../../core/codecs/cifar.ts';

export function tarEntry(name: string, data: Buffer): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 'utf8');
  h.write('0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h.write(data.length.toString(8).padStart(11, '0') + '\0', 124);
  h.write('00000000000\0', 136);
  h.write('        ', 148);
  h[156] = 0x30;
  h.write('ustar\0', 257);
  h.write('00', 263);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
  return Buffer.concat([h, data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
}

export function tinyCifarArchive(): Buffer {
  const names = ['data_batch_1.bin', 'data_batch_2.bin', 'data_batch_3.bin', 'data_batch_4.bin', 'data_batch_5.bin', 'test_batch.bin'];
  const entries = names.map((n, k) => {
    // Pseudo-random pixels so the archive does not compress to almost nothing.
    const imgs = Buffer.from(Array.from({ length: 3 * 3072 }, (_, i) => (i * 2654435761 + k * 97) >>> 24));
    return tarEntry(`cifar-10-batches-bin/${n}`, Buffer.from(encodeCifar10(imgs, Uint8Array.from([k % 10, 1, 2]))));
  });
  entries.push(tarEntry('cifar-10-batches-bin/batches.meta.txt', Buffer.from('airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n')));
  return gzipSync(Buffer.concat([...entries, Buffer.alloc(1024)]));
}
