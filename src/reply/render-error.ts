import { randomUUID } from 'node:crypto'
import { STATUS_CODES } from 'node:http'
import type { Duplex } from 'node:stream'
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { ProxyError, proxyError } from '../errors.js'
import { isRateLimitHeader } from '../http-headers.js'

/**
 * The one renderer of errors: whatever went wrong, the client gets the error shape, the right
 * status, `content-type: application/json` and `x-should-retry: false` (the proxy owns retrying,
 * and the OpenAI SDK obeys that header).
 */

/** Headers the renderer owns; an upstream's copies of them are never passed on with an error. */
const RENDERER_OWNED = new Set(['content-type', 'content-length', 'x-should-retry', 'x-request-id'])

/**
 * `rateLimitHeaders` (team mode): the member key's own `x-ratelimit-*`, sent instead of the
 * upstream's, which describe the gateway's shared key.
 */
export function sendError(reply: FastifyReply, error: ProxyError, rateLimitHeaders?: Readonly<Record<string, string>>): FastifyReply {
  if (error.headers !== undefined) {
    for (const name in error.headers) {
      if (RENDERER_OWNED.has(name) || (rateLimitHeaders !== undefined && isRateLimitHeader(name))) continue
      reply.header(name, error.headers[name])
    }
  }
  if (rateLimitHeaders !== undefined) reply.headers(rateLimitHeaders)
  reply.code(error.status)
  // For the request's end (request-log.ts): the status page's last errors show the code.
  reply.request.errorCode = error.code
  reply.header('content-type', 'application/json; charset=utf-8')
  reply.header('x-should-retry', 'false')
  return reply.send(JSON.stringify(error.toBody()))
}

/**
 * Fastify's error handler: whatever a route or a hook threw is answered in the error shape. Only
 * an unexpected error is logged as one; once the answer has started, the socket is cut instead.
 */
export function replyWithError(error: unknown, request: FastifyRequest, reply: FastifyReply): FastifyReply | undefined {
  const proxyErr = toProxyError(error)
  if (proxyErr.status >= 500 && proxyErr.code === 'internal_error') {
    request.log.error({ err: error }, 'unexpected error')
  }
  if (reply.sent || reply.raw.headersSent) {
    reply.raw.destroy()
    return undefined
  }
  return sendError(reply, proxyErr)
}

/** Fastify's own errors → registry errors, so none of Fastify's default bodies ever reach a client. */
export function toProxyError(error: unknown): ProxyError {
  if (error instanceof ProxyError) return error
  const fastifyError = error as Partial<FastifyError>
  switch (fastifyError.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return proxyError('request_too_large', fastifyError.message)
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return proxyError('unsupported_media_type')
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return proxyError('invalid_json', 'Request body is empty; expected a JSON object')
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return proxyError('invalid_request', 'Content-Length does not match the body')
    case 'FST_ERR_BAD_URL':
    case 'FST_ERR_ASYNC_CONSTRAINT':
      return proxyError('invalid_request', 'Malformed request URL')
    default:
      break
  }
  if (fastifyError.statusCode === 413) return proxyError('request_too_large')
  if (fastifyError.statusCode === 415) return proxyError('unsupported_media_type')
  if ((fastifyError.statusCode ?? 500) < 500 && fastifyError.statusCode !== undefined) {
    // A client-side protocol problem Fastify detected (aborted body, bad encoding…).
    return proxyError('invalid_request', 'The request could not be read')
  }
  return proxyError('internal_error')
}

/** Requests Node's parser rejects (hostile headers, bad framing) still get the error shape. */
export function answerMalformedRequest(error: Error & { code?: string }, socket: Duplex): void {
  const rejection =
    error.code === 'HPE_HEADER_OVERFLOW'
      ? proxyError('headers_too_large')
      : error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? proxyError('request_timeout')
        : proxyError('invalid_request', 'Malformed HTTP request')
  writeRawError(socket, rejection)
}

/**
 * Writes an error straight to a socket and closes it, for requests that never reach Fastify (the
 * parser refused them, or Node handed over the socket itself, as for CONNECT).
 */
export function writeRawError(socket: Duplex, rejection: ProxyError): void {
  if (!socket.writable) {
    socket.destroy()
    return
  }
  const body = JSON.stringify(rejection.toBody())
  socket.end(
    `HTTP/1.1 ${rejection.status} ${STATUS_CODES[rejection.status] ?? ''}\r\n` +
      'content-type: application/json; charset=utf-8\r\n' +
      `content-length: ${Buffer.byteLength(body)}\r\n` +
      `x-request-id: ${randomUUID()}\r\n` +
      'x-should-retry: false\r\n' +
      'connection: close\r\n\r\n' +
      body,
    // The server keeps half-open sockets; one the client never closes would hold a shutdown open.
    () => socket.destroy(),
  )
}
