import { request as httpRequest } from 'node:http'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { request } from 'undici'
import type { BudgetWindow, Spend, SpendSince } from '../src/team/budget.js'
import type { Admission } from '../src/team/limiter.js'
import { createRedisKeyLimiter, type RedisKeyLimiter, type RedisKeyLimiterOptions } from '../src/team/redis-limiter.js'
import { createTeamMetrics } from '../src/team/team-metrics.js'
import { expectErrorShape } from './helpers/assert-error.js'
import { completion, sendJson, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { ask, now } from './helpers/limits.js'
import { startTeamProxy } from './helpers/proxy.js'
import { needRedisServer, needSharedRedis, prefixFor, privateRedis, SHARED_REDIS } from './helpers/redis.js'
import { until } from './helpers/until.js'

/**
 * The Redis-backed limiter as a fleet sees it: two limiter instances ("replicas") on one Redis
 * and key prefix share rpm, tpm and concurrency, in one round trip per admission; a private
 * redis-server killed and restarted mid-test for `redisFailure` open and closed; and two real
 * team proxies on one store and one Redis. The shared Redis is 127.0.0.1:6379 (CI has it; outside
 * CI the tests skip without it). Each test has its own key prefix and deletes its keys after.
 */

interface Replica {
  readonly limiter: RedisKeyLimiter
  readonly lines: Array<{ level: 'info' | 'warn'; message: string }>
}

async function replica(t: Test, prefix: string, overrides: Partial<RedisKeyLimiterOptions> = {}): Promise<Replica> {
  const lines: Replica['lines'] = []
  const limiter = createRedisKeyLimiter({
    redisUrl: SHARED_REDIS,
    keyPrefix: prefix,
    failure: 'open',
    maxQueueWaitMs: 0,
    now,
    log: {
      info: (_details, message) => lines.push({ level: 'info', message }),
      warn: (_details, message) => lines.push({ level: 'warn', message }),
    },
    ...overrides,
  })
  t.teardown(() => limiter.close())
  await limiter.connect()
  return { limiter, lines }
}

/** The names of the commands the limiter sends to Redis from now on, in order. */
function commandsSent(limiter: RedisKeyLimiter): string[] {
  const sent: string[] = []
  const send = limiter.redis.sendCommand.bind(limiter.redis)
  limiter.redis.sendCommand = ((command, ...rest) => {
    sent.push(command.name)
    return send(command, ...rest)
  }) as typeof send
  return sent
}

function refused(t: Test, admission: Admission, limit: string): void {
  t.equal(admission.ok, false, `refused for ${limit}`)
  if (!admission.ok) t.equal(admission.limit, limit)
}

t.test('rpm 5 across two replicas: the 6th admission (to either) is refused, retry ms > 0, remaining 0', async (t) => {
  if (!(await needSharedRedis(t))) return
  const prefix = prefixFor(t)
  const a = await replica(t, prefix)
  const b = await replica(t, prefix)
  for (let i = 1; i <= 5; i++) {
    const admitted = await (i % 2 === 1 ? a : b).limiter.admit(ask({ rpm: 5 }))
    t.ok(admitted.ok, `request ${i} admitted by replica ${i % 2 === 1 ? 'A' : 'B'}`)
    if (admitted.ok) {
      t.equal(admitted.permit.headers['x-ratelimit-remaining-requests'], String(5 - i))
      t.equal(admitted.permit.headers['x-ratelimit-limit-requests'], '5')
      admitted.permit.release()
    }
  }
  for (const [name, one] of [
    ['A', a],
    ['B', b],
  ] as const) {
    const sixth = await one.limiter.admit(ask({ rpm: 5 }))
    refused(t, sixth, 'rpm')
    if (!sixth.ok && sixth.limit === 'rpm') {
      t.ok(sixth.retryAfterMs > 0 && sixth.retryAfterMs <= 60_000, `replica ${name}: retry in ${sixth.retryAfterMs} ms`)
      t.equal(sixth.headers['x-ratelimit-remaining-requests'], '0')
      t.match(sixth.headers['x-ratelimit-reset-requests'], /^\d+s$/)
    }
  }
  t.ok((await a.limiter.admit(ask({ rpm: 5 }, { keyId: 'key_b' }))).ok, 'another key has its own window')
})

t.test('a refused admission takes nothing; the window opens again after it ends', async (t) => {
  if (!(await needSharedRedis(t))) return
  const prefix = prefixFor(t)
  const a = await replica(t, prefix, { windowSeconds: 1 })
  const b = await replica(t, prefix, { windowSeconds: 1 })
  t.ok((await a.limiter.admit(ask({ rpm: 1 }))).ok)
  for (let i = 0; i < 4; i++) refused(t, await b.limiter.admit(ask({ rpm: 1 })), 'rpm')
  await sleep(1_100)
  t.ok((await b.limiter.admit(ask({ rpm: 1 }))).ok, 'the next window admits: the refusals were not counted')
})

t.test('maxConcurrent 2 across two replicas: the 3rd is refused; a release frees a slot for the other', async (t) => {
  if (!(await needSharedRedis(t))) return
  const prefix = prefixFor(t)
  const a = await replica(t, prefix)
  const b = await replica(t, prefix)
  const first = await a.limiter.admit(ask({ maxConcurrent: 2 }))
  const second = await b.limiter.admit(ask({ maxConcurrent: 2 }))
  t.ok(first.ok && second.ok, 'two in flight, one on each replica')
  refused(t, await a.limiter.admit(ask({ maxConcurrent: 2 })), 'concurrency')
  refused(t, await b.limiter.admit(ask({ maxConcurrent: 2 })), 'concurrency')
  if (first.ok) first.permit.release()
  await sleep(20) // the release is fire-and-forget
  t.ok((await b.limiter.admit(ask({ maxConcurrent: 2 }))).ok, "A's release let B take the slot")
})

t.test('a request queued on one replica is admitted when a slot frees on the other', async (t) => {
  if (!(await needSharedRedis(t))) return
  const prefix = prefixFor(t)
  const a = await replica(t, prefix)
  const b = await replica(t, prefix, { maxQueueWaitMs: 2_000 })
  const held = await a.limiter.admit(ask({ maxConcurrent: 1 }))
  t.ok(held.ok)
  const started = now()
  const waiting = b.limiter.admit(ask({ maxConcurrent: 1 }))
  await sleep(100)
  t.equal(b.limiter.queued(), 1, 'waiting in B’s queue')
  if (held.ok) held.permit.release()
  const admitted = await waiting
  const waitedMs = now() - started
  t.ok(admitted.ok, `admitted after ${Math.round(waitedMs)} ms`)
  t.ok(waitedMs < 1_000, 'soon after the release, not at the end of the wait')
})

t.test("a dead replica's slot expires at its request's deadline", async (t) => {
  if (!(await needSharedRedis(t))) return
  const prefix = prefixFor(t)
  const dead = await replica(t, prefix, { slotGraceMs: 0 })
  const b = await replica(t, prefix)
  t.ok((await dead.limiter.admit(ask({ maxConcurrent: 1 }, { deadlineAtMs: now() + 300 }))).ok, 'the slot is taken, never released')
  await dead.limiter.close()
  refused(t, await b.limiter.admit(ask({ maxConcurrent: 1 })), 'concurrency')
  await sleep(400)
  t.ok((await b.limiter.admit(ask({ maxConcurrent: 1 }))).ok, 'free once the deadline passed')
})

t.test('tpm across replicas: reserve the estimate, settle to the real count', async (t) => {
  if (!(await needSharedRedis(t))) return
  const prefix = prefixFor(t)
  const a = await replica(t, prefix)
  const b = await replica(t, prefix)
  const first = await a.limiter.admit(ask({ tpm: 100 }, { estimatedTokens: 60 }))
  t.ok(first.ok)
  if (first.ok) t.equal(first.permit.headers['x-ratelimit-remaining-tokens'], '40', '60 reserved')
  const tooMany = await b.limiter.admit(ask({ tpm: 100 }, { estimatedTokens: 70 }))
  refused(t, tooMany, 'tpm')
  if (!tooMany.ok && tooMany.limit === 'tpm') t.ok(tooMany.retryAfterMs > 0)
  if (first.ok) first.permit.settle(20)
  await sleep(20)
  const after = await b.limiter.admit(ask({ tpm: 100 }, { estimatedTokens: 70 }))
  t.ok(after.ok, 'the settle gave back 40: 20 + 70 fits in 100')
  if (after.ok) {
    t.equal(after.permit.headers['x-ratelimit-remaining-tokens'], '10')
    after.permit.settle(90) // 20 more than reserved
  }
  await sleep(20)
  const full = await a.limiter.admit(ask({ tpm: 100 }, { estimatedTokens: 1 }))
  refused(t, full, 'tpm')
  if (!full.ok && full.limit === 'tpm') t.equal(full.headers['x-ratelimit-remaining-tokens'], '0', '20 + 90 = 110 used')
})

t.test('one Redis round trip per admission; settle and release together one command', async (t) => {
  if (!(await needSharedRedis(t))) return
  const prefix = prefixFor(t)
  const a = await replica(t, prefix)
  const sent = commandsSent(a.limiter)
  const limits = { rpm: 100, tpm: 10_000, maxConcurrent: 10 }
  const warm = await a.limiter.admit(ask(limits, { estimatedTokens: 10 })) // the script is loaded once (EVALSHA, else EVAL)
  if (warm.ok) warm.permit.release()
  await sleep(20)
  sent.length = 0
  const admissions: Admission[] = []
  for (let i = 0; i < 10; i++) admissions.push(await a.limiter.admit(ask(limits, { estimatedTokens: 10 })))
  t.same(sent, Array(10).fill('evalsha'), '10 admissions, 10 commands (all three limits checked and taken)')
  sent.length = 0
  for (const admission of admissions) {
    if (!admission.ok) continue
    admission.permit.settle(15)
    admission.permit.release()
  }
  await sleep(20)
  t.same(sent, Array(10).fill('evalsha'), 'settle + release of a request that ends: one command together')
  sent.length = 0
  const released = await a.limiter.admit(ask(limits, { estimatedTokens: 10 }))
  if (released.ok) released.permit.release()
  await sleep(20)
  t.same(sent, ['evalsha', 'zrem'], 'a release alone (nothing to settle) is a ZREM')
  t.equal(admissions.filter((admission) => admission.ok).length, 10)
})

const DAY_START_MS = Date.UTC(2026, 11, 1)
const budgetOf = (tokens: number | null, usd: number | null = null): BudgetWindow => ({
  keyId: 'key_a',
  period: 'day',
  startMs: DAY_START_MS,
  tokens,
  usd,
})

/** The usage store's answer for the seed, counting how often it is asked. */
function storeSpend(spend: Spend) {
  const reads: string[] = []
  const spendSince: SpendSince = async (keyId, since) => {
    reads.push(`${keyId}@${since.toISOString()}`)
    return spend
  }
  return { reads, spendSince }
}

t.test('a budget across replicas: seeded once from the store, spent through A, refused on B', async (t) => {
  if (!(await needSharedRedis(t))) return
  const prefix = prefixFor(t)
  const store = storeSpend({ tokens: 30, usd: 0 })
  const a = await replica(t, prefix, { spendSince: store.spendSince })
  const b = await replica(t, prefix, { spendSince: store.spendSince })
  const budget = budgetOf(100)
  const [first, second] = await Promise.all([a.limiter.admit(ask({}, { budget })), b.limiter.admit(ask({}, { budget }))])
  t.ok(first.ok && second.ok, '30 of 100 spent: both admitted')
  t.ok(store.reads.length >= 1 && store.reads.length <= 2, `the store read for the seed (${store.reads.length}: replicas racing to seed)`)
  t.equal(store.reads[0], 'key_a@2026-12-01T00:00:00.000Z', "the period's spend, from its start")
  if (first.ok) first.permit.settle(40)
  if (second.ok) second.permit.settle(20)
  await sleep(30)
  const readsBefore = store.reads.length
  const third = await b.limiter.admit(ask({}, { budget }))
  t.ok(third.ok, '30 + 40 + 20 = 90 < 100: admitted (a request may overshoot)')
  if (third.ok) third.permit.settle(25)
  await sleep(30)
  const refusedOnA = await a.limiter.admit(ask({}, { budget }))
  t.match(refusedOnA, { ok: false, limit: 'budget', unit: 'tokens', spent: 115, budget: 100 }, 'spent through B, refused on A')
  t.equal(store.reads.length, readsBefore, 'no store read once the period is seeded')
  const raised = await a.limiter.admit(ask({}, { budget: budgetOf(200) }))
  t.ok(raised.ok, 'a raised budget admits at once: the counter is spend, the budget comes with the request')
})

t.test('a USD budget across replicas counts the cost settled on each', async (t) => {
  if (!(await needSharedRedis(t))) return
  const prefix = prefixFor(t)
  const a = await replica(t, prefix)
  const b = await replica(t, prefix)
  const budget = budgetOf(null, 0.01)
  const first = await a.limiter.admit(ask({}, { budget }))
  if (first.ok) first.permit.settle(10, 0.006)
  await sleep(30)
  const second = await b.limiter.admit(ask({}, { budget }))
  t.ok(second.ok, '$0.006 of $0.01')
  if (second.ok) second.permit.settle(10, 0.0045)
  await sleep(30)
  const refusedOnA = await a.limiter.admit(ask({}, { budget }))
  t.match(refusedOnA, { ok: false, limit: 'budget', unit: 'usd', budget: 0.01 })
  if (!refusedOnA.ok && refusedOnA.limit === 'budget') t.ok(Math.abs(refusedOnA.spent - 0.0105) < 1e-9, `spent $${refusedOnA.spent}`)
})

t.test('a budget refusal takes nothing of rpm or concurrency; the seeded admission is still one round trip after', async (t) => {
  if (!(await needSharedRedis(t))) return
  const prefix = prefixFor(t)
  const store = storeSpend({ tokens: 500, usd: 0 })
  const a = await replica(t, prefix, { spendSince: store.spendSince })
  const sent = commandsSent(a.limiter)
  const limits = { rpm: 2, maxConcurrent: 1 }
  refused(t, await a.limiter.admit(ask(limits, { budget: budgetOf(100) })), 'budget')
  t.ok(sent.length >= 3, `the first: admit, seed, admit again (${sent.join(', ')})`)
  sent.length = 0
  refused(t, await a.limiter.admit(ask(limits, { budget: budgetOf(100) })), 'budget')
  t.same(sent, ['evalsha'], 'then one round trip')
  const unbudgeted = [await a.limiter.admit(ask(limits)), await a.limiter.admit(ask(limits))]
  t.ok(unbudgeted[0]?.ok, 'the refusals took no rpm and no slot')
  refused(t, unbudgeted[1] as Admission, 'concurrency')
})

t.test('the store down while a period is unseeded: the budget cannot be checked (unavailable), not skipped', async (t) => {
  if (!(await needSharedRedis(t))) return
  const prefix = prefixFor(t)
  const a = await replica(t, prefix, {
    spendSince: async () => {
      throw new Error('connection refused')
    },
  })
  t.same(await a.limiter.admit(ask({ rpm: 5 }, { budget: budgetOf(100) })), { ok: false, limit: 'unavailable', what: 'budget' })
  t.ok((await a.limiter.admit(ask({ rpm: 5 }))).ok, 'a key without a budget is served')
})

async function gauge(registry: ReturnType<typeof createTeamMetrics>['registry']): Promise<number | undefined> {
  const metric = await registry.getSingleMetric('toprouter_proxy_redis_up')?.get()
  return metric?.values[0]?.value
}

t.test('redisFailure open: Redis killed → per-replica limits, gauge 0, one warn; back → shared again, gauge 1, one info', async (t) => {
  if (!needRedisServer(t)) return
  const redis = await privateRedis(t)
  const prefix = prefixFor(t, redis.url)
  const a = await replica(t, prefix, { redisUrl: redis.url })
  const b = await replica(t, prefix, { redisUrl: redis.url })
  const metrics = createTeamMetrics()
  metrics.watchRedis(() => a.limiter.redisUp())
  t.equal(await gauge(metrics.registry), 1, 'gauge 1 while Redis is up')
  const rpm2 = ask({ rpm: 2 })
  t.ok((await a.limiter.admit(rpm2)).ok)
  t.ok((await b.limiter.admit(rpm2)).ok)
  refused(t, await a.limiter.admit(rpm2), 'rpm')
  a.lines.length = 0
  b.lines.length = 0

  await redis.kill()
  t.ok(await until(() => !a.limiter.redisUp() && !b.limiter.redisUp()), 'both replicas see Redis down')
  t.equal(await gauge(metrics.registry), 0, 'gauge 0 while Redis is down')
  // Per replica now: each has its own (memory) rpm 2.
  for (const [name, one] of [
    ['A', a],
    ['B', b],
  ] as const) {
    t.ok((await one.limiter.admit(rpm2)).ok, `replica ${name}: 1st admitted on its own counters`)
    t.ok((await one.limiter.admit(rpm2)).ok, `replica ${name}: 2nd admitted`)
    refused(t, await one.limiter.admit(rpm2), 'rpm')
  }
  await sleep(300) // reconnect attempts fail meanwhile: still one line
  t.same(
    a.lines.map((line) => line.level),
    ['warn'],
    'one warn line for the transition',
  )
  t.match(a.lines[0]?.message, /unreachable.*per replica/)

  await redis.start()
  t.ok(await until(() => a.limiter.redisUp() && b.limiter.redisUp()), 'both replicas reconnected by themselves')
  t.equal(await gauge(metrics.registry), 1, 'gauge 1 again')
  t.same(
    a.lines.map((line) => line.level),
    ['warn', 'info'],
    'one info line for the way back',
  )
  // The restarted Redis kept nothing: shared counters start afresh, and are shared again.
  t.ok((await a.limiter.admit(rpm2)).ok)
  t.ok((await b.limiter.admit(rpm2)).ok)
  refused(t, await b.limiter.admit(rpm2), 'rpm')
  refused(t, await a.limiter.admit(rpm2), 'rpm')
})

t.test(
  'redisFailure open, a budget: while Redis is down each replica reads the spend from the store; back → the shared counter, seeded again',
  async (t) => {
    if (!needRedisServer(t)) return
    const redis = await privateRedis(t)
    const prefix = prefixFor(t, redis.url)
    let recorded: Spend = { tokens: 0, usd: 0 }
    const reads: number[] = []
    const a = await replica(t, prefix, {
      redisUrl: redis.url,
      spendSince: async () => {
        reads.push(recorded.tokens)
        return recorded
      },
    })
    const budget = budgetOf(100)
    const first = await a.limiter.admit(ask({}, { budget }))
    if (first.ok) first.permit.settle(60)
    recorded = { tokens: 60, usd: 0 } // the usage writer has flushed its record
    await redis.kill()
    t.ok(await until(() => !a.limiter.redisUp()), 'Redis down')
    const during = await a.limiter.admit(ask({}, { budget }))
    t.ok(during.ok, '60 of 100, read from the store')
    t.equal(reads.at(-1), 60, 'the outage read the store as it is now')
    if (during.ok) during.permit.settle(50)
    t.match(await a.limiter.admit(ask({}, { budget })), { ok: false, limit: 'budget', spent: 110 }, 'counted on this replica meanwhile')
    recorded = { tokens: 110, usd: 0 }
    await redis.start()
    t.ok(await until(() => a.limiter.redisUp()), 'Redis back')
    t.match(await a.limiter.admit(ask({}, { budget })), { ok: false, limit: 'budget', spent: 110 }, 'the new counter seeded from the store')
  },
)

t.test('redisFailure open: Redis down at startup does not stop it; it connects when Redis comes', async (t) => {
  if (!needRedisServer(t)) return
  const redis = await privateRedis(t)
  await redis.kill()
  const a = await replica(t, prefixFor(t, redis.url), { redisUrl: redis.url })
  t.equal(a.limiter.redisUp(), false)
  t.ok((await a.limiter.admit(ask({ rpm: 1 }))).ok, 'admitted on per-replica limits')
  t.same(
    a.lines.map((line) => line.level),
    ['warn'],
  )
  await redis.start()
  t.ok(await until(() => a.limiter.redisUp()), 'connected once Redis is there')
})

t.test('redisFailure closed: admissions are unavailable while Redis is down, shared once it is back', async (t) => {
  if (!needRedisServer(t)) return
  const redis = await privateRedis(t)
  const a = await replica(t, prefixFor(t, redis.url), { redisUrl: redis.url, failure: 'closed' })
  t.ok((await a.limiter.admit(ask({ rpm: 5 }))).ok)
  await redis.kill()
  t.ok(await until(() => !a.limiter.redisUp()))
  t.same(await a.limiter.admit(ask({ rpm: 5 })), { ok: false, limit: 'unavailable', what: 'limits' })
  t.match(a.lines.at(-1)?.message, /refused \(503\)/)
  await redis.start()
  t.ok(await until(() => a.limiter.redisUp()))
  t.ok((await a.limiter.admit(ask({ rpm: 5 }))).ok, 'admitted again')
})

function chat(url: string, secret: string) {
  return request(`${url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` },
    body: JSON.stringify({ model: 'google/gemini-3.5-flash', messages: [{ role: 'user', content: 'hi' }] }),
  })
}

async function upstreamFor(t: Test) {
  return startFakeUpstream(t, async (_req, res) => {
    sendJson(res, 200, { ...completion('google/gemini-3.5-flash'), usage: { prompt_tokens: 2, completion_tokens: 3, total_tokens: 5 } })
  })
}

/** Two team proxies on one SQLite store and the shared Redis, with a key prefix of the test's own. */
async function twoTeamProxies(t: Test) {
  const upstream = await upstreamFor(t)
  const redisKeyPrefix = prefixFor(t)
  const team = { redisUrl: SHARED_REDIS }
  const a = await startTeamProxy(t, { upstreamUrl: upstream.url, config: { team }, redisKeyPrefix })
  const b = await startTeamProxy(t, {
    upstreamUrl: upstream.url,
    config: { team: { ...team, storeUrl: `sqlite:${a.storePath}` } },
    redisKeyPrefix,
  })
  return { upstream, a, b }
}

t.test('two team proxies on one store and one Redis: a key with rpm 3 gets 3 requests in all, not 3 each', async (t) => {
  if (!(await needSharedRedis(t))) return
  const { upstream, a, b } = await twoTeamProxies(t)
  const alice = await a.createKey({ name: 'alice', rpm: 3 })
  const statuses: number[] = []
  for (const proxy of [a, b, a]) {
    const res = await chat(proxy.url, alice.secret)
    statuses.push(res.statusCode)
    await res.body.dump()
  }
  t.same(statuses, [200, 200, 200], '3 requests split across the two proxies')
  for (const proxy of [b, a]) {
    await expectErrorShape(t, await chat(proxy.url, alice.secret), {
      status: 429,
      code: 'key_rate_limit_exceeded',
      message: /3 requests per minute/,
    })
  }
  t.equal(upstream.requests.length, 3, 'the refused ones never reached the upstream')
  const metrics = await request(`${a.url}/metrics`)
  t.match(await metrics.body.text(), /toprouter_proxy_redis_up 1/)
})

t.test('two team proxies: a token budget spent through A is refused on B (402), with no upstream call', async (t) => {
  if (!(await needSharedRedis(t))) return
  const { upstream, a, b } = await twoTeamProxies(t)
  const alice = await a.createKey({ name: 'alice', budgetTokens: 10, budgetPeriod: 'day' })
  for (const proxy of [a, a]) {
    const res = await chat(proxy.url, alice.secret)
    t.equal(res.statusCode, 200)
    await res.body.dump()
  }
  await sleep(50) // the settles are fire and forget
  await expectErrorShape(t, await chat(b.url, alice.secret), {
    status: 402,
    code: 'budget_exceeded',
    message: /daily budget is spent \(10 of 10 tokens\)/,
  })
  t.equal(upstream.requests.length, 2, 'B did not call the upstream')
})

t.test('a client gone while its admission is on its way to Redis: the slot it was given is freed, not held to the deadline', async (t) => {
  if (!needRedisServer(t)) return
  const redis = await privateRedis(t)
  const upstream = await upstreamFor(t)
  const redisKeyPrefix = prefixFor(t, redis.url)
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url, config: { team: { redisUrl: redis.url } }, redisKeyPrefix })
  const alice = await proxy.createKey({ name: 'alice', maxConcurrent: 1 })
  const blocker = new Redis(redis.url, { maxRetriesPerRequest: 0 })
  t.teardown(() => blocker.disconnect())
  // Redis busy for 150 ms (under the limiter's 200 ms command timeout): the admission waits for it.
  const busy = blocker.eval(
    "local s = redis.call('TIME') local t0 = s[1] * 1000000 + s[2] while true do local n = redis.call('TIME') if n[1] * 1000000 + n[2] - t0 > 150000 then break end end return 1",
    0,
  )
  await sleep(10)
  const client = httpRequest(`${proxy.url}/chat/completions`, {
    method: 'POST',
    agent: false,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${alice.secret}` },
  })
  client.on('error', () => {})
  client.end(JSON.stringify({ model: 'google/gemini-3.5-flash', messages: [{ role: 'user', content: 'hi' }] }))
  await sleep(40)
  client.destroy()
  await busy
  await sleep(100)
  const slots = await blocker.zcard(`${redisKeyPrefix}limit:{${alice.id}}:slots`)
  t.equal(slots, 0, 'no slot left behind')
  const next = await chat(proxy.url, alice.secret)
  t.equal(next.statusCode, 200, 'the key (maxConcurrent 1) is served at once')
  await next.body.dump()
  t.equal(upstream.requests.length, 1, 'the abandoned request never went upstream')
})

t.test('team proxy, redisFailure closed: 503 service_unavailable while its Redis is down', async (t) => {
  if (!needRedisServer(t)) return
  const redis = await privateRedis(t)
  const upstream = await upstreamFor(t)
  const proxy = await startTeamProxy(t, {
    upstreamUrl: upstream.url,
    config: { team: { redisUrl: redis.url, redisFailure: 'closed' } },
    redisKeyPrefix: prefixFor(t, redis.url),
  })
  const alice = await proxy.createKey({ name: 'alice', rpm: 3 })
  const ok = await chat(proxy.url, alice.secret)
  t.equal(ok.statusCode, 200)
  await ok.body.dump()
  await redis.kill()
  await sleep(200)
  await expectErrorShape(t, await chat(proxy.url, alice.secret), {
    status: 503,
    code: 'service_unavailable',
    message: /limits store is unavailable/,
  })
  t.equal(upstream.requests.length, 1)
  const metrics = await request(`${proxy.url}/metrics`)
  t.match(await metrics.body.text(), /toprouter_proxy_redis_up 0/)
  const ready = await request(`${proxy.url}/readyz`)
  t.equal(ready.statusCode, 200, 'still ready: every replica shares this Redis, so none would serve better')
  t.match(await ready.body.json(), { status: 'ready', degraded: ['redis'] })
})

t.test(
  'team proxy, redisFailure open: served per replica while Redis is down, /readyz degraded; shared again once it is back',
  async (t) => {
    if (!needRedisServer(t)) return
    const redis = await privateRedis(t)
    const upstream = await upstreamFor(t)
    const proxy = await startTeamProxy(t, {
      upstreamUrl: upstream.url,
      config: { team: { redisUrl: redis.url } },
      redisKeyPrefix: prefixFor(t, redis.url),
    })
    const alice = await proxy.createKey({ name: 'alice', rpm: 100 })
    const readiness = async () => (await (await request(`${proxy.url}/readyz`)).body.json()) as { status: string; degraded: string[] }
    t.same((await readiness()).degraded, [], 'not degraded while Redis is up')
    await redis.kill()
    await sleep(200)
    const res = await chat(proxy.url, alice.secret)
    t.equal(res.statusCode, 200, 'served on per-replica limits')
    await res.body.dump()
    t.match(await readiness(), { status: 'ready', degraded: ['redis'] })
    await redis.start()
    const started = performance.now()
    while (performance.now() - started < 5_000 && (await readiness()).degraded.length > 0) await sleep(50)
    t.same((await readiness()).degraded, [], 'reconnected by itself')
  },
)
