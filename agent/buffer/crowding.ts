// Crowding: how redundant an entry is with the k entries nearest it (the mean of its k highest cosines),
// not with its single nearest neighbour alone. Issue #31, static camera: by the nearest neighbour, a
// scene watched for hours, its frames thinned along a slow pan, looks no more redundant than two frames
// of a 10-frame event; by its k nearest, the scene's frames are crowded and a short event's are not.

/** Neighbours the crowding of `diverse-strata-crowd` averages over. */
export const CROWD_K = 4;

/**
 * The mean of the k highest cosines of `row` to `others` (rows L2-normalised, of one width), or of all of
 * them when there are fewer than k; -Infinity with no others.
 */
export function crowding(row: Float32Array, others: readonly Float32Array[], k: number): number {
  const top: number[] = [];
  for (const o of others) {
    let s = 0;
    for (let j = 0; j < row.length; j++) s += row[j] * o[j];
    if (top.length < k) top.push(s);
    else if (s > top[top.length - 1]) top[top.length - 1] = s;
    else continue;
    // Keep `top` sorted high to low: the new value moves up from the end.
    for (let i = top.length - 1; i > 0 && top[i] > top[i - 1]; i--) [top[i], top[i - 1]] = [top[i - 1], top[i]];
  }
  return top.length ? top.reduce((a, b) => a + b, 0) / top.length : -Infinity;
}
