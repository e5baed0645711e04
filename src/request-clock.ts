import { EventEmitter } from 'node:events'
import type { ServerResponse } from 'node:http'
import type { AbortReason } from './failures.js'

/**
 * The clock of one request on its way to the upstream: its deadline, the abort signal that fires
 * when the deadline passes, the client leaves or the proxy drains, and the attempts made so far
 * across every model. One object per request, with no per-request closures: the response's
 * `close` and the deadline timer reach it through plain references.
 */

/**
 * The abort signal: an EventEmitter rather than an AbortController because one is created for
 * every request and an AbortSignal (an EventTarget) costs several times more to create and listen
 * to; undici accepts either (`signal` may be "an EventEmitter or EventTarget").
 */
export class RequestSignal extends EventEmitter {
  aborted = false
  reason: AbortReason | undefined = undefined

  abort(reason: AbortReason): void {
    if (this.aborted) return
    this.aborted = true
    this.reason = reason
    this.emit('abort')
  }
}

export interface ClockOptions {
  /** min(config requestTimeoutMs, the client's `X-Stainless-Timeout`). */
  readonly deadlineMs: number
  readonly nowMs: number
  /** From `X-Stainless-Retry-Count`: ≥ 1 means the client is already retrying. */
  readonly clientRetryCount: number
  /** The client's response, when its closing should abort the request; absent for shared work. */
  readonly response: ServerResponse | undefined
  /** Where the clock is listed while it runs, so a drain can end it (Lifecycle.waiting). */
  readonly inFlight: Set<RequestClock> | undefined
}

const CLOCK_OF = Symbol('toprouter.requestClock')
type FollowedResponse = ServerResponse & { [CLOCK_OF]?: RequestClock }

export class RequestClock {
  readonly signal = new RequestSignal()
  readonly deadlineAtMs: number
  readonly clientRetryCount: number
  /** Incremented per attempt, across models; reported in `x-proxy-attempts`. */
  attempts = 0
  private readonly response: FollowedResponse | undefined
  private readonly inFlight: Set<RequestClock> | undefined
  private readonly deadlineTimer: NodeJS.Timeout
  private released = false

  constructor(options: ClockOptions) {
    this.deadlineAtMs = options.nowMs + options.deadlineMs
    this.clientRetryCount = options.clientRetryCount
    this.deadlineTimer = setTimeout(abortAtDeadline, options.deadlineMs, this.signal)
    this.response = options.response
    this.inFlight = options.inFlight
    this.inFlight?.add(this)
    if (this.response !== undefined) {
      this.response[CLOCK_OF] = this
      this.response.once('close', abortWhenClientLeaves)
    }
  }

  remainingMs(nowMs: number): number {
    return this.deadlineAtMs - nowMs
  }

  /** Once a response is committed (or the request has failed), the deadline no longer applies. */
  release(): void {
    if (this.released) return
    this.released = true
    clearTimeout(this.deadlineTimer)
    this.response?.off('close', abortWhenClientLeaves)
    this.inFlight?.delete(this)
  }
}

/**
 * Starts the clock of a request from the client's own timeout and retry count (the OpenAI SDK's
 * `X-Stainless-Timeout` seconds and `X-Stainless-Retry-Count`).
 */
export function startRequestClock(
  headers: Readonly<Record<string, string | string[] | undefined>>,
  options: { readonly requestTimeoutMs: number; readonly nowMs: number } & Pick<ClockOptions, 'response' | 'inFlight'>,
): RequestClock {
  const stainlessTimeoutS = Number(headers['x-stainless-timeout'] ?? Number.NaN)
  const deadlineMs = stainlessTimeoutS > 0 ? Math.min(options.requestTimeoutMs, stainlessTimeoutS * 1000) : options.requestTimeoutMs
  const retryCount = Number(headers['x-stainless-retry-count'] ?? 0)
  return new RequestClock({
    deadlineMs,
    nowMs: options.nowMs,
    clientRetryCount: Number.isFinite(retryCount) && retryCount > 0 ? retryCount : 0,
    response: options.response,
    inFlight: options.inFlight,
  })
}

function abortAtDeadline(signal: RequestSignal): void {
  signal.abort('deadline')
}

function abortWhenClientLeaves(this: FollowedResponse): void {
  if (!this.writableFinished) this[CLOCK_OF]?.signal.abort('client_gone')
}

/** Waits `ms`, or resolves `false` as soon as `signal` fires (a backoff ends when the client leaves). */
export function waitUnlessAborted(ms: number, signal: RequestSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false)
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(timer)
      resolve(false)
    }
    const timer = setTimeout(() => {
      signal.off('abort', onAbort)
      resolve(true)
    }, ms)
    signal.once('abort', onAbort)
  })
}
