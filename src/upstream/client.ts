import type { IncomingHttpHeaders } from 'node:http'
import type { Dispatcher } from 'undici'
import { Client, Pool } from 'undici'
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
    factory: clientClosingUnneededConnections,
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

/**
 * The Pool's clients, each with its connector wrapped so that a connection that turns out to have
 * nothing to send once it is up is closed at once instead of idling in the pool.
 *
 * undici 7.30 opens such a connection after every abort of an in-flight request
 * (nodejs/undici#5845): the abort destroys the socket with an informational error, the socket's
 * close handler (client-h1.js `onHttpSocketClose`) puts the aborted request back on the pending
 * side of the queue, and `_resume` (client.js) connects for it before it checks `request.aborted`
 * — only at write time, on the new socket, is the request dropped. A burst of aborts (clients
 * leaving streams) would leave one idle connection per aborted request, each kept for the
 * upstream's keep-alive hint.
 *
 * The connector's callback runs undici's connect handler synchronously, which writes the first
 * pending request if there is one; a client with nothing queued right after it (`stats.size` 0)
 * connected only for aborted requests, so the socket is destroyed. The Client stays in the pool,
 * disconnected, and connects again when it is next given a request. A normal connect, made for a
 * live request, is never touched, and keep-alive reuse is unchanged.
 */
function clientClosingUnneededConnections(origin: URL, opts: object): Dispatcher {
  const options = opts as Pool.Options
  const connect = options.connect
  if (typeof connect !== 'function') return new Client(origin, options)
  const client: Client = new Client(origin, {
    ...options,
    connect(connectOptions, callback) {
      connect(connectOptions, (...args) => {
        callback(...args)
        const socket = args[1]
        if (socket !== null && !socket.destroyed && client.stats.size === 0) socket.destroy()
      })
    },
  })
  return client
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
