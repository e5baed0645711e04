import { createServer, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { type Dispatcher, request } from 'undici'
import { BreakerOpenError, createBreakerRegistry } from '../src/upstream/breakers.js'
import { expectErrorShape } from './helpers/assert-error.js'
import { completion, type FakeUpstream, type RecordedRequest, sendJson, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy, type TestProxy } from './helpers/proxy.js'

/**
 * Circuit breakers through the real proxy against a scripted upstream (SPEC § "Resilience
 * semantics"): one breaker per model id plus one for `/models`; what counts as a failure; open ⇒
 * immediate 503 `circuit_open` without touching the upstream; half-open ⇒ exactly one probe;
 * state changes in the log, `/readyz` and `/metrics`. The registry's bounds are tested directly.
 */

const FLAKY = 'acme/flaky-model'
const HEALTHY = 'acme/healthy-model'

/** Small numbers so a breaker trips after 4 failed requests; one attempt per request. */
const BREAKER = { volumeThreshold: 4, errorThresholdPercentage: 50, rollingWindowMs: 10000, resetTimeoutMs: 500 }
const ONE_ATTEMPT = { maxAttempts: 1 }

function chat(url: string, model: string, signal?: AbortSignal): Promise<Dispatcher.ResponseData> {
  return request(`${url}/chat/completions`, {
    method: 'POST',
    headers: { authorization: 'Bearer sk-client', 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }] }),
    ...(signal ? { signal } : {}),
  })
}

function modelOf(recorded: RecordedRequest): string | undefined {
  if (recorded.body.length === 0) return undefined
  return (JSON.parse(recorded.body.toString('utf8')) as { model?: string }).model
}

function countFor(upstream: FakeUpstream, model: string): number {
  return upstream.requests.filter((r) => r.url.startsWith('/chat/completions') && modelOf(r) === model).length
}

async function breakerStates(url: string): Promise<Record<string, string>> {
  const res = await request(`${url}/readyz`)
  const body = (await res.body.json()) as { status: string; breakers?: Record<string, string> }
  return body.breakers ?? {}
}

async function metricsText(url: string): Promise<string> {
  return (await request(`${url}/metrics`)).body.text()
}

async function waitFor(what: string, predicate: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const started = performance.now()
  while (!(await predicate())) {
    if (performance.now() - started > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(10)
  }
}

/** Answers after `delayMs`, unless the proxy has gone away by then. */
async function answerLater(res: ServerResponse, delayMs: number, status: number, body: unknown): Promise<void> {
  await sleep(delayMs)
  if (!res.destroyed) sendJson(res, status, body)
}

function upstreamError(status: number, code: string, type = 'server_error') {
  return { error: { message: `upstream said ${status}`, type, code } }
}

/** Breaker state-change log lines for one model, as "from->to". */
function transitions(proxy: TestProxy, model: string): string[] {
  return proxy
    .logLines()
    .filter((line) => typeof line.msg === 'string' && /circuit breaker/.test(line.msg) && line.model === model)
    .map((line) => `${String(line.from)}->${String(line.to)}`)
}

function stateGauge(text: string, model: string): number | undefined {
  const escaped = model.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')
  const match = new RegExp(`^toprouter_proxy_breaker_state\\{model="${escaped}"\\} (\\d+)$`, 'm').exec(text)
  return match ? Number(match[1]) : undefined
}

/** Sends 4 failing requests at once; all are fired while the breaker is still closed. */
async function trip(proxy: TestProxy, model: string): Promise<number[]> {
  const responses = await Promise.all([1, 2, 3, 4].map(() => chat(proxy.url, model)))
  return Promise.all(
    responses.map(async (res) => {
      await res.body.dump()
      return res.statusCode
    }),
  )
}

t.test(
  '5xx answers trip the model breaker; open ⇒ 503 circuit_open within milliseconds, upstream untouched, Retry-After counts down',
  async (t) => {
    const failures = [500, 502, 503, 504]
    const upstream = await startFakeUpstream(t, (_req, res, _recorded, index) =>
      // Slow failures: a request that did reach the upstream could not come back quickly.
      answerLater(res, 400, failures[index % 4] as number, upstreamError(failures[index % 4] as number, 'upstream_error')),
    )
    const proxy = await startProxy(t, {
      upstreamUrl: upstream.url,
      config: { breaker: { ...BREAKER, resetTimeoutMs: 2500 }, retry: ONE_ATTEMPT },
    })

    const statuses = await trip(proxy, FLAKY)
    t.same([...statuses].sort(), [500, 502, 503, 504], 'the four failures reach the client with their own statuses')
    t.equal(countFor(upstream, FLAKY), 4, 'four upstream attempts')
    t.equal((await breakerStates(proxy.url))[FLAKY], 'open', 'the breaker is open after 4 of 4 failures')

    const retryAfters: number[] = []
    for (let i = 0; i < 5; i++) {
      const started = performance.now()
      const res = await chat(proxy.url, FLAKY)
      const elapsed = performance.now() - started
      t.ok(elapsed < 250, `open breaker answers at once (${Math.round(elapsed)} ms; the upstream takes 400 ms)`)
      t.equal(res.headers['x-proxy-attempts'], '0', 'no attempt was made')
      retryAfters.push(Number(res.headers['retry-after']))
      await expectErrorShape(t, res, { status: 503, type: 'server_error', code: 'circuit_open' })
    }
    t.equal(countFor(upstream, FLAKY), 4, 'the upstream received nothing while the breaker was open')
    const first = retryAfters[0] as number
    t.ok(first >= 2 && first <= 3, `Retry-After is the seconds until half-open (2.5 s ⇒ 2–3), got ${first}`)

    await sleep(1100)
    const later = await chat(proxy.url, FLAKY)
    const laterRetryAfter = Number(later.headers['retry-after'])
    await expectErrorShape(t, later, { status: 503, code: 'circuit_open' })
    t.ok(laterRetryAfter >= 1 && laterRetryAfter < first, `Retry-After counts down (${first} → ${laterRetryAfter})`)
    t.equal(countFor(upstream, FLAKY), 4, 'still no upstream request')
  },
)

t.test('2xx–4xx, 429 included, never count as breaker failures', async (t) => {
  const script: Array<[number, string, string]> = [
    [429, 'rate_limit_exceeded', 'rate_limit_error'],
    [429, 'rate_limit_exceeded', 'rate_limit_error'],
    [400, 'invalid_request', 'invalid_request_error'],
    [401, 'invalid_api_key', 'authentication_error'],
    [402, 'insufficient_credits', 'billing_error'],
    [403, 'forbidden', 'permission_error'],
    [404, 'model_not_found', 'not_found_error'],
    [429, 'rate_limit_exceeded', 'rate_limit_error'],
  ]
  const upstream = await startFakeUpstream(t, (_req, res, _recorded, index) => {
    const entry = script[index]
    if (entry === undefined) return sendJson(res, 200, completion(FLAKY))
    return sendJson(res, entry[0], upstreamError(entry[0], entry[1], entry[2]))
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { breaker: BREAKER, retry: ONE_ATTEMPT } })

  for (const [status, code] of script) {
    const res = await chat(proxy.url, FLAKY)
    await expectErrorShape(t, res, { status, code })
  }
  for (let i = 0; i < 2; i++) {
    const res = await chat(proxy.url, FLAKY)
    t.equal(res.statusCode, 200, 'a 2xx afterwards is served')
    await res.body.dump()
  }
  t.equal(countFor(upstream, FLAKY), script.length + 2, 'every request reached the upstream: nothing was rejected by an open breaker')
  t.equal((await breakerStates(proxy.url))[FLAKY], 'closed', 'the breaker stayed closed after 8 non-2xx answers')
  t.same(transitions(proxy, FLAKY), [], 'no state change was logged')
})

t.test('upstream timeouts count as breaker failures', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => new Promise((resolve) => res.on('close', resolve)))
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { breaker: BREAKER, retry: ONE_ATTEMPT, upstream: { responseTimeoutMs: 200 } },
  })

  const statuses = await trip(proxy, FLAKY)
  t.same(statuses, [504, 504, 504, 504], 'each silent attempt times out as 504')
  t.equal((await breakerStates(proxy.url))[FLAKY], 'open', 'four timeouts open the breaker')
  await expectErrorShape(t, await chat(proxy.url, FLAKY), { status: 503, code: 'circuit_open' })
  t.equal(countFor(upstream, FLAKY), 4, 'the fifth request never reached the upstream')
})

t.test('connection errors count as breaker failures: resets and refused connections', async (t) => {
  t.test('reset before response headers', async (t) => {
    const upstream = await startFakeUpstream(t, (req) => {
      req.socket.destroy()
    })
    const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { breaker: BREAKER, retry: ONE_ATTEMPT } })
    const statuses = await trip(proxy, FLAKY)
    t.same(statuses, [502, 502, 502, 502], 'each reset is a 502')
    t.equal((await breakerStates(proxy.url))[FLAKY], 'open', 'four resets open the breaker')
    await expectErrorShape(t, await chat(proxy.url, FLAKY), { status: 503, code: 'circuit_open' })
    t.equal(countFor(upstream, FLAKY), 4, 'the fifth request never reached the upstream')
  })

  t.test('connection refused', async (t) => {
    const closed = createServer()
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
    const { port } = closed.address() as AddressInfo
    await new Promise<void>((resolve) => closed.close(() => resolve()))
    const proxy = await startProxy(t, { upstreamUrl: `http://127.0.0.1:${port}`, config: { breaker: BREAKER, retry: ONE_ATTEMPT } })
    for (let i = 0; i < 4; i++) {
      await expectErrorShape(t, await chat(proxy.url, FLAKY), { status: 502, code: 'upstream_unreachable' })
    }
    t.equal((await breakerStates(proxy.url))[FLAKY], 'open', 'four refused connections open the breaker')
    await expectErrorShape(t, await chat(proxy.url, FLAKY), { status: 503, code: 'circuit_open' })
  })
})

t.test('client aborts never count as breaker failures', async (t) => {
  let hang = true
  const upstream = await startFakeUpstream(t, (_req, res) => {
    if (hang) return new Promise((resolve) => res.on('close', resolve))
    return sendJson(res, 200, completion(FLAKY))
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { breaker: BREAKER, retry: ONE_ATTEMPT } })

  for (let i = 1; i <= 6; i++) {
    const controller = new AbortController()
    const pending = chat(proxy.url, FLAKY, controller.signal)
    // If aborts counted, the breaker would open at the 4th and the 5th would never arrive here.
    await waitFor(`aborted request ${i} to reach the upstream`, () => countFor(upstream, FLAKY) === i, 3000)
    controller.abort()
    await t.rejects(pending, { name: 'AbortError' }, `client ${i} gave up`)
  }
  // The proxy aborts each upstream request when its client leaves, which closes the connection.
  await waitFor('the proxy to abort the 6 upstream requests', () => upstream.closedSockets >= 6)
  await sleep(100)
  t.equal((await breakerStates(proxy.url))[FLAKY], 'closed', 'six client aborts left the breaker closed')

  hang = false
  const res = await chat(proxy.url, FLAKY)
  t.equal(res.statusCode, 200, 'the next request is served')
  await res.body.dump()
  t.equal(countFor(upstream, FLAKY), 7, 'and reached the upstream')
  t.same(transitions(proxy, FLAKY), [], 'no state change was logged')
})

t.test('/models has its own breaker, independent of the model breakers', async (t) => {
  const upstream = await startFakeUpstream(t, (req, res) => {
    if (req.url?.startsWith('/models')) return sendJson(res, 500, upstreamError(500, 'upstream_error'))
    return sendJson(res, 200, completion(HEALTHY))
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { breaker: BREAKER, retry: ONE_ATTEMPT } })
  const models = () => request(`${proxy.url}/models`, { headers: { authorization: 'Bearer sk-client' } })
  const modelsCalls = () => upstream.requests.filter((r) => r.url.startsWith('/models')).length

  for (let i = 0; i < 4; i++) await expectErrorShape(t, await models(), { status: 500 })
  t.equal(modelsCalls(), 4, 'four /models fetches reached the upstream')
  const states = await breakerStates(proxy.url)
  t.equal(states['/models'], 'open', '/readyz shows the /models breaker open')
  const open = await models()
  t.ok(Number(open.headers['retry-after']) >= 1, 'Retry-After on the open /models breaker')
  await expectErrorShape(t, open, { status: 503, code: 'circuit_open' })
  t.equal(modelsCalls(), 4, 'the open /models breaker kept the upstream untouched')

  const res = await chat(proxy.url, HEALTHY)
  t.equal(res.statusCode, 200, 'chat completions are unaffected by the /models breaker')
  await res.body.dump()
  t.equal((await breakerStates(proxy.url))[HEALTHY], 'closed', "the model's own breaker is closed")
})

t.test('half-open lets exactly one probe through; its success closes the breaker; every change is logged and exposed', async (t) => {
  let failing = true
  const upstream = await startFakeUpstream(t, (_req, res) => {
    if (failing) return sendJson(res, 500, upstreamError(500, 'upstream_error'))
    // A slow probe, so all ten concurrent requests arrive while it is in flight.
    return answerLater(res, 600, 200, completion(FLAKY))
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { breaker: BREAKER, retry: ONE_ATTEMPT } })

  t.same(await trip(proxy, FLAKY), [500, 500, 500, 500], 'four failures')
  const ready = (await (await request(`${proxy.url}/readyz`)).body.json()) as { status: string; breakers: Record<string, string> }
  t.equal(ready.status, 'ready', '/readyz still reports ready')
  t.same(ready.breakers, { [FLAKY]: 'open' }, '/readyz: breakers: { model: "open" }')
  t.equal(stateGauge(await metricsText(proxy.url), FLAKY), 2, '/metrics: breaker_state 2 (open)')
  t.same(transitions(proxy, FLAKY), ['closed->open'], 'closed -> open logged')
  const openLine = proxy.logLines().find((l) => typeof l.msg === 'string' && /circuit breaker/.test(l.msg))
  t.equal(openLine?.level, 40, 'at warn level')

  failing = false
  await waitFor('half-open', async () => (await breakerStates(proxy.url))[FLAKY] === 'half_open')
  t.equal(stateGauge(await metricsText(proxy.url), FLAKY), 1, '/metrics: breaker_state 1 (half-open)')
  t.same(transitions(proxy, FLAKY), ['closed->open', 'open->half_open'], 'open -> half_open logged')
  t.equal(countFor(upstream, FLAKY), 4, 'nothing reached the upstream while open')

  const results = await Promise.all(
    Array.from({ length: 10 }, async () => {
      const res = await chat(proxy.url, FLAKY)
      const text = await res.body.text()
      return { status: res.statusCode, headers: res.headers, body: JSON.parse(text) as { model?: string; error?: { code?: string } } }
    }),
  )
  t.equal(countFor(upstream, FLAKY), 5, 'exactly one of ten concurrent requests reached the upstream')
  const served = results.filter((r) => r.status === 200)
  const rejected = results.filter((r) => r.status === 503 && r.body.error?.code === 'circuit_open')
  t.equal(served.length, 1, 'the probe was served')
  t.equal(served[0]?.headers['x-proxy-model'], FLAKY, 'by the model itself')
  t.equal(rejected.length, 9, 'the other nine got 503 circuit_open')
  t.ok(
    rejected.every((r) => r.headers['x-should-retry'] === 'false' && Number(r.headers['retry-after']) >= 1),
    'with Retry-After and x-should-retry: false',
  )

  t.equal((await breakerStates(proxy.url))[FLAKY], 'closed', 'a successful probe closes the breaker')
  t.equal(stateGauge(await metricsText(proxy.url), FLAKY), 0, '/metrics: breaker_state 0 (closed)')
  t.same(transitions(proxy, FLAKY), ['closed->open', 'open->half_open', 'half_open->closed'], 'half_open -> closed logged')
  const closeLine = proxy.logLines().find((l) => l.to === 'closed' && l.model === FLAKY)
  t.equal(closeLine?.level, 40, 'at warn level')

  const again = await Promise.all([1, 2, 3].map(() => chat(proxy.url, FLAKY)))
  t.same(
    again.map((r) => r.statusCode),
    [200, 200, 200],
    'closed again: requests flow',
  )
  await Promise.all(again.map((r) => r.body.dump()))
  t.equal(countFor(upstream, FLAKY), 8, 'and reach the upstream')
})

t.test('a failed probe re-opens the breaker with a fresh wait', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 500, upstreamError(500, 'upstream_error')))
  const resetTimeoutMs = 1200
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { breaker: { ...BREAKER, resetTimeoutMs }, retry: ONE_ATTEMPT } })

  await trip(proxy, FLAKY)
  await waitFor('half-open', async () => (await breakerStates(proxy.url))[FLAKY] === 'half_open')

  await expectErrorShape(t, await chat(proxy.url, FLAKY), { status: 500 })
  const reopenedAt = performance.now()
  t.equal(countFor(upstream, FLAKY), 5, 'the probe reached the upstream')
  t.equal((await breakerStates(proxy.url))[FLAKY], 'open', 'the failed probe re-opened the breaker')
  const rejected = await chat(proxy.url, FLAKY)
  // Counted from the re-open (1.2 s ⇒ 2); counted from the first opening it would already be over (1).
  t.equal(rejected.headers['retry-after'], '2', 'Retry-After is the fresh wait (1.2 s ⇒ 2)')
  await expectErrorShape(t, rejected, { status: 503, code: 'circuit_open' })
  t.equal(countFor(upstream, FLAKY), 5, 'right after the failed probe nothing reaches the upstream')

  await waitFor('half-open again', async () => (await breakerStates(proxy.url))[FLAKY] === 'half_open')
  const waited = performance.now() - reopenedAt
  t.ok(waited >= resetTimeoutMs - 150, `the second wait was a full reset timeout (${Math.round(waited)} ms)`)
  t.equal(countFor(upstream, FLAKY), 5, 'nothing reached the upstream during the second wait')
  t.same(
    transitions(proxy, FLAKY),
    ['closed->open', 'open->half_open', 'half_open->open', 'open->half_open'],
    'every change logged in order',
  )
})

t.test('a probe the client abandons does not close the breaker: it re-opens for another wait', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res, _recorded, index) => {
    if (index < 4) return sendJson(res, 500, upstreamError(500, 'upstream_error'))
    if (index === 4) return new Promise((resolve) => res.on('close', resolve)) // the probe: silent
    return sendJson(res, 200, completion(FLAKY))
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { breaker: { ...BREAKER, resetTimeoutMs: 400 }, retry: ONE_ATTEMPT },
  })

  await trip(proxy, FLAKY)
  await waitFor('half-open', async () => (await breakerStates(proxy.url))[FLAKY] === 'half_open')
  const controller = new AbortController()
  const probe = chat(proxy.url, FLAKY, controller.signal)
  await waitFor('the probe to reach the upstream', () => countFor(upstream, FLAKY) === 5)
  controller.abort()
  await t.rejects(probe, { name: 'AbortError' }, 'the probe’s client gave up')
  await waitFor('the proxy to abort the probe upstream', () => transitions(proxy, FLAKY).length > 2)

  t.not((await breakerStates(proxy.url))[FLAKY], 'closed', 'an abandoned probe proved nothing: the breaker did not close')
  t.same(transitions(proxy, FLAKY), ['closed->open', 'open->half_open', 'half_open->open'], 'it went back to open')
  await expectErrorShape(t, await chat(proxy.url, FLAKY), { status: 503, code: 'circuit_open' })
  t.equal(countFor(upstream, FLAKY), 5, 'and still keeps the upstream untouched')

  await waitFor('half-open again', async () => (await breakerStates(proxy.url))[FLAKY] === 'half_open')
  const res = await chat(proxy.url, FLAKY)
  t.equal(res.statusCode, 200, 'the next probe succeeds')
  await res.body.dump()
  t.equal((await breakerStates(proxy.url))[FLAKY], 'closed', 'and closes the breaker')
})

t.test('a failing model never blocks a healthy one', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res, recorded) => {
    if (modelOf(recorded) === FLAKY) return sendJson(res, 503, upstreamError(503, 'service_unavailable'))
    return sendJson(res, 200, completion(HEALTHY))
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { breaker: { ...BREAKER, resetTimeoutMs: 10000 }, retry: ONE_ATTEMPT },
  })

  const flaky: Array<{ status: number; code: string | undefined }> = []
  let healthyOk = 0
  for (let i = 0; i < 40; i++) {
    const model = i % 2 === 0 ? FLAKY : HEALTHY
    const res = await chat(proxy.url, model)
    const body = (await res.body.json()) as { error?: { code?: string } }
    if (model === FLAKY) flaky.push({ status: res.statusCode, code: body.error?.code })
    else if (res.statusCode === 200 && res.headers['x-proxy-model'] === HEALTHY) healthyOk += 1
  }
  t.equal(healthyOk, 20, 'all 20 interleaved requests for the healthy model succeeded')
  t.same(
    flaky.slice(0, 4).map((r) => r.status),
    [503, 503, 503, 503],
    'the failing model’s first four requests got its upstream 503',
  )
  t.ok(
    flaky.slice(4).every((r) => r.status === 503 && r.code === 'circuit_open'),
    'the remaining 16 were refused by its open breaker',
  )
  t.equal(countFor(upstream, FLAKY), 4, 'the failing model received 4 upstream requests')
  t.equal(countFor(upstream, HEALTHY), 20, 'the healthy model received all 20')
  t.same(await breakerStates(proxy.url), { [FLAKY]: 'open', [HEALTHY]: 'closed' }, 'one open, one closed')

  // And concurrently, with the failing breaker open.
  const burst = await Promise.all(
    Array.from({ length: 40 }, async (_, i) => {
      const model = i % 2 === 0 ? FLAKY : HEALTHY
      const res = await chat(proxy.url, model)
      await res.body.dump()
      return { model, status: res.statusCode }
    }),
  )
  t.ok(
    burst.filter((r) => r.model === HEALTHY).every((r) => r.status === 200),
    'concurrent burst: every healthy request is 200',
  )
  t.ok(
    burst.filter((r) => r.model === FLAKY).every((r) => r.status === 503),
    'and every failing-model request is 503',
  )
  t.equal(countFor(upstream, HEALTHY), 40, 'the healthy model got all 40')
  t.equal(countFor(upstream, FLAKY), 4, 'the failing model got no more')
})

t.test('breaker registry (unit)', async (t) => {
  const config = { volumeThreshold: 1, errorThresholdPercentage: 50, rollingWindowMs: 10000, resetTimeoutMs: 30000 }
  const boom = () => Promise.reject(new Error('boom'))
  const ok = () => Promise.resolve('ok')
  const judge = (error: unknown) =>
    error instanceof Error && error.message === 'boom'
      ? ('failure' as const)
      : error instanceof Error && error.message === 'client left'
        ? ('neutral' as const)
        : ('not_failure' as const)
  const now = () => Date.now()
  const fail = (registry: ReturnType<typeof createBreakerRegistry>, key: string) => registry.run(key, boom).catch(() => undefined)

  t.test('maxBreakers bounds the map however many model ids arrive', async (t) => {
    const registry = createBreakerRegistry({ config, judge, events: { onStateChange() {} }, maxBreakers: 5, now })
    t.teardown(() => registry.shutdown())
    const results: unknown[] = []
    for (let i = 0; i < 50; i++) results.push(await registry.run(`vendor/model-${i}`, ok))
    t.ok(
      results.every((r) => r === 'ok'),
      'every run went through its own breaker',
    )
    const keys = Object.keys(registry.states())
    t.ok(keys.length <= 5, `states() holds ${keys.length} keys after 50 distinct ids`)
    t.ok(keys.includes('vendor/model-49'), 'the most recent id is kept')
    t.notOk(keys.includes('vendor/model-0'), 'the least recently used is gone')
  })

  t.test('an open breaker survives a flood of new ids (closed ones are evicted first)', async (t) => {
    const registry = createBreakerRegistry({ config, judge, events: { onStateChange() {} }, maxBreakers: 5, now })
    t.teardown(() => registry.shutdown())
    await fail(registry, 'vendor/down')
    t.equal(registry.states()['vendor/down'], 'open', 'tripped')
    for (let i = 0; i < 50; i++) await registry.run(`vendor/model-${i}`, ok)
    const states = registry.states()
    t.ok(Object.keys(states).length <= 5, 'still bounded')
    t.equal(states['vendor/down'], 'open', 'the open breaker was not evicted, so new ids cannot reset it')
    let called = false
    const refusal = await registry
      .run('vendor/down', async () => {
        called = true
      })
      .then(
        () => undefined,
        (error: unknown) => error,
      )
    t.ok(refusal instanceof BreakerOpenError, 'still refuses with BreakerOpenError')
    t.equal((refusal as BreakerOpenError).key, 'vendor/down', 'naming the key')
    t.notOk(called, 'without running the task')
  })

  t.test('when every breaker is open the oldest is dropped and shut down', async (t) => {
    const changes: string[] = []
    const registry = createBreakerRegistry({
      config: { ...config, resetTimeoutMs: 100 },
      judge,
      now,
      events: { onStateChange: (key, from, to) => changes.push(`${key}:${from}->${to}`) },
      maxBreakers: 2,
    })
    t.teardown(() => registry.shutdown())
    await fail(registry, 'x')
    await fail(registry, 'y')
    await registry.run('z', ok)
    t.same(Object.keys(registry.states()).sort(), ['y', 'z'], 'x was dropped to stay within 2')
    await sleep(350)
    t.ok(changes.includes('y:open->half_open'), 'the kept breaker goes half-open on its timer')
    t.notOk(changes.includes('x:open->half_open'), 'the dropped one was shut down: its timer never fired')
  })

  t.test('idle closed breakers are evicted after idleEvictMs (injected clock)', async (t) => {
    let nowMs = 0
    const registry = createBreakerRegistry({ config, judge, events: { onStateChange() {} }, idleEvictMs: 1000, now: () => nowMs })
    t.teardown(() => registry.shutdown())
    await registry.run('a', ok)
    await fail(registry, 'open-one') // open, and idle from t=0 on
    nowMs = 600
    await registry.run('b', ok)
    nowMs = 1100
    await registry.run('c', ok) // a new breaker: idle ones (last used before t=100) go
    let states = registry.states()
    t.notOk('a' in states, '"a", unused for 1100 ms > idleEvictMs, was evicted')
    t.ok('b' in states, '"b", unused for 500 ms, was kept')
    t.equal(states['open-one'], 'open', 'an idle but open breaker is kept: evicting it would reset the outage')

    nowMs = 1500
    await registry.run('b', ok) // use refreshes "b"
    nowMs = 2300
    await registry.run('d', ok) // idle: last used before t=1300
    states = registry.states()
    t.notOk('c' in states, '"c" (last used at 1100) was evicted')
    t.ok('b' in states, '"b" (created first, but used at 1500) was kept')
    t.same(Object.keys(states).sort(), ['b', 'd', 'open-one'], 'exactly the recent and the open ones remain')
  })

  t.test('retryAfterSeconds is the whole seconds until half-open (injected clock)', async (t) => {
    let nowMs = 1000
    const registry = createBreakerRegistry({ config, judge, events: { onStateChange() {} }, now: () => nowMs })
    t.teardown(() => registry.shutdown())
    t.equal(registry.retryAfterSeconds('unknown'), 1, 'an unknown key: 1')
    await fail(registry, 'k')
    t.equal(registry.states().k, 'open', 'opened at t=1000')
    t.equal(registry.retryAfterSeconds('k'), 30, 'at once: 30 s (resetTimeoutMs 30000)')
    nowMs = 15_500
    t.equal(registry.retryAfterSeconds('k'), 16, '15.5 s left ⇒ 16 (rounded up)')
    nowMs = 30_500
    t.equal(registry.retryAfterSeconds('k'), 1, '0.5 s left ⇒ 1')
    nowMs = 100_000
    t.equal(registry.retryAfterSeconds('k'), 1, 'overdue ⇒ at least 1')
  })

  t.test('neutral errors (client aborts): no failure when closed, no success when half-open', async (t) => {
    const registry = createBreakerRegistry({
      config: { ...config, resetTimeoutMs: 50 },
      judge,
      now,
      events: { onStateChange() {} },
    })
    t.teardown(() => registry.shutdown())
    const abandoned = () => Promise.reject(new Error('client left'))
    for (let i = 0; i < 10; i++) await registry.run('k', abandoned).catch(() => undefined)
    t.equal(registry.states().k, 'closed', 'ten aborts leave a closed breaker closed')
    await fail(registry, 'p')
    t.equal(registry.states().p, 'open', 'another key, tripped')
    await waitFor('half-open', () => registry.states().p === 'half_open')
    await registry.run('p', abandoned).catch(() => undefined)
    t.equal(registry.states().p, 'open', 'an abandoned probe re-opens the breaker instead of closing it')
    await waitFor('half-open again', () => registry.states().p === 'half_open')
    await registry.run('p', () => Promise.reject(new Error('a 4xx'))).catch(() => undefined)
    t.equal(registry.states().p, 'closed', 'a probe answered with a non-failure (a 4xx) still closes it')
  })

  t.test('only errors judged failures count', async (t) => {
    const registry = createBreakerRegistry({ config, judge, events: { onStateChange() {} }, now })
    t.teardown(() => registry.shutdown())
    for (let i = 0; i < 10; i++) await registry.run('k', () => Promise.reject(new Error('a 4xx'))).catch(() => undefined)
    t.equal(registry.states().k, 'closed', 'ten non-failures leave it closed')
    await fail(registry, 'k2')
    t.equal(registry.states().k2, 'open', 'one counted failure opens it (volumeThreshold 1)')
  })
})
