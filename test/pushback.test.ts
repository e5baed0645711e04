import OpenAI from 'openai'
import t, { type Test } from 'tap'
import { type Dispatcher, request } from 'undici'
import { expectErrorShape } from './helpers/assert-error.js'
import {
  completion,
  type FakeUpstream,
  sendJson,
  startFakeUpstream,
  TOPROUTER_RATE_LIMIT_HEADERS,
  type UpstreamHandler,
} from './helpers/fake-upstream.js'
import { startProxy, type TestProxy } from './helpers/proxy.js'

/**
 * Server pushback through the real proxy, against a fake upstream that behaves like TopRouter: all
 * six `x-ratelimit-*` headers on every answer, errors included (59 of 60 requests left, reset 30s).
 * SPEC § "Resilience semantics": `retry-after-ms`, then `Retry-After`, on any retryable status; the
 * `x-ratelimit-reset-*` headers count only on a 429 whose matching remaining count is 0 (both 0:
 * the longer reset), never on a 5xx. A wait over `retry.maxRetryAfterMs` or the time left is
 * answered at once with the upstream's status and headers.
 *
 * The proxy runs with millisecond backoff (`startProxy`'s default), so a retry the upstream did not
 * ask to delay arrives within milliseconds, and any long gap can only come from a pushback. Gaps are
 * measured on the upstream's side, between the arrivals of consecutive attempts.
 */

const MODEL = 'google/gemini-3.5-flash'
const BODY = JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }] })
/** A retry nobody asked to delay: millisecond backoff plus loopback round trips, with room for a busy CI box. */
const FAST_RETRY_MS = 250

interface Sent {
  readonly res: Dispatcher.ResponseData
  /** Client-side: request start → response headers. */
  readonly elapsedMs: number
}

async function chat(proxy: TestProxy): Promise<Sent> {
  const startedAt = performance.now()
  const res = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { authorization: 'Bearer sk-client', 'content-type': 'application/json' },
    body: BODY,
    // Longer than any wait a test here expects: a proxy that waits out a 30 s reset fails the test, not the file.
    headersTimeout: 5000,
  })
  return { res, elapsedMs: performance.now() - startedAt }
}

/** The gap between the first and the second upstream attempt, as the upstream saw them. */
function firstGapMs(upstream: FakeUpstream): number {
  const [first, second] = upstream.requests
  if (first === undefined || second === undefined) return Number.NaN
  return second.receivedAt - first.receivedAt
}

function retryLogs(proxy: TestProxy): Array<Record<string, unknown>> {
  return proxy.logLines().filter((line) => line.msg === 'retrying')
}

function notRetryingReasons(proxy: TestProxy): unknown[] {
  return proxy
    .logLines()
    .filter((line) => line.msg === 'not retrying')
    .map((line) => line.reason)
}

function errorBody(status: number) {
  return status === 429
    ? { error: { message: 'Rate limit exceeded', type: 'rate_limit_error', code: 'rate_limit_exceeded' } }
    : { error: { message: `upstream failure ${status}`, type: 'server_error', code: 'upstream_error' } }
}

/** The first answer fails with `status` and `headers` (over the TopRouter defaults), then 200s. */
function failOnceThen200(status: number, headers: Record<string, string> = {}): UpstreamHandler {
  return (_req, res, _recorded, index) => {
    if (index === 0) return sendJson(res, status, errorBody(status), headers)
    sendJson(res, 200, completion(MODEL, 'after the retry'))
  }
}

/** One failure, then a 200: the client gets the 200 with the retry's body and `x-proxy-attempts: 2`. */
async function expectRetriedTo200(t: Test, proxy: TestProxy, upstream: FakeUpstream): Promise<void> {
  const { res } = await chat(proxy)
  const body = (await res.body.json()) as ReturnType<typeof completion>
  t.equal(res.statusCode, 200, 'the client gets the 200 of the retry')
  t.equal(body.choices[0]?.message.content, 'after the retry', "the retry's body")
  t.equal(upstream.requests.length, 2, 'two upstream attempts')
  t.equal(res.headers['x-proxy-attempts'], '2', 'x-proxy-attempts: 2')
}

// ---------------------------------------------------------------------------------------------
// 1. TopRouter's everyday headers on a 5xx are no reason to wait
// ---------------------------------------------------------------------------------------------

for (const status of [500, 502, 503, 504]) {
  for (const deadline of [
    { name: 'the default deadline', config: {} },
    // The old rule waited 30 s, which does not fit a 10 s deadline: the client got the 503.
    { name: 'requestTimeoutMs 10000', config: { upstream: { requestTimeoutMs: 10_000 } } },
  ]) {
    t.test(
      `one ${status} with TopRouter's x-ratelimit-* headers (reset 30s) is retried within milliseconds (${deadline.name})`,
      async (t) => {
        const upstream = await startFakeUpstream(t, failOnceThen200(status))
        const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: deadline.config })
        await expectRetriedTo200(t, proxy, upstream)
        const gapMs = firstGapMs(upstream)
        t.ok(gapMs < FAST_RETRY_MS, `retried after ${gapMs.toFixed(1)} ms, not after the 30 s reset`)
        t.same(
          retryLogs(proxy).map((line) => line.delaySource),
          ['backoff'],
          'the wait was our backoff, not server pushback',
        )
      },
    )
  }
}

t.test('a 503 with remaining-requests 0 and reset-requests 30s: on a 5xx the reset is ignored', async (t) => {
  const upstream = await startFakeUpstream(
    t,
    failOnceThen200(503, {
      'x-ratelimit-remaining-requests': '0',
      'x-ratelimit-remaining-tokens': '0',
      'x-ratelimit-reset-requests': '30s',
    }),
  )
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  await expectRetriedTo200(t, proxy, upstream)
  const gapMs = firstGapMs(upstream)
  t.ok(gapMs < FAST_RETRY_MS, `retried after ${gapMs.toFixed(1)} ms`)
  t.equal(retryLogs(proxy)[0]?.delaySource, 'backoff')
})

// ---------------------------------------------------------------------------------------------
// 2. On a 429: only a spent quota's reset is a wait
// ---------------------------------------------------------------------------------------------

t.test('a 429 with 59 requests left and no Retry-After (OpenRouter style): the backoff retry, not the 30 s reset', async (t) => {
  const upstream = await startFakeUpstream(t, failOnceThen200(429))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  await expectRetriedTo200(t, proxy, upstream)
  t.equal(upstream.requests.length, 2)
  const gapMs = firstGapMs(upstream)
  t.ok(gapMs < FAST_RETRY_MS, `retried after ${gapMs.toFixed(1)} ms, well under 1 s`)
  t.equal(retryLogs(proxy)[0]?.delaySource, 'backoff')
})

t.test('a bare 429 (no x-ratelimit-* headers, no Retry-After): the backoff retry', async (t) => {
  const upstream = await startFakeUpstream(t, failOnceThen200(429), { rateLimitHeaders: false })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const { res } = await chat(proxy)
  await res.body.dump()
  t.equal(res.statusCode, 200)
  t.equal(upstream.requests.length, 2)
  t.equal(res.headers['x-proxy-attempts'], '2')
  t.same(
    Object.keys(res.headers).filter((name) => name.startsWith('x-ratelimit-')),
    [],
    'the fake upstream sent no x-ratelimit-* headers',
  )
  t.ok(firstGapMs(upstream) < FAST_RETRY_MS, `retried after ${firstGapMs(upstream).toFixed(1)} ms`)
  t.equal(retryLogs(proxy)[0]?.delaySource, 'backoff')
})

t.test('a 429 whose remaining count is garbage is not a spent quota: the backoff retry', async (t) => {
  const upstream = await startFakeUpstream(
    t,
    failOnceThen200(429, { 'x-ratelimit-remaining-requests': 'none', 'x-ratelimit-reset-requests': '1s' }),
  )
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  await expectRetriedTo200(t, proxy, upstream)
  const gapMs = firstGapMs(upstream)
  t.ok(gapMs < FAST_RETRY_MS, `retried after ${gapMs.toFixed(1)} ms`)
  t.equal(retryLogs(proxy)[0]?.delaySource, 'backoff')
})

const spentQuotaCases = [
  {
    name: 'remaining-requests 0 → reset-requests 1s',
    headers: { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '1s' },
    waitMs: 1000,
  },
  {
    name: 'remaining-tokens 0 → reset-tokens 300ms (not the requests reset, 30s)',
    headers: { 'x-ratelimit-remaining-tokens': '0', 'x-ratelimit-reset-tokens': '300ms' },
    waitMs: 300,
  },
  {
    name: 'both 0 → the longer of reset-requests 300ms and reset-tokens 600ms',
    headers: {
      'x-ratelimit-remaining-requests': '0',
      'x-ratelimit-reset-requests': '300ms',
      'x-ratelimit-remaining-tokens': '0',
      'x-ratelimit-reset-tokens': '600ms',
    },
    waitMs: 600,
  },
  {
    name: 'retry-after-ms 200 wins over a spent quota whose reset is 30s',
    headers: { 'retry-after-ms': '200', 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '30s' },
    waitMs: 200,
  },
]

/** One failure carrying a server pushback, then a 200: the gap between the attempts is the pushback. */
function testServerWait(title: string, status: number, headers: Record<string, string>, waitMs: number): void {
  t.test(title, async (t) => {
    const upstream = await startFakeUpstream(t, failOnceThen200(status, headers))
    // random 0: our own backoff would be 0 ms, so the whole wait is the server's.
    const proxy = await startProxy(t, { upstreamUrl: upstream.url, random: () => 0 })
    await expectRetriedTo200(t, proxy, upstream)
    const gapMs = firstGapMs(upstream)
    t.ok(gapMs >= waitMs, `waited at least ${waitMs} ms (${gapMs.toFixed(1)})`)
    t.ok(gapMs < waitMs + 600, `and not much longer (${gapMs.toFixed(1)} ms)`)
    t.same(
      retryLogs(proxy).map((line) => [line.delayMs, line.delaySource]),
      [[waitMs, 'server']],
      `logged as a ${waitMs} ms server pushback`,
    )
  })
}

for (const c of spentQuotaCases) testServerWait(`a 429 with ${c.name}`, 429, c.headers, c.waitMs)

// ---------------------------------------------------------------------------------------------
// 3. Retry-After and retry-after-ms count on a 5xx too
// ---------------------------------------------------------------------------------------------

const retryAfterOn5xxCases = [
  { name: 'retry-after-ms: 200', headers: { 'retry-after-ms': '200' }, waitMs: 200 },
  { name: 'Retry-After: 1', headers: { 'retry-after': '1' }, waitMs: 1000 },
]

for (const c of retryAfterOn5xxCases) {
  testServerWait(`a 503 with ${c.name} (and TopRouter's x-ratelimit-* headers) waits that long`, 503, c.headers, c.waitMs)
}

// ---------------------------------------------------------------------------------------------
// 4. A wait that cannot be honoured is answered at once, with the upstream's headers
// ---------------------------------------------------------------------------------------------

const tooLongCases = [
  {
    name: 'reset-requests 2m is over retry.maxRetryAfterMs (60 s)',
    headers: { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-reset-requests': '2m' },
    config: {},
    reason: 'pushback_too_long',
  },
  {
    name: 'reset-tokens 5s is past the deadline (requestTimeoutMs 2000)',
    headers: { 'x-ratelimit-remaining-tokens': '0', 'x-ratelimit-reset-tokens': '5s' },
    config: { upstream: { requestTimeoutMs: 2000 } },
    reason: 'deadline',
  },
]

for (const c of tooLongCases) {
  t.test(`a 429 whose spent quota's ${c.name}: the 429 at once`, async (t) => {
    const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 429, errorBody(429), c.headers))
    const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: c.config })
    const { res, elapsedMs } = await chat(proxy)
    await expectErrorShape(t, res, { status: 429, type: 'rate_limit_error', code: 'rate_limit_exceeded', message: 'Rate limit exceeded' })
    t.ok(elapsedMs < 500, `answered at once (${elapsedMs.toFixed(0)} ms)`)
    t.equal(upstream.requests.length, 1, 'one upstream attempt')
    t.equal(res.headers['x-proxy-attempts'], '1', 'x-proxy-attempts: 1')
    const expected: Record<string, string> = { ...TOPROUTER_RATE_LIMIT_HEADERS, ...c.headers }
    for (const [name, value] of Object.entries(expected)) t.equal(res.headers[name], value, `${name}: ${value} reaches the client`)
    t.same(notRetryingReasons(proxy), [c.reason], `logged as ${c.reason}`)
  })
}

// ---------------------------------------------------------------------------------------------
// 5. The official SDK, with its default settings
// ---------------------------------------------------------------------------------------------

t.test('openai SDK (default settings): one upstream 503 with TopRouter headers, then a 200 → resolves well under 1 s', async (t) => {
  const upstream = await startFakeUpstream(t, failOnceThen200(503))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  // The SDK's defaults (maxRetries 2, timeout 10 min). With them it sends no X-Stainless-Timeout,
  // so the proxy's own deadline applies, and X-Stainless-Retry-Count: 0 lets the proxy retry.
  const client = new OpenAI({ baseURL: proxy.url, apiKey: 'sk-test-dummy' })
  const startedAt = performance.now()
  const { data, response } = await client.chat.completions
    .create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }] })
    .withResponse()
  const elapsedMs = performance.now() - startedAt
  t.ok(elapsedMs < 1000, `resolved in ${elapsedMs.toFixed(0)} ms`)
  t.equal(data.choices[0]?.message.content, 'after the retry')
  t.equal(response.headers.get('x-proxy-attempts'), '2', 'the proxy retried once')
  t.equal(response.headers.get('x-ratelimit-remaining-requests'), '59', "the 200's x-ratelimit-* headers reach the SDK")
  t.equal(upstream.requests.length, 2, 'two upstream attempts: the SDK did not retry on top')
  t.equal(upstream.requests[0]?.headers['x-stainless-retry-count'], '0', 'the SDK sent its first try only')
})
