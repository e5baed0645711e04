import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { type AddressInfo, createConnection, type Socket } from 'node:net'

/**
 * A scripted origin on port 0, one per test: it records every request it receives and answers
 * with whatever the test's handler does (any status, HTML, resets, stalls, slow or cut streams).
 * Like TopRouter, every answer carries the six `x-ratelimit-*` headers unless told otherwise.
 */

export interface RecordedRequest {
  readonly method: string
  readonly url: string
  readonly headers: IncomingMessage['headers']
  readonly rawHeaders: string[]
  readonly body: Buffer
  readonly receivedAt: number
}

export type UpstreamHandler = (req: IncomingMessage, res: ServerResponse, recorded: RecordedRequest, index: number) => unknown

export interface FakeUpstream {
  readonly url: string
  readonly requests: RecordedRequest[]
  /** Sockets the proxy opened; `closedSockets` counts the ones that have closed since. */
  readonly sockets: Set<Socket>
  closedSockets: number
  close(): Promise<void>
}

interface Teardown {
  teardown(fn: () => unknown): void
}

import { TOPROUTER_RATE_LIMIT_HEADERS } from '../../src/demo/fault-upstream.js'

export { TOPROUTER_RATE_LIMIT_HEADERS }

export interface FakeUpstreamOptions {
  /**
   * Put {@link TOPROUTER_RATE_LIMIT_HEADERS} on every answer, as TopRouter does. They are set
   * before the handler runs, so any of them the handler passes to `writeHead` wins.
   * @default true
   */
  readonly rateLimitHeaders?: boolean
}

export async function startFakeUpstream(t: Teardown, handler: UpstreamHandler, options: FakeUpstreamOptions = {}): Promise<FakeUpstream> {
  const rateLimitHeaders = options.rateLimitHeaders ?? true
  const requests: RecordedRequest[] = []
  const sockets = new Set<Socket>()
  const server = createServer(async (req, res) => {
    const chunks: Buffer[] = []
    for await (const chunk of req) chunks.push(chunk as Buffer)
    const recorded: RecordedRequest = {
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      rawHeaders: req.rawHeaders,
      body: Buffer.concat(chunks),
      receivedAt: performance.now(),
    }
    requests.push(recorded)
    if (rateLimitHeaders) {
      for (const [name, value] of Object.entries(TOPROUTER_RATE_LIMIT_HEADERS)) res.setHeader(name, value)
    }
    try {
      await handler(req, res, recorded, requests.length - 1)
    } catch {
      res.destroy()
    }
  })
  const fake: FakeUpstream = {
    url: '',
    requests,
    sockets,
    closedSockets: 0,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      }),
  }
  server.on('connection', (socket) => {
    sockets.add(socket)
    socket.on('close', () => {
      sockets.delete(socket)
      fake.closedSockets += 1
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  ;(fake as { url: string }).url = `http://127.0.0.1:${port}`
  t.teardown(() => fake.close())
  return fake
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = typeof body === 'string' ? body : JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers })
  res.end(text)
}

export function sendText(
  res: ServerResponse,
  status: number,
  contentType: string,
  body: string | Buffer,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), ...headers })
  res.end(body)
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

export function completion(model = 'google/gemini-3.5-flash', content = 'Hello!') {
  return {
    id: 'gen-123',
    object: 'chat.completion',
    created: 1760000000,
    model,
    choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 },
  }
}

export function chunkEvent(model: string, index: number, content: string, finish: string | null = null): string {
  const chunk = {
    id: 'gen-456',
    object: 'chat.completion.chunk',
    created: 1760000000,
    model,
    choices: [{ index: 0, delta: index === 0 ? { role: 'assistant', content } : { content }, finish_reason: finish }],
  }
  return `data: ${JSON.stringify(chunk)}\n\n`
}

/** Writes SSE events one by one, `delayMs` apart, then `data: [DONE]` unless told not to. */
export async function sendSse(res: ServerResponse, events: string[], delayMs = 0, done = true): Promise<void> {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', 'x-ratelimit-remaining-requests': '99' })
  res.flushHeaders()
  for (const event of events) {
    if (delayMs > 0) await sleep(delayMs)
    res.write(event)
  }
  if (done) res.write('data: [DONE]\n\n')
  res.end()
}

/**
 * A URL on which nothing listens: port 1 (tcpmux), which no service here binds. A port bound and
 * released is not enough: with test files running in parallel, another test's server (a fake
 * upstream, a private Redis or PostgreSQL) may take it in between, and the "refused" connection
 * then reaches it and hangs.
 */
export async function closedPortUrl(): Promise<string> {
  const url = 'http://127.0.0.1:1'
  const refused = await new Promise<boolean>((resolve) => {
    const socket = createConnection(1, '127.0.0.1')
    socket.once('connect', () => {
      socket.destroy()
      resolve(false)
    })
    socket.once('error', () => resolve(true))
  })
  if (!refused) throw new Error(`${url} accepts connections: the closed-port tests need a port nothing listens on`)
  return url
}
