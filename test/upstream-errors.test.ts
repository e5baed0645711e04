import { gzipSync } from 'node:zlib'
import t from 'tap'
import { request } from 'undici'
import { expectErrorShape } from './helpers/assert-error.js'
import { closedPortUrl, completion, sendJson, sendText, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy } from './helpers/proxy.js'

const MODEL = 'google/gemini-3.5-flash'

function chat(url: string, body: unknown = { model: MODEL, messages: [{ role: 'user', content: 'hi' }] }) {
  return request(`${url}/chat/completions`, {
    method: 'POST',
    headers: { authorization: 'Bearer sk-client', 'content-type': 'application/json' },
    body: JSON.stringify(body),
  })
}

const rateHeaders = {
  'retry-after': '7',
  'x-ratelimit-limit-requests': '60',
  'x-ratelimit-remaining-requests': '0',
  'x-ratelimit-reset-requests': '1m30s',
  'x-ratelimit-reset-tokens': '250ms',
}

const jsonCases = [
  {
    name: "TopRouter's documented 402 keeps status, message, type and code",
    status: 402,
    body: { error: { message: 'Insufficient credits', type: 'billing_error', code: 'insufficient_credits' } },
    expected: { status: 402, type: 'billing_error', code: 'insufficient_credits', message: 'Insufficient credits' },
  },
  {
    name: '401 invalid_api_key',
    status: 401,
    body: { error: { message: 'Invalid API key', type: 'authentication_error', code: 'invalid_api_key' } },
    expected: { status: 401, type: 'authentication_error', code: 'invalid_api_key' },
  },
  {
    name: '404 model not found',
    status: 404,
    body: { error: { message: 'Model not found: x', type: 'not_found_error', code: 'model_not_found' } },
    expected: { status: 404, type: 'not_found_error', code: 'model_not_found', message: 'Model not found: x' },
  },
  {
    name: 'an OpenRouter-style numeric code with metadata: code string-coerced, type derived, metadata dropped',
    status: 429,
    body: { error: { code: 429, message: 'Rate limited upstream', metadata: { raw: 'provider detail', provider_name: 'X' } } },
    expected: { status: 429, type: 'rate_limit_error', code: '429', message: 'Rate limited upstream' },
  },
  {
    name: 'a bare string error',
    status: 500,
    body: { error: 'Something broke' },
    expected: { status: 500, type: 'server_error', code: 'upstream_error', message: 'Something broke' },
  },
  {
    name: 'a non-string type is replaced by the one for the status, a null code by a default',
    status: 400,
    body: { error: { message: 'Bad things', type: 7, code: null, param: 'messages' } },
    expected: { status: 400, type: 'invalid_request_error', code: 'invalid_request', message: 'Bad things' },
  },
  {
    name: 'a FastAPI-style detail',
    status: 422,
    body: { detail: 'messages must not be empty' },
    expected: { status: 422, type: 'invalid_request_error', code: 'invalid_request', message: 'messages must not be empty' },
  },
  {
    name: 'context_length_exceeded passes through',
    status: 400,
    body: {
      error: {
        message: "This model's maximum context length is 8192 tokens",
        type: 'invalid_request_error',
        code: 'context_length_exceeded',
      },
    },
    expected: { status: 400, type: 'invalid_request_error', code: 'context_length_exceeded' },
  },
]

for (const c of jsonCases) {
  t.test(`upstream JSON error: ${c.name}`, async (t) => {
    const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, c.status, c.body, rateHeaders))
    // One attempt: these cases are about the shape; retries have their own tests.
    const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { retry: { maxAttempts: 1 } } })
    const res = await chat(proxy.url)
    await expectErrorShape(t, res, c.expected)
    t.equal(res.headers['retry-after'], '7', 'Retry-After reaches the client')
    t.equal(res.headers['x-ratelimit-reset-requests'], '1m30s', 'x-ratelimit-* reach the client')
    t.equal(res.headers['x-ratelimit-remaining-requests'], '0')
    t.equal(res.headers['x-proxy-attempts'], '1')
  })
}

const nonJsonCases = [
  {
    name: 'an HTML gateway page',
    status: 502,
    contentType: 'text/html',
    body: Buffer.from('<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>'),
    encoding: undefined,
    expected: { status: 502, type: 'server_error', code: 'bad_gateway', message: /HTTP 502/ },
  },
  {
    name: 'a gzip-encoded HTML page',
    status: 503,
    contentType: 'text/html; charset=utf-8',
    body: gzipSync('<!doctype html><html><body>Service Unavailable</body></html>'),
    encoding: 'gzip',
    expected: { status: 503, type: 'server_error', code: 'service_unavailable', message: /HTTP 503/ },
  },
  {
    name: 'a gzip-encoded JSON error is decoded',
    status: 429,
    contentType: 'application/json',
    body: gzipSync(JSON.stringify({ error: { message: 'Slow down', type: 'rate_limit_error', code: 'rate_limit_exceeded' } })),
    encoding: 'gzip',
    expected: { status: 429, type: 'rate_limit_error', code: 'rate_limit_exceeded', message: 'Slow down' },
  },
  {
    name: 'plain text',
    status: 500,
    contentType: 'text/plain',
    body: Buffer.from('Internal Server Error'),
    encoding: undefined,
    expected: { status: 500, type: 'server_error', code: 'upstream_error', message: /HTTP 500/ },
  },
  {
    name: 'an empty body',
    status: 504,
    contentType: 'application/json',
    body: Buffer.alloc(0),
    encoding: undefined,
    expected: { status: 504, type: 'server_error', code: 'upstream_timeout', message: /HTTP 504/ },
  },
  {
    name: 'broken gzip',
    status: 502,
    contentType: 'application/json',
    body: Buffer.from('not gzip at all'),
    encoding: 'gzip',
    expected: { status: 502, type: 'server_error', code: 'bad_gateway' },
  },
]

for (const c of nonJsonCases) {
  t.test(`upstream non-JSON error: ${c.name}`, async (t) => {
    const upstream = await startFakeUpstream(t, (_req, res) =>
      sendText(res, c.status, c.contentType, c.body, c.encoding ? { 'content-encoding': c.encoding } : {}),
    )
    const proxy = await startProxy(t, { upstreamUrl: upstream.url })
    const res = await chat(proxy.url)
    t.equal(res.headers['content-encoding'], undefined, "the upstream's content-encoding does not describe the error body")
    await expectErrorShape(t, res, c.expected)
  })
}

t.test('an upstream redirect is not passed on: 502 bad_gateway', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) =>
    sendText(res, 301, 'text/html', '<a href="https://evil">moved</a>', { location: 'https://evil.example/' }),
  )
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const res = await chat(proxy.url)
  await expectErrorShape(t, res, { status: 502, code: 'bad_gateway', message: /301/ })
})

t.test('a 200 with an HTML body (a captive portal) is a 502 invalid_upstream_response', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => sendText(res, 200, 'text/html', '<html>Login to Wi-Fi</html>'))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const res = await chat(proxy.url)
  await expectErrorShape(t, res, { status: 502, code: 'invalid_upstream_response' })
})

t.test('an unreachable upstream is a 502 upstream_unreachable', async (t) => {
  const proxy = await startProxy(t, { upstreamUrl: await closedPortUrl() })
  await expectErrorShape(t, await chat(proxy.url), { status: 502, type: 'server_error', code: 'upstream_unreachable' })
  const models = await request(`${proxy.url}/models`, { headers: { authorization: 'Bearer sk-client' } })
  await expectErrorShape(t, models, { status: 502, code: 'upstream_unreachable' })
})

t.test('a socket reset before response headers is a 502', async (t) => {
  const upstream = await startFakeUpstream(t, (req) => {
    req.socket.destroy()
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  await expectErrorShape(t, await chat(proxy.url), { status: 502, code: 'upstream_unreachable' })
})

t.test('an upstream that does not answer within responseTimeoutMs is a 504, on time', async (t) => {
  const upstream = await startFakeUpstream(t, async (_req, res) => {
    await sleep(2000)
    sendJson(res, 200, completion(MODEL))
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { upstream: { responseTimeoutMs: 300 }, retry: { maxAttempts: 1 } },
  })
  const startedAt = performance.now()
  const res = await chat(proxy.url)
  const elapsedMs = performance.now() - startedAt
  await expectErrorShape(t, res, { status: 504, type: 'server_error', code: 'upstream_timeout' })
  t.ok(elapsedMs >= 280 && elapsedMs < 1500, `answered at the timeout (${Math.round(elapsedMs)} ms)`)
})

t.test('a stream whose headers never come within firstByteTimeoutMs is a 504', async (t) => {
  const upstream = await startFakeUpstream(t, async () => {
    await sleep(2000)
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { upstream: { firstByteTimeoutMs: 200 }, retry: { maxAttempts: 1 } },
  })
  const res = await chat(proxy.url, { model: MODEL, stream: true, messages: [] })
  await expectErrorShape(t, res, { status: 504, code: 'upstream_timeout' })
})

t.test('an API key echoed by the upstream never reaches the client', async (t) => {
  const key = 'sk-canary-0123456789abcdef'
  const upstream = await startFakeUpstream(t, (req, res) =>
    sendJson(res, 401, {
      error: { message: `Invalid key ${String(req.headers.authorization)}`, type: 'authentication_error', code: 'invalid_api_key' },
    }),
  )
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, env: { TOPROUTER_API_KEY: key } })
  const res = await chat(proxy.url)
  const error = await expectErrorShape(t, res, { status: 401, code: 'invalid_api_key' })
  t.notMatch(error.message, key)
  t.match(error.message, /redacted/)
})
