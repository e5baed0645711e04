import { RateLimiterMemory, RateLimiterRes } from 'rate-limiter-flexible'
import type { RequestSignal } from '../request-clock.js'
import { type BudgetLedger, type BudgetWindow, budgetVerdict, createMemoryBudgetLedger, NOTHING_SPENT_BEFORE } from './budget.js'
import { createKeyQueue } from './key-queue.js'
import type { KeyLimits } from './keys.js'

/**
 * A member key's request-time limits: its budget for the period, requests per minute, tokens per
 * minute (reserve an estimate, settle to the real count) and requests in flight. rpm and tpm are
 * rate-limiter-flexible's memory limiters and the budget a memory ledger, per replica
 * (redis-limiter.ts shares them across a fleet); concurrency is a counter. Over rpm or concurrency
 * a request may wait its turn in a bounded FIFO per key (`maxQueueWaitMs`), within its deadline, and
 * leaves the queue at once when its client does.
 */

/** 0 means unlimited (keys.ts `effectiveLimits` resolves a key's own against `team.defaults`). */
export type { KeyLimits }

export type LimitName = 'rpm' | 'tpm' | 'concurrency'

/** The key's own `x-ratelimit-*`, for the limits it has (they replace the upstream's). */
export type RateLimitHeaders = Record<string, string>

export interface AdmitRequest {
  readonly keyId: string
  readonly limits: KeyLimits
  /** The tpm reservation: prompt bytes / 4 + the request's max tokens. */
  readonly estimatedTokens: number
  readonly signal: RequestSignal
  /** Monotonic ms (the request clock's): no queued wait outlasts it. */
  readonly deadlineAtMs: number
  /** The key's budget in the request's period; undefined when it has none. */
  readonly budget?: BudgetWindow | undefined
}

/** An admitted request: settle its tokens and cost once known, release its concurrency slot when it ends. */
export interface Permit {
  readonly headers: RateLimitHeaders
  /** The real token count settles tpm; tokens and cost count toward the budget (unknown adds nothing). */
  settle(actualTokens: number | undefined, costUsd?: number | null): void
  release(): void
}

export type Admission =
  | { readonly ok: true; readonly permit: Permit }
  | {
      readonly ok: false
      readonly limit: LimitName
      /** When a retry may succeed: exact, and as `Retry-After` (whole seconds ≥ 1). */
      readonly retryAfterMs: number
      readonly retryAfterSeconds: number
      readonly headers: RateLimitHeaders
    }
  | { readonly ok: false; readonly limit: 'budget'; readonly unit: 'tokens' | 'usd'; readonly spent: number; readonly budget: number }
  | { readonly ok: false; readonly limit: 'aborted' }
  /**
   * `limits`: the shared limits store (Redis) is down and `team.redisFailure` is `closed`;
   * `budget`: the key's spend for the period is not known yet and the usage store cannot tell it.
   */
  | { readonly ok: false; readonly limit: 'unavailable'; readonly what: 'limits' | 'budget' }

export interface KeyLimiter {
  admit(request: AdmitRequest): Promise<Admission>
  /** Requests waiting in some key's queue; for metrics. */
  queued(): number
}

export interface KeyLimiterOptions {
  readonly maxQueueWaitMs: number
  readonly now: () => number
  /** The rpm / tpm window. @default 60 */
  readonly windowSeconds?: number
  /** Budgets per replica. @default a ledger that knows of no spend before this process */
  readonly budgets?: BudgetLedger
}

/** The memory limiter's check-and-take, without the queue: the Redis limiter's fallback too. */
export interface MemoryAdmitter {
  tryAdmit(request: AdmitRequest): Promise<Admission>
}

export function createKeyLimiter(options: KeyLimiterOptions): KeyLimiter {
  const queue = createKeyQueue(options)
  const admitter = createMemoryAdmitter({ ...options, onSlotFreed: (keyId) => queue.wake(keyId) })
  return {
    admit: (request) => queue.admit(request, admitter.tryAdmit),
    queued: () => queue.queued(),
  }
}

export function createMemoryAdmitter(options: {
  readonly windowSeconds?: number
  readonly budgets?: BudgetLedger
  /** A permit released its concurrency slot. */
  readonly onSlotFreed: (keyId: string) => void
}): MemoryAdmitter {
  const windowSeconds = options.windowSeconds ?? 60
  const budgets = options.budgets ?? createMemoryBudgetLedger(NOTHING_SPENT_BEFORE)
  // rate-limiter-flexible fixes `points` per limiter, so there is one limiter per distinct limit.
  const rpmLimiters = new Map<number, RateLimiterMemory>()
  const tpmLimiters = new Map<number, RateLimiterMemory>()
  const inFlight = new Map<string, number>()

  const limiterFor = (cache: Map<number, RateLimiterMemory>, points: number) => {
    let limiter = cache.get(points)
    if (limiter === undefined) {
      limiter = new RateLimiterMemory({ points, duration: windowSeconds })
      cache.set(points, limiter)
    }
    return limiter
  }

  /** Takes `points` or gives them back: a refused request does not count against the window. */
  async function take(limiter: RateLimiterMemory, keyId: string, points: number): Promise<RateLimiterRes & { refused: boolean }> {
    try {
      return Object.assign(await limiter.consume(keyId, points), { refused: false })
    } catch (refusal: unknown) {
      if (!(refusal instanceof RateLimiterRes)) throw refusal
      await limiter.reward(keyId, points)
      return Object.assign(refusal, { refused: true })
    }
  }

  async function tryAdmit(request: AdmitRequest): Promise<Admission> {
    const { keyId, limits, budget } = request
    if (budget !== undefined) {
      let spend: Awaited<ReturnType<BudgetLedger['spent']>>
      try {
        spend = await budgets.spent(budget)
      } catch {
        return { ok: false, limit: 'unavailable', what: 'budget' }
      }
      const verdict = budgetVerdict(budget, spend)
      if (!verdict.ok) return { ok: false, limit: 'budget', unit: verdict.unit, spent: verdict.spent, budget: verdict.budget }
    }
    const headers: RateLimitHeaders = {}
    // The slot is taken before the first await, so simultaneous requests cannot all see it free.
    const running = inFlight.get(keyId) ?? 0
    if (limits.maxConcurrent > 0 && running >= limits.maxConcurrent) return refusal('concurrency', 0, headers)
    inFlight.set(keyId, running + 1)
    const rpm = limits.rpm > 0 ? limiterFor(rpmLimiters, limits.rpm) : undefined
    if (rpm !== undefined) {
      const result = await take(rpm, keyId, 1)
      describe(headers, 'requests', limits.rpm, result.remainingPoints, result.msBeforeNext)
      if (result.refused) {
        freeSlot(keyId)
        return refusal('rpm', result.msBeforeNext, headers)
      }
    }
    const tpm = limits.tpm > 0 ? limiterFor(tpmLimiters, limits.tpm) : undefined
    const reserved = tokensToReserve(request)
    if (tpm !== undefined) {
      const result = await take(tpm, keyId, reserved)
      describe(headers, 'tokens', limits.tpm, result.remainingPoints, result.msBeforeNext)
      if (result.refused) {
        if (rpm !== undefined) await rpm.reward(keyId, 1)
        freeSlot(keyId)
        return refusal('tpm', result.msBeforeNext, headers)
      }
    }
    let released = false
    let settled = false
    return {
      ok: true,
      permit: {
        headers,
        settle(actualTokens, costUsd) {
          if (settled) return
          settled = true
          if (budget !== undefined) budgets.add(budget, actualTokens ?? null, costUsd ?? null)
          if (tpm === undefined || actualTokens === undefined) return
          const difference = Math.ceil(actualTokens) - reserved
          if (difference > 0) void tpm.penalty(keyId, difference)
          else if (difference < 0) void tpm.reward(keyId, -difference)
        },
        release() {
          if (released) return
          released = true
          freeSlot(keyId)
          options.onSlotFreed(keyId)
        },
      },
    }
  }

  function freeSlot(keyId: string): void {
    const left = (inFlight.get(keyId) ?? 1) - 1
    if (left > 0) inFlight.set(keyId, left)
    else inFlight.delete(keyId)
  }

  return { tryAdmit }
}

/** The tpm reservation, within the key's limit (so a large prompt waits for a whole window, not forever). */
export function tokensToReserve(request: AdmitRequest): number {
  return Math.min(Math.max(0, Math.ceil(request.estimatedTokens)), request.limits.tpm)
}

export function refusal(limit: LimitName, retryAfterMs: number, headers: RateLimitHeaders): Admission {
  return { ok: false, limit, retryAfterMs, retryAfterSeconds: wholeSeconds(retryAfterMs), headers }
}

export function describe(headers: RateLimitHeaders, unit: 'requests' | 'tokens', limit: number, remaining: number, resetMs: number): void {
  headers[`x-ratelimit-limit-${unit}`] = String(limit)
  headers[`x-ratelimit-remaining-${unit}`] = String(Math.max(0, remaining))
  headers[`x-ratelimit-reset-${unit}`] = `${wholeSeconds(resetMs)}s`
}

/** `Retry-After` and resets in whole seconds, at least 1. */
function wholeSeconds(ms: number): number {
  return Math.max(1, Math.ceil(ms / 1000))
}
