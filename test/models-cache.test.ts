import t from 'tap'
import { request } from 'undici'
import { expectErrorShape } from './helpers/assert-error.js'
import { sendJson, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy } from './helpers/proxy.js'

const MODEL = 'google/gemini-3.5-flash'
const list = JSON.stringify({
  object: 'list',
  data: [
    { id: MODEL, object: 'model' },
    { id: 'anthropic/claude-4.6-sonnet', object: 'model' },
  ],
})
const auth = { authorization: 'Bearer sk-user' }

const get = (url: string, headers: Record<string, string> = auth) => request(url, { headers })

t.test('the list is cached: MISS then HIT, and /models/:id is served from the same cache', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, list))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const first = await get(`${proxy.url}/v1/models`)
  t.equal(first.headers['x-cache'], 'MISS')
  t.equal(await first.body.text(), list)
  const second = await get(`${proxy.url}/models`)
  t.equal(second.headers['x-cache'], 'HIT')
  t.equal(second.headers['x-proxy-attempts'], '0')
  t.equal(await second.body.text(), list, 'byte-identical from the cache')
  const one = await get(`${proxy.url}/models/${MODEL}`)
  t.equal(one.headers['x-cache'], 'HIT')
  t.same(await one.body.json(), { id: MODEL, object: 'model' })
  t.equal(upstream.requests.length, 1, 'one upstream call served all three')
})

t.test('after cacheTtlMs the list is fetched again', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, list))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, config: { models: { cacheTtlMs: 100 } } })
  await (await get(`${proxy.url}/models`)).body.dump()
  await sleep(150)
  const again = await get(`${proxy.url}/models`)
  t.equal(again.headers['x-cache'], 'MISS')
  await again.body.dump()
  t.equal(upstream.requests.length, 2)
})

t.test('concurrent misses share one upstream call', async (t) => {
  const upstream = await startFakeUpstream(t, async (_req, res) => {
    await sleep(200)
    sendJson(res, 200, list)
  })
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const responses = await Promise.all(Array.from({ length: 10 }, () => get(`${proxy.url}/models`)))
  const bodies = await Promise.all(responses.map((res) => res.body.text()))
  t.ok(responses.every((res) => res.statusCode === 200))
  t.ok(bodies.every((body) => body === list))
  t.equal(upstream.requests.length, 1, 'single flight')
})

t.test('a failing refresh serves the stale copy (x-cache: STALE) until staleIfErrorMs runs out', async (t) => {
  let failing = false
  const upstream = await startFakeUpstream(t, (_req, res) =>
    failing ? sendJson(res, 503, { error: { message: 'down' } }) : sendJson(res, 200, list),
  )
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { models: { cacheTtlMs: 50, staleIfErrorMs: 400 }, retry: { maxAttempts: 1 } },
  })
  await (await get(`${proxy.url}/models`)).body.dump()
  failing = true
  await sleep(80)
  const stale = await get(`${proxy.url}/models`)
  t.equal(stale.statusCode, 200)
  t.equal(stale.headers['x-cache'], 'STALE')
  t.equal(await stale.body.text(), list)
  const staleOne = await get(`${proxy.url}/v1/models/${MODEL}`)
  t.equal(staleOne.headers['x-cache'], 'STALE')
  await staleOne.body.dump()
  await sleep(450)
  await expectErrorShape(t, await get(`${proxy.url}/models`), { status: 503, code: 'service_unavailable' })
  t.match(proxy.logText(), /serving the stale copy/)
})

t.test('with the /models breaker open the stale copy is served and the upstream is not contacted', async (t) => {
  let failing = false
  const upstream = await startFakeUpstream(t, (_req, res) =>
    failing ? sendJson(res, 500, { error: { message: 'boom' } }) : sendJson(res, 200, list),
  )
  const proxy = await startProxy(t, {
    upstreamUrl: upstream.url,
    config: { models: { cacheTtlMs: 1 }, retry: { maxAttempts: 1 }, breaker: { volumeThreshold: 2, resetTimeoutMs: 60000 } },
  })
  await (await get(`${proxy.url}/models`)).body.dump()
  failing = true
  for (let i = 0; i < 3; i++) {
    await sleep(5)
    await (await get(`${proxy.url}/models`)).body.dump()
  }
  const ready = (await (await get(`${proxy.url}/readyz`)).body.json()) as { breakers: Record<string, string> }
  t.equal(ready.breakers['/models'], 'open')
  const callsBefore = upstream.requests.length
  await sleep(5)
  const res = await get(`${proxy.url}/models`)
  t.equal(res.headers['x-cache'], 'STALE')
  t.equal(await res.body.text(), list)
  t.equal(upstream.requests.length, callsBefore, 'the open breaker kept the upstream untouched')
})

t.test('lists are cached per credential and query, never shared across keys', async (t) => {
  const upstream = await startFakeUpstream(t, (req, res) =>
    sendJson(res, 200, { object: 'list', data: [{ id: String(req.headers.authorization) }] }),
  )
  const proxy = await startProxy(t, { upstreamUrl: upstream.url })
  const alice = await (await get(`${proxy.url}/models`, { authorization: 'Bearer sk-alice' })).body.json()
  const bob = await (await get(`${proxy.url}/models`, { authorization: 'Bearer sk-bob' })).body.json()
  t.same(alice, { object: 'list', data: [{ id: 'Bearer sk-alice' }] })
  t.same(bob, { object: 'list', data: [{ id: 'Bearer sk-bob' }] })
  await (await get(`${proxy.url}/models?category=code`, { authorization: 'Bearer sk-alice' })).body.dump()
  t.equal(upstream.requests.length, 3)
  t.equal(upstream.requests[2]?.url, '/models?category=code')
})

t.test('with the gateway key configured, every client shares one cached list', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 200, list))
  const proxy = await startProxy(t, { upstreamUrl: upstream.url, env: { TOPROUTER_API_KEY: 'sk-gateway-key' } })
  const alice = await get(`${proxy.url}/models`, { authorization: 'Bearer dummy-a' })
  t.equal(alice.headers['x-cache'], 'MISS')
  await alice.body.dump()
  const bob = await get(`${proxy.url}/models`, { authorization: 'Bearer dummy-b' })
  t.equal(bob.headers['x-cache'], 'HIT')
  t.equal(await bob.body.text(), list)
  t.equal(upstream.requests.length, 1)
  t.equal(upstream.requests[0]?.headers.authorization, 'Bearer sk-gateway-key')
})
