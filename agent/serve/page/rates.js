// Throughput from the step records' cumulative counters (step, frames): steps/s and frames/s at each
// point over the last RATE_WINDOW_MS, and none until the points behind it span RATE_MIN_SPAN_MS. Never
// from two rows alone: a run's first rows come milliseconds apart (an arrival's steps are logged
// together), and 3 steps over 1 ms would read as 3,000 steps/s. Counters are cumulative, so thinned
// history gives the same rates. A module of its own so the tests import the very file the page loads.

export const RATE_WINDOW_MS = 30_000;
export const RATE_MIN_SPAN_MS = 5_000;

/**
 * @param {{ t: number, step: number, frames: number | null }[]} steps in time order (t: ms)
 * @returns {{ sps: (number | null)[], fps: (number | null)[] }}
 */
export function rates(steps, windowMs = RATE_WINDOW_MS, minSpanMs = RATE_MIN_SPAN_MS) {
  const sps = [];
  const fps = [];
  let j = 0;
  for (let i = 0; i < steps.length; i++) {
    // The oldest point inside the window; with none but this one (sparse history), the one before.
    while (j < i && steps[i].t - steps[j].t > windowMs) j++;
    const k = j < i ? j : i - 1;
    const dt = k >= 0 ? steps[i].t - steps[k].t : 0;
    const ok = dt >= minSpanMs;
    sps.push(ok ? ((steps[i].step - steps[k].step) * 1000) / dt : null);
    fps.push(ok && steps[i].frames !== null && steps[k].frames !== null ? ((steps[i].frames - steps[k].frames) * 1000) / dt : null);
  }
  return { sps, fps };
}
