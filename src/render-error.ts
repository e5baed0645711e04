import type { FastifyError, FastifyReply } from 'fastify'
import { ProxyError, proxyError } from './errors.js'

/**
 * The one renderer of errors: whatever went wrong, the client gets the error shape, the right
 * status, `content-type: application/json` and `x-should-retry: false` (the proxy owns retrying,
 * and the OpenAI SDK obeys that header).
 */

/** Headers the renderer owns; an upstream's copies of them are never passed on with an error. */
const RENDERER_OWNED = new Set(['content-type', 'content-length', 'x-should-retry', 'x-request-id'])

export function sendError(reply: FastifyReply, error: ProxyError): FastifyReply {
  if (error.headers !== undefined) {
    for (const name in error.headers) {
      if (!RENDERER_OWNED.has(name)) reply.header(name, error.headers[name])
    }
  }
  reply.code(error.status)
  reply.header('content-type', 'application/json; charset=utf-8')
  reply.header('x-should-retry', 'false')
  return reply.send(JSON.stringify(error.toBody()))
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
