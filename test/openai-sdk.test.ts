import OpenAI, { type APIError } from 'openai'
import t from 'tap'
import { chunkEvent, closedPortUrl, completion, sendJson, sendSse, sendText, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy } from './helpers/proxy.js'

/**
 * The official OpenAI SDK (v6) as the client, pointed at the proxy: what an app sees after it
 * changes its base URL. Successes come back as the SDK's typed objects, and every error — the
 * upstream's or the proxy's own — surfaces as the SDK's matching error class with status, type and
 * code intact, carrying `x-should-retry: false` so the SDK never stacks its retries on the proxy's.
 */

const MODEL = 'google/gemini-3.5-flash'
const API_KEY = 'sk-test-dummy'

function sdk(baseURL: string, options: Partial<ConstructorParameters<typeof OpenAI>[0]> = {}): OpenAI {
  return new OpenAI({ baseURL, apiKey: API_KEY, maxRetries: 0, ...options })
}

/** Awaits a promise that must reject and returns what it rejected with (or undefined if it resolved). */
async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise
  } catch (err: unknown) {
    return err
  }
  return undefined
}

t.test('chat.completions.create returns the upstream completion and the upstream sees what the SDK sent', async (t) => {
  const upstreamCompletion = completion(MODEL, 'Hi from the fake upstream')
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, upstreamCompletion))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const client = sdk(proxy.url)

  const params = {
    model: MODEL,
    messages: [
      { role: 'system' as const, content: 'Be brief.' },
      { role: 'user' as const, content: 'Say hi' },
    ],
    temperature: 0.2,
  }
  const { data, response, request_id } = await client.chat.completions.create(params).withResponse()

  t.equal(response.status, 200)
  t.equal(data.id, 'gen-123')
  t.equal(data.model, MODEL)
  t.equal(data.choices.length, 1)
  t.equal(data.choices[0]?.message.content, 'Hi from the fake upstream')
  t.equal(data.choices[0]?.finish_reason, 'stop')
  t.same(data.usage, { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 })
  t.equal(response.headers.get('x-proxy-attempts'), '1')

  t.equal(upstream.requests.length, 1)
  const seen = upstream.requests[0]!
  t.equal(seen.method, 'POST')
  t.equal(seen.url, '/chat/completions', 'the SDK path reaches the upstream without /v1')
  t.equal(seen.headers.authorization, `Bearer ${API_KEY}`, "the SDK's key is forwarded")
  t.match(seen.headers['content-type'], /^application\/json/)
  t.strictSame(JSON.parse(seen.body.toString('utf8')), params, 'the upstream got the body the SDK sent')
  t.equal(seen.body.toString('utf8'), JSON.stringify(params), 'byte for byte')
  t.equal(seen.headers['x-request-id'], request_id, 'the id the SDK reports is the one the upstream saw')
})

t.test('a stream is consumed with for await, deltas and the final usage chunk intact', async (t) => {
  const pieces = ['Hel', 'lo, ', 'wor', 'ld!']
  const usage = { prompt_tokens: 11, completion_tokens: 4, total_tokens: 15 }
  const usageChunk = {
    id: 'gen-456',
    object: 'chat.completion.chunk',
    created: 1760000000,
    model: MODEL,
    choices: [],
    usage,
  }
  const events = [
    ...pieces.map((piece, index) => chunkEvent(MODEL, index, piece, index === pieces.length - 1 ? 'stop' : null)),
    `data: ${JSON.stringify(usageChunk)}\n\n`,
  ]
  const upstream = await startFakeUpstream(t, (_req, res) => sendSse(res, events, 5))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const client = sdk(proxy.url)

  const stream = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: 'user', content: 'Say hello, world' }],
    stream: true,
    stream_options: { include_usage: true },
  })

  let text = ''
  let chunks = 0
  let lastFinishReason: string | null | undefined
  let seenUsage: unknown
  let usageChunkHadChoices: number | undefined
  for await (const chunk of stream) {
    chunks += 1
    t.equal(chunk.model, MODEL)
    for (const choice of chunk.choices) {
      text += choice.delta.content ?? ''
      lastFinishReason = choice.finish_reason
    }
    if (chunk.usage) {
      seenUsage = chunk.usage
      usageChunkHadChoices = chunk.choices.length
    }
  }
  t.equal(chunks, events.length, 'every event reached the SDK as one chunk')
  t.equal(text, pieces.join(''), 'the concatenated deltas are what the fake sent')
  t.equal(lastFinishReason, 'stop', "the last choice chunk's finish_reason")
  t.same(seenUsage, usage, 'the SDK saw the usage chunk')
  t.equal(usageChunkHadChoices, 0, 'the usage chunk carries no choices')

  t.equal(upstream.requests.length, 1)
  const sent = JSON.parse(upstream.requests[0]!.body.toString('utf8')) as Record<string, unknown>
  t.equal(sent.stream, true)
  t.same(sent.stream_options, { include_usage: true })
})

t.test('models.list and models.retrieve work, ids with a slash included', async (t) => {
  const list = {
    object: 'list',
    data: [
      { id: MODEL, object: 'model', created: 1750000000, owned_by: 'google' },
      { id: 'anthropic/claude-4.6-sonnet', object: 'model', created: 1750000001, owned_by: 'anthropic' },
      { id: 'plain-model', object: 'model', created: 1750000002, owned_by: 'toprouter' },
    ],
  }
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, list))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const sdkUrls: string[] = []
  const client = sdk(proxy.url, {
    fetch: (url, init) => {
      sdkUrls.push(String(url))
      return fetch(url, init)
    },
  })

  const ids: string[] = []
  for await (const model of client.models.list()) ids.push(model.id)
  t.strictSame(ids, [MODEL, 'anthropic/claude-4.6-sonnet', 'plain-model'])

  const page = await client.models.list()
  t.equal(page.data.length, 3)
  t.equal(page.hasNextPage(), false)

  const model = await client.models.retrieve(MODEL)
  t.strictSame(model, list.data[0], 'the one model, as the upstream listed it')
  t.equal(sdkUrls.at(-1), `${proxy.url}/models/${encodeURIComponent(MODEL)}`, 'the SDK URL-encodes the slash')

  const plain = await client.models.retrieve('plain-model')
  t.equal(plain.id, 'plain-model')

  const err = await rejectionOf(client.models.retrieve('openai/gpt-nope'))
  t.type(err, OpenAI.NotFoundError)
  if (!(err instanceof OpenAI.NotFoundError)) return
  t.equal(err.status, 404)
  t.equal(err.type, 'not_found_error')
  t.equal(err.code, 'model_not_found')
  t.strictSame(err.error, { message: 'Model not found: openai/gpt-nope', type: 'not_found_error', code: 'model_not_found' })
  t.equal(err.headers.get('x-should-retry'), 'false')

  t.ok(upstream.requests.length >= 1)
  for (const request of upstream.requests) {
    t.equal(request.url, '/models', 'retrieve is served from the list, never from /models/:id upstream')
    t.equal(request.headers.authorization, `Bearer ${API_KEY}`)
  }
})

interface ErrorCase {
  readonly name: string
  readonly status: number
  readonly body: string
  readonly contentType?: string
  readonly headers?: Record<string, string>
  /** The exact class the SDK must throw (402 has no subclass: plain APIError). */
  readonly errorClass: abstract new (
    ...args: never[]
  ) => APIError
  readonly type: string
  readonly code: string
  /** The message in the error body; a RegExp when the proxy writes it. */
  readonly message: string | RegExp
  /** Response headers that must reach the SDK. */
  readonly expectHeaders?: Record<string, string>
}

const contextMessage = "This model's maximum context length is 128000 tokens. However, your messages resulted in 200000 tokens."

const errorCases: ErrorCase[] = [
  {
    name: '400 context_length_exceeded',
    status: 400,
    body: JSON.stringify({ error: { message: contextMessage, type: 'invalid_request_error', code: 'context_length_exceeded' } }),
    errorClass: OpenAI.BadRequestError,
    type: 'invalid_request_error',
    code: 'context_length_exceeded',
    message: contextMessage,
  },
  {
    name: '401 invalid_api_key',
    status: 401,
    body: JSON.stringify({ error: { message: 'Invalid API key', type: 'authentication_error', code: 'invalid_api_key' } }),
    errorClass: OpenAI.AuthenticationError,
    type: 'authentication_error',
    code: 'invalid_api_key',
    message: 'Invalid API key',
  },
  {
    name: '402 insufficient_credits',
    status: 402,
    body: JSON.stringify({ error: { message: 'Insufficient credits', type: 'billing_error', code: 'insufficient_credits' } }),
    errorClass: OpenAI.APIError,
    type: 'billing_error',
    code: 'insufficient_credits',
    message: 'Insufficient credits',
  },
  {
    name: '403 permission_error',
    status: 403,
    body: JSON.stringify({ error: { message: 'This key may not use this model', type: 'permission_error', code: 'model_not_allowed' } }),
    errorClass: OpenAI.PermissionDeniedError,
    type: 'permission_error',
    code: 'model_not_allowed',
    message: 'This key may not use this model',
  },
  {
    name: '404 model_not_found',
    status: 404,
    body: JSON.stringify({ error: { message: 'Model not found: x', type: 'not_found_error', code: 'model_not_found' } }),
    errorClass: OpenAI.NotFoundError,
    type: 'not_found_error',
    code: 'model_not_found',
    message: 'Model not found: x',
  },
  {
    name: '429 rate_limit_error with Retry-After',
    status: 429,
    body: JSON.stringify({ error: { message: 'Rate limit exceeded', type: 'rate_limit_error', code: 'rate_limit_exceeded' } }),
    headers: { 'retry-after': '7', 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '7s' },
    errorClass: OpenAI.RateLimitError,
    type: 'rate_limit_error',
    code: 'rate_limit_exceeded',
    message: 'Rate limit exceeded',
    expectHeaders: { 'retry-after': '7', 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '7s' },
  },
  {
    name: '500 server_error',
    status: 500,
    body: JSON.stringify({ error: { message: 'Internal server error', type: 'server_error', code: 'internal_error' } }),
    errorClass: OpenAI.InternalServerError,
    type: 'server_error',
    code: 'internal_error',
    message: 'Internal server error',
  },
  {
    name: '502 JSON provider error',
    status: 502,
    body: JSON.stringify({ error: { message: 'Provider returned error', type: 'server_error', code: 'provider_error' } }),
    errorClass: OpenAI.InternalServerError,
    type: 'server_error',
    code: 'provider_error',
    message: 'Provider returned error',
  },
  {
    name: '503 service_unavailable',
    status: 503,
    body: JSON.stringify({ error: { message: 'Service temporarily unavailable', type: 'server_error', code: 'service_unavailable' } }),
    errorClass: OpenAI.InternalServerError,
    type: 'server_error',
    code: 'service_unavailable',
    message: 'Service temporarily unavailable',
  },
  {
    name: '502 HTML gateway page',
    status: 502,
    body: '<html><body><h1>502 Bad Gateway</h1></body></html>',
    contentType: 'text/html',
    errorClass: OpenAI.InternalServerError,
    type: 'server_error',
    code: 'bad_gateway',
    message: /502/,
  },
  {
    name: 'OpenRouter-style numeric code 429',
    status: 429,
    body: JSON.stringify({ error: { code: 429, message: 'Rate limited', metadata: { raw: 'provider said: slow down' } } }),
    errorClass: OpenAI.RateLimitError,
    type: 'rate_limit_error',
    code: '429',
    message: 'Rate limited',
  },
  {
    name: 'bare string error 500',
    status: 500,
    body: JSON.stringify({ error: 'Something broke' }),
    errorClass: OpenAI.InternalServerError,
    type: 'server_error',
    code: 'upstream_error',
    message: 'Something broke',
  },
]

t.test('each upstream error surfaces as the matching SDK error with status, type and code intact', async (t) => {
  for (const c of errorCases) {
    t.test(c.name, async (t) => {
      const upstream = await startFakeUpstream(t, (_req, res) =>
        sendText(res, c.status, c.contentType ?? 'application/json', c.body, c.headers ?? {}),
      )
      // One attempt: this table is about the shape of what the SDK sees, not about retrying.
      const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { retry: { maxAttempts: 1 } } })
      const client = sdk(proxy.url)

      const err = await rejectionOf(client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }] }))
      t.type(err, OpenAI.APIError, 'an SDK APIError')
      if (!(err instanceof OpenAI.APIError)) return
      t.equal(err.constructor, c.errorClass, `exactly ${c.errorClass.name}`)
      t.equal(err.status, c.status, 'status kept')
      t.equal(err.type, c.type, 'type')
      t.equal(err.code, c.code, 'code (a string)')
      t.equal(typeof err.code, 'string')

      const body = err.error as { message?: unknown; type?: unknown; code?: unknown } | undefined
      t.strictSame(Object.keys(body ?? {}).sort(), ['code', 'message', 'type'], 'exactly the three keys of the error shape')
      t.equal(body?.type, c.type)
      t.equal(body?.code, c.code)
      const message = body?.message
      t.equal(typeof message, 'string')
      if (typeof c.message === 'string') {
        t.equal(message, c.message, 'message kept')
        t.equal(err.message, `${c.status} ${c.message}`, "the SDK's message is built from it")
      } else {
        t.match(message, c.message)
      }
      t.notMatch(err.message, /<html/i, 'never raw markup')
      t.notMatch(String(message), /<html|<body|<h1/i)

      t.ok(err.headers instanceof Headers, 'headers are a Headers object')
      t.equal(err.headers?.get('x-should-retry'), 'false', 'the SDK is told not to retry')
      t.match(err.headers?.get('content-type'), /^application\/json/)
      t.equal(err.requestID, upstream.requests[0]?.headers['x-request-id'], 'the request id reaches the SDK')
      for (const [name, value] of Object.entries(c.expectHeaders ?? {})) {
        t.equal(err.headers?.get(name), value, `${name} reaches the SDK`)
      }
      t.equal(upstream.requests.length, 1)
    })
  }
})

t.test("the proxy's own errors surface as SDK errors: unreachable upstream → 502 upstream_unreachable", async (t) => {
  const proxy = await startProxy(t, { upstreamUrl: await closedPortUrl(), config: { retry: { maxAttempts: 1 } } })
  const client = sdk(proxy.url)

  const err = await rejectionOf(client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }] }))
  t.type(err, OpenAI.InternalServerError, 'not an APIConnectionError: the proxy answered')
  if (!(err instanceof OpenAI.InternalServerError)) return
  t.equal(err.status, 502)
  t.equal(err.type, 'server_error')
  t.equal(err.code, 'upstream_unreachable')
  t.equal(err.headers.get('x-should-retry'), 'false')

  const models = await rejectionOf(client.models.list())
  t.type(models, OpenAI.InternalServerError)
  if (!(models instanceof OpenAI.InternalServerError)) return
  t.equal(models.status, 502)
  t.equal(models.code, 'upstream_unreachable')
})

t.test(
  'with the SDK default of 2 retries, x-should-retry: false means exactly maxAttempts upstream attempts per SDK call, not 9',
  async (t) => {
    const body = { error: { message: 'Service temporarily unavailable', type: 'server_error', code: 'service_unavailable' } }
    // retry-after-ms keeps the SDK's backoff short, so a retrying SDK would fail this test fast.
    const pushback = { 'retry-after-ms': '5' }

    t.test('control: pointed straight at a 503 upstream, the SDK retries twice', async (t) => {
      const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 503, body, pushback))
      const client = sdk(upstream.url, { maxRetries: 2 })
      const err = await rejectionOf(client.chat.completions.create({ model: MODEL, messages: [] }))
      t.type(err, OpenAI.InternalServerError)
      t.equal(upstream.requests.length, 3, 'so the assertions below can fail')
    })

    t.test('through the proxy', async (t) => {
      const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 503, body, pushback))
      const proxy = await startProxy(t, { upstreamUrl: upstream.url })
      const client = sdk(proxy.url, { maxRetries: 2 })

      const err = await rejectionOf(client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }] }))
      t.type(err, OpenAI.InternalServerError)
      if (!(err instanceof OpenAI.InternalServerError)) return
      t.equal(err.status, 503)
      t.equal(err.code, 'service_unavailable')
      t.equal(err.headers.get('x-should-retry'), 'false')
      t.equal(upstream.requests.length, 3, 'exactly retry.maxAttempts (3) upstream attempts for one non-streaming SDK call')
      t.equal(err.headers.get('x-proxy-attempts'), '3')

      const streamErr = await rejectionOf(
        client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], stream: true }),
      )
      t.type(streamErr, OpenAI.InternalServerError)
      t.equal(upstream.requests.length, 6, 'and exactly three more for one streaming SDK call')
      t.ok(
        upstream.requests.every((r) => r.headers['x-stainless-retry-count'] === '0'),
        'the SDK never sent a retry of its own',
      )
    })
  },
)
