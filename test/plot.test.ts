// Charts render without a browser: one polyline per series at the right coordinates, and a PNG.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import sharp from 'sharp';
import { lineChart, svgToPng } from '../agent/report/plot.ts';

test('lineChart draws each series and renders to PNG', async () => {
  const svg = lineChart(
    [
      { name: 'ours', points: [[25, 37.5], [50, 38.6], [100, 41.3]] },
      { name: 'floor <random>', points: [[25, 32.2], [100, 32.2]] },
    ],
    { title: 'kNN over the stream', xLabel: '% of stream', yLabel: 'kNN@20 %', width: 640, height: 400 },
  );
  assert.equal((svg.match(/<polyline /g) ?? []).length, 2);
  assert.match(svg, /floor &lt;random&gt;/);
  // x = 25 is the left edge of the plot area (margin 60), x = 100 the right edge (640 - 150).
  assert.match(svg, /points="60\.0,[\d.]+ [\d.]+,[\d.]+ 490\.0,[\d.]+"/);
  const png = await svgToPng(svg);
  const meta = await sharp(png).metadata();
  assert.equal(meta.format, 'png');
  assert.deepEqual([meta.width, meta.height], [640, 400]);
});
