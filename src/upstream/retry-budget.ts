/**
 * A retry budget: retries may be at most `budgetPercent` of the requests seen over a sliding
 * window, plus a small floor so a quiet proxy can still retry. Per-request attempt limits alone
 * let a full outage triple the upstream's load; a budget caps the extra at a few percent.
 * The same idea as Envoy's `retry_budget` and Finagle's `RetryBudget`.
 *
 * The window is a fixed ring of {@link BUCKET_COUNT} buckets of `windowMs / 10` each, so every call
 * is O(1) and allocates nothing; buckets that fall out of the window are zeroed lazily when time
 * has moved on. The window therefore covers between 9/10 and all of `windowMs`, depending on where
 * in the current bucket "now" is.
 */

export interface RetryBudgetOptions {
  /**
   * Retries allowed as a percentage of the requests in the window.
   * @default 10
   */
  readonly budgetPercent: number
  /**
   * Retries per second allowed regardless of traffic, so a proxy with few requests can still
   * retry: the floor is `budgetMinPerSecond * windowMs / 1000` retries per window.
   * @default 5
   */
  readonly budgetMinPerSecond: number
  /**
   * Length of the sliding window.
   * @default 10000
   */
  readonly windowMs?: number
}

export interface RetryBudget {
  /** Count one client request (call once per incoming request that reaches the upstream logic). */
  recordRequest(): void
  /**
   * Try to spend one retry: allowed while
   * `retriesInWindow < requestsInWindow * budgetPercent / 100 + budgetMinPerSecond * windowMs / 1000`;
   * records the retry when allowed.
   */
  tryAcquireRetry(): boolean
  /** For metrics/tests: the counts in the current window and the retries it allows in total. */
  snapshot(): { requests: number; retries: number; allowed: number }
}

/** Buckets in the ring; the window slides in steps of `windowMs / BUCKET_COUNT`. */
const BUCKET_COUNT = 10
const DEFAULT_WINDOW_MS = 10_000

/**
 * Builds a retry budget. The clock is injected so tests can move time by hand.
 *
 * @param now a monotonic clock in ms; `performance.now()` by default. A clock that goes backwards
 * is treated as standing still.
 *
 * @example
 * ```ts
 * const budget = createRetryBudget({ budgetPercent: 10, budgetMinPerSecond: 5 })
 * budget.recordRequest()
 * if (failedRetryably && budget.tryAcquireRetry()) {
 *   // wait, then attempt again
 * }
 * ```
 */
export function createRetryBudget(options: RetryBudgetOptions, now: () => number = () => performance.now()): RetryBudget {
  const { budgetPercent, budgetMinPerSecond } = options
  const windowMs = options.windowMs ?? DEFAULT_WINDOW_MS
  if (!(Number.isFinite(windowMs) && windowMs > 0)) {
    throw new RangeError(`retry budget: windowMs must be a positive number, found ${String(windowMs)}`)
  }
  if (!(Number.isFinite(budgetPercent) && budgetPercent >= 0)) {
    throw new RangeError(`retry budget: budgetPercent must be a number >= 0, found ${String(budgetPercent)}`)
  }
  if (!(Number.isFinite(budgetMinPerSecond) && budgetMinPerSecond >= 0)) {
    throw new RangeError(`retry budget: budgetMinPerSecond must be a number >= 0, found ${String(budgetMinPerSecond)}`)
  }

  const bucketMs = windowMs / BUCKET_COUNT
  const ratio = budgetPercent / 100
  const floor = (budgetMinPerSecond * windowMs) / 1000
  const requestBuckets = new Float64Array(BUCKET_COUNT)
  const retryBuckets = new Float64Array(BUCKET_COUNT)
  let requests = 0
  let retries = 0
  /** Absolute number of the bucket "now" falls in: floor(time / bucketMs). */
  let currentBucket = Math.floor(now() / bucketMs)

  /** Moves the window up to the present, zeroing the buckets it leaves behind. Returns the slot. */
  function advance(): number {
    const bucket = Math.floor(now() / bucketMs)
    const steps = bucket - currentBucket
    if (steps >= BUCKET_COUNT) {
      requestBuckets.fill(0)
      retryBuckets.fill(0)
      requests = 0
      retries = 0
      currentBucket = bucket
    } else if (steps > 0) {
      for (let step = 1; step <= steps; step++) {
        const slot = slotOf(currentBucket + step)
        requests -= requestBuckets[slot] ?? 0
        retries -= retryBuckets[slot] ?? 0
        requestBuckets[slot] = 0
        retryBuckets[slot] = 0
      }
      currentBucket = bucket
    }
    return slotOf(currentBucket)
  }

  return {
    recordRequest() {
      const slot = advance()
      requestBuckets[slot] = (requestBuckets[slot] ?? 0) + 1
      requests++
    },
    tryAcquireRetry() {
      const slot = advance()
      if (retries >= requests * ratio + floor) return false
      retryBuckets[slot] = (retryBuckets[slot] ?? 0) + 1
      retries++
      return true
    },
    snapshot() {
      advance()
      return { requests, retries, allowed: requests * ratio + floor }
    },
  }
}

function slotOf(bucket: number): number {
  return ((bucket % BUCKET_COUNT) + BUCKET_COUNT) % BUCKET_COUNT
}
