import type { IncomingHttpHeaders } from 'node:http'
import type { HeaderMap } from '../http-headers.js'
import type { ChunkTap } from '../streaming/sse.js'

/**
 * Tracing in the proxy's own terms: a span per request, a child span per upstream attempt. The
 * request path only ever calls these methods; with tracing off (no `OTEL_EXPORTER_OTLP_ENDPOINT`)
 * they are the shared frozen no-ops below, so an untraced request allocates nothing for tracing
 * and loads nothing of OpenTelemetry. The OpenTelemetry implementation is otel-tracer.ts, which
 * main.ts imports dynamically only when tracing is on.
 */

export type AttemptBreakerState = 'closed' | 'open' | 'half_open'

/** How an attempt ended, and what the retrier made of it. Built only when the span is recording. */
export interface AttemptEnd {
  /** The upstream's HTTP status, when it answered. */
  readonly upstreamStatus?: number | undefined
  /** The failure's label (`status_503`, `timeout`, `breaker_open`…); undefined when it served. */
  readonly failure?: string | undefined
  /** The server's pushback (Retry-After and the like), in ms. */
  readonly pushbackMs?: number | undefined
  /** Why another attempt follows (the failure's label), when one does. */
  readonly retryReason?: string | undefined
  readonly retryDelayMs?: number | undefined
  /** `server` (its pushback) or `backoff`. */
  readonly retryDelaySource?: string | undefined
  /** Why no other attempt of this model follows, when it failed and none does. */
  readonly notRetried?: string | undefined
  /** The model's breaker as the attempt went through it. */
  readonly breakerState?: AttemptBreakerState | undefined
}

export interface AttemptSpan {
  /** False for the no-op: callers skip building what only a recording span reads. */
  readonly recording: boolean
  /** Sets this attempt's W3C `traceparent` (and `tracestate`) on the upstream headers. */
  inject(headers: HeaderMap): void
  end(details: AttemptEnd): void
}

export interface RequestSpan {
  readonly recording: boolean
  /** Starts the span of one upstream attempt (`attemptForModel` counts from 1 per model). */
  attempt(model: string, attemptForModel: number): AttemptSpan
  /** The chain moves on from `from` to `to`; the next attempts are at the next fallback hop. */
  fallback(from: string, to: string): void
  /** What was served (`gen_ai.response.*`, usage): a whole JSON body, or a stream's first chunks. */
  served(model: string, body: Buffer | undefined, firstChunks: readonly Buffer[] | undefined): void
  /**
   * The tap a committed stream is relayed through: `inner` (team mode's or continuation's), seen
   * by the span first when it records (a usage chunk → `gen_ai.usage.*`); the no-op returns `inner`.
   */
  streamTap(inner: ChunkTap | undefined): ChunkTap | undefined
  /** The request is over (request-log.ts): its status, the attempts sent, and whether the client left. */
  end(status: number, attempts: number, clientGone: boolean): void
}

export interface RequestTracer {
  /** False for NO_TRACER: the caller then uses NO_REQUEST_SPAN without computing the arguments. */
  readonly enabled: boolean
  /**
   * The span of a request about to go upstream; `incoming` may carry the client's `traceparent`,
   * which the span continues. `elapsedMs`: how long ago the request arrived.
   */
  startRequest(method: string, route: string, incoming: IncomingHttpHeaders, model: string | undefined, elapsedMs: number): RequestSpan
  /** Exports what is still buffered and stops; called once every request has ended. */
  shutdown(): Promise<void>
}

function nothing(): void {}

export const NO_ATTEMPT_SPAN: AttemptSpan = Object.freeze({ recording: false, inject: nothing, end: nothing })

export const NO_REQUEST_SPAN: RequestSpan = Object.freeze({
  recording: false,
  attempt: () => NO_ATTEMPT_SPAN,
  fallback: nothing,
  served: nothing,
  streamTap: (inner: ChunkTap | undefined) => inner,
  end: nothing,
})

/** Tracing off: every request gets the same frozen no-op span. */
export const NO_TRACER: RequestTracer = Object.freeze({
  enabled: false,
  startRequest: () => NO_REQUEST_SPAN,
  shutdown: async () => {},
})

/**
 * Whether the environment asks for traces: an OTLP endpoint (the general or the traces one), and
 * neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`.
 */
export function tracingRequested(env: NodeJS.ProcessEnv): boolean {
  const endpoint = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || env.OTEL_EXPORTER_OTLP_ENDPOINT
  if (endpoint === undefined || endpoint.trim() === '') return false
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return false
  return env.OTEL_TRACES_EXPORTER?.trim().toLowerCase() !== 'none'
}
