// Line charts over training steps with uPlot (loaded by index.html as a global from node_modules):
// one small wrapper that rebuilds the chart when its set of series changes (loss terms and kNN figures
// are only known once the first records arrive) and follows its card's width.
/* global uPlot */

const PALETTE = ['#0969da', '#cf222e', '#1a7f37', '#9a6700', '#8250df', '#bf3989', '#1b7c83', '#57606a'];

/**
 * @param {HTMLElement} el
 * @param {{ x?: string, y?: string, y2?: string, height?: number }} o axis labels; y2 puts series with
 *   `right: true` on a second scale drawn on the right
 */
export function lineChart(el, o = {}) {
  let u = null;
  let key = '';
  const width = () => Math.max(280, el.clientWidth || 380);
  const build = (series, data) => {
    u?.destroy();
    const right = series.some((s) => s.right);
    u = new uPlot(
      {
        width: width(),
        height: o.height ?? 220,
        scales: { x: { time: false }, ...(right ? { y2: { auto: true } } : {}) },
        axes: [
          { label: o.x ?? 'step', stroke: 'currentColor', grid: { stroke: 'rgba(128,128,128,.15)' } },
          { label: o.y ?? '', stroke: 'currentColor', grid: { stroke: 'rgba(128,128,128,.15)' }, size: 56 },
          ...(right ? [{ scale: 'y2', side: 1, label: o.y2 ?? '', stroke: 'currentColor', grid: { show: false }, size: 56 }] : []),
        ],
        series: [
          { label: o.x ?? 'step' },
          ...series.map((s, i) => ({
            label: s.label,
            stroke: s.color ?? PALETTE[i % PALETTE.length],
            width: 1.5,
            spanGaps: true,
            points: { show: s.points ?? false },
            ...(s.right ? { scale: 'y2' } : {}),
            value: (_u, v) => (v === null || v === undefined ? '–' : fmt(v)),
          })),
        ],
        legend: { live: true },
        cursor: { drag: { x: true, y: false } },
      },
      data,
      el,
    );
  };
  new ResizeObserver(() => u && u.width !== width() && u.setSize({ width: width(), height: o.height ?? 220 })).observe(el);
  return {
    /**
     * @param {{ label: string, right?: boolean, color?: string, points?: boolean }[]} series
     * @param {(number | null)[][]} data [x, ...one array per series]
     */
    set(series, data) {
      const k = JSON.stringify(series);
      if (k !== key || !u) {
        key = k;
        build(series, data);
      } else u.setData(data);
    },
    get plot() {
      return u;
    },
  };
}

/** A number in a few significant digits. */
export function fmt(v) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return '–';
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
  return String(Number(v.toPrecision(a >= 100 ? 5 : 4)));
}
