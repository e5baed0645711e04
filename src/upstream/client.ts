import type { IncomingHttpHeaders } from 'node:http'
import { Pool } from 'undici'
import type { Dispatcher } from 'undici'
import type { Config } from '../config.js'
import { ERROR_REGISTRY, type ErrorCode, ProxyError, withoutStack } from '../errors.js'
import type { HeaderMap } from '../http-headers.js'
import type { RequestSignal } from './request-signal.js'

/**
 * The one place where one upstream attempt happens: a keep-alive undici Pool to the upstream's
 * origin, built once. Retries, breakers and fallbacks wrap `attempt()`; they never talk to the
 * network themselves.
 */

export interface AttemptOptions {
  readonly method: 'GET' | 'POST'
  /** Path below the base URL, with its query string, e.g. `/chat/completions?x=1`. */
  readonly path: string
  readonly headers: HeaderMap
  readonly body?: Buffer | undefined
  readonly signal: RequestSignal
  /** How long to wait for the response headers. */
  readonly headersTimeoutMs: number
  /** How long the body may go silent between two chunks. */
  readonly bodyTimeoutMs: number
}

export interface UpstreamResponse {
  readonly statusCode: number
  readonly headers: IncomingHttpHeaders
  readonly body: Dispatcher.ResponseData['body']
}

/** Why an attempt failed before a response arrived; the retrier decides on these. */
export type FailureKind =
  | 'connect'
  | 'connect_timeout'
  | 'reset'
  | 'headers_timeout'
  | 'first_byte_timeout'
  | 'body_timeout'
  | 'tls'
  | 'deadline'
  | 'aborted'

export class UpstreamFailure extends ProxyError {
  readonly kind: FailureKind
  constructor(kind: FailureKind, status: number, type: string, code: string, message: string) {
    super(status, type, code, message)
    this.kind = kind
  }
}

export function failure(kind: FailureKind, code: ErrorCode, message: string): UpstreamFailure {
  const entry = ERROR_REGISTRY[code]
  return withoutStack(() => new UpstreamFailure(kind, entry.status, entry.type, code, message))
}

export interface UpstreamClient {
  readonly origin: string
  attempt(options: AttemptOptions): Promise<UpstreamResponse>
  close(): Promise<void>
}

export function buildUpstreamClient(upstream: Config['upstream']): UpstreamClient {
  const url = new URL(upstream.baseUrl)
  const basePath = url.pathname.replace(/\/+$/, '')
  const pool = new Pool(url.origin, {
    connections: upstream.maxConnections,
    pipelining: 1,
    keepAliveTimeout: upstream.keepAliveTimeoutMs,
    connect: { timeout: upstream.connectTimeoutMs, rejectUnauthorized: true },
  })

  async function attempt(options: AttemptOptions): Promise<UpstreamResponse> {
    try {
      const response = await pool.request({
        method: options.method,
        path: basePath + options.path,
        headers: options.headers,
        body: options.body ?? null,
        signal: options.signal,
        headersTimeout: options.headersTimeoutMs,
        bodyTimeout: options.bodyTimeoutMs,
      })
      return { statusCode: response.statusCode, headers: response.headers, body: response.body }
    } catch (err: unknown) {
      throw classifyFailure(err, options, upstream.connectTimeoutMs)
    }
  }

  return {
    origin: url.origin,
    attempt,
    async close() {
      await pool.close()
    },
  }
}

/** An undici error → what the client will see. Expected network failures carry no stack. */
export function classifyFailure(err: unknown, options: Pick<AttemptOptions, 'headersTimeoutMs' | 'bodyTimeoutMs' | 'signal'>, connectTimeoutMs: number): UpstreamFailure {
  const code = (err as { code?: unknown }).code
  const name = (err as { name?: unknown }).name
  if (options.signal.aborted || name === 'AbortError' || code === 'UND_ERR_ABORTED') {
    return failure('aborted', 'upstream_timeout', 'The request was aborted before the upstream answered')
  }
  switch (code) {
    case 'UND_ERR_CONNECT_TIMEOUT':
      return failure('connect_timeout', 'upstream_unreachable', `Could not connect to the upstream within ${connectTimeoutMs} ms`)
    case 'UND_ERR_HEADERS_TIMEOUT':
      return failure('headers_timeout', 'upstream_timeout', `The upstream sent no response within ${options.headersTimeoutMs} ms`)
    case 'UND_ERR_BODY_TIMEOUT':
      return failure('body_timeout', 'upstream_timeout', `The upstream response stalled for ${options.bodyTimeoutMs} ms`)
    case 'ECONNREFUSED':
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return failure('connect', 'upstream_unreachable', `Could not reach the upstream (${code})`)
    default:
      break
  }
  if (typeof code === 'string' && (code.startsWith('ERR_TLS') || code.includes('CERT') || code === 'DEPTH_ZERO_SELF_SIGNED_CERT')) {
    return failure('tls', 'upstream_unreachable', `The upstream's TLS certificate was rejected (${code})`)
  }
  return failure('reset', 'upstream_unreachable', `The upstream connection failed (${typeof code === 'string' ? code : 'socket error'})`)
}

function ignore(): void {}

/**
 * Lets go of a response body the proxy will not relay by destroying it (and its connection): a
 * stream may never end, so waiting for it is not an option. The error listener keeps the abort
 * that destroy() causes from surfacing as an uncaught exception.
 */
export function discardBody(body: UpstreamResponse['body']): void {
  body.on('error', ignore)
  body.destroy()
}

/**
 * Lets go of a small finished-or-nearly response (an error page, a rejected 200) so its
 * connection can be reused: dump() reads up to 64 KiB and destroys the connection beyond that.
 */
export function drainBody(body: UpstreamResponse['body']): void {
  body.on('error', ignore)
  body.dump({ limit: 64 * 1024 }).catch(ignore)
}

/**
 * Reads a body up to `limitBytes`. Past the limit the rest is discarded and `truncated` is set,
 * with the bytes read so far; a failure mid-body rejects with the underlying error.
 */
export async function readBodyUpTo(body: UpstreamResponse['body'], limitBytes: number): Promise<{ bytes: Buffer; truncated: boolean }> {
  const chunks: Buffer[] = []
  let length = 0
  for await (const chunk of body) {
    const buffer = chunk as Buffer
    if (length + buffer.length > limitBytes) {
      discardBody(body)
      return { bytes: Buffer.concat(chunks, length), truncated: true }
    }
    length += buffer.length
    chunks.push(buffer)
  }
  return { bytes: Buffer.concat(chunks, length), truncated: false }
}
