import { writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { runTeamCli } from '../src/team/cli.js'
import { keyEventsChannel } from '../src/team/key-events.js'
import { completion, sendJson, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { startTeamProxy, type TestTeamProxy } from './helpers/proxy.js'
import { listen, needRedisServer, needSharedRedis, prefixFor, privateRedis, SHARED_REDIS } from './helpers/redis.js'

/**
 * Key changes across replicas: two team proxies on one SQLite file and one Redis, each caching
 * keys for ten minutes; a change made through A's admin API or the CLI reaches B at once, through
 * the `<prefix>keys` channel, which carries the key's id and nothing else.
 */

const ADMIN_KEY = 'admin-0123456789abcdefghijklmnopqrstuv'
const MODEL = 'google/gemini-3.5-flash'
const KEY_CACHE_TTL_MS = 600_000
/** "At once": far under the cache TTL; B is polled this often until then. */
const AT_ONCE_MS = 1_000

function chat(url: string, secret: string, model = MODEL) {
  return request(`${url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }] }),
  })
}

async function statusOf(url: string, secret: string, model = MODEL): Promise<{ status: number; code: string | undefined }> {
  const res = await chat(url, secret, model)
  const body = (await res.body.json()) as { error?: { code?: string } }
  return { status: res.statusCode, code: body.error?.code }
}

/** Polls until B answers `status`; resolves with the ms it took, or undefined after `withinMs`. */
async function untilStatus(url: string, secret: string, status: number, model = MODEL, withinMs = AT_ONCE_MS): Promise<number | undefined> {
  const started = performance.now()
  while (performance.now() - started < withinMs) {
    if ((await statusOf(url, secret, model)).status === status) return performance.now() - started
    await sleep(10)
  }
  return undefined
}

async function twoReplicas(t: Test, redisKeyPrefix: string): Promise<[TestTeamProxy, TestTeamProxy]> {
  const upstream = await startFakeUpstream(t, async (_req, res) => {
    sendJson(res, 200, { ...completion(MODEL), usage: { prompt_tokens: 2, completion_tokens: 3, total_tokens: 5 } })
  })
  const team = { redisUrl: SHARED_REDIS, keyCacheTtlMs: KEY_CACHE_TTL_MS }
  const env = { TOPROUTER_PROXY_ADMIN_KEY: ADMIN_KEY }
  const a = await startTeamProxy(t, { upstreamUrl: upstream.url, config: { team }, env, redisKeyPrefix })
  const b = await startTeamProxy(t, {
    upstreamUrl: upstream.url,
    config: { team: { ...team, storeUrl: `sqlite:${a.storePath}` } },
    env,
    redisKeyPrefix,
  })
  return [a, b]
}

function admin(proxy: TestTeamProxy, method: 'PATCH' | 'DELETE', idOrName: string, body?: unknown) {
  return request(`${proxy.url}/admin/keys/${encodeURIComponent(idOrName)}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN_KEY}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  })
}

t.test("revoked through A's admin API: B refuses it at once (401 key_revoked), not after the cache TTL", async (t) => {
  if (!(await needSharedRedis(t))) return
  const prefix = prefixFor(t)
  const messages = await listen(t, keyEventsChannel(prefix))
  const [a, b] = await twoReplicas(t, prefix)
  const alice = await a.createKey({ name: 'alice' })
  t.equal((await statusOf(a.url, alice.secret)).status, 200, 'works on A')
  t.equal((await statusOf(b.url, alice.secret)).status, 200, 'works on B (now cached there for 10 minutes)')

  const revoked = await admin(a, 'DELETE', 'alice')
  t.equal(revoked.statusCode, 200)
  await revoked.body.dump()
  const took = await untilStatus(b.url, alice.secret, 401)
  t.ok(took !== undefined && took < 100, `B refuses within ~100 ms (took ${took?.toFixed(1)} ms)`)
  t.same(await statusOf(b.url, alice.secret), { status: 401, code: 'key_revoked' })
  t.same(messages, [alice.id], 'the channel carried the key id only: no secret, no hash')
  for (const message of messages) t.notOk(message.includes(alice.secret.slice(4)), 'no secret in the message')
})

t.test("models changed through A's admin API: B enforces the new allow-list at once", async (t) => {
  if (!(await needSharedRedis(t))) return
  const prefix = prefixFor(t)
  const messages = await listen(t, keyEventsChannel(prefix))
  const [a, b] = await twoReplicas(t, prefix)
  const bob = await a.createKey({ name: 'bob' })
  t.equal((await statusOf(b.url, bob.secret)).status, 200, 'any model on B, cached')

  const patched = await admin(a, 'PATCH', bob.id, { models: ['anthropic/*'] })
  t.equal(patched.statusCode, 200)
  await patched.body.dump()
  const took = await untilStatus(b.url, bob.secret, 403)
  t.ok(took !== undefined && took < 100, `B enforces it within ~100 ms (took ${took?.toFixed(1)} ms)`)
  t.same(await statusOf(b.url, bob.secret), { status: 403, code: 'model_not_allowed' })
  t.same(messages, [bob.id])
})

t.test('revoked through the CLI (config with the same redisUrl): B refuses it at once', async (t) => {
  if (!(await needSharedRedis(t))) return
  const redisKeyPrefix = prefixFor(t)
  const messages = await listen(t, keyEventsChannel(redisKeyPrefix))
  const [a, b] = await twoReplicas(t, redisKeyPrefix)
  const name = `carol-${Math.random().toString(36).slice(2)}`
  const carol = await a.createKey({ name })
  t.equal((await statusOf(b.url, carol.secret)).status, 200, 'works on B, cached')

  const dir = dirname(a.storePath)
  writeFileSync(
    join(dir, 'cli.yaml'),
    `team:\n  enabled: true\n  storeUrl: sqlite:${a.storePath}\n  redisUrl: ${SHARED_REDIS}\n  redisKeyPrefix: '${redisKeyPrefix}'\n`,
  )
  let stdout = ''
  let stderr = ''
  const io = { stdout: (text: string) => (stdout += text), stderr: (text: string) => (stderr += text), env: {}, cwd: dir }
  t.equal(await runTeamCli(['keys', 'revoke', name, '--config', 'cli.yaml'], io), 0, stderr)
  t.equal(stderr, '', 'no warning: Redis was there')
  t.match(stdout, /revoked/)
  const took = await untilStatus(b.url, carol.secret, 401)
  t.ok(took !== undefined && took < 100, `B refuses within ~100 ms (took ${took?.toFixed(1)} ms)`)
  t.same(messages.filter((message) => message === carol.id).length, 1, 'one message, the id only')
  t.notOk(
    messages.some((message) => message.includes(carol.secret)),
    'no secret on the channel',
  )
})

t.test('the CLI with Redis down: the change is made, one warning on stderr, exit 0, no hang', async (t) => {
  const upstream = await startFakeUpstream(t, async (_req, res) => sendJson(res, 200, completion(MODEL)))
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url })
  await proxy.createKey({ name: 'dave' })
  const dir = dirname(proxy.storePath)
  // Port 1: nothing listens there.
  writeFileSync(join(dir, 'cli.yaml'), `team:\n  enabled: true\n  storeUrl: sqlite:${proxy.storePath}\n  redisUrl: redis://127.0.0.1:1\n`)
  let stdout = ''
  let stderr = ''
  const io = { stdout: (text: string) => (stdout += text), stderr: (text: string) => (stderr += text), env: {}, cwd: dir }
  const started = performance.now()
  t.equal(await runTeamCli(['keys', 'update', 'dave', '--rpm', '7', '--config', 'cli.yaml'], io), 0)
  t.ok(performance.now() - started < 3_000, 'returns within the short connect timeout')
  t.match(stdout, /rpm:\s+7/)
  t.match(stderr, /warning: could not tell the running proxies through Redis .*keyCacheTtlMs/)
  t.equal(stderr.trimEnd().split('\n').length, 1, 'one line')
  t.equal((await proxy.team.service.keys.getKey('dave')).rpm, 7, 'the change is in the store')
})

t.test('a change made while B could not hear it: B drops its cached keys when its Redis connection is back', async (t) => {
  if (!needRedisServer(t)) return
  const redis = await privateRedis(t)
  const upstream = await startFakeUpstream(t, async (_req, res) => sendJson(res, 200, completion(MODEL)))
  const redisKeyPrefix = prefixFor(t, redis.url)
  const b = await startTeamProxy(t, {
    upstreamUrl: upstream.url,
    config: { team: { redisUrl: redis.url, keyCacheTtlMs: KEY_CACHE_TTL_MS } },
    redisKeyPrefix,
  })
  const erin = await b.createKey({ name: 'erin' })
  t.equal((await statusOf(b.url, erin.secret)).status, 200, 'cached on B')
  await redis.kill()
  // Revoked in the store while Redis is down: the message is never sent, so B cannot hear it.
  await b.team.service.keys.revokeKey('erin')
  t.equal((await statusOf(b.url, erin.secret)).status, 200, 'B still trusts its cache while Redis is away')
  await redis.start()
  const took = await untilStatus(b.url, erin.secret, 401, MODEL, 5_000)
  t.ok(
    took !== undefined,
    `B refuses it once its subscriber is back (took ${took?.toFixed(0)} ms), not after the ${KEY_CACHE_TTL_MS} ms TTL`,
  )
  t.match(b.logText(), /cached keys dropped/)
})
