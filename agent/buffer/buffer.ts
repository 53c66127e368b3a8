// The replay buffer: entries hold the image (uint8 at training resolution), a representative
// feature z* (EMA of the normalised mean crop embedding), a seen flag and a lifespan. Policies decide
// what to drop when it is over capacity: `diverse` / `minred` (the redundancy rule over seen entries,
// oldest first while too few are seen), `reservoir`, `fifo`, `psa` (SCALE: PSA over the backbone
// features of every entry, old and new alike, under the current model). `minred` differs from `diverse`
// only in when the learner applies it: MinRed's official code (senthilps8/continuous_ssl_problem,
// datasets/mysampler.py) cuts the buffer back to capacity as soon as an arrival is added, so the K
// steps draw from the M survivors; ours trains on all M + b, then cuts (see `shrinksOnAdd`).

import { Rng } from '../../core/rng.ts';
import { NearestNeighbours } from './removal.ts';
import type { SimilarityEngine } from './similarity.ts';
import { psaSelect } from './psa.ts';
import { crowding, CROWD_K } from './crowding.ts';

// Issue #15's variants of the redundancy rule (the paper's `diverse` is unchanged):
// `diverse-fresh` ranks redundancy on the backbone features of every entry under the current model
// (as psa reads them), recomputed at each shrink, instead of the stored z*; `diverse-strata` keeps the
// buffer spread over the stream's past like a reservoir: the stream seen so far is cut into spans of
// arrival positions on a fixed grid (`strata` to 2 x `strata` equal spans, spanGrid), each removal is
// taken from the densest span (entries per position), and within it the redundancy rule picks (the
// entry whose nearest neighbour in the buffer is most similar);
// `diverse-reservoir` admits each new entry as the reservoir does (kept with probability M / t, t its
// stream position) and takes the evictions the admitted ones need by the redundancy rule instead of
// uniformly: the reservoir's spread over the stream, without its near-duplicates; `diverse-strata-fresh`
// is diverse-strata with the nearest neighbours of diverse-fresh (backbone features recomputed at each shrink);
// `strata-random` is the control with no redundancy at all: the spans of diverse-strata, a uniform draw within;
// `diverse-reservoir-fresh` is diverse-reservoir with the nearest neighbours of diverse-fresh.
// Issue #31's fix: `diverse-strata-refresh` is diverse-strata ranked on
// the buffer's embeddings recomputed under the current encoder in one batched embed before each removal
// round (z*'s space, every entry under one encoder). Measured (bench/RESULTS.md, issue #31): by the stored z*
// and by the current encoder alike, entries of every age are about as redundant as each other, so the
// paper's rule removes nearly at random and each class decays as in random replacement; the spans give
// each part of the stream's past its share, and within it the most redundant entry goes.
// `diverse-refresh` is its measured alternative without the spans: the paper's rule over every entry's
// embedding recomputed before each removal round (as diverse-fresh on the backbone features);
// `diverse-span-refresh` its cheaper form: only the spans that give up entries are embedded, each entry
// ranked within its own span.
// `diverse-strata-rolling`, ours' default (OURS_POLICY, with OURS_STRATA spans), is diverse-strata-refresh at a fraction of the cost: each entry keeps its
// embedding (`fresh`, saved in checkpoints) and is embedded again only when its lifespan is a multiple of
// `refreshEvery` (n): on entry (lifespan 0) and every n arrivals after, so about 1/n of the buffer plus
// the arrival is embedded per removal round and no entry's row is more than n - 1 arrivals old.
// `diverse-strata-crowd` is diverse-strata-rolling ranking, within the crowded span, by crowding (the mean
// cosine to an entry's CROWD_K nearest rows, agent/buffer/crowding.ts) in place of the nearest neighbour
// alone: a try for the static camera (bench --idle), not ours' default.
// `oracle-clip` is a benchmark's yardstick, not a rule for real streams: it knows which frames are one
// clip from their keys ('source.frame', as bench --clips and --video name them) and drops from the clip
// with the most frames in the buffer, so the buffer holds as many distinct scenes as it can: what a
// perfect redundancy detector would keep, the ceiling for any rule on features.
export type BufferPolicy = 'diverse' | 'minred' | 'reservoir' | 'fifo' | 'psa' | 'diverse-fresh' | 'diverse-strata' | 'diverse-reservoir' | 'diverse-strata-fresh' | 'strata-random' | 'diverse-reservoir-fresh' | 'diverse-strata-refresh' | 'diverse-refresh' | 'diverse-span-refresh' | 'diverse-strata-rolling' | 'diverse-strata-crowd' | 'oracle-clip';
export const BUFFER_POLICIES: BufferPolicy[] = ['diverse', 'minred', 'reservoir', 'fifo', 'psa', 'diverse-fresh', 'diverse-strata', 'diverse-reservoir', 'diverse-strata-fresh', 'strata-random', 'diverse-reservoir-fresh', 'diverse-strata-refresh', 'diverse-refresh', 'diverse-span-refresh', 'diverse-strata-rolling', 'diverse-strata-crowd', 'oracle-clip'];
/** Ours' buffer policy (agent/methods.ts, the learner's default). */
export const OURS_POLICY: BufferPolicy = 'diverse-strata-rolling';
/** The policies that balance the buffer over spans of the stream (spanGrid). */
export const SPAN_POLICIES: readonly BufferPolicy[] = ['diverse-strata', 'diverse-strata-fresh', 'strata-random', 'diverse-strata-refresh', 'diverse-span-refresh', 'diverse-strata-rolling', 'diverse-strata-crowd'];
/** The source of a key: what comes before the first '.' ('123.4' -> '123'; '123' -> '123'): a clip's frames are 'source.frame'. */
export const sourceOf = (key: string) => key.split('.')[0];
/** Spans of the stream `diverse-strata` balances when the config names none. */
export const DEFAULT_STRATA = 8;
/**
 * Ours' spans (issue #31): with 8, classes straddling two spans kept under half a fair share in 2 of 3
 * Seq trials (the rule within a span prefers one class's entries to the other's); 16 spans are purer.
 */
export const OURS_STRATA = 16;
/** diverse-strata-rolling: arrivals between two embeddings of one entry when the config names none (bench/RESULTS.md, issue #31: the cost). */
export const DEFAULT_REFRESH_EVERY = 4;
/**
 * The learner's cadence, counted in updates (the encoder changes once per update, so that is how stale a
 * row gets): about every REFRESH_UPDATES updates, and never more often than every DEFAULT_REFRESH_EVERY
 * arrivals (the cost measured for issue #31). So K = 2 (bench's edge protocols) and K = 3 (the edge
 * preset) keep 4 arrivals, as measured; at K = 1 with 32 new images per arrival (the edge goal's stream)
 * 4 arrivals embedded 96 images per arrival, 14 % of its wall time (bench/RESULTS.md, issue #33), and
 * every 8 arrivals embeds 64.
 */
export const REFRESH_UPDATES = 8;
/** Arrivals between two embeddings of one entry at K updates per arrival. */
export const refreshEveryFor = (updatesPerArrival: number): number => Math.max(DEFAULT_REFRESH_EVERY, Math.round(REFRESH_UPDATES / Math.max(1, updatesPerArrival)));

/**
 * Backbone features [entries, F] of the given entries under the current model (the psa policy's points),
 * or with 'embedding' their embeddings [entries, D] (z*'s space).
 */
export type FeatureFn = (entries: Entry[], space?: 'features' | 'embedding') => Promise<Float32Array>;

export interface Entry {
  id: number;
  /** Where it came from (file path or stream index), for logs. */
  key: string;
  image: Uint8Array;
  feature: Float32Array | null;
  seen: boolean;
  /** Arrivals since insertion. */
  lifespan: number;
  /** 1-based position in the stream (reservoir sampling). */
  streamIndex: number;
  /**
   * diverse-strata-rolling: the entry's normalised embedding under the encoder of the removal round that
   * last embedded it (absent until then; under `novel` replay its first row is the one its arrival's
   * novelty check made, before the arrival's steps). Replaced, never changed in place: snapshots share it.
   */
  fresh?: Float32Array | null;
}

export interface BufferSnapshot {
  nextId: number;
  streamCount: number;
  entries: Entry[];
}

export interface BufferConfig {
  capacity: number;
  policy: BufferPolicy;
  /** EMA weight of the old representative feature. */
  alpha: number;
  /** diverse-strata: spans of the stream (default DEFAULT_STRATA). */
  strata?: number;
  /** diverse-strata-rolling: an entry is embedded again when its lifespan is a multiple of this (default DEFAULT_REFRESH_EVERY). */
  refreshEvery?: number;
}

/** 1 / |v| of v[off, off + d) (float64 sum of squares, as the EMA has always rounded it). */
function invNorm(v: Float32Array, off: number, d: number): number {
  let s = 0;
  for (let k = 0; k < d; k++) s += v[off + k] * v[off + k];
  return 1 / Math.sqrt(s + 1e-12);
}

/** Row j (of width d) of `f`, copied and scaled to unit length: the rows the fresh and rolling policies rank by. */
export function unitRow(f: Float32Array, j: number, d: number): Float32Array {
  const v = f.slice(j * d, (j + 1) * d);
  const inv = invNorm(v, 0, d);
  for (let k = 0; k < d; k++) v[k] *= inv;
  return v;
}
/** `count` distinct items of `pool` drawn uniformly (a partial Fisher-Yates shuffle of `pool`, in place). */
export function drawDistinct<T>(rng: Rng, pool: T[], count: number): T[] {
  for (let i = 0; i < count; i++) {
    const k = i + rng.int(pool.length - i);
    [pool[i], pool[k]] = [pool[k], pool[i]];
  }
  return pool.slice(0, count);
}

export class ReplayBuffer {
  entries: Entry[] = [];
  private nextId = 1;
  private streamCount = 0;
  private nn: NearestNeighbours;
  /** Entries whose features changed since the index was last refreshed. */
  private dirty = new Map<number, Entry>();
  /** Ids currently in the buffer. */
  private live = new Set<number>();
  /** The last refresh of the fresh policies: the entries embedded, in order, and the rows the encoder gave (before normalising). */
  lastRefresh: { entries: Entry[]; rows: Float32Array } | null = null;
  /** Features allocated since the last snapshot: no snapshot shares them, so they may change in place. */
  private owned = new WeakSet<Float32Array>();

  constructor(
    readonly cfg: BufferConfig,
    private engine: SimilarityEngine | null = null,
  ) {
    this.nn = new NearestNeighbours(engine);
    if (!BUFFER_POLICIES.includes(cfg.policy)) throw new Error(`--buffer ${cfg.policy}: unknown policy (accepted: ${BUFFER_POLICIES.join(', ')})`);
    if (cfg.refreshEvery !== undefined && !(Number.isInteger(cfg.refreshEvery) && cfg.refreshEvery >= 1)) throw new Error(`refresh every ${cfg.refreshEvery} arrivals: must be a positive integer`);
    if (cfg.strata !== undefined && !(Number.isInteger(cfg.strata) && cfg.strata >= 1)) throw new Error(`strata ${cfg.strata}: must be a positive integer`);
    if (!(cfg.capacity > 0)) throw new Error(`--buffer-size ${cfg.capacity}: must be a positive integer`);
  }

  get size(): number {
    return this.entries.length;
  }

  get usesFeatures(): boolean {
    return ['diverse', 'minred', 'diverse-strata', 'diverse-reservoir', 'diverse-strata-fresh', 'diverse-reservoir-fresh', 'diverse-strata-refresh', 'diverse-refresh', 'diverse-span-refresh', 'diverse-strata-rolling', 'diverse-strata-crowd'].includes(this.cfg.policy);
  }

  /** The rolling policies keep each entry's row (its normalised embedding) from one removal round to the next. */
  get keepsRows(): boolean {
    return this.cfg.policy === 'diverse-strata-rolling' || this.cfg.policy === 'diverse-strata-crowd';
  }

  /** Shrink right after an arrival is added, before its training steps (MinRed), not after them. */
  get shrinksOnAdd(): boolean {
    return this.cfg.policy === 'minred';
  }

  /** Appends an arrival; every entry already in the buffer ages by one. */
  add(items: { key: string; image: Uint8Array }[]): Entry[] {
    for (const e of this.entries) e.lifespan++;
    const added = items.map((it) => ({ id: this.nextId++, key: it.key, image: it.image, feature: null, seen: false, lifespan: 0, streamIndex: ++this.streamCount }));
    this.entries.push(...added);
    for (const e of added) this.live.add(e.id);
    return added;
  }

  /**
   * After a training step: z* = f the first time, then normalise(alpha z* + (1 - alpha) f). The
   * nearest-neighbour index is refreshed once, at the next shrink (or flush), for every entry changed
   * since: nothing reads it between the K steps of an arrival, and one refresh of the union costs up
   * to K times less than one per step (the index ends the same either way).
   */
  async updateFeatures(batch: Entry[], zbar: Float32Array): Promise<void> {
    const d = zbar.length / batch.length;
    const a = this.cfg.alpha;
    const b = 1 - a;
    // The same float32 roundings as normalise(alpha z* + (1 - alpha) normalise(f)) built from map()
    // temporaries, in three passes instead of five. A feature first written since the last snapshot
    // is updated in place (the paper's K = 10 steps would otherwise allocate 2,000 vectors per arrival);
    // one a snapshot holds is replaced, never changed.
    for (let j = 0; j < batch.length; j++) {
      const e = batch[j];
      const off = j * d;
      const inv = invNorm(zbar, off, d);
      const z = e.feature;
      const own = z !== null && this.owned.has(z);
      const g = own ? z : new Float32Array(d);
      if (!z) {
        for (let k = 0; k < d; k++) g[k] = zbar[off + k] * inv;
      } else {
        let ss = 0;
        for (let k = 0; k < d; k++) {
          const v = Math.fround(a * z[k] + b * Math.fround(zbar[off + k] * inv));
          g[k] = v;
          ss += v * v;
        }
        const inv2 = 1 / Math.sqrt(ss + 1e-12);
        for (let k = 0; k < d; k++) g[k] *= inv2;
      }
      if (!own) this.owned.add(g);
      e.feature = g;
      e.seen = true;
      if (this.usesFeatures && this.live.has(e.id)) this.dirty.set(e.id, e);
    }
  }

  /** Brings the nearest-neighbour index up to date with the features changed since the last flush. */
  async flush(): Promise<void> {
    if (!this.dirty.size) return;
    const changed = [...this.dirty.values()].map((e) => ({ id: e.id, feature: e.feature!, rank: e.streamIndex }));
    this.dirty.clear();
    await this.nn.setMany(changed);
  }

  /** Uniform draw without replacement of `count` entries, excluding `exclude`. */
  sample(rng: Rng, count: number, exclude: Set<number> = new Set()): Entry[] {
    const pool = this.entries.filter((e) => !exclude.has(e.id));
    if (pool.length < count) throw new Error(`buffer: ${count} samples asked of ${pool.length}`);
    return drawDistinct(rng, pool, count);
  }

  /** Takes entries out of the buffer whose ids a removal already took out of its index. */
  private forget(ids: readonly number[]): void {
    const gone = new Set(ids);
    this.entries = this.entries.filter((e) => !gone.has(e.id));
    for (const id of ids) this.live.delete(id);
  }

  private async remove(ids: Set<number>): Promise<Entry[]> {
    const gone = this.entries.filter((e) => ids.has(e.id));
    this.entries = this.entries.filter((e) => !ids.has(e.id));
    for (const e of gone) {
      this.dirty.delete(e.id);
      await this.nn.delete(e.id);
      this.live.delete(e.id);
    }
    return gone;
  }

  /** Shrinks to capacity by the policy; returns what was removed. `features` is read by psa only. */
  async shrink(rng: Rng, features?: FeatureFn): Promise<Entry[]> {
    const n = this.size - this.cfg.capacity;
    if (this.cfg.policy === 'psa') return n > 0 ? this.shrinkPsa(features) : [];
    if (this.cfg.policy === 'diverse-fresh' && n > 0 && this.entries.filter((e) => e.seen).length >= 2 * n) return this.shrinkFresh(n, features);
    let seen = this.nn.size;
    for (const id of this.dirty.keys()) if (!this.nn.has(id)) seen++;
    // The rule needs twice as many seen entries as it removes; until then its policies drop oldest first (below).
    const ruleReady = n > 0 && seen >= 2 * n;
    if (this.cfg.policy === 'diverse-strata' && ruleReady) return this.shrinkStrata(n);
    if (this.cfg.policy === 'diverse-strata-fresh' && ruleReady) return this.shrinkStrata(n, await this.freshIndex(features));
    if (this.cfg.policy === 'diverse-span-refresh' && ruleReady) return this.shrinkSpanLocal(n, features);
    if (this.cfg.policy === 'diverse-refresh' && ruleReady) return this.shrinkFresh(n, features, 'embedding');
    if (this.cfg.policy === 'diverse-strata-refresh' && ruleReady) return this.shrinkStrata(n, await this.freshIndex(features, 'embedding'));
    if (this.cfg.policy === 'diverse-strata-rolling' && ruleReady) return this.shrinkStrata(n, await this.rollingIndex(features));
    if (this.cfg.policy === 'diverse-strata-crowd' && ruleReady) return this.shrinkStrata(n, await this.rollingIndex(features), undefined, CROWD_K);
    if (this.cfg.policy === 'strata-random' && n > 0) return this.shrinkStrata(n, undefined, rng);
    if (this.cfg.policy === 'diverse-reservoir' && ruleReady) return this.shrinkReservoirAdmit(n, rng);
    if (this.cfg.policy === 'diverse-reservoir-fresh' && ruleReady) return this.shrinkReservoirAdmit(n, rng, features ?? null);
    if (this.usesFeatures && ruleReady) {
      // The index refresh and the removals together: the index picks the cheaper way (removal.ts).
      const changed = [...this.dirty.values()].map((e) => ({ id: e.id, feature: e.feature!, rank: e.streamIndex }));
      this.dirty.clear();
      const ids = await this.nn.removeRedundant(n, changed);
      const byId = new Map(this.entries.map((e) => [e.id, e]));
      this.forget(ids);
      return ids.map((id) => byId.get(id)!);
    }
    await this.flush();
    if (n <= 0) return [];
    const drop = new Set<number>();
    if (this.cfg.policy === 'fifo' || this.cfg.policy === 'diverse-fresh' || (this.usesFeatures && this.nn.size < 2 * n)) {
      // Oldest first (largest lifespan; earlier arrival on ties).
      const order = [...this.entries].sort((a, b) => b.lifespan - a.lifespan || a.streamIndex - b.streamIndex);
      for (const e of order.slice(0, n)) drop.add(e.id);
      return this.remove(drop);
    }
    if (this.cfg.policy === 'oracle-clip') {
      // One at a time from the clip with the most frames here (a uniform draw among the most crowded
      // clips, then among its frames): every clip keeps a frame while any other holds two.
      const clips = new Map<string, Entry[]>();
      for (const e of this.entries) {
        const c = sourceOf(e.key);
        const l = clips.get(c);
        if (l) l.push(e);
        else clips.set(c, [e]);
      }
      for (let k = 0; k < n; k++) {
        let most = 0;
        for (const l of clips.values()) most = Math.max(most, l.length);
        const crowded = [...clips.values()].filter((l) => l.length === most);
        const l = crowded[rng.int(crowded.length)];
        drop.add(l.splice(rng.int(l.length), 1)[0].id);
      }
      return this.remove(drop);
    }
    if (this.cfg.policy === 'reservoir') {
      // Each new entry beyond capacity is kept with probability M / t (t its stream position), evicting
      // a uniformly drawn older entry; otherwise it is the one dropped.
      const fresh = this.entries.filter((e) => e.lifespan === 0).sort((a, b) => a.streamIndex - b.streamIndex);
      let excess = n;
      for (const e of fresh) {
        if (excess === 0) break;
        if (rng.int(e.streamIndex) < this.cfg.capacity) {
          const old = this.entries.filter((o) => o.lifespan > 0 && !drop.has(o.id));
          drop.add(old.length ? old[rng.int(old.length)].id : e.id);
        } else drop.add(e.id);
        excess--;
      }
      // More excess than new entries (the capacity was lowered on resume): drop uniformly from the rest.
      while (excess > 0) {
        const rest = this.entries.filter((o) => !drop.has(o.id));
        drop.add(rest[rng.int(rest.length)].id);
        excess--;
      }
      return this.remove(drop);
    }
    throw new Error('unreachable: the redundancy rule is taken above');
  }

  /**
   * diverse-fresh: the redundancy rule over the normalised backbone features of every entry under the
   * current model, computed now (the stored z* are kept for the EMA and diagnostics, not ranked).
   */
  private async shrinkFresh(n: number, features: FeatureFn | undefined, space: 'features' | 'embedding' = 'features'): Promise<Entry[]> {
    const ids = await (await this.freshIndex(features, space)).removeRedundant(n);
    // In removal order, as the diverse rule reports them.
    const gone = await this.remove(new Set(ids));
    return ids.map((id) => gone.find((e) => e.id === id)!);
  }

  /** A nearest-neighbour index over the normalised backbone features (or embeddings) of every entry under the current model. */
  private async freshIndex(features: FeatureFn | undefined, space: 'features' | 'embedding' = 'features', entries: Entry[] = this.entries): Promise<NearestNeighbours> {
    if (!features) throw new Error(`buffer ${this.cfg.policy}: shrinking needs the entries' ${space === 'features' ? 'backbone features' : 'embeddings'}`);
    const f = await features(entries, space);
    this.lastRefresh = { entries: [...entries], rows: f };
    const d = f.length / entries.length;
    const nn = new NearestNeighbours(this.engine);
    await nn.setMany(
      entries.map((e, j) => ({ id: e.id, feature: unitRow(f, j, d), rank: e.streamIndex })),
    );
    return nn;
  }

  /**
   * diverse-strata-rolling: embeds the entries due (no row yet, or a lifespan that is a multiple of
   * refreshEvery) in one batch, keeps each one's normalised row, and indexes every entry's row.
   */
  private async rollingIndex(features: FeatureFn | undefined): Promise<NearestNeighbours> {
    if (!features) throw new Error(`buffer ${this.cfg.policy}: shrinking needs the entries' embeddings`);
    const every = this.cfg.refreshEvery ?? DEFAULT_REFRESH_EVERY;
    // An entry of this arrival with a row already has it from the novel replay's check (learner.ts).
    const due = this.entries.filter((e) => !e.fresh || (e.lifespan > 0 && e.lifespan % every === 0));
    if (due.length) {
      const f = await features(due, 'embedding');
      this.lastRefresh = { entries: due, rows: f };
      const d = f.length / due.length;
      due.forEach((e, j) => (e.fresh = unitRow(f, j, d)));
    }
    const nn = new NearestNeighbours(this.engine);
    await nn.setMany(this.entries.map((e) => ({ id: e.id, feature: e.fresh!, rank: e.streamIndex })));
    return nn;
  }

  /** The spans of the stream so far: a fixed grid (spanGrid). */
  private spanOf(): SpanGrid {
    return spanGrid(this.streamCount, this.cfg.strata ?? DEFAULT_STRATA);
  }

  /**
   * diverse-strata: n times, the span of stream positions (the stream so far in `strata` equal parts)
   * holding the most entries (the newer span on ties) gives up its entry with the most similar nearest
   * neighbour in the whole buffer (the lower stream position on ties): by the buffer's own index (stored
   * z*), or by `index` (diverse-strata-fresh), or a uniform draw from `random` instead (strata-random);
   * with `crowd` = k, by the mean cosine of its kept row to the k nearest rows left (diverse-strata-crowd).
   */
  private async shrinkStrata(n: number, index?: NearestNeighbours, random?: Rng, crowd?: number): Promise<Entry[]> {
    await this.flush();
    const nn = index ?? this.nn;
    const span = this.spanOf();
    const left = [...this.entries];
    const out: Entry[] = [];
    for (let r = 0; r < n; r++) {
      const s = crowdedSpan(left, span);
      let pick = -1;
      let best = -Infinity;
      if (random) {
        // strata-random: a uniform draw within the span (in buffer order).
        const inSpan = left.flatMap((e, i) => (span.of(e) === s ? [i] : []));
        pick = inSpan[random.int(inSpan.length)];
      } else left.forEach((e, i) => {
        if (span.of(e) !== s) return;
        const v = crowd ? crowding(e.fresh!, left.flatMap((o) => (o === e ? [] : [o.fresh!])), crowd) : nn.similarity(e.id);
        if (pick < 0 || v > best || (v === best && e.streamIndex < left[pick].streamIndex)) {
          best = v;
          pick = i;
        }
      });
      const [e] = left.splice(pick, 1);
      out.push(e);
      await nn.delete(e.id);
      if (index) await this.nn.delete(e.id);
    }
    this.forget(out.map((e) => e.id));
    return out;
  }

  /**
   * diverse-span-refresh: the spans of diverse-strata, but a span's entries are embedded under the
   * current model only when it first gives up an entry in a round, and each is ranked by its nearest
   * neighbour within its own span: the pass costs the crowded spans' entries, not the whole buffer's.
   */
  private async shrinkSpanLocal(n: number, features: FeatureFn | undefined): Promise<Entry[]> {
    await this.flush();
    const span = this.spanOf();
    const left = [...this.entries];
    const local = new Map<number, NearestNeighbours>();
    const out: Entry[] = [];
    for (let r = 0; r < n; r++) {
      const s = crowdedSpan(left, span);
      let nn = local.get(s);
      if (!nn) local.set(s, (nn = await this.freshIndex(features, 'embedding', left.filter((e) => span.of(e) === s))));
      // A span of one entry has no neighbour in it: that entry goes.
      const id = nn.size > 1 ? nn.mostRedundant() : left.find((e) => span.of(e) === s)!.id;
      const [e] = left.splice(left.findIndex((x) => x.id === id), 1);
      out.push(e);
      if (nn.has(id)) await nn.delete(id);
      await this.nn.delete(id);
    }
    this.forget(out.map((e) => e.id));
    return out;
  }

  /**
   * diverse-reservoir: the new entries (in stream order) each kept with probability M / t, the others
   * dropped; then as many as are still over capacity go by the redundancy rule over all entries left
   * (on their stored z*, or with `features` on the current backbone features: diverse-reservoir-fresh).
   */
  private async shrinkReservoirAdmit(n: number, rng: Rng, features?: FeatureFn | null): Promise<Entry[]> {
    await this.flush();
    const fresh = this.entries.filter((e) => e.lifespan === 0).sort((a, b) => a.streamIndex - b.streamIndex);
    const rejected = new Set<number>();
    for (const e of fresh) {
      if (rejected.size === n) break;
      if (rng.int(e.streamIndex) >= this.cfg.capacity) rejected.add(e.id);
    }
    const out = fresh.filter((e) => rejected.has(e.id));
    await this.remove(rejected);
    const byId = new Map(this.entries.map((e) => [e.id, e]));
    let ids: number[];
    if (features === undefined) ids = await this.nn.removeRedundant(n - out.length);
    else {
      ids = n > out.length ? await (await this.freshIndex(features ?? undefined)).removeRedundant(n - out.length) : [];
      for (const id of ids) await this.nn.delete(id);
    }
    this.forget(ids);
    return [...out, ...ids.map((id) => byId.get(id)!)];
  }

  /** SCALE's memory update: PSA keeps `capacity` of all entries by their backbone features. */
  private async shrinkPsa(features: FeatureFn | undefined): Promise<Entry[]> {
    if (!features) throw new Error('buffer psa: shrinking needs the entries\' backbone features');
    const f = await features(this.entries);
    const keep = new Set(psaSelect(f, f.length / this.size, this.cfg.capacity).map((i) => this.entries[i].id));
    return this.remove(new Set(this.entries.filter((e) => !keep.has(e.id)).map((e) => e.id)));
  }

  /** Similarity entries the index has computed since it was built or restored (removal.ts's `dots`): a cost measure. */
  get similarityWork(): number {
    return this.nn.dots;
  }

  /** Over the index as of the last shrink or flush. */
  meanNearestSimilarity(): number {
    return this.nn.meanSimilarity();
  }

  /** Snapshot for checkpoints: entries copied (images and features are shared, never mutated in place). */
  snapshot(): BufferSnapshot {
    this.owned = new WeakSet();
    return { nextId: this.nextId, streamCount: this.streamCount, entries: this.entries.map((e) => ({ ...e })) };
  }

  async restore(s: BufferSnapshot): Promise<void> {
    this.nextId = s.nextId;
    this.streamCount = s.streamCount;
    this.entries = s.entries.map((e) => ({ ...e }));
    this.owned = new WeakSet();
    this.live = new Set(s.entries.map((e) => e.id));
    this.dirty.clear();
    this.nn = new NearestNeighbours(this.engine);
    if (this.usesFeatures) await this.nn.setMany(this.entries.filter((e) => e.seen && e.feature).map((e) => ({ id: e.id, feature: e.feature!, rank: e.streamIndex })));
  }
}

/**
 * The spans of a stream of T positions for `strata` S: equal spans of W positions, W the smallest power
 * of two giving at most 2S spans (so S < spans <= 2S once T > 2S), the last one partly filled. W only
 * doubles as the stream grows, so an entry's span never moves: two neighbouring spans merge into one.
 * (Spans cut as S equal parts of the stream so far drift: each boundary moves with every arrival, and
 * the newest span, thinned at every arrival, hands its sparse older part to the next, so the middle of a
 * long stream starved: 40,000 positions, M = 256 left 126 entries in the first tenth, 117 in the last and
 * 13 in between; bench/RESULTS.md, issue #31.)
 */
export interface SpanGrid {
  of: (e: { streamIndex: number }) => number;
  /** Spans, and the positions each covers so far (the last may cover fewer than the width). */
  count: number;
  covered: (span: number) => number;
}
export function spanGrid(T: number, strata: number): SpanGrid {
  let W = 1;
  while (Math.ceil(T / W) > 2 * strata) W *= 2;
  return { of: (e) => Math.floor((e.streamIndex - 1) / W), count: Math.max(1, Math.ceil(T / W)), covered: (b) => Math.max(1, Math.min(W, T - b * W)) };
}

/**
 * The densest span (entries per position covered). Ties go to the span whose pair of spans (the span it
 * would merge into at twice the width) is denser, then its pair's pair, and so on (the newer at the
 * end): with spans holding 0 or 1 entries (more spans than the buffer fills) a plain tie-break would
 * always take the newest span and empty whole stretches of the stream.
 */
function crowdedSpan(entries: readonly Entry[], grid: SpanGrid): number {
  const B = grid.count;
  const levels: { count: number[]; covered: number[] }[] = [];
  const leaf = new Array(B).fill(0);
  for (const e of entries) leaf[grid.of(e)]++;
  levels.push({ count: leaf, covered: Array.from({ length: B }, (_, b) => grid.covered(b)) });
  while (levels[levels.length - 1].count.length > 1) {
    const below = levels[levels.length - 1];
    const n = Math.ceil(below.count.length / 2);
    const count = new Array(n).fill(0);
    const covered = new Array(n).fill(0);
    below.count.forEach((c, i) => {
      count[i >> 1] += c;
      covered[i >> 1] += below.covered[i];
    });
    levels.push({ count, covered });
  }
  // Is span i denser than span s, level by level? (count / covered, compared in integers)
  const denser = (i: number, s: number): boolean => {
    for (let L = 0; L < levels.length; L++) {
      const a = i >> L;
      const b = s >> L;
      if (a === b) return false;
      const { count, covered } = levels[L];
      const d = count[a] * covered[b] - count[b] * covered[a];
      if (d !== 0) return d > 0;
    }
    return false;
  };
  let s = B - 1;
  for (let i = B - 2; i >= 0; i--) if (denser(i, s)) s = i;
  return s;
}
