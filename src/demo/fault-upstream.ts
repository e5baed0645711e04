import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'

/**
 * The demo's fake TopRouter: a node:http server on 127.0.0.1, port 0, whose behaviour is chosen by
 * the request's model id (`demo/rate-limited`, `demo/burst-503`, …; see scenarios.ts). Each model
 * counts its calls, so the first call (or the first few) fails and a later one succeeds, as a real
 * flaky upstream does; `reset()` starts every count again, so the direct run and the proxied run
 * meet the same faults. Like TopRouter, every answer carries the six `x-ratelimit-*` headers.
 */

/** The answer every model streams (word by word) or returns whole. */
export const DEMO_ANSWER = 'The quick brown fox jumps over the lazy dog, twice.'
/** How many content chunks (after the role chunk) a cut stream delivers before its cut. */
export const CHUNKS_BEFORE_CUT = 3
const CHUNK_DELAY_MS = 15

/**
 * What TopRouter sends on every response, errors included: a quota window that is far from spent
 * (59 of 60 requests left, refilling in 30 s). None of it asks the client to wait. The tests' fake
 * upstream sends the same.
 */
export const TOPROUTER_RATE_LIMIT_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'x-ratelimit-limit-requests': '60',
  'x-ratelimit-remaining-requests': '59',
  'x-ratelimit-reset-requests': '30s',
  'x-ratelimit-limit-tokens': '1000000',
  'x-ratelimit-remaining-tokens': '999000',
  'x-ratelimit-reset-tokens': '15s',
})

export interface FaultUpstream {
  readonly url: string
  readonly port: number
  /** Calls received for `model` since the last reset. */
  calls(model: string): number
  /** Forget every call: each model fails again as on its first call. */
  reset(): void
  close(): Promise<void>
}

interface ChatBody {
  readonly model?: unknown
  readonly stream?: unknown
  readonly messages?: unknown
}

export async function startFaultUpstream(): Promise<FaultUpstream> {
  const counts = new Map<string, number>()
  const sockets = new Set<Socket>()
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      for (const [name, value] of Object.entries(TOPROUTER_RATE_LIMIT_HEADERS)) res.setHeader(name, value)
      answer(req, res, Buffer.concat(chunks), counts)
    })
  })
  server.on('connection', (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    calls: (model) => counts.get(model) ?? 0,
    reset: () => counts.clear(),
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      }),
  }
}

function answer(req: IncomingMessage, res: ServerResponse, raw: Buffer, counts: Map<string, number>): void {
  if (req.method === 'GET' && req.url === '/models') {
    sendJson(res, 200, { object: 'list', data: Object.keys(BEHAVIOURS).map((id) => ({ id, object: 'model', owned_by: 'demo' })) })
    return
  }
  if (req.method !== 'POST' || req.url !== '/chat/completions') {
    sendJson(res, 404, { error: { message: `Not found: ${req.url}`, type: 'not_found_error', code: 'not_found' } })
    return
  }
  let body: ChatBody
  try {
    body = JSON.parse(raw.toString('utf8')) as ChatBody
  } catch {
    sendJson(res, 400, { error: { message: 'Invalid JSON', type: 'invalid_request_error', code: 'invalid_json' } })
    return
  }
  const model = typeof body.model === 'string' ? body.model : ''
  const call = counts.get(model) ?? 0
  counts.set(model, call + 1)
  const stream = body.stream === true
  const ok = () => {
    if (stream) void streamAnswer(res, model, remainderAfter(prefillOf(body.messages)))
    else sendJson(res, 200, completion(model))
  }

  const behave = BEHAVIOURS[model]
  if (behave === undefined) {
    sendJson(res, 404, { error: { message: `Model not found: ${model}`, type: 'not_found_error', code: 'model_not_found' } })
    return
  }
  behave(call, { req, res, model, ok })
}

interface Exchange {
  readonly req: IncomingMessage
  readonly res: ServerResponse
  readonly model: string
  /** Answers normally: the whole completion, or the stream (only the rest, after a continuation's prefill). */
  readonly ok: () => void
}

/** Each demo model's behaviour on its `call`-th call (0 first) since the last reset. */
const BEHAVIOURS: Readonly<Record<string, (call: number, exchange: Exchange) => void>> = {
  // The quota is spent: a 429 with Retry-After (and the matching x-ratelimit-* saying so), then 200.
  'demo/rate-limited': (call, { res, ok }) => {
    if (call > 0) ok()
    else
      sendJson(res, 429, rateLimited(), { 'retry-after': '1', 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '1s' })
  },
  // A gateway in front of the provider answers with its own HTML page, twice.
  'demo/burst-503': (call, { res, ok }) => {
    if (call > 1) ok()
    else sendText(res, 503, 'text/html', SERVICE_UNAVAILABLE_HTML)
  },
  'demo/reset': (call, { req, ok }) => {
    if (call > 0) ok()
    else req.socket.destroy()
  },
  // Accepts the request, then says nothing at all (no headers, no event) until the client gives up.
  'demo/silent': (call, { ok }) => {
    if (call > 0) ok()
  },
  // The stream ends after a few chunks, cleanly, with no finish_reason and no [DONE], every time.
  'demo/cut-stream': (_call, { res, model }) => {
    void streamAnswer(res, model, DEMO_ANSWER, { cutAfter: CHUNKS_BEFORE_CUT, how: 'end' })
  },
  // The connection drops after a few chunks; a later call (the proxy's continuation) finishes.
  'demo/cut-continued': (call, { res, model, ok }) => {
    if (call > 0) ok()
    else void streamAnswer(res, model, DEMO_ANSWER, { cutAfter: CHUNKS_BEFORE_CUT, how: 'reset' })
  },
  'demo/down': (_call, { res }) => {
    sendJson(res, 503, { error: { message: 'No provider is available for demo/down', type: 'server_error', code: 'service_unavailable' } })
  },
  'demo/healthy': (_call, { ok }) => ok(),
}

const SERVICE_UNAVAILABLE_HTML = '<html><head><title>503 Service Temporarily Unavailable</title></head><body><h1>503</h1></body></html>'

function rateLimited() {
  return { error: { message: 'Rate limit exceeded: 60 requests per minute', type: 'rate_limit_error', code: 'rate_limit_exceeded' } }
}

function completion(model: string) {
  return {
    id: 'gen-demo',
    object: 'chat.completion',
    created: 1760000000,
    model,
    choices: [{ index: 0, message: { role: 'assistant', content: DEMO_ANSWER }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 8, completion_tokens: 12, total_tokens: 20 },
  }
}

/** The text of a trailing assistant message (a continuation's prefill), else ''. */
function prefillOf(messages: unknown): string {
  if (!Array.isArray(messages)) return ''
  const last = messages.at(-1) as { role?: unknown; content?: unknown } | undefined
  return last?.role === 'assistant' && typeof last.content === 'string' ? last.content : ''
}

/** What is left of the answer after `prefill`: a model asked to continue says only the rest. */
function remainderAfter(prefill: string): string {
  return prefill !== '' && DEMO_ANSWER.startsWith(prefill) ? DEMO_ANSWER.slice(prefill.length) : DEMO_ANSWER
}

/** The answer's words, each with the space before it, as chunk contents. */
function wordsOf(text: string): string[] {
  return text.match(/\s*\S+/g) ?? []
}

interface Cut {
  readonly cutAfter: number
  /** `end`: the response ends cleanly there; `reset`: the connection is destroyed. */
  readonly how: 'end' | 'reset'
}

async function streamAnswer(res: ServerResponse, model: string, text: string, cut?: Cut): Promise<void> {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
  // Like the real ones: a role-only chunk first, then the content, the last chunk with its finish_reason.
  res.write(chunkEvent(model, { role: 'assistant', content: '' }, null))
  const words = wordsOf(text)
  for (const [index, word] of words.entries()) {
    if (cut !== undefined && index === cut.cutAfter) {
      if (cut.how === 'reset') res.destroy()
      else res.end()
      return
    }
    res.write(chunkEvent(model, { content: word }, index === words.length - 1 ? 'stop' : null))
    await new Promise((resolve) => setTimeout(resolve, CHUNK_DELAY_MS))
    if (res.destroyed) return
  }
  res.end('data: [DONE]\n\n')
}

function chunkEvent(model: string, delta: Record<string, string>, finish: string | null): string {
  const chunk = {
    id: 'gen-demo-stream',
    object: 'chat.completion.chunk',
    created: 1760000000,
    model,
    choices: [{ index: 0, delta, finish_reason: finish }],
  }
  return `data: ${JSON.stringify(chunk)}\n\n`
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  sendText(res, status, 'application/json', JSON.stringify(body), headers)
}

function sendText(res: ServerResponse, status: number, contentType: string, text: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(text), ...headers })
  res.end(text)
}
