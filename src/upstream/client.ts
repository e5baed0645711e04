import type { IncomingHttpHeaders } from 'node:http'
import type { Dispatcher } from 'undici'
import { Pool } from 'undici'
import type { Config } from '../config.js'
import type { HeaderMap } from '../http-headers.js'
import type { RequestSignal } from '../request-clock.js'

/**
 * The only place that does network I/O with the upstream: a keep-alive undici Pool to its origin,
 * built once. `send()` makes one request and hands back the response or undici's own error;
 * attempt.ts decides what either means.
 */

export interface SendOptions {
  readonly method: 'GET' | 'POST'
  /** Path below the base URL, with its query string, e.g. `/chat/completions?x=1`. */
  readonly path: string
  readonly headers: HeaderMap
  readonly body: Buffer | undefined
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

export interface UpstreamClient {
  readonly origin: string
  send(options: SendOptions): Promise<UpstreamResponse>
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

  return {
    origin: url.origin,
    async send(options) {
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
    },
    async close() {
      await pool.close()
    },
  }
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
