/**
 * A rolling window of one model's traffic for the status page: a ring of fixed-width time buckets
 * (by default 60 buckets of 10 s: the last 10 minutes). Each bucket holds counts (requests,
 * errors, retries, fallbacks) and two small fixed-bound histograms (latency, time to first
 * token), so p50 / p95 are computed when the page reads them, never per request.
 *
 * Memory is fixed when the window is created (one Uint32Array); a record is a few array writes
 * plus, when time has moved on, clearing the buckets it skipped (each bucket is cleared once per
 * turn of the ring, so O(1) amortized, and never more than the ring's size).
 */

/** Upper bounds of the histogram bins, in milliseconds; a last bin takes everything above. */
export const HISTOGRAM_BOUNDS_MS: readonly number[] = [
  5, 10, 25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10_000, 15_000, 30_000, 60_000,
]
const BINS = HISTOGRAM_BOUNDS_MS.length + 1

const REQUESTS = 0
const ERRORS = 1
const RETRIES = 2
const FALLBACKS = 3
const COUNTS = 4
const LATENCY = COUNTS
const TTFT = COUNTS + BINS
/** Slots per bucket: the four counts, then the latency bins, then the TTFT bins. */
const SLOTS = COUNTS + 2 * BINS

export type WindowCount = 'requests' | 'errors' | 'retries' | 'fallbacks'
const COUNT_SLOT: Record<WindowCount, number> = { requests: REQUESTS, errors: ERRORS, retries: RETRIES, fallbacks: FALLBACKS }

export interface WindowOptions {
  /** @default 10_000 */
  readonly bucketMs?: number
  /** @default 60 (with 10 s buckets: the last 10 minutes) */
  readonly buckets?: number
}

export interface WindowSnapshot {
  /** Oldest first, one value per bucket; the last is the bucket now filling. */
  readonly series: Readonly<Record<WindowCount, number[]>>
  /** Sums over the last 60 s (the last `60_000 / bucketMs` buckets). */
  readonly lastMinute: Readonly<Record<WindowCount, number>>
  /** Over the whole window; null with no sample. */
  readonly latencyMs: { readonly p50: number | null; readonly p95: number | null; readonly samples: number }
  readonly ttftMs: { readonly p50: number | null; readonly p95: number | null; readonly samples: number }
}

export class RollingWindow {
  readonly bucketMs: number
  readonly buckets: number
  private readonly slots: Uint32Array
  /** Absolute number (time / bucketMs) of the newest bucket written or cleared. */
  private head = Number.NEGATIVE_INFINITY

  constructor(options: WindowOptions = {}) {
    this.bucketMs = options.bucketMs ?? 10_000
    this.buckets = options.buckets ?? 60
    if (!(this.bucketMs > 0) || !Number.isInteger(this.buckets) || this.buckets < 1) throw new Error('invalid rolling window size')
    this.slots = new Uint32Array(this.buckets * SLOTS)
  }

  /** Bytes the window holds, fixed at creation. */
  get byteLength(): number {
    return this.slots.byteLength
  }

  count(kind: WindowCount, nowMs: number): void {
    const base = this.advance(nowMs)
    bump(this.slots, base + COUNT_SLOT[kind])
  }

  /** One finished request: counted, an error or not, its duration and (streams) its time to first token. */
  request(nowMs: number, error: boolean, latencyMs: number, ttftMs: number | undefined): void {
    const base = this.advance(nowMs)
    const slots = this.slots
    bump(slots, base + REQUESTS)
    if (error) bump(slots, base + ERRORS)
    bump(slots, base + LATENCY + binOf(latencyMs))
    if (ttftMs !== undefined) bump(slots, base + TTFT + binOf(ttftMs))
  }

  snapshot(nowMs: number): WindowSnapshot {
    this.advance(nowMs)
    const newest = this.head
    const perMinute = Math.max(1, Math.round(60_000 / this.bucketMs))
    const series: Record<WindowCount, number[]> = { requests: [], errors: [], retries: [], fallbacks: [] }
    const lastMinute: Record<WindowCount, number> = { requests: 0, errors: 0, retries: 0, fallbacks: 0 }
    const latency = new Array<number>(BINS).fill(0)
    const ttft = new Array<number>(BINS).fill(0)
    for (let age = this.buckets - 1; age >= 0; age--) {
      const base = this.baseOf(newest - age)
      for (const kind of Object.keys(COUNT_SLOT) as WindowCount[]) {
        const value = this.slots[base + COUNT_SLOT[kind]] ?? 0
        series[kind].push(value)
        if (age < perMinute) lastMinute[kind] += value
      }
      for (let bin = 0; bin < BINS; bin++) {
        latency[bin] = (latency[bin] ?? 0) + (this.slots[base + LATENCY + bin] ?? 0)
        ttft[bin] = (ttft[bin] ?? 0) + (this.slots[base + TTFT + bin] ?? 0)
      }
    }
    return { series, lastMinute, latencyMs: percentiles(latency), ttftMs: percentiles(ttft) }
  }

  /** Moves the ring to the bucket of `nowMs`, clearing the buckets skipped; returns that bucket's offset. */
  private advance(nowMs: number): number {
    const bucket = Math.floor(nowMs / this.bucketMs)
    if (bucket > this.head) {
      const skipped = Math.min(this.buckets, bucket - this.head)
      for (let i = 0; i < skipped; i++) {
        const base = this.baseOf(bucket - i)
        this.slots.fill(0, base, base + SLOTS)
      }
      this.head = bucket
    }
    // A clock that went back (never with the monotonic clock) writes into the newest bucket.
    return this.baseOf(this.head)
  }

  private baseOf(bucket: number): number {
    return (((bucket % this.buckets) + this.buckets) % this.buckets) * SLOTS
  }
}

function bump(slots: Uint32Array, index: number): void {
  slots[index] = (slots[index] as number) + 1
}

function binOf(ms: number): number {
  for (let bin = 0; bin < HISTOGRAM_BOUNDS_MS.length; bin++) {
    if (ms <= (HISTOGRAM_BOUNDS_MS[bin] as number)) return bin
  }
  return HISTOGRAM_BOUNDS_MS.length
}

function percentiles(bins: readonly number[]): { p50: number | null; p95: number | null; samples: number } {
  let samples = 0
  for (const value of bins) samples += value
  if (samples === 0) return { p50: null, p95: null, samples }
  return { p50: quantile(bins, samples, 0.5), p95: quantile(bins, samples, 0.95), samples }
}

/** Linear interpolation inside the bin holding the quantile; the open last bin reports its lower bound. */
function quantile(bins: readonly number[], samples: number, q: number): number {
  const rank = q * samples
  let seen = 0
  for (let bin = 0; bin < bins.length; bin++) {
    const inBin = bins[bin] ?? 0
    if (inBin > 0 && seen + inBin >= rank) {
      const lower = bin === 0 ? 0 : (HISTOGRAM_BOUNDS_MS[bin - 1] as number)
      const upper = HISTOGRAM_BOUNDS_MS[bin]
      if (upper === undefined) return lower
      return Math.round(lower + ((upper - lower) * (rank - seen)) / inBin)
    }
    seen += inBin
  }
  return HISTOGRAM_BOUNDS_MS[HISTOGRAM_BOUNDS_MS.length - 1] as number
}
