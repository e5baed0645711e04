import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../config.js'
import { proxyError, type ProxyError } from '../errors.js'
import type { Metrics } from '../metrics.js'
import { BreakerOpenError, type BreakerRegistry } from './breakers.js'
import { UpstreamFailure, readBodyUpTo, type UpstreamResponse } from './client.js'
import { normalizeUpstreamError } from './normalize.js'
import { decideRetry, isRetryableStatus, serverPushbackMs } from './retry-policy.js'
import type { RetryBudget } from './retry-budget.js'
import { waitUnlessAborted, type RequestSignal } from './request-signal.js'

/**
 * The retry loop for one model: every attempt goes through the model's circuit breaker; a
 * retryable failure waits per policy (server pushback wins, else full-jitter backoff) within the
 * request's deadline and the shared retry budget, and the wait ends at once if the client leaves.
 */

/** A non-2xx upstream response, thrown from inside the breaker so 5xx count as failures. */
export class UpstreamStatusError extends Error {
  readonly response: UpstreamResponse
  constructor(response: UpstreamResponse) {
    super(`upstream answered ${response.statusCode}`)
    this.response = response
  }
}

/** The client went away: nothing is sent, nothing more is tried. */
export class ClientGoneError extends Error {}

/** What counts against a breaker: 5xx, timeouts and connection errors; never 4xx or client aborts. */
export function isBreakerFailure(error: unknown): boolean {
  if (error instanceof UpstreamStatusError) return error.response.statusCode >= 500
  if (error instanceof UpstreamFailure) return error.kind !== 'aborted'
  return false
}

export interface RequestBudget {
  readonly signal: RequestSignal
  readonly deadlineAtMs: number
  /** From `X-Stainless-Retry-Count`: ≥ 1 means the client is already retrying. */
  readonly clientRetryCount: number
  /** Incremented per attempt, across models; reported in `x-proxy-attempts`. */
  attempts: number
}

export type ModelOutcome<T> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly error: ProxyError; readonly fallbackEligible: boolean }

export interface RetrierDeps {
  readonly retry: Config['retry']
  readonly breakers: BreakerRegistry
  readonly budget: RetryBudget
  readonly metrics: Metrics
  readonly secret: string | undefined
  readonly maxErrorBodyBytes: number
  readonly random: () => number
  readonly now: () => number
}

export interface Retrier {
  run<T>(
    log: FastifyBaseLogger,
    key: string,
    request: RequestBudget,
    attempt: () => Promise<T>,
    options: { readonly hasNextModel: boolean },
  ): Promise<ModelOutcome<T>>
}

export function createRetrier(deps: RetrierDeps): Retrier {
  const { retry, breakers, budget, metrics } = deps
  const backoff = { baseDelayMs: retry.baseDelayMs, maxDelayMs: retry.maxDelayMs }

  return {
    async run(log, key, request, attempt, options) {
      for (let attemptForModel = 1; ; attemptForModel++) {
        if (request.signal.aborted) throw abortOutcome(request)
        request.attempts += 1
        const startedAt = deps.now()
        let failure: ProxyError
        let retryable: boolean
        let statusBased = false
        let pushbackMs: number | undefined
        let outcomeLabel: string
        try {
          const value = await breakers.run(key, attempt)
          metrics.attempt(key, 'success')
          metrics.upstreamLatency(key, (deps.now() - startedAt) / 1000)
          return { ok: true, value }
        } catch (error: unknown) {
          if (error instanceof BreakerOpenError) {
            request.attempts -= 1 // nothing was sent
            const seconds = breakers.retryAfterSeconds(key)
            const open = proxyError('circuit_open', `The circuit breaker for ${key} is open; retry in ${seconds} s`, { 'retry-after': String(seconds) })
            return { ok: false, error: open, fallbackEligible: true }
          }
          if (request.signal.aborted) throw abortOutcome(request)
          if (error instanceof UpstreamStatusError) {
            const { response } = error
            failure = await readUpstreamError(response, deps)
            statusBased = true
            retryable = isRetryableStatus(response.statusCode, failure.code)
            pushbackMs = serverPushbackMs(response.statusCode, response.headers, Date.now())
            outcomeLabel = String(response.statusCode)
            if (failure.code === 'context_length_exceeded') {
              metrics.attempt(key, outcomeLabel)
              return { ok: false, error: failure, fallbackEligible: true }
            }
          } else if (error instanceof UpstreamFailure) {
            failure = error
            outcomeLabel = error.kind
            retryable = error.kind !== 'tls'
            if ((error.kind === 'first_byte_timeout' || error.kind === 'headers_timeout') && options.hasNextModel) {
              // Retrying a silent route only multiplies the wait: move on to the next model.
              metrics.attempt(key, outcomeLabel)
              return { ok: false, error: failure, fallbackEligible: true }
            }
          } else {
            throw error
          }
        }
        metrics.attempt(key, outcomeLabel)

        const decision = decideRetry({
          attempt: attemptForModel,
          maxAttempts: retry.maxAttempts,
          retryable,
          statusBased,
          clientRetryCount: request.clientRetryCount,
          pushbackMs,
          remainingMs: request.deadlineAtMs - deps.now(),
          maxRetryAfterMs: retry.maxRetryAfterMs,
          backoff,
          random: deps.random,
        })
        if (!decision.retry) {
          log.info({ model: key, attempt: attemptForModel, reason: decision.reason, upstreamStatus: statusBased ? failure.status : undefined, code: failure.code }, 'not retrying')
          return { ok: false, error: failure, fallbackEligible: retryable }
        }
        if (!budget.tryAcquireRetry()) {
          metrics.retryBudgetExhausted(key)
          log.warn({ model: key, attempt: attemptForModel }, 'retry budget exhausted; answering with the last upstream error')
          return { ok: false, error: failure, fallbackEligible: retryable }
        }
        metrics.retry(key, outcomeLabel)
        log.info({ model: key, attempt: attemptForModel, delayMs: Math.round(decision.delayMs), delaySource: decision.source, reason: outcomeLabel }, 'retrying')
        try {
          await waitUnlessAborted(decision.delayMs, request.signal)
        } catch {
          throw abortOutcome(request)
        }
      }
    },
  }
}

/** Why the request's signal fired: the client left, or the deadline passed (504). */
function abortOutcome(request: RequestBudget): Error {
  if (request.signal.reason === DEADLINE) return proxyError('upstream_timeout', 'The request deadline passed before the upstream answered')
  return new ClientGoneError('client disconnected')
}

export const DEADLINE = Symbol('deadline')

async function readUpstreamError(response: UpstreamResponse, deps: Pick<RetrierDeps, 'maxErrorBodyBytes' | 'secret'>): Promise<ProxyError> {
  let body: Buffer = EMPTY
  try {
    body = (await readBodyUpTo(response.body, deps.maxErrorBodyBytes)).bytes
  } catch {
    // A cut error body still yields an error naming the status.
  }
  return normalizeUpstreamError(response.statusCode, response.headers, body, deps.secret)
}

const EMPTY = Buffer.alloc(0)
