// The page's bounded history (as agent/serve/metrics.ts keeps the server's): batches appended one by
// one, never spread into arguments (push(...xs) overflows the call stack past ~100,000 points: a long
// run's history on connect), and the older half thinned once over a bound.

/** Appends `xs` to `to` in place. */
export function append(to, xs) {
  for (const x of xs ?? []) to.push(x);
}

/** Over `max` elements, every other element of the older half is dropped (the newest half stays whole), until within it. */
export function thinOlderHalf(xs, max) {
  while (xs.length > max) {
    const half = xs.length >> 1;
    const out = [];
    for (let i = 0; i < half; i += 2) out.push(xs[i]);
    for (let i = half; i < xs.length; i++) out.push(xs[i]);
    xs = out;
  }
  return xs;
}
