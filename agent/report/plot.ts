// Line charts as SVG (and PNG through sharp's SVG renderer), drawn without a browser: accuracy over
// the stream (the paper's Fig. 4) and consecutive-gradient cosine over steps (its Fig. 1).

import sharp from 'sharp';

export interface Series {
  name: string;
  points: [number, number][];
}

export interface ChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  width?: number;
  height?: number;
}

const COLOURS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f'];

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function ticks(lo: number, hi: number, n = 5): number[] {
  const span = hi - lo || 1;
  const step = 10 ** Math.floor(Math.log10(span / n));
  const nice = [1, 2, 5, 10].map((m) => m * step).find((s) => span / s <= n) ?? step * 10;
  const out: number[] = [];
  for (let v = Math.ceil(lo / nice) * nice; v <= hi + 1e-9; v += nice) out.push(Number(v.toPrecision(10)));
  return out;
}

export function lineChart(series: Series[], o: ChartOptions): string {
  const H = o.height ?? 400;
  // The legend sits right of the plot: room for the longest name (~7 px a character at 12 px), added to
  // the width so the plot itself keeps its size.
  const m = { l: 60, r: Math.max(150, 40 + 7 * Math.max(0, ...series.map((s) => s.name.length))), t: 40, b: 50 };
  const W = (o.width ?? 640) + m.r - 150;
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]));
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y0 === y1) [y0, y1] = [y0 - 1, y1 + 1];
  const pad = (y1 - y0) * 0.05;
  y0 -= pad;
  y1 += pad;
  const sx = (x: number) => m.l + ((x - x0) / (x1 - x0 || 1)) * (W - m.l - m.r);
  const sy = (y: number) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2 - m.r / 2}" y="22" text-anchor="middle" font-size="15">${esc(o.title)}</text>`,
    `<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" stroke="black"/>`,
    `<line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${H - m.b}" stroke="black"/>`,
  ];
  for (const t of ticks(x0, x1)) parts.push(`<text x="${sx(t)}" y="${H - m.b + 18}" text-anchor="middle">${t}</text>`);
  for (const t of ticks(y0, y1)) {
    parts.push(`<line x1="${m.l}" y1="${sy(t)}" x2="${W - m.r}" y2="${sy(t)}" stroke="#ddd"/>`);
    parts.push(`<text x="${m.l - 6}" y="${sy(t) + 4}" text-anchor="end">${t}</text>`);
  }
  parts.push(`<text x="${(m.l + W - m.r) / 2}" y="${H - 12}" text-anchor="middle">${esc(o.xLabel)}</text>`);
  parts.push(`<text transform="translate(16 ${(m.t + H - m.b) / 2}) rotate(-90)" text-anchor="middle">${esc(o.yLabel)}</text>`);
  series.forEach((s, i) => {
    const c = COLOURS[i % COLOURS.length];
    parts.push(`<polyline fill="none" stroke="${c}" stroke-width="2" points="${s.points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ')}"/>`);
    for (const [x, y] of s.points) parts.push(`<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="3" fill="${c}"/>`);
    parts.push(`<rect x="${W - m.r + 12}" y="${m.t + i * 20 - 9}" width="14" height="3" fill="${c}"/>`);
    parts.push(`<text x="${W - m.r + 32}" y="${m.t + i * 20}">${esc(s.name)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}

export function svgToPng(svg: string): Promise<Buffer> {
  return sharp(Buffer.from(svg)).png().toBuffer();
}
