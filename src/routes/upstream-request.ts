import type { ServerResponse } from 'node:http'
import type { FastifyRequest } from 'fastify'
import type { Config } from '../config.js'
import type { HeaderMap } from '../http-headers.js'
import type { Lifecycle } from '../lifecycle.js'
import type { Metrics } from '../metrics.js'
import { type RequestClock, startRequestClock } from '../request-clock.js'
import { startTrace } from '../request-log.js'
import { NO_REQUEST_SPAN, type RequestTracer } from '../tracing/request-tracer.js'
import type { UpstreamTrace } from '../upstream/attempt.js'
import type { RetryBudget } from '../upstream/retry-budget.js'
import type { UpstreamAuth } from '../upstream-auth.js'

/**
 * What every route that goes upstream does first and last: the upstream headers (the auth
 * decision), the trace the request log reads, the request's clock, and its count in the retry
 * budget; then, once it is answered, the clock released.
 */

export interface UpstreamRouteDeps {
  readonly auth: UpstreamAuth
  readonly budget: RetryBudget
  readonly lifecycle: Lifecycle
  readonly metrics: Metrics
  readonly config: Config
  readonly now: () => number
  /** A span per request and per attempt; NO_TRACER when tracing is off. */
  readonly tracer: RequestTracer
}

export interface UpstreamRequest {
  readonly headers: HeaderMap
  readonly trace: UpstreamTrace
  readonly clock: RequestClock
}

export interface UpstreamRequestOptions {
  readonly model: string | undefined
  readonly hasBody: boolean
  /** The client's response when its leaving should abort the request; undefined for shared work. */
  readonly followClient: ServerResponse | undefined
}

export function startUpstreamRequest(deps: UpstreamRouteDeps, request: FastifyRequest, options: UpstreamRequestOptions): UpstreamRequest {
  const headers = deps.auth.headersFor(request.headers, request.id, options.hasBody)
  // Untraced, not even the route is looked up (Fastify builds routeOptions on each read).
  const span = deps.tracer.enabled
    ? deps.tracer.startRequest(
        request.method,
        request.routeOptions.url ?? 'unmatched',
        request.headers,
        options.model,
        deps.now() - request.receivedAtMs,
      )
    : NO_REQUEST_SPAN
  const trace = startTrace(request, options.model, span)
  const clock = startRequestClock(request.headers, {
    requestTimeoutMs: deps.config.upstream.requestTimeoutMs,
    nowMs: deps.now(),
    response: options.followClient,
    inFlight: deps.lifecycle.waiting,
  })
  deps.budget.recordRequest()
  return { headers, trace, clock }
}

/** The request has its outcome: the deadline no longer applies, and the log learns the attempts. */
export function finishUpstreamRequest({ clock, trace }: UpstreamRequest): void {
  clock.release()
  trace.attempts = clock.attempts
}
