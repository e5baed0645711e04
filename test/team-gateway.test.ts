import OpenAI from 'openai'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { expectErrorShape } from './helpers/assert-error.js'
import { completion, sendJson, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { GATEWAY_KEY, startTeamProxy } from './helpers/proxy.js'

/**
 * The team gateway on the request path, one node: who may call (gateway keys and their
 * refusals), which models (the allow-list, fallbacks included), how much (rpm, tpm,
 * maxConcurrent, budgets, the queue), and the key's own rate-limit headers. Every refusal must
 * leave the fake upstream untouched.
 */

const MODEL = 'google/gemini-3.5-flash'
const FALLBACK = 'anthropic/claude-4.6-sonnet'

function chat(url: string, secret: string | undefined, body: Record<string, unknown> = {}) {
  return request(`${url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(secret === undefined ? {} : { authorization: `Bearer ${secret}` }) },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], ...body }),
  })
}

/** An upstream that answers every chat with a completion of `tokens` total tokens. */
async function usageUpstream(t: Test, tokens = { prompt: 20, completion: 40 }, delayMs = 0) {
  return startFakeUpstream(t, async (_req, res, recorded) => {
    if (delayMs > 0) await sleep(delayMs)
    const model = (JSON.parse(recorded.body.toString() || '{}') as { model?: string }).model ?? MODEL
    sendJson(res, 200, {
      ...completion(model),
      usage: { prompt_tokens: tokens.prompt, completion_tokens: tokens.completion, total_tokens: tokens.prompt + tokens.completion },
    })
  })
}

t.test('refusals: no key, unknown, revoked, expired — each in the error shape, nothing sent upstream', async (t) => {
  const upstream = await usageUpstream(t)
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url })
  const revoked = await proxy.createKey({ name: 'gone' })
  await proxy.team.service.keys.revokeKey('gone')
  const expired = await proxy.createKey({ name: 'old' })
  await proxy.team.service.store.keys.updateKey(expired.id, { expires_at: '2020-01-01T00:00:00.000Z' })

  await expectErrorShape(t, await chat(proxy.url, undefined), { status: 401, type: 'authentication_error', code: 'invalid_api_key' })
  await expectErrorShape(t, await chat(proxy.url, 'tpk_not-a-key-anyone-has'), { status: 401, code: 'invalid_api_key' })
  await expectErrorShape(t, await chat(proxy.url, GATEWAY_KEY), { status: 401, code: 'invalid_api_key' })
  await expectErrorShape(t, await chat(proxy.url, revoked.secret), { status: 401, type: 'authentication_error', code: 'key_revoked' })
  await expectErrorShape(t, await chat(proxy.url, expired.secret), { status: 401, type: 'authentication_error', code: 'key_expired' })
  t.equal(upstream.requests.length, 0, 'the upstream was never called')
})

t.test("a member's key never reaches the upstream: it sees only the gateway's key", async (t) => {
  const upstream = await usageUpstream(t)
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url })
  const alice = await proxy.createKey({ name: 'alice' })
  const res = await request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${alice.secret}`, 'x-api-key': alice.secret },
    body: JSON.stringify({ model: MODEL, messages: [] }),
  })
  t.equal(res.statusCode, 200)
  await res.body.text()
  t.equal(upstream.requests.length, 1)
  const seen = upstream.requests[0]
  t.equal(seen?.headers.authorization, `Bearer ${GATEWAY_KEY}`)
  t.notOk(JSON.stringify(seen?.rawHeaders).includes('tpk_'), 'no header carries a gateway key')
  t.notOk(seen?.body.toString().includes('tpk_'), 'nor the body')
})

t.test('the allow-list: a model outside it is 403; a fallback outside it is skipped, never called', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res, recorded) => {
    const model = (JSON.parse(recorded.body.toString()) as { model: string }).model
    if (model === MODEL) sendJson(res, 503, { error: { message: 'overloaded', type: 'server_error', code: 'overloaded' } })
    else sendJson(res, 200, completion(model))
  })
  const proxy = await startTeamProxy(t, {
    upstreamUrl: upstream.url,
    config: { retry: { maxAttempts: 1 }, fallbacks: { [MODEL]: [FALLBACK, 'google/gemini-3.5-pro'] } },
  })
  const googleOnly = await proxy.createKey({ name: 'google-only', models: ['google/*'] })
  const anthropicOnly = await proxy.createKey({ name: 'anthropic-only', models: ['anthropic/*'] })

  await expectErrorShape(t, await chat(proxy.url, anthropicOnly.secret), {
    status: 403,
    type: 'permission_error',
    code: 'model_not_allowed',
    message: `This gateway key may not use the model ${MODEL}`,
  })
  t.equal(upstream.requests.length, 0, 'refused before the upstream')

  const res = await chat(proxy.url, googleOnly.secret, { fallbacks: [FALLBACK] })
  t.equal(res.statusCode, 200, 'served by the allowed fallback')
  t.equal(res.headers['x-proxy-model'], 'google/gemini-3.5-pro')
  await res.body.text()
  const asked = upstream.requests.map((r) => (JSON.parse(r.body.toString()) as { model: string }).model)
  t.same(asked, [MODEL, 'google/gemini-3.5-pro'], `${FALLBACK} (request and configured fallback) never called`)
})

t.test('rpm 5: the 6th request in the minute is a 429 key_rate_limit_exceeded with Retry-After', async (t) => {
  const upstream = await usageUpstream(t)
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url })
  const key = await proxy.createKey({ name: 'five', rpm: 5 })
  for (let i = 1; i <= 5; i++) {
    const res = await chat(proxy.url, key.secret)
    t.equal(res.statusCode, 200, `request ${i} served`)
    t.equal(res.headers['x-ratelimit-limit-requests'], '5', "the key's own limit, not the upstream's")
    t.equal(res.headers['x-ratelimit-remaining-requests'], String(5 - i))
    t.notOk(res.headers['x-ratelimit-limit-tokens'], 'no tokens headers: the key has no tpm')
    await res.body.text()
  }
  const sixth = await chat(proxy.url, key.secret)
  const retryAfter = Number(sixth.headers['retry-after'])
  t.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60, `Retry-After ${retryAfter} in whole seconds`)
  t.equal(sixth.headers['x-ratelimit-remaining-requests'], '0')
  await expectErrorShape(t, sixth, {
    status: 429,
    type: 'rate_limit_error',
    code: 'key_rate_limit_exceeded',
    message: /5 requests per minute/,
  })
  t.equal(upstream.requests.length, 5, 'the 6th never reached the upstream')
})

t.test("responses carry the key's x-ratelimit-* only: the upstream's (the shared key's) are not passed on", async (t) => {
  const upstream = await usageUpstream(t)
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url })
  const unlimited = await proxy.createKey({ name: 'unlimited' })
  const res = await chat(proxy.url, unlimited.secret)
  t.equal(res.statusCode, 200)
  await res.body.text()
  t.same(
    Object.keys(res.headers).filter((name) => name.startsWith('x-ratelimit-')),
    [],
    "a key without limits gets none (the fake upstream sent TopRouter's six)",
  )
  const failing = await startFakeUpstream(t, (_req, res) =>
    sendJson(res, 400, { error: { message: 'bad', type: 'invalid_request_error', code: 'invalid_request' } }),
  )
  const proxy2 = await startTeamProxy(t, { upstreamUrl: failing.url })
  const limited = await proxy2.createKey({ name: 'limited', rpm: 100, tpm: 100000 })
  const failed = await chat(proxy2.url, limited.secret)
  t.equal(failed.statusCode, 400)
  t.equal(failed.headers['x-ratelimit-limit-requests'], '100', "an upstream error carries the key's headers too")
  t.equal(failed.headers['x-ratelimit-limit-tokens'], '100000')
  await failed.body.text()
})

t.test('maxConcurrent 2: the 3rd request at once is a 429; a slot frees when a request ends', async (t) => {
  const upstream = await usageUpstream(t, undefined, 300)
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url })
  const key = await proxy.createKey({ name: 'two', maxConcurrent: 2 })
  const first = chat(proxy.url, key.secret)
  const second = chat(proxy.url, key.secret)
  await sleep(100)
  const third = await chat(proxy.url, key.secret)
  await expectErrorShape(t, third, { status: 429, code: 'key_rate_limit_exceeded', message: /2 requests at once/ })
  t.ok(Number(third.headers['retry-after']) >= 1)
  for (const res of await Promise.all([first, second])) {
    t.equal(res.statusCode, 200)
    await res.body.text()
  }
  const after = await chat(proxy.url, key.secret)
  t.equal(after.statusCode, 200, 'served once the others ended')
  await after.body.text()
  t.equal(upstream.requests.length, 3)
})

t.test('tpm reserves an estimate and settles to the real count', async (t) => {
  // Each answer uses 60 tokens. The estimate is body bytes / 4 + max_tokens.
  const upstream = await usageUpstream(t)
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url })
  const key = await proxy.createKey({ name: 'tokens', tpm: 300 })
  const first = await chat(proxy.url, key.secret, { max_tokens: 200 })
  t.equal(first.statusCode, 200, 'reserves ~220 of 300')
  await first.body.text()
  // Had the reservation not settled to 60, 220 + 220 would be over 300.
  const second = await chat(proxy.url, key.secret, { max_tokens: 200 })
  t.equal(second.statusCode, 200, 'admitted: the first settled to its real 60 tokens')
  t.equal(second.headers['x-ratelimit-limit-tokens'], '300')
  await second.body.text()
  const third = await chat(proxy.url, key.secret, { max_tokens: 200 })
  await expectErrorShape(t, third, { status: 429, code: 'key_rate_limit_exceeded', message: /300 tokens per minute/ })
  t.ok(Number(third.headers['retry-after']) >= 1)
  t.equal(upstream.requests.length, 2)
})

t.test('--budget-tokens 100 with 60-token answers: the 3rd request is a 402 budget_exceeded', async (t) => {
  const upstream = await usageUpstream(t)
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url })
  const key = await proxy.createKey({ name: 'budget', budgetTokens: 100, budgetPeriod: 'day' })
  for (const n of [1, 2]) {
    const res = await chat(proxy.url, key.secret)
    t.equal(res.statusCode, 200, `request ${n}: spent ${(n - 1) * 60} < 100`)
    await res.body.text()
  }
  const third = await chat(proxy.url, key.secret)
  await expectErrorShape(t, third, {
    status: 402,
    type: 'billing_error',
    code: 'budget_exceeded',
    message: /daily budget is spent \(120 of 100 tokens\); it resets at \d{4}-/,
  })
  t.equal(upstream.requests.length, 2)
})

t.test('a USD budget counts cost from team.prices', async (t) => {
  const upstream = await usageUpstream(t, { prompt: 1000, completion: 1000 })
  const proxy = await startTeamProxy(t, {
    upstreamUrl: upstream.url,
    config: { team: { prices: { [MODEL]: { inputPerMTok: 1, outputPerMTok: 4 } } } },
  })
  // Each request costs 1000 × 1 / 1e6 + 1000 × 4 / 1e6 = $0.005.
  const key = await proxy.createKey({ name: 'dollars', budgetUsd: 0.009 })
  for (const n of [1, 2]) {
    const res = await chat(proxy.url, key.secret)
    t.equal(res.statusCode, 200, `request ${n}`)
    await res.body.text()
  }
  await expectErrorShape(t, await chat(proxy.url, key.secret), { status: 402, code: 'budget_exceeded', message: /\$0\.0100 of \$0\.009/ })
  const rows = await proxy.usageRows()
  t.same(
    rows.map((row) => row.cost_usd),
    [0.005, 0.005, null],
    'each served request costs $0.005; the refusal nothing',
  )
})

t.test('maxQueueWaitMs: over maxConcurrent a request waits its turn (FIFO) instead of a 429', async (t) => {
  const upstream = await usageUpstream(t, undefined, 200)
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url, config: { team: { maxQueueWaitMs: 2000 } } })
  const key = await proxy.createKey({ name: 'queued', maxConcurrent: 1 })
  const started = performance.now()
  const done: number[] = []
  const results = await Promise.all(
    [0, 1, 2].map(async (n) => {
      await sleep(n * 20)
      const res = await chat(proxy.url, key.secret, { user: `n${n}` })
      await res.body.text()
      done.push(n)
      return { status: res.statusCode, ms: performance.now() - started }
    }),
  )
  t.same(
    results.map((r) => r.status),
    [200, 200, 200],
    'all three served',
  )
  t.same(done, [0, 1, 2], 'in arrival order')
  t.ok((results[2]?.ms ?? 0) >= 550, `the third waited for two others (${Math.round(results[2]?.ms ?? 0)} ms)`)
  const order = upstream.requests.map((r) => (JSON.parse(r.body.toString()) as { user: string }).user)
  t.same(order, ['n0', 'n1', 'n2'], 'the upstream saw them one at a time, in order')
})

t.test('maxQueueWaitMs: past the wait a queued request is a 429; a client that leaves the queue is never sent', async (t) => {
  const upstream = await usageUpstream(t, undefined, 600)
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url, config: { team: { maxQueueWaitMs: 200 } } })
  const key = await proxy.createKey({ name: 'impatient', maxConcurrent: 1 })
  const first = chat(proxy.url, key.secret, { user: 'first' })
  await sleep(50)
  const waited = performance.now()
  const timedOut = await chat(proxy.url, key.secret, { user: 'timed-out' })
  await expectErrorShape(t, timedOut, { status: 429, code: 'key_rate_limit_exceeded' })
  t.ok(performance.now() - waited >= 180, 'it waited maxQueueWaitMs first')

  const controller = new AbortController()
  const aborted = request(`${proxy.url}/chat/completions`, {
    method: 'POST',
    signal: controller.signal,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key.secret}` },
    body: JSON.stringify({ model: MODEL, messages: [], user: 'aborted' }),
  }).catch((error: unknown) => error)
  await sleep(50)
  controller.abort()
  await aborted
  t.equal((await first).statusCode, 200)
  await sleep(700)
  const users = upstream.requests.map((r) => (JSON.parse(r.body.toString()) as { user: string }).user)
  t.notOk(users.includes('aborted'), 'the aborted request never reached the upstream')
  t.notOk(users.includes('timed-out'))
  const metrics = await (await request(`${proxy.url}/metrics`)).body.text()
  t.match(metrics, /toprouter_proxy_key_queue_waiting 0/, 'the queue is empty again')
})

t.test('/models lists only what the key may use; /models/:id of another model is a 404', async (t) => {
  const list = {
    object: 'list',
    data: [{ id: MODEL }, { id: 'google/gemini-3.5-pro' }, { id: FALLBACK }],
  }
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, list))
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url })
  const google = await proxy.createKey({ name: 'g', models: ['google/*'] })
  const everything = await proxy.createKey({ name: 'all' })
  const auth = (secret: string) => ({ headers: { authorization: `Bearer ${secret}` } })

  const filtered = await request(`${proxy.url}/v1/models`, auth(google.secret))
  t.equal(filtered.statusCode, 200)
  t.same(
    ((await filtered.body.json()) as typeof list).data.map((m) => m.id),
    [MODEL, 'google/gemini-3.5-pro'],
  )
  t.notOk(filtered.headers['x-ratelimit-limit-requests'], "no x-ratelimit-* of the gateway's key")
  const all = await request(`${proxy.url}/models`, auth(everything.secret))
  t.same(((await all.body.json()) as typeof list).data.length, 3, 'an empty allow-list sees every model')
  await expectErrorShape(t, await request(`${proxy.url}/models/${FALLBACK}`, auth(google.secret)), { status: 404, code: 'model_not_found' })
  const one = await request(`${proxy.url}/models/${MODEL}`, auth(google.secret))
  t.same(await one.body.json(), { id: MODEL })
  await expectErrorShape(t, await request(`${proxy.url}/models`), { status: 401, code: 'invalid_api_key' })
  t.equal(upstream.requests.length, 1, 'one upstream fetch, shared')
})

t.test('the official openai package as a member: AuthenticationError, PermissionDeniedError, RateLimitError', async (t) => {
  const upstream = await usageUpstream(t)
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url })
  const key = await proxy.createKey({ name: 'sdk', rpm: 1, models: ['google/*'] })
  const client = (apiKey: string) => new OpenAI({ apiKey, baseURL: proxy.url, maxRetries: 2 })
  const messages = [{ role: 'user' as const, content: 'hi' }]

  const served = await client(key.secret).chat.completions.create({ model: MODEL, messages })
  t.equal(served.choices[0]?.message.content, 'Hello!')
  t.equal(served.usage?.total_tokens, 60)

  const unknown = await client('tpk_unknown')
    .chat.completions.create({ model: MODEL, messages })
    .catch((e: unknown) => e)
  t.ok(unknown instanceof OpenAI.AuthenticationError, 'AuthenticationError')
  t.equal((unknown as InstanceType<typeof OpenAI.APIError>).code, 'invalid_api_key')

  const denied = await client(key.secret)
    .chat.completions.create({ model: FALLBACK, messages })
    .catch((e: unknown) => e)
  t.ok(denied instanceof OpenAI.PermissionDeniedError, 'PermissionDeniedError')
  t.equal((denied as InstanceType<typeof OpenAI.APIError>).code, 'model_not_allowed')

  const limited = await client(key.secret)
    .chat.completions.create({ model: MODEL, messages })
    .catch((e: unknown) => e)
  t.ok(limited instanceof OpenAI.RateLimitError, 'RateLimitError')
  t.equal((limited as InstanceType<typeof OpenAI.APIError>).code, 'key_rate_limit_exceeded')
  t.equal(upstream.requests.length, 1, 'the SDK did not retry the refusals (x-should-retry: false)')
})

t.test('secrets never leak: the gateway key, its hash and the upstream key stay out of logs, metrics and bodies', async (t) => {
  const upstream = await usageUpstream(t)
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url })
  const canary = await proxy.createKey({ name: 'canary', rpm: 2, models: ['google/*'] })
  const revoked = await proxy.createKey({ name: 'revoked-canary' })
  await proxy.team.service.keys.revokeKey(revoked.id)
  const { hashSecret } = await import('../src/team/keys.js')
  const bodies: string[] = []
  for (const [secret, body] of [
    [canary.secret, {}],
    [canary.secret, { model: FALLBACK }],
    [canary.secret, {}],
    [canary.secret, {}],
    [revoked.secret, {}],
    [`${canary.secret}x`, {}],
  ] as const) {
    const res = await chat(proxy.url, secret, body)
    bodies.push(JSON.stringify(res.headers), await res.body.text())
  }
  const models = await request(`${proxy.url}/models`, { headers: { authorization: `Bearer ${canary.secret}` } })
  bodies.push(JSON.stringify(models.headers), await models.body.text())
  const metrics = await (await request(`${proxy.url}/metrics`)).body.text()
  t.match(metrics, /toprouter_proxy_key_requests_total\{key="canary",status="200"\} 2/, 'per-key metrics by name')
  t.match(metrics, /toprouter_proxy_key_refusals_total\{key="canary",code="model_not_allowed"\} 1/)
  t.match(metrics, /toprouter_proxy_key_refusals_total\{key="canary",code="key_rate_limit_exceeded"\} 1/)
  await proxy.app.close()
  const everything = [proxy.logText(), metrics, ...bodies].join('\n')
  t.ok(proxy.logText().includes('"keyName":"canary"'), 'the log does name the key (non-vacuous)')
  for (const [label, secret] of [
    ['canary secret', canary.secret],
    ['canary secret body', canary.secret.slice(12)],
    ['canary hash', hashSecret(canary.secret)],
    ['revoked secret', revoked.secret.slice(12)],
    ['revoked hash', hashSecret(revoked.secret)],
    ['upstream key', GATEWAY_KEY],
  ] as const) {
    t.notOk(everything.includes(secret), `${label} appears nowhere`)
  }
})

t.test('cost from the /models pricing when team.prices has none', async (t) => {
  const upstream = await startFakeUpstream(t, (req, res) => {
    if (req.url?.startsWith('/models')) {
      return sendJson(res, 200, { object: 'list', data: [{ id: MODEL, pricing: { prompt: '0.000001', completion: '0.000002' } }] })
    }
    sendJson(res, 200, { ...completion(MODEL), usage: { prompt_tokens: 1000, completion_tokens: 500, total_tokens: 1500 } })
  })
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url })
  const key = await proxy.createKey({ name: 'priced' })
  const before = await chat(proxy.url, key.secret)
  await before.body.text()
  const listed = await request(`${proxy.url}/models`, { headers: { authorization: `Bearer ${key.secret}` } })
  await listed.body.text()
  const after = await chat(proxy.url, key.secret)
  await after.body.text()
  const rows = await proxy.usageRows()
  t.same(
    rows.map((row) => row.cost_usd),
    [null, 0.002],
    'unknown before the list was seen; 1000 × $1/M + 500 × $2/M after',
  )
})

t.test('the key store gone: a cached key keeps working, an uncached one is a 503, not a 401', async (t) => {
  const upstream = await usageUpstream(t)
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url, config: { team: { keyCacheTtlMs: 60000 } } })
  const cached = await proxy.createKey({ name: 'cached' })
  const uncached = await proxy.createKey({ name: 'uncached' })
  await (await chat(proxy.url, cached.secret)).body.text()
  await proxy.team.service.store.close()
  const stillServed = await chat(proxy.url, cached.secret)
  t.equal(stillServed.statusCode, 200, 'served from the cache')
  await stillServed.body.text()
  await expectErrorShape(t, await chat(proxy.url, uncached.secret), {
    status: 503,
    type: 'server_error',
    code: 'service_unavailable',
    message: /key store is unavailable/,
  })
  t.match(proxy.logText(), /key store unavailable/)
})

t.test('the admin API on the gateway: changes take effect at once; without the admin key /admin is a 404', async (t) => {
  const upstream = await usageUpstream(t)
  const adminKey = 'admin-0123456789abcdef0123456789'
  const proxy = await startTeamProxy(t, {
    upstreamUrl: upstream.url,
    env: { TOPROUTER_PROXY_ADMIN_KEY: adminKey },
    config: { team: { keyCacheTtlMs: 600000 } },
  })
  const admin = (method: 'POST' | 'PATCH' | 'DELETE' | 'GET', path: string, body?: unknown) =>
    request(`${proxy.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${adminKey}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    })
  const created = await admin('POST', '/admin/keys', { name: 'bob' })
  t.equal(created.statusCode, 201)
  const { id, key } = (await created.body.json()) as { id: string; key: string }
  t.equal((await chat(proxy.url, key)).statusCode, 200, 'the new key works')

  const narrowed = await admin('PATCH', `/admin/keys/${id}`, { models: ['anthropic/*'] })
  t.equal(narrowed.statusCode, 200)
  await narrowed.body.text()
  await expectErrorShape(t, await chat(proxy.url, key), { status: 403, code: 'model_not_allowed' })
  const revoked = await admin('DELETE', '/admin/keys/bob')
  t.equal(revoked.statusCode, 200)
  await revoked.body.text()
  await expectErrorShape(t, await chat(proxy.url, key), { status: 401, code: 'key_revoked' })
  t.pass('both took effect at once, though the key cache trusts a lookup for 10 minutes')

  await expectErrorShape(t, await request(`${proxy.url}/admin/keys`, { headers: { authorization: `Bearer ${key}` } }), {
    status: 401,
    code: 'invalid_api_key',
  })
  await proxy.team.flushUsage()
  const usage = await admin('GET', '/admin/usage?by=key')
  t.match(await usage.body.json(), { data: [{ group: 'bob', requests: 3, errors: 2 }] })

  const withoutAdmin = await startTeamProxy(t, { upstreamUrl: upstream.url })
  await expectErrorShape(t, await request(`${withoutAdmin.url}/admin/keys`, { headers: { authorization: `Bearer ${adminKey}` } }), {
    status: 404,
    code: 'route_not_found',
  })
})
