import type { Config } from '../config.js'
import { type Failure, failure, failureFrom, statusFailure, type TransportContext } from '../failures.js'
import type { HeaderMap } from '../http-headers.js'
import type { RequestClock } from '../request-clock.js'
import { awaitFirstEvent } from '../streaming/sse.js'
import type { RequestSpan } from '../tracing/request-tracer.js'
import {
  discardBody,
  drainBody,
  type ReceivedResponse,
  readBodyUpTo,
  type SendOptions,
  type UpstreamClient,
  type UpstreamResponse,
  type UpstreamResponseHead,
} from './client.js'
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
export type Served =
  | { readonly response: UpstreamResponse; readonly firstChunks: readonly Buffer[]; readonly body: undefined }
  | { readonly response: UpstreamResponseHead; readonly firstChunks: undefined; readonly body: Buffer }

/** A stream, committed at its first event. */
export type ServedStream = Extract<Served, { readonly body: undefined }>

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
/** A 2xx that is not JSON is read this far, so that its connection can be kept, then cut (drainBody's limit). */
const DRAINED_BODY_BYTES = 64 * 1024

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

  /** Past these, a body is cut short: an error body, a 2xx that is not JSON (only its status matters), any other. */
  function bodyLimit(head: UpstreamResponseHead): number {
    if (head.statusCode < 200 || head.statusCode > 299) return timeouts.maxErrorBodyBytes
    if (!isJson(head.headers['content-type'])) return DRAINED_BODY_BYTES
    return Number(head.headers['content-length']) > MAX_BODY_BYTES ? 0 : MAX_BODY_BYTES
  }

  /**
   * An attempt whose answer is read whole (not a stream): a non-2xx is normalised into a failure,
   * a 2xx must be JSON and whole. A body read whole before it is committed makes a body cut
   * half-way a retryable failure instead of a truncated 200.
   */
  async function receiveWhole(spec: AttemptSpec, clock: RequestClock, trace: UpstreamTrace): Promise<AttemptResult> {
    const startedAt = deps.now()
    let received: ReceivedResponse
    try {
      received = await upstream.receive({
        ...sendOptions(spec, clock, responseContext),
        bodyLimit,
        onHead(head) {
          trace.upstreamStatus = head.statusCode
          trace.upstreamMs = Math.round(deps.now() - startedAt)
        },
      })
    } catch (error: unknown) {
      return { ok: false, failure: failureFrom(error, clock.signal, responseContext) }
    }
    const { statusCode, headers } = received
    // A cut error body still yields an error naming the status.
    if (statusCode < 200 || statusCode > 299)
      return { ok: false, failure: failureOf(received, received.bodyError === undefined ? received.body : EMPTY) }
    if (!isJson(headers['content-type'])) return { ok: false, failure: notJson(statusCode, headers, false) }
    if (received.truncated) return { ok: false, failure: tooLarge() }
    if (received.bodyError !== undefined) return { ok: false, failure: failureFrom(received.bodyError, clock.signal, responseContext) }
    return { ok: true, served: { response: { statusCode, headers }, firstChunks: undefined, body: received.body } }
  }

  async function attempt(spec: AttemptSpec, clock: RequestClock, trace: UpstreamTrace): Promise<AttemptResult> {
    if (!spec.stream) return receiveWhole(spec, clock, trace)
    const startedAt = deps.now()
    const context = streamContext
    let response: UpstreamResponse
    try {
      response = await upstream.send(sendOptions(spec, clock, context))
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
      return { ok: false, failure: notJson(response.statusCode, response.headers, true) }
    }
    // A stream asked for and a JSON answer given: read whole, as receiveWhole does.
    return readWhole(response, clock)
  }

  async function readFailure(response: UpstreamResponse): Promise<Failure> {
    let body: Buffer = EMPTY
    try {
      body = (await readBodyUpTo(response.body, timeouts.maxErrorBodyBytes)).bytes
    } catch {
      // A cut error body still yields an error naming the status.
    }
    return failureOf(response, body)
  }

  function failureOf(head: UpstreamResponseHead, body: Buffer): Failure {
    const normalized = normalizeUpstreamError(head.statusCode, head.headers, body, deps.secret)
    return statusFailure(head.statusCode, normalized, serverPushbackMs(head.statusCode, head.headers, deps.wallClockNow()))
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

function sendOptions(spec: AttemptSpec, clock: RequestClock, context: TransportContext): SendOptions {
  return {
    method: spec.method,
    path: spec.path,
    headers: spec.headers,
    body: spec.body,
    signal: clock.signal,
    headersTimeoutMs: context.timeoutMs,
    bodyTimeoutMs: context.bodyTimeoutMs,
  }
}

function notJson(statusCode: number, headers: UpstreamResponseHead['headers'], streamAsked: boolean): Failure {
  const asked = streamAsked ? ' to a streaming request' : ''
  return failure(
    'invalid_response',
    `The upstream answered ${statusCode} with content-type ${String(headers['content-type'] ?? 'none')}${asked}`,
  )
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
