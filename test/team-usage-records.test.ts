import { request as httpRequest, type ServerResponse } from 'node:http'
import BetterSqlite3 from 'better-sqlite3'
import t from 'tap'
import { request } from 'undici'
import { openTeamService } from '../src/team/team-service.js'
import { chunkEvent, completion, type RecordedRequest, sendJson, sleep, startFakeUpstream } from './helpers/fake-upstream.js'
import { startProxy, startTeamProxy } from './helpers/proxy.js'

/**
 * Usage accounting through the real proxy: one record per authenticated chat request, refusals
 * included, with tokens from the answer's `usage` — for a stream, from its usage chunk, which the
 * proxy asks for when the client did not and then removes from what the client receives.
 */

const MODEL = 'google/gemini-3.5-flash'
const USAGE = { prompt_tokens: 11, completion_tokens: 3, total_tokens: 14 }

function post(url: string, secret: string, body: Record<string, unknown>) {
  return request(`${url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], ...body }),
  })
}

function asked(recorded: RecordedRequest): { stream?: boolean; stream_options?: { include_usage?: boolean } } {
  return JSON.parse(recorded.body.toString()) as { stream?: boolean; stream_options?: { include_usage?: boolean } }
}

/** Like TopRouter: a stream carries a usage chunk (`choices: []`) only when include_usage was asked for. */
async function streamAnswer(res: ServerResponse, recorded: RecordedRequest): Promise<void> {
  res.writeHead(200, { 'content-type': 'text/event-stream' })
  for (const [index, text] of ['Hel', 'lo', ' wörld'].entries()) {
    res.write(chunkEvent(MODEL, index, text, index === 2 ? 'stop' : null))
    await sleep(5)
  }
  if (asked(recorded).stream_options?.include_usage === true) {
    res.write(`data: ${JSON.stringify({ id: 'gen-456', object: 'chat.completion.chunk', model: MODEL, choices: [], usage: USAGE })}\n\n`)
  }
  res.end('data: [DONE]\n\n')
}

function upstreamAnswering(t: Parameters<typeof startFakeUpstream>[0]) {
  return startFakeUpstream(t, async (_req, res, recorded) => {
    if (asked(recorded).stream === true) return streamAnswer(res, recorded)
    sendJson(res, 200, { ...completion(MODEL), usage: USAGE })
  })
}

t.test('a JSON answer: one record with every field', async (t) => {
  const upstream = await upstreamAnswering(t)
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url })
  const key = await proxy.createKey({ name: 'alice' })
  const before = Date.now()
  const res = await post(proxy.url, key.secret, {})
  t.equal(res.statusCode, 200)
  await res.body.text()
  const [row, ...more] = await proxy.usageRows()
  t.equal(more.length, 0, 'exactly one record')
  t.match(row, {
    key_id: key.id,
    request_id: res.headers['x-request-id'],
    model_requested: MODEL,
    model_served: MODEL,
    status: 200,
    stream: 0,
    ending: 'complete',
    attempts: 1,
    prompt_tokens: 11,
    completion_tokens: 3,
    total_tokens: 14,
    cost_usd: null,
    ttft_ms: null,
  })
  t.ok(Date.parse(String(row?.time)) >= before - 5, 'time is when it arrived')
  t.ok(typeof row?.latency_ms === 'number' && (row.latency_ms as number) >= 0)
})

t.test('a stream: include_usage asked for upstream, its chunk removed — the client gets the bytes it gets without team mode', async (t) => {
  const upstream = await upstreamAnswering(t)
  const team = await startTeamProxy(t, { upstreamUrl: upstream.url })
  const local = await startProxy(t, { upstreamUrl: upstream.url })
  const key = await team.createKey({ name: 'streamer' })

  const viaTeam = await post(team.url, key.secret, { stream: true })
  const teamBytes = await viaTeam.body.text()
  const viaLocal = await post(local.url, 'sk-client-key', { stream: true })
  const localBytes = await viaLocal.body.text()
  t.equal(teamBytes, localBytes, 'byte for byte the same stream')
  t.notOk(teamBytes.includes('"usage"'), 'no usage chunk reached the client')
  t.same(asked(upstream.requests[0] as RecordedRequest).stream_options, { include_usage: true }, 'the upstream was asked for usage')
  t.same(asked(upstream.requests[1] as RecordedRequest).stream_options, undefined, 'without team mode it is not')

  const [row] = await team.usageRows()
  t.match(row, { stream: 1, ending: 'complete', status: 200, prompt_tokens: 11, completion_tokens: 3, total_tokens: 14 })
  t.ok(typeof row?.ttft_ms === 'number', 'time to first token recorded')
})

t.test('a client that asked for include_usage itself keeps its usage chunk', async (t) => {
  const upstream = await upstreamAnswering(t)
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url })
  const key = await proxy.createKey({ name: 'asker' })
  const res = await post(proxy.url, key.secret, { stream: true, stream_options: { include_usage: true } })
  const text = await res.body.text()
  t.match(text, /"choices":\[\],"usage":\{"prompt_tokens":11/, 'its own usage chunk is there')
  t.equal(
    upstream.requests[0]?.body.toString(),
    JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], stream: true, stream_options: { include_usage: true } }),
    'its own bytes went upstream',
  )
  const [row] = await proxy.usageRows()
  t.match(row, { total_tokens: 14, ending: 'complete' })
})

t.test('streams that end badly: cut, stalled, and a client that leaves — recorded with their ending, unknown tokens as null', async (t) => {
  const upstream = await startFakeUpstream(t, async (_req, res, recorded) => {
    const user = (JSON.parse(recorded.body.toString()) as { user: string }).user
    res.writeHead(200, { 'content-type': 'text/event-stream' })
    res.write(chunkEvent(MODEL, 0, 'partial'))
    await sleep(50)
    if (user === 'cut') return res.socket?.destroy()
    await sleep(1000)
    if (!res.destroyed) res.end('data: [DONE]\n\n')
  })
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url, config: { upstream: { streamIdleTimeoutMs: 300 } } })
  const key = await proxy.createKey({ name: 'unlucky' })

  const cut = await post(proxy.url, key.secret, { stream: true, user: 'cut' })
  t.match(await cut.body.text(), /stream_interrupted/)
  const stalled = await post(proxy.url, key.secret, { stream: true, user: 'stalled' })
  t.match(await stalled.body.text(), /"code":"upstream_timeout"|stalled|idle/)
  // node:http with no agent: destroying the request destroys this one connection.
  await new Promise<void>((resolve) => {
    const req = httpRequest(`${proxy.url}/chat/completions`, {
      method: 'POST',
      agent: false,
      headers: { 'content-type': 'application/json', authorization: `Bearer ${key.secret}` },
    })
    req.on('error', () => {})
    req.on('response', (res) => res.once('data', () => resolve(void req.destroy())))
    req.end(JSON.stringify({ model: MODEL, messages: [], stream: true, user: 'leaving' }))
  })
  await sleep(200)

  const rows = await proxy.usageRows()
  const byEnding = Object.fromEntries(rows.map((row) => [row.ending, row]))
  t.same(Object.keys(byEnding).sort(), ['client_closed', 'cut', 'stalled'], 'three records')
  for (const row of rows) {
    t.match(row, { status: 200, stream: 1, model_served: MODEL, prompt_tokens: null, completion_tokens: null, total_tokens: null })
  }
})

t.test('refusals are recorded against the key; an unknown key has nothing to record against', async (t) => {
  const upstream = await upstreamAnswering(t)
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url })
  const key = await proxy.createKey({ name: 'refused', rpm: 1, models: ['google/*'] })
  const revoked = await proxy.createKey({ name: 'revoked' })
  await proxy.team.service.keys.revokeKey(revoked.id)
  const statuses: number[] = []
  for (const [secret, body] of [
    [key.secret, {}],
    [key.secret, { model: 'anthropic/claude-4.6-sonnet' }],
    [key.secret, {}],
    [revoked.secret, {}],
    ['tpk_nobody', {}],
  ] as const) {
    const res = await post(proxy.url, secret, body)
    statuses.push(res.statusCode)
    await res.body.text()
  }
  t.same(statuses, [200, 403, 429, 401, 401])
  const rows = await proxy.usageRows()
  t.same(
    rows.map((row) => [row.key_id, row.status, row.ending, row.model_requested, row.model_served, row.total_tokens, row.attempts]),
    [
      [key.id, 200, 'complete', MODEL, MODEL, 14, 1],
      [key.id, 403, 'error', 'anthropic/claude-4.6-sonnet', null, null, 0],
      [key.id, 429, 'error', MODEL, null, null, 0],
      [revoked.id, 401, 'error', '', null, null, 0],
    ],
  )
  const summary = await proxy.team.service.usage.summarizeUsage({ by: 'key' })
  t.same(
    summary.map((row) => [row.group, row.requests, row.errors, row.totalTokens]),
    [
      ['refused', 3, 2, 14],
      ['revoked', 1, 1, 0],
    ],
  )
})

t.test('a failed request: the attempts it took and ending error', async (t) => {
  const upstream = await startFakeUpstream(t, (_req, res) => sendJson(res, 502, { error: { message: 'bad gateway' } }))
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url, config: { retry: { maxAttempts: 3 } } })
  const key = await proxy.createKey({ name: 'failing' })
  const res = await post(proxy.url, key.secret, {})
  t.equal(res.statusCode, 502)
  await res.body.text()
  const [row] = await proxy.usageRows()
  t.match(row, { status: 502, ending: 'error', attempts: 3, model_served: null, total_tokens: null })
})

t.test('a restart keeps keys and usage', async (t) => {
  const upstream = await upstreamAnswering(t)
  const first = await startTeamProxy(t, { upstreamUrl: upstream.url })
  const key = await first.createKey({ name: 'durable', budgetTokens: 20 })
  const res = await post(first.url, key.secret, {})
  t.equal(res.statusCode, 200)
  await res.body.text()
  await first.app.close()

  const second = await startTeamProxy(t, {
    upstreamUrl: upstream.url,
    config: { team: { storeUrl: `sqlite:${first.storePath}` } },
  })
  const again = await post(second.url, key.secret, {})
  t.equal(again.statusCode, 200, 'the same secret works after the restart (14 of 20 tokens spent)')
  await again.body.text()
  const spent = await post(second.url, key.secret, {})
  t.equal(spent.statusCode, 402, 'and the budget remembers what was spent before it')
  await spent.body.text()
  t.equal((await second.usageRows()).length, 3)
})

t.test('drain flushes: records still waiting for the next batch are written when the app closes', async (t) => {
  const upstream = await upstreamAnswering(t)
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url, config: { team: { usageFlushMs: 600000 } } })
  const key = await proxy.createKey({ name: 'drained' })
  for (let i = 0; i < 5; i++) await (await post(proxy.url, key.secret, { stream: i % 2 === 0 })).body.text()
  await proxy.app.close()
  const service = await openTeamService(`sqlite:${proxy.storePath}`)
  t.teardown(() => service.close())
  t.equal((await service.store.usage.listUsage(key.id)).length, 5, 'all five written at close')
})

t.test('a store that fails mid-run: requests keep being served, records wait in memory, none is lost', async (t) => {
  const upstream = await upstreamAnswering(t)
  const proxy = await startTeamProxy(t, { upstreamUrl: upstream.url, storeBusyTimeoutMs: 50 })
  const key = await proxy.createKey({ name: 'resilient' })
  await (await post(proxy.url, key.secret, {})).body.text()
  t.equal((await proxy.usageRows()).length, 1)

  // Another process holds the write lock: every usage write fails with SQLITE_BUSY.
  const locker = new BetterSqlite3(proxy.storePath)
  locker.exec('BEGIN IMMEDIATE')
  for (let i = 0; i < 6; i++) {
    const res = await post(proxy.url, key.secret, { stream: i % 2 === 1 })
    t.equal(res.statusCode, 200, `request ${i + 1} served while the store is locked`)
    await res.body.text()
  }
  t.equal(await proxy.team.flushUsage(), false, 'a write now fails')
  const metrics = await (await request(`${proxy.url}/metrics`)).body.text()
  t.match(metrics, /toprouter_proxy_usage_queue_records 6/, 'six records wait, counted in /metrics')
  t.match(metrics, /toprouter_proxy_usage_store_up 0/)
  t.match(proxy.logText(), /usage store unavailable; usage records wait in memory/)
  const whileLocked = await request(`${proxy.url}/readyz`)
  t.equal(whileLocked.statusCode, 200, 'still ready: usage waits, cached keys are served')
  t.match(await whileLocked.body.json(), { status: 'ready', degraded: ['store'] })

  locker.exec('COMMIT')
  locker.close()
  const rows = await proxy.usageRows()
  t.equal(rows.length, 7, 'every record written once the store is back')
  t.equal(new Set(rows.map((row) => row.request_id)).size, 7, 'each once')
  t.match(proxy.logText(), /usage store is back/)
  const after = await (await request(`${proxy.url}/metrics`)).body.text()
  t.match(after, /toprouter_proxy_usage_queue_records 0/)
  t.same(((await (await request(`${proxy.url}/readyz`)).body.json()) as { degraded: string[] }).degraded, [], 'not degraded once written')
  t.equal(
    proxy.logLines().filter((line) => String(line.msg).startsWith('usage store unavailable')).length,
    1,
    'one log line for the transition, not one per failed write',
  )
})
