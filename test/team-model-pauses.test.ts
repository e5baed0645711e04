import t, { type Test } from 'tap'
import { request } from 'undici'
import { expectErrorShape } from './helpers/assert-error.js'
import { completion, type FakeUpstream, sendJson, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { startTeamProxy, type TestTeamProxy } from './helpers/proxy.js'
import { needSharedRedis, prefixFor, SHARED_REDIS } from './helpers/redis.js'

/**
 * Shared pushback: a 429 with `retry-after: 2` seen by proxy A pauses the model on proxy B too
 * (over Redis pub/sub): B answers for it with no upstream call — by the fallback when there is
 * one, else a 429 with Retry-After — and calls the upstream again once the pause is over.
 */

const PRIMARY = 'openai/gpt-5'
const FALLBACK = 'google/gemini-3.5-flash'

function modelOf(upstream: FakeUpstream, index: number): string {
  return (JSON.parse(upstream.requests[index]?.body.toString() ?? '{}') as { model?: string }).model ?? ''
}

async function setUp(t: Test, fallbacks: Record<string, string[]>) {
  const upstream = await startFakeUpstream(t, (_req, res, recorded, index) => {
    const model = (JSON.parse(recorded.body.toString()) as { model: string }).model
    if (index === 0)
      sendJson(res, 429, { error: { message: 'slow down', type: 'rate_limit_error', code: 'rate_limit_exceeded' } }, { 'retry-after': '2' })
    else sendJson(res, 200, completion(model))
  })
  const redisKeyPrefix = prefixFor(t)
  // One attempt per model: A's 429 is its answer (or its fallback's), without waiting it out.
  const config = { team: { redisUrl: SHARED_REDIS }, retry: { maxAttempts: 1 }, fallbacks }
  const a = await startTeamProxy(t, { upstreamUrl: upstream.url, config, redisKeyPrefix })
  const b = await startTeamProxy(t, { upstreamUrl: upstream.url, config, redisKeyPrefix })
  return { upstream, a, b }
}

async function chat(proxy: TestTeamProxy, secret: string) {
  return request(`${proxy.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: PRIMARY, messages: [{ role: 'user', content: 'hi' }] }),
  })
}

/** Waits until B has heard of the pause (pub/sub is asynchronous). */
async function untilPaused(proxy: TestTeamProxy): Promise<void> {
  for (let i = 0; i < 100 && (proxy.team.modelPauses?.pausedForMs(PRIMARY) ?? 0) === 0; i++) await sleep(10)
}

t.test('without a fallback: B answers a 429 with Retry-After, no upstream call, then calls it after the pause', async (t) => {
  if (!(await needSharedRedis(t))) return
  const { upstream, a, b } = await setUp(t, {})
  const alice = await a.createKey({ name: 'alice' })
  const bob = await b.createKey({ name: 'bob' })
  const first = await chat(a, alice.secret)
  t.equal(first.statusCode, 429, "A relays the upstream's 429")
  await first.body.dump()
  t.equal(upstream.requests.length, 1)
  await untilPaused(b)
  const paused = await chat(b, bob.secret)
  t.ok(Number(paused.headers['retry-after']) >= 1, `Retry-After ${String(paused.headers['retry-after'])} ≥ 1`)
  await expectErrorShape(t, paused, { status: 429, code: 'rate_limit_exceeded', message: /pause/ })
  t.equal(upstream.requests.length, 1, 'B did not call the upstream')
  await sleep(2_100)
  const after = await chat(b, bob.secret)
  t.equal(after.statusCode, 200, 'after the pause B calls the upstream again')
  await after.body.dump()
  t.equal(upstream.requests.length, 2)
})

t.test('with a fallback: B serves the paused model by its fallback, the primary not called', async (t) => {
  if (!(await needSharedRedis(t))) return
  const { upstream, a, b } = await setUp(t, { [PRIMARY]: [FALLBACK] })
  const alice = await a.createKey({ name: 'alice' })
  const bob = await b.createKey({ name: 'bob' })
  const first = await chat(a, alice.secret)
  t.equal(first.statusCode, 200, 'A falls back after the 429')
  await first.body.dump()
  t.same([modelOf(upstream, 0), modelOf(upstream, 1)], [PRIMARY, FALLBACK])
  await untilPaused(b)
  const paused = await chat(b, bob.secret)
  t.equal(paused.statusCode, 200)
  t.equal(paused.headers['x-proxy-model'], FALLBACK, 'served by the fallback')
  await paused.body.dump()
  t.equal(upstream.requests.length, 3)
  t.equal(modelOf(upstream, 2), FALLBACK, 'only the fallback was called')
  await sleep(2_100)
  const after = await chat(b, bob.secret)
  t.equal(after.headers['x-proxy-model'], PRIMARY, 'after the pause the primary is called again')
  await after.body.dump()
  t.equal(modelOf(upstream, 3), PRIMARY)
})
