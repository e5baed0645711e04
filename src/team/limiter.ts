import { RateLimiterMemory, RateLimiterRes } from 'rate-limiter-flexible'
import type { RequestSignal } from '../request-clock.js'
import type { KeyLimits } from './keys.js'

/**
 * A member key's request-time limits: requests per minute, tokens per minute (reserve an estimate,
 * settle to the real count) and requests in flight. rpm and tpm are rate-limiter-flexible's memory
 * limiters, whose Redis twins the fleet swaps in; concurrency is a counter. Over rpm or concurrency
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
}

/** An admitted request: settle its tokens once known, release its concurrency slot when it ends. */
export interface Permit {
  readonly headers: RateLimitHeaders
  settle(actualTokens: number | undefined): void
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
  | { readonly ok: false; readonly limit: 'aborted' }

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
}

/** A queue longer than this per key is a client misbehaving; later requests are refused at once. */
const MAX_QUEUED_PER_KEY = 256

interface Ticket {
  wake: () => void
}

export function createKeyLimiter(options: KeyLimiterOptions): KeyLimiter {
  const { maxQueueWaitMs, now } = options
  const windowSeconds = options.windowSeconds ?? 60
  // rate-limiter-flexible fixes `points` per limiter, so there is one limiter per distinct limit.
  const rpmLimiters = new Map<number, RateLimiterMemory>()
  const tpmLimiters = new Map<number, RateLimiterMemory>()
  const inFlight = new Map<string, number>()
  const queues = new Map<string, Ticket[]>()
  let queuedCount = 0

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
    const { keyId, limits } = request
    const headers: RateLimitHeaders = {}
    // The slot is taken before the first await, so simultaneous requests cannot all see it free.
    const running = inFlight.get(keyId) ?? 0
    if (limits.maxConcurrent > 0 && running >= limits.maxConcurrent) return refusal('concurrency', 0, headers)
    inFlight.set(keyId, running + 1)
    const rpm = limits.rpm > 0 ? limiterFor(rpmLimiters, limits.rpm) : undefined
    if (rpm !== undefined) {
      const result = await take(rpm, keyId, 1)
      describe(headers, 'requests', limits.rpm, result)
      if (result.refused) {
        freeSlot(keyId)
        return refusal('rpm', result.msBeforeNext, headers)
      }
    }
    const tpm = limits.tpm > 0 ? limiterFor(tpmLimiters, limits.tpm) : undefined
    const reserved = Math.min(Math.max(0, Math.ceil(request.estimatedTokens)), limits.tpm)
    if (tpm !== undefined) {
      const result = await take(tpm, keyId, reserved)
      describe(headers, 'tokens', limits.tpm, result)
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
        settle(actualTokens) {
          if (settled || tpm === undefined || actualTokens === undefined) return
          settled = true
          const difference = Math.ceil(actualTokens) - reserved
          if (difference > 0) void tpm.penalty(keyId, difference)
          else if (difference < 0) void tpm.reward(keyId, -difference)
        },
        release() {
          if (released) return
          released = true
          freeSlot(keyId)
          queues.get(keyId)?.[0]?.wake()
        },
      },
    }
  }

  function freeSlot(keyId: string): void {
    const left = (inFlight.get(keyId) ?? 1) - 1
    if (left > 0) inFlight.set(keyId, left)
    else inFlight.delete(keyId)
  }

  async function waitInQueue(request: AdmitRequest, refused: Admission & { ok: false }): Promise<Admission> {
    const waitUntil = Math.min(now() + maxQueueWaitMs, request.deadlineAtMs)
    const queue = queues.get(request.keyId) ?? []
    if (queue.length >= MAX_QUEUED_PER_KEY) return refused
    queues.set(request.keyId, queue)
    const ticket: Ticket = { wake: ignore }
    queue.push(ticket)
    queuedCount++
    let last: Admission = refused
    try {
      for (;;) {
        // Only the head of the queue tries again; the others wait behind it, in order.
        const delayMs = last.ok === false && last.limit === 'rpm' ? last.retryAfterMs : Number.POSITIVE_INFINITY
        const leftMs = waitUntil - now()
        if (leftMs <= 0 || (queue[0] === ticket && delayMs > leftMs && last.ok === false && last.limit === 'rpm')) return last
        const woken = await sleepUntilWoken(ticket, Math.min(delayMs, leftMs), request.signal)
        if (!woken) return { ok: false, limit: 'aborted' }
        if (queue[0] !== ticket) continue
        last = await tryAdmit(request)
        if (last.ok || last.limit === 'tpm') return last
      }
    } finally {
      queue.splice(queue.indexOf(ticket), 1)
      queuedCount--
      if (queue.length === 0) queues.delete(request.keyId)
      else queue[0]?.wake()
    }
  }

  return {
    async admit(request) {
      const first = await tryAdmit(request)
      if (first.ok || first.limit === 'tpm' || first.limit === 'aborted' || maxQueueWaitMs <= 0) return first
      if (request.signal.aborted) return { ok: false, limit: 'aborted' }
      return waitInQueue(request, first)
    },
    queued: () => queuedCount,
  }
}

/** Resolves true when woken or the time is up, false when the client left. */
function sleepUntilWoken(ticket: Ticket, ms: number, signal: RequestSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false)
  return new Promise((resolve) => {
    const done = (value: boolean) => {
      clearTimeout(timer)
      signal.off('abort', onAbort)
      ticket.wake = ignore
      resolve(value)
    }
    const onAbort = () => done(false)
    const timer = setTimeout(done, Math.max(1, Math.min(ms, 2 ** 31 - 1)), true)
    ticket.wake = () => done(true)
    signal.once('abort', onAbort)
  })
}

function refusal(limit: LimitName, retryAfterMs: number, headers: RateLimitHeaders): Admission {
  return { ok: false, limit, retryAfterMs, retryAfterSeconds: wholeSeconds(retryAfterMs), headers }
}

function describe(headers: RateLimitHeaders, unit: 'requests' | 'tokens', limit: number, result: RateLimiterRes): void {
  headers[`x-ratelimit-limit-${unit}`] = String(limit)
  headers[`x-ratelimit-remaining-${unit}`] = String(Math.max(0, result.remainingPoints))
  headers[`x-ratelimit-reset-${unit}`] = `${wholeSeconds(result.msBeforeNext)}s`
}

/** `Retry-After` and resets in whole seconds, at least 1. */
function wholeSeconds(ms: number): number {
  return Math.max(1, Math.ceil(ms / 1000))
}

function ignore(): void {}
