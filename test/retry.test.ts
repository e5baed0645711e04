import type { ServerResponse } from 'node:http'
import t from 'tap'
import { type Dispatcher, request } from 'undici'
import { expectErrorShape } from './helpers/assert-error.js'
import { closedPortUrl, completion, type FakeUpstream, sendJson, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy, type TestProxy } from './helpers/proxy.js'

/**
 * Retries through the real proxy (SPEC § "Resilience semantics"): which failures are retried and
 * how often, the waits between attempts (backoff and server pushback), the per-request deadline,
 * the shared retry budget, the body replayed on every attempt and failed bodies let go of.
 * Each subtest runs its own fake upstream and proxy; timings are measured on the upstream's side
 * (when each attempt arrived) with tight lower bounds and loose upper bounds.
 */

const MODEL = 'google/gemini-3.5-flash'
const DEFAULT_BODY = JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }] })
/** Breakers that never open, for tests where many failures are the point. */
const NO_BREAKER = { errorThresholdPercentage: 100, volumeThreshold: 1_000_000 }

interface Sent {
  readonly res: Dispatcher.ResponseData
  /** Client-side: request start → response headers. */
  readonly elapsedMs: number
  readonly startedAt: number
}

async function chat(proxy: TestProxy, options: { body?: string; headers?: Record<string, string> } = {}): Promise<Sent> {
  const startedAt = performance.now()
  const res = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { authorization: 'Bearer sk-client', 'content-type': 'application/json', ...options.headers },
    body: options.body ?? DEFAULT_BODY,
    // No legitimate answer here takes this long: a proxy that hangs fails the test, not the file.
    headersTimeout: 5000,
  })
  return { res, elapsedMs: performance.now() - startedAt, startedAt }
}

function attemptsHeader(res: Dispatcher.ResponseData): number {
  return Number(res.headers['x-proxy-attempts'])
}

/** Log lines whose message is `msg`, or starts with it followed by `;`. */
function logsWith(proxy: TestProxy, msg: string): Array<Record<string, unknown>> {
  return proxy.logLines().filter((line) => typeof line.msg === 'string' && (line.msg === msg || line.msg.startsWith(`${msg};`)))
}

/**
 * Known bug (src/forward.ts, chat()): when the deadline fires, retrier.run() throws and the
 * `x-proxy-attempts` header, set only after the model loop, is never added to the 504.
 */

/** Milliseconds between consecutive upstream attempts, as the upstream saw them. */
function gaps(upstream: FakeUpstream): number[] {
  const times = upstream.requests.map((r) => r.receivedAt)
  return times.slice(1).map((time, i) => time - (times[i] as number))
}

function errorBody(status: number, code: string, message = `failure ${status}`) {
  return { error: { message, type: status === 429 ? 'rate_limit_error' : status >= 500 ? 'server_error' : 'invalid_request_error', code } }
}

/**
 * A spent requests quota. On a 429 its reset is the wait (SPEC § "Resilience semantics"), so it
 * refills in 20 ms here, overriding the fake upstream's everyday `30s`; on a 5xx it is ignored.
 */
const rateHeaders = { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-limit-requests': '60', 'x-ratelimit-reset-requests': '20ms' }

/** Never answers; resolves when the proxy gives up on the attempt (or the upstream closes). */
function stall(res: ServerResponse): Promise<void> {
  return new Promise<void>((resolve) => res.on('close', () => resolve()))
}

// ---------------------------------------------------------------------------------------------
// 1. What is retried, and how many times
// ---------------------------------------------------------------------------------------------

const retryableCases = [
  { status: 429, code: 'rate_limit_exceeded' },
  { status: 500, code: 'upstream_error' },
  { status: 502, code: 'bad_gateway' },
  { status: 503, code: 'service_unavailable' },
  { status: 504, code: 'upstream_timeout' },
]

for (const c of retryableCases) {
  t.test(`a persistent ${c.status} is tried maxAttempts (3) times, then passed on with x-should-retry: false`, async (t) => {
    const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, c.status, errorBody(c.status, c.code), rateHeaders))
    const proxy = await startProxy(t, { upstreamUrl: upstream.url })
    const { res } = await chat(proxy)
    await expectErrorShape(t, res, { status: c.status, code: c.code, message: `failure ${c.status}` })
    t.equal(upstream.requests.length, 3, 'three upstream attempts')
    t.equal(attemptsHeader(res), 3, 'x-proxy-attempts: 3')
    t.equal(res.headers['x-ratelimit-remaining-requests'], '0', "the last attempt's headers reach the client")
    const retrying = logsWith(proxy, 'retrying')
    t.equal(retrying.length, 2, "one 'retrying' line per retry")
    t.same(
      retrying.map((line) => line.reason),
      [String(c.status), String(c.status)],
      'each retry line names the status',
    )
  })
}

const nonRetryableCases = [
  { name: '400 invalid_request', status: 400, code: 'invalid_request' },
  { name: '400 context_length_exceeded', status: 400, code: 'context_length_exceeded' },
  { name: '400 content_policy_violation', status: 400, code: 'content_policy_violation' },
  { name: '401 invalid_api_key', status: 401, code: 'invalid_api_key' },
  { name: '402 insufficient_credits', status: 402, code: 'insufficient_credits' },
  { name: '403 forbidden', status: 403, code: 'forbidden' },
  { name: '404 model_not_found', status: 404, code: 'model_not_found' },
  { name: '422 invalid_request', status: 422, code: 'invalid_request' },
  { name: '429 insufficient_quota', status: 429, code: 'insufficient_quota' },
]

for (const c of nonRetryableCases) {
  t.test(`${c.name} is never retried, even with a pushback header`, async (t) => {
    // A zero pushback would make a wrongly retried request fast and still visible in the count.
    const upstream = await startFakeUpstream(t, (_req, res) =>
      sendJson(res, c.status, errorBody(c.status, c.code), { 'retry-after-ms': '0', 'retry-after': '0' }),
    )
    const proxy = await startProxy(t, { upstreamUrl: upstream.url })
    const { res } = await chat(proxy)
    await expectErrorShape(t, res, { status: c.status, code: c.code })
    t.equal(upstream.requests.length, 1, 'one upstream attempt')
    t.equal(attemptsHeader(res), 1, 'x-proxy-attempts: 1')
    t.equal(logsWith(proxy, 'retrying').length, 0, "no 'retrying' line")
  })
}

t.test('retry.maxAttempts bounds the attempts per model (1 and 5)', async (t) => {
  for (const maxAttempts of [1, 5]) {
    const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 503, errorBody(503, 'service_unavailable')))
    const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { retry: { maxAttempts } } })
    const { res } = await chat(proxy)
    await expectErrorShape(t, res, { status: 503, code: 'service_unavailable' })
    t.equal(upstream.requests.length, maxAttempts, `maxAttempts ${maxAttempts}: that many upstream attempts`)
    t.equal(attemptsHeader(res), maxAttempts, `maxAttempts ${maxAttempts}: x-proxy-attempts`)
    t.equal(logsWith(proxy, 'retrying').length, maxAttempts - 1, `maxAttempts ${maxAttempts}: retry log lines`)
  }
})

t.test('a success after retries is a 200 with the upstream body byte for byte', async (t) => {
  // Odd spacing and key order: any re-serialisation by the proxy would show.
  const successText = `{ "id":"gen-retry" ,"object":"chat.completion","created":1760000000,"model":"${MODEL}",\n  "choices":[{"index":0,"message":{"role":"assistant","content":"h\\u00e9llo \u{1F30D}"},"finish_reason":"stop"}] }`
  const upstream = await startFakeUpstream(t, (_req, res, _recorded, index) => {
    if (index === 0) return sendJson(res, 500, errorBody(500, 'upstream_error'))
    if (index === 1) return sendJson(res, 502, errorBody(502, 'bad_gateway'))
    return sendJson(res, 200, successText, { 'x-upstream-marker': 'third' })
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const { res } = await chat(proxy)
  const text = await res.body.text()
  t.equal(res.statusCode, 200, 'status 200')
  t.equal(text, successText, 'body byte-identical to the successful attempt')
  t.equal(res.headers['x-upstream-marker'], 'third', "the successful attempt's headers")
  t.equal(upstream.requests.length, 3, 'three upstream attempts')
  t.equal(attemptsHeader(res), 3, 'x-proxy-attempts: 3')
  const retrying = logsWith(proxy, 'retrying')
  t.same(
    retrying.map((line) => line.reason),
    ['500', '502'],
    "one 'retrying' line per retry, naming what failed",
  )
  const requestLine = logsWith(proxy, 'request')[0]
  t.equal(requestLine?.attempts, 3, 'the request log line counts the attempts')
  t.equal(requestLine?.status, 200)
})

t.test('a connection reset before the response headers is retried', async (t) => {
  const upstream = await startFakeUpstream(t, (req, res, _recorded, index) => {
    if (index < 2) {
      req.socket.destroy()
      return
    }
    sendJson(res, 200, completion(MODEL, 'after resets'))
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const { res } = await chat(proxy)
  const body = (await res.body.json()) as ReturnType<typeof completion>
  t.equal(res.statusCode, 200, 'status 200')
  t.equal(body.choices[0]?.message.content, 'after resets')
  t.equal(upstream.requests.length, 3, 'three upstream attempts')
  t.equal(attemptsHeader(res), 3, 'x-proxy-attempts: 3')
  t.same(
    logsWith(proxy, 'retrying').map((line) => line.reason),
    ['reset', 'reset'],
    'two retries, both for a reset',
  )
})

t.test('a refused connection is retried, then answered 502 upstream_unreachable', async (t) => {
  const proxy = await startProxy(t, { upstreamUrl: await closedPortUrl() })
  const { res } = await chat(proxy)
  await expectErrorShape(t, res, { status: 502, code: 'upstream_unreachable' })
  t.equal(attemptsHeader(res), 3, 'x-proxy-attempts: 3')
  t.same(
    logsWith(proxy, 'retrying').map((line) => line.reason),
    ['connect', 'connect'],
    'two retries, both for a failed connect',
  )
})

// ---------------------------------------------------------------------------------------------
// 2. Full-jitter exponential backoff, seen from the upstream
// ---------------------------------------------------------------------------------------------

t.test('backoff: with random 0.999 the waits are ~base then ~2·base; with random 0 back to back', async (t) => {
  t.test('random 0.999, baseDelayMs 100', async (t) => {
    const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 503, errorBody(503, 'service_unavailable')))
    const proxy = await startProxy(t, {
      upstreamUrl: upstream.url,
      config: { retry: { baseDelayMs: 100, maxDelayMs: 10_000 } },
      random: () => 0.999,
    })
    const { res } = await chat(proxy)
    await res.body.dump()
    t.equal(upstream.requests.length, 3)
    const [first, second] = gaps(upstream) as [number, number]
    t.ok(first >= 99 - 3 && first <= 99 + 300, `1st wait ~99 ms (was ${first.toFixed(1)})`)
    t.ok(second >= 199 - 3 && second <= 199 + 300, `2nd wait ~199 ms (was ${second.toFixed(1)})`)
    t.same(
      logsWith(proxy, 'retrying').map((line) => [line.delayMs, line.delaySource]),
      [
        [99, 'backoff'],
        [199, 'backoff'],
      ],
      'logged delays: floor(0.999 · 100 · 2^n)',
    )
  })

  t.test('random 0.999, maxDelayMs caps the growth', async (t) => {
    const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 503, errorBody(503, 'service_unavailable')))
    const proxy = await startProxy(t, {
      upstreamUrl: upstream.url,
      config: { retry: { maxAttempts: 4, baseDelayMs: 100, maxDelayMs: 150 } },
      random: () => 0.999,
    })
    const { res } = await chat(proxy)
    await res.body.dump()
    t.equal(upstream.requests.length, 4)
    const waits = gaps(upstream)
    const expected = [99, 149, 149]
    waits.forEach((wait, i) => {
      const want = expected[i] as number
      t.ok(wait >= want - 3 && wait <= want + 300, `wait ${i + 1} ~${want} ms (was ${wait.toFixed(1)})`)
    })
    t.same(
      logsWith(proxy, 'retrying').map((line) => line.delayMs),
      expected,
    )
  })

  t.test('random 0: attempts follow each other at once', async (t) => {
    const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 503, errorBody(503, 'service_unavailable')))
    const proxy = await startProxy(t, {
      upstreamUrl: upstream.url,
      config: { retry: { baseDelayMs: 1000, maxDelayMs: 10_000 } },
      random: () => 0,
    })
    const { res, elapsedMs } = await chat(proxy)
    await res.body.dump()
    t.equal(upstream.requests.length, 3)
    for (const wait of gaps(upstream)) t.ok(wait < 150, `no wait between attempts (was ${wait.toFixed(1)})`)
    t.ok(elapsedMs < 500, `answered well before a 1 s backoff could have elapsed (${elapsedMs.toFixed(0)} ms)`)
    t.same(
      logsWith(proxy, 'retrying').map((line) => line.delayMs),
      [0, 0],
    )
  })
})

// ---------------------------------------------------------------------------------------------
// 3. Server pushback
// ---------------------------------------------------------------------------------------------

const pushbackCases = [
  { name: 'retry-after-ms: 250', headers: { 'retry-after-ms': '250' }, waitMs: 250 },
  { name: 'Retry-After: 1 (seconds)', headers: { 'retry-after': '1' }, waitMs: 1000 },
  {
    name: 'x-ratelimit-remaining-requests: 0 with x-ratelimit-reset-requests: 250ms',
    headers: { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '250ms' },
    waitMs: 250,
  },
  {
    name: 'x-ratelimit-remaining-requests: 0 with x-ratelimit-reset-requests: 1s',
    headers: { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '1s' },
    waitMs: 1000,
  },
  {
    name: 'a garbage retry-after-ms does not hide a good x-ratelimit-reset-requests',
    headers: { 'retry-after-ms': 'soon', 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '250ms' },
    waitMs: 250,
  },
]

for (const c of pushbackCases) {
  t.test(`server pushback wins: ${c.name}`, async (t) => {
    const upstream = await startFakeUpstream(t, (_req, res, _recorded, index) => {
      if (index === 0) return sendJson(res, 429, errorBody(429, 'rate_limit_exceeded'), c.headers)
      sendJson(res, 200, completion())
    })
    // random 0: our own backoff would be 0 ms, so any wait comes from the server.
    const proxy = await startProxy(t, { upstreamUrl: upstream.url, random: () => 0 })
    const { res } = await chat(proxy)
    await res.body.dump()
    t.equal(res.statusCode, 200, 'the retry succeeded')
    t.equal(upstream.requests.length, 2, 'two attempts')
    t.equal(attemptsHeader(res), 2, 'x-proxy-attempts: 2')
    const [wait] = gaps(upstream) as [number]
    t.ok(wait >= c.waitMs - 3 && wait <= c.waitMs + 300, `waited ~${c.waitMs} ms (was ${wait.toFixed(1)})`)
    t.same(
      logsWith(proxy, 'retrying').map((line) => [line.delayMs, line.delaySource]),
      [[c.waitMs, 'server']],
    )
  })
}

t.test('server pushback wins: Retry-After as an HTTP date', async (t) => {
  let targetMs = 0
  let firstWallMs = 0
  let secondWallMs = 0
  const upstream = await startFakeUpstream(t, (_req, res, _recorded, index) => {
    if (index === 0) {
      firstWallMs = Date.now()
      // The first whole second at least 300 ms away: a wait of 300–1300 ms.
      targetMs = Math.ceil((firstWallMs + 300) / 1000) * 1000
      return sendJson(res, 503, errorBody(503, 'service_unavailable'), { 'retry-after': new Date(targetMs).toUTCString() })
    }
    secondWallMs = Date.now()
    sendJson(res, 200, completion())
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, random: () => 0 })
  const { res } = await chat(proxy)
  await res.body.dump()
  t.equal(res.statusCode, 200)
  t.equal(upstream.requests.length, 2)
  t.ok(secondWallMs >= targetMs - 5, `the retry came no earlier than the date (${secondWallMs - targetMs} ms after it)`)
  t.ok(secondWallMs <= targetMs + 300, `and not long after it (${secondWallMs - targetMs} ms)`)
  t.ok(secondWallMs - firstWallMs >= 295, `waited at least 300 ms (${secondWallMs - firstWallMs} ms)`)
  t.equal(logsWith(proxy, 'retrying')[0]?.delaySource, 'server')
})

const garbageCases = [
  { 'retry-after-ms': 'soon' },
  { 'retry-after': 'tomorrow' },
  { 'retry-after': '-3' },
  { 'retry-after': 'Wed, 32 Foo 2025 99:00:00 GMT' },
  // With the quota spent, so that the reset would count if it were a duration.
  { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '5' },
  { 'retry-after-ms': '', 'retry-after': '1e3', 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '1 minute' },
]

t.test('garbage pushback values are ignored: the backoff applies', async (t) => {
  for (const headers of garbageCases) {
    const label = JSON.stringify(headers)
    const upstream = await startFakeUpstream(t, (_req, res, _recorded, index) => {
      if (index === 0) return sendJson(res, 429, errorBody(429, 'rate_limit_exceeded'), headers)
      sendJson(res, 200, completion())
    })
    // random 0.999 with base 100: the backoff is 99 ms, distinguishable from 0 and from a long wait.
    const proxy = await startProxy(t, {
      upstreamUrl: upstream.url,
      config: { retry: { baseDelayMs: 100, maxDelayMs: 10_000 } },
      random: () => 0.999,
    })
    const { res } = await chat(proxy)
    await res.body.dump()
    t.equal(res.statusCode, 200, `${label}: retried and succeeded`)
    t.equal(upstream.requests.length, 2, `${label}: two attempts`)
    const [wait] = gaps(upstream) as [number]
    t.ok(wait >= 99 - 3 && wait <= 99 + 300, `${label}: waited the ~99 ms backoff (was ${wait.toFixed(1)})`)
    t.same(
      logsWith(proxy, 'retrying').map((line) => [line.delayMs, line.delaySource]),
      [[99, 'backoff']],
      `${label}: logged as backoff`,
    )
  }
})

const tooLongCases = [
  {
    name: 'Retry-After: 120 exceeds the default maxRetryAfterMs (60 s)',
    status: 429,
    headers: { 'retry-after': '120' },
    config: {},
    clientHeaders: {},
    reason: 'pushback_too_long',
  },
  {
    name: 'retry-after-ms: 1500 exceeds maxRetryAfterMs 1000',
    status: 429,
    headers: { 'retry-after-ms': '1500' },
    config: { retry: { maxRetryAfterMs: 1000 } },
    clientHeaders: {},
    reason: 'pushback_too_long',
  },
  {
    name: 'a 429 with x-ratelimit-remaining-requests: 0 and x-ratelimit-reset-requests: 1m30s exceeds the default maxRetryAfterMs',
    status: 429,
    headers: { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '1m30s' },
    config: {},
    clientHeaders: {},
    reason: 'pushback_too_long',
  },
  {
    name: 'retry-after-ms: 2000 is past requestTimeoutMs 1000',
    status: 429,
    headers: { 'retry-after-ms': '2000' },
    config: { upstream: { requestTimeoutMs: 1000 } },
    clientHeaders: {},
    reason: 'deadline',
  },
  {
    name: "Retry-After: 2 is past the client's X-Stainless-Timeout: 1",
    status: 503,
    headers: { 'retry-after': '2' },
    config: {},
    clientHeaders: { 'x-stainless-timeout': '1' },
    reason: 'deadline',
  },
]

for (const c of tooLongCases) {
  t.test(`a pushback that cannot be honoured is answered at once: ${c.name}`, async (t) => {
    const upstream = await startFakeUpstream(t, (_req, res) =>
      sendJson(res, c.status, errorBody(c.status, c.status === 429 ? 'rate_limit_exceeded' : 'service_unavailable'), {
        ...rateHeaders,
        ...c.headers,
      }),
    )
    const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: c.config })
    const { res, elapsedMs } = await chat(proxy, { headers: c.clientHeaders })
    await expectErrorShape(t, res, { status: c.status })
    t.ok(elapsedMs < 500, `answered at once (${elapsedMs.toFixed(0)} ms), not after the wait`)
    t.equal(upstream.requests.length, 1, 'one upstream attempt')
    t.equal(attemptsHeader(res), 1, 'x-proxy-attempts: 1')
    for (const [name, value] of Object.entries(c.headers)) t.equal(res.headers[name], value, `${name} passed through`)
    t.equal(res.headers['x-ratelimit-remaining-requests'], '0', 'the other upstream headers too')
    t.same(
      logsWith(proxy, 'not retrying').map((line) => line.reason),
      [c.reason],
      `logged as ${c.reason}`,
    )
  })
}

// ---------------------------------------------------------------------------------------------
// 4. One deadline per request
// ---------------------------------------------------------------------------------------------

t.test('requestTimeoutMs 400 with an upstream that stalls: 504 upstream_timeout at ~400 ms', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => stall(res))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { upstream: { requestTimeoutMs: 400 } } })
  const { res, elapsedMs } = await chat(proxy)
  await expectErrorShape(t, res, { status: 504, code: 'upstream_timeout' })
  t.ok(elapsedMs >= 390 && elapsedMs <= 400 + 300, `504 at the deadline (${elapsedMs.toFixed(0)} ms)`)
  t.equal(upstream.requests.length, 1, 'no attempt after the deadline')
  t.equal(attemptsHeader(res), 1, 'x-proxy-attempts: 1')
})

t.test('X-Stainless-Timeout: 0.3 shortens requestTimeoutMs 10000 to ~300 ms', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => stall(res))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { upstream: { requestTimeoutMs: 10_000 } } })
  const { res, elapsedMs } = await chat(proxy, { headers: { 'x-stainless-timeout': '0.3' } })
  await expectErrorShape(t, res, { status: 504, code: 'upstream_timeout' })
  t.ok(elapsedMs >= 290 && elapsedMs <= 300 + 300, `504 at the client's deadline (${elapsedMs.toFixed(0)} ms)`)
  t.equal(upstream.requests.length, 1)
})

t.test('the deadline covers the whole request: a 503 then a stall still ends at ~400 ms', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res, _recorded, index) => {
    if (index === 0) return sendJson(res, 503, errorBody(503, 'service_unavailable'))
    return stall(res)
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { upstream: { requestTimeoutMs: 400 } } })
  const { res, elapsedMs, startedAt } = await chat(proxy)
  await expectErrorShape(t, res, { status: 504, code: 'upstream_timeout' })
  t.ok(
    elapsedMs >= 390 && elapsedMs <= 400 + 300,
    `504 at the deadline, not 400 ms after the 2nd attempt began (${elapsedMs.toFixed(0)} ms)`,
  )
  t.equal(upstream.requests.length, 2, 'two attempts, none after the deadline')
  for (const r of upstream.requests) t.ok(r.receivedAt - startedAt < 400, 'every attempt started before the deadline')
  t.equal(attemptsHeader(res), 2, 'x-proxy-attempts: 2')
})

t.test('no backoff starts that would end past the deadline: the last error comes back at once', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 503, errorBody(503, 'service_unavailable'), rateHeaders))
  // Waits of 599 then 1198 ms: the second would end past the 1000 ms deadline.
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { upstream: { requestTimeoutMs: 1000 }, retry: { baseDelayMs: 600, maxDelayMs: 10_000 } },
    random: () => 0.999,
  })
  const { res, elapsedMs, startedAt } = await chat(proxy)
  await expectErrorShape(t, res, { status: 503, code: 'service_unavailable' })
  t.equal(upstream.requests.length, 2, 'two attempts')
  t.equal(attemptsHeader(res), 2, 'x-proxy-attempts: 2')
  t.ok(elapsedMs >= 590 && elapsedMs < 950, `answered right after the 2nd attempt, before the deadline (${elapsedMs.toFixed(0)} ms)`)
  for (const r of upstream.requests) t.ok(r.receivedAt - startedAt < 1000, 'every attempt started before the deadline')
  t.equal(res.headers['x-ratelimit-remaining-requests'], '0', "the upstream's headers")
  t.same(
    logsWith(proxy, 'not retrying').map((line) => line.reason),
    ['deadline'],
  )
})

t.test('X-Stainless-Retry-Count: 1 turns off status-based retries but not connection retries', async (t) => {
  t.test('a 503 gets one attempt', async (t) => {
    const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 503, errorBody(503, 'service_unavailable')))
    const proxy = await startProxy(t, { upstreamUrl: upstream.url })
    const { res } = await chat(proxy, { headers: { 'x-stainless-retry-count': '1' } })
    await expectErrorShape(t, res, { status: 503, code: 'service_unavailable' })
    t.equal(upstream.requests.length, 1, 'one attempt')
    t.equal(attemptsHeader(res), 1)
    t.same(
      logsWith(proxy, 'not retrying').map((line) => line.reason),
      ['client_retrying'],
    )
  })

  t.test('X-Stainless-Retry-Count: 0 still retries', async (t) => {
    const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 503, errorBody(503, 'service_unavailable')))
    const proxy = await startProxy(t, { upstreamUrl: upstream.url })
    const { res } = await chat(proxy, { headers: { 'x-stainless-retry-count': '0' } })
    await res.body.dump()
    t.equal(upstream.requests.length, 3, 'three attempts')
  })

  t.test('a reset is still retried', async (t) => {
    const upstream = await startFakeUpstream(t, (req, res, _recorded, index) => {
      if (index === 0) {
        req.socket.destroy()
        return
      }
      sendJson(res, 200, completion())
    })
    const proxy = await startProxy(t, { upstreamUrl: upstream.url })
    const { res } = await chat(proxy, { headers: { 'x-stainless-retry-count': '1' } })
    await res.body.dump()
    t.equal(res.statusCode, 200, 'succeeded on the retry')
    t.equal(upstream.requests.length, 2, 'two attempts')
    t.equal(attemptsHeader(res), 2)
  })
})

// ---------------------------------------------------------------------------------------------
// 5. Retry budget
// ---------------------------------------------------------------------------------------------

t.test('the retry budget bounds the extra load of a full outage', async (t) => {
  const requests = 200
  const budgetPercent = 10
  const budgetMinPerSecond = 1
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 503, errorBody(503, 'service_unavailable')))
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { retry: { maxAttempts: 3, budgetPercent, budgetMinPerSecond }, breaker: NO_BREAKER },
  })
  const pending: Array<Promise<{ status: number; attempts: number }>> = []
  for (let i = 0; i < requests; i++) {
    pending.push(
      chat(proxy).then(async ({ res }) => {
        await res.body.dump()
        return { status: res.statusCode, attempts: attemptsHeader(res) }
      }),
    )
    await sleep(20) // ~50 requests per second
  }
  const results = await Promise.all(pending)
  const bound = requests + (requests * budgetPercent) / 100 + budgetMinPerSecond * 10
  const attempts = upstream.requests.length
  t.ok(attempts <= bound, `${attempts} upstream attempts <= ${bound} (without a budget: ${requests * 3})`)
  t.ok(attempts > requests, `some retries were still allowed (${attempts - requests})`)
  t.comment(`budget: ${attempts} upstream attempts for ${requests} requests (bound ${bound})`)
  t.equal(results.filter((r) => r.status === 503).length, requests, 'every client got 503')
  t.equal(
    results.reduce((sum, r) => sum + r.attempts, 0),
    attempts,
    'the x-proxy-attempts headers add up to the upstream attempts',
  )
  t.ok(logsWith(proxy, 'retry budget exhausted').length > 0, 'the exhausted budget is logged')
  t.equal(logsWith(proxy, 'retrying').length, attempts - requests, "one 'retrying' line per retry")
})

// ---------------------------------------------------------------------------------------------
// 7. The body is replayed identically; failed bodies are let go of
// ---------------------------------------------------------------------------------------------

t.test('the request body is replayed byte for byte on every attempt', async (t) => {
  const sent =
    '\n{  "model" :"google/gemini-3.5-flash" ,\t"messages":[ {"role":"user","content":"h\u00e9llo \u{1F30D} \\u00e9 \u2028 \\u0000"}],\r\n' +
    '"temperature" : 0.50 , "metadata":{"z":1,"a":[ ]}}  \n\t'
  const upstream = await startFakeUpstream(t, (_req, res, _recorded, index) => {
    if (index === 0) return sendJson(res, 503, errorBody(503, 'service_unavailable'))
    if (index === 1) return sendJson(res, 429, errorBody(429, 'rate_limit_exceeded'))
    sendJson(res, 200, completion())
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const { res } = await chat(proxy, { body: sent })
  await res.body.dump()
  t.equal(res.statusCode, 200)
  t.equal(upstream.requests.length, 3, 'three attempts')
  const expected = Buffer.from(sent)
  upstream.requests.forEach((r, i) => {
    t.ok(r.body.equals(expected), `attempt ${i + 1}: body byte-identical to what the client sent`)
    t.equal(r.headers['content-length'], String(expected.length), `attempt ${i + 1}: content-length`)
  })
})

for (const variant of [
  { name: 'drained (under maxErrorBodyBytes)', maxErrorBodyBytes: 1_048_576 },
  { name: 'destroyed (over maxErrorBodyBytes)', maxErrorBodyBytes: 1024 },
]) {
  t.test(`failed attempts' bodies are ${variant.name}: no connection leak`, async (t) => {
    const bigError = JSON.stringify({ error: { message: 'x'.repeat(200 * 1024), type: 'server_error', code: 'upstream_error' } })
    let maxOpenSockets = 0
    const upstream = await startFakeUpstream(t, (_req, res, _recorded, index) => {
      maxOpenSockets = Math.max(maxOpenSockets, upstream.sockets.size)
      // Per client request: two 500s, then a success.
      if (index % 3 < 2) return sendJson(res, 500, bigError)
      sendJson(res, 200, completion())
    })
    const proxy = await startProxy(t, {
      upstreamUrl: upstream.url,
      // A budget large enough for 60 retries in a few hundred ms: the budget has its own test.
      // A short deadline, so a leak that starves the pool fails the test instead of hanging it.
      config: {
        upstream: { maxErrorBodyBytes: variant.maxErrorBodyBytes, requestTimeoutMs: 2000 },
        retry: { budgetMinPerSecond: 100 },
        breaker: NO_BREAKER,
      },
    })
    let succeeded = 0
    for (let i = 0; i < 30; i++) {
      const { res } = await chat(proxy)
      await res.body.dump()
      if (res.statusCode !== 200 || attemptsHeader(res) !== 3) break
      succeeded++
    }
    t.equal(succeeded, 30, 'all 30 requests succeeded on their third attempt')
    t.equal(upstream.requests.length, 90, '90 upstream attempts')
    t.ok(maxOpenSockets <= 4, `the upstream never saw more than a handful of open sockets (max ${maxOpenSockets})`)
    t.ok(upstream.sockets.size <= 4, `open sockets at the end: ${upstream.sockets.size}`)
  })
}

t.test('a non-streaming body cut half-way is retried, never relayed as a truncated 200', async (t) => {
  const full = JSON.stringify({
    id: 'gen-1',
    object: 'chat.completion',
    choices: [{ index: 0, message: { role: 'assistant', content: 'x'.repeat(2000) }, finish_reason: 'stop' }],
  })
  const upstream = await startFakeUpstream(t, (req, res, _recorded, index) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(full.length) })
    if (index === 0) {
      res.write(full.slice(0, 300))
      setTimeout(() => req.socket.destroy(), 20)
      return
    }
    res.end(full)
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const res = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { authorization: 'Bearer sk-client', 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'google/gemini-3.5-flash', messages: [] }),
  })
  t.equal(res.statusCode, 200)
  t.equal(await res.body.text(), full, 'the whole body, byte-identical')
  t.equal(res.headers['x-proxy-attempts'], '2')
  t.equal(upstream.requests.length, 2)
})
