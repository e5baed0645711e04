import type { Config } from '../config.js'
import { ProxyError, withoutStack } from '../errors.js'
import { abortFailure, Failure, failure, statusFailure } from '../failures.js'
import type { EventLog } from '../logging.js'
import type { Metrics } from '../metrics.js'
import { type RequestClock, waitUnlessAborted } from '../request-clock.js'
import type { AttemptBreakerState, AttemptEnd, AttemptSpan } from '../tracing/request-tracer.js'
import type { Attempter, AttemptResult, AttemptSpec, Served, UpstreamTrace } from './attempt.js'
import { BreakerOpenError, type BreakerRegistry } from './breakers.js'
import { type ModelPauses, NO_MODEL_PAUSES } from './model-pauses.js'
import type { RetryBudget } from './retry-budget.js'
import { decideRetry } from './retry-policy.js'

/**
 * The retry loop for one model: every attempt goes through the model's circuit breaker; a
 * retryable failure waits per policy (server pushback wins, else full-jitter backoff) within the
 * request's deadline and the shared retry budget, and the wait ends at once if the client leaves.
 * It always resolves with an outcome: what was served, or the failure to answer with.
 */

/** The part of a pino logger the retrier writes to. */
export interface RetryRun {
  /** The breaker and metric key: the model id, or `/models`. */
  readonly key: string
  readonly spec: AttemptSpec
  readonly clock: RequestClock
  readonly trace: UpstreamTrace
  readonly log: EventLog
  /** Whether a fallback model follows: a failure that moves on at once does not retry then. */
  readonly hasNextModel: boolean
}

export type RetryOutcome = { readonly ok: true; readonly served: Served } | { readonly ok: false; readonly failure: Failure }

export interface Retrier {
  run(run: RetryRun): Promise<RetryOutcome>
}

export interface RetrierDeps {
  readonly retry: Config['retry']
  readonly breakers: BreakerRegistry
  readonly budget: RetryBudget
  readonly attempter: Attempter
  readonly metrics: Metrics
  readonly random: () => number
  readonly now: () => number
  /**
   * Models paused by an upstream 429's pushback (shared by the replicas in team mode): a paused
   * model is answered at once with a 429, no upstream call. @default no pauses
   */
  readonly pauses?: ModelPauses
  /** Epoch ms, for pauses. @default Date.now */
  readonly wallClockNow?: () => number
}

export function createRetrier(deps: RetrierDeps): Retrier {
  const { retry, breakers, budget, attempter, metrics, now } = deps
  const pauses = deps.pauses ?? NO_MODEL_PAUSES
  const wallClockNow = deps.wallClockNow ?? Date.now
  const backoff = { baseDelayMs: retry.baseDelayMs, maxDelayMs: retry.maxDelayMs }

  /** Rejects with the failure, so the breaker can count it; resolves with what was served. */
  async function attemptThroughBreaker(spec: AttemptSpec, clock: RequestClock, trace: UpstreamTrace): Promise<Served> {
    const result: AttemptResult = await attempter.attempt(spec, clock, trace)
    if (!result.ok) throw result.failure
    return result.served
  }

  async function attemptOnce(key: string, spec: AttemptSpec, clock: RequestClock, trace: UpstreamTrace): Promise<RetryOutcome> {
    try {
      return { ok: true, served: await breakers.run(key, () => attemptThroughBreaker(spec, clock, trace)) }
    } catch (error: unknown) {
      if (error instanceof Failure) return { ok: false, failure: error }
      if (error instanceof BreakerOpenError) {
        const seconds = breakers.retryAfterSeconds(key)
        return {
          ok: false,
          failure: failure('breaker_open', `The circuit breaker for ${key} is open; retry in ${seconds} s`, {
            'retry-after': String(seconds),
          }),
        }
      }
      throw error
    }
  }

  return {
    async run({ key, spec, clock, trace, log, hasNextModel }) {
      const pausedMs = pauses.pausedForMs(key)
      if (pausedMs > 0) {
        log.info({ model: key, pausedMs: Math.round(pausedMs) }, 'model paused by upstream pushback; not calling it')
        return { ok: false, failure: pausedFailure(key, pausedMs) }
      }
      for (let attemptForModel = 1; ; attemptForModel++) {
        if (clock.signal.aborted) return abortedOutcome(clock)
        clock.attempts += 1
        const startedAt = now()
        // Untraced: the shared no-op span; nothing below builds its details unless it records.
        const span = trace.span.attempt(key, attemptForModel)
        span.inject(spec.headers)
        const breakerState = span.recording ? breakers.stateOf(key) : undefined
        const outcome = await attemptOnce(key, spec, clock, trace)
        if (outcome.ok) {
          metrics.attempt(key, 'success')
          metrics.upstreamLatency(key, (now() - startedAt) / 1000)
          if (span.recording) span.end({ upstreamStatus: outcome.served.response.statusCode, breakerState })
          return outcome
        }
        const failed = outcome.failure
        if (failed.kind === 'breaker_open') {
          clock.attempts -= 1 // nothing was sent
          if (span.recording) endFailedAttempt(span, failed, 'open', 'breaker_open')
          return outcome
        }
        if (clock.signal.aborted) {
          if (span.recording) endFailedAttempt(span, failed, breakerState, clock.signal.reason ?? 'client_gone')
          return abortedOutcome(clock)
        }
        metrics.attempt(key, failed.label)
        if (failed.upstreamStatus === 429 && failed.pushbackMs !== undefined && failed.pushbackMs > 0) {
          pauses.pause(key, wallClockNow() + failed.pushbackMs)
        }
        if (failed.verdict.nextModel === 'at_once' && (hasNextModel || !failed.verdict.retry)) {
          if (span.recording) endFailedAttempt(span, failed, breakerState, 'next_model')
          return outcome
        }

        const decision = decideRetry({
          attempt: attemptForModel,
          maxAttempts: retry.maxAttempts,
          retryable: failed.verdict.retry,
          statusBased: failed.upstreamStatus !== undefined,
          clientRetryCount: clock.clientRetryCount,
          pushbackMs: failed.pushbackMs,
          remainingMs: clock.remainingMs(now()),
          maxRetryAfterMs: retry.maxRetryAfterMs,
          backoff,
          random: deps.random,
        })
        if (!decision.retry) {
          if (span.recording) endFailedAttempt(span, failed, breakerState, decision.reason)
          log.info(
            { model: key, attempt: attemptForModel, reason: decision.reason, upstreamStatus: failed.upstreamStatus, code: failed.code },
            'not retrying',
          )
          return outcome
        }
        if (!budget.tryAcquireRetry()) {
          metrics.retryBudgetExhausted(key)
          if (span.recording) endFailedAttempt(span, failed, breakerState, 'retry_budget_exhausted')
          log.warn({ model: key, attempt: attemptForModel }, 'retry budget exhausted; answering with the last upstream error')
          return outcome
        }
        metrics.retry(key, failed.label)
        if (span.recording) {
          endFailedAttempt(span, failed, breakerState, undefined, {
            retryReason: failed.label,
            retryDelayMs: decision.delayMs,
            retryDelaySource: decision.source,
          })
        }
        log.info(
          {
            model: key,
            attempt: attemptForModel,
            delayMs: Math.round(decision.delayMs),
            delaySource: decision.source,
            reason: failed.label,
          },
          'retrying',
        )
        if (!(await waitUnlessAborted(decision.delayMs, clock.signal))) {
          return abortedOutcome(clock)
        }
      }
    },
  }
}

/**
 * The answer for a paused model: the 429 the upstream would give, with Retry-After = the time
 * left; like a too-long pushback, the chain moves on to the next model when there is one.
 */
function pausedFailure(key: string, pausedMs: number): Failure {
  const seconds = Math.max(1, Math.ceil(pausedMs / 1000))
  const message = `The upstream asked for a pause on ${key}; retry in ${seconds} s`
  const error = withoutStack(
    () => new ProxyError(429, 'rate_limit_error', 'rate_limit_exceeded', message, { 'retry-after': String(seconds) }),
  )
  return statusFailure(429, error, pausedMs)
}

/** The client, the deadline or the drain ended the request: that is the answer, whatever undici said. */
function abortedOutcome(clock: RequestClock): RetryOutcome {
  return { ok: false, failure: abortFailure(clock.signal.reason ?? 'client_gone') }
}

/** Ends a failed attempt's span (only called when it records): the failure, and what follows it. */
function endFailedAttempt(
  span: AttemptSpan,
  failed: Failure,
  breakerState: AttemptBreakerState | undefined,
  notRetried: string | undefined,
  retry?: Pick<AttemptEnd, 'retryReason' | 'retryDelayMs' | 'retryDelaySource'>,
): void {
  span.end({
    upstreamStatus: failed.upstreamStatus,
    failure: failed.label,
    pushbackMs: failed.pushbackMs,
    breakerState,
    notRetried,
    ...retry,
  })
}
