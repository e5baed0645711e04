import { createServer, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { parseArgs } from 'node:util'

/**
 * A fake TopRouter for benchmarks, run as its own process:
 *
 *   node --import tsx bench/upstream.ts --port 0 [--chunk-delay-ms 0]
 *
 * prints `{"port":N}` on stdout once listening. Every body and header set is built once at startup,
 * so the per-request cost is as close to "read the request, write bytes" as Node allows:
 *
 * - `POST /chat/completions` → a ~600 B `chat.completion` with its `usage` and `x-ratelimit-*` headers;
 *   when the raw body contains `"stream":true` → an SSE stream of 20 `chat.completion.chunk` events
 *   (the last with `finish_reason: "stop"`), then `data: [DONE]`. Like TopRouter, a stream carries
 *   usage only when asked (`"include_usage":true` in the body, as the team gateway asks): then one more
 *   event, `"choices":[]` with the `usage`, comes after the finish and before `[DONE]`.
 *   `x-bench-chunks: N` asks for N events instead (the memory phase uses it for long streams). Events
 *   are `--chunk-delay-ms` apart; with 0 each one is still written on its own turn of the event loop
 *   (setImmediate), as a real stream's would be.
 * - `GET /models` → a list of 50 models (~6 KB).
 * - `GET /_bench/stats` → `{"activeStreams":N,"connections":N,"faults":{…}}`: streams still being written,
 *   open client connections (the memory phase checks that closed clients' streams stop upstream too),
 *   and the faults injected so far by kind.
 *
 * For the soak (bench/soak.ts), two request headers the proxy forwards; a request without them is
 * served exactly as above (one property lookup each):
 *
 * - `x-bench-chunk-delay-ms: N` → this stream's events N ms apart instead of `--chunk-delay-ms`.
 * - `x-bench-fault: KIND[:PERCENT]` → with probability PERCENT % (default 100) per attempt, a fault:
 *   `reset` (the connection is reset once the body is read, no response), `503` (a 503 with a JSON
 *   error body), `cut` (a stream whose connection is reset after `x-bench-cut-after` events, default 3;
 *   a non-streaming request is served normally).
 */

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    host: { type: 'string', default: '127.0.0.1' },
    'chunk-delay-ms': { type: 'string', default: '0' },
  },
  strict: true,
})

const port = Number(values.port)
const chunkDelayMs = Number(values['chunk-delay-ms'])
if (!Number.isInteger(port) || port < 0 || !Number.isFinite(chunkDelayMs) || chunkDelayMs < 0) {
  process.stderr.write('usage: upstream.ts --port N [--chunk-delay-ms N]\n')
  process.exit(2)
}

const MODEL = 'google/gemini-3.5-flash'
const CREATED = 1760000000
const DEFAULT_CHUNKS = 20
const MAX_CHUNKS = 1_000_000

// ---- built once -----------------------------------------------------------------------------

const RATE_LIMIT_HEADERS = {
  'x-ratelimit-limit-requests': '10000',
  'x-ratelimit-remaining-requests': '9999',
  'x-ratelimit-reset-requests': '6ms',
  'x-ratelimit-limit-tokens': '2000000',
  'x-ratelimit-remaining-tokens': '1999950',
  'x-ratelimit-reset-tokens': '1ms',
}

const completionBody = Buffer.from(
  JSON.stringify({
    id: 'gen-1760000000-bench0000000000000000',
    object: 'chat.completion',
    created: CREATED,
    model: MODEL,
    provider: 'Google',
    system_fingerprint: 'fp_bench_0001',
    choices: [
      {
        index: 0,
        logprobs: null,
        finish_reason: 'stop',
        native_finish_reason: 'STOP',
        message: {
          role: 'assistant',
          content:
            'Hello! This is a canned answer from the benchmark upstream. It is long enough to look like a ' +
            'short real reply from a chat model, and it never changes, so every response has the same size.',
          refusal: null,
        },
      },
    ],
    usage: { prompt_tokens: 12, completion_tokens: 48, total_tokens: 60, prompt_tokens_details: { cached_tokens: 0 } },
  }),
)

const completionHeaders: OutgoingHttpHeaders = {
  'content-type': 'application/json',
  'content-length': completionBody.length,
  ...RATE_LIMIT_HEADERS,
}

const streamHeaders: OutgoingHttpHeaders = {
  'content-type': 'text/event-stream',
  'cache-control': 'no-cache',
  ...RATE_LIMIT_HEADERS,
}

const WORDS = [
  'Hello',
  ' there',
  '!',
  ' This',
  ' is',
  ' a',
  ' streamed',
  ' answer',
  ' from',
  ' the',
  ' benchmark',
  ' upstream',
  ',',
  ' one',
  ' small',
  ' piece',
  ' at',
  ' a',
  ' time',
  '.',
]

function chunkEvent(index: number, content: string, finish: string | null): Buffer {
  const chunk = {
    id: 'gen-1760000000-benchstream00000000000',
    object: 'chat.completion.chunk',
    created: CREATED,
    model: MODEL,
    provider: 'Google',
    choices: [{ index: 0, delta: index === 0 ? { role: 'assistant', content } : { content }, finish_reason: finish, logprobs: null }],
  }
  return Buffer.from(`data: ${JSON.stringify(chunk)}\n\n`)
}

const firstEvent = chunkEvent(0, WORDS[0] ?? '', null)
const middleEvents: Buffer[] = WORDS.slice(1).map((word, i) => chunkEvent(i + 1, word, null))
const lastEvent = Buffer.from(
  `data: ${JSON.stringify({
    id: 'gen-1760000000-benchstream00000000000',
    object: 'chat.completion.chunk',
    created: CREATED,
    model: MODEL,
    provider: 'Google',
    choices: [{ index: 0, delta: { content: '' }, finish_reason: 'stop', logprobs: null }],
  })}\n\n`,
)
/** Sent only when the request asked for `stream_options.include_usage`, between the finish and `[DONE]`. */
const usageEvent = Buffer.from(
  `data: ${JSON.stringify({
    id: 'gen-1760000000-benchstream00000000000',
    object: 'chat.completion.chunk',
    created: CREATED,
    model: MODEL,
    provider: 'Google',
    choices: [],
    usage: { prompt_tokens: 12, completion_tokens: 20, total_tokens: 32 },
  })}\n\n`,
)
const doneEvent = Buffer.from('data: [DONE]\n\n')

const modelsBody = Buffer.from(
  JSON.stringify({
    object: 'list',
    data: Array.from({ length: 50 }, (_, i) => {
      const vendor = ['google', 'anthropic', 'openai', 'meta-llama', 'mistralai'][i % 5] ?? 'google'
      return {
        id: `${vendor}/bench-model-${String(i).padStart(2, '0')}`,
        object: 'model',
        created: CREATED - i * 86400,
        owned_by: vendor,
        context_length: 131072,
      }
    }),
  }),
)
const modelsHeaders: OutgoingHttpHeaders = { 'content-type': 'application/json', 'content-length': modelsBody.length }

const notFoundBody = Buffer.from(JSON.stringify({ error: { message: 'Not found', type: 'not_found_error', code: 'not_found' } }))
const notFoundHeaders: OutgoingHttpHeaders = { 'content-type': 'application/json', 'content-length': notFoundBody.length }

const overloadedBody = Buffer.from(
  JSON.stringify({ error: { message: 'bench upstream: overloaded (injected fault)', type: 'server_error', code: 'overloaded' } }),
)
const overloadedHeaders: OutgoingHttpHeaders = { 'content-type': 'application/json', 'content-length': overloadedBody.length }

const STREAM_MARKER = Buffer.from('"stream":true')
const INCLUDE_USAGE_MARKER = Buffer.from('"include_usage":true')

// ---- serving --------------------------------------------------------------------------------

/** Streams being written right now; `GET /_bench/stats` reports it (the memory phase reads it). */
let activeStreams = 0
/** Faults injected so far (`x-bench-fault`), by kind; in `GET /_bench/stats`. */
const faults = { reset: 0, status503: 0, cut: 0 }

/** `cutAfter` ≥ 1: the connection is reset instead of writing event number `cutAfter` (-1: never). */
function streamEvents(res: ServerResponse, total: number, withUsage: boolean, delayMs: number, cutAfter: number): void {
  res.writeHead(200, streamHeaders)
  let sent = 0
  let timer: NodeJS.Timeout | NodeJS.Immediate | undefined
  let closed = false
  activeStreams += 1
  res.once('close', () => {
    activeStreams -= 1
    closed = true
    if (timer !== undefined) {
      clearTimeout(timer as NodeJS.Timeout)
      clearImmediate(timer as NodeJS.Immediate)
    }
  })
  const next = (): void => {
    timer = undefined
    if (closed) return
    if (sent === cutAfter) {
      faults.cut += 1
      res.socket?.resetAndDestroy()
      return
    }
    if (sent === 0) res.write(firstEvent)
    else if (sent === total - 1) {
      res.write(lastEvent)
      if (withUsage) res.write(usageEvent)
      res.end(doneEvent)
      return
    } else res.write(middleEvents[(sent - 1) % middleEvents.length] as Buffer)
    sent += 1
    timer = delayMs > 0 ? setTimeout(next, delayMs) : setImmediate(next)
  }
  // The first event goes out with the headers, like a model's first token.
  next()
}

/** The fault `x-bench-fault` asks for on this attempt, if the dice say so: its kind and, for `cut`, when. */
function faultFor(header: string | string[]): 'reset' | '503' | 'cut' | undefined {
  const [kind, percent] = String(header).split(':')
  if (kind !== 'reset' && kind !== '503' && kind !== 'cut') return undefined
  const chance = percent === undefined ? 100 : Number(percent)
  return Math.random() * 100 < chance ? kind : undefined
}

function handleChat(req: IncomingMessage, res: ServerResponse, body: Buffer): void {
  const faultHeader = req.headers['x-bench-fault']
  let cutAfter = -1
  if (faultHeader !== undefined) {
    const fault = faultFor(faultHeader)
    if (fault === 'reset') {
      faults.reset += 1
      req.socket.resetAndDestroy()
      return
    }
    if (fault === '503') {
      faults.status503 += 1
      res.writeHead(503, overloadedHeaders)
      res.end(overloadedBody)
      return
    }
    if (fault === 'cut') cutAfter = Math.max(1, Number.parseInt(String(req.headers['x-bench-cut-after']), 10) || 3)
  }
  if (body.indexOf(STREAM_MARKER) === -1) {
    res.writeHead(200, completionHeaders)
    res.end(completionBody)
    return
  }
  const asked = req.headers['x-bench-chunks']
  const total = typeof asked === 'string' ? Math.min(MAX_CHUNKS, Math.max(2, Number.parseInt(asked, 10) || DEFAULT_CHUNKS)) : DEFAULT_CHUNKS
  const delayHeader = req.headers['x-bench-chunk-delay-ms']
  const delayMs = delayHeader === undefined ? chunkDelayMs : Math.max(0, Number(delayHeader) || 0)
  streamEvents(res, total, body.indexOf(INCLUDE_USAGE_MARKER) !== -1, delayMs, cutAfter)
}

const server = createServer({ keepAlive: true, noDelay: true }, (req, res) => {
  if (req.method === 'POST' && (req.url === '/chat/completions' || req.url?.startsWith('/chat/completions?'))) {
    let first: Buffer | undefined
    let rest: Buffer[] | undefined
    req.on('data', (chunk: Buffer) => {
      if (first === undefined) first = chunk
      else {
        rest ??= [first]
        rest.push(chunk)
      }
    })
    req.on('end', () => handleChat(req, res, rest !== undefined ? Buffer.concat(rest) : (first ?? Buffer.alloc(0))))
    return
  }
  if (req.method === 'GET' && (req.url === '/models' || req.url?.startsWith('/models?'))) {
    res.writeHead(200, modelsHeaders)
    res.end(modelsBody)
    req.resume()
    return
  }
  if (req.method === 'GET' && req.url === '/_bench/stats') {
    const body = JSON.stringify({ activeStreams, connections: openConnections, faults })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
    res.end(body)
    req.resume()
    return
  }
  req.resume()
  res.writeHead(404, notFoundHeaders)
  res.end(notFoundBody)
})
let openConnections = 0
server.on('connection', (socket) => {
  openConnections += 1
  socket.once('close', () => {
    openConnections -= 1
  })
})
// Keep-alive: the proxy's pool keeps idle connections for 30 s; never close them first.
server.keepAliveTimeout = 120_000
server.headersTimeout = 125_000
server.requestTimeout = 0
server.maxRequestsPerSocket = 0

server.listen(port, values.host, () => {
  const address = server.address() as AddressInfo
  process.stdout.write(
    `${JSON.stringify({ port: address.port, completionBytes: completionBody.length, modelsBytes: modelsBody.length })}\n`,
  )
})

function shutdown(): void {
  server.close()
  server.closeAllConnections()
  setTimeout(() => process.exit(0), 100).unref()
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
