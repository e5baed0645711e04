import type { OutgoingHttpHeaders, ServerResponse } from 'node:http'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Config } from './config.js'
import { proxyError, type ProxyError } from './errors.js'
import { forwardableRequestHeaders, forwardableResponseHeaders, type HeaderMap } from './http-headers.js'
import type { Metrics } from './metrics.js'
import type { ChatRequest } from './routes/chat-completions.js'
import { awaitFirstEvent, relayStream } from './streaming/sse.js'
import { classifyFailure, discardBody, drainBody, failure, readBodyUpTo, type UpstreamClient, type UpstreamResponse } from './upstream/client.js'
import { DEADLINE, UpstreamStatusError, type RequestBudget, type Retrier } from './upstream/retrier.js'
import type { RetryBudget } from './upstream/retry-budget.js'
import { RequestSignal } from './upstream/request-signal.js'

/**
 * One proxied call from the client's point of view: authorise, run the model chain (primary, then
 * fallbacks) through the retrier, then commit the winning response to the client — for a stream,
 * only once its first event has arrived — or render the last error.
 */

/** What the request log line reports about the upstream side of a request. */
export interface UpstreamTrace {
  model: string | undefined
  servedBy: string | undefined
  attempts: number
  upstreamMs: number | undefined
  upstreamStatus: number | undefined
}

declare module 'fastify' {
  interface FastifyRequest {
    upstreamTrace: UpstreamTrace | null
    /** Set once the request's log line and metrics sample are written. */
    recorded: boolean
    receivedAtMs: number
  }
}

export interface BufferedResponse {
  readonly statusCode: number
  readonly headers: HeaderMap
  readonly body: Buffer
}

export interface Forwarder {
  chat(request: FastifyRequest, reply: FastifyReply, chat: ChatRequest): Promise<FastifyReply>
  /** GET {baseUrl}{path} through the `/models` breaker and the retrier, read in full. */
  fetchModels(request: FastifyRequest, reply: FastifyReply, path: string): Promise<BufferedResponse>
}

export interface ForwarderDeps {
  readonly config: Config
  readonly upstream: UpstreamClient
  readonly retrier: Retrier
  /** The retrier over the `/models` breaker, kept apart so no chat model id can share it. */
  readonly modelsRetrier: Retrier
  readonly budget: RetryBudget
  readonly metrics: Metrics
  readonly now: () => number
}

interface Attempted {
  readonly response: UpstreamResponse
  /** For streams: the chunks read up to and including the first event. */
  readonly firstChunks: readonly Buffer[] | undefined
  /** For everything else: the whole body, read before anything is committed to the client. */
  readonly body: Buffer | undefined
}

/** Non-streaming answers and model lists are read whole; beyond this size something is wrong. */
const MAX_BODY_BYTES = 64 * 1024 * 1024
export const MODELS_BREAKER_KEY = '/models'

export function createForwarder(deps: ForwarderDeps): Forwarder {
  const { config, upstream, retrier, modelsRetrier, budget, metrics } = deps
  const configuredAuthorization = config.apiKey === undefined ? undefined : `Bearer ${config.apiKey}`
  const secret = config.apiKey
  const timeouts = config.upstream

  function upstreamHeaders(request: FastifyRequest, hasBody: boolean): HeaderMap {
    const headers = forwardableRequestHeaders(request.headers)
    if (configuredAuthorization !== undefined) {
      headers.authorization = configuredAuthorization
      delete headers['x-api-key']
    } else if (headers.authorization === undefined || headers.authorization === '') {
      throw proxyError('missing_api_key')
    }
    // Identity keeps success bodies byte-identical and SSE readable event by event.
    headers['accept-encoding'] = 'identity'
    headers['x-request-id'] = request.id
    if (hasBody) headers['content-type'] = 'application/json'
    return headers
  }

  /** The request's deadline and the abort signal that fires when the client leaves or it passes. */
  function startRequestClock(request: FastifyRequest, reply: FastifyReply, followClient: boolean): RequestClock {
    const stainlessTimeout = request.headers['x-stainless-timeout']
    const stainlessTimeoutS = stainlessTimeout === undefined ? NaN : Number(stainlessTimeout)
    const deadlineMs = stainlessTimeoutS > 0 ? Math.min(timeouts.requestTimeoutMs, stainlessTimeoutS * 1000) : timeouts.requestTimeoutMs
    const retryHeader = request.headers['x-stainless-retry-count']
    const retryCount = retryHeader === undefined ? 0 : Number(retryHeader)
    return new RequestClock(reply.raw, deadlineMs, deps.now(), retryCount > 0 ? retryCount : 0, followClient)
  }

  function traceOf(request: FastifyRequest, model: string | undefined): UpstreamTrace {
    const trace: UpstreamTrace = { model, servedBy: undefined, attempts: 0, upstreamMs: undefined, upstreamStatus: undefined }
    request.upstreamTrace = trace
    return trace
  }

  /** One attempt: send, then require 2xx (else throw for the breaker), and for SSE the first event. */
  async function attemptOnce(
    requestBudget: RequestBudget,
    trace: UpstreamTrace,
    options: { path: string; method: 'GET' | 'POST'; headers: HeaderMap; body: Buffer | undefined; stream: boolean },
  ): Promise<Attempted> {
    const startedAt = deps.now()
    const firstByteMs = options.stream ? timeouts.firstByteTimeoutMs : timeouts.responseTimeoutMs
    let response: UpstreamResponse
    try {
      response = await upstream.attempt({
        method: options.method,
        path: options.path,
        headers: options.headers,
        body: options.body,
        signal: requestBudget.signal,
        headersTimeoutMs: firstByteMs,
        bodyTimeoutMs: options.stream ? timeouts.streamIdleTimeoutMs : timeouts.responseTimeoutMs,
      })
    } catch (error: unknown) {
      throw deadlineAware(error, requestBudget)
    }
    trace.upstreamStatus = response.statusCode
    trace.upstreamMs = Math.round(deps.now() - startedAt)
    if (response.statusCode < 200 || response.statusCode > 299) throw new UpstreamStatusError(response)
    if (options.stream && isEventStream(response.headers['content-type'])) {
      try {
        const remainingMs = firstByteMs - (deps.now() - startedAt)
        const firstChunks = await awaitFirstEvent(response.body, remainingMs, requestBudget.signal)
        trace.upstreamMs = Math.round(deps.now() - startedAt)
        return { response, firstChunks, body: undefined }
      } catch (error: unknown) {
        throw deadlineAware(error, requestBudget)
      }
    }
    if (!isJson(response.headers['content-type'])) {
      drainBody(response.body)
      throw proxyError(
        'invalid_upstream_response',
        `The upstream answered ${response.statusCode} with content-type ${String(response.headers['content-type'] ?? 'none')}${options.stream ? ' to a streaming request' : ''}`,
      )
    }
    // A non-streaming answer is read whole before it is committed, so a body cut half-way is a
    // retryable failure instead of a truncated 200 — and sending a buffer is cheaper than a pipe.
    return { response, firstChunks: undefined, body: await readAll(response, requestBudget) }
  }

  function commit(reply: FastifyReply, model: string, requestBudget: RequestBudget, attempted: Attempted): FastifyReply {
    const { response, firstChunks, body } = attempted
    reply.code(response.statusCode)
    reply.headers(forwardableResponseHeaders(response.headers, false, secret))
    reply.header('x-proxy-attempts', String(requestBudget.attempts))
    reply.header('x-proxy-model', model)
    if (firstChunks === undefined) return reply.send(body)
    reply.header('cache-control', response.headers['cache-control'] ?? 'no-cache')
    reply.header('x-accel-buffering', 'no')
    // The relay writes to the socket itself: a stream in between (what reply.send(stream) needs)
    // costs more per chunk than everything else the proxy does to it. Fastify's hooks do not run
    // for a hijacked reply; app.ts records the request when the response closes.
    reply.hijack()
    reply.raw.writeHead(response.statusCode, reply.getHeaders() as OutgoingHttpHeaders)
    relayStream(response.body, firstChunks, reply.raw, {
      idleTimeoutMs: timeouts.streamIdleTimeoutMs,
      onEnd: (ending) => {
        metrics.streamEnding(model, ending)
        if (ending === 'cut' || ending === 'stalled') reply.log.warn({ model, ending }, 'stream ended with an error event')
      },
    })
    return reply
  }

  return {
    async chat(request, reply, chat) {
      const trace = traceOf(request, chat.model)
      const headers = upstreamHeaders(request, true)
      const chain = modelChain(chat, config.fallbacks)
      const requestBudget = startRequestClock(request, reply, true)
      budget.recordRequest()
      let lastError: ProxyError | undefined
      try {
        for (let index = 0; index < chain.length; index++) {
          const model = chain[index] as string
          if (index > 0) {
            metrics.fallback(chain[index - 1] as string, model)
            request.log.warn({ from: chain[index - 1], to: model, code: lastError?.code }, 'falling back to the next model')
          }
          const body = bodyFor(chat, model)
          headers['content-length'] = String(body.length)
          const outcome = await retrier.run(
            request.log,
            model,
            requestBudget,
            () => attemptOnce(requestBudget, trace, { path: '/chat/completions' + querySuffix(request.url), method: 'POST', headers, body, stream: chat.stream }),
            { hasNextModel: index < chain.length - 1 },
          )
          trace.attempts = requestBudget.attempts
          if (outcome.ok) {
            requestBudget.release()
            trace.servedBy = model
            return commit(reply, model, requestBudget, outcome.value)
          }
          lastError = outcome.error
          if (!outcome.fallbackEligible) break
        }
      } finally {
        trace.attempts = requestBudget.attempts
        requestBudget.release()
        // Also when the deadline or a client abort ends the chain by throwing.
        if (!reply.sent) reply.header('x-proxy-attempts', String(requestBudget.attempts))
      }
      throw lastError ?? proxyError('internal_error')
    },

    async fetchModels(request, reply, path) {
      const trace = traceOf(request, undefined)
      const headers = upstreamHeaders(request, false)
      // Not tied to this client: the fetch is shared by every caller waiting on the cache.
      const requestBudget = startRequestClock(request, reply, false)
      budget.recordRequest()
      try {
        const outcome = await modelsRetrier.run(
          request.log,
          MODELS_BREAKER_KEY,
          requestBudget,
          async () => {
            const { response, body } = await attemptOnce(requestBudget, trace, { path, method: 'GET', headers, body: undefined, stream: false })
            return { statusCode: response.statusCode, headers: forwardableResponseHeaders(response.headers, false, secret), body: body ?? Buffer.alloc(0) }
          },
          { hasNextModel: false },
        )
        if (!outcome.ok) throw outcome.error
        return outcome.value
      } finally {
        trace.attempts = requestBudget.attempts
        requestBudget.release()
        if (!reply.sent) reply.header('x-proxy-attempts', String(requestBudget.attempts))
      }
    },
  }
}

/** The primary model, then the request's own `fallbacks`, then the configured ones; no repeats. */
export function modelChain(chat: ChatRequest, configured: Config['fallbacks']): string[] {
  const chain = [chat.model]
  for (const model of [...chat.fallbacks, ...(configured[chat.model] ?? [])]) {
    if (!chain.includes(model)) chain.push(model)
  }
  return chain
}

/** The client's own bytes when nothing changes; otherwise the body with `model` set and `fallbacks` stripped. */
function bodyFor(chat: ChatRequest, model: string): Buffer {
  if (model === chat.model && !chat.hasFallbacksField) return chat.body
  const { fallbacks: _stripped, ...rest } = chat.parsed
  return Buffer.from(JSON.stringify({ ...rest, model }))
}

/** Reads a whole success body, up to MAX_BODY_BYTES; a failure mid-body is a retryable UpstreamFailure. */
async function readAll(response: UpstreamResponse, requestBudget: RequestBudget): Promise<Buffer> {
  const declaredLength = Number(response.headers['content-length'])
  if (declaredLength > MAX_BODY_BYTES) {
    discardBody(response.body)
    throw proxyError('invalid_upstream_response', `The upstream response exceeded ${MAX_BODY_BYTES} bytes`)
  }
  let read: { bytes: Buffer; truncated: boolean }
  try {
    if (declaredLength >= 0) {
      // Bounded by the declared length: undici's own consumer is the cheapest way to read it.
      const bytes = await response.body.bytes()
      read = { bytes: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), truncated: false }
    } else {
      read = await readBodyUpTo(response.body, MAX_BODY_BYTES)
    }
  } catch (error: unknown) {
    throw deadlineAware(classifyFailure(error, { headersTimeoutMs: 0, bodyTimeoutMs: 0, signal: requestBudget.signal }, 0), requestBudget)
  }
  if (read.truncated) throw proxyError('invalid_upstream_response', `The upstream response exceeded ${MAX_BODY_BYTES} bytes`)
  return read.bytes
}

/** An abort caused by the deadline is a timeout (a breaker failure), not a client abort. */
function deadlineAware(error: unknown, requestBudget: RequestBudget): unknown {
  if (requestBudget.signal.aborted && requestBudget.signal.reason === DEADLINE) {
    return failure('deadline', 'upstream_timeout', 'The request deadline passed before the upstream answered')
  }
  return error
}

function querySuffix(url: string): string {
  const index = url.indexOf('?')
  return index === -1 ? '' : url.slice(index)
}

function isJson(contentType: string | string[] | undefined): boolean {
  return String(contentType ?? '').toLowerCase().includes('json')
}

function isEventStream(contentType: string | string[] | undefined): boolean {
  return String(contentType ?? '').toLowerCase().includes('text/event-stream')
}

const CLOCK_OF = Symbol('toprouter.requestClock')

/**
 * A request's deadline and abort signal, as one object with no per-request closures: the
 * response's `close` and the deadline timer both find it through plain references.
 */
class RequestClock implements RequestBudget {
  readonly signal = new RequestSignal()
  readonly deadlineAtMs: number
  readonly clientRetryCount: number
  attempts = 0
  private readonly response: ServerResponse & { [CLOCK_OF]?: RequestClock }
  private readonly deadlineTimer: NodeJS.Timeout
  private released = false

  constructor(response: ServerResponse, deadlineMs: number, nowMs: number, clientRetryCount: number, followClient: boolean) {
    this.response = response
    this.deadlineAtMs = nowMs + deadlineMs
    this.clientRetryCount = clientRetryCount
    this.deadlineTimer = setTimeout(abortAtDeadline, deadlineMs, this.signal)
    if (followClient) {
      this.response[CLOCK_OF] = this
      this.response.once('close', abortWhenClientLeaves)
    }
  }

  /** Once a response is committed, the deadline no longer applies and the relay owns aborts. */
  release(): void {
    if (this.released) return
    this.released = true
    clearTimeout(this.deadlineTimer)
    this.response.off('close', abortWhenClientLeaves)
  }
}

function abortAtDeadline(signal: RequestSignal): void {
  signal.abort(DEADLINE)
}

function abortWhenClientLeaves(this: ServerResponse & { [CLOCK_OF]?: RequestClock }): void {
  if (!this.writableFinished) this[CLOCK_OF]?.signal.abort()
}
