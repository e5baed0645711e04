import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Config } from './config.js'
import { proxyError, type ProxyError } from './errors.js'
import { forwardableRequestHeaders, forwardableResponseHeaders, type HeaderMap } from './http-headers.js'
import { classifyFailure, discardBody, type UpstreamClient, type UpstreamResponse } from './upstream/client.js'
import { normalizeUpstreamError } from './upstream/normalize.js'

/**
 * One proxied call: authorise, make the upstream attempt, turn an upstream error into the error
 * shape, or relay the upstream's response to the client untouched.
 */

export interface ForwardTarget {
  readonly method: 'GET' | 'POST'
  /** Upstream path below the base URL, e.g. `/chat/completions`. */
  readonly path: string
  readonly body?: Buffer | undefined
  readonly stream: boolean
  readonly model: string | undefined
}

/** What the request log line reports about the upstream side of a request. */
export interface UpstreamTrace {
  model: string | undefined
  attempts: number
  upstreamMs: number | undefined
  upstreamStatus: number | undefined
}

declare module 'fastify' {
  interface FastifyRequest {
    upstreamTrace: UpstreamTrace | null
  }
}

export interface Forwarder {
  forward(request: FastifyRequest, reply: FastifyReply, target: ForwardTarget): Promise<FastifyReply>
  /** One upstream attempt whose successful body the caller reads in full (for /models). */
  fetchBuffered(request: FastifyRequest, reply: FastifyReply, target: ForwardTarget): Promise<BufferedResponse>
}

export interface BufferedResponse {
  readonly statusCode: number
  readonly headers: HeaderMap
  readonly body: Buffer
}

export function createForwarder(config: Config, upstream: UpstreamClient): Forwarder {
  const configuredAuthorization = config.apiKey === undefined ? undefined : `Bearer ${config.apiKey}`
  const timeouts = config.upstream
  const maxErrorBodyBytes = config.upstream.maxErrorBodyBytes
  const secret = config.apiKey
  const maxSuccessBodyBytes = 64 * 1024 * 1024
  const readTimeouts = { headersTimeoutMs: timeouts.responseTimeoutMs, bodyTimeoutMs: timeouts.responseTimeoutMs, signal: new AbortController().signal }

  function upstreamHeaders(request: FastifyRequest, target: ForwardTarget): HeaderMap {
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
    if (target.body !== undefined) {
      headers['content-type'] = 'application/json'
      headers['content-length'] = String(target.body.length)
    }
    return headers
  }

  async function attempt(request: FastifyRequest, reply: FastifyReply, target: ForwardTarget): Promise<UpstreamResponse> {
    const headers = upstreamHeaders(request, target)
    const trace: UpstreamTrace = { model: target.model, attempts: 0, upstreamMs: undefined, upstreamStatus: undefined }
    request.upstreamTrace = trace
    const controller = new AbortController()
    const abortOnClientGone = () => {
      if (!reply.raw.writableFinished) controller.abort()
    }
    reply.raw.once('close', abortOnClientGone)
    const search = querySuffix(request.url)
    const startedAt = performance.now()
    trace.attempts += 1
    const response = await upstream.attempt({
      method: target.method,
      path: target.path + search,
      headers,
      body: target.body,
      signal: controller.signal,
      headersTimeoutMs: target.stream ? timeouts.firstByteTimeoutMs : timeouts.responseTimeoutMs,
      bodyTimeoutMs: target.stream ? timeouts.streamIdleTimeoutMs : timeouts.responseTimeoutMs,
    })
    trace.upstreamMs = Math.round(performance.now() - startedAt)
    trace.upstreamStatus = response.statusCode
    reply.header('x-proxy-attempts', String(trace.attempts))
    if (response.statusCode < 200 || response.statusCode > 299) {
      throw await upstreamError(response)
    }
    return response
  }

  async function upstreamError(response: UpstreamResponse): Promise<ProxyError> {
    let body: Buffer | undefined
    try {
      body = await readBounded(response.body, maxErrorBodyBytes)
    } catch {
      body = undefined // a cut error body still yields an error naming the status
    }
    return normalizeUpstreamError(response.statusCode, response.headers, body ?? Buffer.alloc(0), secret)
  }

  return {
    async forward(request, reply, target) {
      const response = await attempt(request, reply, target)
      if (!isExpectedContentType(response.headers['content-type'], target.stream)) {
        discardBody(response.body)
        throw proxyError(
          'invalid_upstream_response',
          `The upstream answered ${response.statusCode} with content-type ${String(response.headers['content-type'] ?? 'none')}`,
        )
      }
      reply.code(response.statusCode)
      reply.headers(forwardableResponseHeaders(response.headers, !target.stream, secret))
      if (target.stream) {
        reply.header('cache-control', response.headers['cache-control'] ?? 'no-cache')
        reply.header('x-accel-buffering', 'no')
      }
      return reply.send(response.body)
    },

    async fetchBuffered(request, reply, target) {
      const response = await attempt(request, reply, target)
      let body: Buffer | undefined
      try {
        body = await readBounded(response.body, maxSuccessBodyBytes)
      } catch (err: unknown) {
        throw classifyFailure(err, readTimeouts, timeouts.connectTimeoutMs)
      }
      if (body === undefined) throw proxyError('invalid_upstream_response', `The upstream response exceeded ${maxSuccessBodyBytes} bytes`)
      if (!isExpectedContentType(response.headers['content-type'], false)) {
        throw proxyError('invalid_upstream_response', `The upstream answered ${response.statusCode} with content-type ${String(response.headers['content-type'] ?? 'none')}`)
      }
      return { statusCode: response.statusCode, headers: forwardableResponseHeaders(response.headers, false, secret), body }
    },
  }
}

function querySuffix(url: string): string {
  const index = url.indexOf('?')
  return index === -1 ? '' : url.slice(index)
}

function isExpectedContentType(contentType: string | string[] | undefined, stream: boolean): boolean {
  const value = String(contentType ?? '').toLowerCase()
  if (value.includes('json')) return true
  return stream && value.includes('text/event-stream')
}

/** Reads a body up to `limitBytes`; beyond that the rest is discarded and undefined returned. */
export async function readBounded(body: UpstreamResponse['body'], limitBytes: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = []
  let length = 0
  for await (const chunk of body) {
    length += chunk.length
    if (length > limitBytes) {
      discardBody(body)
      return undefined
    }
    chunks.push(chunk)
  }
  return Buffer.concat(chunks, length)
}
