import type { Config } from '../config.js'
import { type Failure, failure, failureFrom, statusFailure, type TransportContext } from '../failures.js'
import type { HeaderMap } from '../http-headers.js'
import type { RequestClock } from '../request-clock.js'
import { awaitFirstEvent } from '../streaming/sse.js'
import type { RequestSpan } from '../tracing/request-tracer.js'
import { discardBody, drainBody, readBodyUpTo, type UpstreamClient, type UpstreamResponse } from './client.js'
import { normalizeUpstreamError } from './normalize.js'
import { serverPushbackMs } from './retry-policy.js'

/**
 * One upstream attempt, start to usable answer: send; a non-2xx is read and normalised into a
 * failure; a stream must deliver its first event; anything else is read whole. Always resolves,
 * with what was served or with the failure — never a half-read response.
 */

/** What one attempt sends. The same for every retry of one model. */
export interface AttemptSpec {
  readonly method: 'GET' | 'POST'
  /** Below the base URL, with the query string. */
  readonly path: string
  readonly headers: HeaderMap
  readonly body: Buffer | undefined
  readonly stream: boolean
}

/** What the request log line reports about the upstream side of a request. */
export interface UpstreamTrace {
  model: string | undefined
  servedBy: string | undefined
  attempts: number
  upstreamMs: number | undefined
  upstreamStatus: number | undefined
  /** The request's span (tracing/request-tracer.ts): the shared no-op when tracing is off. */
  readonly span: RequestSpan
}

/** An answer ready to commit: a stream's first chunks (the body paused after them), or a whole body. */
export interface Served {
  readonly response: UpstreamResponse
  readonly firstChunks: readonly Buffer[] | undefined
  readonly body: Buffer | undefined
}

export type AttemptResult = { readonly ok: true; readonly served: Served } | { readonly ok: false; readonly failure: Failure }

export interface Attempter {
  attempt(spec: AttemptSpec, clock: RequestClock, trace: UpstreamTrace): Promise<AttemptResult>
}

export interface AttempterDeps {
  readonly upstream: UpstreamClient
  readonly timeouts: Config['upstream']
  /** The gateway's key, scrubbed from any upstream error message. */
  readonly secret: string | undefined
  readonly now: () => number
  /** Wall-clock milliseconds, for `Retry-After` HTTP-dates. */
  readonly wallClockNow: () => number
}

/** Non-streaming answers and model lists are read whole; beyond this size something is wrong. */
const MAX_BODY_BYTES = 64 * 1024 * 1024

export function createAttempter(deps: AttempterDeps): Attempter {
  const { upstream, timeouts } = deps
  const responseContext: TransportContext = {
    phase: 'response',
    connectTimeoutMs: timeouts.connectTimeoutMs,
    timeoutMs: timeouts.responseTimeoutMs,
    bodyTimeoutMs: timeouts.responseTimeoutMs,
  }
  const streamContext: TransportContext = {
    ...responseContext,
    timeoutMs: timeouts.firstByteTimeoutMs,
    bodyTimeoutMs: timeouts.streamIdleTimeoutMs,
  }

  async function attempt(spec: AttemptSpec, clock: RequestClock, trace: UpstreamTrace): Promise<AttemptResult> {
    const startedAt = deps.now()
    const context = spec.stream ? streamContext : responseContext
    let response: UpstreamResponse
    try {
      response = await upstream.send({
        method: spec.method,
        path: spec.path,
        headers: spec.headers,
        body: spec.body,
        signal: clock.signal,
        headersTimeoutMs: context.timeoutMs,
        bodyTimeoutMs: context.bodyTimeoutMs,
      })
    } catch (error: unknown) {
      return { ok: false, failure: failureFrom(error, clock.signal, context) }
    }
    trace.upstreamStatus = response.statusCode
    trace.upstreamMs = Math.round(deps.now() - startedAt)
    if (response.statusCode < 200 || response.statusCode > 299) return { ok: false, failure: await readFailure(response) }

    if (spec.stream && isEventStream(response.headers['content-type'])) {
      const firstEvent = await awaitFirstEvent(response.body, {
        firstByteTimeoutMs: timeouts.firstByteTimeoutMs,
        waitMs: timeouts.firstByteTimeoutMs - (deps.now() - startedAt),
        signal: clock.signal,
      })
      if (!Array.isArray(firstEvent)) return { ok: false, failure: firstEvent }
      trace.upstreamMs = Math.round(deps.now() - startedAt)
      return { ok: true, served: { response, firstChunks: firstEvent, body: undefined } }
    }
    if (!isJson(response.headers['content-type'])) {
      drainBody(response.body)
      const asked = spec.stream ? ' to a streaming request' : ''
      return {
        ok: false,
        failure: failure(
          'invalid_response',
          `The upstream answered ${response.statusCode} with content-type ${String(response.headers['content-type'] ?? 'none')}${asked}`,
        ),
      }
    }
    // A non-streaming answer is read whole before it is committed, so a body cut half-way is a
    // retryable failure instead of a truncated 200 — and sending a buffer is cheaper than a pipe.
    return readWhole(response, clock)
  }

  async function readFailure(response: UpstreamResponse): Promise<Failure> {
    let body: Buffer = EMPTY
    try {
      body = (await readBodyUpTo(response.body, timeouts.maxErrorBodyBytes)).bytes
    } catch {
      // A cut error body still yields an error naming the status.
    }
    const normalized = normalizeUpstreamError(response.statusCode, response.headers, body, deps.secret)
    return statusFailure(response.statusCode, normalized, serverPushbackMs(response.statusCode, response.headers, deps.wallClockNow()))
  }

  async function readWhole(response: UpstreamResponse, clock: RequestClock): Promise<AttemptResult> {
    const declaredLength = Number(response.headers['content-length'])
    if (declaredLength > MAX_BODY_BYTES) {
      discardBody(response.body)
      return { ok: false, failure: tooLarge() }
    }
    try {
      if (declaredLength >= 0) {
        // Bounded by the declared length: undici's own consumer is the cheapest way to read it.
        const bytes = await response.body.bytes()
        return {
          ok: true,
          served: { response, firstChunks: undefined, body: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength) },
        }
      }
      const read = await readBodyUpTo(response.body, MAX_BODY_BYTES)
      if (read.truncated) return { ok: false, failure: tooLarge() }
      return { ok: true, served: { response, firstChunks: undefined, body: read.bytes } }
    } catch (error: unknown) {
      return { ok: false, failure: failureFrom(error, clock.signal, responseContext) }
    }
  }

  return { attempt }
}

function tooLarge(): Failure {
  return failure('invalid_response', `The upstream response exceeded ${MAX_BODY_BYTES} bytes`)
}

function isJson(contentType: string | string[] | undefined): boolean {
  return String(contentType ?? '')
    .toLowerCase()
    .includes('json')
}

function isEventStream(contentType: string | string[] | undefined): boolean {
  return String(contentType ?? '')
    .toLowerCase()
    .includes('text/event-stream')
}

const EMPTY = Buffer.alloc(0)
