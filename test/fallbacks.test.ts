import type { IncomingMessage, ServerResponse } from 'node:http'
import t from 'tap'
import { type Dispatcher, request } from 'undici'
import { expectErrorShape } from './helpers/assert-error.js'
import {
  chunkEvent,
  completion,
  type FakeUpstream,
  type RecordedRequest,
  sendJson,
  sendSse,
  sleep,
  startFakeUpstream,
} from './helpers/fake-upstream.js'
import { startProxy, type TestProxy } from './helpers/proxy.js'

/**
 * Fallback models through the real proxy against a scripted upstream (SPEC § "Resilience
 * semantics"): when the next model is tried (open breaker, retries spent on a retryable failure,
 * first-byte timeout, 400 context_length_exceeded) and when it never is (other 4xx); the
 * per-request `fallbacks` field; one deadline for the whole chain; per-model breakers and retries;
 * what the client sees (`x-proxy-model`, `x-proxy-attempts`, the upstream's own `model`).
 */

const PRIMARY = 'google/gemini-3.5-flash'
const BACKUP = 'anthropic/claude-4.6-sonnet'
const EXTRA = 'openai/gpt-5-mini'
/** What the serving provider calls itself; the proxy must pass it through unchanged. */
const SERVED_AS = 'anthropic/claude-4.6-sonnet-20260101'

const MESSAGES = [{ role: 'user', content: 'hi' }]
/** Breakers that never trip unless a test wants them to. */
const CALM_BREAKER = { volumeThreshold: 1000, errorThresholdPercentage: 50, rollingWindowMs: 10000, resetTimeoutMs: 10000 }

type ModelHandler = (res: ServerResponse, recorded: RecordedRequest, nth: number, req: IncomingMessage) => unknown

/** An upstream that routes on the body's `model`; `nth` counts that model's requests from 1. */
async function modelRoutedUpstream(
  t: Parameters<typeof startFakeUpstream>[0],
  handlers: Record<string, ModelHandler>,
): Promise<FakeUpstream> {
  const seen = new Map<string, number>()
  return startFakeUpstream(t, (req, res, recorded) => {
    const model = modelOf(recorded) ?? ''
    const nth = (seen.get(model) ?? 0) + 1
    seen.set(model, nth)
    const handler = handlers[model]
    if (handler === undefined)
      return sendJson(res, 404, { error: { message: `Model not found: ${model}`, type: 'not_found_error', code: 'model_not_found' } })
    return handler(res, recorded, nth, req)
  })
}

function chat(url: string, body: Record<string, unknown>, headers: Record<string, string> = {}): Promise<Dispatcher.ResponseData> {
  return request(`${url}/chat/completions`, {
    method: 'POST',
    headers: { authorization: 'Bearer sk-client', 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  })
}

function parsedBody(recorded: RecordedRequest): Record<string, unknown> {
  return JSON.parse(recorded.body.toString('utf8')) as Record<string, unknown>
}

function modelOf(recorded: RecordedRequest): string | undefined {
  return recorded.body.length === 0 ? undefined : (parsedBody(recorded).model as string | undefined)
}

const models = (upstream: FakeUpstream) => upstream.requests.map(modelOf)
const countFor = (upstream: FakeUpstream, model: string) => upstream.requests.filter((r) => modelOf(r) === model).length

function upstreamError(status: number, code: string, type: string) {
  return { error: { message: `upstream said ${status} ${code}`, type, code } }
}

async function answerLater(res: ServerResponse, delayMs: number, status: number, body: unknown): Promise<void> {
  await sleep(delayMs)
  if (!res.destroyed) sendJson(res, status, body)
}

/** SSE headers, then silence until the proxy gives up on the stream. */
function silentStream(res: ServerResponse): Promise<void> {
  res.writeHead(200, { 'content-type': 'text/event-stream' })
  res.flushHeaders()
  return new Promise((resolve) => res.on('close', () => resolve()))
}

async function metricsText(proxy: TestProxy): Promise<string> {
  return (await request(`${proxy.url}/metrics`)).body.text()
}

function fallbackCount(text: string, from: string, to: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`toprouter_proxy_fallbacks_total{from="${from}",to="${to}"} `))
  return line === undefined ? undefined : Number(line.split(' ').pop())
}

async function breakerStates(proxy: TestProxy): Promise<Record<string, string>> {
  const body = (await (await request(`${proxy.url}/readyz`)).body.json()) as { breakers?: Record<string, string> }
  return body.breakers ?? {}
}

async function waitFor(what: string, predicate: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const started = performance.now()
  while (!(await predicate())) {
    if (performance.now() - started > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(10)
  }
}

t.test('configured fallback: the primary’s retries are spent on a 503, then the next model serves', async (t) => {
  const servedBody = JSON.stringify(completion(SERVED_AS, 'from the backup'))
  const upstream = await modelRoutedUpstream(t, {
    [PRIMARY]: (res) => sendJson(res, 503, upstreamError(503, 'service_unavailable', 'server_error')),
    [BACKUP]: (res) => sendJson(res, 200, servedBody),
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { retry: { maxAttempts: 2 }, breaker: CALM_BREAKER, fallbacks: { [PRIMARY]: [BACKUP] } },
  })

  const clientBody = { model: PRIMARY, messages: MESSAGES, temperature: 0.2 }
  const res = await chat(proxy.url, clientBody)
  const text = await res.body.text()
  t.equal(res.statusCode, 200, 'served')
  t.equal(text, servedBody, 'the fallback’s body, byte for byte: its `model` passes through unchanged')
  t.equal((JSON.parse(text) as { model: string }).model, SERVED_AS, 'model is whatever served it')
  t.equal(res.headers['x-proxy-model'], BACKUP, 'x-proxy-model names the model that served')
  t.equal(res.headers['x-proxy-attempts'], '3', 'x-proxy-attempts counts both primary attempts and the fallback’s')

  t.same(models(upstream), [PRIMARY, PRIMARY, BACKUP], 'primary tried maxAttempts times, then the fallback once')
  const [first, second, third] = upstream.requests as [RecordedRequest, RecordedRequest, RecordedRequest]
  t.equal(first.body.toString(), JSON.stringify(clientBody), 'the primary gets the client’s own bytes')
  t.equal(second.body.toString(), JSON.stringify(clientBody), 'on its retry too')
  t.same(parsedBody(third), { ...clientBody, model: BACKUP }, 'the fallback gets the same body with its own model')

  t.equal(fallbackCount(await metricsText(proxy), PRIMARY, BACKUP), 1, '/metrics: toprouter_proxy_fallbacks_total{from,to} 1')
  const line = proxy.logLines().find((l) => l.msg === 'falling back to the next model')
  t.match(line, { level: 40, from: PRIMARY, to: BACKUP, code: 'service_unavailable' }, 'the fallback is logged at warn')
})

t.test('every retryable failure falls back once the primary’s retries are spent', async (t) => {
  let mode = ''
  const upstream = await modelRoutedUpstream(t, {
    [PRIMARY]: (res, _recorded, _nth, req) => {
      if (mode === 'reset') return req.socket.destroy()
      const status = Number(mode)
      const code = status === 429 ? 'rate_limit_exceeded' : 'upstream_error'
      return sendJson(res, status, upstreamError(status, code, status === 429 ? 'rate_limit_error' : 'server_error'))
    },
    [BACKUP]: (res) => sendJson(res, 200, completion(SERVED_AS)),
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { retry: { maxAttempts: 2 }, breaker: CALM_BREAKER, fallbacks: { [PRIMARY]: [BACKUP] } },
  })

  for (const failure of ['429', '500', '502', '504', 'reset']) {
    mode = failure
    const before = upstream.requests.length
    const res = await chat(proxy.url, { model: PRIMARY, messages: MESSAGES })
    await res.body.dump()
    t.equal(res.statusCode, 200, `${failure}: served by the fallback`)
    t.equal(res.headers['x-proxy-model'], BACKUP, `${failure}: x-proxy-model is the fallback`)
    t.equal(res.headers['x-proxy-attempts'], '3', `${failure}: 2 + 1 attempts`)
    t.same(upstream.requests.slice(before).map(modelOf), [PRIMARY, PRIMARY, BACKUP], `${failure}: primary twice, then the fallback`)
  }
  t.equal(fallbackCount(await metricsText(proxy), PRIMARY, BACKUP), 5, '/metrics counts five fallbacks')
})

t.test('per-request `fallbacks`: tried before the configured ones, stripped before forwarding', async (t) => {
  let primaryFails = true
  const upstream = await modelRoutedUpstream(t, {
    [PRIMARY]: (res) =>
      primaryFails ? sendJson(res, 500, upstreamError(500, 'upstream_error', 'server_error')) : sendJson(res, 200, completion(PRIMARY)),
    [EXTRA]: (res) => sendJson(res, 502, upstreamError(502, 'bad_gateway', 'server_error')),
    [BACKUP]: (res) => sendJson(res, 200, completion(SERVED_AS)),
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { retry: { maxAttempts: 1 }, breaker: CALM_BREAKER, fallbacks: { [PRIMARY]: [BACKUP] } },
  })

  const clientBody = { model: PRIMARY, messages: MESSAGES, temperature: 0.3, fallbacks: [EXTRA], metadata: { k: 'v' } }
  const res = await chat(proxy.url, clientBody)
  await res.body.dump()
  t.equal(res.statusCode, 200, 'served')
  t.equal(res.headers['x-proxy-model'], BACKUP, 'by the configured fallback, after the request’s own')
  t.equal(res.headers['x-proxy-attempts'], '3', 'three models, one attempt each')
  t.same(models(upstream), [PRIMARY, EXTRA, BACKUP], 'chain: primary, the request’s fallbacks, the configured ones')
  for (const recorded of upstream.requests) {
    const body = parsedBody(recorded)
    t.notOk('fallbacks' in body, `${String(body.model)}: no \`fallbacks\` field upstream`)
    t.same(
      body,
      { model: body.model, messages: MESSAGES, temperature: 0.3, metadata: { k: 'v' } },
      `${String(body.model)}: every other field kept`,
    )
  }
  const metrics = await metricsText(proxy)
  t.equal(fallbackCount(metrics, PRIMARY, EXTRA), 1, '/metrics: primary → request fallback')
  t.equal(fallbackCount(metrics, EXTRA, BACKUP), 1, '/metrics: request fallback → configured fallback')

  // The field is stripped even when the primary serves and no fallback is used.
  primaryFails = false
  const before = upstream.requests.length
  const direct = await chat(proxy.url, { model: PRIMARY, messages: MESSAGES, fallbacks: [EXTRA] })
  await direct.body.dump()
  t.equal(direct.statusCode, 200, 'the primary serves')
  t.equal(direct.headers['x-proxy-model'], PRIMARY, 'x-proxy-model is the primary')
  t.equal(direct.headers['x-proxy-attempts'], '1', 'one attempt')
  const sent = upstream.requests.slice(before)
  t.equal(sent.length, 1, 'one upstream request')
  t.same(sent[0] && parsedBody(sent[0]), { model: PRIMARY, messages: MESSAGES }, 'sent without `fallbacks`')
})

t.test('an open breaker on the primary moves on at once without contacting it', async (t) => {
  const upstream = await modelRoutedUpstream(t, {
    [PRIMARY]: (res) => answerLater(res, 300, 500, upstreamError(500, 'upstream_error', 'server_error')),
    [BACKUP]: (res) => sendJson(res, 200, completion(SERVED_AS)),
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { retry: { maxAttempts: 1 }, breaker: { ...CALM_BREAKER, volumeThreshold: 4 } },
  })

  const trips = await Promise.all([1, 2, 3, 4].map(() => chat(proxy.url, { model: PRIMARY, messages: MESSAGES })))
  for (const r of trips) await r.body.dump()
  t.same(
    trips.map((r) => r.statusCode),
    [500, 500, 500, 500],
    'four failures, no fallbacks yet',
  )
  t.equal((await breakerStates(proxy))[PRIMARY], 'open', 'the primary’s breaker is open')

  const started = performance.now()
  const res = await chat(proxy.url, { model: PRIMARY, messages: MESSAGES, fallbacks: [BACKUP] })
  const elapsed = performance.now() - started
  await res.body.dump()
  t.equal(res.statusCode, 200, 'served')
  t.equal(res.headers['x-proxy-model'], BACKUP, 'by the fallback')
  t.equal(res.headers['x-proxy-attempts'], '1', 'the refused primary is not an attempt')
  t.ok(elapsed < 250, `without waiting on the primary (${Math.round(elapsed)} ms; it takes 300 ms)`)
  t.equal(countFor(upstream, PRIMARY), 4, 'the primary was not contacted')
  t.equal(countFor(upstream, BACKUP), 1, 'the fallback was')

  const noFallback = await chat(proxy.url, { model: PRIMARY, messages: MESSAGES })
  await expectErrorShape(t, noFallback, { status: 503, code: 'circuit_open' })
  t.equal(countFor(upstream, PRIMARY), 4, 'without a fallback: 503 circuit_open, primary still untouched')
})

t.test('half-open with a fallback: exactly one probe reaches the primary, the other nine are served by the fallback', async (t) => {
  const upstream = await modelRoutedUpstream(t, {
    [PRIMARY]: (res, _recorded, nth) =>
      nth <= 4 ? sendJson(res, 500, upstreamError(500, 'upstream_error', 'server_error')) : answerLater(res, 600, 200, completion(PRIMARY)),
    [BACKUP]: (res) => sendJson(res, 200, completion(SERVED_AS)),
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: {
      retry: { maxAttempts: 1 },
      breaker: { volumeThreshold: 4, errorThresholdPercentage: 50, rollingWindowMs: 10000, resetTimeoutMs: 500 },
      fallbacks: { [PRIMARY]: [BACKUP] },
    },
  })

  const trips = await Promise.all([1, 2, 3, 4].map(() => chat(proxy.url, { model: PRIMARY, messages: MESSAGES })))
  for (const r of trips) await r.body.dump()
  t.same(
    trips.map((r) => r.headers['x-proxy-model']),
    [BACKUP, BACKUP, BACKUP, BACKUP],
    'while tripping, every request fell back',
  )
  t.equal((await breakerStates(proxy))[PRIMARY], 'open', 'the primary’s breaker is open')
  await waitFor('half-open', async () => (await breakerStates(proxy))[PRIMARY] === 'half_open')

  const results = await Promise.all(
    Array.from({ length: 10 }, async () => {
      const res = await chat(proxy.url, { model: PRIMARY, messages: MESSAGES })
      await res.body.dump()
      return { status: res.statusCode, servedBy: res.headers['x-proxy-model'] }
    }),
  )
  t.equal(countFor(upstream, PRIMARY), 5, 'exactly one probe reached the primary')
  t.equal(countFor(upstream, BACKUP), 4 + 9, 'the other nine went to the fallback')
  t.ok(
    results.every((r) => r.status === 200),
    'all ten were served',
  )
  t.equal(results.filter((r) => r.servedBy === PRIMARY).length, 1, 'one by the primary (the probe)')
  t.equal(results.filter((r) => r.servedBy === BACKUP).length, 9, 'nine by the fallback')
  t.equal((await breakerStates(proxy))[PRIMARY], 'closed', 'the successful probe closed the breaker')
})

t.test('first-byte timeout on a stream: with a fallback, one attempt and move on', async (t) => {
  const streamEvents = [chunkEvent(SERVED_AS, 0, 'Hel'), chunkEvent(SERVED_AS, 1, 'lo', 'stop')]
  let primarySendsHeaders = true
  const upstream = await modelRoutedUpstream(t, {
    [PRIMARY]: (res) => (primarySendsHeaders ? silentStream(res) : new Promise((resolve) => res.on('close', resolve))),
    [BACKUP]: (res) => sendSse(res, streamEvents),
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { retry: { maxAttempts: 3 }, breaker: CALM_BREAKER, upstream: { firstByteTimeoutMs: 300 }, fallbacks: { [PRIMARY]: [BACKUP] } },
  })

  for (const variant of ['headers then no event', 'no headers at all']) {
    primarySendsHeaders = variant === 'headers then no event'
    const before = upstream.requests.length
    const res = await chat(proxy.url, { model: PRIMARY, messages: MESSAGES, stream: true })
    const text = await res.body.text()
    t.equal(res.statusCode, 200, `${variant}: served`)
    t.match(res.headers['content-type'], /^text\/event-stream/, `${variant}: as a stream`)
    t.equal(text, `${streamEvents.join('')}data: [DONE]\n\n`, `${variant}: the fallback’s events, its model unchanged, then [DONE]`)
    t.equal(res.headers['x-proxy-model'], BACKUP, `${variant}: x-proxy-model is the fallback`)
    t.equal(res.headers['x-proxy-attempts'], '2', `${variant}: two attempts in all`)
    t.same(upstream.requests.slice(before).map(modelOf), [PRIMARY, BACKUP], `${variant}: ONE primary attempt although maxAttempts is 3`)
    const sentToBackup = upstream.requests.at(-1)
    t.equal(sentToBackup && parsedBody(sentToBackup).stream, true, `${variant}: the fallback is asked for a stream too`)
  }
})

t.test('first-byte timeout with no fallback left counts as one retryable failure', async (t) => {
  const upstream = await modelRoutedUpstream(t, { [PRIMARY]: silentStream })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { retry: { maxAttempts: 2 }, breaker: CALM_BREAKER, upstream: { firstByteTimeoutMs: 300 } },
  })
  const res = await chat(proxy.url, { model: PRIMARY, messages: MESSAGES, stream: true })
  t.equal(res.headers['x-proxy-attempts'], '2', 'retried: two attempts')
  await expectErrorShape(t, res, { status: 504, code: 'upstream_timeout' })
  t.equal(countFor(upstream, PRIMARY), 2, 'the primary was tried maxAttempts times')
})

t.test('400 context_length_exceeded moves on to the next model without a retry', async (t) => {
  const upstream = await modelRoutedUpstream(t, {
    [PRIMARY]: (res) => sendJson(res, 400, upstreamError(400, 'context_length_exceeded', 'invalid_request_error')),
    [BACKUP]: (res) => sendJson(res, 200, completion(SERVED_AS)),
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { retry: { maxAttempts: 3 }, breaker: CALM_BREAKER } })

  const res = await chat(proxy.url, { model: PRIMARY, messages: MESSAGES, fallbacks: [BACKUP] })
  await res.body.dump()
  t.equal(res.statusCode, 200, 'served')
  t.equal(res.headers['x-proxy-model'], BACKUP, 'by the fallback')
  t.equal(res.headers['x-proxy-attempts'], '2', 'one attempt each')
  t.same(models(upstream), [PRIMARY, BACKUP], 'the primary was not retried')

  const alone = await chat(proxy.url, { model: PRIMARY, messages: MESSAGES })
  t.equal(alone.headers['x-proxy-attempts'], '1', 'with no fallback: one attempt')
  await expectErrorShape(t, alone, { status: 400, type: 'invalid_request_error', code: 'context_length_exceeded' })
  t.same(models(upstream), [PRIMARY, BACKUP, PRIMARY], 'and the error is the client’s')
})

t.test('other 4xx never fall back: exactly one model tried', async (t) => {
  const cases: Array<[number, string, string]> = [
    [401, 'invalid_api_key', 'authentication_error'],
    [402, 'insufficient_credits', 'billing_error'],
    [403, 'forbidden', 'permission_error'],
    [400, 'content_policy_violation', 'invalid_request_error'],
    [404, 'model_not_found', 'not_found_error'],
    [429, 'insufficient_quota', 'billing_error'],
  ]
  let current: [number, string, string] = cases[0] as [number, string, string]
  const upstream = await modelRoutedUpstream(t, {
    [PRIMARY]: (res) => sendJson(res, current[0], upstreamError(...current)),
    [BACKUP]: (res) => sendJson(res, 200, completion(SERVED_AS)),
    [EXTRA]: (res) => sendJson(res, 200, completion(SERVED_AS)),
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { retry: { maxAttempts: 3 }, breaker: CALM_BREAKER, fallbacks: { [PRIMARY]: [BACKUP] } },
  })

  for (const c of cases) {
    current = c
    const before = upstream.requests.length
    const res = await chat(proxy.url, { model: PRIMARY, messages: MESSAGES, fallbacks: [EXTRA] })
    t.equal(res.headers['x-proxy-attempts'], '1', `${c[0]} ${c[1]}: x-proxy-attempts 1`)
    await expectErrorShape(t, res, { status: c[0], type: c[2], code: c[1] })
    t.same(upstream.requests.slice(before).map(modelOf), [PRIMARY], `${c[0]} ${c[1]}: exactly one upstream request, to the primary`)
  }
  t.equal(countFor(upstream, BACKUP) + countFor(upstream, EXTRA), 0, 'no fallback model was ever contacted')
  t.notMatch(await metricsText(proxy), /^toprouter_proxy_fallbacks_total\{/m, '/metrics: no fallbacks counted')
  t.notOk(
    proxy.logLines().some((l) => l.msg === 'falling back to the next model'),
    'no fallback logged',
  )
})

t.test('the deadline covers the whole chain, not each model', async (t) => {
  // Primary fails at 600 ms; the fallback would answer 600 ms later, past the 900 ms deadline.
  const upstream = await modelRoutedUpstream(t, {
    [PRIMARY]: (res) => answerLater(res, 600, 503, upstreamError(503, 'service_unavailable', 'server_error')),
    [BACKUP]: (res) => answerLater(res, 600, 200, completion(SERVED_AS)),
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { retry: { maxAttempts: 1 }, breaker: CALM_BREAKER, upstream: { requestTimeoutMs: 900 }, fallbacks: { [PRIMARY]: [BACKUP] } },
  })

  const started = performance.now()
  const res = await chat(proxy.url, { model: PRIMARY, messages: MESSAGES })
  const error = await expectErrorShape(t, res, { status: 504, code: 'upstream_timeout' })
  const elapsed = performance.now() - started
  t.ok(error.message.length > 0, 'a 504, not the fallback’s late 200')
  t.ok(elapsed >= 850 && elapsed < 1150, `ended by the 900 ms deadline (${Math.round(elapsed)} ms), not 900 ms after the fallback started`)
  t.same(models(upstream), [PRIMARY, BACKUP], 'the fallback was tried within the remaining time')
})

t.test('each model has its own breaker and its own retry attempts; x-proxy-attempts counts them all', async (t) => {
  const upstream = await modelRoutedUpstream(t, {
    [PRIMARY]: (res) => sendJson(res, 500, upstreamError(500, 'upstream_error', 'server_error')),
    [BACKUP]: (res, _recorded, nth) =>
      nth <= 2 ? sendJson(res, 500, upstreamError(500, 'upstream_error', 'server_error')) : sendJson(res, 200, completion(SERVED_AS)),
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: {
      retry: { maxAttempts: 3 },
      breaker: { volumeThreshold: 4, errorThresholdPercentage: 50, rollingWindowMs: 10000, resetTimeoutMs: 10000 },
      fallbacks: { [PRIMARY]: [BACKUP] },
    },
  })

  const first = await chat(proxy.url, { model: PRIMARY, messages: MESSAGES })
  await first.body.dump()
  t.equal(first.statusCode, 200, 'first request served')
  t.equal(first.headers['x-proxy-model'], BACKUP, 'by the fallback')
  t.equal(first.headers['x-proxy-attempts'], '6', 'three attempts per model')
  t.same(models(upstream), [PRIMARY, PRIMARY, PRIMARY, BACKUP, BACKUP, BACKUP], 'each model got its own three attempts')
  t.same(
    await breakerStates(proxy),
    { [PRIMARY]: 'closed', [BACKUP]: 'closed' },
    'two breakers, both still closed (3 failures < volumeThreshold 4)',
  )

  const second = await chat(proxy.url, { model: PRIMARY, messages: MESSAGES })
  await second.body.dump()
  t.equal(second.headers['x-proxy-model'], BACKUP, 'second request served by the fallback')
  t.equal(second.headers['x-proxy-attempts'], '2', 'the primary’s 4th failure opened its breaker, cutting its retries short')
  t.same(await breakerStates(proxy), { [PRIMARY]: 'open', [BACKUP]: 'closed' }, 'the primary’s failures opened only its own breaker')

  const third = await chat(proxy.url, { model: PRIMARY, messages: MESSAGES })
  await third.body.dump()
  t.equal(third.headers['x-proxy-model'], BACKUP, 'third request served by the fallback')
  t.equal(third.headers['x-proxy-attempts'], '1', 'straight to the fallback')
  t.equal(countFor(upstream, PRIMARY), 4, 'the primary got 3 + 1 attempts in all')
  t.equal(countFor(upstream, BACKUP), 5, 'the fallback got 3 + 1 + 1')
})
