import t from 'tap'
import { request } from 'undici'
import { expectErrorShape } from './helpers/assert-error.js'
import { chunkEvent, completion, type RecordedRequest, sendJson, sendSse, startFakeUpstream } from './helpers/fake-upstream.js'
import { GATEWAY_KEY, startProxy, startTeamProxy } from './helpers/proxy.js'

/**
 * GET /status and /status.json through a real proxy against a scripted upstream: per-model counts
 * (a retry, a fallback, an error), p50 / p95 latency and TTFT, the last errors, in team mode each
 * key's requests and tokens today; the admin key (Basic or Bearer) in team mode, 401 with
 * WWW-Authenticate without it, 404 without an admin key; no secret in the answer.
 */

const PRIMARY = 'google/gemini-3.5-flash'
const BACKUP = 'anthropic/claude-4.6-sonnet'
const BROKEN = 'openai/gpt-5-mini'
const ADMIN_KEY = 'admin-status-0123456789abcdefghijkl'
const CALM_BREAKER = { volumeThreshold: 1000, errorThresholdPercentage: 50, rollingWindowMs: 10000, resetTimeoutMs: 10000 }

function modelOf(recorded: RecordedRequest): string {
  return (JSON.parse(recorded.body.toString('utf8')) as { model: string }).model
}

function chat(url: string, model: string, options: { stream?: boolean; key?: string } = {}) {
  return request(`${url}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${options.key ?? 'sk-client'}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], ...(options.stream ? { stream: true } : {}) }),
  })
}

interface StatusJson {
  models: Array<{
    model: string
    breaker: string | null
    lastMinute: { requests: number; errors: number; retries: number; fallbacks: number }
    series: { requests: number[]; errors: number[]; retries: number[]; fallbacks: number[] }
    latencyMs: { p50: number | null; p95: number | null; samples: number }
    ttftMs: { p50: number | null; p95: number | null; samples: number }
  }>
  lastErrors: Array<{ time: string; model: string | null; status: number; code: string }>
  keysToday?: { day: string; keys: Array<{ name: string; requests: number; promptTokens: number; completionTokens: number }> }
}

/**
 * /status.json once `requests` requests are counted: a request is recorded when its response
 * closes on the server, which may come a moment after the client has read the last byte.
 */
async function statusWith(
  url: string,
  requests: number,
  headers: Record<string, string> = {},
): Promise<{ text: string; body: StatusJson }> {
  for (let tries = 0; ; tries++) {
    const res = await request(`${url}/status.json`, { headers })
    const text = await res.body.text()
    const body = JSON.parse(text) as StatusJson
    const counted = body.models.reduce((sum, row) => sum + row.lastMinute.requests, 0)
    if (counted >= requests || tries === 50) return { text, body }
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

t.test('local mode: /status.json counts requests, errors, retries and fallbacks per model; /status is the page', async (t) => {
  const seen = new Map<string, number>()
  const upstream = await startFakeUpstream(t, (_req, res, recorded) => {
    const model = modelOf(recorded)
    const nth = (seen.get(model) ?? 0) + 1
    seen.set(model, nth)
    // The primary's 1st (retried as its 2nd), 4th and 5th (then the fallback) answers fail.
    if (model === PRIMARY && [1, 4, 5].includes(nth)) return sendJson(res, 503, { error: { message: 'busy', code: 503 } })
    if (model === BROKEN) return sendJson(res, 400, { error: { message: 'bad', type: 'invalid_request_error', code: 'bad_thing' } })
    if (JSON.parse(recorded.body.toString('utf8')).stream === true)
      return sendSse(res, [chunkEvent(model, 0, 'Hel'), chunkEvent(model, 1, 'lo', 'stop')])
    return sendJson(res, 200, completion(model))
  })
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    env: { TOPROUTER_API_KEY: 'sk-upstream-secret-abcdef0123456789' },
    config: { retry: { maxAttempts: 2 }, breaker: CALM_BREAKER, fallbacks: { [PRIMARY]: [BACKUP] } },
  })

  // 1: 503 then 200 (a retry). 2: streamed, served at once. 3: 503, 503 → fallback to BACKUP (200).
  const first = await chat(proxy.url, PRIMARY)
  t.equal(first.statusCode, 200, 'served after a retry')
  await first.body.text()
  const streamed = await chat(proxy.url, PRIMARY, { stream: true })
  t.equal(streamed.statusCode, 200)
  await streamed.body.text()
  const fellBack = await chat(proxy.url, PRIMARY)
  t.equal(fellBack.statusCode, 200, 'served by the fallback')
  t.equal(fellBack.headers['x-proxy-model'], BACKUP)
  await fellBack.body.text()
  const refused = await chat(proxy.url, BROKEN)
  t.equal(refused.statusCode, 400)
  await refused.body.text()
  // Not a model's: an unknown route and the status page's own polls are not shown.
  await (await request(`${proxy.url}/nope`)).body.text()

  const res = await request(`${proxy.url}/status.json`)
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^application\/json/)
  await res.body.text()
  const { text, body } = await statusWith(proxy.url, 4)
  t.notMatch(text, /sk-upstream-secret|sk-client/, 'no secret in the answer')
  const row = (model: string) => body.models.find((entry) => entry.model === model)
  const primary = row(PRIMARY)
  t.ok(primary, 'a row for the primary model')
  t.same(
    primary?.lastMinute,
    { requests: 3, errors: 0, retries: 2, fallbacks: 1 },
    'three requests answered 200, two retries, one fallback',
  )
  t.equal(primary?.breaker, 'closed')
  t.equal(primary?.series.requests.length, 60, 'ten minutes of 10 s buckets')
  t.equal(primary?.series.requests.at(-1), 3, 'all in the current bucket')
  t.equal(primary?.latencyMs.samples, 3)
  t.ok(typeof primary?.latencyMs.p50 === 'number' && typeof primary?.latencyMs.p95 === 'number', 'latency p50 and p95')
  t.equal(primary?.ttftMs.samples, 1, 'time to first token from the streamed request')
  t.ok(typeof primary?.ttftMs.p50 === 'number')
  t.same(row(BROKEN)?.lastMinute, { requests: 1, errors: 1, retries: 0, fallbacks: 0 })
  t.equal(row(BACKUP)?.breaker, 'closed', 'the fallback model has its breaker')
  t.equal(body.lastErrors.length, 1, 'only the 400 is an error')
  t.match(body.lastErrors[0], { model: BROKEN, status: 400, code: 'bad_thing' })
  t.ok(!Number.isNaN(Date.parse(body.lastErrors[0]?.time ?? '')), 'an ISO time')
  t.equal(body.keysToday, undefined, 'no keys outside team mode')

  const page = await request(`${proxy.url}/status`)
  t.equal(page.statusCode, 200, 'open in local mode, like /metrics')
  t.match(page.headers['content-type'], /^text\/html/)
  t.match(page.headers['content-security-policy'], /default-src 'none'.*script-src 'sha256-/, 'only its own inline script runs')
  const html = await page.body.text()
  t.match(html, /<!doctype html>/i)
  t.match(html, /\/status\.json/, 'the page polls the JSON')
  t.notMatch(
    html,
    /<(?:script|link|img)[^>]+(?:src|href)="(?!data:)/i,
    'no external script, stylesheet or image (the icon is an empty data: URL)',
  )
  t.notMatch(html, /https?:\/\/(?!www\.w3\.org\/2000\/svg)/, 'no URL but the SVG namespace')
})

t.test('team mode: the admin key as Basic password or Bearer; 401 with WWW-Authenticate otherwise; per-key counts today', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res, recorded) => sendJson(res, 200, completion(modelOf(recorded))))
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url, env: { TOPROUTER_PROXY_ADMIN_KEY: ADMIN_KEY } })
  const alice = await proxy.createKey({ name: 'alice' })
  const bob = await proxy.createKey({ name: 'bob' })
  for (const key of [alice, alice, bob]) {
    const res = await chat(proxy.url, PRIMARY, { key: key.secret })
    t.equal(res.statusCode, 200)
    await res.body.text()
  }

  for (const url of ['/status', '/status.json']) {
    const missing = await request(`${proxy.url}${url}`)
    t.equal(missing.headers['www-authenticate'], 'Basic realm="toprouter-proxy status", charset="UTF-8"', `${url}: the browser asks`)
    await expectErrorShape(t, missing, { status: 401, type: 'authentication_error', code: 'invalid_api_key', message: /admin key/ })
    const wrong = await request(`${proxy.url}${url}`, {
      headers: { authorization: `Basic ${Buffer.from(`admin:${alice.secret}`).toString('base64')}` },
    })
    await expectErrorShape(t, wrong, { status: 401, code: 'invalid_api_key' })
    const memberBearer = await request(`${proxy.url}${url}`, { headers: { authorization: `Bearer ${alice.secret}` } })
    await expectErrorShape(t, memberBearer, { status: 401, code: 'invalid_api_key' })
  }

  const basic = { authorization: `Basic ${Buffer.from(`anyone:${ADMIN_KEY}`).toString('base64')}` }
  const page = await request(`${proxy.url}/status`, { headers: basic })
  t.equal(page.statusCode, 200, 'Basic with the admin key as password')
  await page.body.text()
  const res = await request(`${proxy.url}/status.json`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })
  t.equal(res.statusCode, 200, 'Bearer with the admin key')
  await res.body.text()
  const { text, body } = await statusWith(proxy.url, 3, { authorization: `Bearer ${ADMIN_KEY}` })
  for (const secret of [ADMIN_KEY, alice.secret, bob.secret, GATEWAY_KEY, alice.id, bob.id]) {
    t.notOk(text.includes(secret), 'no key, secret or key id in the answer')
  }
  t.equal(body.keysToday?.day, new Date().toISOString().slice(0, 10), 'the UTC day')
  t.same(body.keysToday?.keys, [
    { name: 'alice', requests: 2, promptTokens: 10, completionTokens: 4 },
    { name: 'bob', requests: 1, promptTokens: 5, completionTokens: 2 },
  ])
  t.equal(body.models.find((row) => row.model === PRIMARY)?.lastMinute.requests, 3)
  t.same(body.lastErrors, [], 'the refused polls of the status page are not errors of a model')
})

t.test('team mode without an admin key: /status is an unknown route', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, completion()))
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url })
  for (const url of ['/status', '/status.json']) {
    await expectErrorShape(t, await request(`${proxy.url}${url}`), { status: 404, code: 'route_not_found' })
  }
})

t.test('a stream cut after its commit is an error of its model, listed with the code its error event carried', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    res.write(chunkEvent(PRIMARY, 0, 'Hel'))
    setTimeout(() => res.destroy(), 20)
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, env: { TOPROUTER_API_KEY: 'sk-upstream' } })
  const res = await chat(proxy.url, PRIMARY, { stream: true })
  t.equal(res.statusCode, 200)
  t.match(await res.body.text(), /stream_interrupted/, 'the client got the error event')
  const { body } = await statusWith(proxy.url, 1)
  t.same(body.models.find((row) => row.model === PRIMARY)?.lastMinute, { requests: 1, errors: 1, retries: 0, fallbacks: 0 })
  t.match(body.lastErrors, [{ model: PRIMARY, status: 200, code: 'stream_interrupted' }])
})

t.test('the /models routes have a row of their own, under their breaker', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) =>
    sendJson(res, 200, { object: 'list', data: [{ id: PRIMARY, object: 'model' }] }),
  )
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, env: { TOPROUTER_API_KEY: 'sk-upstream' } })
  for (const url of ['/v1/models', '/models', `/models/${PRIMARY}`]) {
    const res = await request(`${proxy.url}${url}`)
    t.equal(res.statusCode, 200, url)
    await res.body.text()
  }
  const { body } = await statusWith(proxy.url, 3)
  t.match(body.models, [{ model: '/models', breaker: 'closed', lastMinute: { requests: 3, errors: 0 } }], 'one row: /models')
  t.same(body.lastErrors, [])
})
