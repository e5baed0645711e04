import type { IncomingHttpHeaders } from 'node:http'
import type { Dispatcher } from 'undici'
import { Client, Pool, util } from 'undici'
import type { Config } from '../config.js'
import type { HeaderMap } from '../http-headers.js'
import type { RequestSignal } from '../request-clock.js'

/**
 * The only place that does network I/O with the upstream: a keep-alive undici Pool to its origin,
 * built once. `send()` makes one request and hands back the response with its body as a stream;
 * `receive()` one whose answer is read whole, with the body as bytes. Either gives undici's own
 * error; attempt.ts decides what it means.
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

export interface UpstreamResponseHead {
  readonly statusCode: number
  readonly headers: IncomingHttpHeaders
}

export interface UpstreamResponse extends UpstreamResponseHead {
  readonly body: Dispatcher.ResponseData['body']
}

export interface ReceiveOptions extends SendOptions {
  /** How many body bytes to keep, decided from the head; past it the connection is closed. */
  readonly bodyLimit: (head: UpstreamResponseHead) => number
  /** The head has arrived (the body is still to come). */
  readonly onHead: (head: UpstreamResponseHead) => void
}

/** An answer read whole, or as far as it could be. */
export interface ReceivedResponse extends UpstreamResponseHead {
  readonly body: Buffer
  /** The body went past its limit: `body` is what came before the chunk that crossed it. */
  readonly truncated: boolean
  /** The body broke after the head arrived (a reset, the body timeout, an abort). */
  readonly bodyError: unknown
}

export interface UpstreamClient {
  readonly origin: string
  send(options: SendOptions): Promise<UpstreamResponse>
  /** Rejects with undici's error only when no head arrived. */
  receive(options: ReceiveOptions): Promise<ReceivedResponse>
  close(): Promise<void>
}

export function buildUpstreamClient(upstream: Config['upstream']): UpstreamClient {
  const url = new URL(upstream.baseUrl)
  const basePath = url.pathname.replace(/\/+$/, '')
  const pool = new Pool(url.origin, {
    connections: upstream.maxConnections,
    pipelining: 1,
    keepAliveTimeout: upstream.keepAliveTimeoutMs,
    // The upstream's `Keep-Alive: timeout=N` hint may shorten how long an idle connection is kept, never lengthen it.
    keepAliveMaxTimeout: upstream.keepAliveTimeoutMs,
    connect: { timeout: upstream.connectTimeoutMs, rejectUnauthorized: true },
    factory: clientClosingUnneededConnections,
  })

  return {
    origin: url.origin,
    async send(options) {
      const response = await pool.request({ ...dispatchOptions(basePath, options), signal: options.signal })
      return { statusCode: response.statusCode, headers: response.headers, body: response.body }
    },
    receive(options) {
      return new Promise((resolve, reject) => {
        pool.dispatch(dispatchOptions(basePath, options), new ReceivingHandler(options, resolve, reject))
      })
    },
    async close() {
      await pool.close()
    },
  }
}

/**
 * The Pool's clients, each with its connector wrapped so that undici does not open (or keep) a
 * connection that has no request to carry.
 *
 * undici 7.30 opens one after every abort of an in-flight request (nodejs/undici#5845): the abort
 * destroys the socket with `InformationalError('aborted')` (client-h1.js `writeH1`), the socket's
 * close handler (client-h1.js `onHttpSocketClose`) leaves a request that failed with an
 * informational error on the queue and moves it back to the pending side, and `_resume`
 * (client.js) connects for it before it looks at `request.aborted` — only at write time, on the
 * new socket, is the request dropped. Each aborted stream would leave an idle connection, kept
 * for the upstream's keep-alive hint.
 *
 * - The reconnect is refused: the client's `disconnect` event for that abort comes synchronously
 *   right before the connect, and with one request queued and none running (pipelining 1) the
 *   queued one is the aborted request. Failing the connect makes undici drop the queue (already
 *   aborted, so nobody hears of it) and the Pool retire this client (`connectionError`); the next
 *   request gets a new one.
 * - Any other connection that comes up with nothing queued once undici's connect handler has run
 *   (every request queued for it was aborted meanwhile) is closed at once.
 *
 * A connect for a live request, and keep-alive reuse, are untouched.
 */
function clientClosingUnneededConnections(origin: URL, opts: object): Dispatcher {
  const options = opts as Pool.Options
  const connect = options.connect
  if (typeof connect !== 'function') return new Client(origin, options)
  let reconnectForAbort = false
  const client: Client = new Client(origin, {
    ...options,
    connect(connectOptions, callback) {
      const stats = client.stats
      if (reconnectForAbort && stats.size === 1 && stats.running === 0) {
        reconnectForAbort = false
        // Asynchronously, as a real connect fails: undici's handler resumes the client (its drain,
        // its close) only when called outside the resume loop that asked for the connection.
        queueMicrotask(() => callback(new Error('no connection needed: the only queued request was aborted'), null))
        return
      }
      connect(connectOptions, (...args) => {
        callback(...args)
        // On an error the connector may pass no socket at all, not null.
        const socket = args[0] === null ? args[1] : undefined
        if (socket !== undefined && !socket.destroyed && client.stats.size === 0) socket.destroy()
      })
    },
  })
  client.on('disconnect', (_origin, _targets, error) => {
    if ((error as { code?: string }).code !== 'UND_ERR_INFO' || error.message !== 'aborted') return
    reconnectForAbort = true
    queueMicrotask(() => {
      reconnectForAbort = false
    })
  })
  return client
}

function dispatchOptions(basePath: string, options: SendOptions): Dispatcher.DispatchOptions {
  return {
    method: options.method,
    path: basePath + options.path,
    headers: options.headers,
    body: options.body ?? null,
    headersTimeout: options.headersTimeoutMs,
    bodyTimeout: options.bodyTimeoutMs,
  }
}

/**
 * Collects one answer's body as it arrives, in undici's own handler interface: no body stream and
 * no consumer per response, which is what request() + `body.bytes()` cost (~3 µs of CPU per
 * request, bench/README.md). The request's signal aborts it as it does a request().
 */
class ReceivingHandler implements Dispatcher.DispatchHandler {
  private readonly options: ReceiveOptions
  private readonly resolve: (response: ReceivedResponse) => void
  private readonly reject: (error: unknown) => void
  private head: UpstreamResponseHead | undefined = undefined
  private settled = false
  private chunks: Buffer[] = []
  private length = 0
  private limit = 0
  private truncated = false
  private abortRequest: ((error: Error) => void) | undefined = undefined
  private readonly onAbort = () => this.abortRequest?.(new Error('aborted by the request signal'))

  constructor(options: ReceiveOptions, resolve: (response: ReceivedResponse) => void, reject: (error: unknown) => void) {
    this.options = options
    this.resolve = resolve
    this.reject = reject
  }

  onConnect(abort: (error?: Error) => void): void {
    this.abortRequest = abort
    if (this.options.signal.aborted) this.onAbort()
    else this.options.signal.once('abort', this.onAbort)
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[]): boolean {
    const head = { statusCode, headers: util.parseHeaders(rawHeaders) as IncomingHttpHeaders }
    this.head = head
    this.limit = this.options.bodyLimit(head)
    this.options.onHead(head)
    return true
  }

  onData(chunk: Buffer): boolean {
    if (this.truncated) return true
    if (this.length + chunk.length > this.limit) this.stop()
    else {
      this.chunks.push(chunk)
      this.length += chunk.length
    }
    return true
  }

  onComplete(): void {
    this.settle(undefined)
  }

  onError(error: Error): void {
    if (this.settled) return
    if (this.head === undefined) {
      this.settled = true
      this.options.signal.off('abort', this.onAbort)
      this.reject(error)
    } else this.settle(error)
  }

  /** Past the limit: keep what came before, close the connection, answer now. */
  private stop(): void {
    this.truncated = true
    this.settle(undefined)
    this.abortRequest?.(new Error('the body is past its limit'))
  }

  private settle(bodyError: unknown): void {
    const head = this.head
    if (this.settled || head === undefined) return
    this.settled = true
    this.options.signal.off('abort', this.onAbort)
    const { chunks, length } = this
    this.chunks = []
    const body = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, length)
    this.resolve({ statusCode: head.statusCode, headers: head.headers, body, truncated: this.truncated, bodyError })
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
