// "Every N steps or every T seconds" for checkpoints and exports.

export interface Every {
  steps?: number;
  ms?: number;
}

/** '500' = every 500 steps; '30s', '5m', '1h' = by time. */
export function parseEvery(flag: string, v: string): Every {
  const m = /^(\d+(?:\.\d+)?)(s|m|h)?$/.exec(v.trim());
  if (!m || Number(m[1]) <= 0) throw new Error(`${flag} ${v}: expected a number of steps (e.g. 500) or a duration (30s, 5m, 1h)`);
  if (!m[2]) return { steps: Math.round(Number(m[1])) };
  return { ms: Number(m[1]) * { s: 1e3, m: 6e4, h: 3.6e6 }[m[2] as 's' | 'm' | 'h'] };
}

/** When something last happened, and whether it is due again. */
export class Due {
  private step: number;
  private time = Date.now();

  constructor(
    private every: Every,
    step: number,
  ) {
    this.step = step;
  }

  due(step: number): boolean {
    return (this.every.steps !== undefined && step - this.step >= this.every.steps) || (this.every.ms !== undefined && Date.now() - this.time >= this.every.ms);
  }

  done(step: number): void {
    this.step = step;
    this.time = Date.now();
  }
}
